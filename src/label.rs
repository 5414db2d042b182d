//! Security labels: nations, classification levels, releasability and
//! compartments, and the marking text that all tools print and parse.
//!
//! The grammar (ARCHITECTURE.md, "Vocabulary"):
//! ```text
//! marking = classification *( "//" block )
//! block   = "REL TO " name *( ", " name )  |  compartment *( "/" compartment )
//! name    = nation | community
//! ```
//! Parsing is case-insensitive and tolerant of spacing around `,`; printing
//! always gives the canonical form, so `parse(print(l)) == l`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ISO 3166-1 alpha-3 nation code, stored inline so that it is `Copy` and
/// cheap to compare on the hot path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nation([u8; 3]);

impl Nation {
    /// Accepts exactly three ASCII letters, in either case.
    pub fn parse(text: &str) -> Option<Nation> {
        let bytes = text.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        Some(Nation([
            bytes[0].to_ascii_uppercase(),
            bytes[1].to_ascii_uppercase(),
            bytes[2].to_ascii_uppercase(),
        ]))
    }

    /// The code's three bytes, in upper case.
    pub fn code(&self) -> [u8; 3] {
        self.0
    }

    /// The code, in upper case.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// The code in lower case, as principal names start (`gbr`).
    pub fn lowercase(&self) -> String {
        self.as_str().to_ascii_lowercase()
    }
}

impl fmt::Display for Nation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Nation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Nation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Nation::parse(text)
            .ok_or_else(|| format!("`{text}` is not a nation code: expected three letters such as GBR"))
    }
}

impl TryFrom<String> for Nation {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Nation> for String {
    fn from(nation: Nation) -> String {
        nation.as_str().to_owned()
    }
}

/// A classification level, as its rank in the network's ordered list
/// (0 = lowest). Ranks compare directly: higher is more sensitive.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Level(pub u8);

/// A security label. Sets are kept sorted and deduplicated so that two equal
/// labels have one encoding, which the envelope signature relies on.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Label {
    /// The classification level.
    pub level: Level,
    /// Compartments, in upper case: a reader must hold every one.
    pub compartments: BTreeSet<String>,
    /// Nations and communities, unexpanded, as written in the marking.
    pub rel_to: BTreeSet<String>,
}

impl Label {
    /// A label with no releasability: it stays in the originating nation.
    pub fn local(level: Level) -> Label {
        Label {
            level,
            compartments: BTreeSet::new(),
            rel_to: BTreeSet::new(),
        }
    }
}

/// One classification level as the network file declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelName {
    /// The full name, such as `SECRET`.
    pub name: String,
    /// An abbreviation markings may use instead, such as `S`.
    pub short: Option<String>,
}

/// What a marking can refer to: the network's levels, nations, communities
/// and compartments. Parsing against it rejects anything it does not know.
#[derive(Clone, Debug)]
pub struct MarkingScheme {
    levels: Vec<LevelName>,
    nations: BTreeSet<Nation>,
    communities: BTreeMap<String, BTreeSet<Nation>>,
    compartments: BTreeSet<String>,
    /// Nations cut out of the network: still names a marking may carry
    /// (labels sealed before the cut stay valid), but released to no one.
    suspended: BTreeSet<Nation>,
}

/// Why a marking could not be parsed. Each message names the bad token and
/// what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkingError {
    /// The marking is empty or blank.
    #[error("empty marking: expected a classification such as SECRET")]
    Empty,
    /// The first block is not a level of the scheme.
    #[error("unknown classification `{token}`: expected one of {expected}")]
    UnknownLevel {
        /// The text where a level was expected.
        token: String,
        /// The scheme's levels, for the message.
        expected: String,
    },
    /// A `//`-separated block is empty.
    #[error("empty block at position {position} (doubled or trailing `//`): expected `REL TO ...` or compartments")]
    EmptyBlock {
        /// Which block, counting from 1 (the classification).
        position: usize,
    },
    /// `REL TO` names nothing.
    #[error("empty `REL TO`: expected at least one nation or community after `REL TO`")]
    EmptyRelTo,
    /// A name in a `REL TO` list is empty.
    #[error("empty name in `REL TO` list (doubled or trailing `,`): expected a nation or community")]
    EmptyRelToName,
    /// A `REL TO` name is neither a nation nor a community of the scheme.
    #[error("unknown nation or community `{token}` in `REL TO`: expected a nation code such as GBR or a community such as NORDIC")]
    UnknownName {
        /// The unknown name, as written.
        token: String,
    },
    /// The marking has more than one `REL TO` block.
    #[error("`REL TO` appears twice: write all names in one `REL TO` block")]
    DuplicateRelTo,
    /// A block starts with `REL` but not with `REL TO`.
    #[error("malformed `REL TO` block `{token}`: expected `REL TO ` followed by names separated by `, `")]
    MalformedRelTo {
        /// The block, as written.
        token: String,
    },
    /// A compartment block has an empty compartment.
    #[error("empty compartment (doubled or trailing `/`) in `{block}`")]
    EmptyCompartment {
        /// The block, as written.
        block: String,
    },
    /// A compartment the scheme does not declare.
    #[error("unknown compartment `{token}`: expected one of {expected}")]
    UnknownCompartment {
        /// The unknown compartment, as written.
        token: String,
        /// The scheme's compartments, for the message.
        expected: String,
    },
}

