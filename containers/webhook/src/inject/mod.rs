//! What the webhook does to a pod: decide whether it is ours, and if so the JSON
//! patch that adds attestd and its attester(s) as native sidecars (init containers
//! with `restartPolicy: Always`), their volumes, attestd's plugin configuration (an
//! annotation, projected into `/etc/attestd/attestd.toml.d` by the downward API),
//! and the AA socket and address for the app's containers. Pure: no I/O.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    EnvVar, ExecAction, ObjectFieldSelector, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use crate::config::{check_reference, Config, Lock, UnknownPolicy};
use crate::pod::{PodView, Spec};

/// Label or annotation: `"true"` opts a pod in, `"false"` out (the opt-out wins).
pub const INJECT: &str = "attestd.io/inject";
/// Set on an injected pod (value: the TEE); a pod carrying it is left alone.
pub const INJECTED: &str = "attestd.io/injected";
/// attestd's plugin configuration, as the webhook decided it: a drop-in in
/// attestd's container's environment, which nobody can change after admission
/// (a pod's annotations can be, and the kubelet would refresh a file made of one).
pub const ENV_DROP_IN: &str = "ATTESTD_DROP_IN";
/// The pod author's own attestd configuration (upstream `aa.toml` keys such as
/// `[token_configs]`): attestd's `-c` file, read as a workload's (its author's
/// choices: no listener, no path, nothing attestd launches), checked here and
/// again by attestd.
pub const POD_CONFIG: &str = "attestd.io/config";
/// Where the pod's configuration appears in attestd's container: in the
/// drop-in volume, under a name attestd does not read as a drop-in (no
/// `.toml`), passed as `-c`.
pub const POD_CONFIG_FILE: &str = "pod-config";
/// The pod's configuration's bytes at most (an `aa.toml` with a KBS certificate
/// is a few KiB).
pub const MAX_POD_CONFIG_BYTES: usize = 64 << 10;
/// Namespaces never injected, whatever the webhook configuration's selectors say.
pub const EXCLUDED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "attestd-system"];

pub const CORE_CONTAINER: &str = "attestd";
pub const ATTESTER_PREFIX: &str = "attestd-attester-";
pub const RUN_VOLUME: &str = "attestd-run";
pub const AA_VOLUME: &str = "attestd-aa";
pub const CONFIG_VOLUME: &str = "attestd-config";
/// attestd's own directory (its lock and control socket): in its container only.
pub const RUN_DIR: &str = "/run/attestd";
/// Each attester's socket directory, a volume of its own shared with attestd
/// alone: no attester sees attestd's directory or another attester's socket.
pub const ATTESTERS_DIR: &str = "/run/attestd/attesters";
/// The AA socket's directory, as upstream's clients expect it.
pub const AA_DIR: &str = "/run/confidential-containers/attestation-agent";
pub const AA_SOCKET: &str =
    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";
/// attestd's drop-in directory (its `--config-dir` is `/etc/attestd`).
pub const DROP_IN_DIR: &str = "/etc/attestd/attestd.toml.d";
/// Environment given to the app's containers.
pub const ENV_SOCKET: &str = "ATTESTD_AA_SOCKET";
pub const ENV_GRPC: &str = "ATTESTD_AA_GRPC";
/// gRPC for a pod on the node's network, where a TCP port would be open to the
/// whole node: a Unix socket beside the ttrpc one.
pub const GRPC_SOCKET: &str = "unix:///run/confidential-containers/attestation-agent/grpc.sock";
/// The emptyDirs hold sockets only.
const SOCKET_VOLUME_LIMIT: &str = "1Mi";

/// The webhook's decision for one pod.
#[derive(Debug)]
pub enum Decision {
    /// Admitted unchanged; why (for the log, and as a warning when it matters).
    Unchanged { why: String, warn: bool },
    /// Admitted with this patch; warnings for the pod's author.
    Inject {
        tee: String,
        patch: Patch,
        warnings: Vec<String>,
    },
    /// Refused, with the reason the author sees.
    Deny(String),
}

fn unchanged(why: impl Into<String>) -> Decision {
    Decision::Unchanged {
        why: why.into(),
        warn: false,
    }
}

