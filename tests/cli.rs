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

/// Two free UDP ports on loopback (held together so they differ). They
/// are free only until released, and tests run in parallel: whoever binds
/// them must retry with new ones when they have been taken meanwhile
/// (`start_up`).
fn free_ports() -> (u16, u16) {
    let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
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

/// `entente up` for a GBR–FRA network written to `network`, on ports free
/// when it starts: when another test took one of them between `free_ports`
/// and the bind, it starts again with new ones. Returns the process, its
/// stdout after the "running" line, and GBR's port.
fn start_up(
    network: &std::path::Path,
    certs: &std::path::Path,
    data: &std::path::Path,
) -> (KillOnDrop, std::io::BufReader<std::process::ChildStdout>, u16) {
    let mut failures = Vec::new();
    for _ in 0..10 {
        let (gbr_port, fra_port) = free_ports();
        std::fs::write(
            network,
            format!(
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
name = "gbr.clerk"
nation = "GBR"
clearance = "RESTRICTED"
subscribe = [">"]
[[principals]]
name = "fra.analyst"
nation = "FRA"
clearance = "SECRET"
subscribe = [">"]
"#
            ),
        )
        .unwrap();
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
        if read_line(&mut up_out).contains("running") {
            return (up, up_out, gbr_port);
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut up.0.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("in use"), "entente up failed: {stderr}");
        failures.push(stderr);
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

/// Finding 3 of issue 8: a payload with a newline printed a second line
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

/// Finding 3 of issue 8: a payload with a newline printed a second line
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
