//! Relaying across a partial mesh of real nodes over real QUIC and TLS:
//! six nations on a ring with a spur, so most pairs reach each other only
//! through relays, and some by two paths.
//!
//! ```text
//!   FIN ── EST ── LVA
//!           │      │
//!          GBR    LTU
//!           │      │
//!           └─ POL ┘
//! ```
//! Non-delivery is shown without timing: after what must not arrive, an
//! allowed sentinel goes the same way, and it must come first.

use entente::audit::now_us;
use entente::client::Client;
use entente::envelope::{Envelope, MessageId, Signer, Unsigned};
use entente::identity::Identity;
use entente::label::Nation;
use entente::node::NodeSettings;
use entente::pki;
use entente::routing::announce::Announcement;
use entente::topic::{Pattern, Topic};
use entente::wire::Frame;
use entente_testkit::{nation, RawConnection, TestNetwork, RING};

async fn ring() -> TestNetwork {
    TestNetwork::start_from(RING, NodeSettings::default()).await
}

async fn subscriber(net: &TestNetwork, principal: &str, pattern: &str, known_at: &[&str]) -> Client {
    let client = net.client(principal).await;
    client.subscribe(pattern).await.unwrap();
    let nation = net.policy.principal(principal).unwrap().nation;
    for &at in known_at {
        net.wait_for_interest(entente_testkit::nation(at), nation, pattern)
            .await;
    }
    client
}

/// The next delivery's payload; a test that never gets one fails rather
/// than hangs (the limit is generous: only a broken feature reaches it).
async fn payload(client: &Client) -> String {
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(30), client.next_delivery())
        .await
        .expect("a delivery within 30 s")
        .unwrap();
    String::from_utf8(delivery.payload).unwrap()
}

/// Whether an audit line is a `forward` record of message `id` whose
/// peers list `to` with `decision`.
fn forwarded(line: &str, to: &str, id: &str, decision: &str) -> bool {
    line.contains("\"event\":\"forward\"")
        && line.contains(id)
        && line.contains(&format!("{{\"peer\":\"{to}\",\"decision\":\"{decision}\""))
}

/// The `forward` records of `at`'s audit log that allowed a message to
/// `to`: one per envelope copy that crossed the link. Each message has
/// one forward record at a node, listing every peer's outcome.
fn crossings(net: &TestNetwork, at: &str, to: &str, id: &str) -> usize {
    net.audit_lines(nation(at))
        .iter()
        .filter(|l| forwarded(l, to, id, "allow"))
        .count()
}

