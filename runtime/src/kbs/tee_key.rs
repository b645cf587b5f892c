//! The ephemeral TEE key pair of one RCAR handshake: its public JWK goes into the
//! runtime data (and so into the evidence), resources come back as JWEs to it, and
//! CDH gets it as PEM with the token. EC P-256 with `ECDH-ES+A256KW` (the default)
//! or RSA with `RSA-OAEP-256`; content encryption `A256GCM`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use attester_sdk::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use kbs_types::{Response, TeePubKey};
use sha2::Digest as _;

pub const EC_ALG: &str = "ECDH-ES+A256KW";
pub const RSA_ALG: &str = "RSA-OAEP-256";
/// Upstream's `aa.toml` spelling of the same P-256 key (its default), so an
/// upstream config keeps working; the RCAR wire still says `ECDH-ES+A256KW`.
pub const EC_ALG_UPSTREAM: &str = "ECDH-ES+A256KW-P256";

pub enum TeeKey {
    Ec(p256::SecretKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

fn bad(what: impl Into<String>) -> Error {
    Error::failed_precondition(format!("cannot decrypt the KBS response: {}", what.into()))
}

/// Whether `alg` is a `tee_key_algorithm` attestd can generate a key for.
pub fn check_algorithm(alg: &str) -> Result<()> {
    match alg {
        EC_ALG | EC_ALG_UPSTREAM | RSA_ALG => Ok(()),
        other => Err(Error::invalid_argument(format!(
            "tee_key_algorithm {other:?} is not supported: use {EC_ALG} or {RSA_ALG}"
        ))),
    }
}

impl TeeKey {
    /// A fresh key for `alg` (`ECDH-ES+A256KW`, the default, or `RSA-OAEP-256`).
    pub fn generate(alg: &str) -> Result<TeeKey> {
        check_algorithm(alg)?;
        // Checked: anything but the EC names is RSA_ALG.
        match alg {
            EC_ALG | EC_ALG_UPSTREAM => {
                Ok(TeeKey::Ec(p256::SecretKey::random(&mut rand_core::OsRng)))
            }
            _ => rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
                .map(|k| TeeKey::Rsa(Box::new(k)))
                .map_err(|e| Error::internal("cannot generate an RSA key").with_source(e)),
        }
    }

    /// The public key as RCAR's `tee-pubkey` JWK.
    pub fn public_jwk(&self) -> TeePubKey {
        match self {
            TeeKey::Ec(k) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint as _;
                let p = k.public_key().to_encoded_point(false);
                TeePubKey::EC {
                    crv: "P-256".into(),
                    alg: EC_ALG.into(),
                    x: URL_SAFE_NO_PAD.encode(p.x().map(|x| x.as_slice()).unwrap_or_default()),
                    y: URL_SAFE_NO_PAD.encode(p.y().map(|y| y.as_slice()).unwrap_or_default()),
                }
            }
            TeeKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts as _;
                TeePubKey::RSA {
                    alg: RSA_ALG.into(),
                    k_mod: URL_SAFE_NO_PAD.encode(k.n().to_bytes_be()),
                    k_exp: URL_SAFE_NO_PAD.encode(k.e().to_bytes_be()),
                }
            }
        }
    }

    /// PKCS#8 PEM, what `GetToken` hands CDH as `tee_keypair`.
    pub fn to_pem(&self) -> Result<String> {
        use pkcs8::EncodePrivateKey as _;
        let pem = match self {
            TeeKey::Ec(k) => k.to_pkcs8_pem(pkcs8::LineEnding::LF),
            TeeKey::Rsa(k) => k.to_pkcs8_pem(pkcs8::LineEnding::LF),
        };
        pem.map(|p| p.to_string())
            .map_err(|e| Error::internal("cannot encode the TEE key").with_source(e))
    }

