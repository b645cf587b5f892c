//! Pure assembly of upstream's Azure vTPM evidence, version 2 (no device here):
//!
//! `{"hcl_report":"<b64url>","tpm_quote":{"message":"<hex>","pcrs":["<hex>",…24],
//! "signature":"<hex>"},"vcek":"<b64url DER>","version":2}` for SNP, with
//! `"td_quote":"<b64url>"` instead of `vcek` for TDX. Keys sorted, compact, as
//! upstream prints a `serde_json::Value`; base64url with padding, as serde_with's
//! `UrlSafe` writes it.

use attester_sdk::{Evidence, Result};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;

use crate::vtpm::Quote;

/// The evidence version upstream's verifiers read today.
pub const VERSION: u32 = 2;

/// The hardware-specific member: SNP's VCEK or TDX's TD quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endorsement {
    /// Key `vcek`: the chip's VCEK, DER.
    Vcek,
    /// Key `td_quote`: the TD quote IMDS made from the TD report.
    TdQuote,
}

impl Endorsement {
    pub fn key(self) -> &'static str {
        match self {
            Endorsement::Vcek => "vcek",
            Endorsement::TdQuote => "td_quote",
        }
    }
}

/// The document for `quote`, `hcl_report` and the endorsement bytes.
pub fn evidence(
    format: &str,
    quote: &Quote,
    hcl_report: &[u8],
    endorsement: Endorsement,
    endorsement_bytes: &[u8],
) -> Result<Evidence> {
    let mut doc = serde_json::Map::new();
    doc.insert("version".into(), VERSION.into());
    doc.insert(
        "tpm_quote".into(),
        serde_json::json!({
            "signature": hex::encode(&quote.signature),
            "message": hex::encode(&quote.message),
            "pcrs": quote.pcrs.iter().map(hex::encode).collect::<Vec<_>>(),
        }),
    );
    doc.insert("hcl_report".into(), URL_SAFE.encode(hcl_report).into());
    doc.insert(
        endorsement.key().into(),
        URL_SAFE.encode(endorsement_bytes).into(),
    );
    Evidence::from_json(&serde_json::Value::Object(doc), format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::bytes as fixture;
    use base64::engine::general_purpose::URL_SAFE;

    /// Rebuilding the recorded v2 document from its parts gives back the same
    /// JSON value, key for key, and upstream's byte form of it.
    #[test]
    fn recorded_v2_document_round_trips() {
        let rec: serde_json::Value =
            serde_json::from_slice(&fixture("snp-evidence-v2.json")).unwrap();
        let q = &rec["tpm_quote"];
        let quote = Quote {
            signature: hex::decode(q["signature"].as_str().unwrap()).unwrap(),
            message: hex::decode(q["message"].as_str().unwrap()).unwrap(),
            pcrs: q["pcrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    hex::decode(p.as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap()
                })
                .collect(),
        };
        let hcl = URL_SAFE
            .decode(rec["hcl_report"].as_str().unwrap())
            .unwrap();
        let vcek = URL_SAFE.decode(rec["vcek"].as_str().unwrap()).unwrap();
        let e = evidence("az-snp-vtpm/2", &quote, &hcl, Endorsement::Vcek, &vcek).unwrap();
        let ours: serde_json::Value = serde_json::from_slice(&e.bytes).unwrap();
        assert_eq!(ours, rec);
        // Upstream's bytes: the recorded value printed compactly with sorted keys.
        assert_eq!(e.bytes, serde_json::to_vec(&rec).unwrap());
        assert!(e.bytes.starts_with(br#"{"hcl_report":""#));
        assert_eq!(e.format, "az-snp-vtpm/2");
    }

    #[test]
    fn tdx_document_has_td_quote_instead_of_vcek() {
        let quote = Quote {
            signature: vec![1, 2],
            message: vec![3],
            pcrs: vec![[0xab; 32]; 24],
        };
        let e = evidence(
            "az-tdx-vtpm/2",
            &quote,
            &[0xfb, 0xff],
            Endorsement::TdQuote,
            &[0xfe],
        )
        .unwrap();
        let s = String::from_utf8(e.bytes).unwrap();
        assert!(s.starts_with(r#"{"hcl_report":"-_8=","td_quote":"_g==","tpm_quote":{"message":"03","pcrs":["abab"#), "{s}");
        assert!(s.ends_with(r#""],"signature":"0102"},"version":2}"#), "{s}");
        assert!(!s.contains("vcek"));
    }
}
