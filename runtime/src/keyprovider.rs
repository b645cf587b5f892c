//! The ocicrypt key provider: `UnWrapKey` opens an encrypted image layer's key with
//! a KEK released by the KBS (named by the annotation's `kid`), `WrapKey` (the image
//! builder's side) wraps one with a local KEK file. Messages are ocicrypt's JSON
//! (reference §2, §9), and two dialects of it meet here:
//! - requests: byte fields are base64 strings (Go's `[]byte`, and Rust ocicrypt's
//!   `annotation`), arrays of numbers, or, for WrapKey's `optsdata` from Rust
//!   ocicrypt, the options' JSON text itself; `ec`/`dc` may be `null`. All are read.
//! - answers: byte fields are arrays of numbers. Rust ocicrypt (image-rs) declares
//!   them `Vec<u8>` and serde reads nothing else; Go's encoding/json reads an array
//!   of numbers into `[]byte` as well as a base64 string, so one form serves both.

use aes_gcm::aead::{Aead, KeyInit};
use attester_sdk::{Error, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Inputs larger than this are refused before parsing.
pub const MAX_INPUT: usize = 1 << 20;

/// Bytes as ocicrypt writes them: a base64 string (Go) or an array of numbers.
fn bytes(v: &Value, what: &str) -> Result<Vec<u8>> {
    match v {
        Value::String(s) => STANDARD
            .decode(s)
            .map_err(|e| Error::invalid_argument(format!("{what} is not base64")).with_source(e)),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| Error::invalid_argument(format!("{what} is not an array of bytes"))),
        Value::Null => Err(Error::invalid_argument(format!("{what} is missing"))),
        _ => Err(Error::invalid_argument(format!(
            "{what} is neither base64 nor bytes"
        ))),
    }
}

/// The layer annotation's content (AnnotationPacket v1, or v2 with `version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnotationPacket {
    pub kid: String,
    pub wrapped_data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_settings: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

/// What an `UnWrapKey` needs: the KBS resource path of the KEK and how to unwrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwrap {
    pub resource: String,
    pub packet: AnnotationPacket,
}

fn parse_input(input: &[u8], op: &str) -> Result<Value> {
    if input.len() > MAX_INPUT {
        return Err(Error::invalid_argument(format!(
            "key provider input is {} bytes, over {MAX_INPUT}",
            input.len()
        )));
    }
    let v: Value = serde_json::from_slice(input)
        .map_err(|e| Error::invalid_argument("key provider input is not JSON").with_source(e))?;
    if v["op"] != op {
        return Err(Error::invalid_argument(format!(
            "key provider input has op {}, expected {op:?}",
            crate::echo::bounded(&v["op"].to_string(), crate::echo::MAX_ECHO)
        )));
    }
    Ok(v)
}

/// What a resource path segment may hold once percent-decoded: enough for every
/// repository, type and tag in use, and nothing that can step out of
/// `/kbs/v0/resource/` (`/`, `\`, `..`, `?`, `#`, `%`).
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A kid's bytes at most: a KBS resource URI is a few dozen; what is longer is
/// refused before it is parsed or echoed (it went into the status and the log
/// whole, twice).
pub const MAX_KID_BYTES: usize = 1024;

/// `kbs:///<repo>/<type>/<tag>` (host part ignored) → `<repo>/<type>/<tag>`: parsed
/// as a URL, exactly three segments from a safe alphabet after percent-decoding,
/// no query, no fragment, no credentials. The KBS request is then built from these
/// segments, so nothing in a kid (an annotation is the image author's) can reach
/// another KBS endpoint with attestd's token.
pub fn resource_path(kid: &str) -> Result<String> {
    let shown = crate::echo::bounded(kid, crate::echo::MAX_ECHO);
    let bad = |why: &str| {
        Error::invalid_argument(format!(
            "kid \"{shown}\" is not a kbs:///<repo>/<type>/<tag> URI: {why}"
        ))
    };
    if kid.len() > MAX_KID_BYTES {
        return Err(bad(&format!(
            "it is {} bytes, more than {MAX_KID_BYTES}",
            kid.len()
        )));
    }
    // Dot segments first, on the text as given: the URL parser would resolve
    // `a/b/../c/d` to `a/c/d` (and `%2e%2e` likewise) without a word.
    let raw_path = kid
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("", |(_, p)| p);
    let raw_path = raw_path.split(['?', '#']).next().unwrap_or_default();
    if raw_path.split('/').any(|seg| {
        let d = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
        d == "." || d == ".."
    }) {
        return Err(bad("it has a . or .. segment"));
    }
    let url = url::Url::parse(kid).map_err(|_| bad("not a URI"))?;
    if url.scheme() != "kbs" {
        return Err(bad("the scheme is not kbs"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it has a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it has credentials"));
    }
    let segments: Vec<String> = url
        .path_segments()
        .ok_or_else(|| bad("no path"))?
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("a segment is not UTF-8"))
        })
        .collect::<Result<_>>()?;
    if segments.len() != 3 {
        return Err(bad(&format!("{} path segments, not 3", segments.len())));
    }
    if !segments.iter().all(|s| safe_segment(s)) {
        return Err(bad(
            "a segment is empty, . or .., or holds more than letters, digits, . _ -",
        ));
    }
    Ok(segments.join("/"))
}

