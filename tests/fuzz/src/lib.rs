//! The fuzz targets' bodies: what attestd reads from others, fed arbitrary bytes.
//! Each must return (an error is fine) and never panic or hang. Shared by the
//! cargo-fuzz targets (fuzz_targets/) and the corpus replay (tests/corpus.rs).

use std::path::Path;

/// The config file (TOML): upstream's keys and attestd's, and a `-c` file as
/// each source may set it (what user-data's and init-data's `aa.toml` reach).
pub fn config(data: &[u8]) {
    use attestd::config::layers::merge_texts;
    use attestd::config::scope::Source;
    let text = String::from_utf8_lossy(data);
    let _ = attestd::config::Config::parse(&text);
    let image = "[config_file]\nsource = \"init-data\"\n";
    for source in [Source::UserData, Source::InitData, Source::Operator] {
        let _ = merge_texts(
            &[(std::path::PathBuf::from("/etc/attestd/attestd.toml"), image)],
            Some((std::path::PathBuf::from("/run/peerpod/aa.toml"), &text)),
            source,
        );
    }
}

/// The pod VM's user-data (cloud-config, init-data inside): planned, never
/// written.
pub fn podvm_user_data(data: &[u8]) {
    if let Ok(plan) = attestd_podvm::plan(data, &attestd_podvm::ImageSettings::default()) {
        // What is planned is bounded as documented.
        assert!(plan.write.len() <= attestd_podvm::MAX_FILES + 6);
        for (name, bytes) in &plan.write {
            assert!(bytes.len() <= attestd_podvm::MAX_FILE_BYTES, "{name}");
        }
    }
}

