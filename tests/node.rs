//! Real nodes, real QUIC and TLS: delivery, policy filtering, admission,
//! tampering, malformed input, slow consumers and shutdown.
//!
//! Non-delivery is shown without timing: after the message that must not
//! arrive, the same publisher sends an allowed sentinel on the same path,
//! and the subscriber's next delivery must be the sentinel.

use std::time::Duration;

use entente::audit::now_us;
use entente::client::ClientError;
use entente::envelope::{Envelope, SealBatch, Signer, Unsigned};
use entente::identity::Identity;
use entente::node::{self, NodeSettings};
use entente::pki;
use entente::routing::announce::Announcement;
use entente::topic::{Pattern, Topic};
use entente::wire::{self, Frame, MAX_FRAME};
use entente_testkit::{nation, RawConnection, TestNetwork};

const TOPIC: &str = "sigint.ru.launch";

async fn payloads(client: &entente::client::Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(String::from_utf8(client.next_delivery().await.unwrap().payload).unwrap());
    }
    out
}

/// Publishes 1 KiB messages on `bulk.data` in runs of 100 until GBR's
/// audit log disconnects a slow consumer (one whose line names `whom`);
/// returns how many were published.
async fn publish_until_slow_consumer(
    net: &TestNetwork,
    publisher: &entente::client::Client,
    whom: &str,
) -> u64 {
    let payload = vec![0x42; 1024];
    let cut = |lines: &[String]| {
        lines
            .iter()
            .any(|l| l.contains("\"reason\":\"slow-consumer\"") && l.contains(whom))
    };
    let mut published = 0u64;
    while !cut(&net.audit_lines(nation("GBR"))) {
        for _ in 0..100 {
            publisher
                .publish("bulk.data", "R//REL TO GBR", payload.clone())
                .await
                .unwrap();
            published += 1;
        }
        assert!(published < 200_000, "the slow subscriber was never disconnected");
    }
    published
}

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn delivers_locally_and_across_a_link() {
    let net = TestNetwork::start().await;
    let gbr_sub = net.client("gbr.analyst").await;
    gbr_sub.subscribe("sigint.>").await.unwrap();
    let fra_sub = net.client("fra.analyst").await;
    fra_sub.subscribe("sigint.>").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    let gbr_second = net.client("gbr.sigint").await;
    gbr_second.subscribe("sigint.ru.*").await.unwrap();

    let publisher = net.client("gbr.analyst").await;
    let id = publisher
        .publish(TOPIC, "SECRET//REL TO GBR, FRA", b"launch detected".to_vec())
        .await
        .unwrap();

    for subscriber in [&gbr_sub, &fra_sub, &gbr_second] {
        let delivery = subscriber.next_delivery().await.unwrap();
        assert_eq!(delivery.id, id);
        assert_eq!(delivery.origin, nation("GBR"));
        assert_eq!(delivery.publisher, "gbr.analyst");
        assert_eq!(delivery.topic, TOPIC);
        assert_eq!(delivery.marking, "SECRET//REL TO FRA, GBR");
        assert_eq!(delivery.payload, b"launch detected");
    }
    let fra_audit = net
        .wait_for_audit(nation("FRA"), |l| {
            l.contains("\"event\":\"deliver\"") && l.contains("fra.analyst") && l.contains(&id.to_string())
        })
        .await;
    assert!(fra_audit.contains("\"decision\":\"allow\""));
    // FRA got the message unsealed, then its seal, which verified.
    net.wait_for_audit(nation("FRA"), |l| {
        l.contains("\"reason\":\"verified\"") && l.contains(&id.to_string())
    })
    .await;
    // Both local deliveries of one message share one audit line.
    let gbr_audit = net
        .wait_for_audit(nation("GBR"), |l| {
            l.contains("\"event\":\"deliver\"") && l.contains(&id.to_string())
        })
        .await;
    let record: serde_json::Value = serde_json::from_str(&gbr_audit).unwrap();
    let mut subjects: Vec<&str> = record["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["gbr.analyst", "gbr.sigint"], "{gbr_audit}");
    assert_eq!(record["decision"], "allow");
    net.shutdown().await;
}

#[tokio::test]
async fn nothing_is_delivered_outside_the_label() {
    let net = TestNetwork::start().await;
    let fra = net.client("fra.analyst").await;
    fra.subscribe(">").await.unwrap();
    let fra_junior = net.client("fra.junior").await;
    fra_junior.subscribe(">").await.unwrap();
    let gbr = net.client("gbr.analyst").await;
    gbr.subscribe(">").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), ">").await;
    let publisher = net.client("gbr.sigint").await;

    // FRA is not releasable.
    publisher
        .publish(TOPIC, "SECRET//REL TO GBR", b"gbr only".to_vec())
        .await
        .unwrap();
    // fra.junior's clearance is too low (fra.analyst may see it).
    publisher
        .publish(TOPIC, "SECRET//REL TO GBR, FRA", b"secret".to_vec())
        .await
        .unwrap();
    // gbr.analyst lacks the SIGINT compartment (gbr.sigint itself has it).
    publisher
        .publish(TOPIC, "SECRET//SIGINT//REL TO GBR", b"compartment".to_vec())
        .await
        .unwrap();
    // A sentinel everyone may see.
    publisher
        .publish(TOPIC, "UNCLASSIFIED//REL TO GBR, FRA", b"sentinel".to_vec())
        .await
        .unwrap();

    assert_eq!(payloads(&fra, 2).await, ["secret", "sentinel"]);
    assert_eq!(payloads(&fra_junior, 1).await, ["sentinel"]);
    assert_eq!(payloads(&gbr, 3).await, ["gbr only", "secret", "sentinel"]);

    // Each denial is audited with its reason.
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains("\"reason\":\"missing-compartment\"")
    })
    .await;
    net.wait_for_audit(nation("FRA"), |l| {
        l.contains("fra.junior") && l.contains("\"reason\":\"clearance-too-low\"")
    })
    .await;
    // GBR never sent the GBR-only message to FRA at all: its one forward
    // record lists FRA as denied, with the policy's reason.
    let denied_forward = net
        .wait_for_audit(nation("GBR"), |l| {
            l.contains("\"event\":\"forward\"") && l.contains("{\"peer\":\"FRA\",\"decision\":\"deny\"")
        })
        .await;
    assert!(
        denied_forward.contains("{\"peer\":\"FRA\",\"decision\":\"deny\",\"reason\":\"not-releasable\"}")
            && denied_forward.contains("SECRET//REL TO GBR\""),
        "{denied_forward}"
    );
    net.shutdown().await;
}

