// Module wiring for the generated tonic/prost code (the only hand-written part).
pub mod attestation_agent;
pub mod keyprovider;
#[path = "attestd.attester.v1.rs"]
pub mod attester;
