//! One answer on both transports for a request attestd cannot take: a request
//! that does not decode is INVALID_ARGUMENT naming the RPC (the ttrpc crate said
//! UNKNOWN "Unpack request error …", tonic said INTERNAL), and an unknown method
//! is UNIMPLEMENTED naming it (tonic's answer had no message at all).
//!
//! Both generated layers are wrapped from outside, so `proto/` stays generated:
//! ttrpc's method handlers one by one, tonic's router as a tower layer. An
//! unknown *service* is refused inside the ttrpc crate before any handler runs
//! (INVALID_ARGUMENT "… service does not exist", as upstream's AA answers): the
//! connection layer (`accept::TtrpcConn`) sends such a request to
//! [`UNKNOWN_SERVICE`], a service without methods, with its path as the method,
//! so ttrpc answers UNIMPLEMENTED naming it, as gRPC does.

use std::collections::HashMap;
use ttrpc::r#async::{MethodHandler, Service as TtrpcService, TtrpcContext};

use crate::echo::bounded;

/// How much of a decoder's complaint or a method name an answer quotes.
const MAX_QUOTED: usize = 128;

/// The message for a request to `rpc` that did not decode.
fn undecodable(rpc: &str, cause: &str) -> String {
    format!(
        "{}: cannot decode the request: {}",
        bounded(rpc, MAX_QUOTED),
        bounded(cause.trim(), MAX_QUOTED)
    )
}

// ---- ttrpc ----------------------------------------------------------------

/// The service a request to a service this server lacks is sent to: it has no
/// methods, so ttrpc answers UNIMPLEMENTED "<path> method".
pub const UNKNOWN_SERVICE: &str = "attestd.UnknownService";

/// `services` with every method answering an undecodable request with
/// INVALID_ARGUMENT instead of ttrpc's UNKNOWN, and [`UNKNOWN_SERVICE`].
pub fn ttrpc_services(services: HashMap<String, TtrpcService>) -> HashMap<String, TtrpcService> {
    let mut services: HashMap<String, TtrpcService> = services
        .into_iter()
        .map(|(name, s)| {
            let methods = s
                .methods
                .into_iter()
                .map(|(rpc, inner)| {
                    let checked = Checked {
                        rpc: rpc.clone(),
                        inner,
                    };
                    (
                        rpc,
                        Box::new(checked) as Box<dyn MethodHandler + Send + Sync>,
                    )
                })
                .collect();
            let service = TtrpcService {
                methods,
                streams: s.streams,
            };
            (name, service)
        })
        .collect();
    services.insert(
        UNKNOWN_SERVICE.to_string(),
        TtrpcService {
            methods: HashMap::new(),
            streams: HashMap::new(),
        },
    );
    services
}

struct Checked {
    rpc: String,
    inner: Box<dyn MethodHandler + Send + Sync>,
}

/// The prefix ttrpc's generated handlers put on a request that did not decode.
const TTRPC_UNPACK: &str = "Unpack request error";

#[async_trait::async_trait]
impl MethodHandler for Checked {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        use ttrpc::proto::ResponseInit as _;
        // The generated handler answers the service's own errors itself; what it
        // returns as `Err` is its decoding of the request or encoding of the answer.
        let status = match self.inner.handler(ctx, req).await {
            Ok(r) => return Ok(r),
            Err(ttrpc::Error::Others(m)) if m.starts_with(TTRPC_UNPACK) => {
                let cause = &m[TTRPC_UNPACK.len()..];
                tracing::debug!(method = %self.rpc, "undecodable request");
                ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, undecodable(&self.rpc, cause))
            }
            Err(e) => {
                tracing::warn!(method = %self.rpc, "cannot encode the answer: {e}");
                ttrpc::get_status(
                    ttrpc::Code::INTERNAL,
                    format!("{}: cannot encode the answer", self.rpc),
                )
            }
        };
        Ok(ttrpc::Response::init_status(status))
    }
}

// ---- gRPC -----------------------------------------------------------------

#[cfg(feature = "grpc-server")]
pub use grpc::{GrpcRefusals, Refusing};

