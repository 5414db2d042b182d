//! The audit trail as an auditor uses it: a real node's hash-chained log,
//! `entente audit verify` naming an edited or deleted line, the chain
//! carrying on across a restart, a log that cannot be written keeping its
//! records until it can, and `entente audit query`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use entente::audit::{chain, Audit, Event, PeerOutcome, Record, Verdict};
use entente_testkit::{nation, TestNetwork};

fn entente(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the entente binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn verify(path: &Path) -> Output {
    entente(&["audit", "verify", path.to_str().unwrap()])
}

fn gbr_log(net: &TestNetwork) -> PathBuf {
    net.dir.path().join("data").join("GBR").join("audit.jsonl")
}

fn with_lines(from: &Path, to: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(from).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    change(&mut lines);
    std::fs::write(to, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn a_real_nodes_log_stays_chained_across_a_restart_and_verify_names_a_tampered_line() {
    let mut net = TestNetwork::start().await;
    let client = net.client("gbr.analyst").await;
    for n in 0..3 {
        client
            .publish(
                "sigint.ru",
                "SECRET//REL TO GBR, FRA",
                format!("before {n}").into_bytes(),
            )
            .await
            .unwrap();
    }
    client.close().await;
    net.restart(nation("GBR")).await;
    let before_restart = std::fs::read_to_string(gbr_log(&net)).unwrap().lines().count();
    let client = net.client("gbr.analyst").await;
    client
        .publish("sigint.ru", "SECRET//REL TO GBR, FRA", b"after".to_vec())
        .await
        .unwrap();
    client.close().await;
    net.stop(nation("GBR")).await.unwrap();
    let log = gbr_log(&net);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > before_restart && before_restart >= 6, "{text}");

    // One chain over both runs: seq counts lines, and the second run's
    // first record follows the first run's last.
    for (number, line) in lines.iter().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["seq"], number as u64 + 1, "{line}");
    }
    let first_after: serde_json::Value = serde_json::from_str(lines[before_restart]).unwrap();
    assert_eq!(
        first_after["prev"],
        chain::hex(&chain::hash_line(lines[before_restart - 1].as_bytes()))
    );

    let intact = verify(&log);
    assert!(intact.status.success(), "{intact:?}");
    let report = stdout(&intact);
    assert!(
        report.contains(&format!("{} records, chain intact, last hash ", lines.len())),
        "{report}"
    );

    // An edited record is named.
    let edited = net.dir.path().join("edited.jsonl");
    with_lines(&log, &edited, |lines| {
        lines[4] = lines[4].replacen("\"time_us\":", "\"time_us\":1", 1);
    });
    let output = verify(&edited);
    assert!(!output.status.success(), "{output:?}");
    assert!(stdout(&output).contains("line 5: edited"), "{}", stdout(&output));

    // A deleted record: named where the chain breaks, with the gap.
    let deleted = net.dir.path().join("deleted.jsonl");
    with_lines(&log, &deleted, |lines| {
        lines.remove(4);
    });
    let output = verify(&deleted);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains("line 5: prev does not match line 4: 1 record(s) were deleted"),
        "{}",
        stdout(&output)
    );
    net.shutdown().await;
}

fn admit(subject: &str) -> Record {
    Record::new(Event::Admit, Verdict::Allow, "own-principal").subject(subject)
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}");
}