/// Waits until `at`'s latest record of `of`'s announcement lists a link
/// to `to`.
async fn wait_for_announced_link(net: &TestNetwork, at: &str, of: &str, to: &str) {
    let latest = || {
        net.audit_lines(nation(at)).into_iter().rev().find(|l| {
            l.contains("\"reason\":\"announcement\"") && l.contains(&format!("\"subject\":\"{of}\""))
        })
    };
    for _ in 0..1000 {
        let links = latest().and_then(|l| {
            let record: serde_json::Value = serde_json::from_str(&l).ok()?;
            let detail = record["detail"].as_str()?.to_owned();
            Some(
                detail
                    .split("; ")
                    .next()?
                    .trim_start_matches("links: ")
                    .to_owned(),
            )
        });
        if links.is_some_and(|links| links.split(", ").any(|n| n == to)) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{at} never heard {of} announce its link to {to}");
}

fn node_signer(net: &TestNetwork, of: Nation) -> Signer {
    let (_, key) = net.identity_files(&Identity::Node(of));
    Signer::from_pkcs8(pki::read_key(&key).unwrap().secret_der()).unwrap()
}

#[tokio::test]
async fn messages_cross_one_and_two_relays() {
    let net = ring().await;
    let fin = subscriber(&net, "fin.analyst", "sigint.>", &["GBR"]).await;
    let ltu = subscriber(&net, "ltu.analyst", "imagery.>", &["FIN"]).await;

    // GBR → EST → FIN: one relay.
    let gbr = net.client("gbr.analyst").await;
    let id = gbr
        .publish("sigint.ru", "SECRET//REL TO RING", b"one relay".to_vec())
        .await
        .unwrap();
    assert_eq!(payload(&fin).await, "one relay");
    let record = net
        .wait_for_audit(nation("FIN"), |l| {
            l.contains("\"event\":\"deliver\"") && l.contains(&id.to_string())
        })
        .await;
    assert!(record.contains("fin.analyst"), "{record}");
    // EST verified the seal before passing it on, then FIN verified it
    // before delivering it (its origin is not FIN's link peer).
    net.wait_for_audit(nation("EST"), |l| {
        l.contains("\"reason\":\"verified\"") && l.contains(&id.to_string())
    })
    .await;
    net.wait_for_audit(nation("FIN"), |l| {
        l.contains("\"reason\":\"verified\"") && l.contains(&id.to_string())
    })
    .await;

    // FIN → EST → LVA → LTU: two relays.
    let fin_publisher = net.client("fin.analyst").await;
    fin_publisher
        .publish("imagery.ru", "SECRET//REL TO RING", b"two relays".to_vec())
        .await
        .unwrap();
    assert_eq!(payload(&ltu).await, "two relays");
    net.shutdown().await;
}

#[tokio::test]
async fn an_ineligible_relay_never_carries_and_the_target_is_unreachable() {
    let net = ring().await;
    let lva = subscriber(&net, "lva.analyst", ">", &["FIN"]).await;
    let fin = net.client("fin.analyst").await;
    // FIN's only link is to EST, which may not see this: no eligible path.
    let id = fin
        .publish("sigint.ru", "SECRET//REL TO FIN, LVA", b"no way".to_vec())
        .await
        .unwrap()
        .to_string();
    fin.publish("sigint.ru", "SECRET//REL TO FIN, EST, LVA", b"sentinel".to_vec())
        .await
        .unwrap();
    assert_eq!(payload(&lva).await, "sentinel");
    let record = net
        .wait_for_audit(nation("FIN"), |l| {
            l.contains("\"reason\":\"unreachable\"") && l.contains(&id)
        })
        .await;
    // In the message's one forward record.
    assert!(
        record.contains("\"event\":\"forward\"")
            && record.contains("{\"peer\":\"LVA\",\"decision\":\"deny\",\"reason\":\"unreachable\"}"),
        "{record}"
    );
    assert_eq!(crossings(&net, "FIN", "EST", &id), 0);
    assert!(!net
        .audit_lines(nation("EST"))
        .iter()
        .any(|l| l.contains(&id) && l.contains("\"decision\":\"allow\"")));
    net.shutdown().await;
}

#[tokio::test]
async fn two_paths_deliver_once_and_a_second_copy_is_a_duplicate() {
    let net = ring().await;
    // LVA is two hops from GBR through EST, and three through POL, LTU.
    let lva = subscriber(&net, "lva.analyst", ">", &["GBR"]).await;
    let ltu = subscriber(&net, "ltu.analyst", ">", &["GBR"]).await;
    // Steady state: LVA and LTU know every link of the ring, and their
    // view is older than the relay grace (for that long after its view
    // changes, a relay also passes messages on by the tree it had, on
    // purpose, and a ring still coming up may have made LVA the way to
    // LTU).
    for at in ["LVA", "LTU"] {
        for (a, b) in [
            ("FIN", "EST"),
            ("EST", "LVA"),
            ("EST", "GBR"),
            ("GBR", "POL"),
            ("POL", "LTU"),
            ("LTU", "LVA"),
        ] {
            if at != a {
                wait_for_announced_link(&net, at, a, b).await;
            }
            if at != b {
                wait_for_announced_link(&net, at, b, a).await;
            }
        }
    }
    tokio::time::sleep(std::time::Duration::from_micros(entente::routing::RELAY_GRACE_US)).await;
    let gbr = net.client("gbr.analyst").await;
    let id = gbr
        .publish("sigint.ru", "SECRET//REL TO RING", b"once".to_vec())
        .await
        .unwrap();
    assert_eq!(payload(&lva).await, "once");
    assert_eq!(payload(&ltu).await, "once");
    let id_text = id.to_string();
    // Each link carried it at most once, along the tree only. Each node
    // writes its audit log on its own schedule (up to 50 ms behind), so
    // wait for every forward before counting.
    for (at, to) in [("GBR", "EST"), ("GBR", "POL"), ("EST", "LVA"), ("POL", "LTU")] {
        net.wait_for_audit(nation(at), |l| forwarded(l, to, &id_text, "allow"))
            .await;
    }
    assert_eq!(crossings(&net, "GBR", "EST", &id_text), 1);
    assert_eq!(crossings(&net, "GBR", "POL", &id_text), 1);
    assert_eq!(crossings(&net, "EST", "LVA", &id_text), 1);
    assert_eq!(crossings(&net, "POL", "LTU", &id_text), 1);
    assert_eq!(crossings(&net, "LVA", "LTU", &id_text), 0);
    assert_eq!(crossings(&net, "LTU", "LVA", &id_text), 0);
    // GBR sent it to both its links, and says so in one record.
    let gbr_forwards: Vec<String> = net
        .audit_lines(nation("GBR"))
        .into_iter()
        .filter(|l| l.contains("\"event\":\"forward\"") && l.contains(&id_text))
        .collect();
    assert_eq!(gbr_forwards.len(), 1, "{gbr_forwards:#?}");
    assert!(
        gbr_forwards[0].contains("\"decision\":\"allow\",\"reason\":\"policy-allows\""),
        "{}",
        gbr_forwards[0]
    );

    // The same sealed message arriving by two links (as a relay that
    // replays, or a second path, would send it) is delivered once.
    let signer = node_signer(&net, nation("GBR"));
    let envelope = signer.seal(Unsigned {
        id: MessageId([0x5a; 16]),
        origin: nation("GBR"),
        publisher: "gbr.analyst".into(),
        topic: Topic::new("sigint.ru").unwrap(),
        released_to: net.policy.release_set(
            nation("GBR"),
            &net.policy.scheme().parse("SECRET//REL TO RING").unwrap(),
        ),
        label: net.policy.scheme().parse("SECRET//REL TO RING").unwrap(),
        created_us: now_us(),
        payload: b"by two links".to_vec(),
    });
    for relay in ["EST", "LTU"] {
        let link_up = |l: &str| l.contains("\"reason\":\"link-up\"") && l.contains("\"subject\":\"LVA\"");
        let ups = net
            .audit_lines(nation(relay))
            .iter()
            .filter(|l| link_up(l))
            .count();
        let mut peer = RawConnection::open(&net, &Identity::Node(nation(relay)), nation("LVA"))
            .await
            .unwrap();
        peer.hello().await;
        peer.send_frame(&Frame::Forward(envelope.clone())).await;
        net.wait_for_audit(nation("LVA"), |l| {
            l.contains("5a5a5a5a") && l.contains(&format!("\"subject\":\"{relay}\""))
        })
        .await;
        // A peer has one inbound link at a time: this one replaced the
        // real relay's, which re-dials and takes its place back. Wait for
        // that, and for GBR to hear of it, before the sentinel.
        peer.connection.close(0u32.into(), b"done");
        net.wait_for_audit_count(nation(relay), ups + 1, link_up).await;
        wait_for_announced_link(&net, "GBR", relay, "LVA").await;
    }
    gbr.publish("sigint.ru", "SECRET//REL TO RING", b"sentinel".to_vec())
        .await
        .unwrap();
    assert_eq!(payload(&lva).await, "by two links");
    assert_eq!(payload(&lva).await, "sentinel");
    // The second copy is not delivered; it is checked and passed on once
    // more (a copy routed again after a cut or an outage may be on its
    // way to nations the first did not reach), and no more than once.
    let lines = net.audit_lines(nation("LVA"));
    let of_it = |event: &str| {
        lines
            .iter()
            .filter(|l| l.contains("5a5a5a5a") && l.contains(&format!("\"event\":\"{event}\"")))
            .count()
    };
    assert_eq!(of_it("deliver"), 1);
    assert!(lines.iter().any(|l| l.contains("5a5a5a5a")
        && l.contains("\"reason\":\"verified\"")
        && l.contains("\"subject\":\"LTU\"")));
    net.shutdown().await;
}

#[tokio::test]
async fn nothing_crosses_a_link_without_interest_and_interest_is_withdrawn() {
    let net = ring().await;
    let lva = subscriber(&net, "lva.analyst", "imagery.>", &["GBR"]).await;
    let gbr = net.client("gbr.analyst").await;
    let unwanted = gbr
        .publish("sigint.ru", "SECRET//REL TO RING", b"nobody".to_vec())
        .await
        .unwrap()
        .to_string();
    let wanted = gbr
        .publish("imagery.ru", "SECRET//REL TO RING", b"lva".to_vec())
        .await
        .unwrap()
        .to_string();
    assert_eq!(payload(&lva).await, "lva");
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains(&wanted) && l.contains("\"event\":\"forward\"")
    })
    .await;
    for link in ["EST", "POL"] {
        assert_eq!(
            crossings(&net, "GBR", link, &unwanted),
            0,
            "sigint crossed to {link}"
        );
    }
    assert_eq!(crossings(&net, "GBR", "EST", &wanted), 1);
    assert_eq!(
        crossings(&net, "GBR", "POL", &wanted),
        0,
        "nobody beyond POL wants imagery"
    );

    // The only subscriber leaves: GBR hears that LVA wants nothing.
    drop(lva);
    let lva_announcements = |net: &TestNetwork| -> Vec<String> {
        net.audit_lines(nation("GBR"))
            .into_iter()
            .filter(|l| l.contains("\"reason\":\"announcement\"") && l.contains("\"subject\":\"LVA\""))
            .collect()
    };
    for _ in 0..1000 {
        if lva_announcements(&net)
            .last()
            .is_some_and(|l| l.contains("interest: no entries"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let last = lva_announcements(&net).pop().unwrap();
    assert!(last.contains("interest: no entries"), "{last}");
    let after = gbr
        .publish("imagery.ru", "SECRET//REL TO RING", b"too late".to_vec())
        .await
        .unwrap()
        .to_string();
    // A local sentinel published after it: once its delivery is on
    // record, so is every forward of the message before it.
    let probe = subscriber(&net, "gbr.analyst", "imagery.>", &[]).await;
    let sentinel = gbr
        .publish("imagery.ru", "SECRET//REL TO RING", b"local sentinel".to_vec())
        .await
        .unwrap()
        .to_string();
    assert_eq!(payload(&probe).await, "local sentinel");
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains("\"event\":\"deliver\"") && l.contains(&sentinel)
    })
    .await;
    assert_eq!(crossings(&net, "GBR", "EST", &after), 0);
    assert_eq!(crossings(&net, "GBR", "POL", &after), 0);
    net.shutdown().await;
}