    /// Parse the PEM `to_pem` wrote.
    pub fn from_pem(pem: &str) -> Result<TeeKey> {
        use pkcs8::DecodePrivateKey as _;
        if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            return Ok(TeeKey::Ec(k));
        }
        rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .map(|k| TeeKey::Rsa(Box::new(k)))
            .map_err(|e| Error::invalid_argument("not a P-256 or RSA PKCS#8 key").with_source(e))
    }

    /// Decrypt a KBS resource response (flattened JWE). `protected_b64` is the
    /// `protected` member exactly as it came over the wire: RFC 7516 makes the AAD
    /// its ASCII bytes, and a re-serialised header need not reproduce them (key
    /// order differs between serde_json builds).
    pub fn decrypt(&self, r: &Response, protected_b64: &str) -> Result<Vec<u8>> {
        if r.protected.enc != "A256GCM" {
            return Err(bad(format!(
                "content encryption {:?} (expected A256GCM)",
                r.protected.enc
            )));
        }
        let cek = match self {
            TeeKey::Ec(k) => {
                if r.protected.alg != EC_ALG {
                    return Err(bad(format!(
                        "key management {:?} for an EC key",
                        r.protected.alg
                    )));
                }
                let epk = r
                    .protected
                    .other_fields
                    .get("epk")
                    .ok_or_else(|| bad("no epk in the protected header"))?;
                let coord = |n: &str| -> Result<Vec<u8>> {
                    let s = epk[n]
                        .as_str()
                        .ok_or_else(|| bad(format!("epk has no {n}")))?;
                    URL_SAFE_NO_PAD
                        .decode(s)
                        .map_err(|e| bad(format!("epk {n} is not base64url: {e}")))
                };
                let (x, y) = (coord("x")?, coord("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("epk is not a P-256 point"));
                }
                let point = p256::EncodedPoint::from_affine_coordinates(
                    p256::FieldBytes::from_slice(&x),
                    p256::FieldBytes::from_slice(&y),
                    false,
                );
                let epk = p256::PublicKey::from_sec1_bytes(point.as_bytes())
                    .map_err(|_| bad("epk is not on the curve"))?;
                let z = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), epk.as_affine());
                let param = |n: &str| -> Result<Vec<u8>> {
                    match r.protected.other_fields.get(n).and_then(|v| v.as_str()) {
                        Some(s) => URL_SAFE_NO_PAD
                            .decode(s)
                            .map_err(|e| bad(format!("{n} is not base64url: {e}"))),
                        None => Ok(Vec::new()),
                    }
                };
                let kek = concat_kdf(
                    z.raw_secret_bytes(),
                    EC_ALG,
                    &param("apu")?,
                    &param("apv")?,
                    256,
                );
                let kw = aes_kw::KekAes256::try_from(kek.as_slice())
                    .map_err(|_| bad("derived key is not 32 bytes"))?;
                let mut cek = [0u8; 32];
                kw.unwrap(&r.encrypted_key, &mut cek)
                    .map_err(|_| bad("the wrapped key does not unwrap with this TEE key"))?;
                cek.to_vec()
            }
            TeeKey::Rsa(k) => {
                if r.protected.alg != RSA_ALG {
                    return Err(bad(format!(
                        "key management {:?} for an RSA key",
                        r.protected.alg
                    )));
                }
                k.decrypt(rsa::Oaep::new::<sha2::Sha256>(), &r.encrypted_key)
                    .map_err(|_| bad("the encrypted key does not decrypt with this TEE key"))?
            }
        };
        // With an `aad` member (kept as its base64url text), RFC 7516 §5.1 step 14.
        let aad = match &r.aad {
            Some(extra) => [protected_b64.as_bytes(), b".", extra].concat(),
            None => protected_b64.as_bytes().to_vec(),
        };
        let cipher =
            aes_gcm::Aes256Gcm::new_from_slice(&cek).map_err(|_| bad("CEK is not 32 bytes"))?;
        if r.iv.len() != 12 {
            return Err(bad(format!("iv is {} bytes, A256GCM takes 12", r.iv.len())));
        }
        let ct = [r.ciphertext.as_slice(), &r.tag].concat();
        cipher
            .decrypt(
                aes_gcm::Nonce::from_slice(&r.iv),
                Payload {
                    msg: &ct,
                    aad: &aad,
                },
            )
            .map_err(|_| bad("authentication failed"))
    }
}

