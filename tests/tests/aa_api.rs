//! attestd + the sample plugin: the AA API over ttrpc and gRPC × the plugin over
//! ttrpc and gRPC, every RPC in one table-driven test, evidence compared byte for
//! byte. Clients are the generated ones CDH and kbs_protocol use (directly, or
//! through attestd's `AaClient`, which wraps them), on custom socket paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestd::aa_client::AaClient;
use attestd::server::GrpcAddr;
use attestd::service::{MeasurementEvent, MeasurementResult};
use attestd_e2e::{config, ctx, status, Attestd, Plugin};
use attestd_proto::grpc::attestation_agent as g;
use attestd_proto::ttrpc::attestation_agent as t;
use attester_sdk::Code;

const HELLO: &[u8] = b"hello-coco";
const HELLO_EVIDENCE: &str = r#"{"report_data":"aGVsbG8tY29jbw==","svn":"1"}"#;
const HELLO_ADDITIONAL: &str = r#"{"sampledevice":{"report_data":"aGVsbG8tY29jbw==","svn":"1"}}"#;
/// The emulated launch-time init-data value the sample compares with.
const INIT: &str = "abababababababababababababababababababababababababababababababab";

fn start(plugin_transport: &str) -> Attestd {
    let primary = Plugin::sample(plugin_transport).with_args(&["--init-data-digest", INIT]);
    let dev = Plugin::sample_device(plugin_transport);
    Attestd::start(|d| config(d, &primary, &[dev], "")).unwrap()
}

