//! Accepting a connection: the gate in front of the handshake (a cap on
//! connections and a rate limit on handshakes, both before any TLS work),
//! the TLS handshake (inside the connection's own task, never in the
//! accept loop), the identity it proved, the policy's admission decision
//! and the cap on sessions per principal, which hand the connection to a
//! session, to an inbound link, or close it with a reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use quinn::{Connection, VarInt};
use rustls_pki_types::CertificateDer;
use tracing::{info, info_span, warn, Instrument};

use super::{inbound, session, Reason, Shared};
use crate::audit::{self, Event, Record, Verdict};
use crate::identity::{claimed_identity, Identity, IdentityError};
use crate::policy::Admission;
use crate::wire::close;

/// The identity a connection proved in its handshake.
fn connection_identity(connection: &Connection) -> Result<Identity, IdentityError> {
    let chain = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(IdentityError::NoCertificate)?;
    claimed_identity(chain.first().ok_or(IdentityError::NoCertificate)?)
}

/// Handshake, then admission: own-nation principals become sessions,
/// configured peers become links, everyone else is refused with a reason.
/// `_slot` holds the connection's place under `max_connections` until
/// this returns, whichever way it does.
pub(super) async fn accept(shared: Arc<Shared>, incoming: quinn::Incoming, _slot: ConnectionSlot) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(err) => {
            warn!(%remote, cause = %err, "handshake failed");
            shared
                .audit(
                    // The address without its port, so a flood from one host is one source.
                    Record::new(Event::Refuse, Verdict::Deny, Reason::HandshakeFailed.code())
                        .subject(remote.ip())
                        .detail(err),
                )
                .await;
            return;
        }
    };
    let identity = match connection_identity(&connection) {
        Ok(identity) => identity,
        Err(err) => {
            refuse(
                &shared,
                &connection,
                remote.to_string(),
                Reason::NoIdentity.code(),
                err.to_string(),
            )
            .await;
            return;
        }
    };
    let span = info_span!("conn", who = %identity, %remote);
    let rules = shared.rules();
    match rules.policy.admit(shared.nation, &identity) {
        Ok(Admission::Principal(principal)) => {
            let principal = Arc::new(principal.clone());
            let limit = shared.settings.max_sessions_per_principal;
            let Some(_session_slot) = SessionSlot::take(&shared.principal_sessions, &principal.name, limit)
            else {
                let _guard = span.enter();
                let message = format!(
                    "too many sessions: {} already holds {limit}, the most this node allows one principal; close one first",
                    principal.name
                );
                refuse(
                    &shared,
                    &connection,
                    principal.name.clone(),
                    Reason::TooManySessions.code(),
                    message,
                )
                .await;
                return;
            };
            info!(parent: &span, "admitted");
            shared
                .audit(
                    Record::new(Event::Admit, Verdict::Allow, Reason::OwnPrincipal.code())
                        .subject(&principal.name),
                )
                .await;
            session::serve(shared, connection, principal)
                .instrument(span)
                .await;
        }
        Ok(Admission::Peer(peer)) => {
            info!(parent: &span, "admitted peer link");
            shared
                .audit(Record::new(Event::Admit, Verdict::Allow, Reason::ConfiguredPeer.code()).subject(peer))
                .await;
            inbound::serve(shared, connection, peer).instrument(span).await;
        }
        Err(refusal) => {
            let _guard = span.enter();
            refuse(
                &shared,
                &connection,
                identity.to_string(),
                refusal.reason.code(),
                refusal.message,
            )
            .await;
        }
    }
}

async fn refuse(
    shared: &Shared,
    connection: &Connection,
    subject: String,
    code: &'static str,
    reason: String,
) {
    warn!(code, %reason, "refused");
    connection.close(VarInt::from_u32(close::REFUSED), reason.as_bytes());
    shared
        .audit(
            Record::new(Event::Refuse, Verdict::Deny, code)
                .subject(subject)
                .detail(reason),
        )
        .await;
}

