//! Cut and restore as signed coalition resolutions (invariant 5), over real
//! nodes, real QUIC, mutual TLS and admin certificates from a PKI made in a
//! temporary folder: a quorum cut reaches a node that was down while it was
//! made before that node links to anyone; the cut nation's backlog is
//! refused after the restore; and resolutions or signatures that do not
//! count are refused with a reason and an audit record, changing nothing.

use std::time::Duration;

use entente::admin::{self, AdminCommand, AdminReply, ResolutionStatus};
use entente::audit::now_us;
use entente::client::ClientOptions;
use entente::label::Nation;
use entente::node::NodeSettings;
use entente::resolution::{Action, Resolution, ResolutionId, SignedResolution};
use entente_testkit::{nation, TestNetwork};

/// Five nations; USA links to GBR alone, POL to GBR and FRA. Four nations
/// vote on a resolution about a fifth: three are a majority.
const COALITION: &str = r#"
[nations.GBR]
address = "127.0.0.1:1"
peers = ["FRA", "DEU", "POL", "USA"]
default_ceiling = "SECRET"

[nations.FRA]
address = "127.0.0.1:2"
peers = ["GBR", "POL"]
default_ceiling = "SECRET"

[nations.DEU]
address = "127.0.0.1:3"
peers = ["GBR"]
default_ceiling = "SECRET"

[nations.POL]
address = "127.0.0.1:4"
peers = ["GBR", "FRA"]
default_ceiling = "SECRET"

[nations.USA]
address = "127.0.0.1:5"
peers = ["GBR"]
default_ceiling = "SECRET"

[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "usa.analyst"
nation = "USA"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]

[[principals]]
name = "gbr.admin"
nation = "GBR"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "fra.admin"
nation = "FRA"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "deu.admin"
nation = "DEU"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "pol.admin"
nation = "POL"
clearance = "UNCLASSIFIED"
roles = ["admin"]

[[principals]]
name = "usa.admin"
nation = "USA"
clearance = "UNCLASSIFIED"
roles = ["admin"]
"#;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start() -> TestNetwork {
    TestNetwork::start_from(
        COALITION,
        NodeSettings {
            max_redial_backoff: Duration::from_millis(100),
            ..NodeSettings::default()
        },
    )
    .await
}

fn records(net: &TestNetwork, at: Nation) -> Vec<serde_json::Value> {
    net.audit_lines(at)
        .iter()
        .map(|line| serde_json::from_str(line).expect("each audit line is JSON"))
        .collect()
}

/// Waits (polling, with a generous limit) until `ready` holds.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} never happened");
}

async fn suspended_on(net: &TestNetwork, at: Nation, expected: &[&str]) {
    until(&format!("{at} applying {expected:?}"), || {
        net.control(at).status().is_ok_and(|s| s.suspended == expected)
    })
    .await;
}

