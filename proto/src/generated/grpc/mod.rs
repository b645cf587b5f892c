// Module wiring for the generated tonic/prost code (the only hand-written part).
pub mod attestation_agent;
#[path = "attestd.attester.v1.rs"]
pub mod attester;
pub mod keyprovider;
