//! The node's claims, by topic, over real nodes on loopback (start-up in `common`).

mod budget;
mod common;
mod config;
mod faults;
mod listing;
mod parquet;
mod pki;
mod postgres;
mod refusals;
mod scorecard;
mod train;
