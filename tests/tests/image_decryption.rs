//! Image decryption for real: an image encrypted once by skopeo (built from the Go
//! module proxy with ocicrypt's key providers, `tests/go/skopeo`) through an image
//! builder's attestd (WrapKey), pushed to Debian's docker-registry over TLS, and
//! decrypted through a guest's attestd (UnWrapKey, the KEK released by the test KBS
//! after RCAR) by each client the project claims:
//! - skopeo, into containers-storage, and the decrypted image run with podman;
//! - Go's ocicrypt library itself (`tests/go/ocicrypt`);
//! - the Rust ocicrypt-shaped client (`tests/src/ocicrypt.rs`) over gRPC, the
//!   layer then decrypted here (AES-256-CTR, as ocicrypt encrypts).
//!
//! And refused, with the KBS's reason reaching each client, when the KBS policy
//! denies the key. Prints the pull figures (docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use attestd_e2e::kbs::{attestd_config, TestKbs};
use attestd_e2e::registry::Registry;
use attestd_e2e::{
    connect_plugin, go_bin, locked_image, ocicrypt, succeeded, Attestd, PodmanContainer,
    PODMAN_RUN_LIMITS,
};
use attestd_proto::grpc::keyprovider as g;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

const KID: &str = "kbs:///default/key/image-kek";
const RESOURCE: &str = "default/key/image-kek";
const PROVIDER_ANNOTATION: &str = "org.opencontainers.image.enc.keys.provider.attestd";
/// The test image: the sample attester's image and this many layers of 1 MiB of
/// random bytes on top.
const EXTRA_LAYERS: usize = 3;

/// An attestd serving the key provider over gRPC on loopback, and the
/// `OCICRYPT_KEYPROVIDER_CONFIG` file that names it.
struct KeyProvider {
    a: Attestd,
    config: PathBuf,
    addr: String,
    _dir: tempfile::TempDir,
}

impl KeyProvider {
    /// `kek`: the image builder's (WrapKey); none: a guest's, which fetches the
    /// KEK from the KBS. A guest's listens on a Unix socket, a builder's on
    /// loopback TCP: ocicrypt's `grpc` form takes both.
    fn start(kbs: &TestKbs, kek: Option<&[u8]>) -> KeyProvider {
        let dir = tempfile::tempdir().unwrap();
        let addr = match kek {
            Some(_) => format!("127.0.0.1:{}", attestd_e2e::free_port()),
            None => format!("unix://{}", dir.path().join("kp.sock").display()),
        };
        let mut kp = format!("[keyprovider]\ngrpc = {addr:?}\n");
        if let Some(kek) = kek {
            std::fs::write(dir.path().join("kek"), kek).unwrap();
            kp.push_str(&format!(
                "wrap_kek = {:?}\n",
                dir.path().join("kek").display().to_string()
            ));
        }
        let a = Attestd::start(|d| attestd_config(d, &kbs.url(), &kp)).unwrap();
        // What a user writes: ocicrypt's provider table, attestd by gRPC.
        let config = dir.path().join("ocicrypt.json");
        std::fs::write(
            &config,
            serde_json::json!({"key-providers": {"attestd": {"grpc": addr}}}).to_string(),
        )
        .unwrap();
        KeyProvider {
            a,
            config,
            addr,
            _dir: dir,
        }
    }
}