/// An AdmissionReview as the API server posts it (the pod or workload is its
/// author's): always a well-formed answer.
pub fn webhook_review(data: &[u8]) {
    use attestd_webhook::config::{Config, Lock};
    static SETUP: std::sync::OnceLock<(Config, Lock)> = std::sync::OnceLock::new();
    let (config, lock) = SETUP.get_or_init(|| {
        let digest = format!("sha256:{}", "1".repeat(64));
        let lock = format!(
            "[images.tdx]\nimage = \"localhost/attestd/attester-tdx\"\ndigest = \"{digest}\"\ntransport = \"ttrpc\"\n\n[components.attestd]\nimage = \"localhost/attestd/attestd\"\ndigest = \"{digest}\"\n"
        );
        let config: Config =
            toml::from_str("[runtime_classes]\nkata-qemu-tdx = \"tdx\"\n").unwrap_or_default();
        (config, toml::from_str(&lock).unwrap_or_default())
    });
    // As a pod's review (/mutate) and as a workload's (/workloads/<level>).
    use attestd_webhook::workloads::Level;
    for level in [None, Some(Level::Baseline), Some(Level::Restricted)] {
        let (body, _) = attestd_webhook::review::review(data, level, config, lock);
        let answer: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    }
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

/// A plugin's `Info` answer as the core reads it, over either transport: what a
/// malicious plugin can make the core believe about it.
pub fn plugin_info(data: &[u8]) {
    use attester_sdk::{read_info, Transport, PROTOCOL_VERSIONS};
    for t in [Transport::Ttrpc, Transport::Grpc] {
        if let Ok(h) = read_info(data, t, PROTOCOL_VERSIONS) {
            // What reaches logs is bounded, whatever the plugin said.
            assert!(h.info.tee.chars().count() <= attester_sdk::MAX_INFO_TEXT);
            assert!(h.plugin_versions.len() <= attester_sdk::MAX_INFO_LIST);
        }
    }
}

/// What an SNP guest device answers: the certificate table (its GUID entries and
/// offsets) and the attestation report, then the evidence built from them.
pub fn snp_device(data: &[u8]) {
    use attester_snp::{certs, evidence, report};
    let certs = certs::parse(data).ok();
    if let Some(entries) = &certs {
        let _ = certs::build(entries);
    }
    let _ = report::report_data(data);
    let _ = report::host_data(data);
    let _ = report::with_report_data(data, &[7; 64]);
    if let Ok(r) = report::parse(data) {
        let _ = evidence::evidence(&r, certs.as_deref());
    }
}

/// A TDX quote as configfs-tsm returns it: the header, version and TEE type, the
/// TD report body's fields, and the evidence around it.
pub fn tdx_quote(data: &[u8]) {
    use attester_tdx::{evidence, quote};
    let _ = quote::body_offset(data);
    let _ = quote::report_data(data);
    let _ = quote::mrconfigid(data);
    if let Ok(q) = quote::with_report_data(data, &[7; 64]) {
        // The report data written is the report data read back.
        assert_eq!(quote::report_data(&q).unwrap(), &[7; 64][..]);
    }
    let _ = evidence::evidence(data, Some(data));
}

/// An HCL report as the Azure vTPM's NV index holds it (parsed with az-cvm-vtpm
/// behind attestd's checks, which keep it off the crate's panicking paths).
pub fn hcl_report(data: &[u8]) {
    use attester_azure::hcl::{is_type, parse, td_report_bytes, ReportType};
    for t in [ReportType::Snp, ReportType::Tdx] {
        let _ = is_type(data.to_vec(), t);
        if let Ok(r) = parse(data.to_vec(), t) {
            if t == ReportType::Tdx {
                let _ = td_report_bytes(&r);
            }
        }
    }
}

/// A declared probe as a plugin image's label carries it (one condition a
/// line): what parses keeps the rules (a read never under /dev, nothing
/// per-process), and checking it on a machine never panics.
pub fn probe(data: &[u8]) {
    use attestd::config::probe::{parse, Condition, MAX_PROBE_CONDITIONS};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let conditions: Vec<String> = text.lines().map(str::to_string).collect();
    let Ok(parsed) = parse(&conditions) else {
        return;
    };
    assert!(parsed.len() <= MAX_PROBE_CONDITIONS);
    for c in &parsed {
        let path = match c {
            Condition::Exists(p) | Condition::Equals(p, _) => p,
        };
        assert!(["/dev/", "/sys/", "/proc/"]
            .iter()
            .any(|r| path.starts_with(r)));
        if let Condition::Equals(p, _) = c {
            assert!(!p.starts_with("/dev/"), "{p}");
        }
        // By path segment: `/proc/kmsge` is another file (the fuzzer's first
        // find was this harness comparing text).
        if let Some(first) = path
            .strip_prefix("/proc/")
            .and_then(|r| r.split('/').next())
        {
            assert!(
                !["kmsg", "self", "thread-self"].contains(&first)
                    && !first.bytes().all(|b| b.is_ascii_digit()),
                "{path}"
            );
        }
        let _ = c.describe();
        // A root with nothing in it: no condition holds, none panics.
        assert!(!c.holds(std::path::Path::new("/nonexistent/attestd-fuzz-root")));
    }
}

/// A byte stream of ttrpc frames as a client sends them, through the
/// connection layer that reads them frame by frame (`TtrpcConn`), delivered in
/// chunks whose sizes the input's first byte picks. What comes out is the same
/// frames (ids, types, flags; every payload unchanged but a request to an
/// unknown service, which is re-addressed to the unknown-service sink).
pub fn ttrpc_frames(data: &[u8]) {
    use attestd::server::accept::{InFlight, TtrpcConn};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

    struct Chunks<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl AsyncRead for Chunks<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }
    impl InFlight for Chunks<'_> {}

    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("a runtime for the harness: {e}"));
    let out = rt.block_on(async {
        let known: std::sync::Arc<[String]> =
            std::sync::Arc::from(vec!["attestation_agent.AttestationAgentService".to_string()]);
        let chunks = Chunks {
            data: input,
            step: usize::from(first % 17) + 1,
        };
        // No cap on requests in flight: nothing answers here.
        let mut conn = TtrpcConn::new(chunks, usize::MAX, known);
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.map(|_| out)
    });
    // The source never stalls, so no frame misses its deadline.
    let out = out.unwrap_or_else(|e| panic!("a stream that never stalls failed: {e}"));

    /// Whole frames: (header, payload).
    fn frames(mut b: &[u8]) -> Vec<([u8; 10], &[u8])> {
        let mut v = Vec::new();
        while b.len() >= 10 {
            let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if b.len() - 10 < len {
                break;
            }
            let mut h = [0u8; 10];
            h.copy_from_slice(&b[..10]);
            v.push((h, &b[10..10 + len]));
            b = &b[10 + len..];
        }
        v
    }
    let (sent, got) = (frames(input), frames(&out));
    assert_eq!(sent.len(), got.len(), "whole frames in and out");
    for ((h_in, p_in), (h_out, p_out)) in sent.iter().zip(&got) {
        assert_eq!(h_in[4..], h_out[4..], "stream id, type and flags");
        let sink =
            p_out.starts_with(&[0x0a, 22]) && p_out[2..].starts_with(b"attestd.UnknownService");
        assert!(p_in == p_out || (h_in[8] == 1 && sink), "a payload changed");
    }
}

/// The pod VM's cidata disk (ISO 9660) as the host hands it: `user-data` read
/// from its root directory within the bound, or an error, never a panic.
pub fn cidata_iso(data: &[u8]) {
    let max = 64 * 1024;
    if let Ok(b) =
        attestd_podvm::iso::read_root_file(&mut std::io::Cursor::new(data), "user-data", max)
    {
        assert!(b.len() <= max);
    }
}
