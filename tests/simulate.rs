//! `entente simulate` end to end on the sample network: real nodes, real
//! QUIC and mutual TLS through the emulated WAN, real events, and the
//! oracle's verdicts, including one it must catch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use entente::sim::report::Report;
use entente::sim::scenario::Scenario;
use entente::sim::{simulate, SimOptions};

/// A short scenario on the sample network, written beside a copy of it.
fn scenario(dir: &Path, traffic: &str, events: &str) -> Scenario {
    let network = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml");
    let text = format!(
        "network = {network:?}\nduration = \"60s\"\n{traffic}\n{events}\n",
        network = network.display().to_string()
    );
    let path: PathBuf = dir.join("short.toml");
    std::fs::write(&path, text).unwrap();
    Scenario::load(&path).expect("valid scenario")
}

const TRAFFIC: &str = r#"
[[publishers]]
principal = "gbr.analyst"
topic = "intel.gbr"
marking = "SECRET//REL TO NATO"
rate = 40
payload = 256

[[publishers]]
principal = "usa.analyst"
topic = "intel.usa"
marking = "SECRET//REL TO NATO"
rate = 20
payload = 256

[[publishers]]
principal = "est.analyst"
topic = "airdef.est"
marking = "SECRET//REL TO BALTIC, FIN, GBR"
rate = 20
payload = 128

[[subscribers]]
principal = "usa.analyst"
pattern = ">"

[[subscribers]]
principal = "fra.analyst"
pattern = ">"

[[subscribers]]
principal = "lva.analyst"
pattern = ">"

[[subscribers]]
principal = "ukr.analyst"
pattern = ">"

[[subscribers]]
principal = "gbr.clerk"
pattern = ">"
"#;

async fn run(scenario: &Scenario, seconds: u64, leak_once: bool) -> Report {
    simulate(
        scenario,
        SimOptions {
            duration: Some(Duration::from_secs(seconds)),
            leak_once,
            ..SimOptions::default()
        },
    )
    .await
    .expect("the simulation runs")
}

