//! Custody between nodes, end to end: a relay node process killed with
//! SIGKILL and restarted loses nothing acknowledged, and a link down for
//! longer than QUIC's idle timeout loses nothing and keeps each
//! publisher's order. Real node processes (or the simulator's real nodes
//! over its emulated WAN), real QUIC and mutual TLS, certificates made in
//! a temporary folder.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entente::client::{Client, ClientOptions, Overrides};
use entente::config::load_network;
use entente::envelope::MessageId;
use entente::pki::{self, PkiLayout};
use entente::sim::scenario::Scenario;
use entente::sim::{simulate, SimOptions};
use entente_testkit::NETWORK;

/// A node process, killed (SIGKILL) when dropped.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test network (FRA – GBR – DEU: GBR relays between the two) on
/// free loopback ports, with its PKI, in `dir`.
struct Processes {
    dir: PathBuf,
    network: PathBuf,
    ports: HashMap<&'static str, u16>,
    policy: entente::policy::Policy,
    layout: PkiLayout,
}

impl Processes {
    fn new(dir: &Path) -> Processes {
        let held: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: HashMap<&str, u16> = ["GBR", "FRA", "DEU"]
            .into_iter()
            .zip(held.iter().map(|s| s.local_addr().unwrap().port()))
            .collect();
        drop(held);
        let text = NETWORK
            .replace("127.0.0.1:1\"", &format!("127.0.0.1:{}\"", ports["GBR"]))
            .replace("127.0.0.1:2\"", &format!("127.0.0.1:{}\"", ports["FRA"]))
            .replace("127.0.0.1:3\"", &format!("127.0.0.1:{}\"", ports["DEU"]));
        let network = dir.join("network.toml");
        std::fs::write(&network, text).unwrap();
        let policy = load_network(&network).unwrap();
        let layout = PkiLayout::new(dir.join("certs"));
        pki::generate(&policy, &layout, false).unwrap();
        Processes {
            dir: dir.to_owned(),
            network,
            ports,
            policy,
            layout,
        }
    }

    /// Starts `nation`'s node with `durability = "sync"` and waits until
    /// it listens.
    fn start(&self, nation: &str) -> NodeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_entente"))
            .args(["node", "--nation", nation, "--durability", "sync"])
            .arg("--network")
            .arg(&self.network)
            .arg("--certs")
            .arg(self.layout.root())
            .arg("--data")
            .arg(self.dir.join("data").join(nation))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "{nation}'s node said {line:?}");
        NodeProcess(child)
    }

    async fn client(&self, principal: &str) -> Client {
        let nation = &principal[..3].to_uppercase();
        let overrides = Overrides {
            node: Some(format!("127.0.0.1:{}", self.ports[nation.as_str()])),
            ..Overrides::default()
        };
        // A node process that has just said it listens may still be
        // setting up its first connections.
        for _ in 0..50 {
            let options =
                ClientOptions::for_principal(principal, Some(&self.policy), &self.layout, &overrides)
                    .unwrap();
            if let Ok(client) = Client::connect(options).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{principal} cannot connect");
    }
}

