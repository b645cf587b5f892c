//! Protocol version negotiation. A compatibility check, not authentication: the
//! core owns the socket directory, which is what keeps strangers out.

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
use crate::convert::InfoFromPeer;
use crate::{Error, Result};
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
use crate::{Handshake, Transport};

/// Protocol versions of `attestd.attester.v1` this SDK speaks, lowest first.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];

/// The longest text (name, version, TEE, evidence format, transport) a plugin's
/// `Info` answer may carry: it goes into log lines and error messages.
pub const MAX_INFO_TEXT: usize = 128;
/// The most protocol versions or register mappings a plugin's `Info` may list.
pub const MAX_INFO_LIST: usize = 64;

/// A plugin's `Info` answer as the core takes it: bounded, printable text, a
/// common protocol version, and the transport it was asked over. A plugin is
/// another process, possibly another vendor's image: nothing it says is trusted
/// to be small or well-formed.
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
pub(crate) fn accept(ours: &[u32], peer: InfoFromPeer, transport: Transport) -> Result<Handshake> {
    let i = &peer.info;
    for (field, text) in [
        ("name", &i.name),
        ("version", &i.version),
        ("tee", &i.tee),
        ("evidence_format", &i.evidence_format),
        ("transport", &peer.transport),
    ] {
        check_text(field, text)?;
    }
    if let Some(h) = &i.capabilities.measurement_hash {
        check_text("measurement_hash", h)?;
    }
    for (field, n) in [
        ("protocol_versions", peer.versions.len()),
        ("register_map", i.capabilities.register_map.len()),
    ] {
        if n > MAX_INFO_LIST {
            return Err(Error::failed_precondition(format!(
                "the plugin's info lists {n} {field}, more than {MAX_INFO_LIST}"
            )));
        }
    }
    let protocol_version = negotiate(ours, &peer.versions, "the plugin")?;
    if peer.transport != transport.to_string() {
        return Err(Error::failed_precondition(format!(
            "plugin says it serves {:?} but answered over {transport}",
            peer.transport
        )));
    }
    Ok(Handshake {
        info: peer.info,
        transport,
        protocol_version,
        plugin_versions: peer.versions,
    })
}

#[cfg(any(feature = "ttrpc", feature = "grpc"))]
fn check_text(field: &str, text: &str) -> Result<()> {
    let n = text.chars().count();
    if n > MAX_INFO_TEXT {
        return Err(Error::failed_precondition(format!(
            "the plugin's info has a {field} of {n} characters, more than {MAX_INFO_TEXT}"
        )));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(Error::failed_precondition(format!(
            "the plugin's info has control characters in its {field}"
        )));
    }
    Ok(())
}

/// An `Info` answer's protobuf bytes as they arrive over `transport`, read and
/// checked as [`crate::RemoteAttester::handshake`] does: what a plugin can make
/// the core believe about it (the fuzz targets and the conformance checks use it).
#[cfg(any(feature = "ttrpc", feature = "grpc"))]
pub fn read_info(bytes: &[u8], transport: Transport, ours: &[u32]) -> Result<Handshake> {
    let undecodable =
        |e: String| Error::invalid_argument(format!("cannot decode the plugin's info: {e}"));
    let peer = match transport {
        #[cfg(feature = "ttrpc")]
        Transport::Ttrpc => {
            use protobuf::Message as _;
            let r = attestd_proto::ttrpc::attester::InfoResponse::parse_from_bytes(bytes)
                .map_err(|e| undecodable(e.to_string()))?;
            crate::convert::ttrpc::info_from_pb(r)
        }
        #[cfg(feature = "grpc")]
        Transport::Grpc => {
            use prost::Message as _;
            let r = attestd_proto::grpc::attester::InfoResponse::decode(bytes)
                .map_err(|e| undecodable(e.to_string()))?;
            crate::convert::grpc::info_from_pb(r)
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(Error::new(
                crate::Code::Unsupported,
                format!("this build reads no {other} answers"),
            ))
        }
    };
    accept(ours, peer, transport)
}

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

/// At most this many versions are named in a mismatch.
const LISTED: usize = 8;

fn list(v: &[u32]) -> String {
    if v.is_empty() {
        return "no version".into();
    }
    let s: Vec<String> = v.iter().take(LISTED).map(|x| format!("v{x}")).collect();
    let more = v.len().saturating_sub(LISTED);
    if more > 0 {
        format!("{} and {more} more", s.join(", "))
    } else {
        s.join(", ")
    }
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

    #[cfg(feature = "ttrpc")]
    fn info_bytes(edit: impl FnOnce(&mut attestd_proto::ttrpc::attester::InfoResponse)) -> Vec<u8> {
        use protobuf::Message as _;
        let mut r = attestd_proto::ttrpc::attester::InfoResponse {
            protocol_versions: vec![1],
            name: "sample".into(),
            version: "0.1.0".into(),
            tee: "sample".into(),
            evidence_format: "json".into(),
            transport: "ttrpc".into(),
            ..Default::default()
        };
        edit(&mut r);
        r.write_to_bytes().unwrap()
    }

    #[cfg(feature = "ttrpc")]
    #[test]
    fn a_plugins_info_is_read_with_its_text_and_lists_bounded() {
        let ok = read_info(&info_bytes(|_| {}), Transport::Ttrpc, PROTOCOL_VERSIONS).unwrap();
        assert_eq!((ok.info.tee.as_str(), ok.protocol_version), ("sample", 1));
        // Text at the bound is taken, one more character is not.
        let at = "n".repeat(MAX_INFO_TEXT);
        let b = info_bytes(|r| r.name = at.clone());
        assert_eq!(read_info(&b, Transport::Ttrpc, &[1]).unwrap().info.name, at);
        let b = info_bytes(|r| r.tee = "t".repeat(MAX_INFO_TEXT + 1));
        let e = read_info(&b, Transport::Ttrpc, &[1]).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "the plugin's info has a tee of 129 characters, more than 128"
        );
        let b = info_bytes(|r| r.version = "1\n[ERROR] forged".into());
        let e = read_info(&b, Transport::Ttrpc, &[1]).unwrap_err();
        assert!(e.message().contains("control characters in its version"));
        // Lists: at the bound, and past it.
        let b = info_bytes(|r| r.protocol_versions = (1..=MAX_INFO_LIST as u32).collect());
        assert!(read_info(&b, Transport::Ttrpc, &[1]).is_ok());
        let b = info_bytes(|r| r.protocol_versions = (1..=MAX_INFO_LIST as u32 + 1).collect());
        let e = read_info(&b, Transport::Ttrpc, &[1]).unwrap_err();
        assert!(e.message().contains("65 protocol_versions, more than 64"));
        // A mismatch names at most eight versions.
        let b = info_bytes(|r| r.protocol_versions = (100..150).collect());
        let e = read_info(&b, Transport::Ttrpc, &[1]).unwrap_err();
        assert!(
            e.message().ends_with("v106, v107 and 42 more"),
            "{}",
            e.message()
        );
        // Claimed transport, and bytes that are no Info at all.
        let b = info_bytes(|r| r.transport = "grpc".into());
        assert!(read_info(&b, Transport::Ttrpc, &[1]).is_err());
        let e = read_info(&[0x00, 0x01], Transport::Ttrpc, &[1]).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
