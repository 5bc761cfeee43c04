//! unseen's cross-crate pieces: [`local`], a three-party federation on loopback used by the
//! end-to-end tests, the benchmarks and the demo; and [`report`], the HTML model report.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod local;
pub mod report;