/// A relay that changes what it carries is caught at the next node, before
/// anything is delivered: the seal no longer matches.
#[tokio::test]
async fn a_tampering_relay_is_caught_before_delivery() {
    let net = ring().await;
    let lva = subscriber(&net, "lva.analyst", ">", &[]).await;
    let signer = node_signer(&net, nation("GBR"));
    let scheme = net.policy.scheme();
    let sealed = |n: u8, marking: &str, payload: &[u8]| -> Envelope {
        signer.seal(Unsigned {
            id: MessageId([n; 16]),
            origin: nation("GBR"),
            publisher: "gbr.analyst".into(),
            topic: Topic::new("sigint.ru").unwrap(),
            released_to: net
                .policy
                .release_set(nation("GBR"), &scheme.parse(marking).unwrap()),
            label: scheme.parse(marking).unwrap(),
            created_us: now_us(),
            payload: payload.to_vec(),
        })
    };
    let mut payload_changed = sealed(0x11, "SECRET//REL TO RING", b"original");
    payload_changed.payload = b"altered by EST".to_vec();
    let mut label_changed = sealed(0x22, "SECRET//REL TO GBR, EST", b"not for LVA");
    label_changed.label = scheme.parse("SECRET//REL TO RING").unwrap();
    let sentinel = sealed(0x33, "SECRET//REL TO RING", b"sentinel");

    // The test plays EST, relaying GBR's messages to LVA.
    let mut est = RawConnection::open(&net, &Identity::Node(nation("EST")), nation("LVA"))
        .await
        .unwrap();
    est.hello().await;
    for envelope in [payload_changed, label_changed, sentinel] {
        est.send_frame(&Frame::Forward(envelope)).await;
    }
    assert_eq!(payload(&lva).await, "sentinel");
    for id in ["11111111", "22222222"] {
        let record = net
            .wait_for_audit(nation("LVA"), |l| {
                l.contains("\"reason\":\"bad-signature\"") && l.contains(id)
            })
            .await;
        assert!(record.contains("neither delivered nor relayed"), "{record}");
    }
    net.shutdown().await;
}

