//! The `entente` binary as a user runs it: exit codes, messages and JSON.

use std::process::{Command, Output};

use entente::audit::now_us;
use entente::envelope::{MessageId, Signer, Unsigned};
use entente::identity::Identity;
use entente::pki;
use entente::topic::Topic;
use entente::wire::Frame;
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

#[test]
fn explain_lists_the_nordic_nations_and_principals() {
    let output = entente(&["explain", "S//REL TO NORDIC"]);
    assert!(output.status.success());
    let text = stdout(&output);
    assert!(text.contains("SECRET//REL TO NORDIC"), "{text}");
    assert!(text.contains("nations:    DNK, FIN, NOR, SWE\n"), "{text}");
    assert!(
        text.contains("principals: dnk.analyst, fin.analyst, nor.analyst, swe.analyst\n"),
        "{text}"
    );
}

#[test]
fn explain_json_has_the_documented_keys() {
    let output = entente(&["explain", "SECRET//REL TO GBR", "--to", "gbr.clerk", "--json"]);
    assert!(output.status.success());
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(value["marking"], "SECRET//REL TO GBR");
    assert_eq!(value["nations"], serde_json::json!(["GBR"]));
    assert_eq!(
        value["principals"],
        serde_json::json!(["gbr.analyst", "gbr.sigint"])
    );
    assert_eq!(value["decision"], "deny");
    assert_eq!(value["reason"], "clearance-too-low");
}

#[test]
fn a_bad_marking_exits_non_zero_and_names_the_token() {
    let output = entente(&["explain", "SECRET//REL TO XYZ"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`XYZ`"), "{stderr}");
}

#[test]
fn a_broken_network_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.toml");
    std::fs::write(
        &path,
        "[nations.GBR]\naddress = \"127.0.0.1:1\"\npeers = [\"FRA\"]\n",
    )
    .unwrap();
    let output = entente(&["explain", "SECRET", "--network", path.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("net.toml") && stderr.contains("`FRA`"),
        "{stderr}"
    );
}

fn fails_saying(output: &Output, words: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains(words), "{stderr}");
}

/// A nation's node and PKI come from its own national file: asking for
/// another nation with it, or for half of the pair, is refused with what
/// to do, and `config split` writes the pair from a whole-network file.
#[test]
fn the_coalition_and_national_files_go_together() {
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("split");
    let output = entente(&["config", "split", "--out", split.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains("15 national files"));
    let coalition = split.join("coalition.toml");
    let gbr = split.join("national").join("GBR.toml");
    let (coalition, gbr) = (coalition.to_str().unwrap(), gbr.to_str().unwrap());
    let certs = dir.path().join("certs");

    let output = entente(&[
        "node",
        "--nation",
        "FRA",
        "--coalition",
        coalition,
        "--national",
        gbr,
    ]);
    fails_saying(&output, "the national file is GBR's");
    let output = entente(&["node", "--coalition", coalition]);
    fails_saying(&output, "--national");
    let output = entente(&[
        "certs",
        "init",
        "--nation",
        "FRA",
        "--coalition",
        coalition,
        "--national",
        gbr,
        "--out",
        certs.to_str().unwrap(),
    ]);
    fails_saying(&output, "the national file is GBR's");
    assert!(!certs.exists(), "a refused init writes nothing");
    // Without --nation, the national file's nation, and only it.
    let output = entente(&[
        "certs",
        "init",
        "--coalition",
        coalition,
        "--national",
        gbr,
        "--out",
        certs.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let made: Vec<String> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(made, ["GBR"]);
}

#[test]
fn certs_init_writes_the_pki_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let out = out.to_str().unwrap();
    let output = entente(&["certs", "init", "--out", out]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains("15 national CAs"));
    for nation in ["GBR", "FRA", "USA", "UKR", "TUR"] {
        for file in ["ca.crt", "ca.key", "node.crt", "node.key"] {
            assert!(
                dir.path().join("pki").join(nation).join(file).exists(),
                "{nation}/{file}"
            );
        }
    }
    let again = entente(&["certs", "init", "--out", out]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(entente(&["certs", "init", "--out", out, "--force"])
        .status
        .success());
}

struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    /// Everything the process prints to stdout, once it has exited 0.
    fn output(mut self) -> String {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut self.0.stdout.take().unwrap(), &mut out).unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "exited with {status}; printed {out}");
        out
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_entente"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the entente binary starts"),
    )
}

fn read_line(stream: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    stream.read_line(&mut line).expect("read a line");
    line
}

