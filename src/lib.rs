//! Entente: a federated, security-label-aware message broker. Each nation
//! runs a node; nodes talk QUIC with mutual TLS, and every message carries a
//! security label that every hop enforces.
//!
//! # Layout
//! The sans-IO core is plain, synchronous, deterministic code with no
//! sockets and no clock:
//! - [`label`]: nations, classification levels, markings (parse and print);
//! - [`policy`]: the network policy and the publish, deliver and forward
//!   decisions, each with a reason;
//! - [`envelope`]: signed envelopes and their canonical encoding;
//! - [`topic`]: topics and wildcard patterns.
//!
//! Around it:
//! - [`config`]: the network file and its strict validation;
//! - [`identity`]: certificate → nation or principal, anchored in that
//!   nation's own CA;
//! - [`pki`]: generating and loading a network's national PKI;
//! - [`explain`]: who may see a marking, for `entente explain`.

pub mod audit;
pub mod bench;
pub mod client;
pub mod config;
pub mod envelope;
pub mod explain;
pub mod identity;
pub mod label;
pub mod node;
pub mod pki;
pub mod policy;
pub mod routing;
pub mod stream;
pub mod tls;
pub mod topic;
pub mod wire;
