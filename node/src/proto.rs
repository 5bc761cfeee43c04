//! Generated gRPC types of node/proto (compiled by protox at build time).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("unseen.v1");

/// Encoded file descriptor set of every unseen .proto, for the reflection service.
pub const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unseen_descriptor.bin"));
