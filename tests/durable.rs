//! Durable subscriptions on real nodes over real QUIC and TLS: what
//! arrives while the analyst is away waits, in order, until acknowledged;
//! it survives a restart of the node; it is bounded; and it is admitted
//! again when it is handed out.

use std::time::Duration;

use entente::client::{Client, ClientError, Received};
use entente::node::NodeSettings;
use entente_testkit::{nation, TestNetwork, NETWORK};

const TOPIC: &str = "sigint.ru";
const RELEASED: &str = "CONFIDENTIAL//REL TO GBR, FRA";

/// The next message; a test that never gets one fails rather than hangs.
async fn next(client: &Client) -> Received {
    tokio::time::timeout(Duration::from_secs(30), client.next_received())
        .await
        .expect("a delivery within 30 s")
        .unwrap()
}

fn text(received: &Received) -> String {
    String::from_utf8(received.delivery.payload.clone()).unwrap()
}

fn seq(received: &Received) -> u64 {
    received.durable.as_ref().expect("a durable delivery").seq
}

/// `principal`'s session attached to its durable subscription `watch`
/// to `sigint.>`, once GBR routes to FRA for it.
async fn watching(net: &TestNetwork, principal: &str) -> Client {
    let client = net.client(principal).await;
    client.subscribe_durable("watch", "sigint.>").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    client
}

async fn publish(gbr: &Client, marking: &str, texts: impl IntoIterator<Item = String>) {
    for text in texts {
        gbr.publish(TOPIC, marking, text.into_bytes()).await.unwrap();
    }
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> impl Iterator<Item = String> + '_ {
    range.map(move |n| format!("{prefix}{n}"))
}

#[tokio::test]
async fn what_arrives_while_away_waits_and_the_unacknowledged_come_again_in_order() {
    let net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    let first = watching(&net, "fra.analyst").await;
    publish(&gbr, RELEASED, numbered("m", 0..4)).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&first).await);
    }
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["m0", "m1", "m2", "m3"]);
    let seqs: Vec<u64> = got.iter().map(seq).collect();
    assert!(seqs.is_sorted() && seqs[0] > 0, "{seqs:?}");
    // Only the first two are acknowledged before the analyst goes away.
    first.ack("watch", seqs[1]).await.unwrap();
    first.close().await;

    // Routed to FRA although nobody there is connected: the subscription
    // keeps its interest.
    publish(&gbr, RELEASED, numbered("m", 4..7)).await;
    let back = net.client("fra.analyst").await;
    back.subscribe_durable("watch", "sigint.>").await.unwrap();
    let mut again = Vec::new();
    for _ in 0..5 {
        again.push(next(&back).await);
    }
    assert_eq!(
        again.iter().map(text).collect::<Vec<_>>(),
        ["m2", "m3", "m4", "m5", "m6"]
    );
    assert_eq!(seq(&again[0]), seqs[2], "the unacknowledged keep their numbers");
    assert!(again.iter().map(seq).is_sorted());
    net.shutdown().await;
}

