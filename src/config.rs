//! The configuration files and their strict validation into a [`Policy`]:
//! the whole network in one file (`config/network.toml`, a demo coalition
//! on one machine), or a coalition file every member shares beside one
//! nation's own national file. Every error names the file, the item and
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolutionsFile {
    /// How many nations' admins must sign a resolution: a number, or
    /// `"majority"` (more than half of the nations it does not name), the
    /// default.
    #[serde(default)]
    pub quorum: Option<QuorumFile>,
}

/// A quorum as written: a number or a word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuorumFile {
    /// That many nations.
    Count(i64),
    /// `"majority"`.
    Word(String),
}

/// The `[classification]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The SHA-256 fingerprint of the nation's CA certificate, as the
    /// coalition agreed it: a CA that does not match is not trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

/// One `[[principals]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalFile {
    /// The principal's name, such as `gbr.analyst` (lower case).
    pub name: String,
    /// The nation whose node the principal connects to.
    pub nation: String,
    /// The highest level the principal may see or publish.
    pub clearance: String,
    /// The compartments the principal holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compartments: Vec<String>,
    /// The topic patterns the principal may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// The topic patterns the principal may subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Its roles: `admin` may run admin commands on its nation's node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Reads and validates a network file.
pub fn load_network(path: &Path) -> Result<Policy, ConfigError> {
    parse_network(&read(path)?, path)
}

/// Validates network-file text; `path` is used only in error messages.
pub fn parse_network(text: &str, path: &Path) -> Result<Policy, ConfigError> {
    parse::<NetworkFile>(text, path)?.validate(path)
}

/// The file `entente` reads when `--coalition` is not given but
/// `--national` is: the sample coalition, split.
pub const DEFAULT_COALITION_FILE: &str = "config/coalition.toml";

/// The coalition file: what every member shares, the same at every node.
/// It holds no principal and no release ceiling; those are each nation's
/// own ([`NationalFile`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalitionFile {
    /// The classification levels and compartments.
    #[serde(default)]
    pub classification: ClassificationFile,
    /// Communities: names for sets of nations, usable in `REL TO` lists.
    #[serde(default)]
    pub communities: BTreeMap<String, Vec<String>>,
    /// The coalition's rules for cut and restore resolutions.
    #[serde(default)]
    pub resolutions: ResolutionsFile,
    /// Each member's node: where it listens, its links, its CA.
    #[serde(default)]
    pub nations: BTreeMap<String, MemberFile>,
}

/// One member's `[nations.XXX]` table in the coalition file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    /// `host:port` where the nation's node listens.
    pub address: String,
    /// The nations its node links to; every link must be listed at both ends.
    #[serde(default)]
    pub peers: Vec<String>,
    /// The SHA-256 fingerprint of the nation's CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

/// A national file: what one nation keeps to itself and never shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NationalFile {
    /// The nation whose file this is, such as GBR.
    pub nation: String,
    /// The highest level it releases to a partner not named in `ceilings`;
    /// absent means the lowest level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ceiling: Option<String>,
    /// The highest level it releases to each named partner.
    #[serde(default)]
    pub ceilings: BTreeMap<String, String>,
    /// Its principals (its admins among them), each with `nation` its own.
    #[serde(default)]
    pub principals: Vec<PrincipalFile>,
}

/// Where a node's policy comes from, so that a reload reads the same files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The whole network in one file.
    Network(PathBuf),
    /// The coalition's file and one nation's own.
    Split {
        /// The coalition file.
        coalition: PathBuf,
        /// The nation's national file.
        national: PathBuf,
    },
}

impl PolicySource {
    /// Reads and validates the files.
    pub fn load(&self) -> Result<Policy, ConfigError> {
        match self {
            PolicySource::Network(path) => load_network(path),
            PolicySource::Split { coalition, national } => load_split(coalition, national),
        }
    }
}

impl PolicySource {
    /// The nation a national file is for; `None` for a whole-network file.
    pub fn own_nation(&self) -> Result<Option<Nation>, ConfigError> {
        match self {
            PolicySource::Network(_) => Ok(None),
            PolicySource::Split { national, .. } => {
                let file: NationalFile = parse(&read(national)?, national)?;
                Nation::parse(&file.nation)
                    .filter(|n| n.as_str() == file.nation)
                    .map(Some)
                    .ok_or_else(|| ConfigError::Invalid {
                        path: national.clone(),
                        item: "nation".to_owned(),
                        problem: format!("`{}` is not a nation code", file.nation),
                        fix: "write it like GBR".to_owned(),
                    })
            }
        }
    }
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySource::Network(path) => write!(f, "{}", path.display()),
            PolicySource::Split { coalition, national } => {
                write!(f, "{} and {}", coalition.display(), national.display())
            }
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|err| ConfigError::Syntax {
        path: path.to_owned(),
        message: err.to_string().trim_end().to_owned(),
    })
}