fn join_or_none<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let joined: Vec<&str> = items.collect();
    if joined.is_empty() {
        "(none declared)".to_owned()
    } else {
        joined.join(", ")
    }
}

impl MarkingScheme {
    /// A scheme of these levels (lowest first), nations, communities and
    /// compartments.
    pub fn new(
        levels: Vec<LevelName>,
        nations: BTreeSet<Nation>,
        communities: BTreeMap<String, BTreeSet<Nation>>,
        compartments: BTreeSet<String>,
    ) -> MarkingScheme {
        MarkingScheme {
            levels,
            nations,
            communities,
            compartments,
            suspended: BTreeSet::new(),
        }
    }

    /// The same scheme with `suspended` cut out: no label, community or
    /// origin releases anything to them any more.
    pub fn with_suspended(&self, suspended: BTreeSet<Nation>) -> MarkingScheme {
        MarkingScheme {
            suspended,
            ..self.clone()
        }
    }

    /// The nations cut out of the network.
    pub fn suspended(&self) -> &BTreeSet<Nation> {
        &self.suspended
    }

    /// The levels, lowest first.
    pub fn levels(&self) -> &[LevelName] {
        &self.levels
    }

    /// The nations of the network.
    pub fn nations(&self) -> &BTreeSet<Nation> {
        &self.nations
    }

    /// The communities, each with its member nations.
    pub fn communities(&self) -> &BTreeMap<String, BTreeSet<Nation>> {
        &self.communities
    }

    /// The compartments a marking may name.
    pub fn compartments(&self) -> &BTreeSet<String> {
        &self.compartments
    }