/// `entente up` for a GBR–FRA network written to `network`. Returns the
/// process, its stdout after the "running" line, and GBR's port.
fn start_up(
    network: &std::path::Path,
    certs: &std::path::Path,
    data: &std::path::Path,
) -> (KillOnDrop, std::io::BufReader<std::process::ChildStdout>, u16) {
    let (up, up_out, _, ports) = up_on_free_ports(network, certs, data, 2, |ports| {
        format!(
            r#"
[nations.GBR]
address = "127.0.0.1:{}"
peers = ["FRA"]
default_ceiling = "SECRET"
[nations.FRA]
address = "127.0.0.1:{}"
peers = ["GBR"]
default_ceiling = "SECRET"
[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]
[[principals]]
name = "gbr.clerk"
nation = "GBR"
clearance = "RESTRICTED"
subscribe = [">"]
[[principals]]
name = "fra.analyst"
nation = "FRA"
clearance = "SECRET"
subscribe = [">"]
"#,
            ports[0], ports[1]
        )
    });
    (up, up_out, ports[0])
}

/// `entente up` on the network `write` makes of `count` ports free when it
/// starts, written to `network`: when another test took a port between
/// `free_port_list` and the bind, it starts again with new ones. Returns
/// the process, its stdout after the "running" line, its standard error
/// as it comes, and the ports.
fn up_on_free_ports(
    network: &std::path::Path,
    certs: &std::path::Path,
    data: &std::path::Path,
    count: usize,
    write: impl Fn(&[u16]) -> String,
) -> (
    KillOnDrop,
    std::io::BufReader<std::process::ChildStdout>,
    Collected,
    Vec<u16>,
) {
    let mut failures = Vec::new();
    for _ in 0..10 {
        let ports = free_port_list(count);
        std::fs::write(network, write(&ports)).unwrap();
        let mut up = spawn(&[
            "up",
            "--network",
            network.to_str().unwrap(),
            "--certs",
            certs.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        let mut up_out = std::io::BufReader::new(up.0.stdout.take().unwrap());
        let first = read_line(&mut up_out);
        let stderr = Collected::drain(&mut up);
        if first.contains("running") {
            return (up, up_out, stderr, ports);
        }
        let _ = up.0.wait();
        let printed = stderr.text();
        assert!(printed.contains("in use"), "entente up failed: {first}{printed}");
        failures.push(printed);
    }
    panic!("no free ports after 10 tries: {failures:#?}");
}

/// The README's walk-through, with real processes: `up`, then `sub` and
/// `pub` from other processes, then Ctrl-C.
#[test]
fn up_sub_and_pub_as_a_user_would() {
    use std::io::BufReader;
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.toml");
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    let (mut up, mut up_out, gbr_port) = start_up(&network, &certs, &data);
    let network = network.to_str().unwrap();
    let certs = certs.to_str().unwrap();
    let listed: Vec<String> = (0..2).map(|_| read_line(&mut up_out)).collect();
    assert!(
        listed
            .iter()
            .any(|l| l.contains(&format!("GBR  127.0.0.1:{gbr_port}"))),
        "{listed:?}"
    );
    // Wait for the GBR → FRA link, from GBR's audit log.
    let audit = data.join("GBR").join("audit.jsonl");
    let linked = (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::read_to_string(&audit).is_ok_and(|a| a.contains("link-up"))
    });
    assert!(linked, "the GBR–FRA link never came up");

    let connect = ["--network", network, "--certs", certs];
    let subscriber = |principal: &str, json: bool| {
        let mut args = vec![
            "sub",
            "--as",
            principal,
            "--topic",
            "sigint.>",
            "--count",
            "1",
            "--timeout",
            "60s",
        ];
        if json {
            args.push("--json");
        }
        args.extend(connect);
        let mut child = spawn(&args);
        let mut err = BufReader::new(child.0.stderr.take().unwrap());
        let line = read_line(&mut err);
        assert!(
            line.contains("subscribed"),
            "{principal} did not subscribe: {line}"
        );
        child
    };
    let fra = subscriber("fra.analyst", true);
    let clerk = subscriber("gbr.clerk", false);
    // GBR routes to FRA once FRA's interest has reached it.
    let interest_known = (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::read_to_string(&audit).is_ok_and(|a| {
            a.lines()
                .any(|l| l.contains("\"reason\":\"announcement\"") && l.contains("sigint.>"))
        })
    });
    assert!(interest_known, "FRA's interest never reached GBR");

    let publish = |label: &str, text: &str| {
        let mut args = vec![
            "pub",
            "--as",
            "gbr.analyst",
            "--topic",
            "sigint.ru.launch",
            "--label",
            label,
            text,
        ];
        args.extend(connect);
        let output = entente(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    publish("SECRET//REL TO GBR", "gbr only");
    publish("SECRET//REL TO GBR, FRA", "launch detected");
    publish("RESTRICTED//REL TO GBR", "for the clerk");

    let fra_out = fra.output();
    let line: serde_json::Value = serde_json::from_str(fra_out.lines().next().unwrap()).unwrap();
    assert_eq!(line["payload"], "launch detected");
    assert_eq!(line["marking"], "SECRET//REL TO FRA, GBR");
    assert_eq!(line["origin"], "GBR");
    assert_eq!(line["publisher"], "gbr.analyst");
    assert_eq!(line["topic"], "sigint.ru.launch");
    assert_eq!(line["id"].as_str().unwrap().len(), 32);
    let clerk_out = clerk.output();
    assert!(
        clerk_out.contains("for the clerk") && !clerk_out.contains("SECRET"),
        "{clerk_out}"
    );

    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert!(up.0.wait().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut up_out, &mut rest).unwrap();
    assert!(rest.trim_end().ends_with("stopped"), "{rest}");
}

/// Both bench commands run real node processes and print parseable JSON
/// with the documented keys. (They measure; nothing here checks a time.)
#[test]
fn bench_commands_print_json_with_the_documented_keys() {
    let latency = entente(&["bench", "latency", "--duration", "1s", "--rate", "200", "--json"]);
    assert!(
        latency.status.success(),
        "{}",
        String::from_utf8_lossy(&latency.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&latency.stdout).expect("one JSON object");
    for key in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {report}");
    }
    assert_eq!(report["sent"], 200);
    assert_eq!(report["received"], 200, "{report}");
    assert_eq!(report["lost"], 0);

    let throughput = entente(&[
        "bench",
        "throughput",
        "--hops",
        "1",
        "--duration",
        "500ms",
        "--subscribers",
        "2",
        "--json",
    ]);
    assert!(
        throughput.status.success(),
        "{}",
        String::from_utf8_lossy(&throughput.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&throughput.stdout).expect("one JSON object");
    for key in ["msgs_per_s", "mib_per_s"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {report}");
    }
    // Checked against what must hold, not the bench's own formula: every
    // acknowledged message reached both subscribers, once.
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["received"].as_u64().unwrap(), 2 * sent, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["subscribers"], 2, "{report}");
    assert_eq!(report["hops"], 1, "{report}");

    // Each idle session costs a node tens of KiB (about 45 KiB when this was
    // written), so 40 of them grow it by far more than allocator noise; a
    // measurement that read the wrong figure, the wrong process or the
    // wrong unit, or read before the sessions were up, falls outside these
    // (wide) bounds.
    let memory = entente(&["bench", "memory", "--peers", "2", "--sessions", "40", "--json"]);
    assert!(
        memory.status.success(),
        "{}",
        String::from_utf8_lossy(&memory.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&memory.stdout).expect("one JSON object");
    let idle = report["idle_node_kib"].as_u64().unwrap();
    let with_sessions = report["with_sessions_kib"].as_u64().unwrap();
    assert!(
        (2 * 1024..512 * 1024).contains(&idle),
        "an idle node is a few MiB resident, not {idle} KiB: {report}"
    );
    assert!(
        with_sessions > idle + 40 * 4,
        "40 sessions must cost the node more than 4 KiB each: {report}"
    );
    let per_session = report["per_session_kib"].as_f64().unwrap();
    assert!(
        (4.0..1024.0).contains(&per_session),
        "{per_session} KiB per session: {report}"
    );
    assert_eq!(report["sessions"], 40);
    assert_eq!(report["peers"], 2);

    let too_far = entente(&["bench", "latency", "--hops", "5"]);
    assert!(!too_far.status.success());
    let message = String::from_utf8_lossy(&too_far.stderr);
    assert!(
        message.contains("--hops 5") && message.contains("0 to 4"),
        "{message}"
    );
}

/// A payload with a newline once printed a second line
/// that read as another delivery, with any marking, origin and publisher.
/// `entente sub` runs as a real process against a real node; each message
/// must print exactly one line, with nothing a terminal would act on.
/// `entente sub` as a separate process, connected to `net`'s GBR node as
/// gbr.analyst, once it has said it is subscribed.
async fn sub_process(net: &TestNetwork, count: &str) -> KillOnDrop {
    use std::io::BufReader;
    let gbr = nation("GBR");
    let (cert, key) = net.identity_files(&Identity::Principal {
        nation: gbr,
        name: "gbr.analyst".into(),
    });
    let ca = net.layout.ca_cert(gbr);
    let addr = net.addr(gbr).to_string();
    let mut sub = spawn(&[
        "sub",
        "--as",
        "gbr.analyst",
        "--topic",
        "sigint.>",
        "--count",
        count,
        "--timeout",
        "60s",
        "--node",
        &addr,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
    ]);
    let mut err = BufReader::new(sub.0.stderr.take().unwrap());
    let line = tokio::task::spawn_blocking(move || read_line(&mut err))
        .await
        .unwrap();
    assert!(line.contains("subscribed"), "{line}");
    sub
}

/// What a terminal would act on, other than the newline ending each line.
fn has_terminal_controls(out: &str) -> bool {
    out.chars()
        .any(|c| c != '\n' && (c.is_control() || c == '\u{2028}' || c == '\u{202e}'))
}

const FORGED: &str = "[TOP SECRET//REL TO GBR] sigint.ru from usa.general (USA) id 0123456789abcdef0123456789abcdef: strike at dawn";

/// A payload with a newline once printed a second line
/// that read as another delivery, with any marking, origin and publisher.
/// `entente sub` runs as a real process against a real node; each message
/// must print exactly one line, with nothing a terminal would act on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_cannot_forge_a_delivery_line_in_sub_output() {
    let net = TestNetwork::start().await;
    let sub = sub_process(&net, "2").await;
    let hostile = format!("weather report\n{FORGED}\r\x1b[2K\u{2028}{FORGED}\u{202e}");
    let publisher = net.client("gbr.analyst").await;
    publisher
        .publish("sigint.ru", "RESTRICTED//REL TO GBR", hostile.into_bytes())
        .await
        .unwrap();
    publisher
        .publish("sigint.ru", "RESTRICTED//REL TO GBR", b"sentinel".to_vec())
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || sub.output()).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "two messages printed {} lines:\n{out}",
        lines.len()
    );
    assert!(
        lines[0].starts_with("[RESTRICTED//REL TO GBR] sigint.ru from gbr.analyst (GBR) id "),
        "{out}"
    );
    assert!(
        lines[0].contains(&format!(r"weather report\n{FORGED}\r\x1b[2K\u{{2028}}")),
        "{out}"
    );
    assert!(lines[1].ends_with(": sentinel"), "{out}");
    assert!(!has_terminal_controls(&out), "{out:?}");
    publisher.close().await;
    net.shutdown().await;
}