/// Decide for `pod` (created in `namespace`).
pub fn decide(pod: &PodView, namespace: &str, config: &Config, lock: &Lock) -> Decision {
    let meta = &pod.metadata;
    let annotations = meta.annotations.clone().unwrap_or_default();
    let labels = meta.labels.clone().unwrap_or_default();
    if let Some(tee) = annotations.get(INJECTED) {
        // Created with the marker already (a copied spec, or a way around the
        // injection): admitted as it is, but its author hears of it.
        return Decision::Unchanged {
            why: format!(
                "the pod carries {INJECTED} ({}) at creation, so attestd-webhook leaves it as it is: remove the annotation to have attestd injected",
                attestd::echo::quoted(tee)
            ),
            warn: true,
        };
    }
    let flag = |v: Option<&String>| v.map(|s| s.trim().to_ascii_lowercase());
    let (by_annotation, by_label) = (flag(annotations.get(INJECT)), flag(labels.get(INJECT)));
    if by_annotation.as_deref() == Some("false") || by_label.as_deref() == Some("false") {
        return unchanged(format!("opted out ({INJECT}: \"false\")"));
    }
    if EXCLUDED_NAMESPACES.contains(&namespace) {
        return unchanged(format!("namespace {namespace} is never injected"));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Decision::Deny("the pod has no spec".into());
    };
    let opted_in = by_annotation.as_deref() == Some("true") || by_label.as_deref() == Some("true");
    let class = spec.runtime_class_name.as_deref();
    let tee = match class.and_then(|c| config.runtime_classes.get(c)) {
        Some(t) => t.clone(),
        None if !opted_in => {
            return unchanged(format!(
                "not opted in and runtime class {} is not configured",
                class.unwrap_or("(none)")
            ))
        }
        None => match &config.default_tee {
            Some(t) => t.clone(),
            None => {
                let why = format!(
                    "the pod opted in ({INJECT}) but its runtime class {} names no TEE in the webhook's runtime_classes and no default_tee is set",
                    class.unwrap_or("(none)")
                );
                return match config.unknown_runtime_class {
                    UnknownPolicy::Deny => Decision::Deny(why),
                    UnknownPolicy::Allow => Decision::Unchanged {
                        why: format!("{why}: admitted without attestd"),
                        warn: true,
                    },
                };
            }
        },
    };
    if let Some(clash) = name_clash(spec) {
        return Decision::Deny(clash);
    }
    if let Some(why) = shared_processes(spec) {
        return Decision::Deny(why);
    }
    if let Some(text) = annotations.get(POD_CONFIG) {
        if let Err(why) = check_pod_config(text) {
            return Decision::Deny(why);
        }
    }
    match plan(&tee, spec.host_network == Some(true), config, lock) {
        Ok(plan) => match patch(pod, &plan, config) {
            Ok(patch) => Decision::Inject {
                tee,
                patch,
                warnings: plan.warnings,
            },
            Err(why) => Decision::Deny(why),
        },
        Err(why) => Decision::Deny(why),
    }
}

/// A container or volume of the pod already named like ours, or a container
/// mounting one of our volumes by name (the patch would supply it: the app
/// would reach the plugin sockets, or the configuration).
fn name_clash(spec: &Spec) -> Option<String> {
    let ours = |n: &str| n == CORE_CONTAINER || n.starts_with(ATTESTER_PREFIX);
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        if ours(&c.name) {
            return Some(format!(
                "the pod already has a container named {}, a name attestd-webhook injects; rename it, or set {INJECT}: \"false\" to run your own attestd",
                attestd::echo::quoted(&c.name)
            ));
        }
        if let Some(v) = c.volume_mounts.as_ref().and_then(|m| m.of_ours.as_ref()) {
            return Some(format!(
                "container {} mounts the volume {}, which attestd-webhook adds for attestd and its attesters alone: mount a volume of your own",
                attestd::echo::quoted(&c.name),
                attestd::echo::quoted(v)
            ));
        }
    }
    if let Some(v) = spec.volumes.as_ref().and_then(|v| v.ours.as_ref()) {
        return Some(format!(
            "the pod already has a volume named {}, a name attestd-webhook injects",
            attestd::echo::quoted(v)
        ));
    }
    None
}

/// A pod whose containers see each other's processes (issue 42): through
/// `/proc/<pid>/root` an app reached the attester's socket, bypassing attestd,
/// and read attestd's configuration, even as another uid than the pair's.
fn shared_processes(spec: &Spec) -> Option<String> {
    let why = if spec.share_process_namespace == Some(true) {
        "shareProcessNamespace"
    } else if spec.host_pid == Some(true) {
        "hostPID"
    } else {
        return None;
    };
    Some(format!(
        "the pod sets {why}: its containers could reach the injected attester's socket and attestd's files through /proc; remove {why}, or set {INJECT}: \"false\" to run without attestd"
    ))
}