/// The AA API over `aa` ("ttrpc" or "grpc"): attestd's own client of it, which is
/// the generated ttrpc or tonic client, each call's status read back as a code.
async fn client(a: &Attestd, aa: &str) -> AaClient {
    match aa {
        "ttrpc" => AaClient::ttrpc(&format!("unix://{}", a.aa_sock.display()))
            .await
            .unwrap(),
        _ => AaClient::grpc(
            &GrpcAddr::Unix(a.grpc_sock.clone()),
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap(),
    }
}

/// Every RPC, for each AA transport × plugin transport: the same answers, the same
/// codes and messages, byte for byte.
#[tokio::test]
async fn every_rpc_over_each_aa_and_plugin_transport() {
    for (aa, plugin) in [
        ("ttrpc", "ttrpc"),
        ("ttrpc", "grpc"),
        ("grpc", "ttrpc"),
        ("grpc", "grpc"),
    ] {
        let at = format!("AA over {aa}, plugin over {plugin}");
        let a = start(plugin);
        let c = client(&a, aa).await;

        let ev = c.get_evidence(HELLO.to_vec()).await.unwrap();
        assert_eq!(std::str::from_utf8(&ev).unwrap(), HELLO_EVIDENCE, "{at}");
        let ev = c.get_additional_evidence(HELLO.to_vec()).await.unwrap();
        assert_eq!(std::str::from_utf8(&ev).unwrap(), HELLO_ADDITIONAL, "{at}");
        assert_eq!(c.get_tee_type().await.unwrap(), "sample", "{at}");
        assert_eq!(
            c.get_additional_tees().await.unwrap(),
            vec!["sampledevice".to_string()],
            "{at}"
        );

        let e = c.get_token("kbs").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{at}");
        assert_eq!(
            e.message(),
            "token type \"kbs\" is not configured: set [token_configs.kbs] url (or AA_KBC_PARAMS=cc_kbc::<url>)",
            "{at}"
        );

        for register_index in [Some(17), None] {
            let r = c
                .extend_runtime_measurement(MeasurementEvent {
                    domain: "github.com/confidential-containers".into(),
                    operation: "PullImage".into(),
                    content: "{}".into(),
                    register_index,
                })
                .await
                .unwrap();
            assert_eq!(r, MeasurementResult::NotEnabled, "{at}");
        }

        c.bind_init_data(hex(INIT)).await.unwrap();
        let e = c.bind_init_data(vec![0xcd; 32]).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{at}");
        assert_eq!(
            e.message(),
            format!(
                "plugin sample: init-data digest {} does not match the launch-time value {INIT}",
                "cd".repeat(32)
            ),
            "{at}"
        );

        assert!(a.stop().success(), "{at}");
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn no_additional_attesters_gives_empty_bytes_and_list() {
    let p = Plugin::sample("ttrpc");
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let c = a.ttrpc().await;
    let r = c
        .get_additional_evidence(
            ctx(),
            &t::GetAdditionalEvidenceRequest {
                RuntimeData: HELLO.to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(r.Evidence.is_empty());
    let r = c
        .get_additional_tees(ctx(), &Default::default())
        .await
        .unwrap();
    assert!(r.additional_tees.is_empty());
    // Without a comparison value the sample cannot bind init-data: a clear UNIMPLEMENTED.
    let e = c
        .bind_init_data(
            ctx(),
            &t::BindInitDataRequest {
                Digest: vec![1; 32],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    let (code, message) = status(e);
    assert_eq!(code, ttrpc::Code::UNIMPLEMENTED);
    assert_eq!(
        message,
        "plugin sample (sample): init-data binding is not supported by this attester"
    );
}

#[tokio::test]
async fn evidence_with_64_bytes_and_empty_runtime_data() {
    let p = Plugin::sample("grpc");
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let c = a.ttrpc().await;
    let r = c
        .get_evidence(
            ctx(),
            &t::GetEvidenceRequest {
                RuntimeData: vec![0xff; 64],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let want = format!(
        r#"{{"report_data":"{}","svn":"1"}}"#,
        "/".repeat(85) + "w=="
    );
    assert_eq!(std::str::from_utf8(&r.Evidence).unwrap(), want);
    let r = c
        .get_evidence(ctx(), &t::GetEvidenceRequest::default())
        .await
        .unwrap();
    assert_eq!(r.Evidence, br#"{"report_data":"","svn":"1"}"#);
}

#[tokio::test]
async fn concurrent_clients_get_their_own_evidence() {
    let p = Plugin::sample("ttrpc");
    let a = Attestd::start(|d| config(d, &p, &[], "")).unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let c = a.ttrpc().await;
        tasks.push(tokio::spawn(async move {
            for j in 0..50u8 {
                let rd = vec![i, j];
                let r = c
                    .get_evidence(
                        ctx(),
                        &t::GetEvidenceRequest {
                            RuntimeData: rd.clone(),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&r.Evidence).unwrap();
                let want = attester_sample::evidence(&rd).unwrap().bytes;
                assert_eq!(r.Evidence, want, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn grpc_over_tcp_as_upstream() {
    // A free loopback port, as upstream's default 127.0.0.1:50002 may be taken.
    let port = attestd_e2e::free_port();
    let addr = format!("127.0.0.1:{port}");
    let p = Plugin::sample("ttrpc");
    let a = Attestd::start_with(|d| config(d, &p, &[], ""), &["--grpc_sock", &addr]).unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = g::attestation_agent_service_client::AttestationAgentServiceClient::new(ch);
    let r = c
        .get_evidence(g::GetEvidenceRequest {
            runtime_data: HELLO.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::str::from_utf8(&r.evidence).unwrap(), HELLO_EVIDENCE);
    // Served on TCP only when asked, and said to be open to every local user.
    assert!(
        a.log()
            .contains("the AA API is open on TCP: any process on this machine"),
        "{}",
        a.log()
    );
    assert!(a.stop().success());
    // The port is released on shutdown.
    std::net::TcpListener::bind(&addr).unwrap();
}

#[test]
fn no_grpc_listener_unless_asked_for() {
    // Upstream's ttrpc build opens no TCP port; neither does attestd by default.
    let d = tempfile::tempdir().unwrap();
    let p = Plugin::sample("ttrpc");
    let aa = d.path().join("aa.sock");
    let log = d.path().join("log");
    let mut child = attestd_e2e::spawn_attestd(
        d.path(),
        &[],
        &config(d.path(), &p, &[], ""),
        &[
            "--attestation_sock".into(),
            format!("unix://{}", aa.display()),
        ],
        Some(&aa),
    );
    attestd_e2e::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("attestd ready"), "{log}");
    assert!(!log.contains("over gRPC"), "{log}");
}

/// The TEEs the three test devices claim (each its own, as additional evidence
/// is keyed by TEE).
const DEVICE_TEES: [&str; 3] = ["sampledevice", "nvidia", "tpm"];

/// Three device plugins `dev0`..`dev2`, with `args`.
fn devices(args: &[&str]) -> Vec<Plugin> {
    DEVICE_TEES
        .iter()
        .enumerate()
        .map(|(i, tee)| {
            let mut p = Plugin::test("ttrpc", &["--additional", "--tee", tee]).with_args(args);
            p.name = format!("dev{i}");
            p
        })
        .collect()
}

#[tokio::test]
async fn additional_evidence_is_gathered_from_every_device_at_once() {
    // A barrier only calls made at the same time pass: one after another, the
    // first device would wait for the others until it gave up.
    let barrier = tempfile::tempdir().unwrap();
    let arg = format!("{}:3", barrier.path().display());
    let devs = devices(&["--evidence-barrier", &arg]);
    let a = Attestd::start(|d| config(d, &Plugin::sample("ttrpc"), &devs, "")).unwrap();
    let c = client(&a, "ttrpc").await;
    let ev = c.get_additional_evidence(HELLO.to_vec()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ev).unwrap();
    let tees: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(tees, ["nvidia", "sampledevice", "tpm"]);
    for t in tees {
        assert!(
            barrier.path().join(t).exists(),
            "{t} did not enter GetEvidence"
        );
    }
}

#[tokio::test]
async fn a_failing_device_is_named_and_the_others_are_not_waited_for() {
    let mut devs = devices(&["--evidence-delay-ms", "20000"]);
    // dev1 crashes in GetEvidence; the others would take 20 s.
    devs[1] = {
        let mut p = Plugin::test(
            "ttrpc",
            &[
                "--additional",
                "--tee",
                DEVICE_TEES[1],
                "--mode",
                "crash-on-evidence",
            ],
        );
        p.name = "dev1".into();
        p
    };
    let a = Attestd::start(|d| config(d, &Plugin::sample("ttrpc"), &devs, "restart_wait_ms = 200"))
        .unwrap();
    let c = client(&a, "ttrpc").await;
    let started = std::time::Instant::now();
    let e = c.get_additional_evidence(HELLO.to_vec()).await.unwrap_err();
    assert!(e.message().starts_with("plugin dev1: "), "{}", e.message());
    // Answered by the failure, not after the slow devices (a bound far from both).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The primary is unaffected.
    assert_eq!(
        std::str::from_utf8(&c.get_evidence(HELLO.to_vec()).await.unwrap()).unwrap(),
        HELLO_EVIDENCE
    );
}