#[tokio::test]
async fn a_durable_subscription_and_what_waits_for_it_survive_a_restart_of_its_node() {
    let mut net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    let first = watching(&net, "fra.analyst").await;
    publish(&gbr, RELEASED, numbered("before", 0..2)).await;
    let acked = seq(&next(&first).await);
    assert_eq!(text(&next(&first).await), "before1");
    first.ack("watch", acked).await.unwrap();
    first.close().await;
    publish(&gbr, RELEASED, numbered("away", 0..3)).await;
    // Stored, and acknowledged to GBR, before the restart.
    net.wait_for_audit_count(nation("FRA"), 5, |l| l.contains("\"event\":\"deliver\""))
        .await;

    net.restart(nation("FRA")).await;
    let back = net.client("fra.analyst").await;
    back.subscribe_durable("watch", "sigint.>").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&back).await);
    }
    assert_eq!(
        got.iter().map(text).collect::<Vec<_>>(),
        ["before1", "away0", "away1", "away2"]
    );
    assert!(seq(&got[0]) > acked, "nothing acknowledged comes again");
    let last = seq(&got[3]);
    back.ack("watch", last).await.unwrap();
    back.close().await;

    // Numbers are never reused, across a restart with nothing waiting.
    net.restart(nation("FRA")).await;
    let later = net.client("fra.analyst").await;
    later.subscribe_durable("watch", "sigint.>").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    publish(&gbr, RELEASED, ["after".to_owned()]).await;
    let after = next(&later).await;
    assert_eq!(text(&after), "after");
    assert!(seq(&after) > last, "{} after {last}", seq(&after));
    net.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_never_acknowledges_holds_no_more_than_the_bound() {
    const BOUND: usize = 16 * 1024;
    let net = TestNetwork::start_with(NodeSettings {
        durable_max_bytes: BOUND,
        ..NodeSettings::default()
    })
    .await;
    let gbr = net.client("gbr.analyst").await;
    let first = watching(&net, "fra.analyst").await;
    first.close().await;
    let sent = 60;
    for n in 0..sent {
        let mut payload = format!("{n:04}").into_bytes();
        payload.resize(1024, b'.');
        gbr.publish(TOPIC, RELEASED, payload).await.unwrap();
    }
    let dropped = net
        .wait_for_audit_count(nation("FRA"), 1, |l| l.contains("\"reason\":\"durable-full\""))
        .await;
    assert!(dropped >= 1);
    // Every message was either dropped, audited, or waits.
    let back = net.client("fra.analyst").await;
    back.subscribe_durable("watch", "sigint.>").await.unwrap();
    let newest = format!("{:04}", sent - 1);
    let mut waited = Vec::new();
    loop {
        let received = next(&back).await;
        let head = String::from_utf8_lossy(&received.delivery.payload[..4]).into_owned();
        waited.push(head.clone());
        if head == newest {
            break;
        }
    }
    let dropped = net
        .audit_lines(nation("FRA"))
        .iter()
        .filter(|l| l.contains("\"reason\":\"durable-full\""))
        .count();
    assert_eq!(
        dropped + waited.len(),
        sent,
        "dropped {dropped}, waited {waited:?}"
    );
    assert!(
        waited.len() * 1024 <= BOUND,
        "{} messages of 1 KiB waited",
        waited.len()
    );
    // The newest were kept, the oldest dropped.
    let expected: Vec<String> = (sent - waited.len()..sent).map(|n| format!("{n:04}")).collect();
    assert_eq!(waited, expected);
    net.shutdown().await;
}

