//! The simulator (`entente simulate`): a whole network in this process over
//! real QUIC and mutual TLS, with emulated WAN links below QUIC, traffic,
//! timed events, an independent oracle, and a report.

pub mod geo;
pub mod html;
pub mod report;
pub mod scenario;
