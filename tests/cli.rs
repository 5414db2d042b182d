//! The `entente` binary as a user runs it: exit codes, messages and JSON.

use std::process::{Command, Output};

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