/// A connection's place under `max_connections`, given back when dropped,
/// so every way a connection task ends releases it.
pub(super) struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of a principal's sessions, under `max_sessions_per_principal`,
/// given back when dropped.
struct SessionSlot {
    sessions: Arc<DashMap<String, usize>>,
    principal: String,
}

impl SessionSlot {
    /// A slot for one more session of `principal`, if it holds fewer than
    /// `limit`.
    fn take(sessions: &Arc<DashMap<String, usize>>, principal: &str, limit: usize) -> Option<SessionSlot> {
        {
            // The guard goes before the slot exists: its drop takes the
            // same entry.
            let mut held = sessions.entry(principal.to_owned()).or_insert(0);
            if *held >= limit {
                return None;
            }
            *held += 1;
        }
        Some(SessionSlot {
            sessions: sessions.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Some(mut held) = self.sessions.get_mut(&self.principal) {
            *held = held.saturating_sub(1);
        }
        self.sessions.remove_if(&self.principal, |_, held| *held == 0);
    }
}

/// How often refusals at the gate are written, at most, per reason: one
/// record with a count stands for every refusal since the last, so a
/// flood of attempts cannot flood the audit log, and none goes unrecorded.
const REFUSAL_REPORT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Refusals {
    count: u64,
    latest: Option<std::net::SocketAddr>,
    /// When the first and the latest refusal counted came, in audit time.
    first_us: u64,
    last_us: u64,
    written: Option<Instant>,
}

/// What stands in front of the handshake, in the accept loop: a cap on
/// the connections held at once, and a token bucket on handshakes started.
/// Both refuse with `Incoming::refuse` (QUIC's "connection refused"),
/// before any TLS work: the point is that a flood costs the node next to
/// nothing, and a handshake is what costs (a signature and a check).
pub(super) struct Gate {
    open: Arc<AtomicUsize>,
    max_connections: usize,
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    refusals: BTreeMap<&'static str, Refusals>,
}

impl Gate {
    pub(super) fn new(max_connections: usize, per_second: u32, burst: u32, now: Instant) -> Gate {
        let burst = f64::from(burst.max(1));
        Gate {
            open: Arc::new(AtomicUsize::new(0)),
            max_connections,
            rate: f64::from(per_second),
            burst,
            tokens: burst,
            refilled: now,
            refusals: BTreeMap::new(),
        }
    }

    /// A slot for a new connection attempt, or the reason to refuse it.
    /// The cap is checked first, so an attempt refused for it spends no
    /// handshake token.
    pub(super) fn admit(&mut self, now: Instant) -> Result<ConnectionSlot, Reason> {
        if self.open.load(Ordering::Acquire) >= self.max_connections {
            return Err(Reason::TooManyConnections);
        }
        self.tokens = (self.tokens + now.saturating_duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(self.burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Err(Reason::TooManyHandshakes);
        }
        self.tokens -= 1.0;
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(ConnectionSlot(self.open.clone()))
    }

    /// Counts a refusal; returns its audit record if one is due (the first
    /// refusal, then at most one a [`REFUSAL_REPORT`] per reason).
    pub(super) fn refused(
        &mut self,
        reason: Reason,
        remote: std::net::SocketAddr,
        now: Instant,
    ) -> Option<Record> {
        let entry = self.refusals.entry(reason.code()).or_default();
        let at = audit::now_us();
        if entry.count == 0 {
            entry.first_us = at;
        }
        entry.count += 1;
        entry.latest = Some(remote);
        entry.last_us = at;
        let due = entry
            .written
            .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_REPORT);
        due.then(|| self.report(reason.code(), now)).flatten()
    }

    /// The records of refusals counted but not written yet, once their
    /// [`REFUSAL_REPORT`] has passed; the accept loop calls it every so often.
    pub(super) fn overdue(&mut self, now: Instant) -> Vec<Record> {
        let due: Vec<&'static str> = self
            .refusals
            .iter()
            .filter(|(_, r)| {
                r.count > 0
                    && r.written
                        .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_REPORT)
            })
            .map(|(&code, _)| code)
            .collect();
        due.into_iter()
            .filter_map(|code| self.report(code, now))
            .collect()
    }

    fn report(&mut self, code: &'static str, now: Instant) -> Option<Record> {
        let entry = self.refusals.get_mut(code)?;
        if entry.count == 0 {
            return None;
        }
        let why = if code == Reason::TooManyConnections.code() {
            format!(
                "the node holds its limit of {} connections (max_connections)",
                self.max_connections
            )
        } else {
            format!(
                "more than {} handshakes a second were asked for (handshakes_per_second)",
                self.rate
            )
        };
        let mut record = Record::new(Event::Refuse, Verdict::Deny, code).detail(format!(
            "refused {} connection attempt(s) before TLS, the latest from {}: {why}",
            entry.count,
            entry.latest.map_or_else(|| "?".to_owned(), |a| a.to_string()),
        ));
        // The count goes in `summary` as well as in the prose, so the
        // audit's counting rule (each line's `count`, or 1) counts every
        // refusal this record stands for; a summary also passes the audit
        // aggregator as it is, rather than being counted again there.
        record.summary = Some(Box::new(audit::Summary {
            count: entry.count,
            first_us: entry.first_us,
            last_us: entry.last_us,
            ids: Vec::new(),
        }));
        // The address without its port, as for a failed handshake, so a
        // flood from one host is one source.
        if let Some(remote) = entry.latest {
            record = record.subject(remote.ip());
        }
        entry.count = 0;
        entry.written = Some(now);
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> std::net::SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn the_gate_caps_connections_and_rations_handshakes() {
        let start = Instant::now();
        let mut gate = Gate::new(3, 10, 2, start);
        let a = gate.admit(start).unwrap();
        let _b = gate.admit(start).unwrap();
        // The burst is spent: the next attempt waits for a token.
        assert_eq!(gate.admit(start).err(), Some(Reason::TooManyHandshakes));
        let later = start + Duration::from_millis(100);
        let _c = gate.admit(later).unwrap();
        // Three held: the cap refuses, whatever the tokens.
        let much_later = start + Duration::from_secs(5);
        assert_eq!(gate.admit(much_later).err(), Some(Reason::TooManyConnections));
        drop(a);
        assert!(gate.admit(much_later).is_ok());
    }

    #[test]
    fn refusals_are_written_once_a_second_with_a_count() {
        let start = Instant::now();
        let mut gate = Gate::new(1, 1, 1, start);
        assert!(gate.refused(Reason::TooManyHandshakes, remote(), start).is_some());
        for _ in 0..99 {
            assert!(gate.refused(Reason::TooManyHandshakes, remote(), start).is_none());
        }
        assert!(gate.overdue(start).is_empty());
        let records = gate.overdue(start + REFUSAL_REPORT);
        assert_eq!(records.len(), 1);
        let detail = records[0].detail.clone().unwrap();
        assert!(detail.starts_with("refused 99 connection attempt(s)"), "{detail}");
        let summary = records[0].summary.as_deref().unwrap();
        assert_eq!(summary.count, 99);
        assert!(summary.first_us <= summary.last_us, "{summary:?}");
        assert_eq!(records[0].subject.as_deref(), Some("127.0.0.1"));
        assert!(gate.overdue(start + 3 * REFUSAL_REPORT).is_empty());
    }

    #[test]
    fn a_principal_holds_at_most_its_sessions() {
        let sessions = Arc::new(DashMap::new());
        let first = SessionSlot::take(&sessions, "gbr.analyst", 2).unwrap();
        let _second = SessionSlot::take(&sessions, "gbr.analyst", 2).unwrap();
        assert!(SessionSlot::take(&sessions, "gbr.analyst", 2).is_none());
        assert!(SessionSlot::take(&sessions, "gbr.clerk", 2).is_some());
        drop(first);
        assert!(SessionSlot::take(&sessions, "gbr.analyst", 2).is_some());
    }
}
