//! The fuzz targets' bodies: what attestd reads from others, fed arbitrary bytes.
//! Each must return (an error is fine) and never panic or hang. Shared by the
//! cargo-fuzz targets (fuzz_targets/) and the corpus replay (tests/corpus.rs).

use std::path::Path;

/// The config file (TOML): upstream's keys and attestd's.
pub fn config(data: &[u8]) {
    let _ = attestd::config::Config::parse(&String::from_utf8_lossy(data));
}

/// An init-data document, and its digest.
pub fn initdata(data: &[u8]) {
    let _ = attestd::initdata::InitData::from_toml_bytes(data, Path::new("fuzz.toml"));
}

/// ocicrypt's key-provider JSON, the AnnotationPacket inside, the kid, and WrapKey.
pub fn keyprovider(data: &[u8]) {
    use attestd::keyprovider as kp;
    if let Ok(u) = kp::parse_unwrap(data) {
        let _ = kp::unwrap_key(&u.packet, &[7; 32]);
    }
    let _ = kp::wrap(data, &[7; 32], "attestd");
    let _ = kp::resource_path(&String::from_utf8_lossy(data));
}

/// What a KBS answers: error bodies, challenges, JWEs (to a key of ours).
pub fn kbs_answers(data: &[u8]) {
    let r = attestd::kbs::Refusal::parse(data);
    let _ = r.fresh_token_may_help();
    let _ = r.to_string();
    let _ = serde_json::from_slice::<kbs_types::Challenge>(data);
    if let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) {
        let protected = raw["protected"].as_str().unwrap_or_default().to_string();
        if let Ok(jwe) = serde_json::from_value::<kbs_types::Response>(raw) {
            if let Ok(key) = attestd::kbs::TeeKey::generate(attestd::kbs::tee_key::EC_ALG) {
                let _ = key.decrypt(&jwe, &protected);
            }
        }
    }
}

/// An event log file: records, then replay.
pub fn eventlog(data: &[u8]) {
    use attestd::eventlog::record;
    if let Ok(recs) = record::parse(data) {
        let _ = record::replay(recs.iter().map(|(_, r)| r));
    }
    let s = String::from_utf8_lossy(data);
    let mut parts = s.splitn(3, ' ');
    let (d, o, c) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let _ = record::validate(d, o, c);
}
