//! unseen's cross-crate pieces: [`local`], a three-party federation on loopback used by the
//! end-to-end tests, the node benchmark and the demo.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod local;