/// The pod's own configuration (`attestd.io/config`) as attestd will read it:
/// TOML, and only what a workload may choose (the `workload` scope: tokens,
/// logging, timeouts; no listener, no path, nothing that runs).
fn check_pod_config(text: &str) -> Result<(), String> {
    use attestd::config::scope::{restrict, Source};
    if text.len() > MAX_POD_CONFIG_BYTES {
        return Err(format!(
            "the {POD_CONFIG} annotation is {} bytes; at most {MAX_POD_CONFIG_BYTES}",
            text.len()
        ));
    }
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        format!(
            "the {POD_CONFIG} annotation is not TOML: {}",
            attestd::echo::bounded(&e.to_string(), attestd::echo::MAX_ECHO)
        )
    })?;
    restrict(&mut table, Source::Workload).map_err(|r| {
        format!(
            "the {POD_CONFIG} annotation sets {}: {}",
            attestd::echo::quoted(&r.key),
            r.why
        )
    })?;
    // Then as attestd reads it at its start, with its own parser and checks:
    // what passes the scope but not those (a key of the wrong type, a KBS URL
    // that is not one) would otherwise be admitted and stop attestd.
    let refused = |why: String| {
        format!(
            "the {POD_CONFIG} annotation does not read as attestd's configuration: {}",
            attestd::echo::bounded(&why, attestd::echo::MAX_ECHO)
        )
    };
    let text = toml::to_string(&table).map_err(|e| refused(e.to_string()))?;
    let config = attestd::config::Config::parse(&text).map_err(|e| refused(e.to_string()))?;
    attestd::run::check_token_configs(&config).map_err(|e| refused(e.chain()))?;
    Ok(())
}

/// One attester to inject.
#[derive(Debug, Clone)]
struct Attester {
    tee: String,
    image: String,
    transport: String,
    privileged: bool,
    /// A third party's declared probe, for attestd's `auto`.
    probe: Vec<String>,
}

#[derive(Debug)]
struct Plan {
    primary: String,
    /// Whether attestd and its attesters run as [`NON_ROOT_UID`]: when no
    /// attester needs the pod VM's devices and attestd probes none (not `auto`).
    /// A privileged attester is root, and its socket (0600) then root's only.
    non_root: bool,
    /// The gRPC AA address in this pod ("none": off).
    grpc: String,
    core_image: String,
    attesters: Vec<Attester>,
    warnings: Vec<String>,
}

/// The images and settings for `tee` (or `auto`), from the lock and overrides.
fn plan(tee: &str, host_network: bool, config: &Config, lock: &Lock) -> Result<Plan, String> {
    let core_image = match config.images.get(CORE_CONTAINER) {
        Some(r) => r.clone(),
        None => lock
            .components
            .get(CORE_CONTAINER)
            .map(|c| format!("{}@{}", c.image, c.digest))
            .ok_or_else(|| {
                format!(
                    "images.lock ({}) has no [components.attestd] entry: rebuild it with containers/build.sh attestd",
                    config.images_lock.display()
                )
            })?,
    };
    let tees: Vec<String> = if tee == "auto" {
        let listed: Vec<String> = if config.auto_candidates.is_empty() {
            lock.images
                .keys()
                .filter(|t| *t != "sample")
                .cloned()
                .collect()
        } else {
            config.auto_candidates.clone()
        };
        if listed.is_empty() {
            return Err(format!(
                "TEE auto: images.lock ({}) holds no hardware attester to choose from",
                config.images_lock.display()
            ));
        }
        listed
    } else {
        vec![tee.to_string()]
    };
    let mut attesters = Vec::new();
    let mut warnings = Vec::new();
    for t in &tees {
        let locked = lock.images.get(t);
        let image = match (config.images.get(t), locked) {
            (Some(r), _) => r.clone(),
            (None, Some(l)) => format!("{}@{}", l.image, l.digest),
            (None, None) => {
                return Err(format!(
                    "images.lock ({}) has no attester image for TEE {t:?}",
                    config.images_lock.display()
                ))
            }
        };
        check_reference(&image, config.dev_mode)?;
        let transport = locked
            .map(|l| l.transport.clone())
            .unwrap_or_else(|| "ttrpc".to_string());
        let (needs, optional) = attestd::launch::resources::for_target(t);
        // Inside a kata pod VM a privileged container sees the guest's devices
        // (with privileged_without_host_devices, never the host's): the only way
        // a pod spec can hand it /dev/tdx_guest, /dev/sev-guest or the TPM.
        let declared = locked.map_or(0, |l| l.devices.len());
        let privileged = !(needs.devices.is_empty()
            && needs.rw.is_empty()
            && optional.is_empty()
            && declared == 0);
        if needs.host_network {
            warnings.push(format!(
                "attester {t} reaches the Azure IMDS (169.254.169.254): the pod network must route to it"
            ));
        }
        attesters.push(Attester {
            tee: t.clone(),
            image,
            transport,
            privileged,
            probe: locked.map(|l| l.probe.clone()).unwrap_or_default(),
        });
    }
    check_reference(&core_image, config.dev_mode)?;
    let grpc = if host_network && !config.grpc.starts_with("unix://") && config.grpc != "none" {
        warnings.push(format!(
            "the pod uses the node's network: attestd serves gRPC on {GRPC_SOCKET}, not on {}",
            config.grpc
        ));
        GRPC_SOCKET.to_string()
    } else {
        config.grpc.clone()
    };
    Ok(Plan {
        primary: tee.to_string(),
        non_root: tee != "auto" && attesters.iter().all(|a| !a.privileged),
        grpc,
        core_image,
        attesters,
        warnings,
    })
}

