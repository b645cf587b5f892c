//! Protocol version negotiation. A compatibility check, not authentication: the
//! core owns the socket directory, which is what keeps strangers out.

use crate::{Error, Result};

/// Protocol versions of `attestd.attester.v1` this SDK speaks, lowest first.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];

/// The highest version both sides speak, or a readable `FailedPrecondition` naming
/// both lists. `ours` is the side doing the check; `who` names the other side.
pub fn negotiate(ours: &[u32], theirs: &[u32], who: &str) -> Result<u32> {
    ours.iter()
        .filter(|v| theirs.contains(v))
        .max()
        .copied()
        .ok_or_else(|| {
            Error::failed_precondition(format!(
                "plugin protocol version mismatch: we speak {}, {who} speaks {}",
                list(ours),
                list(theirs)
            ))
        })
}

fn list(v: &[u32]) -> String {
    if v.is_empty() {
        return "no version".into();
    }
    let s: Vec<String> = v.iter().map(|x| format!("v{x}")).collect();
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn picks_highest_common() {
        assert_eq!(negotiate(&[1, 2, 3], &[2, 3, 4], "the plugin").unwrap(), 3);
        assert_eq!(negotiate(&[1], &[1], "the plugin").unwrap(), 1);
    }

    #[test]
    fn mismatch_is_readable_failed_precondition() {
        let e = negotiate(&[1], &[99], "the plugin").unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "plugin protocol version mismatch: we speak v1, the plugin speaks v99"
        );
        let e = negotiate(&[1], &[], "the core").unwrap_err();
        assert!(e.message().ends_with("the core speaks no version"));
    }
}
