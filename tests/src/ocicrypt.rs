//! The key-provider messages as Rust ocicrypt (ocicrypt-rs, what image-rs links)
//! declares them: the same field types and serde attributes, so serde reads
//! attestd's answers exactly as image-rs would. Its requests carry `optsdata` as
//! the options' JSON text (`String::from_utf8`), `annotation` as base64, `null`
//! for the parameters of the other operation; its answers are `Vec<u8>`, which
//! serde reads only from a JSON array of numbers.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct KeyProviderKeyWrapProtocolInput {
    op: String,
    #[serde(rename = "keywrapparams")]
    key_wrap_params: KeyWrapParams,
    #[serde(rename = "keyunwrapparams")]
    key_unwrap_params: KeyUnwrapParams,
}

#[derive(Serialize, Deserialize, Default)]
pub struct KeyProviderKeyWrapProtocolOutput {
    #[serde(rename = "keywrapresults", skip_serializing_if = "Option::is_none")]
    key_wrap_results: Option<KeyWrapResults>,
    #[serde(rename = "keyunwrapresults", skip_serializing_if = "Option::is_none")]
    key_unwrap_results: Option<KeyUnwrapResults>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct KeyWrapParams {
    pub ec: Option<EncryptConfig>,
    #[serde(rename = "optsdata")]
    opts_data: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct KeyUnwrapParams {
    pub dc: Option<DecryptConfig>,
    annotation: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct KeyUnwrapResults {
    #[serde(rename = "optsdata")]
    opts_data: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct KeyWrapResults {
    annotation: Vec<u8>,
}

/// ocicrypt-rs' config: `Parameters` values are bytes written as base64 strings.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct EncryptConfig {
    #[serde(rename = "Parameters", with = "base64_map")]
    pub param: HashMap<String, Vec<Vec<u8>>>,
    #[serde(rename = "DecryptConfig")]
    pub decrypt_config: Option<DecryptConfig>,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct DecryptConfig {
    #[serde(rename = "Parameters", with = "base64_map")]
    pub param: HashMap<String, Vec<Vec<u8>>>,
}

mod base64_map {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        m: &HashMap<String, Vec<Vec<u8>>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let enc: HashMap<&String, Vec<String>> = m
            .iter()
            .map(|(k, v)| (k, v.iter().map(|b| STANDARD.encode(b)).collect()))
            .collect();
        enc.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<String, Vec<Vec<u8>>>, D::Error> {
        let enc = HashMap::<String, Vec<String>>::deserialize(d)?;
        enc.into_iter()
            .map(|(k, v)| {
                let v = v
                    .iter()
                    .map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((k, v))
            })
            .collect()
    }
}

/// WrapKey's input as ocicrypt-rs' `wrap_keys` builds it for
/// `provider:<provider>:<kid>`, wrapping the layer options `opts` (JSON text).
pub fn wrap_input(provider: &str, kid: &str, opts: &[u8]) -> Vec<u8> {
    let mut param = HashMap::new();
    param.insert(provider.to_string(), vec![kid.as_bytes().to_vec()]);
    let input = KeyProviderKeyWrapProtocolInput {
        op: "keywrap".into(),
        key_wrap_params: KeyWrapParams {
            ec: Some(EncryptConfig {
                param,
                decrypt_config: None,
            }),
            opts_data: Some(String::from_utf8(opts.to_vec()).expect("options are JSON text")),
        },
        key_unwrap_params: KeyUnwrapParams::default(),
    };
    serde_json::to_vec(&input).expect("serialise")
}

/// UnWrapKey's input as ocicrypt-rs' `unwrap_keys` builds it.
pub fn unwrap_input(provider: &str, annotation: &[u8]) -> Vec<u8> {
    let mut param = HashMap::new();
    param.insert(provider.to_string(), vec![]);
    let input = KeyProviderKeyWrapProtocolInput {
        op: "keyunwrap".into(),
        key_wrap_params: KeyWrapParams::default(),
        key_unwrap_params: KeyUnwrapParams {
            dc: Some(DecryptConfig { param }),
            annotation: Some(STANDARD.encode(annotation)),
        },
    };
    serde_json::to_vec(&input).expect("serialise")
}

/// The annotation in a WrapKey answer, read as ocicrypt-rs reads it.
pub fn read_wrap_output(out: &[u8]) -> Result<Vec<u8>, String> {
    let o: KeyProviderKeyWrapProtocolOutput =
        serde_json::from_slice(out).map_err(|e| e.to_string())?;
    o.key_wrap_results
        .map(|r| r.annotation)
        .ok_or_else(|| "no keywrapresults".into())
}

/// The options in an UnWrapKey answer, read as ocicrypt-rs reads it (a missing
/// `keyunwrapresults` is an empty key there: an error here).
pub fn read_unwrap_output(out: &[u8]) -> Result<Vec<u8>, String> {
    let o: KeyProviderKeyWrapProtocolOutput =
        serde_json::from_slice(out).map_err(|e| e.to_string())?;
    o.key_unwrap_results
        .map(|r| r.opts_data)
        .ok_or_else(|| "no keyunwrapresults".into())
}

/// `input` as the ttrpc key-provider service takes it (image-rs's transport).
pub fn ttrpc_input(
    input: Vec<u8>,
) -> attestd_proto::ttrpc::keyprovider::KeyProviderKeyWrapProtocolInput {
    attestd_proto::ttrpc::keyprovider::KeyProviderKeyWrapProtocolInput {
        KeyProviderKeyWrapProtocolInput: input,
        ..Default::default()
    }
}

/// Layer options as ocicrypt writes them (PrivateLayerBlockCipherOptions, JSON).
pub fn layer_options() -> Vec<u8> {
    serde_json::json!({
        "symkey": STANDARD.encode([5u8; 32]),
        "digest": "",
        "cipheroptions": {"nonce": STANDARD.encode([6u8; 16])},
    })
    .to_string()
    .into_bytes()
}
