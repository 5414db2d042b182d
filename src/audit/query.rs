//! Searching audit logs: which records are about a message, a nation or a
//! principal, a decision, a reason or a time, and printing them as a table.
//!
//! Records are read as JSON, so a query works on any log this or an
//! earlier version wrote. Lines that are not records (torn) are skipped.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::client::escape_text;

/// What records must match; every field given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A message id, or the start of one: the record's `id`, or one of a
    /// summary's `ids`.
    pub id: Option<String>,
    /// A nation: the record's `node`, its subject or subjects (the nation
    /// itself, or a principal of it such as `gbr.analyst`), or a peer in
    /// `peers`.
    pub nation: Option<String>,
    /// A principal or other subject, exactly: `subject` or one of `subjects`.
    pub principal: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// A reason code such as `not-releasable`.
    pub reason: Option<String>,
    /// An event such as `deliver` or `refuse`.
    pub event: Option<String>,
    /// Records at or after this time (microseconds since the epoch).
    pub since_us: Option<u64>,
    /// Records at or before this time (microseconds since the epoch).
    pub until_us: Option<u64>,
}

fn text<'a>(record: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    record.get(key).and_then(Value::as_str)
}

fn texts<'a>(record: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a str> {
    record
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether `subject` is `nation` or one of its principals (`gbr.analyst`
/// for GBR).
fn of_nation(subject: &str, nation: &str) -> bool {
    subject.eq_ignore_ascii_case(nation)
        || subject
            .split_once('.')
            .is_some_and(|(prefix, _)| prefix.eq_ignore_ascii_case(nation))
}

impl Filter {
    /// Whether a record (one parsed line) matches.
    ///
    /// A `forward` record holds each peer's own decision and reason: with
    /// `--decision` or `--reason` it matches if the record's own decision
    /// and reason do, or if one peer's do (the peer named by `--nation`,
    /// when it is given). So `--nation DEU --decision deny` finds messages
    /// withheld from DEU even when they went to others.
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        if let Some(id) = &self.id {
            let id = id.to_ascii_lowercase();
            let hit = |candidate: &str| candidate.to_ascii_lowercase().starts_with(&id);
            if !(text(record, "id").is_some_and(hit) || texts(record, "ids").any(hit)) {
                return false;
            }
        }
        if let Some(principal) = &self.principal {
            if !(text(record, "subject") == Some(principal.as_str())
                || texts(record, "subjects").any(|s| s == principal))
            {
                return false;
            }
        }
        if let Some(event) = &self.event {
            if !text(record, "event").is_some_and(|e| e.eq_ignore_ascii_case(event)) {
                return false;
            }
        }
        if !self.in_time(record) {
            return false;
        }
        self.whole_record_matches(record) || self.a_peer_matches(record)
    }

    fn in_time(&self, record: &Map<String, Value>) -> bool {
        let time = record.get("time_us").and_then(Value::as_u64).unwrap_or(0);
        // A summary stands for decisions from first_us to last_us.
        let first = record.get("first_us").and_then(Value::as_u64).unwrap_or(time);
        let last = record.get("last_us").and_then(Value::as_u64).unwrap_or(time);
        self.since_us.is_none_or(|since| last.max(time) >= since)
            && self.until_us.is_none_or(|until| first.min(time) <= until)
    }

    fn whole_record_matches(&self, record: &Map<String, Value>) -> bool {
        if let Some(nation) = &self.nation {
            let hit = text(record, "node").is_some_and(|n| n.eq_ignore_ascii_case(nation))
                || text(record, "subject").is_some_and(|s| of_nation(s, nation))
                || texts(record, "subjects").any(|s| of_nation(s, nation));
            if !hit {
                return false;
            }
        }
        let same = |key: &str, wanted: &Option<String>| {
            wanted
                .as_ref()
                .is_none_or(|wanted| text(record, key).is_some_and(|v| v.eq_ignore_ascii_case(wanted)))
        };
        same("decision", &self.decision) && same("reason", &self.reason)
    }

    fn a_peer_matches(&self, record: &Map<String, Value>) -> bool {
        let Some(peers) = record.get("peers").and_then(Value::as_array) else {
            return false;
        };
        peers.iter().filter_map(Value::as_object).any(|peer| {
            let same = |key: &str, wanted: &Option<String>| {
                wanted
                    .as_ref()
                    .is_none_or(|wanted| text(peer, key).is_some_and(|v| v.eq_ignore_ascii_case(wanted)))
            };
            same("peer", &self.nation) && same("decision", &self.decision) && same("reason", &self.reason)
        })
    }
}

/// Reads a time given as RFC 3339 (`2025-03-01T12:00:00Z`,
/// `2025-03-01T13:00:00.5+01:00`) or as microseconds since the Unix epoch.
pub fn parse_time(input: &str) -> Result<u64, String> {
    if let Ok(micros) = input.parse::<u64>() {
        return Ok(micros);
    }
    let time = OffsetDateTime::parse(input, &Rfc3339).map_err(|err| {
        format!(
            "`{input}` is neither an RFC 3339 time such as 2025-03-01T12:00:00Z nor microseconds since the epoch: {err}"
        )
    })?;
    u64::try_from(time.unix_timestamp_nanos() / 1000).map_err(|_| format!("`{input}` is before 1970"))
}