/// Signs `id` as `admin`, once its node holds it (the proposal floods).
async fn sign(net: &TestNetwork, admin: &str, id: ResolutionId) -> ResolutionStatus {
    for _ in 0..500 {
        match admin::sign(net.options(admin), id, TIMEOUT).await {
            Err(admin::AdminError::NoSuchResolution(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other.unwrap_or_else(|err| panic!("{admin} signs {id}: {err}")),
        }
    }
    panic!("{admin}'s node never got resolution {id}");
}

/// `action` on `of`, proposed by GBR's admin and signed by FRA's and
/// DEU's: a quorum of three.
async fn resolve(net: &TestNetwork, action: Action, of: &str) -> ResolutionId {
    let proposed = admin::propose(net.options("gbr.admin"), action, nation(of), TIMEOUT)
        .await
        .expect("GBR's admin proposes");
    assert!(!proposed.in_force, "{proposed:?}");
    assert_eq!(proposed.needed, 3);
    let id = proposed.signed.resolution.id();
    assert!(!sign(net, "fra.admin", id).await.in_force);
    assert!(sign(net, "deu.admin", id).await.in_force);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_cut_reaches_a_node_that_was_down_before_it_links_to_anyone() {
    let mut net = start().await;
    let (gbr, fra, deu, pol) = (nation("GBR"), nation("FRA"), nation("DEU"), nation("POL"));
    net.stop(pol).await.unwrap();
    resolve(&net, Action::Cut, "USA").await;
    for at in [gbr, fra, deu] {
        suspended_on(&net, at, &["USA"]).await;
    }

    let skip = net.audit_lines(pol).len();
    net.start_again(pol).await;
    suspended_on(&net, pol, &["USA"]).await;
    until("POL linking again", || {
        records(&net, pol)
            .iter()
            .skip(skip)
            .any(|r| r["reason"] == "link-up")
    })
    .await;
    let after: Vec<serde_json::Value> = records(&net, pol).into_iter().skip(skip).collect();
    let applied = after
        .iter()
        .position(|r| {
            r["reason"] == "policy-changed"
                && r["detail"].as_str().is_some_and(|d| d.contains("cut out: USA"))
        })
        .unwrap_or_else(|| panic!("POL never applied the cut: {after:#?}"));
    let first_link = after.iter().position(|r| r["reason"] == "link-up").unwrap();
    let first_message = after
        .iter()
        .position(|r| ["deliver", "forward"].contains(&r["event"].as_str().unwrap_or_default()));
    assert!(
        applied < first_link,
        "a link came up before the cut applied: {after:#?}"
    );
    assert!(
        first_message.is_none_or(|m| applied < m),
        "a message moved before the cut applied: {after:#?}"
    );
    // It kept the log: another restart has the cut from its own folder.
    net.restart(pol).await;
    assert_eq!(net.control(pol).status().unwrap().suspended, ["USA"]);
    net.shutdown().await;
}

/// The cut nation's own node learns it was cut, holds nothing for its
/// partners while cut, and after the restore only what it publishes from
/// then on reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_nation_learns_it_was_cut_and_its_cut_period_is_never_released() {
    let net = start().await;
    let (gbr, usa) = (nation("GBR"), nation("USA"));
    let subscriber = net.client("gbr.analyst").await;
    subscriber.subscribe("news.>").await.unwrap();
    net.wait_for_interest(usa, gbr, "news.>").await;

    resolve(&net, Action::Cut, "USA").await;
    suspended_on(&net, gbr, &["USA"]).await;
    until("USA learning that GBR cut it", || {
        records(&net, usa)
            .iter()
            .any(|r| r["reason"] == "cut-by" && r["subject"] == "GBR" && r["event"] == "disconnect")
    })
    .await;
    let usa_analyst = net.client("usa.analyst").await;
    const DURING: usize = 5;
    for i in 0..DURING {
        usa_analyst
            .publish(
                "news.usa",
                "SECRET//REL TO GBR, USA",
                format!("during {i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    // Nothing of it is held for GBR: each message's forward record says
    // why.
    let to_gbr = |reason: &str| {
        records(&net, usa)
            .iter()
            .filter(|r| r["event"] == "forward")
            .flat_map(|r| r["peers"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["peer"] == "GBR" && p["reason"] == reason)
            .count()
    };
    until("USA recording each message as not held for GBR", || {
        to_gbr("cut-by") == DURING
    })
    .await;
    assert_eq!(to_gbr("held") + to_gbr("policy-allows"), 0);

    resolve(&net, Action::Restore, "USA").await;
    suspended_on(&net, gbr, &[]).await;
    for payload in ["after", "after again"] {
        usa_analyst
            .publish("news.usa", "SECRET//REL TO GBR, USA", payload.as_bytes().to_vec())
            .await
            .unwrap();
    }
    for expected in ["after", "after again"] {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscriber.next_delivery())
            .await
            .expect("USA's new messages arrive")
            .unwrap();
        assert_eq!(
            delivery.payload,
            expected.as_bytes(),
            "the cut period was released"
        );
    }
    net.shutdown().await;
}

/// A cut nation that holds its cut-period messages anyway (a hostile node
/// with its genuine key), or backdates new ones, sends them after the
/// restore: every one is refused as `cut-out`, counted in the audit, and
/// what it creates after the restore still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_held_or_backdated_by_the_cut_nation_is_refused_after_the_restore() {
    let mut net = start().await;
    let (gbr, usa) = (nation("GBR"), nation("USA"));
    let subscriber = net.client("gbr.analyst").await;
    subscriber.subscribe("news.>").await.unwrap();
    resolve(&net, Action::Cut, "USA").await;
    suspended_on(&net, gbr, &["USA"]).await;
    let during_cut = now_us();
    resolve(&net, Action::Restore, "USA").await;
    suspended_on(&net, gbr, &[]).await;

    let (_, key) = net.identity_files(&entente::identity::Identity::Node(usa));
    let signer =
        entente::envelope::Signer::from_pkcs8(entente::pki::read_key(&key).unwrap().secret_der()).unwrap();
    let mut link = net.play_node(usa, gbr).await;
    let label = net.policy.scheme().parse("SECRET//REL TO GBR, USA").unwrap();
    let envelope = |n: u8, created_us: u64, payload: &str| {
        signer.seal(entente::envelope::Unsigned {
            id: entente::envelope::MessageId([n; 16]),
            origin: usa,
            publisher: "usa.analyst".into(),
            topic: entente::topic::Topic::new("news.usa").unwrap(),
            released_to: net.policy.release_set(usa, &label.clone()),
            label: label.clone(),
            created_us,
            payload: payload.as_bytes().to_vec(),
        })
    };
    const BACKLOG: u8 = 6;
    link.send_frame(&entente::wire::Frame::Resume { next: 1 }).await;
    for n in 0..BACKLOG {
        link.send_frame(&entente::wire::Frame::Forward(envelope(
            n,
            during_cut + u64::from(n),
            "backlog",
        )))
        .await;
    }
    link.send_frame(&entente::wire::Frame::Forward(envelope(100, now_us(), "new")))
        .await;
    let delivery = tokio::time::timeout(Duration::from_secs(30), subscriber.next_delivery())
        .await
        .expect("the new message arrives")
        .unwrap();
    assert_eq!(delivery.payload, b"new", "the backlog was released");
    until("GBR counting the refused backlog", || {
        let refused: u64 = records(&net, gbr)
            .iter()
            .filter(|r| {
                r["reason"] == "cut-out"
                    && r["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("created while it was cut out"))
            })
            .map(|r| r["summary"]["count"].as_u64().unwrap_or(1))
            .sum();
        refused == u64::from(BACKLOG)
    })
    .await;
    net.shutdown().await;
}

/// A resolution signed by one admin, in the name of `nation`, with the
/// certificate and key of `as_principal`.
fn signed_by(
    net: &TestNetwork,
    resolution: &Resolution,
    nation: Nation,
    as_principal: &str,
) -> SignedResolution {
    let options: ClientOptions = net.options(as_principal);
    let key = entente::envelope::Signer::from_pkcs8(options.key.secret_der()).unwrap();
    let chain = options.cert_chain.iter().map(|c| c.as_ref().to_vec()).collect();
    SignedResolution {
        resolution: resolution.clone(),
        signatures: vec![resolution.sign(nation, now_us(), chain, &key)],
    }
}

async fn submit(net: &TestNetwork, signed: SignedResolution) -> Result<ResolutionStatus, String> {
    let client = net.client("gbr.admin").await;
    let reply = client.admin(AdminCommand::Submit(signed)).await;
    client.close().await;
    match reply {
        Ok(AdminReply::Resolution(status)) => Ok(status),
        Ok(other) => panic!("{other:?}"),
        Err(err) => Err(err.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolutions_that_do_not_count_are_refused_and_change_nothing() {
    let net = start().await;
    let (gbr, fra, deu, usa) = (nation("GBR"), nation("FRA"), nation("DEU"), nation("USA"));
    let cut = |of: Nation| Resolution {
        seq: now_us(),
        action: Action::Cut,
        nation: of,
        created_us: now_us(),
    };
    let bad_records = |net: &TestNetwork| {
        records(net, gbr)
            .iter()
            .filter(|r| r["reason"] == "bad-resolution")
            .count()
    };

    // Signed by an analyst: not an admin.
    let by_analyst = submit(&net, signed_by(&net, &cut(usa), gbr, "gbr.analyst")).await;
    let err = by_analyst.unwrap_err();
    assert!(err.contains("is not an admin"), "{err}");
    // FRA's admin signing in DEU's name.
    let impostor = submit(&net, signed_by(&net, &cut(usa), deu, "fra.admin")).await;
    let err = impostor.unwrap_err();
    assert!(err.contains("not one of DEU's admins'"), "{err}");
    // The cut nation voting on itself.
    let itself = submit(&net, signed_by(&net, &cut(usa), usa, "usa.admin")).await;
    assert!(itself.unwrap_err().contains("does not vote on itself"));
    // An unknown nation.
    let unknown = submit(
        &net,
        signed_by(&net, &cut(Nation::parse("CHN").unwrap()), gbr, "gbr.admin"),
    )
    .await;
    assert!(unknown.unwrap_err().contains("not a nation of the coalition"));
    // A forged signature.
    let mut forged = signed_by(&net, &cut(usa), fra, "fra.admin");
    forged.signatures[0].signature[7] ^= 0x40;
    assert!(submit(&net, forged)
        .await
        .unwrap_err()
        .contains("does not verify"));
    assert_eq!(bad_records(&net), 5, "each refusal is audited");

    // Too few signatures: taken, but not in force.
    let pending = submit(&net, signed_by(&net, &cut(usa), gbr, "gbr.admin"))
        .await
        .unwrap();
    assert!(!pending.in_force && pending.needed == 3, "{pending:?}");
    assert!(net.control(gbr).status().unwrap().suspended.is_empty());

    // A cut, then a restore; the cut replayed after it changes nothing.
    let cut_id = resolve(&net, Action::Cut, "USA").await;
    suspended_on(&net, gbr, &["USA"]).await;
    let in_force = admin::resolutions(net.options("gbr.admin"), TIMEOUT)
        .await
        .unwrap();
    let old_cut = in_force
        .held
        .into_iter()
        .find(|s| s.signed.resolution.id() == cut_id)
        .expect("GBR holds the cut")
        .signed;
    assert_eq!(old_cut.signatures.len(), 3);
    resolve(&net, Action::Restore, "USA").await;
    suspended_on(&net, gbr, &[]).await;
    let replayed = submit(&net, old_cut).await.unwrap_err();
    assert!(
        replayed.contains("a newer resolution about USA is in force"),
        "{replayed}"
    );
    let held = admin::resolutions(net.options("gbr.admin"), TIMEOUT)
        .await
        .unwrap();
    assert!(
        held.held.iter().all(|s| s.signed.resolution.id() != cut_id),
        "the superseded cut is not kept: {held:#?}"
    );
    assert!(net.control(gbr).status().unwrap().suspended.is_empty());
    net.shutdown().await;
}

/// A member flooding resolutions whose signatures do not verify (each one
/// a certificate path and a signature to check) costs a node a bounded
/// number of checks: past its budget, what its link sends is not checked
/// for a while, and that is audited once. Genuine resolutions still take
/// effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_forged_signatures_costs_a_bounded_number_of_checks() {
    let mut net = start().await;
    let (gbr, fra, usa) = (nation("GBR"), nation("FRA"), nation("USA"));
    let mut link = net.play_node(usa, gbr).await;
    let refused = |net: &TestNetwork| {
        let counters = net.control(gbr).status().unwrap().counters;
        counters.refused.get("bad-resolution").copied().unwrap_or(0)
    };
    let before = refused(&net);
    let start = std::time::Instant::now();
    const FORGED: u64 = 1_000;
    for n in 0..FORGED {
        let resolution = Resolution {
            seq: now_us() + n,
            action: Action::Cut,
            nation: nation("POL"),
            created_us: now_us(),
        };
        let mut forged = signed_by(&net, &resolution, fra, "fra.admin");
        forged.signatures[0].signature[7] ^= 0x40;
        link.send_frame(&entente::wire::Frame::Resolution(forged)).await;
    }
    let rate_records = || {
        records(&net, gbr)
            .iter()
            .filter(|r| r["reason"] == "resolution-rate" && r["subject"] == "USA")
            .count()
    };
    until("the flood is paced", || rate_records() == 1).await;
    // Genuine resolutions still take effect.
    assert!(net.control(gbr).status().unwrap().suspended.is_empty());
    resolve(&net, Action::Cut, "POL").await;
    suspended_on(&net, gbr, &["POL"]).await;
    // Every checked signature is one `bad-resolution` denial: the burst,
    // then ten a second.
    let checked = refused(&net) - before;
    let bound = 64 + 10 * start.elapsed().as_secs() + 8;
    assert!(
        (64..=bound).contains(&checked) && checked < FORGED,
        "{checked} of {FORGED} forged signatures were checked; at most {bound} may be"
    );
    assert_eq!(rate_records(), 1, "a flood is audited once");
    net.shutdown().await;
}

/// A node floods a resolution both ways on every pair of links: also back
/// on the link a peer dialed, which carries no messages, so a signature
/// never waits behind a batch of them. Here it is the only way to the
/// peer: the test plays USA's node, whose own links are gone, and GBR has
/// no link of its own to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_goes_back_on_the_link_a_peer_dialed() {
    let mut net = start().await;
    let (gbr, usa) = (nation("GBR"), nation("USA"));
    let mut link = net.play_node(usa, gbr).await;
    let id = resolve(&net, Action::Cut, "POL").await;
    let signers = tokio::time::timeout(TIMEOUT, async {
        let mut signers = std::collections::BTreeSet::new();
        while signers.len() < 3 {
            match entente::stream::read_frame(&mut link.recv).await {
                Ok(Some(entente::wire::Frame::Resolution(signed))) if signed.resolution.id() == id => {
                    signers.extend(signed.signatures.iter().map(|s| s.nation));
                }
                Ok(Some(_)) => {}
                other => panic!("the link ended: {other:?}"),
            }
        }
        signers
    })
    .await
    .expect("GBR floods the resolution back to USA");
    assert_eq!(
        signers,
        [nation("DEU"), nation("FRA"), gbr].into_iter().collect(),
        "every signature, as GBR took it"
    );
    net.shutdown().await;
}
