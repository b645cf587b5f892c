//! Pure assembly of the upstream TPM evidence document (no TPM access here).
//!
//! `{"ak_public":"<std-b64 DER SPKI>","tpm_quote":{"message":"<std-b64 TPMS_ATTEST>",
//! "pcrs":["<hex sha256>", …24],"signature":"<std-b64 TPMT_SIGNATURE>"}}`, keys sorted.

use attester_sdk::{Evidence, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Bytes of qualifying data in the quote. Upstream resizes report data to this
/// (zero-pad or truncate) and Trustee's TPM verifier resizes the expected value the
/// same way, so a 32-byte prefix of a longer digest is what binds.
pub const NONCE_LEN: usize = 32;

/// Evidence format identifier.
pub const FORMAT: &str = "tpm/1";

/// What the TPM returned for one quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Marshalled TPMS_ATTEST.
    pub message: Vec<u8>,
    /// Marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// The SHA-256 bank, PCR 0 to 23.
    pub pcrs: Vec<[u8; 32]>,
    /// The AK's public key, DER SubjectPublicKeyInfo.
    pub ak_public_der: Vec<u8>,
}

#[derive(serde::Serialize)]
struct TpmQuote {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

#[derive(serde::Serialize)]
struct Document {
    tpm_quote: TpmQuote,
    ak_public: String,
}

/// Report data as the quote's qualifying data: resized to [`NONCE_LEN`] exactly as
/// upstream does.
pub fn nonce(report_data: &[u8]) -> Vec<u8> {
    let mut n = report_data.to_vec();
    n.resize(NONCE_LEN, 0);
    n
}

pub fn evidence(q: &Quote) -> Result<Evidence> {
    let doc = Document {
        tpm_quote: TpmQuote {
            signature: STANDARD.encode(&q.signature),
            message: STANDARD.encode(&q.message),
            pcrs: q.pcrs.iter().map(hex::encode).collect(),
        },
        ak_public: STANDARD.encode(&q.ak_public_der),
    };
    Evidence::from_json(&doc, FORMAT)
}

/// DER SubjectPublicKeyInfo of an RSA public key (rsaEncryption, PKCS #1 RSAPublicKey).
pub fn rsa_spki_der(modulus: &[u8], exponent: u32) -> Vec<u8> {
    let rsa_public_key = der(
        0x30,
        &[der_uint(modulus), der_uint(&exponent.to_be_bytes())].concat(),
    );
    // OID 1.2.840.113549.1.1.1 (rsaEncryption) and a NULL parameter.
    let algorithm = der(
        0x30,
        &[
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    // A BIT STRING with no unused bits.
    let bits = der(0x03, &[&[0u8][..], &rsa_public_key].concat());
    der(0x30, &[algorithm, bits].concat())
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// An unsigned big-endian integer as DER INTEGER: minimal, with a leading zero when
/// the high bit is set.
fn der_uint(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    let mut v = if trimmed.is_empty() { vec![0] } else { trimmed };
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/tpm_evidence.json");

    #[test]
    fn nonce_is_resized_like_upstream() {
        assert_eq!(nonce(b"ab"), [b"ab".as_slice(), &[0; 30]].concat());
        let long: Vec<u8> = (0..48).collect();
        assert_eq!(nonce(&long), long[..32].to_vec());
    }

    #[test]
    fn document_has_fixture_shape_and_sorted_keys() {
        let q = Quote {
            message: vec![1, 2, 3],
            signature: vec![4, 5],
            pcrs: vec![[0u8; 32]; 24],
            ak_public_der: vec![9],
        };
        let e = evidence(&q).unwrap();
        let text = std::str::from_utf8(&e.bytes).unwrap();
        assert!(
            text.starts_with(
                r#"{"ak_public":"CQ==","tpm_quote":{"message":"AQID","pcrs":["000000"#
            ),
            "{text}"
        );
        let ours: serde_json::Value = serde_json::from_slice(&e.bytes).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        assert_eq!(keys(&ours), keys(&fixture));
        assert_eq!(keys(&ours["tpm_quote"]), keys(&fixture["tpm_quote"]));
        assert_eq!(fixture["tpm_quote"]["pcrs"].as_array().unwrap().len(), 24);
    }

    fn keys(v: &serde_json::Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn spki_matches_the_fixture_ak() {
        // Take the modulus out of the recorded AK and encode it again: same bytes.
        let fixture: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        let der = STANDARD
            .decode(fixture["ak_public"].as_str().unwrap())
            .unwrap();
        // RSA-2048 SPKI: modulus starts after the fixed 33-byte prefix (with its 0x00).
        assert_eq!(der.len(), 294);
        let modulus = &der[33..33 + 256];
        assert_eq!(rsa_spki_der(modulus, 65537), der);
    }

    #[test]
    fn der_integers_are_minimal() {
        assert_eq!(der_uint(&[0, 0, 1, 0, 1]), vec![0x02, 0x03, 1, 0, 1]);
        assert_eq!(der_uint(&[0x80]), vec![0x02, 0x02, 0, 0x80]);
        assert_eq!(der_uint(&[]), vec![0x02, 0x01, 0]);
    }
}
