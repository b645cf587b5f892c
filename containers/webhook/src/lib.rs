//! attestd-webhook: a Kubernetes mutating admission webhook that injects attestd
//! and the pod's TEE attester, pinned by digest from `images.lock`, as native
//! sidecars. It links no TEE crate: it only writes pod specs.

pub mod certs;
pub mod config;
pub mod inject;
pub mod manifests;
pub mod pod;
pub mod review;
pub mod server;
pub mod tls;