    /// The level with this full name or abbreviation, in any case.
    pub fn level(&self, text: &str) -> Option<Level> {
        let text = text.trim();
        self.levels
            .iter()
            .position(|l| {
                l.name.eq_ignore_ascii_case(text)
                    || l.short.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(text))
            })
            .and_then(|rank| u8::try_from(rank).ok())
            .map(Level)
    }

    /// The full name of a level; a rank outside the scheme (possible only
    /// in data from outside) prints as its number rather than panicking.
    pub fn level_name(&self, level: Level) -> String {
        match self.levels.get(usize::from(level.0)) {
            Some(l) => l.name.clone(),
            None => format!("LEVEL-{}", level.0),
        }
    }

    /// The most sensitive level of the scheme.
    pub fn highest_level(&self) -> Level {
        Level(u8::try_from(self.levels.len().saturating_sub(1)).unwrap_or(u8::MAX))
    }

    fn level_error(&self, token: &str) -> MarkingError {
        let expected = self
            .levels
            .iter()
            .map(|l| match &l.short {
                Some(s) => format!("{} ({s})", l.name),
                None => l.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        MarkingError::UnknownLevel {
            token: token.to_owned(),
            expected,
        }
    }

    /// Parses a marking, in any case, against this scheme; see the module docs
    /// for the grammar.
    pub fn parse(&self, marking: &str) -> Result<Label, MarkingError> {
        let marking = marking.trim();
        if marking.is_empty() {
            return Err(MarkingError::Empty);
        }
        let mut blocks = marking.split("//");
        let level_token = blocks.next().unwrap_or_default().trim();
        if level_token.is_empty() {
            return Err(MarkingError::EmptyBlock { position: 1 });
        }
        let level = self
            .level(level_token)
            .ok_or_else(|| self.level_error(level_token))?;
        let mut label = Label::local(level);
        let mut seen_rel_to = false;
        for (index, block) in blocks.enumerate() {
            let block = block.trim();
            if block.is_empty() {
                return Err(MarkingError::EmptyBlock { position: index + 2 });
            }
            if let Some(names) = rel_to_names(block)? {
                if seen_rel_to {
                    return Err(MarkingError::DuplicateRelTo);
                }
                seen_rel_to = true;
                self.parse_rel_to(names, &mut label)?;
            } else {
                self.parse_compartments(block, &mut label)?;
            }
        }
        Ok(label)
    }

    fn parse_rel_to(&self, names: &str, label: &mut Label) -> Result<(), MarkingError> {
        if names.trim().is_empty() {
            return Err(MarkingError::EmptyRelTo);
        }
        for name in names.split(',') {
            let name = name.trim();
            if name.is_empty() {
                return Err(MarkingError::EmptyRelToName);
            }
            let upper = name.to_ascii_uppercase();
            let known = self.communities.contains_key(&upper)
                || Nation::parse(&upper).is_some_and(|n| self.nations.contains(&n));
            if !known {
                return Err(MarkingError::UnknownName {
                    token: name.to_owned(),
                });
            }
            label.rel_to.insert(upper);
        }
        Ok(())
    }

    fn parse_compartments(&self, block: &str, label: &mut Label) -> Result<(), MarkingError> {
        for compartment in block.split('/') {
            let compartment = compartment.trim();
            if compartment.is_empty() {
                return Err(MarkingError::EmptyCompartment {
                    block: block.to_owned(),
                });
            }
            let upper = compartment.to_ascii_uppercase();
            if !self.compartments.contains(&upper) {
                return Err(MarkingError::UnknownCompartment {
                    token: compartment.to_owned(),
                    expected: join_or_none(self.compartments.iter().map(String::as_str)),
                });
            }
            label.compartments.insert(upper);
        }
        Ok(())
    }

    /// The canonical marking: full level name, then compartments, then
    /// `REL TO`, each sorted.
    pub fn format(&self, label: &Label) -> String {
        let mut out = self.level_name(label.level);
        if !label.compartments.is_empty() {
            out.push_str("//");
            out.push_str(&join(label.compartments.iter(), "/"));
        }
        if !label.rel_to.is_empty() {
            out.push_str("//REL TO ");
            out.push_str(&join(label.rel_to.iter(), ", "));
        }
        out
    }

    /// The nations a `REL TO` list names, with communities expanded. Empty
    /// when the label has no `REL TO`. Names this scheme does not know
    /// expand to nothing, so an unknown name can only narrow a label.
    pub fn expand(&self, label: &Label) -> BTreeSet<Nation> {
        let mut nations = BTreeSet::new();
        for name in &label.rel_to {
            if let Some(members) = self.communities.get(name) {
                nations.extend(members.iter().copied());
            } else if let Some(nation) = Nation::parse(name).filter(|n| self.nations.contains(n)) {
                nations.insert(nation);
            }
        }
        nations.retain(|nation| !self.suspended.contains(nation));
        nations
    }

    /// Whether `nation` may see a message with `label`. The originating
    /// nation always may, so a label with no `REL TO` stays in its origin
    /// and adding names can only widen who may see it. `origin` is `None`
    /// when it is not known (as in `entente explain` without `--from`);
    /// then only the `REL TO` names count.
    pub fn releasable_to(&self, label: &Label, origin: Option<Nation>, nation: Nation) -> bool {
        // A cut nation is released nothing, and what it publishes is
        // released to no one.
        if self.suspended.contains(&nation) || origin.is_some_and(|o| self.suspended.contains(&o)) {
            return false;
        }
        origin == Some(nation)
            || label.rel_to.iter().any(|name| {
                self.communities
                    .get(name)
                    .map_or(name.as_bytes() == nation.0, |members| members.contains(&nation))
            })
    }

    /// Every nation of the scheme that may see `label` (see `releasable_to`).
    pub fn releasable_nations(&self, label: &Label, origin: Option<Nation>) -> BTreeSet<Nation> {
        if origin.is_some_and(|o| self.suspended.contains(&o)) {
            return BTreeSet::new();
        }
        let mut nations = self.expand(label);
        nations.extend(origin);
        nations
    }
}

/// Why a label from outside is not in canonical form under a scheme: it
/// would print as a marking that says something other than what every
/// hop enforces. Each message names the offending part, escaped and cut
/// short, since it came from outside.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The level's rank is past the scheme's highest level.
    #[error("classification level {rank} is out of range: the network has {levels} levels")]
    LevelOutOfRange {
        /// The rank the label carries.
        rank: u8,
        /// How many levels the scheme has.
        levels: usize,
    },
    /// A compartment the scheme does not declare, or not in its upper-case
    /// form.
    #[error("unknown compartment {0}")]
    UnknownCompartment(String),
    /// A `REL TO` entry that is not exactly one known nation code or
    /// community name, in upper case.
    #[error("`REL TO` entry {0} is not one known nation or community")]
    UnknownName(String),
}