#[tokio::test]
async fn ceilings_stop_forwarding_above_the_agreement() {
    // GBR releases at most CONFIDENTIAL to DEU.
    let net = TestNetwork::start().await;
    let deu = net.client("deu.analyst").await;
    deu.subscribe(">").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("DEU"), ">").await;
    let publisher = net.client("gbr.analyst").await;
    publisher
        .publish(TOPIC, "SECRET//REL TO WEST", b"too high".to_vec())
        .await
        .unwrap();
    publisher
        .publish(TOPIC, "CONFIDENTIAL//REL TO WEST", b"ok".to_vec())
        .await
        .unwrap();
    assert_eq!(deu.next_delivery().await.unwrap().payload, b"ok");
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains("\"reason\":\"above-ceiling\"") && l.contains("DEU")
    })
    .await;
    net.shutdown().await;
}

#[tokio::test]
async fn publishing_is_authorized_and_bad_requests_are_refused() {
    let net = TestNetwork::start().await;
    let clerk = net.client("gbr.clerk").await;
    let (code, message) = refused(clerk.publish(TOPIC, "SECRET//REL TO GBR", b"x".to_vec()).await);
    assert_eq!(code, "clearance-too-low");
    assert!(message.contains("gbr.clerk is cleared RESTRICTED"), "{message}");
    let (code, message) = refused(clerk.publish(TOPIC, "SECRET//REL TO XYZ", b"x".to_vec()).await);
    assert_eq!(code, "bad-marking");
    assert!(message.contains("XYZ"), "{message}");
    let (code, _) = refused(clerk.publish("a.*", "R", b"x".to_vec()).await);
    assert_eq!(code, "bad-topic");
    let (code, _) = refused(clerk.subscribe("a.>.b").await);
    assert_eq!(code, "bad-pattern");
    // Unawaited publishes get no refusal back, so the client checks size.
    let oversized = vec![0; wire::MAX_PAYLOAD + 1];
    assert!(matches!(
        clerk.publish_unawaited(TOPIC, "R", oversized).await,
        Err(ClientError::PayloadTooLarge(_))
    ));
    // A session cannot grow the routing table without bound.
    let limit = NodeSettings::default().max_subscriptions;
    for i in 0..limit {
        clerk.subscribe(&format!("limit.{i}")).await.unwrap();
    }
    clerk.subscribe("limit.0").await.unwrap();
    let (code, message) = refused(clerk.subscribe("limit.over").await);
    assert_eq!(code, "too-many-subscriptions");
    assert!(message.contains(&limit.to_string()), "{message}");
    // The session survives refusals.
    clerk
        .publish(TOPIC, "R//REL TO GBR", b"fine".to_vec())
        .await
        .unwrap();
    net.shutdown().await;
}

