//! The audit log under attack: floods of identical refusals are counted
//! rather than written line by line, and the counts add up to every
//! attempt. Real nodes, real QUIC and TLS.

use entente::audit::now_us;
use entente::envelope::{MessageId, Signer, Unsigned};
use entente::identity::Identity;
use entente::pki;
use entente::topic::Topic;
use entente::wire::Frame;
use entente_testkit::{nation, TestNetwork};

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
