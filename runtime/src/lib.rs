//! attestd core: serves the attestation-agent API (ttrpc and gRPC) and dispatches
//! every evidence call to a supervised attester plugin. Links no TEE library and
//! opens no device.
//!
//! Map: [`config`] (the TOML) → [`run`] (bring-up) → [`supervisor`] (plugins:
//! launch, handshake, health, restart) → [`service`] (the AA operations on domain
//! types) ← [`server`] (thin ttrpc / gRPC adapters). [`aa_client`] is the client
//! side of the same API, for the CLI and benchmarks.

pub mod aa_client;
pub mod coco_as;
pub mod config;
pub mod conformance;
pub mod control;
pub mod echo;
pub mod eventlog;
mod fault;
pub mod initdata;
pub mod kbs;
pub mod keyprovider;
pub mod launch;
pub mod logging;
pub mod run;
pub mod select;
pub mod server;
pub mod service;
pub mod socket_files;
pub mod supervisor;
mod sys;
pub mod units;