#[tokio::test]
async fn what_waits_past_the_age_limit_is_dropped_and_audited() {
    let net = TestNetwork::start_with(NodeSettings {
        durable_max_age: Duration::from_millis(300),
        ..NodeSettings::default()
    })
    .await;
    let gbr = net.client("gbr.analyst").await;
    let first = watching(&net, "fra.analyst").await;
    first.close().await;
    publish(&gbr, RELEASED, numbered("old", 0..2)).await;
    let expired = net
        .wait_for_audit_count(nation("FRA"), 2, |l| l.contains("\"reason\":\"durable-expired\""))
        .await;
    assert_eq!(expired, 2);
    let back = net.client("fra.analyst").await;
    back.subscribe_durable("watch", "sigint.>").await.unwrap();
    publish(&gbr, RELEASED, ["fresh".to_owned()]).await;
    assert_eq!(text(&next(&back).await), "fresh");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_is_admitted_again_when_handed_out() {
    let net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    let junior = watching(&net, "fra.junior").await;
    junior.close().await;
    // CONFIDENTIAL: within fra.junior's clearance when it arrives.
    publish(&gbr, RELEASED, numbered("secret-ish", 0..3)).await;
    net.wait_for_audit_count(nation("FRA"), 3, |l| {
        l.contains("\"event\":\"deliver\"") && l.contains("fra.junior")
    })
    .await;
    // Lowered to RESTRICTED while the messages wait.
    let junior_entry = "name = \"fra.junior\"\nnation = \"FRA\"\nclearance = \"CONFIDENTIAL\"";
    assert!(NETWORK.contains(junior_entry));
    std::fs::write(
        net.network_path(),
        NETWORK.replace(junior_entry, &junior_entry.replace("CONFIDENTIAL", "RESTRICTED")),
    )
    .unwrap();
    net.control(nation("FRA"))
        .reload()
        .await
        .expect("the new file loads");

    let back = net.client("fra.junior").await;
    back.subscribe_durable("watch", "sigint.>").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    publish(&gbr, "RESTRICTED//REL TO GBR, FRA", ["sentinel".to_owned()]).await;
    assert_eq!(text(&next(&back).await), "sentinel", "nothing above RESTRICTED");
    let refused = net
        .wait_for_audit_count(nation("FRA"), 3, |l| {
            l.contains("\"event\":\"deliver\"")
                && l.contains("\"reason\":\"clearance-too-low\"")
                && l.contains("waited for durable subscription watch")
        })
        .await;
    assert_eq!(refused, 3);
    net.shutdown().await;
}

#[tokio::test]
async fn durable_names_are_checked_limited_per_principal_and_bound_to_their_pattern() {
    let net = TestNetwork::start().await;
    let client = net.client("fra.analyst").await;
    let refused = |result: Result<(), ClientError>| match result {
        Err(ClientError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    for bad in ["", "has space", "new\nline", &"x".repeat(65)] {
        assert_eq!(
            refused(client.subscribe_durable(bad, "sigint.>").await),
            "bad-durable-name",
            "{bad:?}"
        );
    }
    client.subscribe_durable("watch", "sigint.>").await.unwrap();
    assert_eq!(
        refused(client.subscribe_durable("watch", "imagery.>").await),
        "durable-pattern-mismatch"
    );
    for n in 1..8 {
        client
            .subscribe_durable(&format!("watch-{n}"), "sigint.>")
            .await
            .unwrap();
    }
    assert_eq!(
        refused(client.subscribe_durable("one-too-many", "sigint.>").await),
        "too-many-durables"
    );
    // Another principal has its own allowance.
    let other = net.client("fra.junior").await;
    other.subscribe_durable("watch", "sigint.>").await.unwrap();
    let record = net
        .wait_for_audit(nation("FRA"), |l| l.contains("too-many-durables"))
        .await;
    assert!(record.contains("fra.analyst"), "{record}");
    net.shutdown().await;
}

/// A plain subscription with a watch: a subscriber that lost its
/// connection learns, when it subscribes again under the same watch, how
/// many messages reached its node meanwhile (each audited), across a
/// restart of the node too; one that left on purpose lets the watch go.
#[tokio::test]
async fn a_plain_subscriber_that_comes_back_learns_how_many_messages_it_missed() {
    let mut net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    let first = net.client("fra.analyst").await;
    assert_eq!(
        first.subscribe_watched("w", "sigint.>").await.unwrap(),
        None,
        "a new watch"
    );
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    publish(&gbr, RELEASED, ["seen".to_owned()]).await;
    assert_eq!(next(&first).await.delivery.payload, b"seen");
    // Lost, not closed: the connection goes without a word.
    drop(first);
    net.wait_for_audit(nation("FRA"), |l| {
        l.contains("\"event\":\"disconnect\"") && l.contains("fra.analyst")
    })
    .await;
    publish(&gbr, RELEASED, numbered("missed", 0..3)).await;
    net.wait_for_audit_count(nation("FRA"), 3, |l| l.contains("\"reason\":\"subscriber-away\""))
        .await;
    let back = net.client("fra.analyst").await;
    assert_eq!(back.subscribe_watched("w", "sigint.>").await.unwrap(), Some(3));
    publish(&gbr, RELEASED, ["live".to_owned()]).await;
    assert_eq!(
        text(&next(&back).await),
        "live",
        "none of the missed is delivered"
    );

    // The node restarts: the watch is stored and counts from its start.
    net.restart(nation("FRA")).await;
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    publish(&gbr, RELEASED, numbered("while-restarted", 0..2)).await;
    net.wait_for_audit_count(nation("FRA"), 5, |l| l.contains("\"reason\":\"subscriber-away\""))
        .await;
    let again = net.client("fra.analyst").await;
    assert_eq!(again.subscribe_watched("w", "sigint.>").await.unwrap(), Some(2));

    // Closed on purpose: nobody will ask, so the watch is gone.
    again.close().await;
    net.wait_for_audit(nation("FRA"), |l| {
        l.contains("\"reason\":\"session-ended\"") && l.contains("fra.analyst")
    })
    .await;
    let last = net.client("fra.analyst").await;
    assert_eq!(last.subscribe_watched("w", "sigint.>").await.unwrap(), None);
    net.shutdown().await;
}

/// A subscriber that acknowledges more than it was handed (a lying or
/// broken client) makes the node forget only what it was handed: the rest
/// still comes, a window at a time.
#[tokio::test]
async fn an_acknowledgement_past_what_was_handed_out_forgets_nothing_more() {
    // A window of two: a quarter of a session queue of eight.
    let net = TestNetwork::start_with(NodeSettings {
        session_queue: 8,
        ..NodeSettings::default()
    })
    .await;
    let gbr = net.client("gbr.analyst").await;
    let first = watching(&net, "fra.analyst").await;
    first.close().await;
    publish(&gbr, RELEASED, numbered("m", 0..5)).await;
    net.wait_for_audit_count(nation("FRA"), 5, |l| l.contains("\"event\":\"deliver\""))
        .await;
    let back = net.client("fra.analyst").await;
    back.subscribe_durable("watch", "sigint.>").await.unwrap();
    let handed = [next(&back).await, next(&back).await];
    assert_eq!(handed.iter().map(text).collect::<Vec<_>>(), ["m0", "m1"]);
    back.ack("watch", u64::MAX).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..3 {
        let received = next(&back).await;
        back.ack("watch", seq(&received)).await.unwrap();
        rest.push(text(&received));
    }
    assert_eq!(rest, ["m2", "m3", "m4"]);
    net.shutdown().await;
}
