//! The one error type plugins and the core exchange, and its status codes.

use std::fmt;

/// What kind of failure an [`Error`] is; each maps to exactly one status code
/// on either transport (see [`crate::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The caller sent something unacceptable (oversized report data, bad digest length).
    InvalidArgument,
    /// The operation is not offered by this attester (no runtime measurement, say).
    Unsupported,
    /// The attester or its device is not reachable right now; retrying may help.
    Unavailable,
    /// The system is not in a state that allows the operation (init-data mismatch,
    /// protocol version mismatch, token type not configured).
    FailedPrecondition,
    /// The call did not finish before its deadline.
    DeadlineExceeded,
    /// A named thing does not exist.
    NotFound,
    /// Too much is waiting already (a device's queue is full); retry later.
    ResourceExhausted,
    /// Anything else: a bug or an unexpected device answer.
    Internal,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Code::InvalidArgument => "invalid argument",
            Code::Unsupported => "unsupported",
            Code::Unavailable => "unavailable",
            Code::FailedPrecondition => "failed precondition",
            Code::DeadlineExceeded => "deadline exceeded",
            Code::NotFound => "not found",
            Code::ResourceExhausted => "resource exhausted",
            Code::Internal => "internal",
        })
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with a [`Code`], a lowercase message naming what failed, and its cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: Code,
    message: String,
    #[source]
    source: Option<Cause>,
    /// The connection to the peer broke (as opposed to the peer answering with a
    /// status): the call may be retried on a new connection if it is idempotent.
    disconnected: bool,
}

/// Result alias used throughout the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            source: None,
            disconnected: false,
        }
    }

    /// The connection to the peer broke; `Unavailable`, marked retryable.
    pub fn disconnected(message: impl Into<String>) -> Self {
        let mut e = Self::new(Code::Unavailable, message);
        e.disconnected = true;
        e
    }

    /// Whether the connection broke rather than the peer answering with an error.
    pub fn is_disconnect(&self) -> bool {
        self.disconnected
    }

    /// Attach the underlying cause (kept, and shown by [`Error::chain`]).
    pub fn with_source(mut self, source: impl Into<Cause>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `operation` names what is not supported, e.g. "runtime measurement".
    pub fn unsupported(operation: &str) -> Self {
        Self::new(
            Code::Unsupported,
            format!("{operation} is not supported by this attester"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether an error of type `T` is among this error's causes: a mark a
    /// caller set with [`Error::with_source`] survives context added on top.
    pub fn caused_by<T: std::error::Error + 'static>(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(e) = cur {
            if e.is::<T>() {
                return true;
            }
            cur = e.source();
        }
        false
    }

    /// The message followed by every cause, `a: b: c`: what goes on the wire,
    /// since the peer cannot walk our source chain.
    ///
    /// A cause that only repeats what is already said is left out: some
    /// libraries' errors display their source's text as their own (tss-esapi's
    /// "bad locality: bad locality").
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(e) = cur {
            let text = e.to_string();
            if !text.is_empty() && !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cur = e.source();
        }
        out
    }

    /// Prefix the message with context, keeping code and cause.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_among_the_causes_is_found_under_context_and_wrapping() {
        #[derive(Debug, thiserror::Error)]
        #[error("")]
        struct Mark;
        let marked = Error::failed_precondition("no TEE").with_source(Mark);
        assert!(marked.caused_by::<Mark>());
        let wrapped = Error::internal("start").with_source(marked.context("plugin x"));
        assert!(wrapped.caused_by::<Mark>());
        assert!(!Error::internal("plain").caused_by::<Mark>());
        let io = std::io::Error::other("x");
        assert!(!Error::internal("io").with_source(io).caused_by::<Mark>());
    }

    #[test]
    fn chain_includes_every_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::unavailable("cannot open /dev/tpmrm0").with_source(io);
        assert_eq!(e.chain(), "cannot open /dev/tpmrm0: no such file");
        assert_eq!(e.to_string(), "cannot open /dev/tpmrm0");
        assert_eq!(e.code(), Code::Unavailable);
    }

    #[test]
    fn context_keeps_code_and_cause() {
        let e = Error::internal("boom")
            .with_source(std::io::Error::other("disk"))
            .context("plugin sample");
        assert_eq!(e.chain(), "plugin sample: boom: disk");
        assert_eq!(e.code(), Code::Internal);
    }

    #[test]
    fn unsupported_names_the_operation() {
        let e = Error::unsupported("runtime measurement");
        assert_eq!(e.code(), Code::Unsupported);
        assert_eq!(
            e.message(),
            "runtime measurement is not supported by this attester"
        );
    }

    #[test]
    fn a_cause_that_repeats_what_is_said_is_not_said_again() {
        #[derive(Debug)]
        struct Same(&'static str, Option<Box<Same>>);
        impl fmt::Display for Same {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Same {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = Error::internal("TPM2_PCR_Extend of PCR 17 failed").with_source(Same(
            "bad locality",
            Some(Box::new(Same("bad locality", None))),
        ));
        assert_eq!(e.chain(), "TPM2_PCR_Extend of PCR 17 failed: bad locality");
        let e = Error::internal("a").with_source(Same("b", Some(Box::new(Same("c", None)))));
        assert_eq!(e.chain(), "a: b: c");
    }
}