fn socket_of(tee: &str) -> String {
    format!("{ATTESTERS_DIR}/{tee}/{tee}.sock")
}

/// The volume of `tee`'s attester's socket (named as its container is).
pub fn attester_volume(tee: &str) -> String {
    format!("{ATTESTER_PREFIX}{tee}")
}

/// attestd's drop-in: every attester external on its socket, the primary named
/// (or `auto`: attestd probes the pod VM and asks each candidate's Detect).
/// Written by the TOML library: a probe's text is the image's, and Rust's
/// `{:?}` escapes are not TOML's.
fn plugin_config(plan: &Plan) -> String {
    use toml::{Table, Value};
    let s = |v: &str| Value::String(v.to_string());
    let mut attester = Table::new();
    for a in &plan.attesters {
        let mut t = Table::new();
        t.insert("launch".into(), s("external"));
        t.insert("socket".into(), s(&socket_of(&a.tee)));
        t.insert("transport".into(), s(&a.transport));
        t.insert("tee".into(), s(&a.tee));
        if !a.probe.is_empty() {
            let probe = a.probe.iter().map(|p| s(p)).collect();
            t.insert("probe".into(), Value::Array(probe));
        }
        attester.insert(a.tee.clone(), Value::Table(t));
    }
    let mut plugins = Table::new();
    plugins.insert("primary".into(), s(&plan.primary));
    plugins.insert("socket_dir".into(), s(&format!("{RUN_DIR}/core")));
    plugins.insert("attester".into(), Value::Table(attester));
    let mut doc = Table::new();
    doc.insert("plugins".into(), Value::Table(plugins));
    // Strings and arrays of strings only: serialising cannot fail. No comment
    // line: `kubectl edit` drops every line that starts with `#`, inside a
    // multi-line env value too, and then refuses any edit of the pod.
    toml::to_string(&doc).unwrap_or_default()
}

