//! attestd-webhook: a Kubernetes mutating admission webhook that injects attestd
//! and the pod's TEE attester, pinned by digest from `images.lock`, as native
//! sidecars, and warns at a workload whose pods its namespace's Pod Security
//! level would refuse once injected. It links no TEE crate: it only writes pod
//! specs.

pub mod certs;
pub mod config;
pub mod inject;
pub mod manifests;
pub mod pod;
pub mod review;
pub mod server;
pub mod tls;
pub mod workloads;