fn delivered(report: &Report, origin: &str, receiver: &str, phase: usize) -> u64 {
    report
        .matrix
        .iter()
        .find(|c| c.origin == origin && c.receiver == receiver)
        .map_or(0, |c| c.phases[phase].delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cut_halfway_gets_nothing_after_and_the_oracle_finds_no_fault() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario(
        dir.path(),
        TRAFFIC,
        "[[events]]\nat = \"50%\"\nevent = \"cut USA\"",
    );
    let report = run(&scenario, 4, false).await;
    let v = &report.verdict;
    assert!(v.passed, "{}", report.summary());
    assert_eq!((v.leaks, v.duplicates, v.unexplained_losses), (0, 0, 0));
    assert_eq!(
        v.reordered, 0,
        "each publisher's messages arrive in publish order"
    );
    assert!(v.expected > 200, "{}", report.summary());
    assert!(v.delivered >= v.expected - v.explained_losses);

    // What ran, against what the file says.
    assert_eq!(report.duration_us, 4_000_000);
    assert_eq!(report.scenario_duration_us, 60_000_000);
    assert!(report.summary().contains("--duration"));
    let cut = &report.events[0];
    assert!(cut.ok && cut.action == "cut USA", "{cut:?}");
    assert!(cut.started_us >= 2_000_000);

    // Before the cut USA hears GBR and GBR hears USA; after it, nothing
    // crosses either way.
    assert!(delivered(&report, "GBR", "USA", 0) > 0);
    assert!(delivered(&report, "USA", "FRA", 0) > 0);
    assert_eq!(delivered(&report, "GBR", "USA", 1), 0);
    assert_eq!(delivered(&report, "USA", "FRA", 1), 0);
    assert!(delivered(&report, "GBR", "FRA", 1) > 0);
    let usa = report.nations.iter().find(|n| n.nation == "USA").unwrap();
    assert!(usa.cut_at_end && usa.received_while_cut == 0);
    assert!(report
        .links
        .iter()
        .filter(|l| l.a == "USA" || l.b == "USA")
        .all(|l| l.severed));

    // Nobody outside the releasability or below the clearance got anything.
    assert_eq!(delivered(&report, "GBR", "UKR", 0), 0);
    assert_eq!(
        delivered(&report, "GBR", "GBR", 0),
        0,
        "the clerk is cleared RESTRICTED"
    );
    // LVA hears EST's BALTIC tracks.
    assert!(delivered(&report, "EST", "LVA", 0) > 0);

    // No delivery beats the emulated path, and the report shows both.
    assert!(!report.pairs.is_empty());
    for pair in &report.pairs {
        assert!(
            pair.min_us >= pair.path_delay_us,
            "{}→{} took {} µs, under its path delay {} µs",
            pair.origin,
            pair.receiver,
            pair.min_us,
            pair.path_delay_us
        );
    }
    let gbr_usa = report
        .pairs
        .iter()
        .find(|p| p.origin == "GBR" && p.receiver == "USA")
        .unwrap();
    assert!(
        gbr_usa.path_delay_us > 40_000 && gbr_usa.path_hops == 1,
        "{gbr_usa:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_catches_one_delivery_the_policy_forbids() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario(dir.path(), TRAFFIC, "");
    let report = run(&scenario, 3, true).await;
    let v = &report.verdict;
    assert_eq!(v.leaks, 1, "{}", report.summary());
    assert!(!v.passed);
    let leak = v
        .findings
        .iter()
        .find(|f| f.kind == "leak")
        .expect("the leak is listed");
    assert_eq!(leak.subscriber, "gbr.clerk", "{leak:?}");
    assert!(report.summary().contains("FAIL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_event_applies_and_what_it_loses_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let events = r#"
[[events]]
at = "10%"
event = "link-down GBR EST"
[[events]]
at = "25%"
event = "link-up GBR EST"
[[events]]
at = "35%"
event = "node-crash FRA"
[[events]]
at = "50%"
event = "node-restart FRA"
[[events]]
at = "60%"
event = "revoke lva.analyst"
[[events]]
at = "75%"
event = "cut USA"
[[events]]
at = "85%"
event = "restore USA"
"#;
    let scenario = scenario(dir.path(), TRAFFIC, events);
    let report = run(&scenario, 8, false).await;
    let v = &report.verdict;
    assert_eq!(report.events.len(), 7);
    for event in &report.events {
        assert!(event.ok, "{event:?}");
    }
    assert!(v.passed, "{}", report.summary());
    // Every node's audit chain holds across the crash and the restart.
    assert_eq!(v.audit_logs.len(), 15);
    assert!(
        v.audit_logs.iter().all(|log| log.intact && log.records > 0),
        "{:?}",
        v.audit_logs
    );
    // The revoked analyst hears nothing published after the revocation
    // took effect: the phases after it show no delivery to LVA.
    for phase in 5..report.phases.len() {
        assert_eq!(delivered(&report, "EST", "LVA", phase), 0, "phase {phase}");
    }
    assert!(delivered(&report, "EST", "LVA", 0) > 0);
    assert_eq!(report.phases.len(), 8);
}

#[tokio::test]
async fn keep_refuses_a_folder_that_is_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = scenario(dir.path(), TRAFFIC, "");
    // The scenario file itself makes `dir` non-empty.
    let err = simulate(
        &scenario,
        SimOptions {
            keep: Some(dir.path().to_owned()),
            ..SimOptions::default()
        },
    )
    .await
    .expect_err("a folder with files in it is refused");
    assert!(err.to_string().contains("is not empty"), "{err}");
}

/// A link that goes silent for less than QUIC's idle timeout (10 s) is
/// not declared down: QUIC's own retransmission carries the stream across
/// the outage, and every message arrives once, in publish order. The run
/// goes on 10 s after the link returns, as QUIC's probes back off during
/// the outage and the first one through may come seconds after it.
/// (Longer outages are custody's part.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_outage_loses_nothing_and_keeps_publish_order() {
    let dir = tempfile::tempdir().unwrap();
    let network = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nordic.toml");
    let path = dir.path().join("outage.toml");
    std::fs::write(
        &path,
        format!(
            r#"network = {:?}
duration = "14s"
[[publishers]]
principal = "fin.airdef"
topic = "airdef.tracks.fin"
marking = "SECRET//AIRDEF//REL TO NORDIC"
rate = 100
[[subscribers]]
principal = "swe.airdef"
pattern = "airdef.>"
[[subscribers]]
principal = "dnk.airdef"
pattern = "airdef.>"
[[events]]
at = "1s"
event = "link-down FIN SWE"
[[events]]
at = "4s"
event = "link-up FIN SWE"
"#,
            network.display().to_string()
        ),
    )
    .unwrap();
    let scenario = Scenario::load(&path).unwrap();
    let report = simulate(&scenario, SimOptions::default()).await.unwrap();
    let v = &report.verdict;
    assert!(v.passed, "{}", report.summary());
    assert!(v.expected > 1000, "{}", report.summary());
    assert_eq!(v.explained_losses, 0, "{}", report.summary());
    assert_eq!(v.delivered, v.expected);
    assert_eq!(v.reordered, 0);
    // The emulator did drop what was sent during the outage.
    let link = report
        .links
        .iter()
        .find(|l| l.a == "FIN" && l.b == "SWE")
        .unwrap();
    assert!(link.dropped > 0, "{link:?}");
}

/// The shipped scenario: Germany cut by a coalition resolution, Poland's
/// relay node crashed during the cut and restarted before the restore.
fn cut_with_a_relay_crash() -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios/europe-cut-deu-relay-crash.toml");
    Scenario::load(&path).expect("the shipped scenario loads")
}

async fn run_with(scenario: &Scenario, options: SimOptions) -> Report {
    simulate(
        scenario,
        SimOptions {
            duration: Some(Duration::from_secs(16)),
            ..options
        },
    )
    .await
    .expect("the simulation runs")
}

/// A relay that crashes during a cut and restarts before the restore
/// applies the cut from its peers' logs before it links to anyone, and
/// nothing the cut nation published while cut is released by the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restarted_during_a_cut_applies_it_and_the_restore_releases_nothing() {
    let report = run_with(&cut_with_a_relay_crash(), SimOptions::default()).await;
    let v = &report.verdict;
    assert!(v.passed, "{}", report.summary());
    assert_eq!((v.leaks, v.unexplained_losses), (0, 0));
    assert_eq!(report.events.len(), 4);
    for event in &report.events {
        assert!(event.ok, "{event:?}");
    }
    assert!(
        report.events[0].detail.contains("signed by 8 nations' admins"),
        "{:?}",
        report.events[0]
    );
    // DEU published throughout: what it published while cut reached no
    // one (no leak above), and what it published before and after did.
    assert!(delivered(&report, "DEU", "GBR", 0) > 0);
    let last = report.phases.len() - 1;
    assert!(delivered(&report, "DEU", "GBR", last) > 0, "{}", report.summary());
}