/// The same forgery from a hostile member: FRA's node, played with its
/// genuine certificate and key, sends a validly sealed envelope whose
/// payload carries a fake delivery line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_cannot_forge_a_delivery_line_in_sub_output() {
    let mut net = TestNetwork::start().await;
    let sub = sub_process(&net, "2").await;
    let fra = nation("FRA");
    let (_, key_path) = net.identity_files(&Identity::Node(fra));
    let signer = Signer::from_pkcs8(pki::read_key(&key_path).unwrap().secret_der()).unwrap();
    let mut peer = net.play_node(fra, nation("GBR")).await;
    let scheme = net.policy.scheme();
    let seal = |n: u8, payload: &[u8]| {
        signer.seal(Unsigned {
            id: MessageId([n; 16]),
            origin: fra,
            publisher: "fra.analyst".into(),
            topic: Topic::new("sigint.ru").unwrap(),
            released_to: net
                .policy
                .release_set(fra, &scheme.parse("SECRET//REL TO FRA, GBR").unwrap()),
            label: scheme.parse("SECRET//REL TO FRA, GBR").unwrap(),
            created_us: now_us(),
            payload: payload.to_vec(),
        })
    };
    let hostile = format!("all quiet\n{FORGED}");
    peer.send_frame(&Frame::Forward(seal(0xf1, hostile.as_bytes())))
        .await;
    peer.send_frame(&Frame::Forward(seal(0xf2, b"sentinel"))).await;
    let out = tokio::task::spawn_blocking(move || sub.output()).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "two messages printed {} lines:\n{out}",
        lines.len()
    );
    assert!(lines[0].contains(" (FRA) id "), "{out}");
    assert!(lines[0].ends_with(&format!(r"all quiet\n{FORGED}")), "{out}");
    assert!(lines[1].ends_with(": sentinel"), "{out}");
    assert!(!has_terminal_controls(&out), "{out:?}");
    net.shutdown().await;
}

