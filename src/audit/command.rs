//! `entente audit verify` and `entente audit query`: what they read, check
//! and print. `main.rs` only parses their arguments.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::chain::{self, Hash};
use super::query::{self, Filter};

/// Every `<data>/<NATION>/audit.jsonl`, in order: the logs `entente up`
/// and `entente node` write by default.
pub fn default_logs(data: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(data)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("audit.jsonl"))
        .filter(|path| path.is_file())
        .collect();
    logs.sort();
    logs
}

/// Verifies each log and prints what it found: each break by line number,
/// each torn line, and a summary. Returns whether every chain is intact.
/// `start` is the hash the first log's first record follows, when it
/// continues an older file.
pub fn verify(files: &[PathBuf], start: Option<Hash>, out: &mut impl Write) -> io::Result<bool> {
    let mut intact = true;
    for path in files {
        let shown = path.display();
        let report = match chain::verify_file(path, start) {
            Ok(report) => report,
            Err(err) => {
                writeln!(out, "{shown}: cannot read it: {err}")?;
                intact = false;
                continue;
            }
        };
        for line in &report.torn {
            writeln!(
                out,
                "{shown}: line {line}: torn: not a whole JSON record (a write cut short, as by a crash \
                 or a full disk); the chain continues past it"
            )?;
        }
        for broken in &report.breaks {
            writeln!(out, "{shown}: {}", broken.problem)?;
        }
        let seq = report
            .last_seq
            .map_or_else(String::new, |seq| format!(" (seq {seq})"));
        if report.intact() {
            writeln!(
                out,
                "{shown}: {} records, chain intact, last hash {}{seq}",
                report.records, report.last_hash
            )?;
        } else {
            intact = false;
            writeln!(
                out,
                "{shown}: {} records, chain BROKEN at {} place(s), first at line {}; last hash {}{seq}",
                report.records,
                report.breaks.len(),
                report.breaks[0].line,
                report.last_hash
            )?;
        }
    }
    Ok(intact)
}

/// Prints the records of `files` that match `filter`: each line as stored,
/// or as a table sorted by time (records of one time keep their order in
/// the files, so several nodes' logs read as one story). Returns how many
/// matched.
pub fn query(files: &[PathBuf], filter: &Filter, table: bool, out: &mut impl Write) -> io::Result<u64> {
    let mut matched = 0;
    let mut rows = Vec::new();
    for path in files {
        let file = std::fs::File::open(path)
            .map_err(|err| io::Error::new(err.kind(), format!("cannot read {}: {err}", path.display())))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        for number in 0u64.. {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            // A last line without its newline is one a running node is
            // still writing: it is read next time, whole.
            if line.pop() != Some(b'\n') {
                break;
            }
            let record = match serde_json::from_slice(&line) {
                Ok(serde_json::Value::Object(record)) => record,
                _ => {
                    eprintln!(
                        "{}: line {}: not a JSON record, skipped",
                        path.display(),
                        number + 1
                    );
                    continue;
                }
            };
            if !filter.matches(&record) {
                continue;
            }
            matched += 1;
            if table {
                let time_us = record
                    .get("time_us")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                rows.push((time_us, query::table_row(&record)));
            } else {
                // As stored, byte for byte: it is JSON, so it escapes itself.
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            }
        }
    }
    if table {
        rows.sort_by_key(|(time_us, _)| *time_us);
        writeln!(out, "{}", query::table_header())?;
        for (_, row) in rows {
            writeln!(out, "{row}")?;
        }
    }
    Ok(matched)
}
