#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::config::{LockedAttester, LockedComponent};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const CORE: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn lock() -> Lock {
    let mut l = Lock::default();
    for tee in ["sample", "tdx", "snp", "tpm"] {
        l.images.insert(
            tee.into(),
            LockedAttester {
                image: format!("localhost/attestd/attester-{tee}"),
                digest: DIGEST.into(),
                transport: "ttrpc".into(),
                devices: Vec::new(),
                probe: Vec::new(),
            },
        );
    }
    // A third party's image, as `containers/build.sh --plugin` locks it.
    l.images.insert(
        "x-hello".into(),
        LockedAttester {
            image: "localhost/acme/attester-x-hello".into(),
            digest: DIGEST.into(),
            transport: "ttrpc".into(),
            devices: vec!["/dev/x-hello-guest".into()],
            probe: vec!["/dev/x-hello-guest".into()],
        },
    );
    l.components.insert(
        "attestd".into(),
        LockedComponent {
            image: "localhost/attestd/attestd".into(),
            digest: CORE.into(),
        },
    );
    l
}

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

/// `p` as the webhook reads it from a review.
fn view(p: &Pod) -> PodView {
    serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap()
}

/// attestd's drop-in, as the webhook fixed it in attestd's container.
fn drop_in(p: &Pod) -> String {
    let spec = p.spec.as_ref().unwrap();
    let core = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CORE_CONTAINER)
        .unwrap();
    let env = core.env.as_ref().unwrap();
    let e = env.iter().find(|e| e.name == ENV_DROP_IN).unwrap();
    e.value.clone().unwrap()
}

/// `text` loaded as attestd loads its inline drop-in.
fn as_attestd_reads(text: String) -> attestd::config::Config {
    let d = tempfile::tempdir().unwrap();
    let files = attestd::config::layers::sources(d.path(), None)
        .unwrap()
        .with_inline(Some(text))
        .unwrap();
    attestd::config::layers::load(&files, attestd::config::scope::Source::Operator)
        .unwrap()
        .config
}

/// The pod after the patch, applied the way the API server applies it.
fn injected(p: &Pod, config: &Config) -> (Pod, Vec<String>) {
    match decide(&view(p), "apps", config, &lock()) {
        Decision::Inject {
            patch, warnings, ..
        } => {
            let mut doc = serde_json::to_value(p).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            (serde_json::from_value(doc).unwrap(), warnings)
        }
        other => panic!("{other:?}"),
    }
}

fn names(cs: &[Container]) -> Vec<&str> {
    cs.iter().map(|c| c.name.as_str()).collect()
}