/// Reads a coalition file and one nation's national file into that
/// nation's [`Policy`]: every nation's node, but only this nation's
/// principals and ceilings. A national file that names another nation's
/// principal, or a nation outside the coalition, is refused.
pub fn load_split(coalition: &Path, national: &Path) -> Result<Policy, ConfigError> {
    let coalition_file: CoalitionFile = parse(&read(coalition)?, coalition)?;
    let national_file: NationalFile = parse(&read(national)?, national)?;
    // The coalition's own rules first, so that its errors name its file.
    NetworkFile::from_split(coalition_file.clone(), None).validate(coalition)?;
    let check = Checker { path: national };
    let members: BTreeSet<Nation> = coalition_file
        .nations
        .keys()
        .filter_map(|n| Nation::parse(n))
        .collect();
    let nation = Nation::parse(&national_file.nation)
        .filter(|n| n.as_str() == national_file.nation && members.contains(n))
        .ok_or_else(|| {
            check.invalid(
                "nation",
                format!("`{}` is not a nation of the coalition file", national_file.nation),
                format!("use one of {}", list(&members)),
            )
        })?;
    for principal in &national_file.principals {
        if principal.nation != nation.as_str() {
            return Err(check.invalid(
                format!("principal `{}`", principal.name),
                format!(
                    "it is a principal of {}: {nation}'s national file lists only {nation}'s own principals",
                    principal.nation
                ),
                format!(
                    "remove it; {} keeps its principals in its own national file",
                    principal.nation
                ),
            ));
        }
    }
    NetworkFile::from_split(coalition_file, Some(national_file)).validate(national)
}

/// Splits a whole-network file into the coalition file and each nation's
/// national file: loading the coalition file with any nation's national
/// file gives that nation's part of the same policy.
pub fn split_network(network: &NetworkFile) -> (CoalitionFile, BTreeMap<String, NationalFile>) {
    let coalition = CoalitionFile {
        classification: network.classification.clone(),
        communities: network.communities.clone(),
        resolutions: network.resolutions.clone(),
        nations: network
            .nations
            .iter()
            .map(|(code, table)| {
                (
                    code.clone(),
                    MemberFile {
                        address: table.address.clone(),
                        peers: table.peers.clone(),
                        ca_fingerprint: table.ca_fingerprint.clone(),
                    },
                )
            })
            .collect(),
    };
    let nationals = network
        .nations
        .iter()
        .map(|(code, table)| {
            (
                code.clone(),
                NationalFile {
                    nation: code.clone(),
                    default_ceiling: table.default_ceiling.clone(),
                    ceilings: table.ceilings.clone(),
                    principals: network
                        .principals
                        .iter()
                        .filter(|p| &p.nation == code)
                        .cloned()
                        .collect(),
                },
            )
        })
        .collect();
    (coalition, nationals)
}

/// Reads a whole-network file as written, for [`split_network`].
pub fn read_network_file(path: &Path) -> Result<NetworkFile, ConfigError> {
    parse(&read(path)?, path)
}

impl NetworkFile {
    /// The network as one nation sees it: the coalition's tables, and only
    /// that nation's ceilings and principals.
    fn from_split(coalition: CoalitionFile, national: Option<NationalFile>) -> NetworkFile {
        let own = national.as_ref().map(|n| n.nation.clone());
        let nations = coalition
            .nations
            .into_iter()
            .map(|(code, member)| {
                let mine = national
                    .as_ref()
                    .filter(|_| own.as_deref() == Some(code.as_str()));
                let table = NationFile {
                    address: member.address,
                    peers: member.peers,
                    default_ceiling: mine.and_then(|n| n.default_ceiling.clone()),
                    ceilings: mine.map(|n| n.ceilings.clone()).unwrap_or_default(),
                    ca_fingerprint: member.ca_fingerprint,
                };
                (code, table)
            })
            .collect();
        NetworkFile {
            classification: coalition.classification,
            communities: coalition.communities,
            nations,
            principals: national.map(|n| n.principals).unwrap_or_default(),
            resolutions: coalition.resolutions,
        }
    }
}

