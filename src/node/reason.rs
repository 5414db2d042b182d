//! The node's own stable reason codes: what its audit records and its
//! `Refused` frames say about connections, links, seals and sessions.
//! Audit logs are read and searched by these codes, so a code's text never
//! changes.

use std::fmt;

/// A node-level reason code (the policy's and the routing core's have
/// their own enums).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A TLS handshake that did not complete.
    HandshakeFailed,
    /// A connection without a usable identity in its certificate.
    NoIdentity,
    /// A principal of this node's nation, admitted as a session.
    OwnPrincipal,
    /// A configured peer's node, admitted as a link.
    ConfiguredPeer,
    /// The other side broke the protocol; its connection is closed.
    ProtocolViolation,
    /// A connection that went away.
    ConnectionEnded,
    /// A session that ended cleanly.
    SessionEnded,
    /// A subscriber whose queue was full, disconnected.
    SlowConsumer,
    /// A link whose queue was full, cut: its peer does not keep up.
    PeerStalled,
    /// A link this node dialed came up.
    LinkUp,
    /// A link this node dialed went down, or was down when used.
    LinkDown,
    /// A seal that checked out.
    Verified,
    /// A message dropped from a durable subscription that was full.
    DurableFull,
    /// A message for a plain subscription whose subscriber was away:
    /// counted by its watch, not kept.
    SubscriberAway,
    /// A message that waited for a durable subscription past its age limit.
    DurableExpired,
    /// An envelope taken on its origin's own link before its seal came:
    /// the mutual-TLS connection proves who sent it.
    OriginLink,
    /// A sealed envelope taken on its tag for this node, before the
    /// signature behind it was checked.
    TagVerified,
    /// A seal that did not.
    BadSignature,
    /// An envelope whose link ended before its seal came.
    Unsealed,
    /// A frame that could not be encoded.
    EncodeFailed,
    /// A publish, delivery or forward the policy allowed.
    PolicyAllows,
    /// A publish on a topic that does not parse.
    BadTopic,
    /// A publish with a marking that does not parse.
    BadMarking,
    /// A publish whose payload is over the limit.
    PayloadTooLarge,
    /// A subscription to a pattern that does not parse.
    BadPattern,
    /// A peer's inbound link, closed because a newer one from the same
    /// peer replaced it (one inbound link per peer).
    LinkReplaced,
    /// A message queued for a nation that was cut out: purged, never sent.
    Cut,
    /// A peer that cut this nation out: nothing is held for it until it
    /// links again.
    CutBy,
    /// A nation's CRL is past its next update.
    CrlExpired,
    /// A nation's CA is not the one the coalition file pins.
    CaMismatch,
    /// A coalition resolution, or signatures of one, taken.
    Resolution,
    /// A resolution, or a signature of one, refused.
    BadResolution,
    /// A peer's link sends refused resolution signatures faster than they
    /// may be checked: what it sends is not checked for a while.
    ResolutionRate,
    /// A message queued for a peer the rules no longer admit (revoked, or
    /// gone from the network file): purged, never sent.
    NoLongerAdmitted,
    /// A principal without the admin role asked for an admin command.
    NotAdmin,
    /// An admin principal's command, carried out.
    AdminCommand,
    /// The node's rules changed: reload, cut or restore.
    PolicyChanged,
    /// A principal's entry in the network file changed: its session
    /// ends, so it reconnects under the new entry.
    PrincipalChanged,
    /// A certificate the new CAs and CRLs no longer accept.
    CertificateRejected,
    /// A principal already holding `max_sessions_per_principal` sessions.
    TooManySessions,
    /// A connection attempt past `max_connections`, refused before TLS.
    TooManyConnections,
    /// Connection attempts past the handshake rate limit, refused before TLS.
    TooManyHandshakes,
    /// A publish, subscription or peer's link refused because the node
    /// cannot write its audit log: it takes nothing it could not record.
    AuditUnavailable,
    /// A message queued for a session that ended before it was written
    /// to the client: not delivered.
    SessionClosed,
    /// A node task panicked; what it held is reported, not swallowed.
    TaskPanicked,
    /// A message for a peer whose link is down, kept in its outbox until
    /// the link returns.
    Held,
    /// A message for a peer whose outbox was full: not kept for it.
    OutboxFull,
    /// A message that waited in a peer's outbox past the age limit.
    Expired,
    /// A publish whose custody could not be stored.
    StoreFailed,
}

impl Reason {
    /// The stable code, as audit records print it.
    pub fn code(self) -> &'static str {
        match self {
            Reason::HandshakeFailed => "handshake-failed",
            Reason::Resolution => "resolution",
            Reason::CrlExpired => "crl-expired",
            Reason::CaMismatch => "ca-mismatch",
            Reason::CutBy => "cut-by",
            Reason::BadResolution => "bad-resolution",
            Reason::ResolutionRate => "resolution-rate",
            Reason::NoIdentity => "no-identity",
            Reason::OwnPrincipal => "own-principal",
            Reason::ConfiguredPeer => "configured-peer",
            Reason::ProtocolViolation => "protocol-violation",
            Reason::ConnectionEnded => "connection-ended",
            Reason::SessionEnded => "session-ended",
            Reason::SlowConsumer => "slow-consumer",
            Reason::PeerStalled => "peer-stalled",
            Reason::LinkUp => "link-up",
            Reason::LinkDown => "link-down",
            Reason::Verified => "verified",
            Reason::DurableFull => "durable-full",
            Reason::SubscriberAway => "subscriber-away",
            Reason::DurableExpired => "durable-expired",
            Reason::OriginLink => "origin-link",
            Reason::TagVerified => "tag-verified",
            Reason::BadSignature => "bad-signature",
            Reason::Unsealed => "unsealed",
            Reason::EncodeFailed => "encode-failed",
            Reason::PolicyAllows => "policy-allows",
            Reason::BadTopic => "bad-topic",
            Reason::BadMarking => "bad-marking",
            Reason::PayloadTooLarge => "payload-too-large",
            Reason::BadPattern => "bad-pattern",
            Reason::LinkReplaced => "link-replaced",
            Reason::Cut => "cut",
            Reason::NoLongerAdmitted => "no-longer-admitted",
            Reason::NotAdmin => "not-admin",
            Reason::AdminCommand => "admin-command",
            Reason::PolicyChanged => "policy-changed",
            Reason::PrincipalChanged => "principal-changed",
            Reason::CertificateRejected => "certificate-rejected",
            Reason::TooManySessions => "too-many-sessions",
            Reason::TooManyConnections => "too-many-connections",
            Reason::TooManyHandshakes => "too-many-handshakes",
            Reason::AuditUnavailable => "audit-unavailable",
            Reason::SessionClosed => "session-closed",
            Reason::TaskPanicked => "task-panicked",
            Reason::Held => "held",
            Reason::OutboxFull => "outbox-full",
            Reason::Expired => "expired",
            Reason::StoreFailed => "store-failed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
