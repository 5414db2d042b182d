//! Admin commands on real nodes, over real QUIC and mutual TLS: reload
//! (a broken network file changes nothing; a new one closes what it no
//! longer admits), revocation through the CRLs, admin refused to
//! non-admins, a cut that survives a restart, and status.
//!
//! Nothing here times anything. Waits are for audit records or for a
//! node's status to reach a state, each with a generous limit that only a
//! broken feature reaches.

use std::time::Duration;

use entente::admin::{AdminCommand, AdminReply, NodeStatus, PeerStatus};
use entente::client::{Client, ClientError};
use entente::identity::Identity;
use entente::label::Nation;
use entente::pki;
use entente_testkit::{nation, TestNetwork, NETWORK};

const TOPIC: &str = "sigint.ru.launch";

/// Every node's nation in the test network.
fn nations() -> [Nation; 3] {
    [nation("GBR"), nation("FRA"), nation("DEU")]
}

/// The audit log of `at` as JSON records.
fn records(net: &TestNetwork, at: Nation) -> Vec<serde_json::Value> {
    net.audit_lines(at)
        .iter()
        .map(|line| serde_json::from_str(line).expect("each audit line is JSON"))
        .collect()
}

/// Whether an audit record has this event, reason and subject.
fn is(record: &serde_json::Value, event: &str, reason: &str, subject: &str) -> bool {
    record["event"] == event && record["reason"] == reason && record["subject"] == subject
}

/// How many records of `at`'s audit log match.
fn count(net: &TestNetwork, at: Nation, matches: impl Fn(&serde_json::Value) -> bool) -> usize {
    records(net, at).iter().filter(|r| matches(r)).count()
}

/// Waits until a record of `at`'s audit log past the first `skip` matches;
/// returns it. Panics after a generous limit.
async fn wait_for_record(
    net: &TestNetwork,
    at: Nation,
    skip: usize,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..1000 {
        if let Some(found) = records(net, at).into_iter().skip(skip).find(|r| matches(r)) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no matching audit record in {at}'s log past line {skip}:\n{}",
        net.audit_lines(at).join("\n")
    );
}

/// Waits until `at`'s status satisfies `ready`; returns it. Panics, with
/// the last status, after a generous limit.
async fn wait_for_status(net: &TestNetwork, at: Nation, ready: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let mut last = None;
    for _ in 0..1000 {
        let status = net.control(at).status().expect("the node runs");
        if ready(&status) {
            return status;
        }
        last = Some(status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{at}'s status never got there; last: {last:#?}");
}

fn peer<'a>(status: &'a NodeStatus, of: &str) -> &'a PeerStatus {
    status
        .peers
        .iter()
        .find(|p| p.nation == of)
        .unwrap_or_else(|| panic!("{of} is not a peer in {status:#?}"))
}

/// Whether a record is a handshake refused for a certificate of
/// `nation` (the subject of such a record is the remote IP address; the
/// detail names the identity).
fn refused_handshake_of(record: &serde_json::Value, nation: &str) -> bool {
    record["event"] == "refuse"
        && record["reason"] == "handshake-failed"
        && record["detail"].as_str().is_some_and(|d| d.contains(nation))
}

fn digests(net: &TestNetwork) -> Vec<String> {
    nations()
        .iter()
        .map(|&n| net.control(n).status().expect("the node runs").policy_digest)
        .collect()
}

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The reason the node gave for closing `client`'s session, from its next
/// delivery.
async fn closed_reason(client: &Client) -> String {
    let next = tokio::time::timeout(Duration::from_secs(20), client.next_delivery())
        .await
        .expect("the session ends");
    match next {
        Err(ClientError::Closed(reason)) => reason,
        other => panic!("expected the session to be closed, got {other:?}"),
    }
}