fn resources(r: &crate::config::Resources) -> ResourceRequirements {
    let q = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect()
        })
    };
    ResourceRequirements {
        requests: q(&r.requests),
        limits: q(&r.limits),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The user attestd and its attesters run as where nothing needs root (the
/// distroless "nonroot" uid; the images are `FROM scratch` and name no user).
pub const NON_ROOT_UID: i64 = 65532;

/// Nothing but what the process needs: no capabilities, no privilege gain, a
/// read-only root, the runtime's default seccomp profile, and no root unless a
/// privileged attester's socket (root's, 0600) must be reached. The non-root
/// pair passes Pod Security's `restricted` level as the user's own containers
/// must, whether their pod sets seccomp for the pod or per container.
fn confined(non_root: bool) -> SecurityContext {
    let uid = if non_root { NON_ROOT_UID } else { 0 };
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(uid),
        run_as_group: non_root.then_some(uid),
        run_as_non_root: Some(non_root),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod VM's devices (kata: the guest's, never the host's), a read-only root.
fn privileged() -> SecurityContext {
    SecurityContext {
        privileged: Some(true),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(0),
        ..Default::default()
    }
}

fn exec_probe(command: Vec<String>) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        period_seconds: Some(1),
        timeout_seconds: Some(2),
        // 60 s for a plugin (or attestd) to come up on a slow pod VM.
        failure_threshold: Some(60),
        ..Default::default()
    }
}

/// The same check, once started: a sidecar that stops answering (a hung
/// process, not a slow call: the probe asks its health, not its device) is
/// restarted by the kubelet after 30 s.
fn liveness_probe(command: Vec<String>) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn attester_container(a: &Attester, plan: &Plan, config: &Config) -> Container {
    let serve = vec![
        "--socket".to_string(),
        socket_of(&a.tee),
        "--transport".to_string(),
        a.transport.clone(),
    ];
    let mut probe = vec!["/attester".to_string()];
    probe.extend(serve.iter().cloned());
    probe.push("--probe".into());
    let security = if a.privileged {
        privileged()
    } else {
        confined(plan.non_root)
    };
    Container {
        name: format!("{ATTESTER_PREFIX}{}", a.tee),
        image: Some(a.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(serve),
        restart_policy: Some("Always".into()),
        startup_probe: Some(exec_probe(probe.clone())),
        liveness_probe: Some(liveness_probe(probe)),
        volume_mounts: Some(vec![mount(
            &attester_volume(&a.tee),
            &format!("{ATTESTERS_DIR}/{}", a.tee),
            false,
        )]),
        security_context: Some(security),
        resources: Some(resources(&config.resources.attester)),
        ..Default::default()
    }
}

fn core_container(plan: &Plan, config: &Config) -> Container {
    let mut args = vec![
        "run".to_string(),
        "--config-dir".into(),
        "/etc/attestd".into(),
        // The pod's own configuration, read as a tenant's: never what runs.
        "-c".into(),
        format!("{DROP_IN_DIR}/{POD_CONFIG_FILE}"),
        "--config-file-source".into(),
        "workload".into(),
        "--attestation_sock".into(),
        AA_SOCKET.into(),
    ];
    if plan.grpc != "none" {
        args.extend(["--grpc_sock".into(), plan.grpc.clone()]);
    }
    let probe = vec![
        "/attestd".to_string(),
        "client".into(),
        "--attestation_sock".into(),
        AA_SOCKET.into(),
        "--timeout-ms".into(),
        "1500".into(),
        "get-tee-type".into(),
    ];
    let mut mounts = vec![
        mount(RUN_VOLUME, RUN_DIR, false),
        mount(AA_VOLUME, AA_DIR, false),
        mount(CONFIG_VOLUME, DROP_IN_DIR, true),
    ];
    for a in &plan.attesters {
        mounts.push(mount(
            &attester_volume(&a.tee),
            &format!("{ATTESTERS_DIR}/{}", a.tee),
            false,
        ));
    }
    Container {
        name: CORE_CONTAINER.into(),
        image: Some(plan.core_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        // The webhook's decision, fixed for the pod's life (see ENV_DROP_IN).
        env: Some(vec![EnvVar {
            name: ENV_DROP_IN.into(),
            value: Some(plugin_config(plan)),
            ..Default::default()
        }]),
        restart_policy: Some("Always".into()),
        startup_probe: Some(exec_probe(probe.clone())),
        liveness_probe: Some(liveness_probe(probe)),
        volume_mounts: Some(mounts),
        // `auto` probes the pod VM's devices (existence only; attestd opens none).
        security_context: Some(if plan.primary == "auto" {
            privileged()
        } else {
            confined(plan.non_root)
        }),
        resources: Some(resources(&config.resources.attestd)),
        ..Default::default()
    }
}

fn memory_dir() -> EmptyDirVolumeSource {
    EmptyDirVolumeSource {
        medium: Some("Memory".into()),
        size_limit: Some(Quantity(SOCKET_VOLUME_LIMIT.into())),
    }
}

fn volumes(plan: &Plan) -> Vec<Volume> {
    let annotation = |file: &str, key: &str| DownwardAPIVolumeFile {
        path: file.into(),
        field_ref: Some(ObjectFieldSelector {
            field_path: format!("metadata.annotations['{key}']"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut v = vec![
        Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(memory_dir()),
            ..Default::default()
        },
        Volume {
            name: AA_VOLUME.into(),
            empty_dir: Some(memory_dir()),
            ..Default::default()
        },
        Volume {
            name: CONFIG_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                // The author's configuration as attestd's -c file (restricted:
                // it cannot set plugins). The webhook's own is not here: a file
                // made of an annotation changes when the annotation does.
                items: Some(vec![annotation(POD_CONFIG_FILE, POD_CONFIG)]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    for a in &plan.attesters {
        v.push(Volume {
            name: attester_volume(&a.tee),
            empty_dir: Some(memory_dir()),
            ..Default::default()
        });
    }
    v
}

/// `/` and `~` escaped for a JSON pointer (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot encode the patch: {e}"))
}

fn add(path: String, value: Value) -> Result<PatchOperation, String> {
    let path = path
        .parse()
        .map_err(|e| format!("cannot build the patch path {path}: {e}"))?;
    Ok(PatchOperation::Add(AddOperation { path, value }))
}

/// Append `values` to the array at `path` (created when `exists` is false).
fn append(
    ops: &mut Vec<PatchOperation>,
    path: &str,
    exists: bool,
    values: Vec<Value>,
) -> Result<(), String> {
    if exists {
        for v in values {
            ops.push(add(format!("{path}/-"), v)?);
        }
    } else if !values.is_empty() {
        ops.push(add(path.to_string(), Value::Array(values))?);
    }
    Ok(())
}

fn patch(pod: &PodView, plan: &Plan, config: &Config) -> Result<Patch, String> {
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let mut ops = Vec::new();
    // Annotations: the marker.
    let mine = [(INJECTED.to_string(), plan.primary.clone())];
    match &pod.metadata.annotations {
        None => {
            let map: serde_json::Map<String, Value> = mine
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            ops.push(add("/metadata/annotations".into(), Value::Object(map))?);
        }
        Some(_) => {
            for (k, v) in &mine {
                ops.push(add(
                    format!("/metadata/annotations/{}", escape(k)),
                    Value::String(v.clone()),
                )?);
            }
        }
    }
    let vols = volumes(plan)
        .iter()
        .map(to_value)
        .collect::<Result<_, _>>()?;
    append(&mut ops, "/spec/volumes", spec.volumes.is_some(), vols)?;
    // The app's containers (and the pod's own init containers, which run after
    // ours) get the AA socket and its address. Patched before ours are inserted,
    // while their indices are still the pod's.
    let mut env = vec![EnvVar {
        name: ENV_SOCKET.into(),
        value: Some(AA_SOCKET.into()),
        ..Default::default()
    }];
    if plan.grpc != "none" {
        env.push(EnvVar {
            name: ENV_GRPC.into(),
            value: Some(plan.grpc.clone()),
            ..Default::default()
        });
    }
    let lists = [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let at = format!("/spec/{list}/{i}");
            if c.volume_mounts.as_ref().is_some_and(|m| m.at_aa_dir) {
                return Err(format!(
                    "container {} already mounts something at {AA_DIR}, where attestd-webhook puts the AA socket",
                    attestd::echo::quoted(&c.name)
                ));
            }
            append(
                &mut ops,
                &format!("{at}/volumeMounts"),
                c.volume_mounts.is_some(),
                vec![to_value(&mount(AA_VOLUME, AA_DIR, true))?],
            )?;
            // The container's own setting of a variable wins.
            let have: &[&str] = c.env.as_ref().map_or(&[], |e| &e.has);
            let missing = env
                .iter()
                .filter(|e| !have.contains(&e.name.as_str()))
                .map(to_value)
                .collect::<Result<Vec<_>, _>>()?;
            append(&mut ops, &format!("{at}/env"), c.env.is_some(), missing)?;
        }
    }
    // Ours first among the init containers, attesters before attestd: each native
    // sidecar's startup probe must pass before the next container starts.
    let mut ours: Vec<Container> = plan
        .attesters
        .iter()
        .map(|a| attester_container(a, plan, config))
        .collect();
    ours.push(core_container(plan, config));
    let ours = ours.iter().map(to_value).collect::<Result<Vec<_>, _>>()?;
    if spec.init_containers.is_some() {
        for (i, c) in ours.into_iter().enumerate() {
            ops.push(add(format!("/spec/initContainers/{i}"), c)?);
        }
    } else {
        ops.push(add("/spec/initContainers".into(), Value::Array(ours))?);
    }
    Ok(Patch(ops))
}

#[cfg(test)]
mod tests;
