//! Built without the `grpc-server` feature: attestd serves the AA API and the key
//! provider over ttrpc only, and leaves tonic's server, its router and HTTP/2
//! server out of the binary (the gRPC client stays: plugins may serve gRPC).
//! Asking for a gRPC listener is refused at start, naming the feature.

use std::sync::Arc;

use attester_sdk::Error;

pub use super::GrpcAddr;
use crate::service::Service;

/// What would be served: nothing in this build.
pub struct Router(());

/// The AA API's gRPC router: none in this build.
pub fn router(_: Arc<Service>) -> Router {
    Router(())
}

impl Router {
    /// The key provider's router: none in this build either.
    pub(crate) fn none() -> Router {
        Router(())
    }
}

/// A gRPC server, which this build cannot start: no value of it exists.
pub enum GrpcServer {}

impl GrpcServer {
    /// Checked at start, before any plugin is launched: never in this build.
    pub fn can_serve(what: &str, addr: &dyn std::fmt::Display) -> Result<(), Error> {
        Err(refusal(what, addr))
    }

    pub async fn start(
        what: &'static str,
        _: Router,
        addr: &GrpcAddr,
    ) -> Result<GrpcServer, Error> {
        Err(refusal(what, addr))
    }

    pub async fn ended(&mut self) -> Error {
        match *self {}
    }

    pub async fn stop(self) {
        match self {}
    }
}

fn refusal(what: &str, addr: &dyn std::fmt::Display) -> Error {
    Error::failed_precondition(format!(
        "cannot serve the {what} over gRPC on {addr}: this attestd is built without \
         the gRPC server (cargo feature grpc-server); use its ttrpc socket"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_grpc_listener_is_refused_naming_the_feature() {
        let addr: GrpcAddr = "unix:///run/attestd-test/none.sock".parse().unwrap();
        // `GrpcServer` has no values, so the result can only be the refusal.
        let Err(e) = GrpcServer::start("key provider", Router::none(), &addr).await;
        assert_eq!(e.code(), attester_sdk::Code::FailedPrecondition);
        assert_eq!(
            e.to_string(),
            "cannot serve the key provider over gRPC on unix:///run/attestd-test/none.sock: \
             this attestd is built without the gRPC server (cargo feature grpc-server); \
             use its ttrpc socket"
        );
        assert!(!std::path::Path::new("/run/attestd-test/none.sock").exists());
        let early = GrpcServer::can_serve("AA API", &"127.0.0.1:50002").unwrap_err();
        assert_eq!(early.code(), attester_sdk::Code::FailedPrecondition);
        assert_eq!(
            early.to_string(),
            "cannot serve the AA API over gRPC on 127.0.0.1:50002: this attestd is built \
             without the gRPC server (cargo feature grpc-server); use its ttrpc socket"
        );
    }
}