#[tokio::test]
async fn a_principal_of_another_nation_is_refused_at_the_door() {
    let net = TestNetwork::start().await;
    let fra_principal = Identity::Principal {
        nation: nation("FRA"),
        name: "fra.analyst".into(),
    };
    let mut raw = RawConnection::open(&net, &fra_principal, nation("GBR"))
        .await
        .unwrap();
    raw.send_bytes(&wire::encode(&Frame::Hello { version: 1 }).unwrap())
        .await;
    let reason = raw.close_reason().await;
    assert_eq!(
        reason,
        "principal fra.analyst belongs to FRA, this node serves GBR"
    );
    let record = net
        .wait_for_audit(nation("GBR"), |l| l.contains("\"reason\":\"foreign-principal\""))
        .await;
    assert!(
        record.contains("\"event\":\"refuse\"") && record.contains("fra.analyst"),
        "{record}"
    );

    // A node that is not a configured peer is refused too (FRA–DEU are not linked).
    let mut raw = RawConnection::open(&net, &Identity::Node(nation("DEU")), nation("FRA"))
        .await
        .unwrap();
    raw.send_bytes(&wire::encode(&Frame::Hello { version: 1 }).unwrap())
        .await;
    assert_eq!(
        raw.close_reason().await,
        "the node of DEU is not a configured peer of FRA"
    );
    net.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let net = TestNetwork::start().await;
    // A complete rogue PKI for the same network: same names, different CAs.
    let rogue = pki::PkiLayout::new(net.dir.path().join("rogue"));
    pki::generate(&net.policy, &rogue, false).unwrap();
    let mut options = net.options("gbr.analyst");
    let (cert, key) = rogue.cert_and_key(&Identity::Principal {
        nation: nation("GBR"),
        name: "gbr.analyst".into(),
    });
    options.cert_chain = vec![pki::read_cert(&cert).unwrap()];
    options.key = pki::read_key(&key).unwrap();
    let result = entente::client::Client::connect(options).await;
    assert!(
        matches!(
            result,
            Err(ClientError::Connect { .. }) | Err(ClientError::Closed(_))
        ),
        "{:?}",
        result.err()
    );
    net.wait_for_audit(nation("GBR"), |l| l.contains("\"reason\":\"handshake-failed\""))
        .await;
    // The node still serves everyone else.
    let good = net.client("gbr.analyst").await;
    good.publish(TOPIC, "R", b"still up".to_vec()).await.unwrap();
    net.shutdown().await;
}