/// A time in microseconds since the epoch as RFC 3339 in UTC, to the
/// microsecond.
pub fn format_time(micros: u64) -> String {
    let nanos = i128::from(micros) * 1000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| micros.to_string())
}

/// The columns of [`table_row`].
pub fn table_header() -> String {
    format!(
        "{:<27}  {:<4}  {:<10}  {:<8}  {:<22}  {:<24}  {}",
        "TIME", "NODE", "EVENT", "DECISION", "REASON", "SUBJECT", "ID"
    )
}

/// One record as a table row: time, node, event, decision, reason, subject
/// (or subjects, or each peer's outcome), id (or a summary's count). Text
/// from the log is escaped, as the CLI does with everything from the network.
pub fn table_row(record: &Map<String, Value>) -> String {
    let field = |key: &str| escape_text(text(record, key).unwrap_or("-"));
    let time = record
        .get("time_us")
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_owned(), format_time);
    let subjects: Vec<&str> = texts(record, "subjects").collect();
    let peers: Vec<String> = record
        .get("peers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .map(|peer| {
            format!(
                "{}:{}",
                text(peer, "peer").unwrap_or("?"),
                text(peer, "reason").unwrap_or("?")
            )
        })
        .collect();
    let subject = if let Some(subject) = text(record, "subject") {
        escape_text(subject)
    } else if !subjects.is_empty() {
        escape_text(&subjects.join(","))
    } else if !peers.is_empty() {
        escape_text(&peers.join(","))
    } else {
        "-".to_owned()
    };
    let id = match (text(record, "id"), record.get("count").and_then(Value::as_u64)) {
        (Some(id), _) => escape_text(id),
        (None, Some(count)) => format!("({count} counted)"),
        (None, None) => "-".to_owned(),
    };
    format!(
        "{time:<27}  {:<4}  {:<10}  {:<8}  {:<22}  {subject:<24}  {id}",
        field("node"),
        field("event"),
        field("decision"),
        field("reason"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn times_read_as_rfc3339_or_microseconds() {
        assert_eq!(parse_time("1700000000000000"), Ok(1_700_000_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500_000)
        );
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert_eq!(format_time(1_700_000_000_000_001), "2023-11-14T22:13:20.000001Z");
    }

    #[test]
    fn a_forward_record_matches_by_one_peers_outcome() {
        let forward = record(
            r#"{"node":"GBR","time_us":5,"event":"forward","decision":"allow","reason":"mixed","id":"ab12",
               "peers":[{"peer":"FRA","decision":"allow","reason":"policy-allows"},
                        {"peer":"DEU","decision":"deny","reason":"not-releasable"}]}"#,
        );
        let filter = |nation: &str, decision: &str| Filter {
            nation: Some(nation.into()),
            decision: Some(decision.into()),
            ..Filter::default()
        };
        assert!(filter("DEU", "deny").matches(&forward));
        assert!(!filter("DEU", "allow").matches(&forward));
        assert!(filter("FRA", "allow").matches(&forward));
        assert!(filter("GBR", "allow").matches(&forward), "the node's own line");
        assert!(!filter("USA", "deny").matches(&forward));
        let reason = Filter {
            reason: Some("not-releasable".into()),
            ..Filter::default()
        };
        assert!(reason.matches(&forward));
    }

    #[test]
    fn nation_matches_its_principals_and_id_a_prefix_or_a_summarys_ids() {
        let deliver = record(
            r#"{"node":"FRA","time_us":5,"event":"deliver","decision":"allow","reason":"policy-allows",
               "id":"ab12cd","subjects":["gbr.analyst","fra.analyst"]}"#,
        );
        let summary = record(
            r#"{"node":"FRA","time_us":50,"event":"refuse","decision":"deny","reason":"bad-signature",
               "subject":"USA","count":3,"first_us":10,"last_us":40,"ids":["ffee01","ab12cd"]}"#,
        );
        let nation = |n: &str| Filter {
            nation: Some(n.into()),
            ..Filter::default()
        };
        assert!(nation("GBR").matches(&deliver));
        assert!(!nation("GB").matches(&deliver));
        assert!(nation("USA").matches(&summary));
        let id = Filter {
            id: Some("AB12".into()),
            ..Filter::default()
        };
        assert!(id.matches(&deliver) && id.matches(&summary));
        let window = |since: u64, until: u64| Filter {
            since_us: Some(since),
            until_us: Some(until),
            ..Filter::default()
        };
        assert!(window(20, 30).matches(&summary), "the summary spans 10 to 50");
        assert!(!window(51, 60).matches(&summary));
        assert!(!window(6, 9).matches(&deliver));
    }
}