fn tdx_pod() -> Pod {
    pod(json!({
        "metadata": {"name": "app", "annotations": {"keep": "me"}},
        "spec": {
            "runtimeClassName": "kata-qemu-tdx",
            "initContainers": [{"name": "setup", "image": "busybox"}],
            "containers": [
                {"name": "app", "image": "app", "env": [{"name": "A", "value": "1"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "side", "image": "side",
                 "env": [{"name": "ATTESTD_AA_SOCKET", "value": "mine"}]}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    }))
}

#[test]
fn a_tdx_pod_gets_the_pinned_attester_and_attestd_before_its_own_containers() {
    let (p, warnings) = injected(&tdx_pod(), &Config::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    let spec = p.spec.clone().unwrap();
    let init = spec.init_containers.unwrap();
    assert_eq!(names(&init), ["attestd-attester-tdx", "attestd", "setup"]);
    let (att, core) = (&init[0], &init[1]);
    assert_eq!(
        att.image.as_deref(),
        Some(format!("localhost/attestd/attester-tdx@{DIGEST}").as_str())
    );
    assert_eq!(
        core.image.as_deref(),
        Some(format!("localhost/attestd/attestd@{CORE}").as_str())
    );
    for c in [att, core] {
        assert_eq!(c.restart_policy.as_deref(), Some("Always"), "{}", c.name);
        assert!(
            c.startup_probe.as_ref().unwrap().exec.is_some(),
            "{}",
            c.name
        );
        // Once started, the same check keeps it alive: a hung sidecar is restarted.
        let live = c.liveness_probe.as_ref().unwrap();
        assert_eq!(
            live.exec.as_ref().unwrap().command,
            c.startup_probe
                .as_ref()
                .unwrap()
                .exec
                .as_ref()
                .unwrap()
                .command,
            "{}",
            c.name
        );
        assert_eq!(
            (live.period_seconds, live.failure_threshold),
            (Some(10), Some(3))
        );
    }
    assert_eq!(
        att.args.as_ref().unwrap(),
        &[
            "--socket",
            "/run/attestd/attesters/tdx/tdx.sock",
            "--transport",
            "ttrpc"
        ]
    );
    let probe = att.startup_probe.as_ref().unwrap().exec.as_ref().unwrap();
    assert_eq!(probe.command.as_ref().unwrap().last().unwrap(), "--probe");
    // The TDX attester needs the guest's devices: privileged (in the pod VM).
    assert_eq!(
        att.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    let sc = core.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, None);
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
        &["ALL"]
    );
    // Volumes: the pod's, then ours.
    let vols: Vec<&str> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        vols,
        [
            "data",
            RUN_VOLUME,
            AA_VOLUME,
            CONFIG_VOLUME,
            "attestd-attester-tdx"
        ]
    );
    // Issue 38: the attester sees its own socket's directory, nothing of
    // attestd's (its lock and control socket); attestd sees both.
    let mounts = |c: &Container| -> Vec<(String, String)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect()
    };
    assert_eq!(
        mounts(att),
        [(
            "attestd-attester-tdx".to_string(),
            "/run/attestd/attesters/tdx".to_string()
        )]
    );
    let core_mounts = mounts(core);
    assert!(core_mounts.contains(&(RUN_VOLUME.into(), RUN_DIR.into())));
    assert!(core_mounts.contains(&(
        "attestd-attester-tdx".into(),
        "/run/attestd/attesters/tdx".into()
    )));
    let run = &spec.volumes.as_ref().unwrap()[1];
    assert_eq!(
        run.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    // Every container of the pod sees the AA socket, read-only, and its address.
    for c in spec.containers.iter().chain(init.iter().skip(2)) {
        let m = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == AA_VOLUME);
        assert_eq!(m.unwrap().mount_path, AA_DIR, "{}", c.name);
        assert_eq!(m.unwrap().read_only, Some(true), "{}", c.name);
    }
    let env = |c: &Container| -> Vec<(String, String)> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    };
    // gRPC is off unless webhook.toml asks for it: only the ttrpc socket.
    assert_eq!(
        env(&spec.containers[0]),
        [
            ("A".into(), "1".into()),
            (ENV_SOCKET.into(), AA_SOCKET.into())
        ]
    );
    // A container's own setting wins.
    assert_eq!(
        env(&spec.containers[1]),
        [(ENV_SOCKET.into(), "mine".into())]
    );
    let a = p.metadata.annotations.clone().unwrap();
    assert_eq!(a["keep"], "me");
    assert_eq!(a[INJECTED], "tdx");
    // Issue 38: the webhook's decision is in no annotation (one can be
    // changed after admission, and a file projected from it follows).
    assert_eq!(a.len(), 2, "{a:?}");
    let cfg: toml::Value = toml::from_str(&drop_in(&p)).unwrap();
    assert_eq!(cfg["plugins"]["primary"].as_str(), Some("tdx"));
    let t = &cfg["plugins"]["attester"]["tdx"];
    assert_eq!(t["launch"].as_str(), Some("external"));
    assert_eq!(
        t["socket"].as_str(),
        Some("/run/attestd/attesters/tdx/tdx.sock")
    );
    let projected: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.downward_api.as_ref())
        .flat_map(|d| d.items.iter().flatten())
        .map(|i| i.path.clone())
        .collect();
    assert_eq!(projected, [POD_CONFIG_FILE], "only the author's own file");
}

#[test]
fn the_drop_in_in_attestds_environment_is_what_attestd_reads() {
    let (p, _) = injected(&tdx_pod(), &Config::default());
    let c = as_attestd_reads(drop_in(&p));
    assert_eq!(
        c.plugins.attester["tdx"].socket.as_deref(),
        Some(std::path::Path::new("/run/attestd/attesters/tdx/tdx.sock"))
    );
    assert_eq!(
        c.plugins.socket_dir,
        std::path::Path::new("/run/attestd/core")
    );
}