#[tokio::test]
async fn a_tampered_envelope_from_a_misbehaving_peer_is_refused_and_audited() {
    let mut net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    gbr.subscribe(">").await.unwrap();
    // The test plays FRA's node: its real one goes, since a peer has one
    // inbound link at a time and the newest wins.
    net.stop(nation("FRA")).await.unwrap();

    // The test plays FRA's node, with FRA's real certificate and key.
    let (_, key_path) = net.identity_files(&Identity::Node(nation("FRA")));
    let signer = Signer::from_pkcs8(pki::read_key(&key_path).unwrap().secret_der()).unwrap();
    let mut peer = RawConnection::open(&net, &Identity::Node(nation("FRA")), nation("GBR"))
        .await
        .unwrap();
    assert_eq!(
        peer.hello().await,
        Frame::PeerWelcome {
            nation: nation("GBR")
        }
    );

    let scheme = net.policy.scheme();
    let mut next = 0u8;
    let mut seal_at = |created_us: u64, marking: &str, payload: &[u8]| {
        next += 1;
        signer.seal(Unsigned {
            id: entente::envelope::MessageId([next; 16]),
            origin: nation("FRA"),
            publisher: "fra.analyst".into(),
            topic: Topic::new(TOPIC).unwrap(),
            released_to: net
                .policy
                .release_set(nation("FRA"), &scheme.parse(marking).unwrap()),
            label: scheme.parse(marking).unwrap(),
            created_us,
            payload: payload.to_vec(),
        })
    };
    // Signed for FRA only, then widened to GBR in transit.
    let mut widened = seal_at(now_us(), "SECRET//REL TO FRA", b"widened");
    widened.label = scheme.parse("SECRET//REL TO FRA, GBR").unwrap();
    // Payload changed after signing.
    let mut altered = seal_at(now_us(), "SECRET//REL TO FRA, GBR", b"original");
    altered.payload = b"altered".to_vec();
    // Correctly signed, but not releasable to GBR at all.
    let not_for_gbr = seal_at(now_us(), "SECRET//REL TO FRA", b"not for gbr");
    // Correctly signed and releasable, but older than any duplicate
    // window, so a replay could not be told from a first delivery.
    let stale = seal_at(1, "SECRET//REL TO FRA, GBR", b"stale");
    // Correctly signed, but timed an hour ahead: it would outlive the
    // duplicate window.
    let future = seal_at(now_us() + 3_600_000_000, "SECRET//REL TO FRA, GBR", b"future");
    // Signed by FRA, but claiming to be DEU's, as a relay would pass it
    // on: it is checked against DEU's key and refused.
    let mut not_own = seal_at(now_us(), "SECRET//REL TO FRA, GBR", b"not own");
    not_own.origin = nation("DEU");
    // A publisher named as DEU's, or it would be refused before its seal
    // is checked, as `unknown-publisher`.
    not_own.publisher = "deu.analyst".into();
    let sentinel = seal_at(now_us(), "SECRET//REL TO FRA, GBR", b"sentinel");
    for envelope in [
        widened,
        altered,
        not_for_gbr,
        stale,
        future,
        not_own,
        sentinel.clone(),
    ] {
        peer.send_frame(&Frame::Forward(envelope)).await;
    }
    // The same sentinel again: a duplicate, dropped by id.
    peer.send_frame(&Frame::Forward(sentinel)).await;
    let again = seal_at(now_us(), "SECRET//REL TO FRA, GBR", b"after the duplicate");
    let again_id = again.id.to_string();
    peer.send_frame(&Frame::Forward(again)).await;

    // Invariant 3: envelopes that arrive sealed are verified before they
    // are delivered, so the three with broken seals (including the one
    // claiming DEU's origin) are refused as bad signatures. Everything the
    // policy forbids and every replay is refused too.
    let mut received = Vec::new();
    for _ in 0..2 {
        received.push(String::from_utf8(gbr.next_delivery().await.unwrap().payload).unwrap());
    }
    assert_eq!(received, ["sentinel", "after the duplicate"]);
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains("\"event\":\"deliver\"") && l.contains(&again_id)
    })
    .await;
    net.wait_for_audit_count(nation("GBR"), 3, |l| l.contains("\"reason\":\"bad-signature\""))
        .await;
    let audit = net.audit_lines(nation("GBR"));
    let bad_signatures = audit
        .iter()
        .filter(|l| l.contains("\"reason\":\"bad-signature\""))
        .count();
    assert_eq!(bad_signatures, 3, "{audit:#?}");
    assert!(audit
        .iter()
        .any(|l| l.contains("\"event\":\"refuse\"") && l.contains("\"reason\":\"not-releasable\"")));
    assert!(audit
        .iter()
        .any(|l| l.contains("\"event\":\"drop\"") && l.contains("\"reason\":\"duplicate\"")));
    assert!(audit
        .iter()
        .any(|l| l.contains("\"event\":\"refuse\"") && l.contains("\"reason\":\"stale\"")));
    assert!(audit
        .iter()
        .any(|l| l.contains("\"event\":\"refuse\"") && l.contains("\"reason\":\"from-the-future\"")));
    assert!(audit.iter().any(|l| l.contains("\"reason\":\"bad-signature\"")
        && l.contains("DEU")
        && l.contains("neither delivered nor relayed")));
    net.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_their_connection() {
    let net = TestNetwork::start().await;
    let subscriber = net.client("gbr.analyst").await;
    subscriber.subscribe(">").await.unwrap();
    let analyst = Identity::Principal {
        nation: nation("GBR"),
        name: "gbr.analyst".into(),
    };

    let mut garbage = RawConnection::open(&net, &analyst, nation("GBR")).await.unwrap();
    assert!(matches!(garbage.hello().await, Frame::Welcome { .. }));
    garbage
        .send_bytes(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await;
    let reason = garbage.close_reason().await;
    assert!(reason.starts_with("malformed frame"), "{reason}");

    let mut oversized = RawConnection::open(&net, &analyst, nation("GBR")).await.unwrap();
    assert!(matches!(oversized.hello().await, Frame::Welcome { .. }));
    oversized
        .send_bytes(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .await;
    let reason = oversized.close_reason().await;
    assert_eq!(
        reason,
        format!(
            "frame of {} bytes exceeds the limit of {MAX_FRAME} bytes",
            MAX_FRAME + 1
        )
    );

    // A first frame announcing far more than any Hello takes is refused
    // from its prefix alone, before the node allocates for it.
    let mut huge_hello = RawConnection::open(&net, &analyst, nation("GBR")).await.unwrap();
    huge_hello.send_bytes(&(MAX_FRAME as u32).to_be_bytes()).await;
    let reason = huge_hello.close_reason().await;
    assert!(
        reason.contains(&format!(
            "a frame of {MAX_FRAME} bytes was announced where at most"
        )),
        "{reason}"
    );

    let other_protocol = RawConnection::open_with_alpn(&net, &analyst, nation("GBR"), b"entente/2").await;
    let err = other_protocol
        .err()
        .expect("a different ALPN fails the handshake");
    assert!(err.contains("doesn't support any known protocol"), "{err}");

    let mut wrong_version = RawConnection::open(&net, &analyst, nation("GBR")).await.unwrap();
    wrong_version.send_frame(&Frame::Hello { version: 99 }).await;
    assert!(wrong_version
        .close_reason()
        .await
        .contains("protocol version 99 is not supported"));

    let violations = net
        .wait_for_audit_count(nation("GBR"), 4, |l| {
            l.contains("\"reason\":\"protocol-violation\"")
        })
        .await;
    assert_eq!(violations, 4, "{:#?}", net.audit_lines(nation("GBR")));
    // Everyone else carries on.
    let publisher = net.client("gbr.analyst").await;
    publisher
        .publish(TOPIC, "S//REL TO GBR", b"still fine".to_vec())
        .await
        .unwrap();
    assert_eq!(subscriber.next_delivery().await.unwrap().payload, b"still fine");
    net.shutdown().await;
}

#[tokio::test]
async fn a_slow_subscriber_is_disconnected_without_stalling_a_fast_one() {
    let settings = NodeSettings {
        session_queue: 16,
        ..NodeSettings::default()
    };
    let net = TestNetwork::start_with(settings).await;
    let slow = net.client("gbr.analyst").await;
    slow.subscribe("bulk.>").await.unwrap();
    let fast = net.client("gbr.analyst").await;
    fast.subscribe("bulk.>").await.unwrap();
    let publisher = net.client("gbr.analyst").await;

    // Publish until the slow subscriber has been cut off (it never reads, so
    // its client buffer, the QUIC window and then its node queue fill up),
    // while the fast one reads everything.
    let reader = tokio::spawn(async move {
        let mut received = 0u64;
        loop {
            let delivery = fast.next_delivery().await.unwrap();
            if delivery.payload == b"done" {
                return received;
            }
            received += 1;
        }
    });
    let published = publish_until_slow_consumer(&net, &publisher, "").await;
    publisher
        .publish("bulk.data", "R//REL TO GBR", b"done".to_vec())
        .await
        .unwrap();
    assert_eq!(
        reader.await.unwrap(),
        published,
        "the fast subscriber lost messages"
    );

    // The slow subscriber finds out why, once it reads what it had buffered.
    let reason = loop {
        match slow.next_delivery().await {
            Ok(_) => continue,
            Err(err) => break err.to_string(),
        }
    };
    assert!(reason.contains("slow consumer"), "{reason}");
    net.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_graceful() {
    let mut net = TestNetwork::start().await;
    let client = net.client("gbr.analyst").await;
    client.subscribe(">").await.unwrap();
    net.stop(nation("GBR")).await.expect("GBR stops cleanly");
    let err = tokio::time::timeout(Duration::from_secs(30), client.next_delivery())
        .await
        .expect("the client hears of the shutdown")
        .unwrap_err();
    assert!(err.to_string().contains("node shutting down"), "{err}");
    // The audit log was flushed on the way out.
    let audit = net.audit_lines(nation("GBR"));
    assert!(
        audit.iter().any(|l| l.contains("\"reason\":\"own-principal\"")),
        "{audit:#?}"
    );
    // Its peers notice and keep running, re-dialing in the background.
    net.wait_for_audit(nation("FRA"), |l| {
        l.contains("\"reason\":\"link-down\"") && l.contains("GBR")
    })
    .await;
    let fra = net.client("fra.analyst").await;
    fra.publish(TOPIC, "S//REL TO FRA", b"FRA carries on".to_vec())
        .await
        .unwrap();
    net.shutdown().await;
}

/// A stopped node has let go of its port, its custody store and its audit
/// log by the time `run` returns, whatever was connected to it: another
/// node starts in its place at once, with no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_has_let_go_of_its_port_and_data_folder() {
    let mut net = TestNetwork::start().await;
    let gbr = nation("GBR");
    for round in 0..3 {
        let subscriber = net.client("gbr.analyst").await;
        subscriber.subscribe(">").await.unwrap();
        net.wait_for_audit_count(gbr, round + 1, |l| {
            l.contains("\"reason\":\"link-up\"") && l.contains("\"subject\":\"FRA\"")
        })
        .await;
        net.stop(gbr).await.expect("GBR stops cleanly");
        let config = net.node_config(gbr);
        let store = entente::store::Store::open(&config.data_dir).expect("the store is closed");
        drop(store);
        // A plain socket, closed when dropped (a quinn endpoint lets go of
        // its socket on its driver's task, a moment later).
        let port = std::net::UdpSocket::bind(net.addr(gbr)).expect("the port is free");
        drop(port);
        // The audit chain continues where the stopped writer ended.
        net.start_again(gbr).await;
        drop(subscriber);
    }
    let log = net.node_config(gbr).data_dir.join("audit.jsonl");
    let verified = entente::audit::chain::verify_file(&log, None).unwrap();
    assert!(verified.intact() && verified.torn.is_empty(), "{verified:?}");
    net.shutdown().await;
}

#[tokio::test]
async fn a_dropped_link_is_redialed() {
    let mut net = TestNetwork::start().await;
    let links_up = |net: &TestNetwork| {
        net.audit_lines(nation("GBR"))
            .iter()
            .filter(|l| l.contains("\"reason\":\"link-up\"") && l.contains("\"subject\":\"FRA\""))
            .count()
    };
    // Counted from here: a link that flapped at start-up is no failure.
    let before = links_up(&net);
    assert!(before >= 1);
    net.restart(nation("FRA")).await;
    // GBR notices the old link died and dials the new FRA node.
    for _ in 0..1000 {
        if links_up(&net) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(links_up(&net) > before, "GBR never re-dialed FRA");
    let fra = net.client("fra.analyst").await;
    fra.subscribe(">").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), ">").await;
    let gbr = net.client("gbr.analyst").await;
    gbr.publish(TOPIC, "S//REL TO GBR, FRA", b"after the restart".to_vec())
        .await
        .unwrap();
    assert_eq!(fra.next_delivery().await.unwrap().payload, b"after the restart");
    net.shutdown().await;
}

/// A peer that stops reading fills its link's queue, and the link is cut
/// at once (audited as `peer-stalled`) rather than waited for: every
/// publish is acknowledged and delivered locally, and nothing waits for
/// the stuck peer.
#[tokio::test]
async fn a_peer_that_stops_reading_is_cut_off_without_slowing_publishers() {
    let mut net = TestNetwork::start_with(NodeSettings {
        peer_queue: 4,
        max_redial_backoff: Duration::from_millis(100),
        ..NodeSettings::default()
    })
    .await;
    let (gbr, fra) = (nation("GBR"), nation("FRA"));
    // FRA's real node makes way for one that greets GBR's link, then
    // never reads from it again.
    net.stop(fra).await.unwrap();
    let fake = node::bind(&net.node_config(fra), net.addr(fra))
        .unwrap()
        .endpoint()
        .clone();
    let stuck = tokio::spawn(async move {
        let connection = fake.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        assert!(matches!(
            entente::stream::read_frame(&mut recv).await,
            Ok(Some(Frame::Hello { .. }))
        ));
        for frame in [Frame::PeerWelcome { nation: fra }, Frame::ResolutionsSent] {
            send.write_all(&wire::encode(&frame).unwrap()).await.unwrap();
        }
        // Hold the connection open, unread, until the node closes it.
        connection.closed().await
    });
    net.wait_for_audit_count(gbr, 2, |l| {
        l.contains("\"reason\":\"link-up\"") && l.contains("\"subject\":\"FRA\"")
    })
    .await;
    // On a link of its own, the fake tells GBR, with FRA's real key, that
    // FRA is linked to GBR and wants everything.
    let (_, key_path) = net.identity_files(&Identity::Node(fra));
    let signer = Signer::from_pkcs8(pki::read_key(&key_path).unwrap().secret_der()).unwrap();
    let mut announcer = RawConnection::open(&net, &Identity::Node(fra), gbr)
        .await
        .unwrap();
    announcer.hello().await;
    let interest = Announcement {
        nation: fra,
        seq: now_us(),
        links: [gbr].into(),
        patterns: [Pattern::new(">").unwrap()].into(),
    };
    announcer
        .send_frame(&Frame::Announce(interest.sign(&signer)))
        .await;
    net.wait_for_interest(gbr, fra, ">").await;

    let local = net.client("gbr.analyst").await;
    local.subscribe("sigint.>").await.unwrap();
    let publisher = net.client("gbr.analyst").await;
    // Far more than FRA's stream window and the link queue together.
    let count = 3000;
    for i in 0..count {
        publisher
            .publish_unawaited(
                TOPIC,
                "SECRET//REL TO GBR, FRA",
                format!("{i:01024}").into_bytes(),
            )
            .await
            .unwrap();
    }
    publisher
        .publish(TOPIC, "SECRET//REL TO GBR, FRA", b"last".to_vec())
        .await
        .unwrap();
    assert_eq!(
        publisher.unawaited_replies(),
        (count, 0),
        "every publish acknowledged"
    );
    let delivered = payloads(&local, count as usize + 1).await;
    assert_eq!(delivered.last().map(String::as_str), Some("last"));

    let closed = stuck.await.unwrap();
    assert!(closed.to_string().contains("slow consumer"), "{closed}");
    net.wait_for_audit(gbr, |l| {
        l.contains("\"event\":\"disconnect\"")
            && l.contains("\"reason\":\"peer-stalled\"")
            && l.contains("\"subject\":\"FRA\"")
    })
    .await;
    net.shutdown().await;
}

/// Seals that follow their envelopes: a good one verifies, a bad one is
/// refused as a bad signature, a missing one is audited when the link
/// ends, and a peer that never sends seals is cut off before it can make
/// the node hold unbounded state.
/// A peer that acknowledges custody of entries it was never sent has its
/// link closed, and the violation is on record as `protocol-violation`,
/// naming it and what it claimed, not as a plain `link-down`.
#[tokio::test]
async fn a_lying_custody_ack_is_audited_as_a_protocol_violation() {
    let mut net = TestNetwork::start().await;
    let (gbr, fra) = (nation("GBR"), nation("FRA"));
    net.stop(fra).await.unwrap();
    let fake = node::bind(&net.node_config(fra), net.addr(fra))
        .unwrap()
        .endpoint()
        .clone();
    let liar = tokio::spawn(async move {
        let connection = fake.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        assert!(matches!(
            entente::stream::read_frame(&mut recv).await,
            Ok(Some(Frame::Hello { .. }))
        ));
        for frame in [Frame::PeerWelcome { nation: fra }, Frame::ResolutionsSent] {
            send.write_all(&wire::encode(&frame).unwrap()).await.unwrap();
        }
        let lie = wire::encode(&Frame::Custody { through: 5 }).unwrap();
        send.write_all(&lie).await.unwrap();
        connection.closed().await
    });
    let violation = net
        .wait_for_audit(gbr, |l| {
            l.contains("\"reason\":\"protocol-violation\"") && l.contains("\"subject\":\"FRA\"")
        })
        .await;
    assert!(violation.contains("acknowledged entry 5"), "{violation}");
    let closed = liar.await.unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref close)
            if close.error_code == quinn::VarInt::from_u32(wire::close::PROTOCOL)),
        "{closed:?}"
    );
    net.shutdown().await;
}

