//! Micro-benchmarks of the sans-IO core: marking parse, the may-deliver
//! decision, envelope seal and verify, and the signature algorithm choice
//! (Ed25519 against ECDSA P-256) recorded in `envelope.rs`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use entente::envelope::{Envelope, MessageIds, Signer, Unsigned, Verifier};
use entente::label::Nation;
use entente::topic::Topic;

const PAYLOAD: usize = 1024;

fn policy() -> entente::policy::Policy {
    entente::config::load_network(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml"))
        .expect("sample network loads")
}

fn labels(c: &mut Criterion) {
    let policy = policy();
    let scheme = policy.scheme();
    c.bench_function("marking/parse", |b| {
        b.iter(|| scheme.parse(black_box("CONFIDENTIAL//AIRDEF/SIGINT//REL TO BALTIC, POL, GBR")))
    });
    let label = scheme.parse("SECRET//REL TO GBR, FRA, NORDIC").unwrap();
    let principal = policy.principal("fin.analyst").unwrap();
    let topic = Topic::new("sigint.ru.launch").unwrap();
    let gbr = Nation::parse("GBR").unwrap();
    c.bench_function("policy/may_deliver", |b| {
        b.iter(|| policy.may_deliver(black_box(principal), &topic, &label, gbr))
    });
}

fn envelopes(c: &mut Criterion) {
    let policy = policy();
    let rng = SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let signer = Signer::from_pkcs8(der.as_ref()).unwrap();
    let ids = MessageIds::new([1; 32]);
    let message = Unsigned {
        id: ids.next_id(),
        origin: Nation::parse("GBR").unwrap(),
        publisher: "gbr.analyst".to_owned(),
        topic: Topic::new("sigint.ru.launch").unwrap(),
        label: policy.scheme().parse("SECRET//REL TO GBR, FRA").unwrap(),
        released_to: [Nation::parse("FRA").unwrap()].into(),
        created_us: 1,
        payload: vec![0x5a; PAYLOAD],
    };
    c.bench_function("envelope/seal_1KiB", |b| {
        b.iter(|| signer.seal(black_box(message.clone())))
    });
    let envelope = signer.seal(message.clone());
    // What every node on the path must spend on each envelope to tie it to
    // its batch's signed root, whatever else it skips.
    c.bench_function("envelope/leaf_1KiB", |b| b.iter(|| black_box(&envelope).leaf()));
    let public = signer.public_key().to_vec();
    c.bench_function("envelope/verify_1KiB", |b| {
        b.iter(|| black_box(&envelope).verify(&public))
    });
    // A batch of 64: one signature for all, then per envelope a leaf hash
    // and its proof; the verifier checks the root's signature once.
    let batch: Vec<Envelope> = (0..64)
        .map(|_| {
            let mut message = message.clone();
            message.id = ids.next_id();
            Envelope::from(message)
        })
        .collect();
    c.bench_function("envelope/seal_batch_64x1KiB", |b| {
        b.iter_batched(
            || batch.clone(),
            |mut batch| signer.seal_batch(&mut batch, &Default::default()),
            BatchSize::SmallInput,
        )
    });
    let mut sealed = batch.clone();
    signer.seal_batch(&mut sealed, &Default::default());
    c.bench_function("envelope/verify_batch_64x1KiB_cached", |b| {
        b.iter(|| {
            let mut verifier = Verifier::new(16);
            sealed
                .iter()
                .all(|e| verifier.verify(black_box(e), &public).is_ok())
        })
    });
    // What a relay checks before it passes a seal on: its own tag, against
    // the signature above.
    let receiver = Signer::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let gbr = Nation::parse("GBR").unwrap();
    let node_keys = [
        (gbr, signer.public_key().to_vec()),
        (Nation::parse("FRA").unwrap(), receiver.public_key().to_vec()),
    ]
    .into();
    let mut tagged = vec![Envelope::from(message.clone())];
    signer.seal_batch(&mut tagged, &signer.tag_keys(&node_keys));
    let tag_keys = receiver.tag_keys(&node_keys);
    let own = Some((Nation::parse("FRA").unwrap(), &tag_keys[&gbr]));
    c.bench_function("envelope/authenticate_by_tag_1KiB", |b| {
        b.iter(|| {
            Verifier::new(16)
                .authenticate(black_box(&tagged[0]), &public, own)
                .is_ok()
        })
    });
}

/// The raw algorithms, on the same 1 KiB message, to choose between them.
fn signature_algorithms(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let message = vec![0x5a; PAYLOAD];

    let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let ed_sig = ed.sign(&message);
    let ed_pub = UnparsedPublicKey::new(&signature::ED25519, ed.public_key().as_ref().to_vec());
    c.bench_function("signature/ed25519_sign", |b| {
        b.iter(|| ed.sign(black_box(&message)))
    });
    c.bench_function("signature/ed25519_verify", |b| {
        b.iter(|| ed_pub.verify(black_box(&message), ed_sig.as_ref()))
    });

    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let ec_sig = ec.sign(&rng, &message).unwrap();
    let ec_pub = UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        ec.public_key().as_ref().to_vec(),
    );
    c.bench_function("signature/p256_sign", |b| {
        b.iter(|| ec.sign(&rng, black_box(&message)))
    });
    c.bench_function("signature/p256_verify", |b| {
        b.iter(|| ec_pub.verify(black_box(&message), ec_sig.as_ref()))
    });
}