#[tokio::test]
async fn a_forged_announcement_is_refused() {
    let net = ring().await;
    // EST's node, with its genuine certificate, claims to speak for GBR:
    // GBR wants nothing and has no links. It signs with its own key.
    let est_signer = node_signer(&net, nation("EST"));
    let forged = Announcement {
        nation: nation("GBR"),
        seq: now_us() + 1_000_000,
        links: Default::default(),
        patterns: [Pattern::new("nothing").unwrap()].into(),
    }
    .sign(&est_signer);
    let link_up = |l: &str| l.contains("\"reason\":\"link-up\"") && l.contains("\"subject\":\"LVA\"");
    let ups = net
        .audit_lines(nation("EST"))
        .iter()
        .filter(|l| link_up(l))
        .count();
    let mut est = RawConnection::open(&net, &Identity::Node(nation("EST")), nation("LVA"))
        .await
        .unwrap();
    est.hello().await;
    est.send_frame(&Frame::Announce(forged)).await;
    let record = net
        .wait_for_audit(nation("LVA"), |l| l.contains("\"reason\":\"bad-announcement\""))
        .await;
    assert!(
        record.contains("\"subject\":\"EST\"") && record.contains("GBR's node key"),
        "{record}"
    );
    // The test's link replaced EST's real one (one inbound link per
    // peer); the real one re-dials and takes its place back.
    est.connection.close(0u32.into(), b"done");
    net.wait_for_audit_count(nation("EST"), ups + 1, link_up).await;
    for at in ["LVA", "GBR"] {
        wait_for_announced_link(&net, at, "EST", "LVA").await;
    }

    // LVA still routes by GBR's genuine picture: its messages reach GBR.
    let gbr = subscriber(&net, "gbr.analyst", "from.lva", &["LVA"]).await;
    let lva = net.client("lva.analyst").await;
    lva.publish("from.lva", "SECRET//REL TO RING", b"still linked".to_vec())
        .await
        .unwrap();
    assert_eq!(payload(&gbr).await, "still linked");
    net.shutdown().await;
}