/// The shipped scenario's traffic, with the relay publishing too and
/// restarted well before the restore, so that a relay that forgot the cut
/// has time to link to the cut nation again (its dialer's backoff is up
/// to 5 s).
fn cut_with_an_early_restart(dir: &Path) -> Scenario {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios/europe-cut-deu-relay-crash.toml"),
    )
    .unwrap();
    let traffic = format!(
        "{}[[publishers]]\nprincipal = \"pol.analyst\"\ntopic = \"intel.pol\"\n\
         marking = \"SECRET//REL TO NATO\"\nrate = 10\npayload = 256\n\n",
        &shipped[shipped.find("[[publishers]]").unwrap()..shipped.find("[[events]]").unwrap()]
    );
    let events = "[[events]]\nat = \"20%\"\nevent = \"cut DEU\"\n\
                  [[events]]\nat = \"25%\"\nevent = \"node-crash POL\"\n\
                  [[events]]\nat = \"30%\"\nevent = \"node-restart POL\"\n\
                  [[events]]\nat = \"85%\"\nevent = \"restore DEU\"\n";
    scenario(dir, &traffic, events)
}

/// The oracle fails a run in which the restarted relay forgets the cut:
/// it links to the cut nation again, and messages pass between the two,
/// one way or both (what other origins publish once they applied the cut
/// does not pass through it: they sealed release sets without the cut
/// nation, which `routing::tests::relays_route_by_the_origins_sealed_release`
/// checks). Which way shows first is the dialers' race after the restart
/// (each backs off up to 5 s), so either counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_fails_a_run_where_a_restarted_node_forgets_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_with(
        &cut_with_an_early_restart(dir.path()),
        SimOptions {
            forget_cuts_on_restart: true,
            ..SimOptions::default()
        },
    )
    .await;
    assert!(!report.verdict.passed, "{}", report.summary());
    let between = |a: &str, b: &str| {
        report
            .verdict
            .findings
            .iter()
            .filter(|f| f.kind == "leak" && f.publisher == a && f.subscriber == b)
            .count()
    };
    let leaks = between("pol.analyst", "deu.analyst") + between("deu.analyst", "pol.analyst");
    assert!(leaks > 0, "{}", report.summary());
}

/// The oracle fails a run in which the restore releases what the cut
/// nation published while it was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_fails_a_run_where_the_restore_releases_the_backlog() {
    let report = run_with(
        &cut_with_a_relay_crash(),
        SimOptions {
            release_cut_backlog: true,
            ..SimOptions::default()
        },
    )
    .await;
    assert!(!report.verdict.passed, "{}", report.summary());
    let from_deu = report
        .verdict
        .findings
        .iter()
        .filter(|f| f.kind == "leak" && f.publisher == "deu.analyst")
        .count();
    assert!(from_deu > 0, "{}", report.summary());
}