#[tokio::test]
async fn seals_sent_after_their_envelopes_are_checked_and_missing_ones_audited() {
    let mut net = TestNetwork::start().await;
    let gbr = net.client("gbr.analyst").await;
    gbr.subscribe(">").await.unwrap();
    // The test plays FRA's node: its real one goes, since a peer has one
    // inbound link at a time and the newest wins.
    net.stop(nation("FRA")).await.unwrap();
    let (_, key_path) = net.identity_files(&Identity::Node(nation("FRA")));
    let signer = Signer::from_pkcs8(pki::read_key(&key_path).unwrap().secret_der()).unwrap();
    let scheme = net.policy.scheme();
    let message = |n: u64, payload: &str| {
        let mut id = [9u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        Envelope::from(Unsigned {
            id: entente::envelope::MessageId(id),
            origin: nation("FRA"),
            publisher: "fra.analyst".into(),
            topic: Topic::new(TOPIC).unwrap(),
            released_to: net
                .policy
                .release_set(nation("FRA"), &scheme.parse("SECRET//REL TO FRA, GBR").unwrap()),
            label: scheme.parse("SECRET//REL TO FRA, GBR").unwrap(),
            created_us: now_us(),
            payload: payload.as_bytes().to_vec(),
        })
    };
    let mut peer = RawConnection::open(&net, &Identity::Node(nation("FRA")), nation("GBR"))
        .await
        .unwrap();
    peer.hello().await;
    let mut batch = vec![
        message(1, "good"),
        message(2, "forged"),
        message(3, "never sealed"),
    ];
    for envelope in &batch {
        peer.send_frame(&Frame::Forward(envelope.clone())).await;
    }
    signer.seal_batch(&mut batch, &Default::default());
    let mut seals = SealBatch::of(&batch[..2]);
    seals.proofs[1].siblings[0][0] ^= 1;
    peer.send_frame(&Frame::Seals(seals)).await;
    // Delivered at once: they come from their origin on its own link.
    assert_eq!(payloads(&gbr, 3).await, ["good", "forged", "never sealed"]);
    let id = |n: usize| batch[n].id.to_string();
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains("\"reason\":\"verified\"") && l.contains(&id(0))
    })
    .await;
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains("\"reason\":\"bad-signature\"") && l.contains(&id(1))
    })
    .await;
    peer.connection.close(0u32.into(), b"done");
    net.wait_for_audit(nation("GBR"), |l| {
        l.contains("\"reason\":\"unsealed\"") && l.contains(&id(2))
    })
    .await;

    // A peer that only ever sends unsealed envelopes is cut off.
    let mut flood = RawConnection::open(&net, &Identity::Node(nation("FRA")), nation("GBR"))
        .await
        .unwrap();
    flood.hello().await;
    for n in 100..100 + 16 * 1024 + 1 {
        flood
            .send_bytes(&wire::encode(&Frame::Forward(message(n, "x"))).unwrap())
            .await;
    }
    assert!(flood.close_reason().await.contains("waiting for seals"));
    net.shutdown().await;
}

