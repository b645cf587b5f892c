//! attestd wire protocols, generated from `protos/`.
//!
//! - `attestation_agent`: the upstream AA API, byte-for-byte.
//! - `keyprovider`: the ocicrypt key-provider API, byte-for-byte.
//! - `attester`: the attestd plugin API (`attestd.attester.v1`).
//! - `health` (ttrpc only): `grpc.health.v1` for ttrpc plugins; gRPC plugins use tonic-health.
//!
//! Nothing here is hand-written beyond module wiring; regenerate with
//! `cargo build -p attestd-proto --features regen`.

#[cfg(feature = "ttrpc")]
#[path = "generated/ttrpc/mod.rs"]
pub mod ttrpc;

#[cfg(feature = "grpc")]
#[path = "generated/grpc/mod.rs"]
pub mod grpc;
