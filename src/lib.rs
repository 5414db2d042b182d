#![warn(missing_docs)]
//! Entente: a federated, security-label-aware message broker. Each nation
//! runs a node; nodes talk QUIC with mutual TLS, and every message carries a
//! security label that every hop enforces.
//!
//! # Layout
//! The sans-IO core is plain, synchronous, deterministic code with no
//! sockets and no clock (times and randomness are passed in):
//! - [`label`]: nations, classification levels, labels, the marking grammar
//!   (parse, canonical print, community expansion);
//! - [`policy`]: the validated network (nations, ceilings, principals) and
//!   the publish, deliver and forward decisions, each with a reason;
//! - [`envelope`]: envelopes, their canonical encoding, batch seals (Ed25519
//!   over a Merkle root) and their verification, message ids;
//! - [`authenticator`]: pairwise tag keys from the node keys, and the
//!   per-nation tags on seals that relays check instead of the signature;
//! - [`topic`]: topics, `*` / `>` patterns, and pattern coverage;
//! - [`wire`]: frames, their bincode encoding, length prefix, size limits,
//!   ALPN and close codes;
//! - [`routing`]: local subscriptions, signed announcements, delivery trees
//!   over nation bitsets, and the replay window.
//!
//! Around it:
//! - [`config`]: the network file and its strict validation;
//! - [`identity`]: certificate → node or principal identity, anchored in
//!   that nation's own CA;
//! - [`pki`]: generating and loading a network's national PKI;
//! - [`tls`]: rustls configs for quinn (TLS 1.3, ALPN `entente/1`, client
//!   certificates required), with verifiers that go through [`identity`];
//! - [`stream`]: reading frames from quinn streams in batches, and writing
//!   encoded frames;
//! - [`node`]: the broker: accept loop, admission, sessions, peer links,
//!   routing and bounded outbound queues;
//! - [`admin`]: admin commands (status, reload, cut, restore) and asking
//!   many nodes at once, each as its nation's admin;
//! - [`client`]: the client library used by the CLI, the tests and the
//!   benches;
//! - [`store`]: the custody store (redb): per-peer outboxes and seen
//!   message ids, with `sync` or `memory` durability;
//! - [`audit`]: audit records, written by a dedicated thread from a bounded
//!   channel into a hash chain; verifying and querying logs;
//! - [`explain`]: who may see a marking, for `entente explain`;
//! - [`bench`](mod@bench): latency, throughput and memory over real node
//!   processes, for `entente bench`;
//! - [`sim`]: `entente simulate`: scenarios, emulated WAN links, the
//!   oracle and the report;
//! - [`hostile`]: a hostile member's node (genuine certificate, stuck or
//!   trickling links), for the benches and the containment tests.

pub mod admin;
pub mod audit;
pub mod authenticator;
pub mod bench;
pub mod client;
pub mod config;
pub mod envelope;
pub mod explain;
pub mod hostile;
pub mod identity;
pub mod label;
pub mod node;
pub mod pki;
pub mod policy;
pub mod receipt;
pub mod resolution;
pub mod routing;
pub mod sim;
pub mod store;
pub mod stream;
pub mod tls;
pub mod topic;
pub mod wire;
