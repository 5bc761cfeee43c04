//! The unseen node: a daemon each data holder runs, and the CLI bank modellers use.
//!
//! - **Federation** (node ↔ node, gRPC over mutual TLS): a guest proposes a job, each host
//!   applies its own policy, then PSI and training messages flow as chunked, sequenced,
//!   idempotent deliveries ([`federation`], [`mailbox`], [`peers`]).
//! - **Jobs** (operator ↔ own node): submit a TOML job spec, watch progress, list, cancel,
//!   fetch models ([`jobs`]).
//! - **State**: jobs and models persist in an embedded database under the data directory
//!   ([`store`]); a job a restart interrupted is marked failed.
//! - **Operations**: `tracing` logs, a Prometheus endpoint ([`metrics`]), gRPC health and
//!   reflection.
//! - **Scoring** (platform ↔ the guest's node): joint scores with secure aggregation of the
//!   hosts' partial scores ([`scoring`]).
//! - **Audit**: a hash-chained log of jobs, peers, message kinds and bytes, and scoring calls
//!   ([`audit`]).
//!
//! Identity is the name in a party's certificate: every federation call names its sender, and
//! the node checks that the caller's certificate (already verified against the configured CA
//! during the TLS handshake) is valid for the name the configuration gives that peer.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod certs;
pub mod cli;
pub mod config;
mod error;
pub mod federation;
pub mod jobs;
pub mod mailbox;
pub mod metrics;
pub mod peers;
pub mod proto;
pub mod scoring;
pub mod server;
pub mod spec;
pub mod store;
pub mod tls;

pub use error::NodeError;
pub use server::{start, RunningNode};

/// Version of the federation protocol (envelopes and proposals); peers must speak the same.
pub const FEDERATION_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
