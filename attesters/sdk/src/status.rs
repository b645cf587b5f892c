//! The one mapping between [`Code`] and each transport's status codes. The core's
//! AA servers and the plugin servers both go through here, so a code means the
//! same thing on every wire.

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
use crate::{Code, Error};

#[cfg(feature = "ttrpc")]
pub fn to_ttrpc_code(code: Code) -> ttrpc::Code {
    match code {
        Code::InvalidArgument => ttrpc::Code::INVALID_ARGUMENT,
        Code::Unsupported => ttrpc::Code::UNIMPLEMENTED,
        Code::Unavailable => ttrpc::Code::UNAVAILABLE,
        Code::FailedPrecondition => ttrpc::Code::FAILED_PRECONDITION,
        Code::DeadlineExceeded => ttrpc::Code::DEADLINE_EXCEEDED,
        Code::NotFound => ttrpc::Code::NOT_FOUND,
        Code::ResourceExhausted => ttrpc::Code::RESOURCE_EXHAUSTED,
        Code::Internal => ttrpc::Code::INTERNAL,
    }
}

#[cfg(feature = "ttrpc")]
pub fn from_ttrpc_code(code: ttrpc::Code) -> Code {
    match code {
        ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::OUT_OF_RANGE => Code::InvalidArgument,
        ttrpc::Code::UNIMPLEMENTED => Code::Unsupported,
        ttrpc::Code::UNAVAILABLE => Code::Unavailable,
        ttrpc::Code::FAILED_PRECONDITION => Code::FailedPrecondition,
        ttrpc::Code::DEADLINE_EXCEEDED => Code::DeadlineExceeded,
        ttrpc::Code::NOT_FOUND => Code::NotFound,
        ttrpc::Code::RESOURCE_EXHAUSTED => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// The ttrpc error a server returns for `e` (message with its causes).
#[cfg(feature = "ttrpc")]
pub fn to_ttrpc(e: &Error) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(to_ttrpc_code(e.code()), e.chain()))
}

/// A ttrpc client error as an [`Error`]: a status keeps its code and message; a
/// broken connection is `Unavailable`; the client's own deadline is `DeadlineExceeded`.
#[cfg(feature = "ttrpc")]
pub fn from_ttrpc(e: ttrpc::Error) -> Error {
    match e {
        ttrpc::Error::RpcStatus(s) => Error::new(from_ttrpc_code(s.code()), s.message.clone()),
        ttrpc::Error::Others(m) if m.contains("deadline") => {
            Error::new(Code::DeadlineExceeded, "call timed out")
                .with_source(ttrpc::Error::Others(m))
        }
        other => Error::disconnected("connection to peer failed").with_source(other),
    }
}

#[cfg(feature = "grpc")]
pub fn to_grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::Unsupported => tonic::Code::Unimplemented,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        Code::NotFound => tonic::Code::NotFound,
        Code::ResourceExhausted => tonic::Code::ResourceExhausted,
        Code::Internal => tonic::Code::Internal,
    }
}

#[cfg(feature = "grpc")]
pub fn from_grpc_code(code: tonic::Code) -> Code {
    match code {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Code::InvalidArgument,
        tonic::Code::Unimplemented => Code::Unsupported,
        tonic::Code::Unavailable => Code::Unavailable,
        tonic::Code::FailedPrecondition => Code::FailedPrecondition,
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Code::DeadlineExceeded,
        tonic::Code::NotFound => Code::NotFound,
        tonic::Code::ResourceExhausted => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

/// The gRPC status a server returns for `e` (message with its causes).
#[cfg(feature = "grpc")]
pub fn to_grpc(e: &Error) -> tonic::Status {
    tonic::Status::new(to_grpc_code(e.code()), e.chain())
}

/// A gRPC client status as an [`Error`], keeping code and message.
#[cfg(feature = "grpc")]
pub fn from_grpc(s: tonic::Status) -> Error {
    // A status the client made itself from a transport failure carries that
    // failure as its source; one the peer sent does not.
    if timed_out(&s) {
        return Error::new(Code::DeadlineExceeded, "call timed out").with_source(s);
    }
    if std::error::Error::source(&s).is_some() && s.code() != tonic::Code::DeadlineExceeded {
        let msg = format!("connection to peer failed: {}", s.message());
        return Error::disconnected(msg).with_source(s);
    }
    Error::new(from_grpc_code(s.code()), s.message().to_string())
}

/// Whether tonic's own client-side deadline fired (it reports that as `Cancelled`).
#[cfg(feature = "grpc")]
fn timed_out(s: &tonic::Status) -> bool {
    let mut cur = std::error::Error::source(s);
    while let Some(e) = cur {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Code; 8] = [
        Code::InvalidArgument,
        Code::Unsupported,
        Code::Unavailable,
        Code::FailedPrecondition,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::ResourceExhausted,
        Code::Internal,
    ];

    #[cfg(feature = "ttrpc")]
    #[test]
    fn ttrpc_codes_round_trip() {
        for c in ALL {
            assert_eq!(from_ttrpc_code(to_ttrpc_code(c)), c);
        }
        let e = from_ttrpc(to_ttrpc(&Error::invalid_argument("too big")));
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "too big");
    }

    #[cfg(feature = "ttrpc")]
    #[test]
    fn ttrpc_broken_connection_is_unavailable() {
        let e = from_ttrpc(ttrpc::Error::RemoteClosed);
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.is_disconnect());
        let e = from_ttrpc(to_ttrpc(&Error::unavailable("device busy")));
        assert_eq!(e.code(), Code::Unavailable);
        assert!(!e.is_disconnect());
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn grpc_codes_round_trip() {
        for c in ALL {
            assert_eq!(from_grpc_code(to_grpc_code(c)), c);
        }
        let e = from_grpc(to_grpc(&Error::failed_precondition("mismatch")));
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.message(), "mismatch");
    }
}