/// At most this much of a name from outside goes into an error message.
const QUOTED_MAX: usize = 64;

/// A name from outside, quoted for a message: control characters escaped
/// and cut short, so it can neither forge a line nor flood a log.
pub fn quoted(text: &str) -> String {
    let mut out = String::from("`");
    for (count, c) in text.chars().enumerate() {
        if count == QUOTED_MAX {
            out.push_str(&format!("…` ({} bytes)", text.len()));
            return out;
        }
        out.extend(c.escape_debug());
    }
    out.push('`');
    out
}

impl MarkingScheme {
    /// Whether a label is canonical under this scheme: its level is in
    /// range and every compartment and `REL TO` entry is one known name
    /// in upper case. For a scheme from a valid network file (upper-case
    /// names, none of them reserved words) these are exactly the labels
    /// for which `parse(format(label)) == label`, so the marking printed for a
    /// canonical label says what is enforced (a property test holds the
    /// two definitions together). Cheap: a lookup per name, and it stops
    /// at the first bad one, so a huge hostile label costs little.
    pub fn check_canonical(&self, label: &Label) -> Result<(), LabelError> {
        if usize::from(label.level.0) >= self.levels.len() {
            return Err(LabelError::LevelOutOfRange {
                rank: label.level.0,
                levels: self.levels.len(),
            });
        }
        if let Some(bad) = label
            .compartments
            .iter()
            .find(|c| !self.compartments.contains(*c))
        {
            return Err(LabelError::UnknownCompartment(quoted(bad)));
        }
        let known = |name: &String| {
            self.communities.contains_key(name)
                || Nation::parse(name).is_some_and(|n| n.as_str() == name && self.nations.contains(&n))
        };
        if let Some(bad) = label.rel_to.iter().find(|n| !known(n)) {
            return Err(LabelError::UnknownName(quoted(bad)));
        }
        Ok(())
    }
}

/// `Some(names)` when the block is a `REL TO` block, `None` when it is a
/// compartment block, and an error when it starts like `REL TO` but is not.
fn rel_to_names(block: &str) -> Result<Option<&str>, MarkingError> {
    let mut words = block.splitn(3, char::is_whitespace);
    let first = words.next().unwrap_or_default();
    if !first.eq_ignore_ascii_case("REL") {
        return Ok(None);
    }
    let second = words.next().unwrap_or_default();
    if !second.eq_ignore_ascii_case("TO") {
        return Err(MarkingError::MalformedRelTo {
            token: block.to_owned(),
        });
    }
    Ok(Some(words.next().unwrap_or_default()))
}

fn join<'a>(items: impl Iterator<Item = &'a String>, separator: &str) -> String {
    items.map(String::as_str).collect::<Vec<_>>().join(separator)
}

