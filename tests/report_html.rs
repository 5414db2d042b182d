//! The report page as a browser draws it: the sample report rendered to
//! HTML, then to a PNG by headless Chromium through
//! `scripts/report-screenshot.sh`.
//!
//! Needs Chromium. Without it the test installs it (through the script)
//! only when `ENTENTE_INSTALL_CHROMIUM=1`, or when running as root with
//! apt-get; otherwise, or if the install fails, it says so and skips. Set `ENTENTE_REPORT_OUT` to a
//! folder to keep the `report.html` and `report.png` it made.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use entente::sim::html::{render, sample_report};

/// `name` on the PATH, if there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|file| file.is_file())
    })
}

fn chromium_installed() -> bool {
    on_path("chromium").is_some() || on_path("chromium-browser").is_some()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Whether the script may install Chromium here.
fn may_install() -> bool {
    std::env::var("ENTENTE_INSTALL_CHROMIUM").is_ok_and(|v| v == "1")
        || (running_as_root() && on_path("apt-get").is_some())
}

#[test]
fn the_sample_report_renders_to_a_png_in_chromium() {
    let installed = chromium_installed();
    if !installed && !may_install() {
        eprintln!(
            "SKIPPED: Chromium is not installed (neither `chromium` nor `chromium-browser` is on \
             the PATH). Install it (apt-get install -y chromium), or run with \
             ENTENTE_INSTALL_CHROMIUM=1 to let scripts/report-screenshot.sh install it."
        );
        return;
    }
    let kept = std::env::var_os("ENTENTE_REPORT_OUT").map(PathBuf::from);
    let temp = tempfile::tempdir().expect("a temporary folder");
    let dir: &Path = kept.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(dir).expect("the output folder");
    let html = dir.join("report.html");
    let png = dir.join("report.png");
    let _ = std::fs::remove_file(&png);
    std::fs::write(&html, render(&sample_report())).expect("report.html written");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/report-screenshot.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&html)
        .arg(&png)
        .output()
        .expect("the screenshot script runs");
    let took = started.elapsed();
    if !out.status.success() && !chromium_installed() {
        eprintln!(
            "SKIPPED: Chromium is not installed and installing it failed (no apt access?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "screenshot in {took:.1?}: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let bytes = std::fs::read(&png).expect("the PNG exists");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &bytes[..bytes.len().min(8)]
    );
    assert!(
        bytes.len() > 20_000,
        "a {} byte PNG is too small to hold the page",
        bytes.len()
    );
    // The IHDR chunk: 1400 px wide, and tall enough for the whole page
    // (header, map, matrix, latency, timeline, tables).
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!(width, 1400, "{width}×{height}");
    assert!(height > 2500, "{width}×{height}");
    assert!(
        !installed || took < Duration::from_secs(60),
        "rendering took {took:?}"
    );
}
