//! `entente explain`: who may see a marking, and why a given nation or
//! principal may or may not.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::label::{MarkingError, Nation};
use crate::policy::{Decision, Policy};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Marking(#[from] MarkingError),
    #[error("`{0}` is neither a nation of the network nor a principal; use a nation code such as FRA or a principal such as fra.analyst")]
    UnknownRecipient(String),
    #[error("`{0}` is not a nation of the network")]
    UnknownOrigin(String),
}

/// The answer to "who can see this?".
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub marking: String,
    pub nations: Vec<Nation>,
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The sentence behind the reason code, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Explains `marking`. `from` is the originating nation, when known: it
/// always may see its own messages, and its ceilings apply to `to` nations.
pub fn explain(
    policy: &Policy,
    marking: &str,
    to: Option<&str>,
    from: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let scheme = policy.scheme();
    let label = scheme.parse(marking)?;
    let origin = match from {
        Some(code) => Some(
            Nation::parse(code)
                .filter(|n| policy.nation(*n).is_some())
                .ok_or_else(|| ExplainError::UnknownOrigin(code.to_owned()))?,
        ),
        None => None,
    };
    let nations: BTreeSet<Nation> = scheme
        .releasable_nations(&label, origin)
        .into_iter()
        .filter(|n| policy.nation(*n).is_some())
        .collect();
    let principals = policy
        .principals()
        .filter(|p| policy.may_read(p, &label, origin).is_allow())
        .map(|p| p.name.clone())
        .collect();
    let mut explanation = Explanation {
        marking: scheme.format(&label),
        nations: nations.into_iter().collect(),
        principals,
        decision: None,
        reason: None,
        detail: None,
    };
    if let Some(recipient) = to {
        let decision = if let Some(principal) = policy.principal(recipient) {
            policy.may_read(principal, &label, origin)
        } else if let Some(nation) = Nation::parse(recipient).filter(|n| policy.nation(*n).is_some()) {
            match origin {
                Some(origin) => policy.may_forward(&label, origin, nation),
                None => policy.may_release_to_nation(&label, None, nation),
            }
        } else {
            return Err(ExplainError::UnknownRecipient(recipient.to_owned()));
        };
        match decision {
            Decision::Allow => explanation.decision = Some("allow"),
            Decision::Deny { reason, message } => {
                explanation.decision = Some("deny");
                explanation.reason = Some(reason.code().to_owned());
                explanation.detail = Some(message);
            }
        }
    }
    Ok(explanation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn sample() -> Policy {
        crate::config::load_network(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml"))
            .unwrap()
    }

    #[test]
    fn nordic_expands_to_the_four_nordic_states() {
        let e = explain(&sample(), "S//REL TO NORDIC", None, None).unwrap();
        assert_eq!(e.marking, "SECRET//REL TO NORDIC");
        let nations: Vec<String> = e.nations.iter().map(|n| n.to_string()).collect();
        assert_eq!(nations, ["DNK", "FIN", "NOR", "SWE"]);
        assert_eq!(
            e.principals,
            ["dnk.analyst", "fin.analyst", "nor.analyst", "swe.analyst"]
        );
        assert_eq!(e.decision, None);
    }

    #[test]
    fn the_clerk_is_denied_secret() {
        let e = explain(&sample(), "SECRET//REL TO GBR", Some("gbr.clerk"), None).unwrap();
        assert_eq!(e.decision, Some("deny"));
        assert_eq!(e.reason.as_deref(), Some("clearance-too-low"));
        let e = explain(&sample(), "SECRET//REL TO GBR", Some("gbr.analyst"), None).unwrap();
        assert_eq!(e.decision, Some("allow"));
    }

    #[test]
    fn nation_decisions_use_the_origin_ceiling_when_known() {
        let policy = sample();
        let e = explain(&policy, "SECRET//REL TO NATO", Some("TUR"), None).unwrap();
        assert_eq!(e.decision, Some("allow"));
        let e = explain(&policy, "SECRET//REL TO NATO", Some("TUR"), Some("GBR")).unwrap();
        assert_eq!(e.reason.as_deref(), Some("above-ceiling"));
        let e = explain(&policy, "SECRET", Some("GBR"), Some("GBR")).unwrap();
        assert_eq!(e.decision, Some("allow"));
        let e = explain(&policy, "SECRET", Some("GBR"), None).unwrap();
        assert_eq!(e.reason.as_deref(), Some("not-releasable"));
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = explain(&sample(), "SECRET//REL TO XYZ", None, None).unwrap_err();
        assert!(err.to_string().contains("XYZ"));
        assert!(matches!(
            explain(&sample(), "SECRET", Some("nobody"), None),
            Err(ExplainError::UnknownRecipient(_))
        ));
    }
}
