//! The bounded outbound queue of one session or peer link, limited both in
//! frames and in bytes, so memory per consumer stays small whatever the
//! frame sizes. Offering never waits: a full queue is the caller's signal
//! that its consumer (a subscriber or a peer link) is too slow, and that
//! consumer is cut alone.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Semaphore;

/// The most frames a writer takes from its queue for one write.
pub(super) const WRITE_BATCH: usize = 256;

#[derive(Clone)]
pub(super) struct QueueSender {
    frames: mpsc::Sender<Bytes>,
    /// One permit per queued byte; a frame takes at most `max_bytes`.
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

pub(super) struct QueueReceiver {
    frames: mpsc::Receiver<Bytes>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum OfferError {
    Full,
    Closed,
}

pub(super) fn bounded(max_frames: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let (frames, receiver) = mpsc::channel(max_frames.max(1));
    let max_bytes = max_bytes.clamp(1, Semaphore::MAX_PERMITS);
    let bytes = Arc::new(Semaphore::new(max_bytes));
    (
        QueueSender {
            frames,
            bytes: bytes.clone(),
            max_bytes,
        },
        QueueReceiver {
            frames: receiver,
            bytes,
            max_bytes,
        },
    )
}

/// The byte permits a frame holds while queued. A frame larger than the
/// whole budget takes all of it, so it passes an empty queue only and
/// cannot wedge a consumer that is keeping up.
fn permits(len: usize, max_bytes: usize) -> u32 {
    u32::try_from(len.clamp(1, max_bytes)).unwrap_or(u32::MAX)
}

impl QueueSender {
    /// Queues `frame` if there is room now; never waits.
    pub(super) fn offer(&self, frame: Bytes) -> Result<(), OfferError> {
        let permit = match self.bytes.try_acquire_many(permits(frame.len(), self.max_bytes)) {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(OfferError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(OfferError::Closed),
        };
        match self.frames.try_send(frame) {
            Ok(()) => {
                permit.forget();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(OfferError::Full),
            Err(TrySendError::Closed(_)) => Err(OfferError::Closed),
        }
    }

    /// Frames waiting in the queue.
    pub(super) fn len(&self) -> usize {
        self.frames.max_capacity() - self.frames.capacity()
    }

    /// Refuses every later offer (`Closed`); what is queued stays for
    /// the receiver to drain.
    pub(super) fn close(&self) {
        self.bytes.close();
    }

    pub(super) fn describe_limit(&self) -> String {
        format!(
            "{} frames or {} bytes",
            self.frames.max_capacity(),
            self.max_bytes
        )
    }
}

impl QueueReceiver {
    fn release(&self, frame: &Bytes) {
        self.bytes
            .add_permits(permits(frame.len(), self.max_bytes) as usize);
    }

    #[cfg(test)]
    pub(super) async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.frames.recv().await?;
        self.release(&frame);
        Some(frame)
    }

    /// Waits for at least one frame, then takes up to [`WRITE_BATCH`]
    /// queued frames into `out`; false once the queue is closed and empty.
    pub(super) async fn recv_many(&mut self, out: &mut Vec<Bytes>) -> bool {
        let start = out.len();
        if self.frames.recv_many(out, WRITE_BATCH).await == 0 {
            return false;
        }
        for frame in &out[start..] {
            self.release(frame);
        }
        true
    }

    /// Closes the queue and takes what was still in it; later offers fail.
    pub(super) fn close_and_drain(&mut self) -> Vec<Bytes> {
        self.frames.close();
        self.bytes.close();
        let mut left = Vec::new();
        while let Ok(frame) = self.frames.try_recv() {
            left.push(frame);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_frames_and_bytes() {
        let (sender, mut receiver) = bounded(3, 100);
        assert_eq!(sender.offer(Bytes::from(vec![0; 60])), Ok(()));
        assert_eq!(sender.offer(Bytes::from(vec![0; 60])), Err(OfferError::Full));
        assert_eq!(sender.offer(Bytes::from(vec![0; 40])), Ok(()));
        assert_eq!(sender.offer(Bytes::from(vec![0; 1])), Err(OfferError::Full));
        assert_eq!(receiver.recv().await.unwrap().len(), 60);
        assert_eq!(sender.offer(Bytes::from(vec![0; 50])), Ok(()));
        assert_eq!(receiver.recv().await.unwrap().len(), 40);
        assert_eq!(receiver.recv().await.unwrap().len(), 50);
        for _ in 0..3 {
            assert_eq!(sender.offer(Bytes::from_static(b"x")), Ok(()));
        }
        assert_eq!(sender.offer(Bytes::from_static(b"x")), Err(OfferError::Full));
        assert_eq!(sender.len(), 3);
        assert_eq!(receiver.close_and_drain().len(), 3);
        assert_eq!(sender.offer(Bytes::from_static(b"x")), Err(OfferError::Closed));
    }

    #[tokio::test]
    async fn recv_many_makes_room_and_close_fails_offers() {
        let (sender, mut receiver) = bounded(2, 100);
        assert_eq!(sender.offer(Bytes::from(vec![0; 60])), Ok(()));
        assert_eq!(sender.offer(Bytes::from(vec![0; 60])), Err(OfferError::Full));
        let mut batch = Vec::new();
        assert!(receiver.recv_many(&mut batch).await);
        assert_eq!(batch.len(), 1);
        assert_eq!(sender.offer(Bytes::from(vec![0; 60])), Ok(()));
        assert_eq!(receiver.close_and_drain().len(), 1);
        assert_eq!(sender.offer(Bytes::from(vec![0; 60])), Err(OfferError::Closed));
    }

    #[tokio::test]
    async fn a_closed_sender_refuses_offers_and_leaves_the_queue_to_drain() {
        let (sender, mut receiver) = bounded(4, 100);
        assert_eq!(sender.offer(Bytes::from_static(b"a")), Ok(()));
        sender.close();
        assert_eq!(sender.offer(Bytes::from_static(b"b")), Err(OfferError::Closed));
        assert_eq!(receiver.close_and_drain(), vec![Bytes::from_static(b"a")]);
    }

    #[tokio::test]
    async fn an_oversized_frame_passes_an_empty_queue() {
        let (sender, mut receiver) = bounded(4, 10);
        assert_eq!(sender.offer(Bytes::from(vec![0; 50])), Ok(()));
        assert_eq!(sender.offer(Bytes::from(vec![0; 1])), Err(OfferError::Full));
        receiver.recv().await.unwrap();
        assert_eq!(sender.offer(Bytes::from(vec![0; 1])), Ok(()));
    }
}
