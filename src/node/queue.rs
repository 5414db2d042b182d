//! The bounded outbound queue of one session or peer link, limited both in
//! frames and in bytes, so memory per consumer stays small whatever the
//! frame sizes. Offering never waits: a full queue is the caller's signal
//! that the consumer is too slow.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};

pub(super) struct QueueSender {
    frames: mpsc::Sender<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

pub(super) struct QueueReceiver {
    frames: mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum OfferError {
    Full,
    Closed,
}

pub(super) fn bounded(max_frames: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let (frames, receiver) = mpsc::channel(max_frames.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            frames,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
        },
        QueueReceiver {
            frames: receiver,
            queued_bytes,
        },
    )
}

impl QueueSender {
    pub(super) fn offer(&self, frame: Bytes) -> Result<(), OfferError> {
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // One frame is always let through an empty queue, so a frame larger
        // than the byte budget cannot wedge a consumer that is keeping up.
        if before > 0 && before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(OfferError::Full);
        }
        self.frames.try_send(frame).map_err(|err| {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            match err {
                TrySendError::Full(_) => OfferError::Full,
                TrySendError::Closed(_) => OfferError::Closed,
            }
        })
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
    pub(super) async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.frames.recv().await?;
        self.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }

    /// Closes the queue and counts what was still in it.
    pub(super) fn close_and_count(&mut self) -> usize {
        self.frames.close();
        let mut dropped = 0;
        while self.frames.try_recv().is_ok() {
            dropped += 1;
        }
        dropped
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
        assert_eq!(receiver.close_and_count(), 3);
        assert_eq!(sender.offer(Bytes::from_static(b"x")), Err(OfferError::Closed));
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
