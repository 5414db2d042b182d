//! The audit log's hash chain, and checking it.
//!
//! Each line carries `seq`, its place in the chain (1 for the first record
//! of a log, counting on across restarts), and `prev`, the hex SHA-256 of
//! the previous record's line exactly as written (without its newline);
//! the first record's `prev` is [`GENESIS`]. So editing a record breaks the
//! next record's `prev`, and deleting one breaks the `prev` of the record
//! after it and leaves a gap in `seq`. A line that is not a JSON record (a
//! write cut short by a crash or a full disk) is not part of the chain: the
//! writer starts a new line after it and chains from the last whole record,
//! and [`verify`] reports it as torn.
//!
//! What the chain cannot show alone: records removed from the end of the
//! log, or a log rewritten from some point on with a recomputed chain.
//! Keeping the last hash [`verify`] reports somewhere else (a ticket, a
//! partner's copy) anchors everything before it.

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};

use ring::digest::{digest, SHA256};

/// The `prev` of a log's first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A SHA-256 hash of one line.
pub type Hash = [u8; 32];

/// The hash of a line, without its newline.
pub fn hash_line(line: &[u8]) -> Hash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, line).as_ref());
    hash
}

/// Lower-case hex, as written in `prev`.
pub fn hex(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for byte in hash {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// Reads a hash written as 64 hex digits.
pub fn parse_hash(text: &str) -> Option<Hash> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// Where a writer's chain stands: the hash of the last record and the
/// `seq` of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The hash of the last record written (all zeros before the first).
    pub prev: Hash,
    /// The `seq` the next record gets.
    pub seq: u64,
}

impl Link {
    /// The start of a new log.
    pub const GENESIS: Link = Link {
        prev: [0; 32],
        seq: 1,
    };
}

/// A JSON object: a whole record, as opposed to a torn line.
fn parse_record(line: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(line) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// How far back from the end [`last_link`] looks for a whole record.
const TAIL_LIMIT: u64 = 16 * 1024 * 1024;
const TAIL_CHUNK: u64 = 64 * 1024;

/// Where the chain of an existing log stands: after its last whole record
/// (lines that are not JSON records, such as one torn by a crash, are
/// skipped), or at [`Link::GENESIS`] for an empty log.
pub fn last_link(file: &mut File) -> io::Result<Link> {
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    // The end (exclusive) of the part of `buf` not yet looked at; it always
    // falls at the end of the file or just before a newline.
    let mut end_from_back = 0usize;
    loop {
        let mut end = buf.len() - end_from_back;
        loop {
            let line_start = match buf[..end].iter().rposition(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                None if start == 0 => 0,
                None => break,
            };
            let line = &buf[line_start..end];
            if let Some(record) = parse_record(line) {
                let seq = record.get("seq").and_then(serde_json::Value::as_u64);
                return Ok(Link {
                    prev: hash_line(line),
                    seq: seq.map_or(1, |seq| seq.saturating_add(1)),
                });
            }
            if line_start == 0 {
                return Ok(Link::GENESIS);
            }
            end = line_start - 1;
            end_from_back = buf.len() - end;
        }
        if start == 0 || len - start >= TAIL_LIMIT {
            return Ok(Link::GENESIS);
        }
        let chunk = TAIL_CHUNK.min(start);
        start -= chunk;
        let mut more = vec![0u8; usize::try_from(chunk).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut more)?;
        more.extend_from_slice(&buf);
        buf = more;
    }
}

/// Where the chain breaks, and what that most likely means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The line to look at: the edited line, or the first after a gap.
    pub line: u64,
    /// A sentence for people, starting with `line N:`.
    pub problem: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// How many whole records the log holds.
    pub records: u64,
    /// The hash of the last record (the genesis value for an empty log).
    pub last_hash: String,
    /// The `seq` of the last record, if it has one.
    pub last_seq: Option<u64>,
    /// Lines that are not JSON records and that the chain skips cleanly
    /// (writes cut short): a note, not a break.
    pub torn: Vec<u64>,
    /// Every place the chain breaks, first first.
    pub breaks: Vec<Break>,
}

impl Verification {
    /// Whether every record chains to the one before it.
    pub fn intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

/// Checks a log's chain: every line is a JSON record whose `prev` is the
/// hash of the record before it (or `start`, by default [`GENESIS`], for
/// the first). Reports each break by line number, telling an edited record
/// (its successor's `prev` no longer matches it, and `seq` runs on) from
/// deleted ones (a gap in `seq`), and carries on from the record after it.
pub fn verify(mut reader: impl BufRead, start: Option<Hash>) -> io::Result<Verification> {
    let mut report = Verification::default();
    let mut expected = start.unwrap_or([0; 32]);
    // The last whole record: its line number and seq.
    let mut last: Option<(u64, Option<u64>)> = None;
    // Lines that are not records since the last record.
    let mut torn_since: Vec<u64> = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let Some(record) = parse_record(&buf) else {
            torn_since.push(number);
            report.torn.push(number);
            continue;
        };
        let hash = hash_line(&buf);
        let seq = record.get("seq").and_then(serde_json::Value::as_u64);
        let prev = record.get("prev").and_then(serde_json::Value::as_str);
        match prev {
            Some(prev) if prev == hex(&expected) => {}
            None => report.breaks.push(Break {
                line: number,
                problem: format!(
                    "line {number}: has no prev: it was not written by a chaining writer, or was edited"
                ),
            }),
            Some(prev) => {
                let broken = diagnose(number, prev, seq, last, &torn_since, start.is_some());
                // Torn lines this break explains are not also notes.
                report.torn.retain(|line| !torn_since.contains(line));
                report.breaks.push(broken);
            }
        }
        expected = hash;
        last = Some((number, seq));
        torn_since.clear();
        report.records += 1;
        report.last_seq = seq;
    }
    report.last_hash = hex(&expected);
    Ok(report)
}

/// What a `prev` that does not match most likely means.
fn diagnose(
    number: u64,
    prev: &str,
    seq: Option<u64>,
    last: Option<(u64, Option<u64>)>,
    torn_since: &[u64],
    started_elsewhere: bool,
) -> Break {
    let Some((before, last_seq)) = last else {
        let what = if started_elsewhere {
            "does not match the hash it should follow (--prev)".to_owned()
        } else if prev == GENESIS {
            "does not start the chain".to_owned()
        } else {
            let missing = match seq {
                Some(seq) if seq > 1 => format!(" ({} records, seq 1 to {}, are not here)", seq - 1, seq - 1),
                _ => String::new(),
            };
            format!(
                "prev is not the genesis value: the records before it were deleted{missing}, \
                 or the log was rotated (then verify with --prev and the older file's last hash)"
            )
        };
        return Break {
            line: number,
            problem: format!("line {number}: {what}"),
        };
    };
    if let Some(&overwritten) = torn_since.first() {
        return Break {
            line: overwritten,
            problem: format!(
                "line {overwritten} is not a JSON record and line {number}'s prev does not match line {before}: \
                 line {overwritten} was edited or overwritten"
            ),
        };
    }
    match (last_seq, seq) {
        (Some(last_seq), Some(seq)) if seq == last_seq.saturating_add(1) => Break {
            line: before,
            problem: format!(
                "line {before}: edited: its hash no longer matches the prev recorded by line {number} \
                 (seq runs on from {last_seq} to {seq}, so nothing was deleted between them)"
            ),
        },
        (Some(last_seq), Some(seq)) if seq > last_seq => {
            let missing = seq - last_seq - 1;
            Break {
                line: number,
                problem: format!(
                    "line {number}: prev does not match line {before}: {missing} record(s) were deleted \
                     between them (seq jumps from {last_seq} to {seq})"
                ),
            }
        }
        (Some(last_seq), Some(seq)) => Break {
            line: number,
            problem: format!(
                "line {number}: prev does not match line {before}, and its seq ({seq}) does not follow \
                 line {before}'s ({last_seq}): records were moved, copied or inserted"
            ),
        },
        _ => Break {
            line: number,
            problem: format!(
                "line {number}: prev does not match line {before} (line {before} was edited, or lines \
                 between them were deleted)"
            ),
        },
    }
}

/// Verifies the log at `path`.
pub fn verify_file(path: &std::path::Path, start: Option<Hash>) -> io::Result<Verification> {
    verify(io::BufReader::new(File::open(path)?), start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` chained lines, as a writer makes them.
    fn chained(count: u64) -> Vec<String> {
        let mut link = Link::GENESIS;
        (0..count)
            .map(|n| {
                let line = format!(
                    r#"{{"reason":"r{n}","seq":{},"prev":"{}"}}"#,
                    link.seq,
                    hex(&link.prev)
                );
                link = Link {
                    prev: hash_line(line.as_bytes()),
                    seq: link.seq + 1,
                };
                line
            })
            .collect()
    }

    fn check(lines: &[String]) -> Verification {
        let mut text = lines.join("\n");
        text.push('\n');
        verify(text.as_bytes(), None).unwrap()
    }

    #[test]
    fn hex_round_trips() {
        let hash = hash_line(b"x");
        assert_eq!(parse_hash(&hex(&hash)), Some(hash));
        assert_eq!(hex(&[0; 32]), GENESIS);
        assert_eq!(parse_hash("zz"), None);
    }

    #[test]
    fn an_intact_chain_verifies_with_its_last_hash() {
        let lines = chained(5);
        let report = check(&lines);
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.records, 5);
        assert_eq!(report.last_hash, hex(&hash_line(lines[4].as_bytes())));
        assert_eq!(report.last_seq, Some(5));
    }

    #[test]
    fn an_edited_line_is_named() {
        let mut lines = chained(6);
        lines[2] = lines[2].replace("r2", "r9");
        let report = check(&lines);
        assert_eq!(report.breaks.len(), 1, "{report:?}");
        assert_eq!(report.breaks[0].line, 3);
        assert!(
            report.breaks[0].problem.starts_with("line 3: edited"),
            "{report:?}"
        );
    }

    #[test]
    fn a_deleted_line_is_named_where_the_chain_breaks() {
        let mut lines = chained(6);
        lines.remove(2);
        let report = check(&lines);
        assert_eq!(report.breaks.len(), 1, "{report:?}");
        assert_eq!(report.breaks[0].line, 3);
        assert!(
            report.breaks[0].problem.contains("1 record(s) were deleted"),
            "{report:?}"
        );
        let mut first_gone = chained(3);
        first_gone.remove(0);
        let report = check(&first_gone);
        assert_eq!(report.breaks[0].line, 1);
        assert!(report.breaks[0].problem.contains("genesis"), "{report:?}");
    }

    #[test]
    fn a_torn_line_is_noted_and_the_chain_continues_past_it() {
        let mut lines = chained(4);
        // A crash cut line 3 short; the writer then wrote it again whole.
        let torn = lines[2][..10].to_owned();
        lines.insert(2, torn);
        let report = check(&lines);
        assert!(report.intact(), "{report:?}");
        assert_eq!(report.torn, [3]);
        // Overwritten with junk instead: that line is named.
        let mut lines = chained(4);
        lines[1] = "garbage".into();
        let report = check(&lines);
        assert_eq!(report.breaks[0].line, 2, "{report:?}");
        assert!(report.torn.is_empty());
    }

    #[test]
    fn a_reopened_log_chains_from_its_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let lines = chained(3);
        std::fs::write(
            &path,
            format!("{}\n{}\n{}\n{{\"torn", lines[0], lines[1], lines[2]),
        )
        .unwrap();
        let link = last_link(&mut File::open(&path).unwrap()).unwrap();
        assert_eq!(link.prev, hash_line(lines[2].as_bytes()));
        assert_eq!(link.seq, 4);
        std::fs::write(&path, "").unwrap();
        assert_eq!(last_link(&mut File::open(&path).unwrap()).unwrap(), Link::GENESIS);
    }
}