/// Only in a build with the gRPC server.
#[cfg(feature = "grpc-server")]
mod grpc {
    use std::task::{Context, Poll};

    use tonic::codegen::http;

    use super::{bounded, undecodable, MAX_QUOTED};

    /// The tower layer over tonic's router that rewrites its two answers above.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct GrpcRefusals;

    impl<S> tower_layer::Layer<S> for GrpcRefusals {
        type Service = Refusing<S>;
        fn layer(&self, inner: S) -> Refusing<S> {
            Refusing { inner }
        }
    }

    #[derive(Clone, Debug)]
    pub struct Refusing<S> {
        inner: S,
    }

    /// The prefix of the message tonic's prost codec gives a request that did not
    /// decode (prost's `DecodeError`).
    const PROST_DECODE: &str = "failed to decode Protobuf message";

    type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

    impl<S, B, R> tower_service::Service<http::Request<B>> for Refusing<S>
    where
        S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
        S::Future: Send + 'static,
    {
        type Response = http::Response<R>;
        type Error = S::Error;
        type Future = BoxFuture<Result<http::Response<R>, S::Error>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            // A cheap clone (shared bytes), kept for the rare answer that needs it.
            let uri = req.uri().clone();
            let answer = self.inner.call(req);
            Box::pin(async move {
                let mut res = answer.await?;
                rewrite(uri.path(), res.headers_mut());
                Ok(res)
            })
        }
    }

    /// Errors tonic raises before a handler runs travel as trailers-only answers:
    /// the status is in the headers, which is where it is rewritten.
    fn rewrite(path: &str, headers: &mut http::HeaderMap) {
        let Some(status) = tonic::Status::from_header_map(headers) else {
            return;
        };
        let rpc = path.rsplit('/').next().unwrap_or(path);
        let new = match status.code() {
            tonic::Code::Internal if status.message().starts_with(PROST_DECODE) => {
                let cause = &status.message()[PROST_DECODE.len()..];
                let cause = cause.strip_prefix(':').unwrap_or(cause);
                tracing::debug!(method = rpc, "undecodable request");
                tonic::Status::invalid_argument(undecodable(rpc, cause))
            }
            tonic::Code::Unimplemented if status.message().is_empty() => {
                tonic::Status::unimplemented(format!(
                    "unknown method {}",
                    bounded(path, MAX_QUOTED)
                ))
            }
            _ => return,
        };
        let _ = new.add_header(headers);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn headers_of(s: tonic::Status) -> http::HeaderMap {
            let mut h = http::HeaderMap::new();
            s.add_header(&mut h).unwrap();
            h
        }

        #[test]
        fn a_decode_failure_becomes_invalid_argument_naming_the_rpc() {
            let mut h = headers_of(tonic::Status::internal(
                "failed to decode Protobuf message: invalid wire type value: 7",
            ));
            rewrite(
                "/attestation_agent.AttestationAgentService/GetToken",
                &mut h,
            );
            let s = tonic::Status::from_header_map(&h).unwrap();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                s.message(),
                "GetToken: cannot decode the request: invalid wire type value: 7"
            );
        }

        #[test]
        fn an_unknown_method_is_named_and_the_name_is_bounded() {
            let long = format!("/x.Y/{}", "M".repeat(10_000));
            let mut h = headers_of(tonic::Status::unimplemented(""));
            rewrite(&long, &mut h);
            let s = tonic::Status::from_header_map(&h).unwrap();
            assert_eq!(s.code(), tonic::Code::Unimplemented);
            assert!(s.message().starts_with("unknown method /x.Y/MMM"));
            assert!(s.message().len() < 300, "{}", s.message().len());
        }

        #[test]
        fn the_services_own_answers_pass_unchanged() {
            for s in [
                tonic::Status::internal("plugin sample: cannot connect"),
                tonic::Status::unimplemented("GetToken coco_as is not built in"),
                tonic::Status::invalid_argument("runtime data is 65 bytes"),
            ] {
                let mut h = headers_of(s.clone());
                rewrite("/p.S/M", &mut h);
                let back = tonic::Status::from_header_map(&h).unwrap();
                assert_eq!((back.code(), back.message()), (s.code(), s.message()));
            }
        }
    }
}