/// Shows that GBR → FRA still works: fra.analyst subscribes, gbr.analyst
/// publishes, fra.analyst gets exactly that message.
async fn gbr_to_fra_flows(net: &TestNetwork, text: &str) {
    let subscriber = net.client("fra.analyst").await;
    subscriber.subscribe("sigint.>").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    let publisher = net.client("gbr.analyst").await;
    let id = publisher
        .publish(TOPIC, "SECRET//REL TO FRA", text.as_bytes().to_vec())
        .await
        .unwrap();
    let delivery = subscriber.next_delivery().await.unwrap();
    assert_eq!(delivery.id, id);
    assert_eq!(delivery.payload, text.as_bytes());
    publisher.close().await;
    subscriber.close().await;
}

/// A network file that no longer lists fra.analyst and lowers
/// fra.junior's clearance from CONFIDENTIAL to RESTRICTED.
fn without_fra_analyst_and_junior_lowered() -> String {
    let analyst = "[[principals]]\nname = \"fra.analyst\"\nnation = \"FRA\"\nclearance = \"TOP SECRET\"\npublish = [\">\"]\nsubscribe = [\">\"]\n";
    let junior = "name = \"fra.junior\"\nnation = \"FRA\"\nclearance = \"CONFIDENTIAL\"";
    assert!(NETWORK.contains(analyst) && NETWORK.contains(junior));
    NETWORK
        .replace(analyst, "")
        .replace(junior, &junior.replace("CONFIDENTIAL", "RESTRICTED"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_leaves_every_node_on_its_old_policy() {
    let net = TestNetwork::start().await;
    let before = digests(&net);
    assert!(
        before.iter().all(|d| *d == before[0]),
        "every node starts on the same policy: {before:?}"
    );
    let changes_before: Vec<usize> = nations()
        .iter()
        .map(|&n| count(&net, n, |r| r["reason"] == "policy-changed"))
        .collect();

    let fra_peers = "[nations.FRA]\naddress = \"127.0.0.1:2\"\npeers = [\"GBR\"]";
    assert!(NETWORK.contains(fra_peers));
    // Each broken file, and what the error must name.
    let broken: [(&str, String, &[&str]); 3] = [
        (
            "invalid TOML",
            NETWORK.replace("[nations.DEU]", "[nations.DEU"),
            &["network.toml", "line"],
        ),
        (
            "a peer that is not a nation",
            NETWORK.replace(fra_peers, &fra_peers.replace("[\"GBR\"]", "[\"GBR\", \"XYZ\"]")),
            &["network.toml", "nations.FRA", "XYZ"],
        ),
        (
            "an unknown field",
            NETWORK.replace(fra_peers, &format!("{fra_peers}\ncolour = \"blue\"")),
            &["network.toml", "unknown field", "colour"],
        ),
    ];
    for (what, text, named) in &broken {
        std::fs::write(net.network_path(), text).unwrap();
        for at in nations() {
            let err = net
                .control(at)
                .reload()
                .await
                .expect_err(&format!("{at} refuses a network file with {what}"));
            assert_eq!(err.code(), "reload-refused", "{what} on {at}: {err}");
            let message = err.to_string();
            assert!(
                message.contains("keeps its old policy") && named.iter().all(|n| message.contains(n)),
                "{what} on {at}: the error must name {named:?}: {message}"
            );
        }
        // Over QUIC, as an admin principal: the same refusal, with its code.
        let admin = net.client("gbr.admin").await;
        let (code, message) = refused(admin.admin(AdminCommand::Reload).await);
        assert_eq!(code, "reload-refused", "{what}: {message}");
        assert!(
            named.iter().all(|n| message.contains(n)),
            "{what}: the refusal must name {named:?}: {message}"
        );
        // The admin's session outlives the refusal.
        assert!(matches!(
            admin.admin(AdminCommand::Status).await,
            Ok(AdminReply::Status(_))
        ));
        admin.close().await;
        assert_eq!(digests(&net), before, "after a reload of {what}");
    }
    for (i, &at) in nations().iter().enumerate() {
        assert_eq!(
            count(&net, at, |r| r["reason"] == "policy-changed"),
            changes_before[i],
            "a refused reload is not a policy change on {at}"
        );
    }
    gbr_to_fra_flows(&net, "still flowing").await;

    // The file fixed again: the reload goes through, to the same policy.
    std::fs::write(net.network_path(), NETWORK).unwrap();
    for at in nations() {
        let applied = net.control(at).reload().await.expect("a good file reloads");
        assert!(applied.closed.is_empty(), "{applied:?}");
        assert_eq!(applied.policy_digest, before[0]);
    }
    assert_eq!(digests(&net), before);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_what_the_new_policy_no_longer_admits() {
    let net = TestNetwork::start().await;
    let fra = nation("FRA");
    let gbr = nation("GBR");
    let before = net.control(fra).status().unwrap().policy_digest;
    let analyst = net.client("fra.analyst").await;
    analyst.subscribe("sigint.>").await.unwrap();
    let junior = net.client("fra.junior").await;
    junior.subscribe("sigint.>").await.unwrap();
    let admin = net.client("fra.admin").await;

    std::fs::write(net.network_path(), without_fra_analyst_and_junior_lowered()).unwrap();
    let applied = net.control(fra).reload().await.expect("the new file loads");
    let mut closed = applied.closed.clone();
    closed.sort();
    assert_eq!(closed, ["fra.analyst", "fra.junior"], "{applied:?}");
    assert_ne!(applied.policy_digest, before);
    assert_eq!(
        net.control(fra).status().unwrap().policy_digest,
        applied.policy_digest
    );
    // GBR did not reload: it still runs the old policy.
    assert_eq!(net.control(gbr).status().unwrap().policy_digest, before);

    // Each session ends with the node's reason, audited.
    let reason = closed_reason(&analyst).await;
    assert!(
        reason.contains("fra.analyst is not in the network file"),
        "{reason}"
    );
    let record = wait_for_record(&net, fra, 0, |r| {
        is(r, "disconnect", "unknown-principal", "fra.analyst")
    })
    .await;
    assert_eq!(record["decision"], "deny");
    let reason = closed_reason(&junior).await;
    assert!(reason.contains("entry for fra.junior changed"), "{reason}");
    wait_for_record(&net, fra, 0, |r| {
        is(r, "disconnect", "principal-changed", "fra.junior")
    })
    .await;
    let change = wait_for_record(&net, fra, 0, |r| r["reason"] == "policy-changed").await;
    let detail = change["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("reload: ") && detail.contains(&applied.policy_digest),
        "{detail}"
    );

    // The admin's session is still admitted and still answers.
    match admin.admin(AdminCommand::Status).await {
        Ok(AdminReply::Status(status)) => {
            assert_eq!(status.policy_digest, applied.policy_digest);
            let sessions: Vec<&str> = status.sessions.iter().map(|s| s.principal.as_str()).collect();
            assert_eq!(sessions, ["fra.admin"], "{status:#?}");
        }
        other => panic!("expected a status, got {other:?}"),
    }

    // fra.analyst cannot come back; fra.junior can, under its new entry.
    let again = Client::connect(net.options("fra.analyst")).await;
    let err = again.err().expect("fra.analyst is refused");
    assert!(
        err.to_string().contains("fra.analyst is not in the network file"),
        "{err}"
    );
    wait_for_record(&net, fra, 0, |r| {
        r["event"] == "refuse"
            && r["reason"] == "unknown-principal"
            && r["subject"].as_str().is_some_and(|s| s.contains("fra.analyst"))
    })
    .await;
    let junior = net.client("fra.junior").await;
    junior.subscribe("sigint.>").await.unwrap();
    // The link to GBR was not touched.
    let status = net.control(fra).status().unwrap();
    let gbr_link = peer(&status, "GBR");
    assert!(gbr_link.outbound && gbr_link.inbound, "{status:#?}");

    junior.close().await;
    admin.close().await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_principal_is_disconnected_and_cannot_reconnect() {
    let net = TestNetwork::start().await;
    let gbr = nation("GBR");
    let analyst = net.client("gbr.analyst").await;
    analyst.subscribe("sigint.>").await.unwrap();
    let admin = net.client("gbr.admin").await;

    pki::revoke(
        &net.layout,
        &Identity::Principal {
            nation: gbr,
            name: "gbr.analyst".into(),
        },
    )
    .expect("revoke gbr.analyst");
    let applied = net.control(gbr).reload().await.expect("GBR reloads its CRLs");
    assert_eq!(applied.closed, ["gbr.analyst"], "{applied:?}");

    let reason = closed_reason(&analyst).await;
    assert!(reason.to_lowercase().contains("revoked"), "{reason}");
    let record = wait_for_record(&net, gbr, 0, |r| {
        is(r, "disconnect", "certificate-rejected", "gbr.analyst")
    })
    .await;
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.to_lowercase().contains("revoked")),
        "{record}"
    );
    // A new connection fails in the handshake.
    // (TLS 1.3: the client's side of the handshake completes before the
    // node has checked its certificate, so the node's refusal arrives as
    // the connection's close, `ClientError::Closed`, not as `Connect`.)
    match Client::connect(net.options("gbr.analyst")).await {
        Err(ClientError::Connect { cause, .. } | ClientError::Closed(cause)) => assert!(
            cause.contains("handshake failed") && cause.to_lowercase().contains("revoked"),
            "{cause}"
        ),
        Err(other) => panic!("expected a failed handshake, got {other}"),
        Ok(_) => panic!("a revoked principal connected"),
    }
    // Its neighbours are not affected: the live admin session and a new one.
    assert!(matches!(
        admin.admin(AdminCommand::Status).await,
        Ok(AdminReply::Status(_))
    ));
    let second = net.client("gbr.admin").await;
    second.close().await;
    let clerk = net.client("gbr.clerk").await;
    clerk.close().await;

    analyst.close().await;
    admin.close().await;
    net.shutdown().await;
}

/// Revoking a node's certificate, as `entente certs revoke --nation FRA
/// --node` does, and reloading GBR: GBR closes both of FRA's links, and
/// FRA, which keeps dialing, cannot link again; DEU stays linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_loses_its_links_and_cannot_link_again() {
    let net = TestNetwork::start().await;
    let gbr = nation("GBR");
    let fra = nation("FRA");
    pki::revoke(&net.layout, &Identity::Node(fra)).expect("revoke FRA's node");
    let skip = net.audit_lines(gbr).len();
    let applied = net
        .control(gbr)
        .reload()
        .await
        .expect("GBR reloads its CRLs with FRA's node certificate revoked");
    let mut closed = applied.closed.clone();
    closed.sort();
    assert_eq!(closed, ["link from FRA", "link to FRA"], "{applied:?}");
    let record = wait_for_record(&net, gbr, skip, |r| {
        is(r, "disconnect", "certificate-rejected", "FRA")
    })
    .await;
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.to_lowercase().contains("revoked")),
        "{record}"
    );
    // FRA re-dials and is refused in the handshake.
    wait_for_record(&net, gbr, skip, |r| refused_handshake_of(r, "FRA")).await;
    let status = net.control(gbr).status().unwrap();
    let link = peer(&status, "FRA");
    assert!(!link.outbound && !link.inbound && !link.cut, "{status:#?}");
    let deu = peer(&status, "DEU");
    assert!(deu.outbound && deu.inbound, "{status:#?}");
    let fra_admitted = records(&net, gbr)
        .into_iter()
        .skip(skip)
        .filter(|r| r["subject"] == "FRA" && (r["reason"] == "link-up" || r["reason"] == "configured-peer"))
        .count();
    assert_eq!(fra_admitted, 0, "GBR linked with FRA again");
    net.shutdown().await;
}

