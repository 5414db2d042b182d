//! The simulator (`entente simulate`): a whole network in this process over
//! real QUIC and mutual TLS, with emulated WAN links below QUIC, traffic,
//! timed events, an independent oracle, and a report.

pub mod analyse;
pub mod geo;
pub mod html;
pub mod oracle;
pub mod report;
pub mod run;
pub mod scenario;
pub mod wan;

pub use analyse::{Delivered, Sent};
pub use run::{simulate, Progress, SimError, SimOptions};