#[test]
fn a_bare_pod_gets_each_list_created() {
    let p = pod(json!({
        "metadata": {"name": "bare", "labels": {INJECT: "true"}},
        "spec": {"runtimeClassName": "kata-qemu-coco-dev", "containers": [{"name": "app", "image": "app"}]}
    }));
    let (p, _) = injected(&p, &Config::default());
    let spec = p.spec.unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["attestd-attester-sample", "attestd"]
    );
    assert_eq!(spec.volumes.unwrap().len(), 4);
    assert_eq!(spec.containers[0].env.as_ref().unwrap().len(), 1);
    assert_eq!(p.metadata.annotations.unwrap()[INJECTED], "sample");
    // The sample needs no device, so neither it nor attestd runs as root.
    for c in spec.init_containers.as_ref().unwrap() {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, None, "{}", c.name);
        assert_eq!(sc.run_as_user, Some(NON_ROOT_UID), "{}", c.name);
        assert_eq!(sc.run_as_group, Some(NON_ROOT_UID), "{}", c.name);
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        // Pod Security `restricted` (issue 42): seccomp set on each.
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "{}",
            c.name
        );
    }
}

#[test]
fn attestd_is_root_only_to_reach_a_privileged_attesters_socket() {
    // A TDX attester needs the pod VM's device (privileged, root, its socket
    // root's): attestd, confined, runs as root to reach it.
    let (p, _) = injected(&tdx_pod(), &Config::default());
    let init = p.spec.unwrap().init_containers.unwrap();
    let sc = |i: usize| init[i].security_context.clone().unwrap();
    assert_eq!(sc(0).privileged, Some(true));
    assert_eq!(sc(1).privileged, None);
    assert_eq!(sc(1).run_as_user, Some(0));
    assert_eq!(sc(1).run_as_non_root, Some(false));
    assert_eq!(sc(1).allow_privilege_escalation, Some(false));
}

#[test]
fn injected_opted_out_and_system_pods_are_left_alone() {
    let mut p = tdx_pod();
    let (done, _) = injected(&p, &Config::default());
    // Issue 26: a pod created with the marker is admitted as it is, and its
    // author is warned.
    match decide(&view(&done), "apps", &Config::default(), &lock()) {
        Decision::Unchanged { why, warn: true } => assert_eq!(
            why,
            "the pod carries attestd.io/injected (\"tdx\") at creation, so attestd-webhook leaves it as it is: remove the annotation to have attestd injected"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decide(&view(&p), "kube-system", &Config::default(), &lock()),
        Decision::Unchanged { .. }
    ));
    p.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(INJECT.into(), "false".into());
    p.metadata.labels = Some([(INJECT.to_string(), "true".to_string())].into());
    match decide(&view(&p), "apps", &Config::default(), &lock()) {
        Decision::Unchanged { why, .. } => assert!(why.contains("opted out"), "{why}"),
        other => panic!("{other:?}"),
    }
    // A pod of an unlisted class that did not opt in.
    let plain = pod(json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}]}}));
    assert!(matches!(
        decide(&view(&plain), "apps", &Config::default(), &lock()),
        Decision::Unchanged { warn: false, .. }
    ));
}