/// RFC 7518 §4.6.2: Concat KDF (NIST SP 800-56A) with SHA-256; one round, so keys
/// up to 256 bits.
pub fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], key_bits: u32) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    for part in [alg.as_bytes(), apu, apv] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update(key_bits.to_be_bytes());
    let mut k = h.finalize().to_vec();
    k.truncate((key_bits / 8) as usize);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        // RFC 7518 Appendix C: ECDH-ES, A128GCM, PartyUInfo "Alice", PartyVInfo "Bob".
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let k = concat_kdf(&z, "A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(URL_SAFE_NO_PAD.encode(k), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn a_jwe_for_another_key_is_refused() {
        // Encrypt to `a` with the RFC 7518 construction, decrypt with `b`.
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let (a, b) = (
            TeeKey::generate(EC_ALG).unwrap(),
            TeeKey::generate(EC_ALG).unwrap(),
        );
        let TeeKey::Ec(ak) = &a else { unreachable!() };
        let eph = p256::SecretKey::random(&mut rand_core::OsRng);
        let z = p256::ecdh::diffie_hellman(eph.to_nonzero_scalar(), ak.public_key().as_affine());
        let kek = concat_kdf(z.raw_secret_bytes(), EC_ALG, b"", b"", 256);
        let cek = [5u8; 32];
        let mut wrapped = [0u8; 40];
        aes_kw::KekAes256::try_from(kek.as_slice())
            .unwrap()
            .wrap(&cek, &mut wrapped)
            .unwrap();
        let epk = eph.public_key().to_encoded_point(false);
        let protected = kbs_types::ProtectedHeader {
            alg: EC_ALG.into(),
            enc: "A256GCM".into(),
            other_fields: serde_json::json!({"epk": {"kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(epk.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(epk.y().unwrap())}})
                .as_object()
                .unwrap()
                .clone(),
        };
        // The header as a KBS may send it: not in the order serde_json would
        // re-serialise it (enc before alg, epk's kty before crv).
        let protected_b64 = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"enc":"A256GCM","alg":"{EC_ALG}","epk":{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}}}"#,
            URL_SAFE_NO_PAD.encode(epk.x().unwrap()),
            URL_SAFE_NO_PAD.encode(epk.y().unwrap())
        ));
        assert_ne!(protected.generate_aad().unwrap(), protected_b64.as_bytes());
        let aad = protected_b64.as_bytes();
        let ct = aes_gcm::Aes256Gcm::new_from_slice(&cek)
            .unwrap()
            .encrypt(
                aes_gcm::Nonce::from_slice(&[1; 12]),
                Payload {
                    msg: b"secret",
                    aad,
                },
            )
            .unwrap();
        let (ciphertext, tag) = ct.split_at(ct.len() - 16);
        let r = Response {
            protected,
            encrypted_key: wrapped.to_vec(),
            aad: None,
            iv: vec![1; 12],
            ciphertext: ciphertext.to_vec(),
            tag: tag.to_vec(),
        };
        assert_eq!(a.decrypt(&r, &protected_b64).unwrap(), b"secret");
        assert_eq!(
            b.decrypt(&r, &protected_b64).unwrap_err().message(),
            "cannot decrypt the KBS response: the wrapped key does not unwrap with this TEE key"
        );
        let mut tampered = r.clone();
        tampered.tag[0] ^= 1;
        assert_eq!(
            a.decrypt(&tampered, &protected_b64).unwrap_err().message(),
            "cannot decrypt the KBS response: authentication failed"
        );
    }

    #[test]
    fn pem_round_trip_and_jwk_shape() {
        let k = TeeKey::generate(EC_ALG).unwrap();
        let pem = k.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = TeeKey::from_pem(&pem).unwrap();
        let j = serde_json::to_value(again.public_jwk()).unwrap();
        assert_eq!(j["kty"], "EC");
        assert_eq!(j["crv"], "P-256");
        assert_eq!(j["alg"], EC_ALG);
        assert_eq!(serde_json::to_value(k.public_jwk()).unwrap(), j);
        assert_eq!(
            TeeKey::generate("A128KW").err().unwrap().message(),
            "tee_key_algorithm \"A128KW\" is not supported: use ECDH-ES+A256KW or RSA-OAEP-256"
        );
    }

    /// Issue 29: upstream's aa.toml names its default `ECDH-ES+A256KW-P256`;
    /// attestd refused it, at the first GetToken. It is the same P-256 key.
    #[test]
    fn upstreams_spelling_of_the_p256_key_is_accepted() {
        let k = TeeKey::generate(EC_ALG_UPSTREAM).unwrap();
        let j = serde_json::to_value(k.public_jwk()).unwrap();
        assert_eq!(
            (j["crv"].as_str(), j["alg"].as_str()),
            (Some("P-256"), Some(EC_ALG))
        );
        // P-521 is upstream's other curve; attestd's TEE keys are P-256 or RSA.
        assert_eq!(
            TeeKey::generate("ECDH-ES+A256KW-P521").err().unwrap().message(),
            "tee_key_algorithm \"ECDH-ES+A256KW-P521\" is not supported: use ECDH-ES+A256KW or RSA-OAEP-256"
        );
    }
}
