//! `entente explain`: who may see a marking, and why a given nation or
//! principal may or may not.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::label::{MarkingError, Nation};
use crate::policy::{Decision, Policy, Reason};
use crate::routing;

/// Why a marking could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The marking does not parse.
    #[error(transparent)]
    Marking(#[from] MarkingError),
    /// The recipient (`--to`) names no nation or principal of the network.
    #[error("`{0}` is neither a nation of the network nor a principal; use a nation code such as FRA or a principal such as fra.analyst")]
    UnknownRecipient(String),
    /// The origin (`--from`) names no nation of the network.
    #[error("`{0}` is not a nation of the network")]
    UnknownOrigin(String),
}

/// The answer to "who can see this?".
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// The marking in canonical form.
    pub marking: String,
    /// The nations that may hold it: with `--from`, the origin and every
    /// nation it may be forwarded to (release ceilings included).
    pub nations: Vec<Nation>,
    /// The principals it can reach (whatever the topic): with `--from`,
    /// only over a path of eligible nations, as the nodes route it.
    pub principals: Vec<String>,
    /// With `--from`: each eligible nation's path through the delivery
    /// tree over the configured links, or `null` when no path of eligible
    /// nations reaches it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<Nation, Option<Vec<Nation>>>,
    /// With `--to`: `allow` or `deny` for that recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// With `--to` and a denial: the stable reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The sentence behind the reason code, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Explains `marking`. `from` is the originating nation, when known: it
/// always may see its own messages, its ceilings apply, and the answer is
/// what the network would do, by the same decisions and delivery trees
/// the nodes use (with every configured link up).
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
    let paths = match origin {
        Some(origin) => routing::configured_paths(policy, origin, &label),
        None => BTreeMap::new(),
    };
    let nations: Vec<Nation> = match origin {
        Some(_) => paths.keys().copied().collect(),
        None => scheme
            .releasable_nations(&label, None)
            .into_iter()
            .filter(|n| policy.nation(*n).is_some())
            .collect(),
    };
    let reaches = |nation: Nation| paths.get(&nation).is_some_and(Option::is_some);
    let principal_decision = |principal: &crate::policy::Principal| match origin {
        Some(origin) => policy.may_receive(principal, &label, origin).and_then(|| {
            if reaches(principal.nation) {
                Decision::Allow
            } else {
                Decision::deny(
                    Reason::Unreachable,
                    format!(
                        "no path of nations that may see it leads from {origin} to {}",
                        principal.nation
                    ),
                )
            }
        }),
        None => policy.may_read(principal, &label, None),
    };
    let principals = policy
        .principals()
        .filter(|p| principal_decision(p).is_allow())
        .map(|p| p.name.clone())
        .collect();
    let mut explanation = Explanation {
        marking: scheme.format(&label),
        nations,
        principals,
        paths: paths.clone(),
        decision: None,
        reason: None,
        detail: None,
    };
    if let Some(recipient) = to {
        let decision = if let Some(principal) = policy.principal(recipient) {
            principal_decision(principal)
        } else if let Some(nation) = Nation::parse(recipient).filter(|n| policy.nation(*n).is_some()) {
            match origin {
                Some(origin) if nation == origin => Decision::Allow,
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
    use proptest::prelude::*;
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
    fn with_an_origin_ceilings_and_paths_decide() {
        let policy = sample();
        // GBR releases at most CONFIDENTIAL to TUR: the network never
        // delivers SECRET there, so explain must not say it does.
        let e = explain(
            &policy,
            "SECRET//REL TO GBR, TUR",
            Some("tur.analyst"),
            Some("GBR"),
        )
        .unwrap();
        assert!(!e.principals.contains(&"tur.analyst".to_owned()));
        assert_eq!(e.reason.as_deref(), Some("above-ceiling"));
        // LVA is linked only to EST and LTU, neither releasable here.
        let e = explain(
            &policy,
            "SECRET//REL TO GBR, LVA",
            Some("lva.analyst"),
            Some("GBR"),
        )
        .unwrap();
        assert_eq!(e.reason.as_deref(), Some("unreachable"));
        assert_eq!(e.paths[&Nation::parse("LVA").unwrap()], None);
        let e = explain(&policy, "SECRET//REL TO COALITION", None, Some("GBR")).unwrap();
        let path: Vec<String> = e.paths[&Nation::parse("LVA").unwrap()]
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(path, ["GBR", "EST", "LVA"]);
        assert!(e.principals.contains(&"lva.analyst".to_owned()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// For random networks, markings, origins and topics, the
        /// principals `explain --from` lists are exactly those the routing
        /// cores deliver to (among those whose permissions cover the
        /// topic), with every configured link up.
        #[test]
        fn explain_agrees_with_the_routing_core(
            (policy, label, origin, topic) in crate::policy::tests::arb_network().prop_flat_map(|policy| {
                let nations: Vec<Nation> = policy.nations().keys().copied().collect();
                (
                    Just(policy.clone()),
                    crate::policy::tests::arb_label(&policy),
                    proptest::sample::select(nations),
                    proptest::collection::vec(proptest::sample::select(crate::policy::tests::TOKENS.to_vec()), 1..4)
                        .prop_map(|tokens| crate::topic::Topic::new(tokens.join(".")).unwrap()),
                )
            })
        ) {
            let policy = std::sync::Arc::new(policy);
            let mut mesh = crate::routing::tests::Mesh::new(policy.clone(), &Default::default());
            let principals: Vec<_> = policy.principals().cloned().collect();
            let mut session_of = std::collections::BTreeMap::new();
            for principal in &principals {
                for pattern in &principal.subscribe {
                    let session = mesh.subscribe(principal, pattern.as_str()).unwrap();
                    session_of.insert(session, principal.name.clone());
                }
            }
            mesh.settle();
            let envelope = mesh.envelope(origin, label.clone(), &topic);
            let delivered: std::collections::BTreeSet<String> =
                mesh.publish(&envelope).deliveries.iter().map(|s| session_of[s].clone()).collect();
            let marking = policy.scheme().format(&label);
            let explained = explain(&policy, &marking, None, Some(origin.as_str())).unwrap();
            let expected: std::collections::BTreeSet<String> = explained
                .principals
                .into_iter()
                .filter(|name| policy.principal(name).unwrap().subscribe.iter().any(|p| p.matches(&topic)))
                .collect();
            prop_assert_eq!(delivered, expected);
        }
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
