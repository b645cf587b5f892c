//! The sample attester: no hardware, evidence exactly as upstream's sample attester
//! prints it, `{"report_data":"<std-base64>","svn":"1"}`.
//!
//! It runs only when configured: attestd never falls back to it.

use attester_sdk::{
    Attester, Capabilities, DeviceRole, Error, Evidence, InitDataBinding, PluginInfo, ReportData,
    Result,
};
use base64::Engine as _;

/// Report data accepted, like the hardware TEEs.
pub const MAX_REPORT_DATA: u32 = 64;

/// The sample attester.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Serve as `sampledevice`, an additional (device) attester.
    pub device: bool,
    /// An emulated launch-time init-data register: when set, `BindInitData`
    /// compares with it the way TDX and SNP do.
    pub init_data: Option<Vec<u8>>,
}

#[derive(serde::Serialize)]
struct SampleQuote {
    svn: &'static str,
    report_data: String,
}

/// The evidence document for `report_data` (pure; no I/O).
pub fn evidence(report_data: &[u8]) -> Result<Evidence> {
    let quote = SampleQuote {
        svn: "1",
        report_data: base64::engine::general_purpose::STANDARD.encode(report_data),
    };
    Evidence::from_json(&quote, "sample/1")
}

impl Attester for Sample {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: "attester-sample".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            tee: if self.device {
                "sampledevice"
            } else {
                "sample"
            }
            .into(),
            evidence_format: "sample/1".into(),
            capabilities: Capabilities {
                max_report_data: MAX_REPORT_DATA,
                init_data: if self.init_data.is_some() {
                    InitDataBinding::Compare
                } else {
                    InitDataBinding::None
                },
                role: if self.device {
                    DeviceRole::Additional
                } else {
                    DeviceRole::Primary
                },
                ..Default::default()
            },
        }
    }

    fn detect(&self) -> Result<bool> {
        // The sample is never detected: it runs only when configured by name.
        Ok(false)
    }

    async fn evidence(&self, report_data: ReportData) -> Result<Evidence> {
        evidence(report_data.as_bytes())
    }

    async fn bind_init_data(&self, digest: Vec<u8>) -> Result<()> {
        let Some(expected) = &self.init_data else {
            return Err(Error::unsupported("init-data binding"));
        };
        // Compare zero-padded to the register size, as TDX (48 B) and SNP (32 B) do.
        let len = expected.len().max(digest.len());
        let mut a = expected.clone();
        a.resize(len, 0);
        let mut b = digest.clone();
        b.resize(len, 0);
        if a != b {
            return Err(Error::failed_precondition(format!(
                "init-data digest {} does not match the launch-time value {}",
                hex::encode(&digest),
                hex::encode(expected)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attester_sdk::Code;

    #[test]
    fn evidence_matches_upstream_bytes() {
        let e = evidence(b"hello-coco").unwrap();
        assert_eq!(
            std::str::from_utf8(&e.bytes).unwrap(),
            r#"{"report_data":"aGVsbG8tY29jbw==","svn":"1"}"#
        );
        assert_eq!(e.format, "sample/1");
    }

    #[test]
    fn empty_report_data() {
        let e = evidence(b"").unwrap();
        assert_eq!(e.bytes, br#"{"report_data":"","svn":"1"}"#);
    }

    #[tokio::test]
    async fn init_data_compare() {
        let s = Sample {
            device: false,
            init_data: Some(vec![0xab; 32]),
        };
        s.bind_init_data(vec![0xab; 32]).await.unwrap();
        let e = s.bind_init_data(vec![0xac; 32]).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().starts_with("init-data digest acac"));
        let plain = Sample::default();
        let e = plain.bind_init_data(vec![1]).await.unwrap_err();
        assert_eq!(e.code(), Code::Unsupported);
    }

    #[test]
    fn info_reflects_role() {
        assert_eq!(Sample::default().info().tee, "sample");
        let d = Sample {
            device: true,
            init_data: None,
        };
        assert_eq!(d.info().tee, "sampledevice");
        assert_eq!(d.info().capabilities.role, DeviceRole::Additional);
    }
}
