//! Pure assembly of upstream's SNP evidence:
//! `{"attestation_report": <sev AttestationReport, serde>, "cert_chain": [<CertTableEntry>] | null}`
//! — the struct upstream's attester serialises and Trustee's verifier deserialises.

use attester_sdk::{Evidence, Result};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry;

pub const FORMAT: &str = "snp/1";

#[derive(serde::Serialize)]
struct SnpEvidence<'a> {
    attestation_report: &'a AttestationReport,
    cert_chain: Option<&'a [CertTableEntry]>,
}

pub fn evidence(report: &AttestationReport, certs: Option<&[CertTableEntry]>) -> Result<Evidence> {
    Evidence::from_json(
        &SnpEvidence {
            attestation_report: report,
            cert_chain: certs,
        },
        FORMAT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::firmware::host::CertType;

    const REPORT: &[u8] = include_bytes!("../tests/fixtures/test-report.bin");

    #[test]
    fn shape_is_upstreams() {
        let r = crate::report::parse(REPORT).unwrap();
        let e = evidence(&r, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&e.bytes).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["attestation_report", "cert_chain"]);
        assert!(v["cert_chain"].is_null());
        assert_eq!(v["attestation_report"]["version"], 2);
        assert_eq!(
            v["attestation_report"]["report_data"]
                .as_array()
                .unwrap()
                .len(),
            64
        );
        // compact, sorted at every level (upstream prints a serde_json::Value)
        let s = std::str::from_utf8(&e.bytes).unwrap();
        assert!(
            s.starts_with(r#"{"attestation_report":{"author_key_digest":["#),
            "{s:.60}"
        );
        assert!(!s.contains(' ') && !s.contains('\n'));

        let certs = [CertTableEntry::new(CertType::VCEK, vec![1, 2])];
        let e = evidence(&r, Some(&certs)).unwrap();
        let s = std::str::from_utf8(&e.bytes).unwrap();
        assert!(
            s.ends_with(r#""cert_chain":[{"cert_type":"VCEK","data":[1,2]}]}"#),
            "{}",
            &s[s.len() - 60..]
        );
    }
}
