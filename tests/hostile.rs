//! A hostile member: a coalition node with a genuine certificate, a
//! configured peer, that sends what its node key lets it sign. Each test
//! plays that member over real QUIC against real in-process nodes, with
//! the member's real node key, and checks both that the attack is refused
//! and audited and that the node goes on serving everyone else.
//!
//! Non-delivery is shown without timing: after what must not arrive, the
//! member sends a good sentinel on the same link, and the subscriber's
//! next delivery must be the sentinel (a link's frames are handled in
//! order, and an envelope that comes unsealed is delivered before the
//! sealed ones read with it).

use std::path::Path;
use std::time::Duration;

use entente::audit::now_us;
use entente::authenticator::TagKeys;
use entente::client::{Client, ClientError};
use entente::envelope::{Envelope, MessageId, MessageIds, Seal, SealBatch, Signer, Unsigned};
use entente::identity::Identity;
use entente::label::{Label, Level, Nation};
use entente::node::NodeSettings;
use entente::pki;
use entente::topic::Topic;
use entente::wire::{self, Delivery, Frame};
use entente_testkit::{nation, RawConnection, TestNetwork, NETWORK, RING};

/// The node key of `of`, as the hostile member holds its own.
fn node_signer(net: &TestNetwork, of: Nation) -> Signer {
    let (_, key) = net.identity_files(&Identity::Node(of));
    Signer::from_pkcs8(pki::read_key(&key).unwrap().secret_der()).unwrap()
}

/// A link to `to`'s node, opened as `member`'s node with its genuine
/// certificate, past `Hello`.
async fn link(net: &TestNetwork, member: &str, to: &str) -> RawConnection {
    let mut link = RawConnection::open(net, &Identity::Node(nation(member)), nation(to))
        .await
        .unwrap();
    assert_eq!(link.hello().await, Frame::PeerWelcome { nation: nation(to) });
    link
}

/// The next delivery; a test that never gets one fails rather than hangs
/// (the limit is generous: only a broken feature reaches it).
async fn next(client: &Client) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), client.next_delivery())
        .await
        .expect("a delivery within 30 s")
        .unwrap()
}

async fn next_payload(client: &Client) -> String {
    String::from_utf8_lossy(&next(client).await.payload).into_owned()
}

async fn subscriber(net: &TestNetwork, principal: &str, pattern: &str, known_at: &[&str]) -> Client {
    let client = net.client(principal).await;
    client.subscribe(pattern).await.unwrap();
    let of = net.policy.principal(principal).unwrap().nation;
    for &at in known_at {
        net.wait_for_interest(nation(at), of, pattern).await;
    }
    client
}

/// A message of `origin` as its node would sign it.
fn message(
    policy: &entente::policy::Policy,
    id: MessageId,
    origin: &str,
    publisher: &str,
    label: Label,
    payload: &[u8],
) -> Unsigned {
    Unsigned {
        id,
        origin: nation(origin),
        publisher: publisher.into(),
        topic: Topic::new("reports.hostile").unwrap(),
        released_to: policy.release_set(nation(origin), &label),
        label,
        created_us: now_us(),
        payload: payload.to_vec(),
    }
}