/// Parse an `UnWrapKey` input.
pub fn parse_unwrap(input: &[u8]) -> Result<Unwrap> {
    let v = parse_input(input, "keyunwrap")?;
    let annotation = bytes(
        &v["keyunwrapparams"]["annotation"],
        "keyunwrapparams.annotation",
    )?;
    let packet: AnnotationPacket = serde_json::from_slice(&annotation).map_err(|e| {
        Error::invalid_argument("the annotation is not an AnnotationPacket").with_source(e)
    })?;
    match packet.version.as_deref() {
        None | Some("0.1.0") => {}
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "unknown annotation version {} (known: 0.1.0, or none for v1)",
                crate::echo::quoted(other)
            )))
        }
    }
    match packet.provider.as_deref() {
        None | Some("kbs") => {}
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "annotation provider {} is not supported (only \"kbs\")",
                crate::echo::quoted(other)
            )))
        }
    }
    Ok(Unwrap {
        resource: resource_path(&packet.kid)?,
        packet,
    })
}

fn kek_cipher(kek: &[u8]) -> Result<[u8; 32]> {
    kek.try_into().map_err(|_| {
        Error::failed_precondition(format!(
            "the KEK is {} bytes; A256GCM/A256CTR take 32",
            kek.len()
        ))
    })
}

/// Unwrap the layer key in `packet` with `kek`.
pub fn unwrap_key(packet: &AnnotationPacket, kek: &[u8]) -> Result<Vec<u8>> {
    let key = kek_cipher(kek)?;
    let data = bytes(&Value::String(packet.wrapped_data.clone()), "wrapped_data")?;
    let iv = bytes(&Value::String(packet.iv.clone().unwrap_or_default()), "iv")?;
    match packet.wrap_type.as_deref().unwrap_or("A256GCM") {
        "A256GCM" => {
            if iv.len() != 12 {
                return Err(Error::invalid_argument(format!(
                    "iv is {} bytes; A256GCM takes 12",
                    iv.len()
                )));
            }
            aes_gcm::Aes256Gcm::new(&key.into())
                .decrypt(aes_gcm::Nonce::from_slice(&iv), data.as_slice())
                .map_err(|_| {
                    Error::failed_precondition(
                        "the layer key does not unwrap with the KEK the KBS released",
                    )
                })
        }
        "A256CTR" => {
            use ctr::cipher::{KeyIvInit as _, StreamCipher as _};
            if iv.len() != 16 {
                return Err(Error::invalid_argument(format!(
                    "iv is {} bytes; A256CTR takes 16",
                    iv.len()
                )));
            }
            let mut out = data;
            ctr::Ctr128BE::<aes::Aes256>::new(&key.into(), iv.as_slice().into())
                .apply_keystream(&mut out);
            Ok(out)
        }
        other => Err(Error::invalid_argument(format!(
            "unknown wrap_type {}: expected A256GCM or A256CTR",
            crate::echo::quoted(other)
        ))),
    }
}

/// An answer `{"<results>": {"<field>": [bytes…]}}`: arrays of numbers, the one
/// form both Rust's serde (`Vec<u8>`) and Go's encoding/json (`[]byte`) read.
fn output(results: &str, field: &str, data: &[u8]) -> Vec<u8> {
    let mut inner = serde_json::Map::new();
    inner.insert(field.into(), Value::from(data));
    let mut outer = serde_json::Map::new();
    outer.insert(results.into(), Value::Object(inner));
    Value::Object(outer).to_string().into_bytes()
}

