//! Every request a node refuses leaves an audit record (invariant 7): the
//! refused publishes and subscriptions of real clients, each one line with
//! its reason, the principal and the sentence it was sent, outside input
//! escaped and cut short, and a flood of identical refusals counted.
//! Real nodes, real QUIC and TLS.

use entente::client::{Client, ClientError};
use entente::identity::Identity;
use entente::node::NodeSettings;
use entente::wire::{self, Frame};
use entente_testkit::{nation, RawConnection, TestNetwork, NETWORK};

const TOPIC: &str = "sigint.ru.launch";

/// The sample network plus a principal that may only publish and
/// subscribe under `weather.>`.
fn network() -> String {
    format!(
        "{NETWORK}\n[[principals]]\nname = \"gbr.weather\"\nnation = \"GBR\"\nclearance = \"SECRET\"\npublish = [\"weather.>\"]\nsubscribe = [\"weather.>\"]\n"
    )
}

fn settings() -> NodeSettings {
    NodeSettings {
        max_subscriptions: 2,
        ..NodeSettings::default()
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// GBR's audit records of refused requests (`refuse` lines with a reason
/// and subject), parsed.
fn refusals(net: &TestNetwork) -> Vec<serde_json::Value> {
    net.audit_lines(nation("GBR"))
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("each line is JSON"))
        .filter(|record| record["event"] == "refuse" && record["decision"] == "deny")
        .collect()
}

/// A principal's session spoken by hand, to send what the client library
/// refuses to: a payload over the limit.
async fn raw_session(net: &TestNetwork, principal: &str) -> RawConnection {
    let identity = Identity::Principal {
        nation: nation("GBR"),
        name: principal.into(),
    };
    let mut raw = RawConnection::open(net, &identity, nation("GBR"))
        .await
        .expect("a session");
    assert!(matches!(raw.hello().await, Frame::Welcome { .. }));
    raw
}

async fn publish(client: &Client, topic: &str, marking: &str) -> String {
    code(client.publish(topic, marking, b"x".to_vec()).await)
}

#[tokio::test]
async fn every_refused_publish_and_subscription_is_audited_once_with_its_reason() {
    let mut net = TestNetwork::start_from(&network(), settings()).await;
    let analyst = net.client("gbr.analyst").await;
    let clerk = net.client("gbr.clerk").await;
    let weather = net.client("gbr.weather").await;
    let sigint = net.client("gbr.sigint").await;

    // (who, reason, what the detail says): one line each is expected.
    let mut expected: Vec<(&str, &str, String)> = Vec::new();
    assert_eq!(publish(&analyst, TOPIC, "SECRETISH").await, "bad-marking");
    expected.push(("gbr.analyst", "bad-marking", "SECRETISH".into()));
    assert_eq!(publish(&sigint, TOPIC, "SECRET//NUCLEAR").await, "bad-marking");
    expected.push(("gbr.sigint", "bad-marking", "NUCLEAR".into()));
    assert_eq!(publish(&analyst, "a..b", "SECRET").await, "bad-topic");
    expected.push(("gbr.analyst", "bad-topic", "a..b".into()));
    assert_eq!(publish(&weather, TOPIC, "SECRET").await, "topic-not-permitted");
    expected.push(("gbr.weather", "topic-not-permitted", TOPIC.into()));
    assert_eq!(publish(&clerk, TOPIC, "SECRET").await, "clearance-too-low");
    expected.push(("gbr.clerk", "clearance-too-low", "RESTRICTED".into()));

    // The client library refuses an oversized payload itself, so it is
    // sent by hand: it still fits in a frame.
    let mut raw = raw_session(&net, "gbr.sigint").await;
    raw.send_frame(&Frame::Publish {
        request: 1,
        topic: TOPIC.into(),
        marking: "SECRET".into(),
        payload: vec![0; wire::MAX_PAYLOAD + 1],
    })
    .await;
    match entente::stream::read_frame(&mut raw.recv).await {
        Ok(Some(Frame::Refused { code, .. })) => assert_eq!(code, "payload-too-large"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    expected.push((
        "gbr.sigint",
        "payload-too-large",
        format!("{} bytes", wire::MAX_PAYLOAD + 1),
    ));

    assert_eq!(code(weather.subscribe("sigint.>").await), "topic-not-permitted");
    expected.push((
        "gbr.weather",
        "topic-not-permitted",
        "subscribe to sigint.>".into(),
    ));
    assert_eq!(code(sigint.subscribe("a.>.b").await), "bad-pattern");
    expected.push(("gbr.sigint", "bad-pattern", "a.>.b".into()));
    clerk.subscribe("limit.0").await.unwrap();
    clerk.subscribe("limit.1").await.unwrap();
    assert_eq!(code(clerk.subscribe("limit.2").await), "too-many-subscriptions");
    expected.push(("gbr.clerk", "too-many-subscriptions", "at most 2".into()));

    // Every record is written by the time the node has stopped.
    net.stop(nation("GBR")).await.unwrap();
    let records = refusals(&net);
    for (subject, reason, detail) in &expected {
        let matching: Vec<_> = records
            .iter()
            .filter(|r| r["subject"] == *subject && r["reason"] == *reason)
            .filter(|r| r["detail"].as_str().is_some_and(|d| d.contains(detail.as_str())))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one record of {subject} refused as {reason} ({detail}):\n{records:#?}"
        );
        assert!(matching[0].get("count").is_none(), "{:?}", matching[0]);
    }
    // Nothing else was refused: one line per refusal.
    let requests: Vec<_> = records
        .iter()
        .filter(|r| r["subject"].as_str().is_some_and(|s| s.starts_with("gbr.")))
        .collect();
    assert_eq!(requests.len(), expected.len(), "{requests:#?}");
    // The marking is kept where it parsed.
    let too_large = records
        .iter()
        .find(|r| r["reason"] == "payload-too-large")
        .unwrap();
    assert_eq!(too_large["marking"], "SECRET");
    net.shutdown().await;
}

/// What a client sent reaches the log escaped and cut short, and a client
/// repeating a refused request is counted, not written line by line.
#[tokio::test]
async fn refusals_quote_outside_input_safely_and_a_flood_is_counted() {
    const REPEATS: u64 = 200;
    let mut net = TestNetwork::start_from(&network(), settings()).await;
    let analyst = net.client("gbr.analyst").await;
    let hostile = format!("\u{1b}[2K\nSECRET{}", "X".repeat(100_000));
    assert_eq!(
        code(analyst.publish(TOPIC, &hostile, b"x".to_vec()).await),
        "bad-marking"
    );
    let weather = net.client("gbr.weather").await;
    for _ in 0..REPEATS {
        assert_eq!(
            code(weather.publish(TOPIC, "SECRET", b"x".to_vec()).await),
            "topic-not-permitted"
        );
    }
    net.stop(nation("GBR")).await.unwrap();
    let records = refusals(&net);

    let marking = records
        .iter()
        .find(|r| r["reason"] == "bad-marking")
        .expect("the bad marking is audited");
    let detail = marking["detail"].as_str().unwrap();
    assert!(detail.len() < 1_000, "{} bytes of detail", detail.len());
    assert!(
        !detail.contains('\u{1b}') && !detail.contains('\n'),
        "control characters escaped: {detail:?}"
    );

    let flood: Vec<_> = records
        .iter()
        .filter(|r| r["reason"] == "topic-not-permitted" && r["subject"] == "gbr.weather")
        .collect();
    let accounted: u64 = flood.iter().map(|r| r["count"].as_u64().unwrap_or(1)).sum();
    assert_eq!(accounted, REPEATS, "{flood:#?}");
    assert!(flood.len() <= 10, "{} lines for {REPEATS} refusals", flood.len());
    net.shutdown().await;
}