fn frames(c: &mut Criterion) {
    use entente::wire::{decode, encode, Frame};
    let frame = Frame::Publish {
        request: 1,
        topic: "sigint.ru.launch".to_owned(),
        marking: "SECRET//REL TO GBR, FRA".to_owned(),
        payload: vec![0x5a; PAYLOAD],
    };
    c.bench_function("frame/encode_publish_1KiB", |b| {
        b.iter(|| encode(black_box(&frame)))
    });
    let bytes = encode(&frame).unwrap();
    c.bench_function("frame/decode_publish_1KiB", |b| {
        b.iter(|| decode(black_box(&bytes[4..])))
    });
}

/// One topic against 10,000 subscription patterns, as the router matches
/// today: every pattern in turn.
fn topics(c: &mut Criterion) {
    use entente::topic::Pattern;
    let patterns: Vec<Pattern> = (0..10_000)
        .map(|i| match i % 4 {
            0 => Pattern::new(format!("sigint.region{}.>", i % 97)),
            1 => Pattern::new(format!("*.unit{i}.missile")),
            2 => Pattern::new(format!("humint.source{i}")),
            _ => Pattern::new(format!("imagery.*.tile{i}")),
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let topic = Topic::new("sigint.region42.launch").unwrap();
    c.bench_function("topic/match_10k_patterns", |b| {
        b.iter(|| patterns.iter().filter(|p| p.matches(black_box(&topic))).count())
    });
}

/// The routing core at GBR in the 15-nation sample, every link up and
/// every nation interested in everything: one message routed, at steady
/// state (trees, eligibility and interest cached), and with the cache cold
/// (a new label each time).
fn routing(c: &mut Criterion) {
    use entente::routing::announce::Announcement;
    use entente::routing::{Routing, RoutingSettings, SealState, Source};
    use entente::topic::Pattern;
    use std::collections::HashMap;
    use std::sync::Arc;

    let policy = Arc::new(policy());
    let rng = SystemRandom::new();
    let signers: HashMap<Nation, Signer> = policy
        .nations()
        .keys()
        .map(|&n| {
            let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            (n, Signer::from_pkcs8(der.as_ref()).unwrap())
        })
        .collect();
    let keys: Arc<HashMap<Nation, Vec<u8>>> = Arc::new(
        signers
            .iter()
            .map(|(&n, s)| (n, s.public_key().to_vec()))
            .collect(),
    );
    let gbr = Nation::parse("GBR").unwrap();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let own = Arc::new(Signer::from_pkcs8(der.as_ref()).unwrap());
    let mut core = Routing::new(gbr, policy.clone(), own, keys, RoutingSettings::default());
    let now = 1_800_000_000_000_000;
    for &peer in &policy.nations()[&gbr].peers {
        core.link_up(peer, now);
    }
    for (&nation, nation_policy) in policy.nations() {
        if nation == gbr {
            continue;
        }
        let announcement = Announcement {
            nation,
            seq: now,
            links: nation_policy.peers.clone(),
            patterns: [Pattern::new(">").unwrap()].into(),
        };
        core.receive_announcement(gbr, announcement.sign(&signers[&nation]), now)
            .unwrap();
    }
    while core.poll().is_some() {}
    let ids = MessageIds::new([2; 32]);
    let scheme = policy.scheme();
    let envelope = |marking: &str| {
        Envelope::from(Unsigned {
            id: ids.next_id(),
            origin: gbr,
            publisher: "gbr.analyst".to_owned(),
            topic: Topic::new("sigint.ru.launch").unwrap(),
            released_to: policy.release_set(gbr, &scheme.parse(marking).unwrap()),
            label: scheme.parse(marking).unwrap(),
            created_us: now,
            payload: vec![0x5a; PAYLOAD],
        })
    };
    let steady = envelope("SECRET//REL TO COALITION");
    c.bench_function("routing/route_steady_15_nations", |b| {
        b.iter_batched(
            || {
                let mut e = steady.clone();
                e.id = ids.next_id();
                e
            },
            |e| {
                let route = core.route(&e, Source::Local, SealState::Verified, now);
                while core.poll().is_some() {}
                route
            },
            BatchSize::SmallInput,
        )
    });
    let markings = [
        "SECRET//REL TO COALITION",
        "SECRET//REL TO NATO",
        "CONFIDENTIAL//REL TO NORDIC, GBR",
    ];
    let mut next = 0;
    c.bench_function("routing/route_new_label_15_nations", |b| {
        b.iter_batched(
            || {
                next += 1;
                envelope(markings[next % markings.len()])
            },
            |e| {
                let route = core.route(&e, Source::Local, SealState::Verified, now);
                while core.poll().is_some() {}
                route
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    labels,
    envelopes,
    signature_algorithms,
    frames,
    topics,
    routing
);
criterion_main!(benches);