/// The default ordered levels (ARCHITECTURE.md, "Vocabulary"), for networks that do not
/// declare their own.
pub fn default_levels() -> Vec<LevelName> {
    [
        ("UNCLASSIFIED", "U"),
        ("RESTRICTED", "R"),
        ("CONFIDENTIAL", "C"),
        ("SECRET", "S"),
        ("TOP SECRET", "TS"),
    ]
    .into_iter()
    .map(|(name, short)| LevelName {
        name: name.to_owned(),
        short: Some(short.to_owned()),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nation(code: &str) -> Nation {
        Nation::parse(code).unwrap()
    }

    fn scheme() -> MarkingScheme {
        let nations: BTreeSet<Nation> = [
            "GBR", "FRA", "POL", "FIN", "SWE", "DNK", "NOR", "EST", "LVA", "LTU",
        ]
        .into_iter()
        .map(nation)
        .collect();
        let mut communities = BTreeMap::new();
        communities.insert(
            "NORDIC".to_owned(),
            ["FIN", "SWE", "DNK", "NOR"].into_iter().map(nation).collect(),
        );
        communities.insert(
            "BALTIC".to_owned(),
            ["EST", "LVA", "LTU"].into_iter().map(nation).collect(),
        );
        let compartments = ["AIRDEF", "SIGINT", "HUMINT"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        MarkingScheme::new(default_levels(), nations, communities, compartments)
    }

    #[test]
    fn parses_the_examples_from_the_design() {
        let s = scheme();
        let label = s.parse("SECRET//REL TO GBR, FRA").unwrap();
        assert_eq!(label.level, Level(3));
        assert_eq!(s.format(&label), "SECRET//REL TO FRA, GBR");

        let label = s.parse("S//REL TO NORDIC").unwrap();
        assert_eq!(s.format(&label), "SECRET//REL TO NORDIC");
        assert_eq!(
            s.expand(&label),
            ["DNK", "FIN", "NOR", "SWE"].into_iter().map(nation).collect()
        );

        let label = s
            .parse("CONFIDENTIAL//AIRDEF/SIGINT//REL TO BALTIC, POL")
            .unwrap();
        assert_eq!(
            s.format(&label),
            "CONFIDENTIAL//AIRDEF/SIGINT//REL TO BALTIC, POL"
        );

        let label = s.parse("UNCLASSIFIED").unwrap();
        assert_eq!(label, Label::local(Level(0)));
        assert_eq!(s.format(&label), "UNCLASSIFIED");
    }

    #[test]
    fn printing_is_canonical() {
        let s = scheme();
        let label = s
            .parse("ts // sigint/airdef/SIGINT // rel to pol,gbr ,  GBR, nordic")
            .unwrap();
        assert_eq!(
            s.format(&label),
            "TOP SECRET//AIRDEF/SIGINT//REL TO GBR, NORDIC, POL"
        );
    }

    #[test]
    fn errors_name_the_bad_token() {
        let s = scheme();
        let cases: &[(&str, &str)] = &[
            ("", "empty marking"),
            ("SEKRET//REL TO GBR", "`SEKRET`"),
            ("SECRET//REL TO XYZ", "`XYZ`"),
            ("SECRET//REL TO GBR, NORDICS", "`NORDICS`"),
            ("SECRET//REL TO ", "empty `REL TO`"),
            ("SECRET//REL TO", "empty `REL TO`"),
            ("SECRET////REL TO GBR", "doubled or trailing `//`"),
            ("SECRET//REL TO GBR//", "doubled or trailing `//`"),
            ("//REL TO GBR", "position 1"),
            ("SECRET//REL TO GBR,,FRA", "doubled or trailing `,`"),
            ("SECRET//REL TO GBR//REL TO FRA", "appears twice"),
            ("SECRET//RELEASE TO GBR", "unknown compartment `RELEASE TO GBR`"),
            ("SECRET//REL GBR", "malformed `REL TO`"),
            ("SECRET//AIRDEF//SIGINT/", "empty compartment"),
            ("SECRET//NOFORN", "`NOFORN`"),
        ];
        for (marking, expected) in cases {
            let err = s.parse(marking).expect_err(marking).to_string();
            assert!(
                err.contains(expected),
                "parsing {marking:?} gave {err:?}, which does not contain {expected:?}"
            );
        }
    }

    #[test]
    fn no_rel_to_means_origin_only() {
        let s = scheme();
        let label = s.parse("SECRET").unwrap();
        let gbr = Some(nation("GBR"));
        assert!(s.releasable_to(&label, gbr, nation("GBR")));
        assert!(!s.releasable_to(&label, gbr, nation("FRA")));
        assert!(!s.releasable_to(&label, None, nation("GBR")));
        assert!(s.expand(&label).is_empty());
        assert_eq!(s.releasable_nations(&label, gbr), [nation("GBR")].into());
    }

    #[test]
    fn nation_codes_are_three_letters() {
        assert_eq!(Nation::parse("gbr"), Some(nation("GBR")));
        assert_eq!(Nation::parse("GB"), None);
        assert_eq!(Nation::parse("GBRX"), None);
        assert_eq!(Nation::parse("G1R"), None);
        assert_eq!(Nation::parse("ÄBC"), None);
    }

    fn arb_label() -> impl Strategy<Value = Label> {
        let s = scheme();
        let names: Vec<String> = s
            .nations()
            .iter()
            .map(|n| n.to_string())
            .chain(s.communities().keys().cloned())
            .collect();
        let compartments: Vec<String> = s.compartments().iter().cloned().collect();
        (
            0u8..5,
            proptest::sample::subsequence(compartments.clone(), 0..=compartments.len()),
            proptest::sample::subsequence(names.clone(), 0..=names.len()),
        )
            .prop_map(|(level, compartments, rel_to)| Label {
                level: Level(level),
                compartments: compartments.into_iter().collect(),
                rel_to: rel_to.into_iter().collect(),
            })
    }

    /// Labels as a hostile peer could send them: known names, and names
    /// that are unknown, in the wrong case, joined, padded or with control
    /// characters; levels in and out of range.
    fn arb_any_label() -> impl Strategy<Value = Label> {
        let names = prop_oneof![
            Just("GBR".to_owned()),
            Just("NORDIC".to_owned()),
            Just("AIRDEF".to_owned()),
            Just("SIGINT".to_owned()),
            Just("gbr".to_owned()),
            Just("Nordic".to_owned()),
            Just("FRA, GBR".to_owned()),
            Just("USA".to_owned()),
            Just(" POL".to_owned()),
            Just("SIGINT/AIRDEF".to_owned()),
            Just("REL TO GBR".to_owned()),
            Just("".to_owned()),
            "[A-Za-z ,/\\n]{0,8}",
        ];
        (
            0u8..8,
            proptest::collection::btree_set(names.clone(), 0..3),
            proptest::collection::btree_set(names, 0..3),
        )
            .prop_map(|(level, compartments, rel_to)| Label {
                level: Level(level),
                compartments,
                rel_to,
            })
    }

    proptest! {
        #[test]
        fn print_then_parse_round_trips(label in arb_label()) {
            let s = scheme();
            let printed = s.format(&label);
            prop_assert_eq!(s.parse(&printed).unwrap(), label);
        }

        #[test]
        fn parser_never_panics(input in "\\PC{0,80}") {
            let _ = scheme().parse(&input);
        }

        #[test]
        fn parser_never_panics_on_marking_like_input(
            input in "(S|SECRET|TS|X)?(//|/|,| |REL|TO|GBR|NORDIC|AIRDEF|XYZ){0,12}"
        ) {
            let s = scheme();
            if let Ok(label) = s.parse(&input) {
                // Anything accepted must print to something that parses back the same.
                prop_assert_eq!(s.parse(&s.format(&label)).unwrap(), label);
            }
        }

        #[test]
        fn every_label_the_scheme_parses_is_canonical(
            input in "(S|SECRET|TS|C)(//(REL TO |rel to )?(GBR|fra|NORDIC|baltic|AIRDEF|sigint|HUMINT)((, |,|/)(POL|gbr|nordic|SIGINT|airdef))*){0,3}"
        ) {
            let s = scheme();
            if let Ok(label) = s.parse(&input) {
                prop_assert_eq!(s.check_canonical(&label), Ok(()));
            }
        }

        #[test]
        fn canonical_labels_are_exactly_those_that_print_and_parse_back(label in arb_any_label()) {
            let s = scheme();
            let round_trips = s.parse(&s.format(&label)).as_ref() == Ok(&label);
            prop_assert_eq!(s.check_canonical(&label).is_ok(), round_trips, "{:?}", label);
        }

        #[test]
        fn a_mutated_label_is_not_canonical(label in arb_label(), mutation in 0usize..6, at in any::<prop::sample::Index>()) {
            let s = scheme();
            prop_assert_eq!(s.check_canonical(&label), Ok(()));
            let mut bad = label.clone();
            let names: Vec<String> = s.nations().iter().map(Nation::to_string).collect();
            let name = at.get(&names).clone();
            match mutation {
                0 => { bad.compartments.insert("NOFORN".into()); }
                1 => { bad.rel_to.insert(name.to_ascii_lowercase()); }
                2 => bad.level = Level(5 + at.index(250) as u8),
                3 => { bad.rel_to.insert(format!("{name}, GBR")); }
                4 => { bad.compartments.insert("sigint".into()); }
                _ => { bad.rel_to.insert(format!("{name}\n")); }
            }
            prop_assert!(s.check_canonical(&bad).is_err(), "{:?}", bad);
            prop_assert!(s.parse(&s.format(&bad)).as_ref() != Ok(&bad));
        }

        #[test]
        fn releasable_to_agrees_with_expand(label in arb_label(), origin in 0usize..10, to in 0usize..10) {
            let s = scheme();
            let nations: Vec<Nation> = s.nations().iter().copied().collect();
            let (origin, to) = (nations[origin], nations[to]);
            let expected = to == origin || s.expand(&label).contains(&to);
            prop_assert_eq!(s.releasable_to(&label, Some(origin), to), expected);
            prop_assert_eq!(s.releasable_nations(&label, Some(origin)).contains(&to), expected);
        }
    }
}
