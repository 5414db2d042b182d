//! Three nations, each with its own PKI made on its own (`certs init
//! --nation`) and its own national file beside the coalition file,
//! exchanging only public member bundles pinned by the coalition file; each
//! node a separate `entente node` process running from its own two files
//! and a folder that holds no other nation's private key: a message crosses
//! from one nation to another through the third.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Three of the sample coalition's nations, run from the shipped split
/// files: GBR links to POL, POL to LTU, and GBR reaches LTU only through
/// POL.
const NATIONS: [&str; 3] = ["GBR", "POL", "LTU"];

fn shipped(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The shipped coalition file as a deployment changes it: the three
/// nodes' addresses, and the CA fingerprints the coalition agreed on.
/// No principal and no ceiling is in it.
fn coalition(ports: &[u16], fingerprints: &[(&str, String)]) -> String {
    let mut file: toml::Table = toml::from_str(&shipped("config/coalition.toml")).unwrap();
    let nations = file["nations"].as_table_mut().unwrap();
    for (nation, port) in NATIONS.iter().zip(ports) {
        let table = nations[*nation].as_table_mut().unwrap();
        table.insert("address".into(), format!("127.0.0.1:{port}").into());
        if let Some((_, fingerprint)) = fingerprints.iter().find(|(n, _)| n == nation) {
            table.insert("ca_fingerprint".into(), fingerprint.clone().into());
        }
    }
    toml::to_string(&file).unwrap()
}

/// The shipped national file of `nation`: its principals and ceilings.
fn national(nation: &str) -> String {
    shipped(&format!("config/national/{nation}.toml"))
}

/// Each nation keeps its national file in its own folder.
fn national_path(dir: &Path, nation: &str) -> PathBuf {
    dir.join(nation.to_lowercase()).join(format!("{nation}.toml"))
}

/// The arguments that give a node or a command its two files.
fn two_files(coalition: &Path, national: &Path) -> Vec<String> {
    vec![
        "--coalition".into(),
        coalition.to_string_lossy().into_owned(),
        "--national".into(),
        national.to_string_lossy().into_owned(),
    ]
}

fn files(dir: &Path, nation: &str) -> Vec<String> {
    two_files(&dir.join("coalition.toml"), &national_path(dir, nation))
}

fn entente(args: &[&str], files: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(args)
        .args(files)
        .output()
        .expect("the entente binary runs")
}

/// Starts each nation's node from its own folder and its own two files;
/// `None` if one could not bind its port (taken meanwhile by another
/// test: pick others).
fn start_nodes(dir: &Path) -> Option<Vec<Process>> {
    let mut nodes = Vec::new();
    for nation in NATIONS {
        let own = dir.join(nation.to_lowercase());
        let mut child = Process(
            Command::new(env!("CARGO_BIN_EXE_entente"))
                .arg("node")
                .args(files(dir, nation))
                .arg("--certs")
                .arg(own.join("certs"))
                .arg("--data")
                .arg(own.join("data"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("the node starts"),
        );
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if !line.contains(&format!("{nation} node listening on")) {
            return None;
        }
        nodes.push(child);
    }
    Some(nodes)
}

/// Every file under `root`, with its contents, by path relative to it.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((relative, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Makes `nation`'s PKI from its two files and writes its bundle; returns
/// its CA fingerprint, as `certs export` prints it.
fn init_and_export(files: &[String], nation: &str, certs: &Path, bundle: &Path) -> String {
    ok(entente(
        &[
            "certs",
            "init",
            "--nation",
            nation,
            "--out",
            certs.to_str().unwrap(),
        ],
        files,
    ));
    let output = entente(
        &[
            "certs",
            "export",
            "--nation",
            nation,
            "--certs",
            certs.to_str().unwrap(),
            "--out",
            bundle.to_str().unwrap(),
        ],
        files,
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ok(output);
    let fingerprint = stderr
        .rsplit("coalition file: ")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(fingerprint.len(), 95, "{stderr}");
    fingerprint
}

#[test]
fn three_nations_with_their_own_keys_and_files_run_as_separate_nodes() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let coalition_path = dir.join("coalition.toml");
    let certs_of = |nation: &str| dir.join(nation.to_lowercase()).join("certs");
    let mut attempts = 0;
    let mut fingerprints = Vec::new();
    let nodes = loop {
        attempts += 1;
        assert!(attempts <= 5, "no free ports for three nodes");
        let held: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = held.iter().map(|s| s.local_addr().unwrap().port()).collect();
        drop(held);
        if attempts == 1 {
            std::fs::write(&coalition_path, coalition(&ports, &[])).unwrap();
            // Each nation writes its own national file, makes its own PKI
            // from its two files, and gives the others its bundle.
            for nation in NATIONS {
                std::fs::create_dir_all(dir.join(nation.to_lowercase())).unwrap();
                std::fs::write(national_path(dir, nation), national(nation)).unwrap();
                let bundle = dir.join(format!("{nation}.bundle.toml"));
                let fingerprint = init_and_export(&files(dir, nation), nation, &certs_of(nation), &bundle);
                fingerprints.push((nation, fingerprint));
            }
            // The coalition agrees on each member's CA.
            std::fs::write(&coalition_path, coalition(&ports, &fingerprints)).unwrap();

            // An impostor's LTU bundle: its CA did sign its node
            // certificate, but it is not the CA the coalition pinned.
            let impostor = dir.join("impostor");
            std::fs::create_dir_all(&impostor).unwrap();
            std::fs::write(impostor.join("coalition.toml"), coalition(&ports, &[])).unwrap();
            std::fs::write(impostor.join("LTU.toml"), national("LTU")).unwrap();
            let forged = impostor.join("LTU.bundle.toml");
            init_and_export(
                &two_files(&impostor.join("coalition.toml"), &impostor.join("LTU.toml")),
                "LTU",
                &impostor.join("certs"),
                &forged,
            );
            let before = tree(&certs_of("POL"));
            let refused = entente(
                &[
                    "certs",
                    "import",
                    forged.to_str().unwrap(),
                    "--certs",
                    certs_of("POL").to_str().unwrap(),
                ],
                &files(dir, "POL"),
            );
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert!(
                !refused.status.success()
                    && stderr.contains("the coalition file pins")
                    && stderr.contains("for LTU"),
                "{stderr}"
            );
            assert_eq!(tree(&certs_of("POL")), before, "a refused bundle changes nothing");

            for nation in NATIONS {
                let certs = certs_of(nation);
                for partner in NATIONS.iter().filter(|&&p| p != nation) {
                    let bundle = dir.join(format!("{partner}.bundle.toml"));
                    ok(entente(
                        &[
                            "certs",
                            "import",
                            bundle.to_str().unwrap(),
                            "--certs",
                            certs.to_str().unwrap(),
                        ],
                        &files(dir, nation),
                    ));
                }
                // Only its own nation's private keys are in its folder,
                // and no other nation's national file.
                let keys = private_keys(&certs);
                assert!(!keys.is_empty());
                assert!(
                    keys.iter().all(|k| k.starts_with(&format!("{nation}/"))),
                    "{nation}: {keys:?}"
                );
                let own_folder = tree(&dir.join(nation.to_lowercase()));
                for other in NATIONS.iter().filter(|&&p| p != nation) {
                    assert!(
                        !own_folder
                            .iter()
                            .any(|(path, _)| path.ends_with(&format!("{other}.toml"))),
                        "{nation} holds {other}'s national file"
                    );
                }
            }
        } else {
            std::fs::write(&coalition_path, coalition(&ports, &fingerprints)).unwrap();
        }
        if let Some(nodes) = start_nodes(dir) {
            break nodes;
        }
    };

    let (gbr, ltu) = (certs_of("GBR"), certs_of("LTU"));
    let mut sub = Process(
        Command::new(env!("CARGO_BIN_EXE_entente"))
            .args(["sub", "--as", "ltu.analyst", "--topic", "news.>"])
            .args(files(dir, "LTU"))
            .arg("--certs")
            .arg(&ltu)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = std::io::BufReader::new(sub.0.stdout.take().unwrap()).lines();
    // Until POL relays LTU's interest to GBR, GBR sends nothing there:
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
            "nothing crossed GBR → POL → LTU"
        );
        ok(entente(
            &[
                "pub",
                "--as",
                "gbr.analyst",
                "--topic",
                "news.gbr",
                "--label",
                "SECRET//REL TO GBR, POL, LTU",
                "--certs",
                gbr.to_str().unwrap(),
                "from London",
            ],
            &files(dir, "GBR"),
        ));
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
    };
    // LTU delivers it naming gbr.analyst, though neither LTU nor POL has
    // GBR's roster: GBR's seal vouches for the name.
    assert!(
        received.contains("from gbr.analyst (GBR)") && received.ends_with("from London"),
        "{received}"
    );

    // GBR's national file edited to name one of POL's principals: the
    // reload (SIGHUP) is refused, audited with the file and the reason,
    // and the node goes on under the files it had.
    let national = national_path(dir, "GBR");
    let genuine = std::fs::read_to_string(&national).unwrap();
    std::fs::write(
        &national,
        format!(
            "{genuine}\n[[principals]]\nname = \"pol.analyst\"\nnation = \"POL\"\nclearance = \"SECRET\"\n"
        ),
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &nodes[0].0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let audit = dir.join("gbr").join("data").join("audit.jsonl");
    let start = Instant::now();
    let refusal = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("reload") && l.contains("a principal of POL"))
        {
            break line.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the refused reload was not audited"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        refusal.contains("\"decision\":\"deny\"")
            && refusal.contains("GBR.toml")
            && refusal.contains("pol.analyst"),
        "{refusal}"
    );
    ok(entente(
        &[
            "pub",
            "--as",
            "gbr.analyst",
            "--topic",
            "news.gbr",
            "--label",
            "SECRET//REL TO GBR, POL, LTU",
            "--certs",
            gbr.to_str().unwrap(),
            "still served",
        ],
        &two_files(&dir.join("coalition.toml"), &{
            // The publisher's own copy of the genuine file.
            let copy = dir.join("gbr-genuine.toml");
            std::fs::write(&copy, &genuine).unwrap();
            copy
        }),
    ));
    // Past any later copy of the first publish loop's messages.
    let start = Instant::now();
    while !rx
        .recv_timeout(Duration::from_secs(30))
        .expect("GBR still serves")
        .ends_with("still served")
    {
        assert!(start.elapsed() < Duration::from_secs(30), "GBR no longer serves");
    }
}