/// Our skopeo (key providers), with `provider`'s config when given; run on a
/// thread so the test KBS on this runtime keeps answering.
async fn skopeo(provider: Option<&KeyProvider>, args: &[String]) -> Output {
    let mut cmd = Command::new(go_bin("skopeo"));
    cmd.args(args);
    match provider {
        Some(p) => cmd.env("OCICRYPT_KEYPROVIDER_CONFIG", &p.config),
        None => cmd.env_remove("OCICRYPT_KEYPROVIDER_CONFIG"),
    };
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The sample attester's image with `EXTRA_LAYERS` layers of random bytes: a
/// runnable image of several layers; its podman name.
fn build_image(dir: &Path) -> String {
    let (name, digest) = locked_image("sample");
    let mut containerfile = format!("FROM {name}@{digest}\n");
    for i in 0..EXTRA_LAYERS {
        let mut pad = vec![0u8; 1 << 20];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut pad);
        std::fs::write(dir.join(format!("pad{i}")), pad).unwrap();
        containerfile.push_str(&format!("COPY pad{i} /pad/{i}\n"));
    }
    std::fs::write(dir.join("Containerfile"), containerfile).unwrap();
    let tag = "localhost/attestd-tests/layers:decrypt";
    let o = Command::new("podman")
        .args(["build", "-q", "--pull=never", "-t", tag])
        .arg(dir)
        .output()
        .unwrap();
    succeeded(&o, "podman build");
    tag.to_string()
}

/// The manifest a registry serves for `reference`.
async fn manifest(reg: &Registry, reference: &str) -> Value {
    let o = skopeo(
        None,
        &[
            "inspect".into(),
            "--raw".into(),
            "--cert-dir".into(),
            reg.certs_dir.join(&reg.host).display().to_string(),
            reference.into(),
        ],
    )
    .await;
    serde_json::from_str(&succeeded(&o, "skopeo inspect --raw")).unwrap()
}

