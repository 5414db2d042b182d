//! Three nations, each with its own PKI made on its own (`certs init
//! --nation`), exchanging only public member bundles, each node a separate
//! `entente node` process running from a folder that holds no other
//! nation's private key: a message crosses from one nation to another
//! through the third.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn entente(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(args)
        .output()
        .expect("the entente binary runs")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A child process, killed when dropped.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const NATIONS: [&str; 3] = ["GBR", "POL", "EST"];

/// GBR links to POL, POL to EST: GBR reaches EST only through POL.
fn network(ports: &[u16]) -> String {
    format!(
        r#"
[nations.GBR]
address = "127.0.0.1:{}"
peers = ["POL"]
default_ceiling = "SECRET"

[nations.POL]
address = "127.0.0.1:{}"
peers = ["GBR", "EST"]
default_ceiling = "SECRET"

[nations.EST]
address = "127.0.0.1:{}"
peers = ["POL"]
default_ceiling = "SECRET"

[[principals]]
name = "gbr.analyst"
nation = "GBR"
clearance = "SECRET"
publish = [">"]

[[principals]]
name = "est.analyst"
nation = "EST"
clearance = "SECRET"
subscribe = [">"]

[[principals]]
name = "pol.admin"
nation = "POL"
clearance = "UNCLASSIFIED"
roles = ["admin"]
"#,
        ports[0], ports[1], ports[2]
    )
}

/// Every private key file under `root`, as `NATION/file`.
fn private_keys(root: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for nation in std::fs::read_dir(root).unwrap() {
        let nation = nation.unwrap();
        for file in std::fs::read_dir(nation.path()).unwrap() {
            let file = file.unwrap();
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            if text.contains("PRIVATE KEY") {
                keys.push(format!(
                    "{}/{}",
                    nation.file_name().to_string_lossy(),
                    file.file_name().to_string_lossy()
                ));
            }
        }
    }
    keys
}

/// Starts each nation's node from its own folder; `None` if one could not
/// bind its port (taken meanwhile by another test: pick others).
fn start_nodes(dir: &Path, net: &str) -> Option<Vec<Process>> {
    let mut nodes = Vec::new();
    for nation in NATIONS {
        let certs = dir.join(nation.to_lowercase());
        let data = dir.join(format!("data-{nation}"));
        let mut child = Process(
            Command::new(env!("CARGO_BIN_EXE_entente"))
                .args(["node", "--nation", nation, "--network", net])
                .args([
                    "--certs",
                    certs.to_str().unwrap(),
                    "--data",
                    data.to_str().unwrap(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("the node starts"),
        );
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if !line.contains("listening on") {
            return None;
        }
        nodes.push(child);
    }
    Some(nodes)
}

#[test]
fn three_nations_with_their_own_keys_run_as_separate_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let net_path = dir.path().join("network.toml");
    let net = net_path.to_str().unwrap();
    let mut attempts = 0;
    let _nodes = loop {
        attempts += 1;
        assert!(attempts <= 5, "no free ports for three nodes");
        let held: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = held.iter().map(|s| s.local_addr().unwrap().port()).collect();
        drop(held);
        std::fs::write(&net_path, network(&ports)).unwrap();
        if attempts == 1 {
            // Each nation makes its own PKI, and gives the others its bundle.
            for nation in NATIONS {
                let certs = dir.path().join(nation.to_lowercase());
                ok(entente(&[
                    "certs",
                    "init",
                    "--nation",
                    nation,
                    "--network",
                    net,
                    "--out",
                    certs.to_str().unwrap(),
                ]));
                let bundle = dir.path().join(format!("{nation}.bundle.toml"));
                ok(entente(&[
                    "certs",
                    "export",
                    "--nation",
                    nation,
                    "--network",
                    net,
                    "--certs",
                    certs.to_str().unwrap(),
                    "--out",
                    bundle.to_str().unwrap(),
                ]));
            }
            for nation in NATIONS {
                let certs = dir.path().join(nation.to_lowercase());
                for partner in NATIONS.iter().filter(|&&p| p != nation) {
                    let bundle = dir.path().join(format!("{partner}.bundle.toml"));
                    ok(entente(&[
                        "certs",
                        "import",
                        bundle.to_str().unwrap(),
                        "--network",
                        net,
                        "--certs",
                        certs.to_str().unwrap(),
                    ]));
                }
                // Only its own nation's private keys are in its folder.
                let keys = private_keys(&certs);
                assert!(!keys.is_empty());
                assert!(
                    keys.iter().all(|k| k.starts_with(&format!("{nation}/"))),
                    "{nation}: {keys:?}"
                );
            }
        }
        if let Some(nodes) = start_nodes(dir.path(), net) {
            break nodes;
        }
    };

    let (gbr, est) = (dir.path().join("gbr"), dir.path().join("est"));
    let mut sub = Process(
        Command::new(env!("CARGO_BIN_EXE_entente"))
            .args([
                "sub",
                "--as",
                "est.analyst",
                "--topic",
                "news.>",
                "--network",
                net,
            ])
            .args(["--certs", est.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = std::io::BufReader::new(sub.0.stdout.take().unwrap()).lines();
    // Until POL relays EST's interest to GBR, GBR sends nothing there:
    // publish until one arrives (each publish is acknowledged by GBR).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let received = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing crossed GBR → POL → EST"
        );
        ok(entente(&[
            "pub",
            "--as",
            "gbr.analyst",
            "--topic",
            "news.gbr",
            "--label",
            "SECRET//REL TO GBR, POL, EST",
            "--network",
            net,
            "--certs",
            gbr.to_str().unwrap(),
            "from London",
        ]));
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
    };
    assert!(
        received.contains("from gbr.analyst (GBR)") && received.ends_with("from London"),
        "{received}"
    );
}