/// A SHA-256 fingerprint as 64 hex digits, colons between bytes allowed
/// (as `openssl x509 -fingerprint -sha256` prints it).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.chars().filter(|&c| c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fingerprint as [`parse_fingerprint`] reads it: bytes in upper-case
/// hex, colon-separated.
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    fingerprint
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
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
        let ca_fingerprint = match &self.ca_fingerprint {
            Some(text) => Some(parse_fingerprint(text).ok_or_else(|| {
                check.invalid(
                    format!("{item}.ca_fingerprint"),
                    format!("`{text}` is not a SHA-256 fingerprint"),
                    format!(
                        "write the 64 hex digits `entente certs export --nation {nation}` prints (colons allowed)"
                    ),
                )
            })?),
            None => None,
        };
        Ok(NationPolicy {
            address: self.address.clone(),
            peers,
            default_ceiling,
            ceilings,
            ca_fingerprint,
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
        if !crate::policy::is_principal_name(&self.name) {
            return Err(check.invalid(
                &item,
                "a principal name must be 1 to 64 lower-case letters, digits, `.`, `-` or `_`",
                "rename it, for example gbr.analyst",
            ));
        }
        let nation = check.nation(&format!("{item}.nation"), &self.nation, nations)?;
        // A relay takes a publisher's name on the origin's seal; that the
        // name is in the origin's namespace is what it can still check.
        if !crate::policy::is_principal_name_of(&self.name, nation) {
            return Err(check.invalid(
                &item,
                format!(
                    "a principal of {nation} must be named {}.<name>",
                    nation.lowercase()
                ),
                format!("rename it, for example {}.analyst", nation.lowercase()),
            ));
        }
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

    fn manifest(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    /// The shipped coalition and national files are exactly the sample
    /// network split, and each nation's two files give it the sample
    /// network's policy as far as that nation's node needs it: every
    /// node, link and rule, its own principals and ceilings, nobody else's.
    #[test]
    fn the_shipped_split_files_are_the_sample_network_split() {
        let network_path = manifest(DEFAULT_NETWORK_FILE);
        let (coalition, nationals) = split_network(&read_network_file(&network_path).unwrap());
        let coalition_path = manifest(DEFAULT_COALITION_FILE);
        let shipped: CoalitionFile = parse(&read(&coalition_path).unwrap(), &coalition_path).unwrap();
        assert_eq!(
            shipped, coalition,
            "config/coalition.toml is stale: run entente config split --out config"
        );
        let whole = load_network(&network_path).unwrap();
        assert_eq!(nationals.len(), whole.nations().len());
        for (code, national) in &nationals {
            let path = manifest(&format!("config/national/{code}.toml"));
            let shipped: NationalFile = parse(&read(&path).unwrap(), &path).unwrap();
            assert_eq!(&shipped, national, "{} is stale", path.display());
            let own = Nation::parse(code).unwrap();
            let policy = load_split(&coalition_path, &path).unwrap();
            assert_eq!(policy.quorum(), whole.quorum());
            assert_eq!(policy.scheme().communities(), whole.scheme().communities());
            for (nation, table) in whole.nations() {
                let split = policy.nation(*nation).unwrap();
                assert_eq!((&split.address, &split.peers), (&table.address, &table.peers));
                for partner in whole.nations().keys() {
                    let expected = if *nation == own {
                        whole.ceiling(*nation, *partner)
                    } else if nation == partner {
                        whole.scheme().highest_level()
                    } else {
                        // Another nation's ceilings are its own business.
                        Level(0)
                    };
                    assert_eq!(
                        policy.ceiling(*nation, *partner),
                        expected,
                        "{code}: {nation}→{partner}"
                    );
                }
            }
            let mine: Vec<_> = whole.principals().filter(|p| p.nation == own).collect();
            assert!(!mine.is_empty());
            assert_eq!(policy.principals().collect::<Vec<_>>(), mine, "{code}");
        }
    }

    fn split_error(coalition: &str, national: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let (c, n) = (dir.path().join("coalition.toml"), dir.path().join("GBR.toml"));
        std::fs::write(&c, coalition).unwrap();
        std::fs::write(&n, national).unwrap();
        load_split(&c, &n).expect_err("must be refused").to_string()
    }

    const COALITION: &str = r#"
[nations.GBR]
address = "127.0.0.1:7401"
peers = ["FRA"]

[nations.FRA]
address = "127.0.0.1:7402"
peers = ["GBR"]
"#;

    const NATIONAL: &str = r#"
nation = "GBR"
default_ceiling = "SECRET"
ceilings = { FRA = "TOP SECRET" }

[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
"#;

    #[test]
    fn a_national_file_holds_only_its_own_nations_principals() {
        let dir = tempfile::tempdir().unwrap();
        let (c, n) = (dir.path().join("coalition.toml"), dir.path().join("GBR.toml"));
        std::fs::write(&c, COALITION).unwrap();
        std::fs::write(&n, NATIONAL).unwrap();
        let policy = load_split(&c, &n).unwrap();
        assert!(policy.principal("gbr.analyst").is_some());
        let (gbr, fra) = (Nation::parse("GBR").unwrap(), Nation::parse("FRA").unwrap());
        assert_eq!(policy.scheme().level_name(policy.ceiling(gbr, fra)), "TOP SECRET");

        let foreign = format!(
            "{NATIONAL}\n[[principals]]\nname = \"fra.analyst\"\nnation = \"FRA\"\nclearance = \"SECRET\"\n"
        );
        let err = split_error(COALITION, &foreign);
        assert!(
            err.contains("GBR.toml") && err.contains("fra.analyst") && err.contains("a principal of FRA"),
            "{err}"
        );
        // Nor one of its own nation named into another's namespace.
        let disguised = format!(
            "{NATIONAL}\n[[principals]]\nname = \"fra.mole\"\nnation = \"GBR\"\nclearance = \"SECRET\"\n"
        );
        let err = split_error(COALITION, &disguised);
        assert!(
            err.contains("GBR.toml") && err.contains("must be named gbr.<name>"),
            "{err}"
        );
        let err = split_error(
            COALITION,
            &NATIONAL.replace("nation = \"GBR\"\ndefault", "nation = \"DEU\"\ndefault"),
        );
        assert!(
            err.contains("GBR.toml") && err.contains("`DEU` is not a nation of the coalition file"),
            "{err}"
        );
        let err = split_error(COALITION, &NATIONAL.replace("FRA = ", "USA = "));
        assert!(
            err.contains("GBR.toml") && err.contains("unknown nation `USA`"),
            "{err}"
        );
        // What belongs in the coalition file is refused in a national one.
        let err = split_error(COALITION, &format!("peers = [\"FRA\"]\n{NATIONAL}"));
        assert!(
            err.contains("GBR.toml") && err.contains("unknown field `peers`"),
            "{err}"
        );
    }

    #[test]
    fn a_coalition_file_holds_no_principals_or_ceilings_and_its_errors_name_it() {
        let err = split_error(
            &COALITION.replace(
                "peers = [\"GBR\"]",
                "peers = [\"GBR\"]\ndefault_ceiling = \"SECRET\"",
            ),
            NATIONAL,
        );
        assert!(
            err.contains("coalition.toml") && err.contains("unknown field `default_ceiling`"),
            "{err}"
        );
        let err = split_error(
            &format!("{COALITION}\n[[principals]]\nname = \"gbr.analyst\"\n"),
            NATIONAL,
        );
        assert!(
            err.contains("coalition.toml") && err.contains("unknown field `principals`"),
            "{err}"
        );
        let err = split_error(&COALITION.replace("peers = [\"GBR\"]", "peers = []"), NATIONAL);
        assert!(
            err.contains("coalition.toml") && err.contains("links must be symmetric"),
            "{err}"
        );
        let err = split_error(
            &COALITION.replace("peers = [\"GBR\"]", "peers = [\"GBR\"]\nca_fingerprint = \"abc\""),
            NATIONAL,
        );
        assert!(
            err.contains("coalition.toml") && err.contains("nations.FRA.ca_fingerprint"),
            "{err}"
        );
    }

    #[test]
    fn fingerprints_read_with_or_without_colons_and_print_with_them() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let printed = format_fingerprint(&bytes);
        assert_eq!(printed.len(), 32 * 3 - 1);
        assert_eq!(parse_fingerprint(&printed), Some(bytes));
        assert_eq!(
            parse_fingerprint(&printed.replace(':', "").to_lowercase()),
            Some(bytes)
        );
        assert_eq!(parse_fingerprint(&printed[3..]), None);
        assert_eq!(parse_fingerprint(&printed.replace('0', "g")), None);
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = load_network(Path::new("/nonexistent/net.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/net.toml"), "{err}");
    }
}