fn layer_digests(m: &Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// The Go ocicrypt client, with `provider`'s config.
async fn go_ocicrypt(provider: &KeyProvider, args: &[String]) -> (Option<i32>, Value) {
    let mut cmd = Command::new(go_bin("ocicrypt-client"));
    cmd.args(args)
        .env("OCICRYPT_KEYPROVIDER_CONFIG", &provider.config);
    let o = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

/// UnWrapKey as Rust ocicrypt asks it (gRPC): the layer's private options.
async fn rust_unwrap(provider: &KeyProvider, annotation: &[u8]) -> Result<Value, tonic::Status> {
    let channel = match provider.addr.strip_prefix("unix://") {
        Some(path) => attester_sdk::grpc_unix_channel(Path::new(path))
            .await
            .unwrap(),
        None => tonic::transport::Endpoint::from_shared(format!("http://{}", provider.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    };
    let mut c = g::key_provider_service_client::KeyProviderServiceClient::new(channel);
    let out = c
        .un_wrap_key(g::KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: ocicrypt::unwrap_input("attestd", annotation),
        })
        .await?
        .into_inner();
    let opts = ocicrypt::read_unwrap_output(&out.key_provider_key_wrap_protocol_output).unwrap();
    Ok(serde_json::from_slice(&opts).unwrap())
}

/// A layer decrypted as ocicrypt's AES_256_CTR_HMAC_SHA256 does: AES-256-CTR
/// with the private options' key and nonce.
fn decrypt_ctr(opts: &Value, blob: &[u8]) -> Vec<u8> {
    use aes::cipher::{KeyIvInit as _, StreamCipher as _};
    let key = STANDARD.decode(opts["symkey"].as_str().unwrap()).unwrap();
    let nonce = STANDARD
        .decode(opts["cipheroptions"]["nonce"].as_str().unwrap())
        .unwrap();
    let mut data = blob.to_vec();
    let mut c = ctr::Ctr128BE::<aes::Aes256>::new(key.as_slice().into(), nonce.as_slice().into());
    c.apply_keystream(&mut data);
    data
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", attestd_e2e::hex(&sha2::Sha256::digest(b)))
}

/// An OCI layout's blob.
fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// Removes a podman image however the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_encrypted_once_is_decrypted_by_skopeo_go_ocicrypt_and_rust_through_attestd() {
    let kbs = TestKbs::start().await;
    let mut kek = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut kek);
    kbs.put(RESOURCE, &kek);
    let builder = KeyProvider::start(&kbs, Some(&kek));
    let guest = KeyProvider::start(&kbs, None);
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let image = build_image(w);
    let _built = Image(image.clone());
    let cert_dir = reg.certs_dir.join(&reg.host).display().to_string();
    let plain = format!("docker://{}/attestd-tests/layers:plain", reg.host);
    let enc = format!("docker://{}/attestd-tests/layers:enc", reg.host);
    let copy = |extra: &[&str], from: &str, to: &str| {
        let mut a = s(&[
            "copy",
            "-q",
            "--src-cert-dir",
            &cert_dir,
            "--dest-cert-dir",
            &cert_dir,
        ]);
        a.extend(s(extra));
        a.push(from.into());
        a.push(to.into());
        a
    };
    succeeded(
        &skopeo(
            None,
            &copy(&[], &format!("containers-storage:{image}"), &plain),
        )
        .await,
        "push the plain image",
    );
    // Encrypted once, by the image builder's attestd (WrapKey with its KEK).
    let o = skopeo(
        Some(&builder),
        &copy(
            &["--encryption-key", &format!("provider:attestd:{KID}")],
            &plain,
            &enc,
        ),
    )
    .await;
    succeeded(&o, "skopeo copy --encryption-key provider:attestd:…");
    let plain_m = manifest(&reg, &plain).await;
    let enc_m = manifest(&reg, &enc).await;
    let layers = enc_m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), plain_m["layers"].as_array().unwrap().len());
    assert!(layers.len() > EXTRA_LAYERS, "{enc_m}");
    for l in layers {
        assert!(
            l["mediaType"].as_str().unwrap().ends_with("+encrypted"),
            "{l}"
        );
        let packet: Value = serde_json::from_slice(
            &STANDARD
                .decode(l["annotations"][PROVIDER_ANNOTATION].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(packet["kid"], KID, "{l}");
    }
    assert_eq!(
        kbs.attest_requests(),
        0,
        "the builder wraps with its own KEK"
    );

    // skopeo: into containers-storage, decrypted through the guest's attestd.
    let decrypted = "localhost/attestd-tests/layers:decrypted";
    let _decrypted = Image(decrypted.into());
    let o = skopeo(
        Some(&guest),
        &copy(
            &["--decryption-key", "provider:attestd"],
            &enc,
            &format!("containers-storage:{decrypted}"),
        ),
    )
    .await;
    succeeded(&o, "skopeo copy --decryption-key provider:attestd");
    assert!(
        kbs.attest_requests() >= 1,
        "the KEK came from the KBS after attestation"
    );
    // The decrypted image runs and serves evidence.
    let run = tempfile::tempdir().unwrap();
    let name = format!("attestd-decrypted-{}", std::process::id());
    let mut args: Vec<String> = s(&["run", "-d", "--rm", "--name", &name]);
    args.extend(PODMAN_RUN_LIMITS.iter().map(|x| x.to_string()));
    args.extend(s(&[
        "--network",
        "none",
        "-v",
        &format!("{}:/run/s", run.path().display()),
    ]));
    args.extend(s(&[
        decrypted,
        "--socket",
        "/run/s/sample.sock",
        "--transport",
        "ttrpc",
    ]));
    succeeded(
        &Command::new("podman").args(&args).output().unwrap(),
        "podman run",
    );
    let _container = PodmanContainer(name.clone());
    let client = connect_plugin(
        &run.path().join("sample.sock"),
        attester_sdk::Transport::Ttrpc,
        Duration::from_secs(30),
    )
    .await;
    let ev = client.evidence(b"decrypted".to_vec()).await.unwrap();
    assert_eq!(
        ev.bytes,
        attester_sample::evidence(b"decrypted").unwrap().bytes
    );

    // Debian's podman 4.3 with the same key-provider config.
    let mut pull = Command::new("podman");
    pull.args([
        "pull",
        "-q",
        "--cert-dir",
        &cert_dir,
        "--decryption-key",
        "provider:attestd",
    ])
    .arg(enc.trim_start_matches("docker://"))
    .env("OCICRYPT_KEYPROVIDER_CONFIG", &guest.config);
    let o = tokio::task::spawn_blocking(move || pull.output().unwrap())
        .await
        .unwrap();
    let _pulled = Image(enc.trim_start_matches("docker://").to_string());
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!(
        "podman {}: pull --decryption-key provider:attestd: {}",
        podman_version(),
        if o.status.success() {
            "decrypted"
        } else {
            err.trim()
        }
    );
    // 4.3.1 has no such flag (docs/key-release.md); a podman that has it must
    // decrypt, not fail some other way.
    assert!(
        o.status.success() || err.contains("unknown flag: --decryption-key"),
        "{err}"
    );

    // Go's ocicrypt: the same encrypted layers, from an OCI layout as pulled.
    let layout = w.join("enc-oci");
    succeeded(
        &skopeo(
            None,
            &copy(&[], &enc, &format!("oci:{}:enc", layout.display())),
        )
        .await,
        "skopeo copy of the encrypted image, undecrypted",
    );
    let (code, v) = go_ocicrypt(
        &guest,
        &s(&["decrypt", "attestd", layout.to_str().unwrap()]),
    )
    .await;
    assert_eq!(code, Some(0), "{v}");
    let go_plain: Vec<String> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["plain"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        go_plain,
        layer_digests(&plain_m),
        "Go's ocicrypt decrypted every layer"
    );

    // A layer whose annotation names no KBS resource: Go's ocicrypt hears
    // attestd's reason. (The layout is edited in place: the client reads the
    // manifest by the index's digest without checking it.)
    let hostile = w.join("hostile-oci");
    succeeded(
        &Command::new("cp")
            .arg("-a")
            .arg(&layout)
            .arg(&hostile)
            .output()
            .unwrap(),
        "cp",
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(hostile.join("index.json")).unwrap()).unwrap();
    let m_path = hostile.join("blobs/sha256").join(
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let mut m: Value = serde_json::from_slice(&std::fs::read(&m_path).unwrap()).unwrap();
    let packet = serde_json::json!({"kid": "file:///etc/shadow", "wrapped_data": "", "iv": "", "wrap_type": "A256GCM"});
    m["layers"][0]["annotations"][PROVIDER_ANNOTATION] = STANDARD.encode(packet.to_string()).into();
    std::fs::write(&m_path, m.to_string()).unwrap();
    let (code, v) = go_ocicrypt(
        &guest,
        &s(&["decrypt", "attestd", hostile.to_str().unwrap()]),
    )
    .await;
    assert_eq!(code, Some(1), "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("file:///etc/shadow")
            && err.contains("is not a kbs:///<repo>/<type>/<tag> URI"),
        "{v}"
    );

    // Rust ocicrypt's messages: UnWrapKey, then the layer decrypted here.
    for (l, want) in layers.iter().zip(layer_digests(&plain_m)) {
        let annotation = STANDARD
            .decode(l["annotations"][PROVIDER_ANNOTATION].as_str().unwrap())
            .unwrap();
        let opts = rust_unwrap(&guest, &annotation).await.unwrap();
        let plain = decrypt_ctr(&opts, &blob(&layout, l["digest"].as_str().unwrap()));
        assert_eq!(sha256(&plain), want);
    }

    // Go's ocicrypt also encrypts through attestd: a layer of its own, which
    // skopeo's guest side then reads back with the same KEK.
    let layer = w.join("layer");
    std::fs::write(&layer, b"not really gzip, ocicrypt does not care").unwrap();
    let (code, v) = go_ocicrypt(
        &builder,
        &s(&[
            "encrypt",
            &format!("provider:attestd:{KID}"),
            layer.to_str().unwrap(),
            w.join("layer.enc").to_str().unwrap(),
        ]),
    )
    .await;
    assert_eq!(code, Some(0), "{v}");
    let annotation = STANDARD
        .decode(v["annotations"][PROVIDER_ANNOTATION].as_str().unwrap())
        .unwrap();
    let opts = rust_unwrap(&guest, &annotation).await.unwrap();
    assert_eq!(
        decrypt_ctr(&opts, &std::fs::read(w.join("layer.enc")).unwrap()),
        std::fs::read(&layer).unwrap()
    );

    // The policy denies the key: each client hears the KBS's reason.
    kbs.knobs().refuse = vec![RESOURCE.into()];
    let denied = KeyProvider::start(&kbs, None);
    let o = skopeo(
        Some(&denied),
        &copy(
            &["--decryption-key", "provider:attestd"],
            &enc,
            &format!("oci:{}:x", w.join("denied").display()),
        ),
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "skopeo decrypted under a denying policy"
    );
    assert!(err.contains("PolicyDeny"), "{err}");
    let (code, v) = go_ocicrypt(
        &denied,
        &s(&["decrypt", "attestd", layout.to_str().unwrap()]),
    )
    .await;
    assert_eq!(code, Some(1), "{v}");
    assert!(v["error"].as_str().unwrap().contains("PolicyDeny"), "{v}");
    let first = STANDARD
        .decode(
            layers[0]["annotations"][PROVIDER_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let st = rust_unwrap(&denied, &first).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("PolicyDeny"), "{}", st.message());
    drop(denied);
    kbs.knobs().refuse.clear();

    // Figures: the same pull into an OCI layout, plain, decrypting with a fresh
    // attestd (a handshake first), and decrypting again (its session reused).
    let mut rounds: Vec<[f64; 3]> = Vec::new();
    let mut unwraps: Vec<[f64; 2]> = Vec::new();
    for r in 0..5 {
        let fresh = KeyProvider::start(&kbs, None);
        let mut t = [0f64; 3];
        for (i, (from, provider)) in [(&plain, None), (&enc, Some(&fresh)), (&enc, Some(&fresh))]
            .into_iter()
            .enumerate()
        {
            let dest = format!("oci:{}:x", w.join(format!("fig-{r}-{i}")).display());
            let extra: &[&str] = if provider.is_some() {
                &["--decryption-key", "provider:attestd"]
            } else {
                &[]
            };
            let before = kbs.attest_requests();
            let t0 = Instant::now();
            succeeded(
                &skopeo(provider, &copy(extra, from, &dest)).await,
                "figure pull",
            );
            t[i] = t0.elapsed().as_secs_f64() * 1000.0;
            if i == 2 {
                assert_eq!(
                    kbs.attest_requests(),
                    before,
                    "the second decrypting pull attested again"
                );
            }
        }
        rounds.push(t);
        drop(fresh);
        // The key release alone: one UnWrapKey on a fresh attestd (attest, then
        // fetch the KEK), then the same on its reused session.
        let fresh = KeyProvider::start(&kbs, None);
        let mut k = [0f64; 2];
        for slot in &mut k {
            let t0 = Instant::now();
            rust_unwrap(&fresh, &first).await.unwrap();
            *slot = t0.elapsed().as_secs_f64() * 1000.0;
        }
        unwraps.push(k);
    }
    let median_of = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let median = |i: usize| median_of(rounds.iter().map(|r| r[i]).collect());
    eprintln!(
        "figure: skopeo pull of {} layers into an OCI layout, median of 5: plain {:.0} ms, decrypting with a handshake {:.0} ms, decrypting with the session reused {:.0} ms",
        layers.len(),
        median(0),
        median(1),
        median(2)
    );
    eprintln!(
        "figure: one UnWrapKey (Rust client, gRPC), median of 5: with the handshake {:.1} ms, on the reused session {:.1} ms",
        median_of(unwraps.iter().map(|k| k[0]).collect()),
        median_of(unwraps.iter().map(|k| k[1]).collect())
    );
    drop(guest.a);
    drop(builder.a);
}

fn podman_version() -> String {
    let o = Command::new("podman")
        .args(["version", "--format", "{{.Client.Version}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