/// The `UnWrapKey` answer: the layer key's options as `keyunwrapresults.optsdata`.
pub fn unwrap_output(optsdata: &[u8]) -> Vec<u8> {
    output("keyunwrapresults", "optsdata", optsdata)
}

/// WrapKey's `optsdata`: what [`bytes`] reads, or the options' JSON text as Rust
/// ocicrypt sends it (`String::from_utf8` of the JSON). The two cannot be confused:
/// JSON text starts with `{` or `[`, which base64 never does.
fn opts_bytes(v: &Value, what: &str) -> Result<Vec<u8>> {
    if let Value::String(s) = v {
        let t = s.trim_start();
        if (t.starts_with('{') || t.starts_with('['))
            && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
        {
            return Ok(s.as_bytes().to_vec());
        }
    }
    bytes(v, what)
}

/// `WrapKey` for the image builder: wrap `optsdata` with `kek` (A256GCM, fresh IV)
/// under the `kid` given as the provider parameter (`provider:attestd:<kid>`).
pub fn wrap(input: &[u8], kek: &[u8], provider: &str) -> Result<Vec<u8>> {
    let v = parse_input(input, "keywrap")?;
    let params = &v["keywrapparams"]["ec"]["Parameters"][provider];
    let kid = params
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "no parameters for provider {provider:?}: encrypt with --encryption-key provider:{provider}:kbs:///<repo>/<type>/<tag>"
            ))
        })
        .and_then(|p| bytes(p, "the provider parameter"))?;
    let kid = String::from_utf8(kid)
        .map_err(|_| Error::invalid_argument("the provider parameter is not UTF-8"))?;
    resource_path(&kid)?;
    let optsdata = opts_bytes(&v["keywrapparams"]["optsdata"], "keywrapparams.optsdata")?;
    let key = kek_cipher(kek)?;
    let mut iv = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut iv);
    let wrapped = aes_gcm::Aes256Gcm::new(&key.into())
        .encrypt(aes_gcm::Nonce::from_slice(&iv), optsdata.as_slice())
        .map_err(|_| Error::internal("AES-GCM encryption failed"))?;
    let packet = AnnotationPacket {
        kid,
        wrapped_data: STANDARD.encode(wrapped),
        iv: Some(STANDARD.encode(iv)),
        wrap_type: Some("A256GCM".into()),
        version: Some("0.1.0".into()),
        provider: Some("kbs".into()),
        provider_settings: None,
        annotations: None,
    };
    let annotation = serde_json::to_vec(&packet)
        .map_err(|e| Error::internal("cannot serialise the annotation").with_source(e))?;
    Ok(output("keywrapresults", "annotation", &annotation))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEK: [u8; 32] = [7; 32];

    fn wrap_input(kid: &str, optsdata: &[u8]) -> Vec<u8> {
        serde_json::json!({
            "op": "keywrap",
            "keywrapparams": {
                "ec": {"Parameters": {"attestd": [STANDARD.encode(kid)]}},
                "optsdata": STANDARD.encode(optsdata),
            },
        })
        .to_string()
        .into_bytes()
    }

    fn unwrap_input(annotation: Value) -> Vec<u8> {
        serde_json::json!({"op": "keyunwrap", "keywrapparams": {}, "keyunwrapparams": {"dc": {"Parameters": {}}, "annotation": annotation}})
            .to_string()
            .into_bytes()
    }

    /// The bytes of an answer's field, which must be an array of numbers.
    fn array_bytes(v: &Value) -> Vec<u8> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|x| u8::try_from(x.as_u64().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn wrap_then_unwrap_round_trips_and_accepts_both_byte_forms() {
        let out: Value = serde_json::from_slice(
            &wrap(
                &wrap_input("kbs:///default/key/k1", b"layer key"),
                &KEK,
                "attestd",
            )
            .unwrap(),
        )
        .unwrap();
        // Answers carry bytes as arrays of numbers (what both ocicrypts read).
        let annotation = array_bytes(&out["keywrapresults"]["annotation"]);
        let u = parse_unwrap(&unwrap_input(Value::from(annotation.as_slice()))).unwrap();
        assert_eq!(u.resource, "default/key/k1");
        assert_eq!(u.packet.version.as_deref(), Some("0.1.0"));
        assert_eq!(unwrap_key(&u.packet, &KEK).unwrap(), b"layer key");
        // Go's and Rust ocicrypt's request form: the annotation as base64.
        let u2 = parse_unwrap(&unwrap_input(Value::String(STANDARD.encode(&annotation)))).unwrap();
        assert_eq!(u2, u);
        assert_eq!(
            unwrap_output(b"layer key"),
            br#"{"keyunwrapresults":{"optsdata":[108,97,121,101,114,32,107,101,121]}}"#
        );
    }

    #[test]
    fn rust_ocicrypt_requests_raw_json_optsdata_and_null_configs() {
        // Rust ocicrypt: `optsdata` is the options' JSON text, `dc` null on wrap.
        let opts = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","symkey":"c3ltCg=="}"#;
        let input = serde_json::json!({
            "op": "keywrap",
            "keywrapparams": {
                "ec": {"Parameters": {"attestd": [STANDARD.encode("kbs:///a/b/c")]}, "DecryptConfig": null},
                "optsdata": opts,
            },
            "keyunwrapparams": {"dc": null, "annotation": null},
        });
        let out: Value =
            serde_json::from_slice(&wrap(input.to_string().as_bytes(), &KEK, "attestd").unwrap())
                .unwrap();
        let annotation = array_bytes(&out["keywrapresults"]["annotation"]);
        let unwrap = serde_json::json!({
            "op": "keyunwrap",
            "keywrapparams": {"ec": null, "optsdata": null},
            "keyunwrapparams": {"dc": null, "annotation": STANDARD.encode(&annotation)},
        });
        let u = parse_unwrap(unwrap.to_string().as_bytes()).unwrap();
        assert_eq!(unwrap_key(&u.packet, &KEK).unwrap(), opts.as_bytes());
        // Not JSON, not base64: refused, not wrapped as text.
        let bad = serde_json::json!({"op": "keywrap", "keywrapparams": {
            "ec": {"Parameters": {"attestd": [STANDARD.encode("kbs:///a/b/c")]}},
            "optsdata": "{not json"}});
        assert_eq!(
            wrap(bad.to_string().as_bytes(), &KEK, "attestd")
                .unwrap_err()
                .message(),
            "keywrapparams.optsdata is not base64"
        );
        // No `ec` at all (null): the operator is told how to encrypt.
        let none =
            serde_json::json!({"op": "keywrap", "keywrapparams": {"ec": null, "optsdata": opts}});
        assert!(wrap(none.to_string().as_bytes(), &KEK, "attestd")
            .unwrap_err()
            .message()
            .starts_with("no parameters for provider \"attestd\""));
    }

    #[test]
    fn kids_are_parsed_strictly() {
        assert_eq!(
            resource_path("kbs:///default/key/k1").unwrap(),
            "default/key/k1"
        );
        assert_eq!(
            resource_path("kbs://kbs.example:8080/default/key/image-kek_1.0").unwrap(),
            "default/key/image-kek_1.0"
        );
        assert_eq!(resource_path("kbs:///a%2Db/c/d").unwrap(), "a-b/c/d");
        let why = |kid: &str| {
            let m = resource_path(kid).unwrap_err().message().to_string();
            m.split(" URI: ").nth(1).unwrap().to_string()
        };
        // Traversal, encoded or not, backslashes, queries: each refused.
        for kid in [
            "kbs:///%2e%2e/%2e%2e/auth",
            "kbs:///default/key/..",
            "kbs:///default/%2E/x",
            "kbs:///default/key/..\\..\\x",
            "kbs:///default/key/a%2Fb",
            "kbs:///default/key/%00",
            "kbs:///default/key/a%20b",
        ] {
            assert!(resource_path(kid).is_err(), "{kid}");
        }
        // Resolved silently by a URL parser, refused here.
        assert_eq!(why("kbs:///a/b/../c/d"), "it has a . or .. segment");
        assert_eq!(why("kbs:///a/%2E%2e/c/d/e"), "it has a . or .. segment");
        assert_eq!(why("kbs:///a/b/c?admin=1"), "it has a query or fragment");
        assert_eq!(why("kbs:///a/b/c#x"), "it has a query or fragment");
        assert_eq!(why("kbs://u:p@h/a/b/c"), "it has credentials");
        assert_eq!(why("kbs:///a/b"), "2 path segments, not 3");
        assert_eq!(why("kbs:///a/b/c/d"), "4 path segments, not 3");
        assert_eq!(
            why("kbs:///a//c"),
            "a segment is empty, . or .., or holds more than letters, digits, . _ -"
        );
        // A hostile kid is echoed bounded and escaped.
        let long = format!("kbs:///{}\n", "a".repeat(400));
        let m = resource_path(&long).unwrap_err().message().to_string();
        assert!(m.contains("… (408 characters)"), "{m}");
        assert!(!m.contains('\n'));
        // Issue 26: a kid of valid segments at the bound is read; past it,
        // refused, and the answer stays short.
        let kid = |n: usize| format!("kbs:///r/t/{}", "a".repeat(n - "kbs:///r/t/".len()));
        assert_eq!(
            resource_path(&kid(MAX_KID_BYTES)).unwrap().len(),
            MAX_KID_BYTES - 7
        );
        let m = resource_path(&kid(100 << 10))
            .unwrap_err()
            .message()
            .to_string();
        assert!(m.ends_with("it is 102400 bytes, more than 1024"), "{m}");
        assert!(m.len() < 500, "{}", m.len());
    }

    #[test]
    fn v1_packets_and_ctr() {
        use ctr::cipher::{KeyIvInit as _, StreamCipher as _};
        let iv = [3u8; 16];
        let mut data = b"ctr layer key".to_vec();
        ctr::Ctr128BE::<aes::Aes256>::new(&KEK.into(), (&iv).into()).apply_keystream(&mut data);
        let packet = serde_json::json!({"kid": "kbs:///a/b/c", "wrapped_data": STANDARD.encode(&data), "iv": STANDARD.encode(iv), "wrap_type": "A256CTR"});
        let u = parse_unwrap(&unwrap_input(Value::String(
            STANDARD.encode(packet.to_string()),
        )))
        .unwrap();
        assert_eq!(unwrap_key(&u.packet, &KEK).unwrap(), b"ctr layer key");
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let msg = |input: &[u8]| parse_unwrap(input).unwrap_err().message().to_string();
        assert_eq!(msg(b"{"), "key provider input is not JSON");
        assert_eq!(
            msg(br#"{"op":"keywrap"}"#),
            "key provider input has op \"keywrap\", expected \"keyunwrap\""
        );
        assert_eq!(
            msg(&unwrap_input(Value::String("***".into()))),
            "keyunwrapparams.annotation is not base64"
        );
        let p = |v: Value| unwrap_input(Value::String(STANDARD.encode(v.to_string())));
        assert_eq!(
            msg(&p(
                serde_json::json!({"kid": "kbs:///a/b/c", "wrapped_data": "", "version": "0.2.0"})
            )),
            "unknown annotation version \"0.2.0\" (known: 0.1.0, or none for v1)"
        );
        assert_eq!(
            msg(&p(
                serde_json::json!({"kid": "file:///x", "wrapped_data": ""})
            )),
            "kid \"file:///x\" is not a kbs:///<repo>/<type>/<tag> URI: the scheme is not kbs"
        );
        assert_eq!(
            msg(&p(
                serde_json::json!({"kid": "kbs:///a/../c", "wrapped_data": ""})
            )),
            "kid \"kbs:///a/../c\" is not a kbs:///<repo>/<type>/<tag> URI: it has a . or .. segment"
        );
        let big = vec![b' '; MAX_INPUT + 1];
        assert!(msg(&big).starts_with("key provider input is"));
        let packet = AnnotationPacket {
            kid: "kbs:///a/b/c".into(),
            wrapped_data: STANDARD.encode([0u8; 32]),
            iv: Some(STANDARD.encode([0u8; 12])),
            wrap_type: Some("A128KW".into()),
            version: None,
            provider: None,
            provider_settings: None,
            annotations: None,
        };
        assert_eq!(
            unwrap_key(&packet, &KEK).unwrap_err().message(),
            "unknown wrap_type \"A128KW\": expected A256GCM or A256CTR"
        );
        let gcm = AnnotationPacket {
            wrap_type: None,
            ..packet
        };
        assert_eq!(
            unwrap_key(&gcm, &KEK).unwrap_err().message(),
            "the layer key does not unwrap with the KEK the KBS released"
        );
        assert_eq!(
            unwrap_key(&gcm, &[0; 16]).unwrap_err().message(),
            "the KEK is 16 bytes; A256GCM/A256CTR take 32"
        );
    }
}