/// Ids of this file's own messages: `tag` keeps each test's apart.
fn test_id(tag: u8, n: u64) -> MessageId {
    let mut id = [tag; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    MessageId(id)
}

/// The id secret of every node of the networks that play a member who
/// knows a partner's next ids. Without it (invariant 8) no member can
/// know them: this plays the strongest member there could be.
const KNOWN_ID_SECRET: [u8; 32] = [0x1d; 32];

/// Settings under which every node makes its ids from [`KNOWN_ID_SECRET`].
fn known_ids() -> NodeSettings {
    NodeSettings {
        id_secret: Some(KNOWN_ID_SECRET),
        ..NodeSettings::default()
    }
}

/// The id a node under [`known_ids`] gives its `n`th message (from 0).
fn nth_id(n: u64) -> MessageId {
    let ids = MessageIds::new(KNOWN_ID_SECRET);
    (0..n).for_each(|_| {
        ids.next_id();
    });
    ids.next_id()
}

/// The id `steps` after `first`, the first id of a node under
/// [`known_ids`].
fn after(first: MessageId, steps: u64) -> MessageId {
    assert_eq!(
        first,
        nth_id(0),
        "a node under known_ids gives the known first id"
    );
    nth_id(steps)
}

/// Sends envelopes unsealed, as an origin does on its own link, then
/// their seals.
async fn send_unsealed_then_seals(link: &mut RawConnection, signer: &Signer, messages: Vec<Unsigned>) {
    let mut envelopes: Vec<Envelope> = messages.into_iter().map(Envelope::from).collect();
    for envelope in &envelopes {
        link.send_frame(&Frame::Forward(envelope.clone())).await;
    }
    signer.seal_batch(&mut envelopes, &Default::default());
    link.send_frame(&Frame::Seals(SealBatch::of(&envelopes))).await;
}

fn count(net: &TestNetwork, at: &str, matches: impl Fn(&str) -> bool) -> usize {
    net.audit_lines(nation(at)).iter().filter(|l| matches(l)).count()
}

fn reason(code: &str) -> String {
    format!("\"reason\":\"{code}\"")
}

/// Finding 1, straight to the victim's partner: DEU, which sees FRA's
/// traffic, sends GBR its own validly signed envelopes under FRA's next
/// ids, unsealed and sealed, and forgeries claiming FRA's origin under
/// another. Every one of FRA's genuine messages is still delivered at
/// GBR: ids are remembered per origin, and a forgery burns no id.
#[tokio::test]
async fn a_member_cannot_suppress_another_nations_messages_by_taking_their_ids() {
    let net = TestNetwork::start_with(known_ids()).await;
    let gbr = subscriber(&net, "gbr.analyst", "reports.>", &["FRA", "DEU"]).await;
    let fra = net.client("fra.analyst").await;
    let secret = |marking: &str| net.policy.scheme().parse(marking).unwrap();
    let first = fra
        .publish("reports.fra", "SECRET//REL TO FRA, GBR", b"fra 1".to_vec())
        .await
        .unwrap();
    assert_eq!(next_payload(&gbr).await, "fra 1");

    let deu_key = node_signer(&net, nation("DEU"));
    let mut deu = link(&net, "DEU", "GBR").await;
    // DEU's own messages under FRA's next two ids: one unsealed with its
    // seal after it, one sealed.
    send_unsealed_then_seals(
        &mut deu,
        &deu_key,
        vec![message(
            &net.policy,
            after(first, 1),
            "DEU",
            "deu.analyst",
            secret("SECRET//REL TO DEU, GBR"),
            b"deu under fra 2",
        )],
    )
    .await;
    let sealed = deu_key.seal(message(
        &net.policy,
        after(first, 2),
        "DEU",
        "deu.analyst",
        secret("SECRET//REL TO DEU, GBR"),
        b"deu under fra 3",
    ));
    deu.send_frame(&Frame::Forward(sealed)).await;
    // Claiming FRA's origin under FRA's id after that: DEU's key does not
    // make FRA's seal, and an unsealed envelope may come only from its
    // origin.
    let forged = message(
        &net.policy,
        after(first, 3),
        "FRA",
        "fra.analyst",
        secret("SECRET//REL TO FRA, GBR"),
        b"forged fra 4",
    );
    deu.send_frame(&Frame::Forward(deu_key.seal(forged.clone())))
        .await;
    deu.send_frame(&Frame::Forward(Envelope::from(forged))).await;
    // DEU's own are DEU's to send: they are delivered, as DEU's.
    for expected in ["deu under fra 2", "deu under fra 3"] {
        let delivery = next(&gbr).await;
        assert_eq!(
            (delivery.origin, delivery.payload.as_slice()),
            (nation("DEU"), expected.as_bytes())
        );
    }
    net.wait_for_audit(nation("GBR"), |l| l.contains(&reason("unsealed-relay")))
        .await;
    net.wait_for_audit(nation("GBR"), |l| l.contains(&reason("bad-signature")))
        .await;

    // FRA's next three messages carry exactly the ids DEU took.
    for n in 1..=3u64 {
        let id = fra
            .publish(
                "reports.fra",
                "SECRET//REL TO FRA, GBR",
                format!("fra {}", n + 1).into_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(id, after(first, n), "the ids were predicted right");
    }
    for n in 2..=4 {
        assert_eq!(next_payload(&gbr).await, format!("fra {n}"));
    }
    assert_eq!(count(&net, "GBR", |l| l.contains(&reason("duplicate"))), 0);
    net.shutdown().await;
}

/// Finding 1 through a relay: on the ring (FIN ── EST ── LVA, GBR ── EST),
/// GBR sends EST its own sealed envelope under FIN's next id, which EST
/// verifies and relays to LVA, and a forgery claiming FIN's origin under
/// the id after. FIN's genuine messages still cross EST and reach LVA.
#[tokio::test]
async fn a_member_cannot_suppress_another_nations_messages_through_a_relay() {
    let net = TestNetwork::start_from(RING, known_ids()).await;
    let lva = subscriber(&net, "lva.analyst", "reports.>", &["FIN", "GBR"]).await;
    let fin = net.client("fin.analyst").await;
    let first = fin
        .publish("reports.fin", "SECRET//REL TO RING", b"fin 1".to_vec())
        .await
        .unwrap();
    assert_eq!(next_payload(&lva).await, "fin 1");

    let ring = net.policy.scheme().parse("SECRET//REL TO RING").unwrap();
    let gbr_key = node_signer(&net, nation("GBR"));
    let mut gbr = link(&net, "GBR", "EST").await;
    let own = gbr_key.seal(message(
        &net.policy,
        after(first, 1),
        "GBR",
        "gbr.analyst",
        ring.clone(),
        b"gbr under fin 2",
    ));
    gbr.send_frame(&Frame::Forward(own)).await;
    let forged = gbr_key.seal(message(
        &net.policy,
        after(first, 2),
        "FIN",
        "fin.analyst",
        ring.clone(),
        b"forged fin 3",
    ));
    gbr.send_frame(&Frame::Forward(forged)).await;
    let delivery = next(&lva).await;
    assert_eq!(
        (delivery.origin, delivery.payload.as_slice()),
        (nation("GBR"), b"gbr under fin 2".as_slice()),
        "GBR's own message is relayed by EST"
    );
    net.wait_for_audit(nation("EST"), |l| l.contains(&reason("bad-signature")))
        .await;

    for n in 1..=2u64 {
        let id = fin
            .publish(
                "reports.fin",
                "SECRET//REL TO RING",
                format!("fin {}", n + 1).into_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(id, after(first, n), "the ids were predicted right");
    }
    assert_eq!(next_payload(&lva).await, "fin 2");
    assert_eq!(next_payload(&lva).await, "fin 3");
    for at in ["EST", "LVA"] {
        assert_eq!(count(&net, at, |l| l.contains(&reason("duplicate"))), 0, "{at}");
    }
    net.shutdown().await;
}

/// Sends each bad envelope sealed, then a good sentinel, and checks that
/// the sentinel is the subscriber's next delivery: nothing bad was
/// delivered, and the link still serves.
async fn bad_then_sentinel(
    link: &mut RawConnection,
    signer: &Signer,
    subscriber: &Client,
    bad: Vec<Unsigned>,
    sentinel: Unsigned,
) {
    for message in bad {
        link.send_frame(&Frame::Forward(signer.seal(message))).await;
    }
    let expected = String::from_utf8(sentinel.payload.clone()).unwrap();
    link.send_frame(&Frame::Forward(signer.seal(sentinel))).await;
    let got = next_payload(subscriber).await;
    let shown: String = got.chars().take(80).collect();
    assert!(
        got == expected,
        "expected {expected:?}, got {shown:?} ({} bytes)",
        got.len()
    );
}

/// The refusals `at` audited with `code`, once they account for
/// `expected` decisions; exactly that many. Past a burst, identical
/// refusals are counted into a summary line (its `count`) when their
/// window ends, so this may wait for that window.
async fn refusals(net: &TestNetwork, at: &str, code: &str, expected: u64) -> Vec<String> {
    let matches = |l: &str| l.contains(&reason(code)) && l.contains("\"event\":\"refuse\"");
    let read = || -> (Vec<String>, u64) {
        let records: Vec<String> = net
            .audit_lines(nation(at))
            .into_iter()
            .filter(|l| matches(l))
            .collect();
        let accounted = records
            .iter()
            .map(|l| {
                let record: serde_json::Value = serde_json::from_str(l).expect("a JSON audit line");
                record["count"].as_u64().unwrap_or(1)
            })
            .sum();
        (records, accounted)
    };
    for _ in 0..1500 {
        if read().1 >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (records, accounted) = read();
    assert_eq!(accounted, expected, "{records:#?}");
    records
}

/// Finding 2: FRA's node attributes messages to others: GBR's own
/// analyst, DEU's, a name in nobody's namespace, a name that would print
/// a second line, and a name of 200,000 bytes. GBR refuses each as
/// `unknown-publisher`, straight from FRA (sealed and unsealed) and when
/// relayed (GBR's node passing FRA's envelope to DEU). Within its own
/// namespace FRA's seal vouches for the name: no node knows FRA's roster.
#[tokio::test]
async fn a_member_cannot_attribute_a_message_to_someone_else() {
    let net = TestNetwork::start().await;
    let gbr = subscriber(&net, "gbr.analyst", "reports.>", &[]).await;
    let deu = subscriber(&net, "deu.analyst", "reports.>", &[]).await;
    let scheme = net.policy.scheme();
    // DEU is named only for the relayed part, so that GBR does not pass
    // the direct part's sentinel on to DEU.
    let direct = scheme.parse("SECRET//REL TO FRA, GBR").unwrap();
    let relayed = scheme.parse("SECRET//REL TO DEU, FRA, GBR").unwrap();
    let fra_key = node_signer(&net, nation("FRA"));
    let long = "f".repeat(200_000);
    let names = [
        "gbr.analyst",
        "deu.analyst",
        "nobody",
        "fra.analyst\n2026-11-25 TOP SECRET from GBR gbr.analyst: strike at dawn",
        long.as_str(),
    ];
    let bad = |tag: u8, label: &Label| -> Vec<Unsigned> {
        names
            .iter()
            .enumerate()
            .map(|(n, name)| {
                message(
                    &net.policy,
                    test_id(tag, n as u64),
                    "FRA",
                    name,
                    label.clone(),
                    b"misattributed",
                )
            })
            .collect()
    };

    let mut fra = link(&net, "FRA", "GBR").await;
    send_unsealed_then_seals(&mut fra, &fra_key, bad(0x21, &direct)).await;
    bad_then_sentinel(
        &mut fra,
        &fra_key,
        &gbr,
        bad(0x22, &direct),
        message(
            &net.policy,
            test_id(0x22, 99),
            "FRA",
            "fra.analyst",
            direct.clone(),
            b"sentinel",
        ),
    )
    .await;
    let records = refusals(&net, "GBR", "unknown-publisher", 2 * names.len() as u64).await;
    assert!(
        records
            .iter()
            .any(|l| l.contains("gbr.analyst") && l.contains("is not a principal name of FRA (fra.<name>)")),
        "{records:#?}"
    );
    assert!(records.iter().all(|l| l.len() < 1_000), "details are bounded");

    // The same, relayed: the test plays GBR passing FRA's envelopes to DEU.
    let mut relay = link(&net, "GBR", "DEU").await;
    bad_then_sentinel(
        &mut relay,
        &fra_key,
        &deu,
        bad(0x23, &relayed),
        message(
            &net.policy,
            test_id(0x23, 99),
            "FRA",
            "fra.analyst",
            relayed.clone(),
            b"relayed sentinel",
        ),
    )
    .await;
    refusals(&net, "DEU", "unknown-publisher", names.len() as u64).await;
    net.shutdown().await;
}

/// Finding 6: labels that are not canonical under the network's scheme,
/// some of which the old code delivered with a marking that disagreed
/// with what it enforced (an unknown nation, a lower-case one, a joined
/// `REL TO` entry) and some it refused for another reason (an unknown
/// compartment, a level out of range). Each is refused as
/// `malformed-label`, direct and relayed.
#[tokio::test]
async fn a_member_cannot_send_labels_outside_the_scheme() {
    let net = TestNetwork::start().await;
    let gbr = subscriber(&net, "gbr.analyst", "reports.>", &[]).await;
    let deu = subscriber(&net, "deu.analyst", "reports.>", &[]).await;
    // DEU is named only for the relayed part, so that GBR does not pass
    // the direct part's sentinel on to DEU.
    let direct = net.policy.scheme().parse("SECRET//REL TO FRA, GBR").unwrap();
    let relayed = net.policy.scheme().parse("SECRET//REL TO DEU, FRA, GBR").unwrap();
    let mutations: Vec<fn(&mut Label)> = vec![
        |l| {
            l.rel_to.insert("USA".into());
        },
        |l| {
            l.rel_to.insert("pol".into());
        },
        |l| {
            l.rel_to.insert("FRA, USA".into());
        },
        |l| {
            l.rel_to = ["gbr".into(), "deu".into(), "fra".into()].into();
        },
        |l| {
            l.compartments.insert("NOFORN".into());
        },
        |l| l.level = Level(9),
    ];
    let bad = |tag: u8, good: &Label| -> Vec<Unsigned> {
        mutations
            .iter()
            .enumerate()
            .map(|(n, mutate)| {
                let mut label = good.clone();
                mutate(&mut label);
                message(
                    &net.policy,
                    test_id(tag, n as u64),
                    "FRA",
                    "fra.analyst",
                    label,
                    b"malformed",
                )
            })
            .collect()
    };
    let fra_key = node_signer(&net, nation("FRA"));
    let mut fra = link(&net, "FRA", "GBR").await;
    send_unsealed_then_seals(&mut fra, &fra_key, bad(0x61, &direct)).await;
    bad_then_sentinel(
        &mut fra,
        &fra_key,
        &gbr,
        bad(0x62, &direct),
        message(
            &net.policy,
            test_id(0x62, 99),
            "FRA",
            "fra.analyst",
            direct.clone(),
            b"sentinel",
        ),
    )
    .await;
    let records = refusals(&net, "GBR", "malformed-label", 2 * mutations.len() as u64).await;
    assert!(
        records.iter().any(|l| l.contains("`FRA, USA`")),
        "the detail names the bad entry: {records:#?}"
    );

    let mut relay = link(&net, "GBR", "DEU").await;
    bad_then_sentinel(
        &mut relay,
        &fra_key,
        &deu,
        bad(0x63, &relayed),
        message(
            &net.policy,
            test_id(0x63, 99),
            "FRA",
            "fra.analyst",
            relayed.clone(),
            b"relayed sentinel",
        ),
    )
    .await;
    refusals(&net, "DEU", "malformed-label", mutations.len() as u64).await;
    net.shutdown().await;
}

/// Finding 7, payload size: a peer's envelope with a payload over
/// `wire::MAX_PAYLOAD` (it still fits in a frame) is refused as
/// `payload-too-large`, as a publish of one would be.
#[tokio::test]
async fn a_member_cannot_send_payloads_over_the_limit() {
    let net = TestNetwork::start().await;
    let gbr = subscriber(&net, "gbr.analyst", "reports.>", &[]).await;
    let label = net.policy.scheme().parse("SECRET//REL TO FRA, GBR").unwrap();
    let huge = vec![b'x'; wire::MAX_PAYLOAD + 1];
    let fra_key = node_signer(&net, nation("FRA"));
    let mut fra = link(&net, "FRA", "GBR").await;
    send_unsealed_then_seals(
        &mut fra,
        &fra_key,
        vec![message(
            &net.policy,
            test_id(0x71, 0),
            "FRA",
            "fra.analyst",
            label.clone(),
            &huge,
        )],
    )
    .await;
    bad_then_sentinel(
        &mut fra,
        &fra_key,
        &gbr,
        vec![message(
            &net.policy,
            test_id(0x72, 0),
            "FRA",
            "fra.analyst",
            label.clone(),
            &huge,
        )],
        message(
            &net.policy,
            test_id(0x72, 99),
            "FRA",
            "fra.analyst",
            label.clone(),
            b"sentinel",
        ),
    )
    .await;
    let records = refusals(&net, "GBR", "payload-too-large", 2).await;
    assert!(
        records[0].contains(&format!("{} bytes", wire::MAX_PAYLOAD + 1)),
        "{records:#?}"
    );
    net.shutdown().await;
}

/// The origin's release on ingress: FRA releases at most SECRET to GBR
/// (its default ceiling) and GBR at most CONFIDENTIAL to DEU (a bilateral
/// ceiling), ceilings that only FRA and GBR know. Each seals its decision
/// as the set of nations released to. A copy that reaches a nation the
/// set leaves out is refused there, and audited, even to a reader cleared
/// for it; a set wider than the marking is refused as a lie.
#[tokio::test]
async fn a_member_cannot_send_what_the_origin_did_not_release_to_the_receiver() {
    let net = TestNetwork::start().await;
    let scheme = net.policy.scheme();
    let gbr = subscriber(&net, "gbr.sigint", "reports.>", &[]).await;
    let fra_key = node_signer(&net, nation("FRA"));
    let mut fra = link(&net, "FRA", "GBR").await;
    let above = message(
        &net.policy,
        test_id(0x81, 0),
        "FRA",
        "fra.analyst",
        scheme.parse("TOP SECRET//REL TO FRA, GBR").unwrap(),
        b"above the ceiling",
    );
    assert!(above.released_to.is_empty(), "FRA's ceiling keeps GBR out");
    let mut beyond = message(
        &net.policy,
        test_id(0x81, 1),
        "FRA",
        "fra.analyst",
        scheme.parse("SECRET//REL TO FRA, GBR").unwrap(),
        b"released beyond the marking",
    );
    beyond.released_to.insert(nation("DEU"));
    bad_then_sentinel(
        &mut fra,
        &fra_key,
        &gbr,
        vec![above, beyond],
        message(
            &net.policy,
            test_id(0x81, 99),
            "FRA",
            "fra.analyst",
            scheme.parse("SECRET//REL TO FRA, GBR").unwrap(),
            b"sentinel",
        ),
    )
    .await;
    let records = refusals(&net, "GBR", "not-released-by-origin", 1).await;
    assert!(
        records[0].contains("FRA did not release it to GBR"),
        "{records:#?}"
    );
    let records = refusals(&net, "GBR", "release-beyond-marking", 1).await;
    assert!(
        records[0].contains("`DEU`") || records[0].contains("DEU"),
        "{records:#?}"
    );

    let deu = subscriber(&net, "deu.analyst", "reports.>", &[]).await;
    let gbr_key = node_signer(&net, nation("GBR"));
    let mut gbr_link = link(&net, "GBR", "DEU").await;
    bad_then_sentinel(
        &mut gbr_link,
        &gbr_key,
        &deu,
        vec![message(
            &net.policy,
            test_id(0x82, 0),
            "GBR",
            "gbr.analyst",
            scheme.parse("SECRET//REL TO DEU, GBR").unwrap(),
            b"above the bilateral ceiling",
        )],
        message(
            &net.policy,
            test_id(0x82, 99),
            "GBR",
            "gbr.analyst",
            scheme.parse("CONFIDENTIAL//REL TO DEU, GBR").unwrap(),
            b"sentinel",
        ),
    )
    .await;
    let records = refusals(&net, "DEU", "not-released-by-origin", 1).await;
    assert!(
        records[0].contains("GBR did not release it to DEU"),
        "{records:#?}"
    );
    net.shutdown().await;
}

/// Finding 8: a network file that names a compartment or a community with
/// a word the marking grammar reserves does not load, and the error names
/// the word and where it is. (With a compartment named `REL`, no marking
/// carrying it could ever be parsed.)
#[test]
fn a_network_file_with_a_reserved_word_as_a_name_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            NETWORK.replace(r#"["SIGINT", "AIRDEF"]"#, r#"["SIGINT", "AIRDEF", "REL"]"#),
            "classification.compartments `REL`",
            "`REL`",
        ),
        (NETWORK.replace("WEST = ", "TO = "), "communities.TO", "`TO`"),
    ];
    for (text, item, word) in cases {
        assert_ne!(text, NETWORK, "the replacement applies");
        let path = dir.path().join("network.toml");
        std::fs::write(&path, &text).unwrap();
        let err = entente::config::load_network(&path).unwrap_err().to_string();
        assert!(
            err.contains(item)
                && err.contains(&format!("{word} is a reserved word"))
                && err.contains(&path.display().to_string()),
            "{err}"
        );
    }
    assert!(entente::config::load_network(Path::new("/nonexistent")).is_err());
}

/// `WrongNode`: a node dialing its peer GBR at an address where DEU's node
/// answers is shown DEU's genuine certificate, which chains to a CA it
/// trusts; the handshake still fails, and says which node it found. A
/// principal, which trusts only its own nation's CA, is refused too.
#[tokio::test]
async fn a_dialer_shown_another_nations_node_refuses_it() {
    let net = TestNetwork::start().await;
    let err = match RawConnection::open_at(
        &net,
        &Identity::Node(nation("FRA")),
        nation("GBR"),
        net.addr(nation("DEU")),
    )
    .await
    {
        Ok(_) => panic!("FRA took DEU's node for GBR's"),
        Err(err) => err,
    };
    assert!(
        err.contains("expected the node GBR, but the server is node DEU"),
        "{err}"
    );

    let mut options = net.options("gbr.analyst");
    options.node = net.addr(nation("FRA"));
    let err = match Client::connect(options).await {
        Ok(_) => panic!("gbr.analyst took FRA's node for GBR's"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("cannot connect to GBR's node"), "{err}");
    // GBR's node still serves its principal.
    net.client("gbr.analyst").await;
    net.shutdown().await;
}

/// Subscribe permissions at node level: a principal allowed only
/// `weather.>` is refused anything wider or elsewhere, with the reason,
/// and audited, while what it may have is delivered.
#[tokio::test]
async fn subscriptions_are_limited_to_the_principals_permissions() {
    let network = format!(
        "{NETWORK}\n[[principals]]\nname = \"gbr.weather\"\nnation = \"GBR\"\nclearance = \"SECRET\"\npublish = []\nsubscribe = [\"weather.>\"]\n"
    );
    let net = TestNetwork::start_from(&network, NodeSettings::default()).await;
    let weather = net.client("gbr.weather").await;
    for pattern in ["sigint.>", ">", "*.uk"] {
        match weather.subscribe(pattern).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, "topic-not-permitted");
                assert!(
                    message.contains(&format!("gbr.weather may not subscribe to {pattern}"))
                        && message.contains("permitted: weather.>"),
                    "{message}"
                );
            }
            other => panic!("subscribing to {pattern}: {other:?}"),
        }
        net.wait_for_audit(nation("GBR"), |l| {
            l.contains(&reason("topic-not-permitted"))
                && l.contains("\"subject\":\"gbr.weather\"")
                && l.contains(&format!("subscribe to {pattern}:"))
        })
        .await;
    }
    weather.subscribe("weather.>").await.unwrap();
    let publisher = net.client("gbr.analyst").await;
    for topic in ["sigint.ru", "weather.uk"] {
        publisher
            .publish(topic, "SECRET", topic.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let delivery = next(&weather).await;
    assert_eq!(delivery.topic, "weather.uk");
    net.shutdown().await;
}

/// A peer that answers its envelopes with seals that all fail, each under
/// its own root, so that no check can be shared: the node checks a few,
/// refuses the rest of the batch unchecked (each still audited), and
/// closes the link as a protocol violation; the node serves everyone else.
#[tokio::test]
async fn a_member_sending_a_batch_of_bad_seals_is_cut_after_a_few_checks() {
    const ENVELOPES: u64 = 64;
    let mut net = TestNetwork::start().await;
    let gbr = subscriber(&net, "gbr.analyst", "reports.>", &[]).await;
    let direct = net.policy.scheme().parse("SECRET//REL TO FRA, GBR").unwrap();
    let mut fra = net.play_node(nation("FRA"), nation("GBR")).await;
    let mut proofs = Vec::new();
    for n in 0..ENVELOPES {
        let envelope = Envelope::from(message(
            &net.policy,
            test_id(0xb5, n),
            "FRA",
            "fra.analyst",
            direct.clone(),
            b"sealed badly",
        ));
        fra.send_frame(&Frame::Forward(envelope.clone())).await;
        // No siblings: each proof's root is its own envelope's leaf.
        proofs.push(entente::envelope::Proof {
            id: envelope.id,
            siblings: Vec::new(),
            left: 0,
        });
    }
    fra.send_frame(&Frame::Seals(SealBatch {
        signature: vec![7; 64],
        tags: Vec::new(),
        proofs,
    }))
    .await;
    let reason_text = tokio::time::timeout(Duration::from_secs(30), fra.close_reason())
        .await
        .expect("the link is closed");
    assert!(reason_text.contains("bad seals in one batch"), "{reason_text}");

    // Every envelope is accounted for as a bad signature; only the first
    // few were checked.
    let records = refusals(&net, "GBR", "bad-signature", ENVELOPES).await;
    assert!(records.iter().any(|l| l.contains("not checked")), "{records:#?}");
    // They came unsealed from their origin, so they were delivered, but
    // nothing else was: the subscriber got exactly those, then GBR's own.
    let publisher = net.client("gbr.analyst").await;
    publisher
        .publish("reports.gbr", "SECRET//REL TO GBR", b"still serving".to_vec())
        .await
        .unwrap();
    let mut payloads = Vec::new();
    loop {
        let payload = next_payload(&gbr).await;
        if payload == "still serving" {
            break;
        }
        payloads.push(payload);
    }
    assert_eq!(payloads.len() as u64, ENVELOPES);
    net.shutdown().await;
}

/// A `Seals` frame whose signature is far longer than a genuine one would,
/// without limit, be copied onto each envelope it names: it is refused
/// whole, before anything of it is attached, and the link is closed as a
/// protocol violation; its envelopes are audited as never sealed, and the
/// node serves everyone else.
#[tokio::test]
async fn a_seals_frame_of_a_size_no_genuine_one_has_closes_the_link() {
    const ENVELOPES: u64 = 16;
    let mut net = TestNetwork::start().await;
    let gbr = subscriber(&net, "gbr.analyst", "reports.>", &[]).await;
    let direct = net.policy.scheme().parse("SECRET//REL TO FRA, GBR").unwrap();
    let mut fra = net.play_node(nation("FRA"), nation("GBR")).await;
    let mut proofs = Vec::new();
    for n in 0..ENVELOPES {
        let envelope = Envelope::from(message(
            &net.policy,
            test_id(0xb6, n),
            "FRA",
            "fra.analyst",
            direct.clone(),
            b"waits for a seal",
        ));
        fra.send_frame(&Frame::Forward(envelope.clone())).await;
        proofs.push(entente::envelope::Proof {
            id: envelope.id,
            siblings: Vec::new(),
            left: 0,
        });
    }
    fra.send_frame(&Frame::Seals(SealBatch {
        signature: vec![7; 256 * 1024],
        tags: Vec::new(),
        proofs,
    }))
    .await;
    let reason_text = tokio::time::timeout(Duration::from_secs(30), fra.close_reason())
        .await
        .expect("the link is closed");
    assert!(reason_text.contains("262144-byte signature"), "{reason_text}");
    refusals(&net, "GBR", "unsealed", ENVELOPES).await;

    let publisher = net.client("gbr.analyst").await;
    publisher
        .publish("reports.gbr", "SECRET//REL TO GBR", b"still serving".to_vec())
        .await
        .unwrap();
    let mut payloads = Vec::new();
    loop {
        let payload = next_payload(&gbr).await;
        if payload == "still serving" {
            break;
        }
        payloads.push(payload);
    }
    assert_eq!(payloads.len() as u64, ENVELOPES);
    net.shutdown().await;
}

/// GBR's node as every node knows it: its tag keys with each other
/// nation of the network, from their genuine node keys.
fn tag_keys(net: &TestNetwork, of: Nation) -> TagKeys {
    let node_keys = net
        .policy
        .nations()
        .keys()
        .map(|&nation| (nation, node_signer(net, nation).public_key().to_vec()))
        .collect();
    node_signer(net, of).tag_keys(&node_keys)
}

/// GBR's envelope sealed as a batch of one (its root is its leaf) with a
/// signature that does not verify, under genuine tags for every nation.
fn tagged_with_a_bad_signature(gbr_keys: &TagKeys, message: Unsigned) -> Envelope {
    let mut envelope = Envelope::from(message);
    let root = envelope.leaf();
    let signature = vec![7u8; 64];
    let tags = gbr_keys
        .iter()
        .map(|(&nation, key)| key.tag(nation, &root, &signature))
        .collect();
    envelope.seal = Seal {
        signature,
        siblings: Vec::new(),
        left: 0,
        tags,
    };
    envelope
}

/// Relays check their own tag, not the signature, before they relay
/// (ARCHITECTURE.md, "Signatures on the critical path"), so an origin can get a message with a bad signature but
/// good tags through: only it holds the keys, and its content is its own.
/// Each node catches the signature right after, audits it, and from then
/// on checks that origin's seals by signature before relaying: its next
/// such message goes no further than its first hop, while its genuine
/// messages still go through.
#[tokio::test]
async fn an_origin_that_tags_a_bad_signature_is_caught_and_then_checked_first() {
    let net = TestNetwork::start_from(RING, NodeSettings::default()).await;
    let lva = subscriber(&net, "lva.analyst", "reports.>", &["GBR", "EST"]).await;
    let ring = net.policy.scheme().parse("SECRET//REL TO RING").unwrap();
    let mut gbr = link(&net, "GBR", "EST").await;
    let gbr_keys = tag_keys(&net, nation("GBR"));
    let send = |n: u64, payload: &[u8]| {
        message(
            &net.policy,
            test_id(0x7a, n),
            "GBR",
            "gbr.analyst",
            ring.clone(),
            payload,
        )
    };

    gbr.send_frame(&Frame::Forward(tagged_with_a_bad_signature(
        &gbr_keys,
        send(1, b"first lie"),
    )))
    .await;
    assert_eq!(next_payload(&lva).await, "first lie", "passed on by its tags");
    for at in ["EST", "LVA"] {
        let refused = net
            .wait_for_audit(nation(at), |l| {
                l.contains(&reason("bad-signature")) && l.contains("tags are not trusted here any more")
            })
            .await;
        assert!(refused.contains(&test_id(0x7a, 1).to_string()), "{at}: {refused}");
    }

    gbr.send_frame(&Frame::Forward(tagged_with_a_bad_signature(
        &gbr_keys,
        send(2, b"second lie"),
    )))
    .await;
    let mut sentinel = vec![Envelope::from(send(3, b"genuine"))];
    node_signer(&net, nation("GBR")).seal_batch(&mut sentinel, &tag_keys(&net, nation("GBR")));
    gbr.send_frame(&Frame::Forward(sentinel.remove(0))).await;
    assert_eq!(
        next_payload(&lva).await,
        "genuine",
        "the second lie went no further than EST"
    );
    let second = test_id(0x7a, 2).to_string();
    net.wait_for_audit(nation("EST"), |l| {
        l.contains(&reason("bad-signature"))
            && l.contains(&second)
            && l.contains("neither delivered nor relayed")
    })
    .await;
    assert_eq!(count(&net, "LVA", |l| l.contains(&second)), 0);
    net.shutdown().await;
}

/// EST's node, played over a link to LVA, relaying GBR's lies: envelopes
/// with GBR's genuine tags and a bad signature.
struct LyingRelay {
    net: TestNetwork,
    lva: Client,
    est: RawConnection,
    ring: Label,
    gbr_keys: TagKeys,
    ids: u8,
}

impl LyingRelay {
    /// Past the first lie, which LVA delivers by its tag and then
    /// distrusts GBR for.
    async fn distrusted(ids: u8) -> LyingRelay {
        let net = TestNetwork::start_from(RING, NodeSettings::default()).await;
        let lva = subscriber(&net, "lva.analyst", "reports.>", &["EST"]).await;
        let ring = net.policy.scheme().parse("SECRET//REL TO RING").unwrap();
        let est = link(&net, "EST", "LVA").await;
        let gbr_keys = tag_keys(&net, nation("GBR"));
        let mut relay = LyingRelay {
            net,
            lva,
            est,
            ring,
            gbr_keys,
            ids,
        };
        relay.est.send_frame(&Frame::Forward(relay.lie(0))).await;
        assert_eq!(next_payload(&relay.lva).await, "lie 0", "its tag for LVA holds");
        relay
            .net
            .wait_for_audit(nation("LVA"), |l| {
                l.contains("tags are not trusted here any more")
            })
            .await;
        relay
    }

    fn message(&self, n: u64, payload: &[u8]) -> Unsigned {
        message(
            &self.net.policy,
            test_id(self.ids, n),
            "GBR",
            "gbr.analyst",
            self.ring.clone(),
            payload,
        )
    }

    fn lie(&self, n: u64) -> Envelope {
        tagged_with_a_bad_signature(&self.gbr_keys, self.message(n, format!("lie {n}").as_bytes()))
    }

    /// Sends `envelopes`, then waits for the link to be closed as a
    /// protocol violation.
    async fn cut_after(mut self, envelopes: impl Iterator<Item = Envelope>) {
        for envelope in envelopes {
            self.est.send_frame(&Frame::Forward(envelope)).await;
        }
        let reason_text = tokio::time::timeout(Duration::from_secs(30), self.est.close_reason())
            .await
            .expect("the link is closed");
        assert!(reason_text.contains("bad seals in one batch"), "{reason_text}");
        self.net.shutdown().await;
    }
}

/// An honest relay is not blamed for a lying origin: once LVA distrusts
/// GBR's tags, GBR's tagged lies that EST passes on are refused by
/// signature at LVA, but they do not count against EST's link, which
/// stays up and keeps delivering; forgeries without LVA's tag do.
#[tokio::test]
async fn a_relay_passing_on_a_distrusted_origins_lies_keeps_its_link() {
    let mut relay = LyingRelay::distrusted(0x7b).await;
    // Far more than the bad seals a link may bring in one batch.
    for n in 1..=40 {
        relay.est.send_frame(&Frame::Forward(relay.lie(n))).await;
    }
    // GBR's genuine seals still count, by signature.
    let mut sentinel = vec![Envelope::from(relay.message(100, b"still linked"))];
    node_signer(&relay.net, nation("GBR")).seal_batch(&mut sentinel, &relay.gbr_keys);
    relay.est.send_frame(&Frame::Forward(sentinel.remove(0))).await;
    assert_eq!(next_payload(&relay.lva).await, "still linked");
    // The lies after the first were refused by signature, unrelayed.
    relay
        .net
        .wait_for_audit(nation("LVA"), |l| {
            l.contains(&reason("bad-signature")) && l.contains("neither delivered nor relayed")
        })
        .await;
    // But seals of the same origin without LVA's good tag are the
    // relay's forgeries, and they still cost it its link.
    let forgeries: Vec<Envelope> = (200..240)
        .map(|n| {
            let mut forged = relay.lie(n);
            forged.seal.tags.clear();
            forged
        })
        .collect();
    relay.cut_after(forgeries.into_iter()).await;
}

/// A relay colluding with a lying origin cannot pass its lies on without
/// end: past the allowance a link has for an origin's bad signatures
/// behind good tags, they count against it, and it is cut.
#[tokio::test]
async fn a_relay_passing_on_lies_without_end_is_cut() {
    let relay = LyingRelay::distrusted(0x7c).await;
    // Well past the allowance (1,024 in a link's life).
    let lies: Vec<Envelope> = (1..=1_200).map(|n| relay.lie(n)).collect();
    relay.cut_after(lies.into_iter()).await;
}