/// The relay of a stream is killed with SIGKILL in the middle of it and
/// started again: every message whose publish FRA acknowledged reaches
/// DEU's subscriber exactly once. FRA keeps what GBR has not taken
/// custody of, and GBR what DEU has not, on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_and_restarted_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let net = Processes::new(dir.path());
    let _fra = net.start("FRA");
    let _deu = net.start("DEU");
    let mut gbr = Some(net.start("GBR"));

    let subscriber = net.client("deu.analyst").await;
    subscriber.subscribe("custody.>").await.unwrap();
    let publisher = net.client("fra.analyst").await;
    // Until DEU's interest has reached FRA through GBR, a publish goes
    // nowhere: probe until one arrives.
    let mut probes = 0;
    loop {
        publisher
            .publish("custody.probe", "SECRET//REL TO WEST", b"probe".to_vec())
            .await
            .unwrap();
        probes += 1;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), subscriber.next_delivery()).await
        {
            break;
        }
        assert!(probes < 150, "DEU's subscriber never got a probe");
    }

    let acknowledged = Arc::new(Mutex::new(Vec::<MessageId>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn({
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        async move {
            let mut refused = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match publisher
                    .publish(
                        "custody.stream",
                        "SECRET//REL TO WEST",
                        format!("{n}").into_bytes(),
                    )
                    .await
                {
                    Ok(id) => acknowledged.lock().unwrap().push(id),
                    Err(_) => refused += 1,
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            refused
        }
    });
    let delivered = Arc::new(Mutex::new(HashMap::<MessageId, u32>::new()));
    let receiving = tokio::spawn({
        let delivered = delivered.clone();
        async move {
            while let Ok(delivery) = subscriber.next_delivery().await {
                if delivery.topic == "custody.stream" {
                    *delivered.lock().unwrap().entry(delivery.id).or_default() += 1;
                }
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acknowledged.lock().unwrap().len();
    drop(gbr.take()); // SIGKILL: no close, no flush.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _gbr = net.start("GBR");
    // Long enough for FRA's dead link to GBR to time out (QUIC's 10 s idle
    // timeout) and be dialed again, with the stream going on throughout.
    tokio::time::sleep(Duration::from_secs(14)).await;
    stop.store(true, Ordering::Relaxed);
    let refused = publishing.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        before_kill > 50,
        "the stream was flowing before the kill: {before_kill}"
    );
    assert!(
        acknowledged.len() > before_kill + 500,
        "publishing went on while GBR was down and after: {} acknowledged",
        acknowledged.len()
    );

    // Wait until every acknowledged message has come, then a little more
    // for any duplicate.
    let all_in = async {
        loop {
            let missing = {
                let delivered = delivered.lock().unwrap();
                acknowledged
                    .iter()
                    .filter(|id| !delivered.contains_key(id))
                    .count()
            };
            if missing == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let complete = tokio::time::timeout(Duration::from_secs(60), all_in).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    receiving.abort();
    let delivered = delivered.lock().unwrap().clone();
    let missing: Vec<&MessageId> = acknowledged
        .iter()
        .filter(|id| !delivered.contains_key(id))
        .collect();
    let duplicated = delivered.values().filter(|&&count| count > 1).count();
    println!(
        "acknowledged {}, refused {refused}, delivered {} distinct, duplicated {duplicated}, missing {}",
        acknowledged.len(),
        delivered.len(),
        missing.len()
    );
    assert!(
        complete.is_ok() && missing.is_empty(),
        "{} of {} acknowledged messages never reached DEU, such as {:?}",
        missing.len(),
        acknowledged.len(),
        missing.first()
    );
    assert_eq!(duplicated, 0, "messages delivered more than once");
}

/// A two-nation network: the nordic air command with only FIN–SWE linked
/// (and DNK–NOR), so nothing goes round the failed link.
fn bridge_scenario(dir: &Path, events: &str) -> Scenario {
    let nordic = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nordic.toml");
    let network = std::fs::read_to_string(nordic)
        .unwrap()
        // FIN's line comes first, DNK's second.
        .replacen(r#"peers = ["SWE", "NOR"]"#, r#"peers = ["SWE"]"#, 1)
        .replace(r#"peers = ["FIN", "DNK", "NOR"]"#, r#"peers = ["FIN"]"#)
        .replacen(r#"peers = ["SWE", "NOR"]"#, r#"peers = ["NOR"]"#, 1)
        .replace(r#"peers = ["FIN", "SWE", "DNK"]"#, r#"peers = ["DNK"]"#);
    std::fs::write(dir.join("bridge.toml"), network).unwrap();
    let scenario = format!(
        r#"network = "bridge.toml"
duration = "30s"

[[publishers]]
principal = "fin.airdef"
topic = "airdef.tracks.fin"
marking = "SECRET//AIRDEF//REL TO NORDIC"
rate = 100
payload = 128

[[publishers]]
principal = "swe.airdef"
topic = "airdef.tracks.swe"
marking = "SECRET//AIRDEF//REL TO NORDIC"
rate = 100
payload = 128

[[subscribers]]
principal = "fin.airdef"
pattern = "airdef.>"

[[subscribers]]
principal = "swe.airdef"
pattern = "airdef.>"

{events}
"#
    );
    let path = dir.join("outage.toml");
    std::fs::write(&path, scenario).unwrap();
    Scenario::load(&path).expect("valid scenario")
}

/// FIN–SWE goes down for 13 s, longer than QUIC's 10 s idle timeout, so
/// both ends see the link die, under a stream both ways; then it comes
/// back. Every message reaches the subscriber across the link exactly
/// once and in publish order: what was in flight stays in the outbox and
/// is sent again, and what was published meanwhile waits in it (held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_down_past_the_idle_timeout_loses_nothing_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = bridge_scenario(
        dir.path(),
        r#"
[[events]]
at = "3s"
event = "link-down FIN SWE"

[[events]]
at = "16s"
event = "link-up FIN SWE"
"#,
    );
    let report = simulate(
        &scenario,
        SimOptions {
            duration: Some(Duration::from_secs(20)),
            ..SimOptions::default()
        },
    )
    .await
    .expect("the simulation runs");
    let verdict = &report.verdict;
    assert!(verdict.expected > 2_500, "{verdict:?}");
    assert_eq!(
        (
            verdict.delivered,
            verdict.duplicates,
            verdict.reordered,
            verdict.leaks
        ),
        (verdict.expected, 0, 0, 0),
        "every message exactly once, in order: {verdict:?}"
    );
    assert_eq!(
        verdict.explained_losses + verdict.unexplained_losses,
        0,
        "{verdict:?}"
    );
    // The link did go down at both ends (past the idle timeout).
    let down = report
        .events
        .iter()
        .find(|e| e.action.starts_with("link-down"))
        .unwrap();
    assert!(down.ok, "{down:?}");
}

/// A message held for a peer that stays away expires once it is older
/// than `custody_max_age`, each one audited (`expired`), and the outbox
/// lets go of it: the peer, back, does not get it.
#[tokio::test]
async fn a_message_held_past_the_age_limit_expires_on_record() {
    use entente::node::NodeSettings;
    use entente_testkit::{nation, TestNetwork};

    let mut net = TestNetwork::start_with(NodeSettings {
        custody_max_age: Duration::from_secs(1),
        ..NodeSettings::default()
    })
    .await;
    let (gbr, fra) = (nation("GBR"), nation("FRA"));
    let subscriber = net.client("fra.analyst").await;
    subscriber.subscribe("custody.>").await.unwrap();
    net.wait_for_interest(gbr, fra, "custody.>").await;
    net.stop(fra).await.unwrap();
    net.wait_for_audit(gbr, |l| {
        l.contains("\"reason\":\"link-down\"") && l.contains("\"subject\":\"FRA\"")
    })
    .await;
    let publisher = net.client("gbr.analyst").await;
    let id = publisher
        .publish("custody.old", "SECRET//REL TO GBR, FRA", b"too late".to_vec())
        .await
        .unwrap()
        .to_string();
    let held = net
        .wait_for_audit(gbr, |l| l.contains("\"event\":\"forward\"") && l.contains(&id))
        .await;
    assert!(held.contains("\"reason\":\"held\""), "{held}");
    let expired = net
        .wait_for_audit(gbr, |l| l.contains("\"reason\":\"expired\"") && l.contains(&id))
        .await;
    assert!(expired.contains("\"subject\":\"FRA\""), "{expired}");
    // The outbox let go of it (and of its seal, which expires with it
    // once as old).
    let held_for_fra = || {
        let status = net.control(gbr).status().unwrap();
        status.peers.iter().find(|p| p.nation == "FRA").unwrap().queued
    };
    for _ in 0..50 {
        if held_for_fra() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held_for_fra(), 0);
    net.shutdown().await;
}
