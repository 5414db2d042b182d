use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn nation(code: &str) -> Nation {
    Nation::parse(code).unwrap()
}

const NOW: u64 = 1_800_000_000_000_000;

/// Every nation's admin key; a chain here is just the nation's code, and
/// the check hands back that nation's key (the certificate checks are the
/// node's, over real certificates, in `tests/resolutions.rs`).
struct Admins {
    keys: HashMap<Nation, Signer>,
}

impl Admins {
    fn new(nations: &[Nation]) -> Admins {
        let keys = nations
            .iter()
            .map(|&n| {
                let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .unwrap();
                (n, Signer::from_pkcs8(der.as_ref()).unwrap())
            })
            .collect();
        Admins { keys }
    }

    fn sign(&self, resolution: &Resolution, nation: Nation, signed_us: u64) -> Signature {
        resolution.sign(
            nation,
            signed_us,
            vec![nation.as_str().as_bytes().to_vec()],
            &self.keys[&nation],
        )
    }
}

impl SignerCheck for Admins {
    fn admin_key(&self, nation: Nation, chain: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        match chain.first() {
            Some(leaf) if leaf.as_slice() == nation.as_str().as_bytes() => {
                Ok(self.keys[&nation].public_key().to_vec())
            }
            _ => Err(format!("not {nation}'s admin certificate")),
        }
    }
}

fn coalition() -> Vec<Nation> {
    ["GBR", "FRA", "DEU", "POL", "USA"].map(nation).to_vec()
}

fn log() -> ResolutionLog {
    ResolutionLog::new(coalition().into_iter().collect(), Quorum::Majority)
}

fn resolution(action: Action, of: &str, seq: u64) -> Resolution {
    Resolution {
        seq,
        action,
        nation: nation(of),
        created_us: seq,
    }
}

fn signed(admins: &Admins, resolution: &Resolution, by: &[&str]) -> SignedResolution {
    SignedResolution {
        resolution: resolution.clone(),
        signatures: by
            .iter()
            .map(|&n| admins.sign(resolution, nation(n), resolution.created_us + 10))
            .collect(),
    }
}

#[test]
fn a_resolution_takes_effect_with_a_majority_of_the_other_nations() {
    let admins = Admins::new(&coalition());
    let mut log = log();
    let cut = resolution(Action::Cut, "USA", NOW);
    // Four nations may vote on USA: three are a majority.
    assert_eq!(log.needed(&cut), 3);
    let first = log
        .offer(signed(&admins, &cut, &["GBR", "FRA"]), &admins, NOW)
        .unwrap();
    assert_eq!(first.added, [nation("GBR"), nation("FRA")]);
    assert!(!first.took_effect && log.cut_out().is_empty());
    let third = log
        .offer(signed(&admins, &cut, &["GBR", "DEU"]), &admins, NOW)
        .unwrap();
    assert_eq!(third.added, [nation("DEU")], "GBR's is known already");
    assert!(third.took_effect);
    assert_eq!(log.cut_out(), BTreeSet::from([nation("USA")]));
    assert_eq!(log.standing(nation("USA")).unwrap().effective_us, NOW + 10);
    // A count in the coalition file means that many.
    assert_eq!(Quorum::Count(2).needed(4), 2);
}

#[test]
fn signatures_that_do_not_count_are_refused_one_by_one() {
    let admins = Admins::new(&coalition());
    let mut log = log();
    let cut = resolution(Action::Cut, "USA", NOW);
    let mut offered = signed(&admins, &cut, &["GBR", "USA"]);
    // FRA's signature made with DEU's key (another nation's admin
    // claiming to be FRA's), and a forged one.
    offered.signatures.push(cut.sign(
        nation("FRA"),
        NOW,
        vec![b"DEU".to_vec()],
        &admins.keys[&nation("DEU")],
    ));
    let mut forged = admins.sign(&cut, nation("POL"), NOW);
    forged.signature[0] ^= 1;
    offered.signatures.push(forged);
    let outcome = log.offer(offered, &admins, NOW).unwrap();
    assert_eq!(outcome.added, [nation("GBR")]);
    let refused: Vec<String> = outcome.refused.iter().map(ToString::to_string).collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused[0].contains("USA may not sign it (a nation does not vote on itself)"),
        "{refused:?}"
    );
    assert!(refused[1].contains("not FRA's admin certificate"), "{refused:?}");
    assert!(refused[2].contains("does not verify"), "{refused:?}");
    assert!(log.cut_out().is_empty());
}