#[tokio::test]
async fn a_log_that_cannot_be_written_reports_why_and_loses_nothing_once_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("GBR");
    let log = data.join("audit.jsonl");
    let audit = Audit::open(&data, nation("GBR")).unwrap();
    audit.record(admit("one")).await;
    audit.close().await;
    assert_eq!(audit.failure(), None);
    let old = std::fs::read_to_string(&log).unwrap();

    // The data folder is removed and a file takes its name: reopening the
    // log fails, as root too.
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a folder").unwrap();
    audit.record(admit("two")).await;
    audit.record(admit("three")).await;
    audit.close().await;
    let cause = audit.failure().expect("the failure is reported");
    assert!(cause.contains(&log.display().to_string()), "{cause}");

    std::fs::remove_file(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    wait_until("the log recovers", || audit.failure().is_none()).await;
    audit.record(admit("four")).await;
    drop(audit);

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let subjects: Vec<&str> = records.iter().map(|r| r["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["two", "three", "four"], "none lost, in order");
    assert_eq!(records[0]["seq"], 2, "the chain carries on from the lost file");

    // Alone, the new file starts mid-chain, which verify reports; chained
    // from the old file's last hash, it is intact.
    let output = verify(&log);
    assert!(!output.status.success());
    assert!(
        stdout(&output).contains("line 1: prev is not the genesis value"),
        "{}",
        stdout(&output)
    );
    let old_last = chain::hex(&chain::hash_line(old.lines().last().unwrap().as_bytes()));
    let output = entente(&["audit", "verify", log.to_str().unwrap(), "--prev", &old_last]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains("3 records, chain intact"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn records_sent_after_close_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), nation("GBR")).unwrap();
    let task = audit.clone();
    audit.close().await;
    tokio::spawn(async move { task.record(admit("late")).await })
        .await
        .unwrap();
    drop(audit);
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(text.contains("\"subject\":\"late\""), "{text}");
}

const T0: u64 = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z

/// A log with a publish, a forward to FRA (allowed) and DEU (denied), a
/// refused delivery and a refused envelope, a second apart.
async fn sample_log(dir: &Path) -> PathBuf {
    let audit = Audit::open(dir, nation("GBR")).unwrap();
    let mut publish = Record::at(T0, Event::Publish, Verdict::Allow, "policy-allows").subject("gbr.analyst");
    publish.id = Some("aaaa0001".into());
    let mut forward = Record::forward(vec![
        PeerOutcome {
            peer: nation("FRA"),
            decision: Verdict::Allow,
            reason: "policy-allows",
        },
        PeerOutcome {
            peer: nation("DEU"),
            decision: Verdict::Deny,
            reason: "not-releasable",
        },
    ]);
    forward.time_us = T0 + 500_000;
    forward.id = Some("aaaa0001".into());
    let mut deliver =
        Record::at(T0 + 2_000_000, Event::Deliver, Verdict::Deny, "clearance-too-low").subject("gbr.clerk");
    deliver.id = Some("bbbb0002".into());
    let mut refuse = Record::at(T0 + 3_000_000, Event::Refuse, Verdict::Deny, "bad-signature").subject("USA");
    refuse.id = Some("cccc0003".into());
    for record in [publish, forward, deliver, refuse] {
        audit.record(record).await;
    }
    drop(audit);
    dir.join("audit.jsonl")
}

/// The `reason` of each line `entente audit query` printed, after checking
/// each is a line of the log, byte for byte.
fn queried(log: &Path, filters: &[&str]) -> Vec<String> {
    let mut args = vec!["audit", "query", log.to_str().unwrap()];
    args.extend_from_slice(filters);
    let output = entente(&args);
    assert!(output.status.success(), "{output:?}");
    let stored = std::fs::read_to_string(log).unwrap();
    stdout(&output)
        .lines()
        .map(|line| {
            assert!(stored.lines().any(|l| l == line), "not as stored: {line}");
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["reason"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn query_filters_by_id_nation_principal_decision_reason_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = sample_log(dir.path()).await;
    assert_eq!(queried(&log, &[]).len(), 4);
    assert_eq!(queried(&log, &["--id", "aaaa0001"]), ["policy-allows", "mixed"]);
    assert_eq!(queried(&log, &["--id", "bbbb"]), ["clearance-too-low"]);
    assert_eq!(
        queried(&log, &["--nation", "DEU", "--decision", "deny"]),
        ["mixed"]
    );
    assert!(queried(&log, &["--nation", "DEU", "--decision", "allow"]).is_empty());
    assert_eq!(queried(&log, &["--nation", "USA"]), ["bad-signature"]);
    assert_eq!(
        queried(&log, &["--principal", "gbr.clerk"]),
        ["clearance-too-low"]
    );
    assert_eq!(
        queried(&log, &["--decision", "deny"]),
        ["mixed", "clearance-too-low", "bad-signature"]
    );
    assert_eq!(queried(&log, &["--reason", "not-releasable"]), ["mixed"]);
    let until = (T0 + 2_500_000).to_string();
    assert_eq!(
        queried(&log, &["--since", "2023-11-14T22:13:21Z", "--until", &until]),
        ["clearance-too-low"]
    );
    assert_eq!(
        queried(&log, &["--since", "2023-11-14T23:13:23+01:00"]),
        ["bad-signature"]
    );

    let output = entente(&[
        "audit",
        "query",
        log.to_str().unwrap(),
        "--table",
        "--decision",
        "deny",
    ]);
    assert!(output.status.success(), "{output:?}");
    let table = stdout(&output);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    for column in ["TIME", "NODE", "EVENT", "DECISION", "REASON", "SUBJECT", "ID"] {
        assert!(rows[0].contains(column), "{table}");
    }
    for part in [
        "2023-11-14T22:13:22Z",
        "GBR",
        "deliver",
        "deny",
        "clearance-too-low",
        "gbr.clerk",
        "bbbb0002",
    ] {
        assert!(rows[2].contains(part), "{part} in {table}");
    }
    assert!(
        rows[1].contains("FRA:policy-allows,DEU:not-releasable"),
        "{table}"
    );

    let bad = entente(&["audit", "query", log.to_str().unwrap(), "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

/// Checks one node's log reads in causal order: every `deliver` or
/// `forward` record of a message comes after a `publish` or `admit` record
/// of it. Returns how many such records it checked.
fn check_causal_order(nation: &str, lines: &[String]) -> usize {
    let mut taken = std::collections::HashSet::new();
    let mut checked = 0;
    for (n, line) in lines.iter().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let (Some(id), Some(event)) = (record["id"].as_str(), record["event"].as_str()) else {
            continue;
        };
        match event {
            "publish" | "admit" => {
                taken.insert(id.to_owned());
            }
            "deliver" | "forward" => {
                assert!(
                    taken.contains(id),
                    "{nation}'s line {} is about message {id} before any publish or admit of it:\n{line}",
                    n + 1
                );
                checked += 1;
            }
            _ => {}
        }
    }
    checked
}

/// Every node's real log, read top to bottom, shows each message taken in
/// (published, or admitted from a peer) before it is delivered, refused
/// delivery or forwarded: on the origin, on a receiver straight from the
/// origin (delivered before its seal comes), on a relay, and on a receiver
/// behind the relay (sealed, admitted on its tag).
#[tokio::test]
async fn every_nodes_log_records_each_message_taken_before_it_is_delivered_or_forwarded() {
    let mut net = TestNetwork::start().await;
    // The clerk and the junior are cleared below SECRET: their deliveries
    // are refused, and those refusals are `deliver` records too.
    let mut subscribers = Vec::new();
    for principal in [
        "gbr.analyst",
        "gbr.clerk",
        "fra.analyst",
        "fra.junior",
        "deu.analyst",
    ] {
        let client = net.client(principal).await;
        client.subscribe(">").await.unwrap();
        subscribers.push(client);
    }
    net.wait_for_interest(nation("GBR"), nation("FRA"), ">").await;
    net.wait_for_interest(nation("GBR"), nation("DEU"), ">").await;
    net.wait_for_interest(nation("DEU"), nation("FRA"), ">").await;
    let gbr = net.client("gbr.analyst").await;
    let deu = net.client("deu.analyst").await;
    for n in 0..20 {
        let payload = format!("{n}").into_bytes();
        gbr.publish("sigint.ru", "SECRET//REL TO GBR, FRA", payload.clone())
            .await
            .unwrap();
        gbr.publish("sigint.ru", "CONFIDENTIAL//REL TO GBR, FRA, DEU", payload.clone())
            .await
            .unwrap();
        // To FRA only through GBR.
        deu.publish("sigint.de", "CONFIDENTIAL//REL TO DEU, GBR, FRA", payload)
            .await
            .unwrap();
    }
    // Everything arrived where it may: FRA's analyst gets all 60.
    let fra = &subscribers[2];
    for _ in 0..60 {
        tokio::time::timeout(std::time::Duration::from_secs(30), fra.next_delivery())
            .await
            .expect("a delivery within 30 s")
            .unwrap();
    }
    for nation in [nation("DEU"), nation("GBR"), nation("FRA")] {
        net.stop(nation).await.unwrap();
    }
    for name in ["GBR", "FRA", "DEU"] {
        let lines = net.audit_lines(nation(name));
        let checked = check_causal_order(name, &lines);
        // Each node delivered or forwarded at least 20 messages.
        assert!(
            checked >= 20,
            "{name}'s log has only {checked} deliveries and forwards"
        );
    }
}

/// Several nodes' logs queried together as a table read as one story,
/// sorted by time.
#[tokio::test]
async fn a_table_of_several_logs_is_sorted_by_time() {
    let gbr_dir = tempfile::tempdir().unwrap();
    let gbr = sample_log(gbr_dir.path()).await;
    let fra_dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(fra_dir.path(), nation("FRA")).unwrap();
    let mut admit = Record::at(T0 + 1_000_000, Event::Admit, Verdict::Allow, "verified").subject("GBR");
    admit.id = Some("aaaa0001".into());
    audit.record(admit).await;
    drop(audit);
    let fra = fra_dir.path().join("audit.jsonl");
    let output = entente(&[
        "audit",
        "query",
        gbr.to_str().unwrap(),
        fra.to_str().unwrap(),
        "--table",
    ]);
    assert!(output.status.success(), "{output:?}");
    let table = stdout(&output);
    let reasons: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|row| row.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "policy-allows",
            "mixed",
            "verified",
            "clearance-too-low",
            "bad-signature"
        ],
        "{table}"
    );
}

/// A running node's log may end in a line it is still writing: `query`
/// leaves that line for next time, without a word, and reads every whole
/// one.
#[tokio::test]
async fn a_line_still_being_written_is_left_for_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = sample_log(dir.path()).await;
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, b"{\"node\":\"GBR\",\"time_us\":17").unwrap();
    drop(file);
    let output = entente(&["audit", "query", log.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).lines().count(), 4);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