/// A revoked node certificate concerns that node alone: the other
/// nations' nodes still start (every node loads every nation's node
/// certificate at start, for its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_certificate_does_not_stop_the_other_nodes_starting() {
    let mut net = TestNetwork::start().await;
    let gbr = nation("GBR");
    let deu = nation("DEU");
    pki::revoke(&net.layout, &Identity::Node(nation("FRA"))).expect("revoke FRA's node");
    let skip = net.audit_lines(gbr).len();
    net.restart(deu).await;
    wait_for_record(&net, gbr, skip, |r| {
        r["reason"] == "link-up" && r["subject"] == "DEU"
    })
    .await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_admin_request_is_refused_and_audited() {
    let net = TestNetwork::start().await;
    let gbr = nation("GBR");
    let fra = nation("FRA");
    let before = digests(&net);
    let analyst = net.client("gbr.analyst").await;
    for command in [
        AdminCommand::Status,
        AdminCommand::Reload,
        AdminCommand::Cut(fra),
        AdminCommand::Restore(fra),
    ] {
        let skip = net.audit_lines(gbr).len();
        let (code, message) = refused(analyst.admin(command.clone()).await);
        assert_eq!(code, "not-admin", "{command}: {message}");
        assert!(
            message.contains("gbr.analyst may not run admin commands")
                && message.contains(&format!("({command} was asked)")),
            "{message}"
        );
        let record = wait_for_record(&net, gbr, skip, |r| is(r, "refuse", "not-admin", "gbr.analyst")).await;
        assert_eq!(record["decision"], "deny");
        assert!(
            record["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("({command} was asked)"))),
            "{record}"
        );
    }
    assert_eq!(
        count(&net, gbr, |r| is(r, "refuse", "not-admin", "gbr.analyst")),
        4
    );
    // Nothing changed: same policies, no cut, FRA still linked, and the
    // analyst's session still publishes.
    assert_eq!(digests(&net), before);
    let status = net.control(gbr).status().unwrap();
    assert!(status.suspended.is_empty(), "{status:#?}");
    let link = peer(&status, "FRA");
    assert!(link.outbound && link.inbound && !link.cut, "{status:#?}");
    assert_eq!(count(&net, gbr, |r| r["reason"] == "policy-changed"), 0);
    assert_eq!(count(&net, gbr, |r| r["reason"] == "admin-command"), 0);
    analyst
        .publish(TOPIC, "SECRET//REL TO GBR", b"still here".to_vec())
        .await
        .expect("the refused session still publishes");
    assert!(!net.dir.path().join("data/GBR/cut-out.json").exists());
    analyst.close().await;
    gbr_to_fra_flows(&net, "still linked").await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_survives_a_restart_and_status_shows_it() {
    let mut net = TestNetwork::start().await;
    let gbr = nation("GBR");
    let fra = nation("FRA");
    let applied = net.control(gbr).cut(fra).await.expect("GBR cuts FRA");
    assert_eq!(applied.suspended, ["FRA"]);
    let mut closed = applied.closed.clone();
    closed.sort();
    assert_eq!(closed, ["link from FRA", "link to FRA"], "{applied:?}");
    let cut_digest = applied.policy_digest.clone();

    let skip = net.audit_lines(gbr).len();
    net.restart(gbr).await;
    let status = net.control(gbr).status().unwrap();
    assert_eq!(status.suspended, ["FRA"], "{status:#?}");
    assert_eq!(status.policy_digest, cut_digest);
    let link = peer(&status, "FRA");
    assert!(link.cut && !link.outbound && !link.inbound, "{status:#?}");
    // DEU comes back; FRA, which keeps dialing GBR, is refused in the
    // handshake, as its CA is no longer trusted.
    wait_for_record(&net, gbr, skip, |r| {
        r["reason"] == "link-up" && r["subject"] == "DEU"
    })
    .await;
    wait_for_record(&net, gbr, skip, |r| refused_handshake_of(r, "FRA")).await;
    let status = net.control(gbr).status().unwrap();
    let link = peer(&status, "FRA");
    assert!(link.cut && !link.outbound && !link.inbound, "{status:#?}");
    let fra_admitted = records(&net, gbr)
        .into_iter()
        .skip(skip)
        .filter(|r| r["subject"] == "FRA" && (r["reason"] == "link-up" || r["reason"] == "configured-peer"))
        .count();
    assert_eq!(fra_admitted, 0, "GBR linked with FRA while FRA was cut");

    let applied = net.control(gbr).restore(fra).await.expect("GBR restores FRA");
    assert!(applied.suspended.is_empty(), "{applied:?}");
    assert_eq!(
        applied.policy_digest,
        net.control(fra).status().unwrap().policy_digest
    );
    let status = wait_for_status(&net, gbr, |s| {
        let link = peer(s, "FRA");
        link.outbound && link.inbound
    })
    .await;
    assert!(status.suspended.is_empty() && !peer(&status, "FRA").cut);
    gbr_to_fra_flows(&net, "restored").await;
    // The restore is recorded too: another restart keeps FRA in.
    net.restart(gbr).await;
    let status = net.control(gbr).status().unwrap();
    assert!(status.suspended.is_empty(), "{status:#?}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_peers_sessions_counters_and_digest() {
    let net = TestNetwork::start().await;
    let gbr = nation("GBR");
    let fra = nation("FRA");
    let fra_sub = net.client("fra.analyst").await;
    fra_sub.subscribe("sigint.>").await.unwrap();
    let gbr_sub = net.client("gbr.sigint").await;
    gbr_sub.subscribe("sigint.>").await.unwrap();
    net.wait_for_interest(gbr, fra, "sigint.>").await;
    let publisher = net.client("gbr.analyst").await;
    const SENT: u64 = 3;
    for i in 0..SENT {
        publisher
            .publish(TOPIC, "SECRET//REL TO FRA", format!("message {i}").into_bytes())
            .await
            .unwrap();
    }
    for subscriber in [&fra_sub, &gbr_sub] {
        for i in 0..SENT {
            let delivery = subscriber.next_delivery().await.unwrap();
            assert_eq!(delivery.payload, format!("message {i}").as_bytes());
        }
    }
    // Provoked: a publish above the publisher's clearance.
    let clerk = net.client("gbr.clerk").await;
    let (code, _) = refused(
        clerk
            .publish(TOPIC, "SECRET//REL TO FRA", b"too high".to_vec())
            .await,
    );
    assert_eq!(code, "clearance-too-low");

    let admin = net.client("gbr.admin").await;
    let status = match admin.admin(AdminCommand::Status).await {
        Ok(AdminReply::Status(status)) => status,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(status.node, "GBR");
    for of in ["FRA", "DEU"] {
        let link = peer(&status, of);
        assert!(link.outbound && link.inbound && !link.cut, "{status:#?}");
    }
    assert_eq!(status.peers.len(), 2, "{status:#?}");
    let sessions: Vec<&str> = status.sessions.iter().map(|s| s.principal.as_str()).collect();
    assert_eq!(
        sessions,
        ["gbr.admin", "gbr.analyst", "gbr.clerk", "gbr.sigint"],
        "{status:#?}"
    );
    assert!(status.suspended.is_empty());
    let c = &status.counters;
    assert_eq!(c.published, SENT, "{status:#?}");
    assert_eq!(c.delivered, SENT, "gbr.sigint's deliveries: {status:#?}");
    assert_eq!(c.forwarded, SENT, "one copy each to FRA: {status:#?}");
    assert_eq!(c.refused.get("clearance-too-low"), Some(&1), "{status:#?}");
    assert_eq!(c.unreachable, 0, "{status:#?}");
    let text = status.to_text();
    assert!(
        text.contains(&format!("published {SENT}  delivered {SENT}  forwarded {SENT}"))
            && text.contains("clearance-too-low 1")
            && text.contains("peers:     DEU up, FRA up"),
        "{text}"
    );

    let fra_status = net.control(fra).status().unwrap();
    assert_eq!(fra_status.counters.published, 0, "{fra_status:#?}");
    assert_eq!(fra_status.counters.delivered, SENT, "{fra_status:#?}");
    assert_eq!(fra_status.counters.forwarded, 0, "{fra_status:#?}");
    let deu_status = net.control(nation("DEU")).status().unwrap();
    assert_eq!(deu_status.counters.delivered, 0, "{deu_status:#?}");
    assert_eq!(status.policy_digest, fra_status.policy_digest);
    assert_eq!(status.policy_digest, deu_status.policy_digest);
    assert!(
        !status.policy_digest.is_empty() && status.policy_digest.chars().all(|c| c.is_ascii_hexdigit()),
        "{status:#?}"
    );
    for client in [admin, clerk, publisher, gbr_sub, fra_sub] {
        client.close().await;
    }
    net.shutdown().await;
}

/// A reload that adds a link starts a dialer for the new peer on each end,
/// and the link comes up both ways.
#[tokio::test]
async fn a_reload_that_adds_a_link_brings_it_up() {
    let net = TestNetwork::start().await;
    let (fra, deu) = (nation("FRA"), nation("DEU"));
    let linked = entente_testkit::NETWORK
        .replacen(
            "address = \"127.0.0.1:2\"\npeers = [\"GBR\"]",
            "address = \"127.0.0.1:2\"\npeers = [\"GBR\", \"DEU\"]",
            1,
        )
        .replacen(
            "address = \"127.0.0.1:3\"\npeers = [\"GBR\"]",
            "address = \"127.0.0.1:3\"\npeers = [\"GBR\", \"FRA\"]",
            1,
        );
    assert_ne!(linked, entente_testkit::NETWORK, "the test's edit applies");
    std::fs::write(net.network_path(), linked).unwrap();
    for nation in [fra, deu] {
        net.control(nation).reload().await.expect("the new file loads");
    }
    let up = |from: entente::label::Nation, to: &str| {
        net.control(from)
            .status()
            .unwrap()
            .peers
            .iter()
            .any(|peer| peer.nation == to && peer.outbound && peer.inbound)
    };
    for _ in 0..200 {
        if up(fra, "DEU") && up(deu, "FRA") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the FRA–DEU link never came up after the reload");
}

/// A coalition file that pins a CA other than the one in the certs folder
/// (a forged bundle taken in, or a CA the coalition never agreed on): on
/// reload, nothing of that nation is trusted, its link is closed, and it
/// is audited and shown in status; every other peer is served as before.
/// Pinning the genuine fingerprint trusts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_the_coalition_file_does_not_pin_is_not_trusted() {
    let net = TestNetwork::start().await;
    let (gbr, fra, deu) = (nation("GBR"), nation("FRA"), nation("DEU"));
    let pin = |fingerprint: &str| {
        NETWORK.replace(
            "[nations.FRA]\n",
            &format!("[nations.FRA]\nca_fingerprint = \"{fingerprint}\"\n"),
        )
    };
    std::fs::write(net.network_path(), pin(&format!("{}AB", "AB:".repeat(31)))).unwrap();
    net.control(gbr).reload().await.expect("the file loads");
    let status = net.control(gbr).status().unwrap();
    assert_eq!(
        status.mismatched_cas.keys().collect::<Vec<_>>(),
        ["FRA"],
        "{status:#?}"
    );
    let record = wait_for_record(&net, gbr, 0, |r| is(r, "refuse", "ca-mismatch", "FRA")).await;
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .contains("not the one the coalition file pins"),
        "{record}"
    );
    wait_for_record(&net, gbr, 0, |r| {
        r["event"] == "disconnect" && r["reason"] == "certificate-rejected" && r["subject"] == "FRA"
    })
    .await;
    // DEU is served as before: GBR still relays to it.
    let deu_analyst = net.client("deu.analyst").await;
    deu_analyst.subscribe("news.>").await.unwrap();
    net.wait_for_interest(gbr, deu, "news.>").await;
    let publisher = net.client("gbr.analyst").await;
    publisher
        .publish(
            "news.gbr",
            "CONFIDENTIAL//REL TO GBR, DEU",
            b"still served".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        deu_analyst.next_delivery().await.unwrap().payload,
        b"still served"
    );

    let ca = pki::read_cert(&net.layout.ca_cert(fra)).unwrap();
    let genuine = entente::config::format_fingerprint(&pki::ca_fingerprint(&ca));
    std::fs::write(net.network_path(), pin(&genuine)).unwrap();
    net.control(gbr).reload().await.expect("the file loads");
    assert!(net.control(gbr).status().unwrap().mismatched_cas.is_empty());
    gbr_to_fra_flows(&net, "trusted again").await;
    net.shutdown().await;
}