#[test]
fn malformed_resolutions_are_refused_whole() {
    let admins = Admins::new(&coalition());
    let mut log = log();
    let unknown = resolution(Action::Cut, "CHN", NOW);
    assert!(matches!(
        log.offer(signed(&admins, &unknown, &["GBR"]), &admins, NOW),
        Err(ResolutionError::UnknownNation { .. })
    ));
    let ahead = resolution(Action::Cut, "USA", NOW + MAX_SKEW_US + 1);
    assert!(matches!(
        log.offer(signed(&admins, &ahead, &["GBR"]), &admins, NOW),
        Err(ResolutionError::FromTheFuture { .. })
    ));
    assert!(log.all().is_empty());
}

#[test]
fn an_older_resolution_replayed_after_a_newer_one_changes_nothing() {
    let admins = Admins::new(&coalition());
    let mut log = log();
    let cut = resolution(Action::Cut, "USA", NOW);
    let restore = resolution(Action::Restore, "USA", NOW + 1_000);
    let voters = ["GBR", "FRA", "DEU"];
    log.offer(signed(&admins, &cut, &voters), &admins, NOW + 2_000)
        .unwrap();
    log.offer(signed(&admins, &restore, &voters), &admins, NOW + 2_000)
        .unwrap();
    assert!(log.cut_out().is_empty());
    assert_eq!(log.restored(), BTreeMap::from([(nation("USA"), NOW + 1_010)]));
    let replayed = log
        .offer(signed(&admins, &cut, &voters), &admins, NOW + 3_000)
        .unwrap();
    assert!(replayed.superseded, "{replayed:?}");
    assert!(log.cut_out().is_empty());
    // The superseded cut is not kept: only what decides is.
    assert_eq!(log.all().len(), 1);
}

#[test]
fn pending_resolutions_are_bounded_per_nation() {
    let admins = Admins::new(&coalition());
    let mut log = log();
    for n in 0..(PENDING_PER_NATION as u64 + 5) {
        let pending = resolution(Action::Cut, "FRA", NOW + n);
        log.offer(signed(&admins, &pending, &["USA"]), &admins, NOW + 100)
            .unwrap();
    }
    assert_eq!(log.all().len(), PENDING_PER_NATION);
    assert!(log.next_seq(0) > NOW + PENDING_PER_NATION as u64);
}

#[test]
fn ids_print_and_parse() {
    let id = resolution(Action::Cut, "USA", NOW).id();
    assert_eq!(id.to_string().parse::<ResolutionId>(), Ok(id));
    assert!("xyz"
        .parse::<ResolutionId>()
        .unwrap_err()
        .contains("16 hex digits"));
}

proptest! {
    /// Whatever order signatures and resolutions arrive in, and however
    /// they are split between frames, every node ends with the same
    /// standing for every nation (invariant 5: a cut is coalition state).
    #[test]
    fn the_standing_does_not_depend_on_the_order_of_arrival(
        plan in proptest::collection::vec((0usize..4, 0usize..5, any::<bool>()), 1..24),
        order in any::<proptest::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let nations = coalition();
        let admins = Admins::new(&nations);
        // Each step: a resolution (one of four about two nations) signed
        // by one nation, as a frame of its own.
        let resolutions = [
            resolution(Action::Cut, "USA", NOW),
            resolution(Action::Restore, "USA", NOW + 5),
            resolution(Action::Cut, "FRA", NOW + 3),
            resolution(Action::Restore, "FRA", NOW + 1),
        ];
        let frames: Vec<SignedResolution> = plan
            .iter()
            .map(|&(which, by, _)| SignedResolution {
                resolution: resolutions[which].clone(),
                signatures: vec![admins.sign(&resolutions[which], nations[by], NOW + 20 + by as u64)],
            })
            .collect();
        let mut shuffled = frames.clone();
        let len = shuffled.len();
        shuffled.rotate_left(order.index(len));
        let mut rng = seed;
        for i in (1..len).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let mut one = log();
        let mut other = log();
        for frame in frames {
            let _ = one.offer(frame, &admins, NOW + 100);
        }
        for frame in shuffled {
            let _ = other.offer(frame, &admins, NOW + 100);
        }
        prop_assert_eq!(one.cut_out(), other.cut_out());
        prop_assert_eq!(one.restored(), other.restored());
        for nation in nations {
            prop_assert_eq!(one.standing(nation), other.standing(nation));
        }
    }
}