/// Clean session endings: every message queued for a subscriber cut as a
/// slow consumer either reaches it or is audited as not delivered
/// (`session-closed`), never both and never neither.
#[tokio::test]
async fn a_slow_consumers_queued_messages_are_delivered_or_audited_never_both() {
    let settings = NodeSettings {
        session_queue: 16,
        ..NodeSettings::default()
    };
    let mut net = TestNetwork::start_with(settings).await;
    // A subscriber that reads nothing at all until it is cut: spoken by
    // hand, since the client library reads ahead into its own buffer.
    let identity = Identity::Principal {
        nation: nation("GBR"),
        name: "gbr.sigint".into(),
    };
    let mut slow = RawConnection::open(&net, &identity, nation("GBR")).await.unwrap();
    assert!(matches!(slow.hello().await, Frame::Welcome { .. }));
    slow.send_frame(&Frame::Subscribe {
        request: 1,
        pattern: "bulk.>".into(),
    })
    .await;
    assert!(matches!(
        entente::stream::read_frame(&mut slow.recv).await,
        Ok(Some(Frame::SubscribeAck { .. }))
    ));
    let publisher = net.client("gbr.analyst").await;
    publish_until_slow_consumer(&net, &publisher, "gbr.sigint").await;
    // Past the node's flush deadline (500 ms), it reads everything that
    // reached it, up to the close.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut received = std::collections::BTreeSet::new();
    loop {
        match entente::stream::read_frame(&mut slow.recv).await {
            Ok(Some(Frame::Deliver(delivery))) => {
                assert!(received.insert(delivery.id.to_string()), "received twice")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let reason = slow.close_reason().await;
    assert!(reason.contains("slow consumer"), "{reason}");
    net.stop(nation("GBR")).await.unwrap();

    let records: Vec<serde_json::Value> = net
        .audit_lines(nation("GBR"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids = |decision: &str, reason: &str| -> std::collections::BTreeSet<String> {
        records
            .iter()
            .filter(|r| r["event"] == "deliver" && r["decision"] == decision && r["reason"] == reason)
            .filter(|r| {
                r["subject"] == "gbr.sigint"
                    || r["subjects"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s == "gbr.sigint"))
            })
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let queued = ids("allow", "policy-allows");
    let undelivered = ids("deny", "session-closed");
    assert!(
        !undelivered.is_empty(),
        "it stopped reading: some never left the queue"
    );
    assert!(
        received.is_disjoint(&undelivered),
        "both delivered and audited as not: {:?}",
        received.intersection(&undelivered).collect::<Vec<_>>()
    );
    let accounted: std::collections::BTreeSet<String> = received.union(&undelivered).cloned().collect();
    assert_eq!(
        accounted.len(),
        queued.len(),
        "received {} + undelivered {} != queued for it {}",
        received.len(),
        undelivered.len(),
        queued.len()
    );
    assert_eq!(accounted, queued);
    net.shutdown().await;
}

/// A partner must learn nothing from the ids it is sent about the messages
/// it was not: 100 messages, every third not releasable to FRA, and the
/// ids FRA gets are neither ordered, nor close to one another, nor biased
/// in their bits (a counter, or a prefix and a counter, fails all three).
#[tokio::test]
async fn ids_reveal_nothing_of_what_was_withheld() {
    let net = TestNetwork::start().await;
    let fra = net.client("fra.analyst").await;
    fra.subscribe("sigint.>").await.unwrap();
    net.wait_for_interest(nation("GBR"), nation("FRA"), "sigint.>")
        .await;
    let gbr = net.client("gbr.analyst").await;
    let mut released = Vec::new();
    for i in 0..100 {
        let marking = if i % 3 == 0 {
            "SECRET//REL TO GBR, DEU"
        } else {
            "SECRET//REL TO GBR, FRA"
        };
        let id = gbr.publish(TOPIC, marking, vec![0; 8]).await.unwrap();
        if i % 3 != 0 {
            released.push(id);
        }
    }
    let mut received = Vec::new();
    for _ in 0..released.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(30), fra.next_delivery())
            .await
            .expect("a delivery within 30 s")
            .unwrap();
        received.push(delivery.id);
    }
    assert_eq!(received, released, "FRA gets what was released to it, in order");

    let numbers: Vec<u128> = received.iter().map(|id| u128::from_be_bytes(id.0)).collect();
    assert!(
        !numbers.is_sorted() && !numbers.iter().rev().is_sorted(),
        "ids in publish order are ordered: {received:?}"
    );
    for (i, a) in numbers.iter().enumerate() {
        for b in &numbers[i + 1..] {
            assert!(
                a.abs_diff(*b) > 1 << 64,
                "two ids differ by a small number: {a:x} {b:x}"
            );
        }
    }
    // Monobit frequency test: the share of set bits of random ids is a half,
    // with a standard deviation of sqrt(bits) / 2. Five of those fail a
    // random source once in two million runs.
    let bits = 128.0 * numbers.len() as f64;
    let ones: u32 = numbers.iter().map(|n| n.count_ones()).sum();
    let deviation = (f64::from(ones) - bits / 2.0).abs() / (bits.sqrt() / 2.0);
    assert!(
        deviation < 5.0,
        "{ones} of {bits} bits set: {deviation:.1} deviations off a half"
    );
    net.shutdown().await;
}
