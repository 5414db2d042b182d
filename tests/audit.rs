//! The audit log under attack: floods of identical refusals are counted
//! rather than written line by line, and the counts add up to every
//! attempt. Real nodes, real QUIC and TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use entente::audit::now_us;
use entente::client::{Client, ClientError};
use entente::envelope::{Envelope, MessageId, Signer, Unsigned};
use entente::identity::Identity;
use entente::node::NodeSettings;
use entente::pki;
use entente::topic::Topic;
use entente::wire::Frame;
use entente_testkit::{nation, RawConnection, TestNetwork};

/// The parsed lines of `at`'s audit log whose reason is `reason`.
fn records(net: &TestNetwork, at: &str, reason: &str) -> Vec<serde_json::Value> {
    net.audit_lines(nation(at))
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("each line is JSON"))
        .filter(|record| record["reason"] == reason)
        .collect()
}

/// How many decisions some lines stand for: a summary's `count`, else one.
fn accounted(records: &[serde_json::Value]) -> u64 {
    records
        .iter()
        .map(|record| record["count"].as_u64().unwrap_or(1))
        .sum()
}

#[tokio::test]
async fn a_flood_of_failed_handshakes_is_counted_not_written_line_by_line() {
    const ATTEMPTS: u64 = 200;
    let net = TestNetwork::start().await;
    // A complete rogue PKI for the same network: same names, other CAs.
    let rogue = pki::PkiLayout::new(net.dir.path().join("rogue"));
    pki::generate(&net.policy, &rogue, false).unwrap();
    let (cert, key) = rogue.cert_and_key(&Identity::Principal {
        nation: nation("GBR"),
        name: "gbr.analyst".into(),
    });
    for _ in 0..ATTEMPTS {
        let mut options = net.options("gbr.analyst");
        options.cert_chain = vec![pki::read_cert(&cert).unwrap()];
        options.key = pki::read_key(&key).unwrap();
        assert!(entente::client::Client::connect(options).await.is_err());
    }
    // Every attempt reached the log (in full or counted) before the
    // summaries are forced out by the close.
    let good = net.client("gbr.analyst").await;
    good.publish("sigint.ru", "R", b"still up".to_vec())
        .await
        .unwrap();
    let mut net = net;
    net.stop(nation("GBR")).await.unwrap();

    let failed = records(&net, "GBR", "handshake-failed");
    assert_eq!(accounted(&failed), ATTEMPTS, "{failed:#?}");
    assert!(
        failed.len() as u64 <= ATTEMPTS / 10,
        "{} lines for {ATTEMPTS} attempts",
        failed.len()
    );
    let summaries: Vec<_> = failed.iter().filter(|r| r["count"].is_u64()).collect();
    assert!(!summaries.is_empty(), "{failed:#?}");
    for summary in summaries {
        assert_eq!(summary["subject"], "127.0.0.1", "{summary}");
        assert_eq!(summary["event"], "refuse");
        assert_eq!(summary["decision"], "deny");
        let (first, last) = (
            summary["first_us"].as_u64().unwrap(),
            summary["last_us"].as_u64().unwrap(),
        );
        assert!(first <= last, "{summary}");
    }
    net.shutdown().await;
}

#[tokio::test]
async fn a_peer_flooding_refused_envelopes_is_counted_with_a_sample_of_ids() {
    const ENVELOPES: u64 = 2_000;
    let mut net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    gbr.subscribe(">").await.unwrap();
    // The test plays FRA's node, with FRA's real certificate and key.
    let (_, key_path) = net.identity_files(&Identity::Node(nation("FRA")));
    let signer = Signer::from_pkcs8(pki::read_key(&key_path).unwrap().secret_der()).unwrap();
    let mut peer = net.play_node(nation("FRA"), nation("GBR")).await;
    let scheme = net.policy.scheme();
    let seal = |n: u64, created_us: u64, payload: &[u8]| {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[8] = 0xa5;
        signer.seal(Unsigned {
            id: MessageId(id),
            origin: nation("FRA"),
            publisher: "fra.analyst".into(),
            topic: Topic::new("sigint.ru").unwrap(),
            released_to: net
                .policy
                .release_set(nation("FRA"), &scheme.parse("SECRET//REL TO FRA, GBR").unwrap()),
            label: scheme.parse("SECRET//REL TO FRA, GBR").unwrap(),
            created_us,
            payload: payload.to_vec(),
        })
    };
    // Far older than the age limit: each one is refused as stale.
    for n in 0..ENVELOPES {
        peer.send_frame(&Frame::Forward(seal(n, 1, b"stale"))).await;
    }
    peer.send_frame(&Frame::Forward(seal(ENVELOPES, now_us(), b"sentinel")))
        .await;
    let sentinel = gbr.next_delivery().await.unwrap();
    assert_eq!(sentinel.payload, b"sentinel");
    net.stop(nation("GBR")).await.unwrap();

    let stale = records(&net, "GBR", "stale");
    assert_eq!(accounted(&stale), ENVELOPES, "{stale:#?}");
    assert!(stale.len() < 50, "{} lines for {ENVELOPES} refusals", stale.len());
    let sampled: Vec<&str> = stale
        .iter()
        .filter_map(|r| r["ids"].as_array())
        .flatten()
        .filter_map(|id| id.as_str())
        .collect();
    assert!(
        !sampled.is_empty() && sampled.iter().all(|id| id.ends_with("a500000000000000")),
        "{sampled:?}"
    );
    net.shutdown().await;
}

