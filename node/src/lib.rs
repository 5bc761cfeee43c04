//! The unseen node: a daemon each data holder runs, and the CLI bank modellers use.
//!
//! - **Federation** (node ↔ node, gRPC over mutual TLS): a guest proposes a job, each host
//!   applies its own policy, then PSI and training messages flow as chunked, sequenced,
//!   idempotent deliveries (`services::federation`, [`mailbox`], `peers`).
//! - **Jobs** (operator ↔ own node): submit a TOML job spec, watch progress, list, cancel,
//!   fetch models (`services::jobs`, `jobs`).
//! - **State**: jobs and models persist in an embedded database under the data directory
//!   ([`store`]); a job a restart interrupted is marked failed.
//! - **Operations**: `tracing` logs, a Prometheus endpoint ([`metrics`]), gRPC health and
//!   reflection.
//! - **Scoring** (platform ↔ the guest's node): joint scores with secure aggregation of the
//!   hosts' partial scores (`scoring`).
//! - **Audit**: a hash-chained log of jobs, peers, message kinds and bytes, and scoring calls
//!   ([`audit`]).
//!
//! Identity is the name in a party's certificate: every federation call names its sender, and
//! the node checks that the caller's certificate (already verified against the configured CA
//! during the TLS handshake) is valid for the name the configuration gives that peer.
//!
//! Modules form layers, each using only those before it: leaves (`error`, `clock`, `config`,
//! `spec`, `proto`, `store`, `audit`, `metrics`, `tls`, `certs`, `wire`, `mailbox`, `peers`)
//! → `datasets`, `registry`, `scoring` → `state` → `jobs` → `services` → `server` → `cli`.
//! `tests/layers.rs` fails on a cycle.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod audit;
pub mod certs;
pub mod cli;
mod clock;
mod columnar;
pub mod config;
mod datasets;
mod error;
mod jobs;
pub mod mailbox;
pub mod metrics;
mod models;
mod peers;
pub mod proto;
mod registry;
mod scoring;
pub mod sealing;
mod server;
mod services;
pub mod spec;
mod state;
pub mod store;
pub mod tls;
mod wire;
mod workers;

pub use error::{NodeError, PeerFault, Refusal};
pub use registry::JobHandle;
pub use server::{start, RunningNode};
pub use state::NodeState;
pub use wire::FEDERATION_VERSION;

/// Test and fuzz hooks: pure decoders of peer input. Not a stable API.
#[doc(hidden)]
pub mod internal {
    pub use crate::datasets::load_table;
    pub use crate::jobs::admission;
    pub use crate::wire::chunks::{ChunkError, Header, Reassembler};
    pub use crate::wire::psi as psi_proto;
}
