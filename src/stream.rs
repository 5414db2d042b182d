//! Frame I/O on quinn streams, shared by the node and the client: the thin
//! I/O side of `wire`.

use quinn::{RecvStream, SendStream};

use crate::wire::{self, Frame, WireError, LENGTH_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("connection lost: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("connection lost: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Reads one frame; `None` when the other side finished the stream cleanly
/// between frames. The length is checked before the body is allocated.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Option<Frame>, StreamError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = wire::body_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(wire::decode(&body)?))
}

pub async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), StreamError> {
    send.write_all(&wire::encode(frame)?).await?;
    Ok(())
}
