//! Frame I/O on quinn streams, shared by the node and the client: the thin
//! I/O side of `wire`.

use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::time::Instant;

use crate::wire::{self, Frame, FrameBuffer, WireError, LENGTH_PREFIX};

/// The most frames decoded for one batch, so one busy sender cannot make
/// a batch (and the work done before the next `select!`) unbounded.
pub const READ_BATCH: usize = 256;

/// Why reading or writing frames on a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A frame could not be encoded or decoded, or its length is over the limit.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Reading a frame's prefix or body failed.
    #[error("connection lost: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Writing to the stream failed.
    #[error("connection lost: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading a batch of chunks failed.
    #[error("connection lost: {0}")]
    ReadChunks(#[from] quinn::ReadError),
    /// The other side finished the stream in the middle of a frame.
    #[error("the stream ended inside a frame")]
    Truncated,
    /// A frame's length prefix is over the limit of the frame expected
    /// there, refused before anything is allocated for it.
    #[error("a frame of {len} bytes was announced where at most {limit} bytes are expected")]
    OverLimit {
        /// The announced length, in bytes.
        len: usize,
        /// The most this frame may take, in bytes.
        limit: usize,
    },
    /// A frame was started and not finished within the frame deadline.
    #[error("a frame was started but not finished within {0:?}; a sender finishes each frame it starts")]
    FrameTimeout(Duration),
}

/// Reads one frame; `None` when the other side finished the stream cleanly
/// between frames. The length is checked before the body is allocated.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, StreamError> {
    read_frame_limited(recv, wire::MAX_FRAME).await
}

/// [`read_frame`] with a smaller limit than [`wire::MAX_FRAME`]: a length
/// over `limit` is [`StreamError::OverLimit`], before the body is allocated.
/// For frames known to be small (a node reads `Hello` with it), so that a
/// connection with no session or link yet cannot make the node hold a
/// large buffer.
pub async fn read_frame_limited(recv: &mut RecvStream, limit: usize) -> Result<Option<Frame>, StreamError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = wire::body_len(prefix)?;
    if len > limit {
        return Err(StreamError::OverLimit { len, limit });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(wire::decode(&body)?))
}

/// Encodes one frame and writes it.
pub async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), StreamError> {
    send.write_all(&wire::encode(frame)?).await?;
    Ok(())
}

/// Reads frames in batches: each read takes whatever the stream has, and
/// every whole frame in it is decoded at once (see [`wire::FrameBuffer`]).
pub struct FrameReader {
    recv: RecvStream,
    buffer: FrameBuffer,
    chunks: Vec<Bytes>,
    /// How long the rest of a started frame may take, if limited.
    frame_timeout: Option<Duration>,
    /// When the frame now partly buffered started to arrive.
    partial_since: Option<Instant>,
}

/// Chunks taken from the stream per read.
const READ_CHUNKS: usize = 64;

impl FrameReader {
    /// A reader of frames from `recv`.
    pub fn new(recv: RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buffer: FrameBuffer::default(),
            chunks: vec![Bytes::new(); READ_CHUNKS],
            frame_timeout: None,
            partial_since: None,
        }
    }

    /// A reader that fails with [`StreamError::FrameTimeout`] when a frame
    /// whose first bytes came is not whole within `timeout`. Only started
    /// frames have a deadline: waiting between frames is not limited, so an
    /// idle subscriber is fine, but no one can park a partial frame (and
    /// the buffer it holds, up to the frame limit) for ever.
    pub fn with_frame_timeout(recv: RecvStream, timeout: Duration) -> FrameReader {
        FrameReader {
            frame_timeout: Some(timeout),
            ..FrameReader::new(recv)
        }
    }

    /// Waits for at least one whole frame, then appends to `out` every
    /// whole frame buffered (up to [`READ_BATCH`]). False when the other
    /// side finished the stream cleanly between frames. Cancel-safe: bytes
    /// already read stay buffered.
    pub async fn read_frames(&mut self, out: &mut Vec<Frame>) -> Result<bool, StreamError> {
        loop {
            let before = out.len();
            while out.len() - before < READ_BATCH {
                let Some(frame) = self.buffer.next_frame()? else {
                    break;
                };
                out.push(frame);
            }
            // The deadline runs from the first bytes of the frame now
            // partly buffered: a new one starts when a frame completes.
            if self.buffer.is_empty() {
                self.partial_since = None;
            } else if out.len() > before || self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
            if out.len() > before {
                return Ok(true);
            }
            // Every chunk already received, not just the next one: a QUIC
            // chunk is about one packet, and batches are what make the
            // per-message cost small.
            let read = self.recv.read_chunks(&mut self.chunks);
            let read = match (self.frame_timeout, self.partial_since) {
                (Some(limit), Some(since)) => tokio::time::timeout_at(since + limit, read)
                    .await
                    .map_err(|_| StreamError::FrameTimeout(limit))?,
                _ => read.await,
            };
            match read? {
                Some(count) => {
                    for chunk in &mut self.chunks[..count] {
                        self.buffer.extend(std::mem::take(chunk));
                    }
                }
                None if self.buffer.is_empty() => return Ok(false),
                None => return Err(StreamError::Truncated),
            }
        }
    }
}

/// Writes already-encoded frames in one go.
pub async fn write_all(send: &mut SendStream, frames: &mut [Bytes]) -> Result<(), StreamError> {
    send.write_all_chunks(frames).await?;
    Ok(())
}
