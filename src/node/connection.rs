//! What every admitted connection shares: its stream opened with `Hello`,
//! reading frames in batches, and how a connection whose stream failed
//! ends (`StreamError`, `close_after`).

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Reason, Shared};
use crate::audit::{Event, Record, Verdict};
use crate::stream::FrameReader;
use crate::wire::{self, close, Frame, WireError};

/// Why a session or link stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamError {
    #[error(transparent)]
    Frame(#[from] crate::stream::StreamError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("no {0} within the first-frame timeout")]
    Timeout(&'static str),
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("the coalition's resolutions could not be applied: {0}")]
    Resolutions(String),
    #[error("{0} messages are waiting for seals that have not come; a peer sends the seals of each batch right after it")]
    Unsealed(usize),
    #[error("protocol version {0} is not supported; this node speaks version {v}", v = wire::PROTOCOL_VERSION)]
    Version(u32),
    #[error("{0} bad seals in one batch: a peer's seals never fail unless it tampers")]
    BadSeals(usize),
    #[error("{0}")]
    MisshapenSeals(crate::envelope::EnvelopeError),
    #[error("the node cannot write its audit log ({0}), so it takes nothing from peers until it can")]
    AuditUnavailable(String),
    #[error("the node cannot store what it takes custody of ({0}); the sender keeps it")]
    Store(String),
}

impl From<WireError> for StreamError {
    fn from(err: WireError) -> Self {
        StreamError::Frame(err.into())
    }
}

impl StreamError {
    /// Whether the other side broke the protocol (as opposed to going away).
    pub(super) fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            StreamError::Frame(crate::stream::StreamError::Wire(_))
                | StreamError::Frame(crate::stream::StreamError::FrameTimeout(_))
                | StreamError::Frame(crate::stream::StreamError::OverLimit { .. })
                | StreamError::Unexpected(_)
                | StreamError::Unsealed(_)
                | StreamError::Version(_)
                | StreamError::BadSeals(_)
                | StreamError::MisshapenSeals(_)
                | StreamError::Timeout(_)
        )
    }
}

/// Waits for the next batch of frames: true with `frames` filled, false
/// when the other side finished cleanly or the node is shutting down.
pub(super) async fn next_batch(
    reader: &mut FrameReader,
    frames: &mut Vec<Frame>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, StreamError> {
    tokio::select! {
        read = reader.read_frames(frames) => Ok(read?),
        _ = shutdown.changed() => Ok(false),
    }
}

pub(super) async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, StreamError> {
    Ok(crate::stream::read_frame(recv).await?)
}

pub(super) async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), StreamError> {
    Ok(crate::stream::write_frame(send, frame).await?)
}

/// The most a `Hello` may take on the wire. It encodes to a tag and a
/// varint version, at most 6 bytes. The limit is small because `Hello` is
/// read before a session or link exists and before the one-link-per-peer
/// rule: with the full frame limit (about 1 MiB), each of a thousand
/// connections could make the node hold that much for the first-frame
/// timeout by trickling a huge "Hello".
const MAX_HELLO: usize = 64;

/// Accepts the dialer's stream and its `Hello`, within the first-frame
/// timeout.
pub(super) async fn accept_hello(
    shared: &Shared,
    connection: &Connection,
) -> Result<(SendStream, RecvStream), StreamError> {
    let timeout = shared.settings.first_frame_timeout;
    let (send, mut recv) = tokio::time::timeout(timeout, connection.accept_bi())
        .await
        .map_err(|_| StreamError::Timeout("stream"))??;
    match tokio::time::timeout(timeout, crate::stream::read_frame_limited(&mut recv, MAX_HELLO))
        .await
        .map_err(|_| StreamError::Timeout("Hello"))?
        .map_err(StreamError::from)?
    {
        Some(Frame::Hello { version }) if version == wire::PROTOCOL_VERSION => Ok((send, recv)),
        Some(Frame::Hello { version }) => Err(StreamError::Version(version)),
        Some(_) => Err(StreamError::Unexpected("non-Hello first")),
        None => Err(StreamError::Timeout("Hello")),
    }
}

/// Ends a connection whose stream failed: a protocol violation is closed
/// with its reason and audited; a connection that went away is audited as
/// a disconnect.
pub(super) async fn close_after(
    shared: &Shared,
    connection: &Connection,
    subject: String,
    err: &StreamError,
) {
    // This node closed it (a slow consumer, a replaced link, one no longer
    // admitted) and recorded why when it did: a second record saying the
    // connection was lost would only mislead.
    if matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::LocallyClosed)
    ) {
        info!(cause = %err, "connection closed by this node");
        return;
    }
    if err.is_protocol_violation() {
        warn!(cause = %err, "closing connection: protocol violation");
        connection.close(VarInt::from_u32(close::PROTOCOL), err.to_string().as_bytes());
        shared
            .audit(
                Record::new(Event::Disconnect, Verdict::Deny, Reason::ProtocolViolation.code())
                    .subject(subject)
                    .detail(err),
            )
            .await;
    } else {
        info!(cause = %err, "connection ended");
        shared
            .audit(
                Record::new(Event::Disconnect, Verdict::Allow, Reason::ConnectionEnded.code())
                    .subject(subject)
                    .detail(err),
            )
            .await;
    }
}

/// A task aborted when its handle is dropped: a link's helper task ends
/// with the link's own, whichever way that ends (a dropped `JoinHandle`
/// would leave it running until its connection times out).
pub(super) struct AbortOnDrop<T>(pub(super) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_hello_fits_the_hello_limit() {
        let bytes = wire::encode(&Frame::Hello { version: u32::MAX }).unwrap();
        assert!(bytes.len() - wire::LENGTH_PREFIX <= MAX_HELLO, "{}", bytes.len());
    }
}
