//! The sealer task: one Ed25519 signature over the Merkle root of what the
//! links carried unsealed since the last one, about a thousand a second at
//! most, and one `Seals` frame per link with the proofs of what it carried.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use super::Shared;
use crate::audit::now_us;
use crate::envelope::{Hash, MessageId, Proof, SealBatch};
use crate::label::Nation;
use crate::wire::{self, Frame};

/// An envelope some outboxes took unsealed, waiting for its seal.
pub(super) struct ToSeal {
    pub(super) id: MessageId,
    pub(super) leaf: Hash,
    /// The peers whose outboxes hold it.
    pub(super) carried_by: Vec<Nation>,
}

/// Signatures a second the sealer makes at most, on average.
const SEALS_PER_SECOND: f64 = 1000.0;
/// Signatures it may make back to back after a quiet spell: a message
/// stream at up to [`SEALS_PER_SECOND`] is sealed at once, jitter and all.
const SEAL_BURST: f64 = 8.0;
/// The most envelopes under one signature: their proofs (ten hashes each
/// at most) keep a `Seals` frame far below the frame limit.
const SEAL_BATCH: usize = 1024;

/// The sealer: signs what the links carried, one signature per batch, and
/// sends each link the seals of its envelopes. Signatures are rationed by
/// a token bucket ([`SEALS_PER_SECOND`], bursts of [`SEAL_BURST`]), so at
/// any rate above it the signing cost stays flat (about 2.5% of a core
/// here, and 5% for each peer that verifies) and envelopes batch up, while
/// below it each batch is sealed at once. Relays pass an envelope on only
/// once its seal has come, so a seal that waits delays every hop after the
/// first: a fixed minimum interval did that (tokio's timer rounds up to
/// the next millisecond, which cost 1.5 ms per message at 1,000 msg/s).
pub(super) async fn seal_forever(shared: Arc<Shared>, mut queue: mpsc::Receiver<ToSeal>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tokens = SEAL_BURST;
    let mut refilled = tokio::time::Instant::now();
    let mut refill = |tokens: &mut f64| {
        let now = tokio::time::Instant::now();
        *tokens = (*tokens + (now - refilled).as_secs_f64() * SEALS_PER_SECOND).min(SEAL_BURST);
        refilled = now;
    };
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            received = queue.recv_many(&mut batch, SEAL_BATCH) => if received == 0 { return },
            _ = shutdown.changed() => return,
        }
        refill(&mut tokens);
        if tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - tokens) / SEALS_PER_SECOND);
            tokio::time::sleep(wait).await;
            refill(&mut tokens);
        }
        tokens = (tokens - 1.0).max(0.0);
        // The envelopes go out before the signature is made.
        super::let_writers_send().await;
        while batch.len() < SEAL_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // Tagged for every nation whose key the rules hold now: none cut.
        let tag_keys = shared.rules().tag_keys.clone();
        let sealed = shared
            .signer
            .seal_leaves(batch.iter().map(|s| s.leaf).collect(), &tag_keys);
        let proofs: Vec<Proof> = batch
            .iter()
            .zip(sealed.proofs)
            .map(|(sealed, (siblings, left))| Proof {
                id: sealed.id,
                siblings,
                left,
            })
            .collect();
        // Each peer gets one Seals frame with the proofs of what its
        // outbox took: which envelopes of the batch, per peer.
        let mut per_peer: Vec<(Nation, Vec<usize>)> = Vec::new();
        for (index, sealed) in batch.drain(..).enumerate() {
            for peer in sealed.carried_by {
                match per_peer.iter_mut().find(|(p, _)| *p == peer) {
                    Some((_, carried)) => carried.push(index),
                    None => per_peer.push((peer, vec![index])),
                }
            }
        }
        let mut changes = Vec::new();
        let now = now_us();
        // Links that carried the same envelopes (the common case: every
        // peer wants the same traffic) share one encoded frame, so each
        // more peer costs an offer, not another encoding.
        let mut encoded: Vec<(Vec<usize>, Bytes)> = Vec::new();
        for (peer, carried) in per_peer {
            let frame = match encoded.iter().find(|(same, _)| *same == carried) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let seals = Frame::Seals(SealBatch {
                        signature: sealed.signature.clone(),
                        tags: sealed.tags.clone(),
                        proofs: carried.iter().map(|&i| proofs[i].clone()).collect(),
                    });
                    match wire::encode(&seals) {
                        Ok(frame) => {
                            let frame = Bytes::from(frame);
                            encoded.push((carried, frame.clone()));
                            frame
                        }
                        Err(err) => {
                            warn!(to = %peer, cause = %err, "cannot encode seals");
                            continue;
                        }
                    }
                }
            };
            // Seals always fit (they are not bounded: their envelopes
            // were taken), and go after their envelopes in the same order.
            let _ = shared.hand_over(peer, frame, now, false, &mut changes);
        }
        // Not waited for: a seal lost in a crash is made again at start.
        shared.custody.write_later(std::mem::take(&mut changes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authenticator::Tag;
    use crate::envelope::Signer;

    #[test]
    fn a_full_seal_batch_fits_in_one_frame() {
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let signer = Signer::from_pkcs8(der.as_ref()).unwrap();
        let leaves: Vec<Hash> = (0..SEAL_BATCH).map(|i| [(i % 251) as u8; 32]).collect();
        let sealed = signer.seal_leaves(leaves, &Default::default());
        let proofs = sealed
            .proofs
            .into_iter()
            .enumerate()
            .map(|(i, (siblings, left))| Proof {
                id: MessageId([(i % 256) as u8; 16]),
                siblings,
                left,
            })
            .collect();
        // With a tag for as many nations as a seal may name.
        let tag = Tag {
            nation: *b"AAA",
            mac: [0; crate::authenticator::TAG_LEN],
        };
        let frame = wire::encode(&Frame::Seals(SealBatch {
            signature: sealed.signature,
            tags: vec![tag; crate::authenticator::MAX_TAGS],
            proofs,
        }))
        .unwrap();
        assert!(frame.len() < wire::MAX_FRAME / 2, "{} bytes", frame.len());
    }
}