#[test]
fn certs_revoke_writes_a_crl_and_names_a_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("pki");
    let certs = certs.to_str().unwrap();
    assert!(entente(&["certs", "init", "--out", certs]).status.success());
    let output = entente(&[
        "certs",
        "revoke",
        "--nation",
        "GBR",
        "--principal",
        "gbr.analyst",
        "--certs",
        certs,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert!(
        text.contains("revoked principal gbr.analyst (GBR)") && text.contains("lists 1 certificate(s)"),
        "{text}"
    );
    let crl = std::fs::read_to_string(dir.path().join("pki/GBR/ca.crl")).unwrap();
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");

    let missing = entente(&[
        "certs",
        "revoke",
        "--nation",
        "GBR",
        "--principal",
        "nobody.here",
        "--certs",
        certs,
    ]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("nobody.here.crt"), "{stderr}");
}

/// `n` distinct UDP ports on loopback that were free a moment ago (held
/// together so they differ). They are free only until released, and tests
/// run in parallel: whoever binds them must retry with new ones when they
/// have been taken meanwhile (`up_on_free_ports`).
fn free_port_list(n: usize) -> Vec<u16> {
    let held: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

/// Everything a child writes to standard error, read on a thread of its
/// own so a chatty process never blocks on a full pipe.
#[derive(Clone, Default)]
struct Collected(std::sync::Arc<std::sync::Mutex<String>>);

impl Collected {
    fn drain(child: &mut KillOnDrop) -> Collected {
        let collected = Collected::default();
        let mut stderr = std::io::BufReader::new(child.0.stderr.take().unwrap());
        let into = collected.clone();
        std::thread::spawn(move || loop {
            let line = read_line(&mut stderr);
            if line.is_empty() {
                break;
            }
            into.0.lock().unwrap().push_str(&line);
        });
        collected
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits (generously) until what was written contains `needle`.
    fn wait_for(&self, needle: &str) -> String {
        for _ in 0..1000 {
            if self.text().contains(needle) {
                return self.text();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("never printed {needle:?}; printed:\n{}", self.text());
    }
}

/// The records of an audit log, as JSON.
fn audit_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    entente_testkit::whole_lines(&std::fs::read_to_string(path).unwrap_or_default())
        .iter()
        .map(|line| serde_json::from_str(line).expect("each audit line is JSON"))
        .collect()
}

/// Waits until a record of the audit log at `path`, past its first `skip`
/// records, matches; returns it. Panics after a generous limit.
fn wait_for_audit_record(
    path: &std::path::Path,
    skip: usize,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..1500 {
        if let Some(found) = audit_records(path).into_iter().skip(skip).find(|r| matches(r)) {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!(
        "no matching record in {} past record {skip}:\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// Whether an `announcement` record says `of` links to `link` and is
/// interested in `pattern`.
fn announces(record: &serde_json::Value, of: &str, link: &str, pattern: &str) -> bool {
    let Some(detail) = record["detail"].as_str() else {
        return false;
    };
    let Some((links, interest)) = detail.split_once("; interest: ") else {
        return false;
    };
    record["reason"] == "announcement"
        && record["subject"] == of
        && links.trim_start_matches("links: ").split(", ").any(|l| l == link)
        && interest.split(", ").any(|p| p == pattern)
}

/// `entente up` on the sample network (config/network.toml) with every
/// address moved to a free port, written to `network`. Returns the
/// process, its stdout after the "running" line, and its standard error as
/// it comes.
fn start_sample_network(
    network: &std::path::Path,
    certs: &std::path::Path,
    data: &std::path::Path,
) -> (
    KillOnDrop,
    std::io::BufReader<std::process::ChildStdout>,
    Collected,
) {
    let sample =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml"))
            .unwrap();
    let (up, up_out, stderr, _) = up_on_free_ports(network, certs, data, 15, |ports| {
        let mut text = sample.clone();
        for (i, port) in (7401..=7415).zip(ports) {
            let fixed = format!("address = \"127.0.0.1:{i}\"");
            assert!(text.contains(&fixed), "config/network.toml has no {fixed}");
            text = text.replace(&fixed, &format!("address = \"127.0.0.1:{port}\""));
        }
        text
    });
    (up, up_out, stderr)
}

/// `entente admin cut` and `restore` as an operator runs them, on the
/// sample network run by `entente up`: USA's subscriber gets what GBR
/// publishes before the cut and after the restore, and nothing published
/// while USA is cut out; a nation the network does not have is an error.
#[test]
fn admin_cut_and_restore_as_a_user_would() {
    use std::io::BufReader;
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.toml");
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    let (mut up, mut up_out, up_err) = start_sample_network(&network, &certs, &data);
    let network = network.to_str().unwrap();
    let certs = certs.to_str().unwrap();
    let connect = ["--network", network, "--certs", certs];
    let gbr_audit = data.join("GBR").join("audit.jsonl");
    for peer in ["USA", "FRA"] {
        wait_for_audit_record(&gbr_audit, 0, |r| {
            r["reason"] == "link-up" && r["subject"] == peer
        });
    }

    // usa.analyst and fra.analyst (the witness) subscribe to `intel.>`,
    // each for two messages.
    let subscriber = |principal: &str| {
        let mut args = vec![
            "sub",
            "--as",
            principal,
            "--topic",
            "intel.>",
            "--count",
            "2",
            "--timeout",
            "120s",
            "--json",
        ];
        args.extend(connect);
        let mut child = spawn(&args);
        let mut err = BufReader::new(child.0.stderr.take().unwrap());
        let line = read_line(&mut err);
        assert!(
            line.contains("subscribed"),
            "{principal} did not subscribe: {line}"
        );
        child
    };
    let mut usa = subscriber("usa.analyst");
    let fra = subscriber("fra.analyst");
    for of in ["USA", "FRA"] {
        wait_for_audit_record(&gbr_audit, 0, |r| announces(r, of, "GBR", "intel.>"));
    }
    let publish = |text: &str| -> String {
        let mut args = vec![
            "pub",
            "--as",
            "gbr.analyst",
            "--topic",
            "intel.ru.armour",
            "--label",
            "SECRET//REL TO NATO",
            text,
        ];
        args.extend(connect);
        let output = entente(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // "published <id> on <topic>"
        stdout(&output)
            .split_whitespace()
            .nth(1)
            .expect("the message id")
            .to_owned()
    };
    let payload = |line: &str| -> String {
        let value: serde_json::Value = serde_json::from_str(line).expect("one JSON delivery");
        value["payload"].as_str().unwrap().to_owned()
    };

    publish("before the cut");
    let mut usa_out = BufReader::new(usa.0.stdout.take().unwrap());
    assert_eq!(payload(&read_line(&mut usa_out)), "before the cut");

    let admin = |args: &[&str]| -> Output {
        let mut all = vec!["admin"];
        all.extend(args);
        all.extend(connect);
        entente(&all)
    };
    let cut = admin(&["cut", "USA"]);
    let text = stdout(&cut);
    assert!(
        cut.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let others = [
        "GBR", "FRA", "DEU", "POL", "FIN", "SWE", "DNK", "NOR", "EST", "LVA", "LTU", "ROU", "UKR", "TUR",
    ];
    for nation in others {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("  {nation}  applied in "))),
            "{nation} missing: {text}"
        );
    }
    assert!(
        !text.contains("  USA  "),
        "USA is not asked to cut itself: {text}"
    );
    assert!(
        text.contains("cut USA: 14 node(s) acknowledged; ")
            && text.contains(" from start to the last acknowledgement"),
        "{text}"
    );
    assert!(!text.contains("warning"), "every node runs one policy: {text}");

    let status = admin(&["status", "--nation", "GBR", "--json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("one JSON object");
    let gbr = &report["nodes"][0]["status"];
    assert_eq!(gbr["node"], "GBR", "{report}");
    assert_eq!(gbr["suspended"], serde_json::json!(["USA"]), "{report}");
    let usa_peer = gbr["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["nation"] == "USA")
        .expect("USA is a peer of GBR");
    assert_eq!(usa_peer["cut"], true, "{report}");
    assert_eq!(usa_peer["outbound"], false, "{report}");
    assert_eq!(usa_peer["inbound"], false, "{report}");

    let cut_id = publish("after the cut");
    let fra_out = fra.output();
    let fra_got: Vec<String> = fra_out.lines().map(payload).collect();
    assert_eq!(fra_got, ["before the cut", "after the cut"], "{fra_out}");

    let skip = audit_records(&gbr_audit).len();
    let restore = admin(&["restore", "USA"]);
    let text = stdout(&restore);
    assert!(
        restore.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert!(text.contains("restore USA: 14 node(s) acknowledged; "), "{text}");
    // USA links with GBR again, and announces its interest there.
    wait_for_audit_record(&gbr_audit, skip, |r| announces(r, "USA", "GBR", "intel.>"));
    publish("after the restore");
    // USA's second message is the one after the restore: nothing of the
    // cut reached it.
    assert_eq!(payload(&read_line(&mut usa_out)), "after the restore");
    let status = usa.0.wait().unwrap();
    assert!(status.success(), "usa.analyst's sub exited with {status}");
    let usa_audit = std::fs::read_to_string(data.join("USA").join("audit.jsonl")).unwrap();
    assert!(
        !usa_audit.contains(&cut_id),
        "USA's node saw the message published while it was cut out"
    );

    // A nation the network file does not have, and one that is not a code.
    let unknown = admin(&["cut", "XYZ"]);
    assert!(!unknown.status.success());
    let said = format!("{}{}", stdout(&unknown), String::from_utf8_lossy(&unknown.stderr));
    // Checked against the network file before any node is asked.
    assert!(
        said.contains("XYZ is not a nation of") && !said.contains("FAILED"),
        "{said}"
    );
    let lower = admin(&["cut", "usa"]);
    assert!(!lower.status.success());
    let stderr = String::from_utf8_lossy(&lower.stderr);
    assert!(stderr.contains("`usa` is not a nation code"), "{stderr}");

    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert!(up.0.wait().unwrap().success(), "{}", up_err.text());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut up_out, &mut rest).unwrap();
    assert!(rest.trim_end().ends_with("stopped"), "{rest}");
}

/// SIGHUP makes a running `entente node` re-read its network file, as
/// `entente admin reload` would: a good file is applied (stderr says so,
/// with the new policy digest, and the audit log has a `policy-changed`
/// record); a broken one is refused and the node runs on.
#[test]
fn sighup_reloads_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.toml");
    let certs = dir.path().join("certs");
    let data = dir.path().join("GBR");
    let ports = free_port_list(2);
    let (gbr_port, fra_port) = (ports[0], ports[1]);
    let text = format!(
        r#"
[nations.GBR]
address = "127.0.0.1:{gbr_port}"
peers = ["FRA"]
default_ceiling = "SECRET"
[nations.FRA]
address = "127.0.0.1:{fra_port}"
peers = ["GBR"]
default_ceiling = "SECRET"
[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]
subscribe = [">"]
[[principals]]
name = "gbr.admin"
nation = "GBR"
clearance = "UNCLASSIFIED"
roles = ["admin"]
"#
    );
    std::fs::write(&network, &text).unwrap();
    let (network, certs) = (network.to_str().unwrap(), certs.to_str().unwrap());
    let init = entente(&["certs", "init", "--network", network, "--out", certs]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    // Only GBR runs (FRA stays down); on port 0, so no other test's port
    // can be in the way.
    let mut node = spawn(&[
        "node",
        "--nation",
        "GBR",
        "--network",
        network,
        "--certs",
        certs,
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut out = std::io::BufReader::new(node.0.stdout.take().unwrap());
    let listening = read_line(&mut out);
    let stderr = Collected::drain(&mut node);
    let addr = listening
        .strip_prefix("GBR node listening on ")
        .unwrap_or_else(|| panic!("{listening}{}", stderr.text()))
        .trim()
        .to_owned();
    let status = || -> serde_json::Value {
        let output = entente(&[
            "admin",
            "status",
            "--nation",
            "GBR",
            "--json",
            "--network",
            network,
            "--certs",
            certs,
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("one JSON object")
    };
    // The admin client dials the address in the network file; point it
    // at the one the node took.
    let moved = text.replace(&format!("127.0.0.1:{gbr_port}"), &addr);
    std::fs::write(network, &moved).unwrap();
    // An answered status also shows the node is past setting up, so its
    // SIGHUP handler is in place.
    let before = status()["nodes"][0]["status"]["policy_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let audit = data.join("audit.jsonl");
    let changes = |audit: &std::path::Path| {
        audit_records(audit)
            .iter()
            .filter(|r| r["reason"] == "policy-changed")
            .count()
    };
    assert_eq!(changes(&audit), 0);

    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    // A new principal: a new policy.
    let grown = format!(
        "{moved}[[principals]]\nname = \"gbr.clerk\"\nnation = \"GBR\"\nclearance = \"RESTRICTED\"\nsubscribe = [\">\"]\n"
    );
    std::fs::write(network, &grown).unwrap();
    hup(node.0.id());
    let printed = stderr.wait_for("GBR: reloaded, policy ");
    let after = status()["nodes"][0]["status"]["policy_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(after, before);
    assert!(
        printed.contains(&format!("GBR: reloaded, policy {after}, closed 0")),
        "{printed}"
    );
    let record = wait_for_audit_record(&audit, 0, |r| r["reason"] == "policy-changed");
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("reload: ") && d.contains(&after)),
        "{record}"
    );

    // A broken file: refused, and the node runs on under the last good one.
    std::fs::write(network, grown.replace("[nations.FRA]", "[nations.FRA")).unwrap();
    hup(node.0.id());
    let printed = stderr.wait_for("reload failed: ");
    assert!(
        printed.contains("reload failed: reload refused, the node keeps its old policy: ")
            && printed.contains("network.toml: TOML parse error"),
        "{printed}"
    );
    std::fs::write(network, &grown).unwrap();
    assert_eq!(status()["nodes"][0]["status"]["policy_digest"], after.as_str());
    assert_eq!(changes(&audit), 1);

    let pid = node.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let exit = node.0.wait().unwrap();
    assert!(exit.success(), "exited with {exit}: {}", stderr.text());
}

#[test]
fn simulate_runs_a_short_scenario_and_writes_both_report_files() {
    let dir = tempfile::tempdir().unwrap();
    let network = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/network.toml");
    let scenario = dir.path().join("short.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"network = {:?}
duration = "30s"
[[publishers]]
principal = "fin.analyst"
topic = "airdef.tracks"
marking = "SECRET//REL TO NORDIC"
rate = 20
[[subscribers]]
principal = "nor.analyst"
pattern = "airdef.>"
[[events]]
at = "50%"
event = "link-down FIN SWE"
"#,
            network.display().to_string()
        ),
    )
    .unwrap();
    let out = dir.path().join("report");
    let run = entente(&[
        "simulate",
        scenario.to_str().unwrap(),
        "--duration",
        "3s",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = stdout(&run);
    assert!(
        run.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("PASS: 0 leaks, 0 duplicates, 0 unexplained losses"),
        "{text}"
    );
    assert!(text.contains("link-down FIN SWE"), "{text}");
    assert!(text.contains("the scenario says 30.0 s"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"]["passed"], true);
    assert_eq!(report["duration_us"], 3_000_000);
    assert!(report["verdict"]["expected"].as_u64().unwrap() > 20);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("http://") && !html.contains("https://"));

    let missing = entente(&["simulate", "/nonexistent/scenario.toml"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("cannot read scenario /nonexistent/scenario.toml"),
        "{err}"
    );
}

/// A node process of `network`, started on its folder under `data`; waits
/// until it says it listens.
fn node_process(
    network: &std::path::Path,
    certs: &std::path::Path,
    data: &std::path::Path,
    nation: &str,
) -> KillOnDrop {
    let folder = data.join(nation);
    let mut node = spawn(&[
        "node",
        "--nation",
        nation,
        "--network",
        network.to_str().unwrap(),
        "--certs",
        certs.to_str().unwrap(),
        "--data",
        folder.to_str().unwrap(),
    ]);
    let mut out = std::io::BufReader::new(node.0.stdout.take().unwrap());
    let first = read_line(&mut out);
    assert!(
        first.contains("listening"),
        "{nation}'s node did not start: {first}"
    );
    node
}

/// The durable subscriber as an analyst runs it: LTU's analyst subscribes
/// with `--durable`; LTU's node process is killed while GBR streams, and
/// started again on the same folder; `sub` reconnects by itself and prints
/// every message exactly once, in order.
#[test]
fn a_durable_sub_rides_out_its_node_being_killed_and_prints_everything_once_in_order() {
    const MESSAGES: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let network = dir.path().join("network.toml");
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    let ports = free_port_list(2);
    std::fs::write(
        &network,
        format!(
            r#"
[nations.GBR]
address = "127.0.0.1:{}"
peers = ["LTU"]
default_ceiling = "SECRET"
[nations.LTU]
address = "127.0.0.1:{}"
peers = ["GBR"]
default_ceiling = "SECRET"
[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]
[[principals]]
name = "ltu.analyst"
nation = "LTU"
clearance = "SECRET"
subscribe = [">"]
"#,
            ports[0], ports[1]
        ),
    )
    .unwrap();
    let init = entente(&[
        "certs",
        "init",
        "--network",
        network.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
    ]);
    assert!(init.status.success(), "{init:?}");
    let _gbr = node_process(&network, &certs, &data, "GBR");
    let mut ltu = node_process(&network, &certs, &data, "LTU");

    let mut sub = spawn(&[
        "sub",
        "--as",
        "ltu.analyst",
        "--network",
        network.to_str().unwrap(),
        "--certs",
        certs.to_str().unwrap(),
        "--durable",
        "watch",
        "--topic",
        "sigint.>",
        "--count",
        &MESSAGES.to_string(),
        "--timeout",
        "120s",
        "--json",
    ]);
    let sub_err = Collected::drain(&mut sub);
    sub_err.wait_for("subscribed");
    // GBR routes to LTU once its own link to LTU is up and LTU's interest
    // has reached it.
    let gbr_audit = data.join("GBR").join("audit.jsonl");
    wait_for_audit_record(&gbr_audit, 0, |r| {
        r["reason"] == "link-up" && r["subject"] == "LTU"
    });
    wait_for_audit_record(&gbr_audit, 0, |r| announces(r, "LTU", "GBR", "sigint.>"));

    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let published = published.clone();
        let layout = pki::PkiLayout::new(&certs);
        let (cert, key) = layout.cert_and_key(&Identity::Principal {
            nation: nation("GBR"),
            name: "gbr.analyst".into(),
        });
        let ca = layout.ca_cert(nation("GBR"));
        let address = format!("127.0.0.1:{}", ports[0]);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let options = entente::client::ClientOptions::from_files(&address, &cert, &key, &ca).unwrap();
                let gbr = entente::client::Client::connect(options).await.unwrap();
                for n in 0..MESSAGES {
                    gbr.publish("sigint.ru", "SECRET//REL TO GBR, LTU", n.to_string().into_bytes())
                        .await
                        .unwrap();
                    published.store(n + 1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
                gbr.close().await;
            });
        })
    };
    // Killed (SIGKILL: no chance to tidy up) a third of the way through.
    while published.load(std::sync::atomic::Ordering::SeqCst) < MESSAGES / 3 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(ltu);
    std::thread::sleep(std::time::Duration::from_millis(300));
    ltu = node_process(&network, &certs, &data, "LTU");
    publisher.join().unwrap();

    let mut printed = String::new();
    std::io::Read::read_to_string(&mut sub.0.stdout.take().unwrap(), &mut printed).unwrap();
    let status = sub.0.wait().unwrap();
    assert!(
        status.success(),
        "sub exited with {status}; printed:\n{printed}\nsaid:\n{}",
        sub_err.text()
    );
    let payloads: Vec<String> = printed
        .lines()
        .map(|line| {
            let message: serde_json::Value = serde_json::from_str(line).unwrap();
            message["payload"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..MESSAGES).map(|n| n.to_string()).collect();
    assert_eq!(
        payloads,
        expected,
        "printed:\n{printed}\nsaid:\n{}",
        sub_err.text()
    );
    assert!(sub_err.text().contains("reconnected"), "{}", sub_err.text());
    drop(ltu);
}
