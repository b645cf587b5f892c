//! Domain types of the plugin contract, independent of either transport.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Report data handed to an attester, already checked against its advertised maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportData(Vec<u8>);

impl ReportData {
    /// Accept `bytes` if they fit in `max` bytes; otherwise an `InvalidArgument` error
    /// that states both sizes.
    pub fn new(bytes: Vec<u8>, max: usize) -> Result<Self> {
        if bytes.len() > max {
            return Err(Error::invalid_argument(format!(
                "report data is {} bytes, more than the {max} bytes this attester accepts",
                bytes.len()
            )));
        }
        Ok(ReportData(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The data zero-padded to `len` bytes, the way TDX and SNP fill their report-data field.
    /// Callers only ask for `len` at least the advertised maximum, so nothing is cut.
    pub fn zero_padded(&self, len: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(len.max(v.len()), 0);
        v
    }
}

/// Evidence as a plugin produces it: opaque bytes (compact JSON in the upstream format
/// for the TEE) and a format identifier such as `sample/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub bytes: Vec<u8>,
    pub format: String,
}

impl Evidence {
    /// Serialise `value` exactly as upstream does: object keys sorted at every level
    /// (upstream goes through `serde_json::Value`, a sorted map there), printed compactly.
    /// The bytes therefore match upstream's, not only the JSON. Keys are sorted here
    /// explicitly: any crate in the build turning on serde_json's `preserve_order`
    /// would otherwise silently change the bytes.
    pub fn from_json(value: &impl serde::Serialize, format: impl Into<String>) -> Result<Self> {
        let value = serde_json::to_value(value)
            .map_err(|e| Error::internal("cannot serialise evidence").with_source(e))?;
        let bytes = serde_json::to_vec(&sorted(value))
            .map_err(|e| Error::internal("cannot serialise evidence").with_source(e))?;
        Ok(Evidence {
            bytes,
            format: format.into(),
        })
    }
}

/// `v` with every object's keys in sorted order (insertion order is then sorted too,
/// whichever map type serde_json was built with).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Which wire a plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ttrpc,
    Grpc,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Ttrpc => "ttrpc",
            Transport::Grpc => "grpc",
        })
    }
}

impl FromStr for Transport {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ttrpc" => Ok(Transport::Ttrpc),
            "grpc" => Ok(Transport::Grpc),
            other => Err(Error::invalid_argument(format!(
                "unknown transport {other:?}: expected \"ttrpc\" or \"grpc\""
            ))),
        }
    }
}

/// How an attester binds an init-data digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitDataBinding {
    /// Not supported.
    #[default]
    None,
    /// Compare with a launch-time register (TDX MRCONFIGID, SNP HOSTDATA).
    Compare,
    /// Extend into a register (TPM/vTPM PCR 8).
    Extend,
}

/// Whether the plugin is the platform's primary TEE or an additional (device) attester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRole {
    #[default]
    Primary,
    Additional,
}

/// A PCR index as callers name it, and the TEE register it lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RegisterMapping {
    pub pcr: u64,
    pub register: u64,
}

/// What an attester can do, advertised in the handshake so the core can answer
/// "not supported" without a round trip.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Capabilities {
    /// Largest report data accepted, in bytes.
    pub max_report_data: u32,
    /// Runtime measurement (extend) supported.
    pub runtime_measurement: bool,
    /// Hash algorithm of the measurement registers (`sha256`, `sha384`), if any.
    pub measurement_hash: Option<String>,
    /// PCR → register map; empty (and no `default_register`) when PCR indexes are
    /// the registers.
    pub register_map: Vec<RegisterMapping>,
    /// The register of a PCR not in `register_map` (TDX: RTMR 3, as upstream);
    /// `None`: such a PCR is refused.
    pub default_register: Option<u64>,
    /// Registers can be read back.
    pub register_read: bool,
    pub init_data: InitDataBinding,
    pub role: DeviceRole,
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    /// Plugin name, e.g. `attester-sample`.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// TEE name as kbs-types spells it: `tdx`, `snp`, `tpm`, `az-snp-vtpm`, `sample`, …
    pub tee: String,
    /// Evidence format identifier, e.g. `sample/1`.
    pub evidence_format: String,
    pub capabilities: Capabilities,
}

/// The outcome of a successful handshake, as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Handshake {
    pub info: PluginInfo,
    pub transport: Transport,
    /// The protocol version both sides agreed on.
    pub protocol_version: u32,
    /// Every version the plugin speaks.
    pub plugin_versions: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn report_data_at_limit_is_accepted() {
        let rd = ReportData::new(vec![7; 64], 64).unwrap();
        assert_eq!(rd.as_bytes().len(), 64);
    }

    #[test]
    fn report_data_over_limit_is_invalid_argument() {
        let e = ReportData::new(vec![7; 65], 64).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "report data is 65 bytes, more than the 64 bytes this attester accepts"
        );
    }

    #[test]
    fn zero_padding_fills_to_length() {
        let rd = ReportData::new(vec![1, 2], 64).unwrap();
        let p = rd.zero_padded(4);
        assert_eq!(p, vec![1, 2, 0, 0]);
    }

    #[test]
    fn evidence_keys_are_sorted_and_compact() {
        #[derive(serde::Serialize)]
        struct Out {
            svn: &'static str,
            report_data: &'static str,
        }
        let e = Evidence::from_json(
            &Out {
                svn: "1",
                report_data: "x",
            },
            "t/1",
        )
        .unwrap();
        assert_eq!(e.bytes, br#"{"report_data":"x","svn":"1"}"#);
    }

    #[test]
    fn nested_keys_are_sorted() {
        let v = serde_json::json!({"b": {"z": 1, "a": [{"y": 2, "x": 3}]}, "a": null});
        let e = Evidence::from_json(&v, "t/1").unwrap();
        assert_eq!(e.bytes, br#"{"a":null,"b":{"a":[{"x":3,"y":2}],"z":1}}"#);
    }

    #[test]
    fn transport_parses_and_rejects() {
        assert_eq!("grpc".parse::<Transport>().unwrap(), Transport::Grpc);
        assert_eq!("ttrpc".parse::<Transport>().unwrap(), Transport::Ttrpc);
        let e = "http".parse::<Transport>().unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
