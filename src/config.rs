//! The network file (`config/network.toml`): its serde types, and strict
//! validation into a [`Policy`]. Every error names the file, the item and
//! the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::label::{default_levels, Level, LevelName, MarkingScheme, Nation};
use crate::policy::{NationPolicy, Policy, Principal};
use crate::resolution::Quorum;
use crate::topic::Pattern;

/// The file `entente` reads when `--network` is not given.
pub const DEFAULT_NETWORK_FILE: &str = "config/network.toml";

/// Why a network file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read network file {path}: {cause}")]
    Read {
        /// The network file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the network file's shape.
    #[error("{path}: {message}")]
    Syntax {
        /// The network file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// The file parsed but broke a rule.
    #[error("{path}: {item}: {problem}; {fix}")]
    Invalid {
        /// The network file.
        path: PathBuf,
        /// The item at fault, such as `nations.GBR.peers`.
        item: String,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

/// The whole network file, as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// The classification levels and compartments.
    #[serde(default)]
    pub classification: ClassificationFile,
    /// Communities: names for sets of nations, usable in `REL TO` lists.
    #[serde(default)]
    pub communities: BTreeMap<String, Vec<String>>,
    /// The nations, by ISO 3166-1 alpha-3 code (`[nations.GBR]`).
    #[serde(default)]
    pub nations: BTreeMap<String, NationFile>,
    /// The principals (`[[principals]]`): the people and systems that connect
    /// as clients.
    #[serde(default)]
    pub principals: Vec<PrincipalFile>,
    /// The coalition's rules for cut and restore resolutions.
    #[serde(default)]
    pub resolutions: ResolutionsFile,
}

/// The `[resolutions]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolutionsFile {
    /// How many nations' admins must sign a resolution: a number, or
    /// `"majority"` (more than half of the nations it does not name), the
    /// default.
    #[serde(default)]
    pub quorum: Option<QuorumFile>,
}

/// A quorum as written: a number or a word.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuorumFile {
    /// That many nations.
    Count(i64),
    /// `"majority"`.
    Word(String),
}

/// The `[classification]` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationFile {
    /// Lowest first. Empty means the default levels (`label::default_levels`).
    #[serde(default)]
    pub levels: Vec<LevelFile>,
    /// Every compartment a marking may name.
    #[serde(default)]
    pub compartments: Vec<String>,
}

/// One classification level.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelFile {
    /// The full name, such as `SECRET`.
    pub name: String,
    /// An abbreviation markings may use instead, such as `S`.
    #[serde(default)]
    pub short: Option<String>,
}

/// One `[nations.XXX]` table: a nation's node and its release ceilings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NationFile {
    /// `host:port` where the nation's node listens.
    pub address: String,
    /// The nations this node links to; every link must be listed at both ends.
    #[serde(default)]
    pub peers: Vec<String>,
    /// The highest level released to a partner not named in `ceilings`.
    /// Absent means the lowest level: release is denied by default.
    #[serde(default)]
    pub default_ceiling: Option<String>,
    /// The highest level released to each named partner nation.
    #[serde(default)]
    pub ceilings: BTreeMap<String, String>,
}

/// One `[[principals]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalFile {
    /// The principal's name, such as `gbr.analyst` (lower case).
    pub name: String,
    /// The nation whose node the principal connects to.
    pub nation: String,
    /// The highest level the principal may see or publish.
    pub clearance: String,
    /// The compartments the principal holds.
    #[serde(default)]
    pub compartments: Vec<String>,
    /// The topic patterns the principal may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// The topic patterns the principal may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Its roles: `admin` may run admin commands on its nation's node.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Reads and validates a network file.
pub fn load_network(path: &Path) -> Result<Policy, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    parse_network(&text, path)
}

/// Validates network-file text; `path` is used only in error messages.
pub fn parse_network(text: &str, path: &Path) -> Result<Policy, ConfigError> {
    let file: NetworkFile = toml::from_str(text).map_err(|err| ConfigError::Syntax {
        path: path.to_owned(),
        message: err.to_string().trim_end().to_owned(),
    })?;
    file.validate(path)
}

struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(
        &self,
        item: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            item: item.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn nation(&self, item: &str, text: &str, known: &BTreeSet<Nation>) -> Result<Nation, ConfigError> {
        match Nation::parse(text) {
            Some(nation) if known.contains(&nation) => Ok(nation),
            _ => Err(self.invalid(
                item,
                format!("unknown nation `{text}`"),
                format!("declare it as [nations.{text}] or use one of {}", list(known)),
            )),
        }
    }

    fn level(&self, item: &str, text: &str, scheme: &MarkingScheme) -> Result<Level, ConfigError> {
        scheme.level(text).ok_or_else(|| {
            self.invalid(
                item,
                format!("undefined classification level `{text}`"),
                format!(
                    "use one of {}",
                    scheme
                        .levels()
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }
}

fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Words the marking grammar gives a meaning of its own: a block that
/// starts with the word `REL` is read as `REL TO ...`, so a compartment
/// named `REL` could never be parsed, and names that read as part of the
/// grammar make markings ambiguous to people.
pub const RESERVED_WORDS: [&str; 2] = ["REL", "TO"];

/// The reserved word `name` is, in any case.
fn reserved(name: &str) -> Option<&'static str> {
    RESERVED_WORDS
        .into_iter()
        .find(|word| word.eq_ignore_ascii_case(name))
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl NetworkFile {
    /// Checks every rule and builds the [`Policy`]; `path` is used only in error
    /// messages.
    pub fn validate(self, path: &Path) -> Result<Policy, ConfigError> {
        // Of what the file says, not how it is laid out: comments and
        // spacing do not change the policy. `Debug` is deterministic here
        // (maps are ordered) and cannot fail, unlike re-serializing.
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("{self:?}").as_bytes());
        let mut file_digest = [0u8; 32];
        file_digest.copy_from_slice(digest.as_ref());
        let check = Checker { path };
        let levels = self.validate_levels(&check)?;

        let mut nations = BTreeSet::new();
        for code in self.nations.keys() {
            let nation = Nation::parse(code)
                .filter(|n| n.as_str() == code)
                .ok_or_else(|| {
                    check.invalid(
                        format!("[nations.{code}]"),
                        "a nation must be an upper-case ISO 3166-1 alpha-3 code",
                        "write it like GBR or FRA",
                    )
                })?;
            nations.insert(nation);
        }
        if nations.is_empty() {
            return Err(check.invalid(
                "[nations]",
                "no nations are declared",
                "add a [nations.XXX] table for each node",
            ));
        }
        if nations.len() > crate::routing::MAX_NATIONS {
            return Err(check.invalid(
                "[nations]",
                format!(
                    "{} nations are declared; a network holds at most {}",
                    nations.len(),
                    crate::routing::MAX_NATIONS
                ),
                "split the network",
            ));
        }

        let mut compartments = BTreeSet::new();
        for name in &self.classification.compartments {
            if let Some(word) = reserved(name) {
                return Err(check.invalid(
                    format!("classification.compartments `{name}`"),
                    format!("`{word}` is a reserved word of the marking grammar (`REL TO`)"),
                    "rename the compartment",
                ));
            }
            if !is_identifier(name) {
                return Err(check.invalid(
                    format!("classification.compartments `{name}`"),
                    "a compartment must be upper-case letters, digits, `_` or `-`",
                    "rename it, for example SIGINT",
                ));
            }
            if !compartments.insert(name.clone()) {
                return Err(check.invalid(
                    format!("classification.compartments `{name}`"),
                    "declared twice",
                    "remove the duplicate",
                ));
            }
        }

        let mut communities = BTreeMap::new();
        for (name, members) in &self.communities {
            let item = format!("communities.{name}");
            if let Some(word) = reserved(name) {
                return Err(check.invalid(
                    &item,
                    format!("`{word}` is a reserved word of the marking grammar (`REL TO`)"),
                    "rename the community",
                ));
            }
            if !is_identifier(name) || name.len() == 3 {
                return Err(check.invalid(
                    &item,
                    "a community name must be upper case and not three letters long (that would read as a nation)",
                    "rename it, for example NORDIC",
                ));
            }
            if levels.iter().any(|l| &l.name == name) || compartments.contains(name) {
                return Err(check.invalid(
                    &item,
                    "the name is also a level or a compartment",
                    "rename the community",
                ));
            }
            let mut set = BTreeSet::new();
            for member in members {
                let nation = check.nation(&item, member, &nations)?;
                if !set.insert(nation) {
                    return Err(check.invalid(
                        &item,
                        format!("{member} is listed twice"),
                        "remove the duplicate",
                    ));
                }
            }
            if set.is_empty() {
                return Err(check.invalid(
                    &item,
                    "the community has no members",
                    "list its nations or remove it",
                ));
            }
            communities.insert(name.clone(), set);
        }

        let scheme = MarkingScheme::new(levels, nations.clone(), communities, compartments);

        let mut nation_policies = BTreeMap::new();
        for (code, nation_file) in &self.nations {
            let nation = check.nation(&format!("[nations.{code}]"), code, &nations)?;
            nation_policies.insert(nation, nation_file.validate(&check, nation, &nations, &scheme)?);
        }
        for (nation, policy) in &nation_policies {
            for peer in &policy.peers {
                if !nation_policies[peer].peers.contains(nation) {
                    return Err(check.invalid(
                        format!("nations.{nation}.peers"),
                        format!("lists {peer}, but nations.{peer}.peers does not list {nation}: links must be symmetric"),
                        format!("add \"{nation}\" to nations.{peer}.peers or remove {peer} from nations.{nation}.peers"),
                    ));
                }
            }
        }

        let mut principals = BTreeMap::new();
        for principal_file in &self.principals {
            let principal = principal_file.validate(&check, &nations, &scheme)?;
            if principals.contains_key(&principal.name) {
                return Err(check.invalid(
                    format!("principal `{}`", principal.name),
                    "declared twice",
                    "give each principal a unique name",
                ));
            }
            principals.insert(principal.name.clone(), principal);
        }

        let quorum = match &self.resolutions.quorum {
            None => Quorum::Majority,
            Some(QuorumFile::Word(word)) if word == "majority" => Quorum::Majority,
            Some(QuorumFile::Count(count)) if *count >= 1 && (*count as usize) < nations.len() => {
                Quorum::Count(*count as usize)
            }
            Some(other) => {
                return Err(check.invalid(
                    "resolutions.quorum",
                    format!("{other:?} is not a quorum"),
                    format!(
                    "write \"majority\" or a number from 1 to {} (the nations that may vote on a resolution)",
                    nations.len().saturating_sub(1)
                ),
                ))
            }
        };
        Ok(Policy::new(
            scheme,
            nation_policies,
            principals,
            quorum,
            file_digest,
        ))
    }

    fn validate_levels(&self, check: &Checker) -> Result<Vec<LevelName>, ConfigError> {
        if self.classification.levels.is_empty() {
            return Ok(default_levels());
        }
        if self.classification.levels.len() > usize::from(u8::MAX) {
            return Err(check.invalid(
                "classification.levels",
                "more than 255 levels",
                "use fewer levels",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut levels = Vec::new();
        for level in &self.classification.levels {
            let item = format!("classification.levels `{}`", level.name);
            let valid = |text: &str| {
                !text.is_empty()
                    && !text.contains("//")
                    && !text.contains('/')
                    && text == text.trim()
                    && text
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == ' ' || c == '-' || c == '_')
            };
            if !valid(&level.name) || level.short.as_deref().is_some_and(|s| !valid(s)) {
                return Err(check.invalid(
                    &item,
                    "a level name must be upper-case letters, spaces, `-` or `_`",
                    "rename it, for example SECRET",
                ));
            }
            for name in std::iter::once(&level.name).chain(level.short.as_ref()) {
                if !seen.insert(name.clone()) {
                    return Err(check.invalid(
                        &item,
                        format!("`{name}` is used by more than one level"),
                        "give each level a unique name and abbreviation",
                    ));
                }
            }
            levels.push(LevelName {
                name: level.name.clone(),
                short: level.short.clone(),
            });
        }
        Ok(levels)
    }
}

impl NationFile {
    fn validate(
        &self,
        check: &Checker,
        nation: Nation,
        nations: &BTreeSet<Nation>,
        scheme: &MarkingScheme,
    ) -> Result<NationPolicy, ConfigError> {
        let item = format!("nations.{nation}");
        let valid_address = self
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid_address {
            return Err(check.invalid(
                format!("{item}.address"),
                format!("`{}` is not host:port", self.address),
                "write it like 127.0.0.1:7401 or node.gbr.example:7401",
            ));
        }
        let mut peers = BTreeSet::new();
        for peer in &self.peers {
            let peer_nation = check.nation(&format!("{item}.peers"), peer, nations)?;
            if peer_nation == nation {
                return Err(check.invalid(
                    format!("{item}.peers"),
                    "a nation cannot peer with itself",
                    format!("remove {nation} from its own peers"),
                ));
            }
            if !peers.insert(peer_nation) {
                return Err(check.invalid(
                    format!("{item}.peers"),
                    format!("{peer} is listed twice"),
                    "remove the duplicate",
                ));
            }
        }
        let default_ceiling = match &self.default_ceiling {
            Some(text) => check.level(&format!("{item}.default_ceiling"), text, scheme)?,
            None => Level(0),
        };
        let mut ceilings = BTreeMap::new();
        for (partner, level) in &self.ceilings {
            let ceiling_item = format!("{item}.ceilings.{partner}");
            let partner = check.nation(&ceiling_item, partner, nations)?;
            if partner == nation {
                return Err(check.invalid(
                    ceiling_item,
                    "a nation has no ceiling toward itself",
                    "remove the entry",
                ));
            }
            ceilings.insert(partner, check.level(&ceiling_item, level, scheme)?);
        }
        Ok(NationPolicy {
            address: self.address.clone(),
            peers,
            default_ceiling,
            ceilings,
        })
    }
}

impl PrincipalFile {
    fn validate(
        &self,
        check: &Checker,
        nations: &BTreeSet<Nation>,
        scheme: &MarkingScheme,
    ) -> Result<Principal, ConfigError> {
        let item = format!("principal `{}`", self.name);
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
        if !valid_name {
            return Err(check.invalid(
                &item,
                "a principal name must be 1 to 64 lower-case letters, digits, `.`, `-` or `_`",
                "rename it, for example gbr.analyst",
            ));
        }
        let nation = check.nation(&format!("{item}.nation"), &self.nation, nations)?;
        let clearance = check.level(&format!("{item}.clearance"), &self.clearance, scheme)?;
        let mut compartments = BTreeSet::new();
        for compartment in &self.compartments {
            if !scheme.compartments().contains(compartment) {
                return Err(check.invalid(
                    format!("{item}.compartments"),
                    format!("unknown compartment `{compartment}`"),
                    "declare it in classification.compartments",
                ));
            }
            compartments.insert(compartment.clone());
        }
        let patterns = |field: &str, texts: &[String]| -> Result<Vec<Pattern>, ConfigError> {
            texts
                .iter()
                .map(|text| {
                    Pattern::new(text.as_str()).map_err(|err| {
                        check.invalid(
                            format!("{item}.{field}"),
                            err.to_string(),
                            "write a pattern such as sigint.> or *.missile",
                        )
                    })
                })
                .collect()
        };
        let mut roles = BTreeSet::new();
        for role in &self.roles {
            if !crate::policy::ROLES.contains(&role.as_str()) {
                return Err(check.invalid(
                    format!("{item}.roles"),
                    format!("unknown role `{role}`"),
                    format!("use one of {}", crate::policy::ROLES.join(", ")),
                ));
            }
            roles.insert(role.clone());
        }
        Ok(Principal {
            roles,
            name: self.name.clone(),
            nation,
            clearance,
            compartments,
            publish: patterns("publish", &self.publish)?,
            subscribe: patterns("subscribe", &self.subscribe)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[classification]
compartments = ["SIGINT"]

[communities]
WEST = ["GBR", "FRA"]

[nations.GBR]
address = "127.0.0.1:7401"
peers = ["FRA"]
default_ceiling = "SECRET"
ceilings = { FRA = "TOP SECRET" }

[nations.FRA]
address = "127.0.0.1:7402"
peers = ["GBR"]

[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]
"#;

    fn error_for(text: &str) -> String {
        parse_network(text, Path::new("net.toml"))
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn minimal_network_loads() {
        let policy = parse_network(MINIMAL, Path::new("net.toml")).unwrap();
        assert_eq!(policy.nations().len(), 2);
        assert!(policy.principal("gbr.analyst").is_some());
    }

    #[test]
    fn sample_network_loads_and_models_the_coalition() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_NETWORK_FILE);
        let policy = load_network(&path).unwrap();
        assert_eq!(policy.nations().len(), 15);
        for nation in policy.nations().keys() {
            let analyst = policy
                .principal(&format!("{}.analyst", nation.lowercase()))
                .unwrap();
            assert_eq!(policy.scheme().level_name(analyst.clearance), "SECRET");
        }
        let usa = Nation::parse("USA").unwrap();
        assert!(
            policy.nations()[&usa].peers.len() < 14,
            "USA must be linked to only some nations"
        );
        let gbr = Nation::parse("GBR").unwrap();
        let fra = Nation::parse("FRA").unwrap();
        let tur = Nation::parse("TUR").unwrap();
        assert_eq!(policy.scheme().level_name(policy.ceiling(gbr, fra)), "TOP SECRET");
        assert_eq!(
            policy.scheme().level_name(policy.ceiling(gbr, tur)),
            "CONFIDENTIAL"
        );
        let nato = &policy.scheme().communities()["NATO"];
        assert_eq!(nato.len(), 14);
        assert!(!nato.contains(&Nation::parse("UKR").unwrap()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = error_for(&MINIMAL.replace("peers = [\"FRA\"]", "peers = [\"FRA\"]\npeer = 1"));
        assert!(
            err.contains("net.toml") && err.contains("unknown field `peer`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_peer_is_refused() {
        let err = error_for(&MINIMAL.replace("peers = [\"FRA\"]", "peers = [\"FRA\", \"DEU\"]"));
        assert!(
            err.contains("nations.GBR.peers") && err.contains("unknown nation `DEU`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_community_member_is_refused() {
        let err = error_for(&MINIMAL.replace("WEST = [\"GBR\", \"FRA\"]", "WEST = [\"GBR\", \"ESP\"]"));
        assert!(err.contains("communities.WEST") && err.contains("`ESP`"), "{err}");
    }

    #[test]
    fn undefined_level_is_refused() {
        let err = error_for(&MINIMAL.replace("clearance = \"SECRET\"", "clearance = \"COSMIC\""));
        assert!(
            err.contains("gbr.analyst") && err.contains("`COSMIC`") && err.contains("use one of"),
            "{err}"
        );
        let err = error_for(&MINIMAL.replace("FRA = \"TOP SECRET\"", "FRA = \"ULTRA\""));
        assert!(
            err.contains("nations.GBR.ceilings.FRA") && err.contains("`ULTRA`"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let doubled = format!(
            "{MINIMAL}\n[[principals]]\nname = \"gbr.analyst\"\nnation = \"GBR\"\nclearance = \"SECRET\"\n"
        );
        let err = error_for(&doubled);
        assert!(
            err.contains("gbr.analyst") && err.contains("declared twice"),
            "{err}"
        );
        let err = error_for(&MINIMAL.replace("[\"SIGINT\"]", "[\"SIGINT\", \"SIGINT\"]"));
        assert!(err.contains("SIGINT") && err.contains("declared twice"), "{err}");
        // TOML itself refuses a nation table declared twice.
        let err = error_for(&format!("{MINIMAL}\n[nations.FRA]\naddress = \"x:1\"\n"));
        assert!(err.contains("net.toml") && err.contains("FRA"), "{err}");
    }

    #[test]
    fn asymmetric_links_are_refused() {
        let err = error_for(&MINIMAL.replace("peers = [\"GBR\"]", "peers = []"));
        assert!(
            err.contains("nations.GBR.peers")
                && err.contains("does not list GBR")
                && err.contains("add \"GBR\" to nations.FRA.peers"),
            "{err}"
        );
    }

    #[test]
    fn bad_addresses_and_patterns_are_refused() {
        let err = error_for(&MINIMAL.replace("127.0.0.1:7402", "127.0.0.1"));
        assert!(err.contains("nations.FRA.address"), "{err}");
        let err = error_for(&MINIMAL.replace("publish = [\">\"]", "publish = [\"a.>.b\"]"));
        assert!(err.contains("gbr.analyst") && err.contains("publish"), "{err}");
    }

    #[test]
    fn reserved_words_are_refused_as_compartments_and_communities() {
        for word in ["REL", "TO", "rel", "To"] {
            let err = error_for(&MINIMAL.replace("[\"SIGINT\"]", &format!("[\"SIGINT\", \"{word}\"]")));
            let upper = word.to_ascii_uppercase();
            assert!(
                err.contains(&format!("classification.compartments `{word}`"))
                    && err.contains(&format!("`{upper}` is a reserved word")),
                "{err}"
            );
            let err = error_for(&MINIMAL.replace("WEST = ", &format!("{word} = ")));
            assert!(
                err.contains(&format!("communities.{word}"))
                    && err.contains(&format!("`{upper}` is a reserved word")),
                "{err}"
            );
        }
        // Names that only contain a reserved word are fine, and every
        // compartment and community a valid file declares can be written
        // in a marking and parsed back.
        let text = MINIMAL
            .replace("[\"SIGINT\"]", "[\"SIGINT\", \"RELAY\", \"TOTEM\", \"REL-TO\"]")
            .replace("WEST = ", "TOWER = ");
        let policy = parse_network(&text, Path::new("net.toml")).unwrap();
        let scheme = policy.scheme();
        for compartment in scheme.compartments() {
            let label = scheme.parse(&format!("SECRET//{compartment}")).unwrap();
            assert_eq!(scheme.format(&label), format!("SECRET//{compartment}"));
        }
        for community in scheme.communities().keys() {
            let marking = format!("SECRET//REL TO {community}");
            assert_eq!(scheme.format(&scheme.parse(&marking).unwrap()), marking);
        }
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = load_network(Path::new("/nonexistent/net.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/net.toml"), "{err}");
    }
}