#[test]
fn a_container_named_like_ours_is_refused_not_merged() {
    for (list, name) in [
        ("containers", "attestd"),
        ("initContainers", "attestd-attester-x"),
    ] {
        let mut v = serde_json::to_value(tdx_pod()).unwrap();
        v["spec"][list]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": name, "image": "mine"}));
        match decide(&view(&pod(v)), "apps", &Config::default(), &lock()) {
            Decision::Deny(why) => assert!(why.contains(&format!("{name:?}")), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    let mut v = serde_json::to_value(tdx_pod()).unwrap();
    v["spec"]["containers"][0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "data", "mountPath": AA_DIR}));
    match decide(&view(&pod(v)), "apps", &Config::default(), &lock()) {
        Decision::Deny(why) => assert!(why.contains("already mounts something at"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_runtime_class_follows_the_policy() {
    let p = pod(json!({
        "metadata": {"name": "x", "labels": {INJECT: "true"}},
        "spec": {"runtimeClassName": "runc", "containers": [{"name": "a"}]}
    }));
    match decide(&view(&p), "apps", &Config::default(), &lock()) {
        Decision::Unchanged { why, warn: true } => {
            assert!(why.contains("runtime class runc names no TEE"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let deny = Config {
        unknown_runtime_class: UnknownPolicy::Deny,
        ..Config::default()
    };
    match decide(&view(&p), "apps", &deny, &lock()) {
        Decision::Deny(why) => assert!(why.contains("runtime class runc"), "{why}"),
        other => panic!("{other:?}"),
    }
    let default_tee = Config {
        default_tee: Some("tpm".into()),
        ..Config::default()
    };
    assert!(matches!(
        decide(&view(&p), "apps", &default_tee, &lock()),
        Decision::Inject { ref tee, .. } if tee == "tpm"
    ));
}

#[test]
fn a_tee_missing_from_the_lock_is_refused_with_its_name() {
    let mut l = lock();
    l.images.remove("tdx");
    match decide(&view(&tdx_pod()), "apps", &Config::default(), &l) {
        Decision::Deny(why) => assert!(why.contains("no attester image for TEE \"tdx\""), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut l = lock();
    l.components.clear();
    match decide(&view(&tdx_pod()), "apps", &Config::default(), &l) {
        Decision::Deny(why) => assert!(why.contains("[components.attestd]"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn auto_injects_every_hardware_candidate_and_lets_attestd_choose() {
    let p = pod(json!({
        "metadata": {"name": "x"},
        "spec": {"runtimeClassName": "kata-remote", "containers": [{"name": "a"}]}
    }));
    let (p, _) = injected(&p, &Config::default());
    let init = p.spec.clone().unwrap().init_containers.unwrap();
    assert_eq!(
        names(&init),
        [
            "attestd-attester-snp",
            "attestd-attester-tdx",
            "attestd-attester-tpm",
            "attestd-attester-x-hello",
            "attestd"
        ]
    );
    // attestd probes the pod VM's devices to choose.
    assert_eq!(
        init[4].security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    let cfg: toml::Value = toml::from_str(&drop_in(&p)).unwrap();
    assert_eq!(cfg["plugins"]["primary"].as_str(), Some("auto"));
    assert_eq!(cfg["plugins"]["attester"].as_table().unwrap().len(), 4);
    // A third party's candidate carries its declared probe: attestd has no other.
    assert_eq!(
        cfg["plugins"]["attester"]["x-hello"]["probe"],
        toml::Value::Array(vec!["/dev/x-hello-guest".into()])
    );
    assert!(cfg["plugins"]["attester"]["tdx"].get("probe").is_none());
}

#[test]
fn grpc_is_served_where_asked_and_on_the_node_network_on_a_socket() {
    let tcp = Config {
        grpc: "127.0.0.1:50002".into(),
        ..Config::default()
    };
    let (p, _) = injected(&tdx_pod(), &tcp);
    let spec = p.spec.unwrap();
    let core = &spec.init_containers.as_ref().unwrap()[1];
    let args = core.args.as_ref().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w == ["--grpc_sock", "127.0.0.1:50002"]),
        "{args:?}"
    );
    assert!(spec.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .any(|e| e.name == ENV_GRPC && e.value.as_deref() == Some("127.0.0.1:50002")));
    // Off by default: no listener, no address handed out.
    let (p, _) = injected(&tdx_pod(), &Config::default());
    let spec = p.spec.unwrap();
    let core = &spec.init_containers.as_ref().unwrap()[1];
    assert!(!core
        .args
        .as_ref()
        .unwrap()
        .contains(&"--grpc_sock".to_string()));

    let mut v = serde_json::to_value(tdx_pod()).unwrap();
    v["spec"]["hostNetwork"] = json!(true);
    let (p, warnings) = injected(&pod(v), &tcp);
    assert!(warnings[0].contains("node's network"), "{warnings:?}");
    let spec = p.spec.unwrap();
    let core = &spec.init_containers.as_ref().unwrap()[1];
    assert!(core
        .args
        .as_ref()
        .unwrap()
        .contains(&GRPC_SOCKET.to_string()));
    let grpc = spec.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == ENV_GRPC);
    assert_eq!(grpc.unwrap().value.as_deref(), Some(GRPC_SOCKET));
}

#[test]
fn a_tag_override_is_used_only_in_dev_mode() {
    let mut c = Config::default();
    c.images
        .insert("tdx".into(), "example.com/attester-tdx:dev".into());
    match decide(&view(&tdx_pod()), "apps", &c, &lock()) {
        Decision::Deny(why) => assert!(why.contains("not pinned by digest"), "{why}"),
        other => panic!("{other:?}"),
    }
    c.dev_mode = true;
    let (p, _) = injected(&tdx_pod(), &c);
    let init = p.spec.unwrap().init_containers.unwrap();
    assert_eq!(
        init[0].image.as_deref(),
        Some("example.com/attester-tdx:dev")
    );
}

/// Issue 26: an app container that mounts one of the webhook's volumes by name
/// (the patch would supply it) would reach the plugin sockets or attestd's
/// configuration: refused, whichever list the container is in.
#[test]
fn a_container_mounting_our_volumes_by_name_is_refused() {
    for volume in [RUN_VOLUME, CONFIG_VOLUME, AA_VOLUME, "attestd-attester-tdx"] {
        for list in ["containers", "initContainers"] {
            let mut v = serde_json::to_value(tdx_pod()).unwrap();
            v["spec"][list][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}, {"name": volume, "mountPath": "/mine"}]);
            match decide(&view(&pod(v)), "apps", &Config::default(), &lock()) {
                Decision::Deny(why) => assert!(
                    why.ends_with(&format!("mounts the volume \"{volume}\", which attestd-webhook adds for attestd and its attesters alone: mount a volume of your own")),
                    "{why}"
                ),
                other => panic!("{volume} in {list}: {other:?}"),
            }
        }
    }
}

/// Issue 26: the pod's own configuration may set what a workload chooses (its
/// KBS, the event log, logging), never which plugins run or how; it becomes
/// attestd's -c file, read as a workload's, so attestd refuses the same again.
/// Issue 38: nor a listener or a path (the init-data scope it was read at
/// allowed `[keyprovider] grpc = "0.0.0.0:50000"`).
#[test]
fn the_pod_config_annotation_sets_workload_keys_only() {
    let with = |config: &str| {
        let mut p = tdx_pod();
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(POD_CONFIG.into(), config.into());
        decide(&view(&p), "apps", &Config::default(), &lock())
    };
    let ok = "[token_configs.kbs]\nurl = \"https://kbs.example\"\n[eventlog_config]\nenable_eventlog = true\n[log]\nlevel = \"debug\"\n[plugins]\ncall_timeout_ms = 9000\n";
    match with(ok) {
        Decision::Inject { patch, .. } => {
            let text = serde_json::to_string(&patch).unwrap();
            assert!(
                text.contains("\"-c\",\"/etc/attestd/attestd.toml.d/pod-config\",\"--config-file-source\",\"workload\""),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    for (config, key) in [
        (
            "[plugins.attester.tdx]\ncommand = \"/bin/sh\"\n",
            "plugins.attester.tdx.command",
        ),
        ("[plugins]\ndev_mode = true\n", "plugins.dev_mode"),
        (
            "[config_file]\nsource = \"operator\"\n",
            "config_file.source",
        ),
        (
            "[keyprovider]\ngrpc = \"0.0.0.0:50000\"\n",
            "keyprovider.grpc",
        ),
        (
            "[eventlog_config]\npath = \"/etc/shadow\"\n",
            "eventlog_config.path",
        ),
    ] {
        match with(config) {
            Decision::Deny(why) => assert!(
                why.starts_with(&format!(
                    "the attestd.io/config annotation sets \"{key}\": "
                )),
                "{why}"
            ),
            other => panic!("{config}: {other:?}"),
        }
    }
    match with("[plugins\n") {
        Decision::Deny(why) => assert!(
            why.starts_with("the attestd.io/config annotation is not TOML: "),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    // Issue 41 (low): what the scope allows but attestd refuses at its start
    // (a value of the wrong type, a KBS URL that is not one) was admitted.
    for config in [
        "[log]\nlevel = 5\n",
        "[token_configs.kbs]\nurl = \"ftp://kbs.example\"\n",
        "[plugins]\ncall_timeout_ms = \"soon\"\n",
    ] {
        match with(config) {
            Decision::Deny(why) => assert!(
                why.starts_with(
                    "the attestd.io/config annotation does not read as attestd's configuration: "
                ),
                "{config}: {why}"
            ),
            other => panic!("{config}: {other:?}"),
        }
    }
}

#[test]
fn a_third_partys_tee_is_injected_for_its_runtime_class() {
    let mut config = Config::default();
    config
        .runtime_classes
        .insert("kata-qemu-x-hello".into(), "x-hello".into());
    let p = pod(json!({
        "metadata": {"name": "hello"},
        "spec": {"runtimeClassName": "kata-qemu-x-hello", "containers": [{"name": "app", "image": "app"}]}
    }));
    let (p, _) = injected(&p, &config);
    let annotations = p.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[INJECTED], "x-hello");
    let init = p.spec.clone().unwrap().init_containers.unwrap();
    assert_eq!(names(&init), ["attestd-attester-x-hello", "attestd"]);
    assert_eq!(
        init[0].image.as_deref(),
        Some(format!("localhost/acme/attester-x-hello@{DIGEST}").as_str())
    );
    // It declared a device: privileged in the pod VM, attestd root beside it.
    assert_eq!(
        init[0].security_context.clone().unwrap().privileged,
        Some(true)
    );
    assert_eq!(
        init[1].security_context.clone().unwrap().run_as_user,
        Some(0)
    );
    // attestd's own configuration loader takes the TEE name.
    let c = as_attestd_reads(drop_in(&p));
    assert_eq!(c.plugins.primary.as_deref(), Some("x-hello"));
    assert_eq!(
        c.plugins.attester["x-hello"].socket.as_deref(),
        Some(std::path::Path::new(
            "/run/attestd/attesters/x-hello/x-hello.sock"
        ))
    );
}

/// Issue 41 (low): the drop-in was written with Rust's `{:?}`, whose escapes
/// are not TOML's: a probe's text with a soft hyphen (printable to the probe
/// parser, escaped `\u{ad}` by Rust) made a drop-in attestd could not read.
/// Written by the TOML library, it reads back as it was.
#[test]
fn a_probe_reads_back_from_the_drop_in_as_the_image_declared_it() {
    let mut l = lock();
    let odd = "/sys/class/dmi/id/sys_vendor=Ac\u{ad}me \"Corp\" \\ \u{301}x".to_string();
    l.images.get_mut("x-hello").unwrap().probe = vec![odd.clone()];
    let plan = plan("auto", false, &Config::default(), &l).unwrap();
    let text = plugin_config(&plan);
    let cfg: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        cfg["plugins"]["attester"]["x-hello"]["probe"],
        toml::Value::Array(vec![odd.into()])
    );
}

/// Issue 42: with one process namespace, an app reached the attester's socket
/// through /proc; such a pod is refused, naming the field, and an opted-out
/// one is left alone.
#[test]
fn a_pod_sharing_its_processes_is_refused() {
    for (field, name) in [
        ("shareProcessNamespace", "shareProcessNamespace"),
        ("hostPID", "hostPID"),
    ] {
        let mut p = serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"runtimeClassName": "kata-qemu-coco-dev", "containers": [{"name": "app", "image": "app"}]}
        });
        p["spec"][field] = serde_json::json!(true);
        match decide(&view(&pod(p.clone())), "apps", &Config::default(), &lock()) {
            Decision::Deny(why) => {
                assert!(why.starts_with(&format!("the pod sets {name}: ")), "{why}")
            }
            other => panic!("{field}: {other:?}"),
        }
        p["spec"][field] = serde_json::json!(false);
        injected(&pod(p), &Config::default());
    }
}

/// `kubectl edit` drops every line starting with `#` (after its indent), also
/// inside a multi-line env value: a comment in the drop-in made every edit of
/// an injected pod fail ("pod updates may not change fields other than ...").
#[test]
fn the_drop_in_has_no_line_kubectl_edit_would_drop() {
    let (p, _) = injected(&tdx_pod(), &Config::default());
    let text = drop_in(&p);
    assert!(
        text.lines().all(|l| !l.trim_start().starts_with('#')),
        "{text}"
    );
}