/// A target cut off only by links that are down is not dropped: its
/// message waits in custody, held for the first hop of the tree as it
/// was, and goes when a path returns (not `no-route` or `unreachable`).
#[tokio::test]
async fn a_target_behind_failed_links_gets_its_message_when_a_path_returns() {
    let mut net = ring().await;
    let lva = subscriber(&net, "lva.analyst", ">", &["GBR"]).await;
    // Both of GBR's neighbours go down: every path to LVA is broken.
    for neighbour in ["EST", "POL"] {
        net.stop(nation(neighbour)).await.unwrap();
        net.wait_for_audit(nation("GBR"), |l| {
            l.contains("\"reason\":\"link-down\"") && l.contains(&format!("\"subject\":\"{neighbour}\""))
        })
        .await;
    }
    let gbr = net.client("gbr.analyst").await;
    let id = gbr
        .publish("sigint.ru", "SECRET//REL TO RING", b"waiting for a path".to_vec())
        .await
        .unwrap()
        .to_string();
    // The tree as it was reaches LVA through EST (first in code order).
    let record = net
        .wait_for_audit(nation("GBR"), |l| {
            l.contains("\"event\":\"forward\"") && l.contains(&id)
        })
        .await;
    assert!(
        record.contains("{\"peer\":\"EST\",\"decision\":\"allow\",\"reason\":\"held\"}"),
        "{record}"
    );
    assert!(
        !record.contains("no-route") && !record.contains("unreachable"),
        "{record}"
    );
    net.start_again(nation("EST")).await;
    assert_eq!(payload(&lva).await, "waiting for a path");
    net.shutdown().await;
}