fn refusal_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Publishes until the node accepts again (a failing log recovers on its
/// own); panics after a generous limit.
async fn publish_once_accepted(client: &Client, payload: &[u8]) {
    for _ in 0..200 {
        match client.publish("sigint.ru", "SECRET", payload.to_vec()).await {
            Ok(_) => return,
            Err(ClientError::Refused { code, .. }) if code == "audit-unavailable" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("publishing: {err}"),
        }
    }
    panic!("the node never accepted a publish again");
}

/// Fail closed (invariant 7): while the audit log cannot be written, the
/// node refuses publishes and subscriptions with `audit-unavailable` and
/// the cause, takes nothing from peers (a link's batch is dropped and the
/// link closed; a new link is refused before it is welcomed), and accepts
/// again once the log works. The failure is injected as `Audit::failure`
/// would report it (`fault-injection`); the real one is below.
#[tokio::test]
async fn while_the_audit_log_fails_nothing_is_taken_that_could_not_be_recorded() {
    const CAUSE: &str = "cannot write data/GBR/audit.jsonl: No space left on device (os error 28)";
    let failure = Arc::new(Mutex::new(None::<String>));
    let mut net = TestNetwork::start_with(NodeSettings {
        audit_failure: Some(failure.clone()),
        ..NodeSettings::default()
    })
    .await;
    let gbr = net.client("gbr.analyst").await;
    gbr.subscribe(">").await.unwrap();
    let mut fra = net.play_node(nation("FRA"), nation("GBR")).await;

    *failure.lock().unwrap() = Some(CAUSE.into());
    let (code, message) = refusal_code(gbr.publish("sigint.ru", "SECRET", b"x".to_vec()).await);
    assert_eq!(code, "audit-unavailable");
    assert!(
        message.contains("cannot write its audit log") && message.contains(CAUSE),
        "{message}"
    );
    let (code, _) = refusal_code(gbr.subscribe("more.>").await);
    assert_eq!(code, "audit-unavailable");

    // A peer's message is neither delivered nor relayed, and its link is
    // closed with the reason.
    fra.send_frame(&Frame::Forward(Envelope::from(Unsigned {
        id: MessageId([0x5a; 16]),
        origin: nation("FRA"),
        publisher: "fra.analyst".into(),
        topic: Topic::new("sigint.ru").unwrap(),
        released_to: net.policy.release_set(
            nation("FRA"),
            &net.policy.scheme().parse("SECRET//REL TO FRA, GBR").unwrap(),
        ),
        label: net.policy.scheme().parse("SECRET//REL TO FRA, GBR").unwrap(),
        created_us: now_us(),
        payload: b"unrecordable".to_vec(),
    })))
    .await;
    let reason = fra.close_reason().await;
    assert!(reason.contains("cannot write its audit log"), "{reason}");
    // A new link is refused before it is welcomed.
    let mut again = RawConnection::open(&net, &Identity::Node(nation("FRA")), nation("GBR"))
        .await
        .unwrap();
    again
        .send_frame(&Frame::Hello {
            version: entente::wire::PROTOCOL_VERSION,
        })
        .await;
    let reason = again.close_reason().await;
    assert!(reason.contains("cannot write its audit log"), "{reason}");

    *failure.lock().unwrap() = None;
    publish_once_accepted(&gbr, b"after").await;
    let delivery = tokio::time::timeout(Duration::from_secs(10), gbr.next_delivery())
        .await
        .expect("a delivery")
        .unwrap();
    assert_eq!(delivery.payload, b"after", "nothing from the failing period");
    net.stop(nation("GBR")).await.unwrap();

    // The refusals were attempted like any record (here the log works).
    let refused = records(&net, "GBR", "audit-unavailable");
    let subjects: Vec<_> = refused
        .iter()
        .map(|r| r["subject"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        subjects.iter().filter(|s| **s == "gbr.analyst").count(),
        2,
        "{refused:#?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r["event"] == "drop" && r["subject"] == "FRA" && r["id"] == "5a".repeat(16)),
        "{refused:#?}"
    );
    net.shutdown().await;
}

/// The same with a real failure: GBR's data folder is replaced by a
/// regular file, so the audit log can be neither reopened nor created.
#[tokio::test]
async fn a_node_whose_audit_log_cannot_be_written_refuses_publishes_until_it_can() {
    let mut net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    gbr.publish("sigint.ru", "SECRET", b"before".to_vec())
        .await
        .unwrap();
    let data = net.dir.path().join("data").join("GBR");
    let aside = net.dir.path().join("data").join("GBR.aside");
    std::fs::rename(&data, &aside).unwrap();
    std::fs::write(&data, b"not a folder").unwrap();

    // The writer notices at its next write: publish until refused.
    let mut refusal = None;
    for _ in 0..200 {
        match gbr.publish("sigint.ru", "SECRET", b"during".to_vec()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(ClientError::Refused { code, message }) => {
                refusal = Some((code, message));
                break;
            }
            Err(err) => panic!("publishing: {err}"),
        }
    }
    let (code, message) = refusal.expect("refused while the log cannot be written");
    assert_eq!(code, "audit-unavailable");
    assert!(
        message.contains("audit.jsonl"),
        "the cause names the file: {message}"
    );
    let (code, _) = refusal_code(gbr.subscribe("more.>").await);
    assert_eq!(code, "audit-unavailable");

    std::fs::remove_file(&data).unwrap();
    std::fs::rename(&aside, &data).unwrap();
    publish_once_accepted(&gbr, b"after").await;
    net.stop(nation("GBR")).await.unwrap();
    // What the node recorded while the log failed was kept and written
    // after: the refusals are there, and the chain has no gap.
    let log = data.join("audit.jsonl");
    let verification = entente::audit::chain::verify_file(&log, None).unwrap();
    assert!(verification.intact(), "{verification:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"reason\":\"audit-unavailable\""));
    net.shutdown().await;
}
