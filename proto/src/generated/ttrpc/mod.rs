// Module wiring for the generated ttrpc code (the only hand-written part).
pub mod attestation_agent;
pub mod attestation_agent_ttrpc;
pub mod attester;
pub mod attester_ttrpc;
pub mod health;
pub mod health_ttrpc;
pub mod keyprovider;
pub mod keyprovider_ttrpc;
