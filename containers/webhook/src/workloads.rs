//! Warnings at the workload: a Deployment (StatefulSet, DaemonSet, ReplicaSet,
//! Job, CronJob) created or changed in a labelled namespace whose Pod Security
//! level will refuse its pods once attestd is injected. The controller's
//! `FailedCreate` events would say so only later, and over and over; the
//! warning reaches `kubectl apply` at once. Never a refusal: the workload is
//! admitted as it is (the validating webhook's `failurePolicy` is `Ignore`).
//!
//! The level comes from the request's path: the manifests register one webhook
//! per level, each selecting the namespaces that enforce it
//! (`pod-security.kubernetes.io/enforce`), so no namespace is ever read.

use serde_json::Value;

use crate::config::{Config, Lock};
use crate::inject::{decide, Decision, ATTESTER_PREFIX, CORE_CONTAINER};
use crate::pod::PodView;

/// A Pod Security Standards level that refuses something (`privileged`
/// refuses nothing, so nothing is registered for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Baseline,
    Restricted,
}

impl Level {
    /// The level a request path names (`/workloads/<level>`).
    pub fn from_path(path: &str) -> Option<Level> {
        match path.strip_prefix("/workloads/")? {
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Where a workload kind keeps its pod template, by (group, kind).
fn template_of<'a>(group: &str, kind: &str, object: &'a Value) -> Option<&'a Value> {
    match (group, kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
            object.pointer("/spec/template")
        }
        ("batch", "CronJob") => object.pointer("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// The capabilities `baseline` lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What `level` refuses in the containers attestd-webhook adds to `pod` (the
/// pod as injected), one phrase each, as Pod Security names its checks.
pub fn violations(pod: &Value, level: Level) -> Vec<String> {
    let spec = &pod["spec"];
    let pod_sc = &spec["securityContext"];
    let ours = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[k].as_array())
        .flatten()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n == CORE_CONTAINER || n.starts_with(ATTESTER_PREFIX))
        });
    let mut found = Vec::new();
    for c in ours {
        let name = c["name"].as_str().unwrap_or_default();
        let sc = &c["securityContext"];
        let caps = |k: &str| -> Vec<&str> {
            sc["capabilities"][k]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default()
        };
        if sc["privileged"] == true {
            found.push(format!("container {name:?} is privileged"));
        }
        let added = caps("add");
        let beyond: Vec<&str> = added
            .iter()
            .copied()
            .filter(|c| !BASELINE_CAPABILITIES.contains(c))
            .collect();
        if !beyond.is_empty() {
            found.push(format!("container {name:?} adds capabilities {beyond:?}"));
        }
        if level == Level::Baseline {
            continue;
        }
        if sc["allowPrivilegeEscalation"] != false {
            found.push(format!(
                "container {name:?} does not set allowPrivilegeEscalation=false"
            ));
        }
        let non_root = match &sc["runAsNonRoot"] {
            Value::Bool(b) => *b,
            _ => pod_sc["runAsNonRoot"] == true,
        };
        let uid = sc["runAsUser"].as_u64().or(pod_sc["runAsUser"].as_u64());
        if !non_root || uid == Some(0) {
            found.push(format!("container {name:?} runs as root"));
        }
        let seccomp = if sc["seccompProfile"].is_object() {
            &sc["seccompProfile"]["type"]
        } else {
            &pod_sc["seccompProfile"]["type"]
        };
        if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
            found.push(format!("container {name:?} sets no seccompProfile"));
        }
        if !caps("drop").contains(&"ALL") {
            found.push(format!("container {name:?} does not drop ALL capabilities"));
        }
        let more: Vec<&str> = added
            .iter()
            .copied()
            .filter(|c| *c != "NET_BIND_SERVICE" && BASELINE_CAPABILITIES.contains(c))
            .collect();
        if !more.is_empty() {
            found.push(format!("container {name:?} adds capabilities {more:?}"));
        }
    }
    found
}

/// The warnings for a workload `object` of `kind` in `namespace`, which
/// enforces `level`: none when its pods would not be injected or the injected
/// containers pass.
pub fn warnings(
    group: &str,
    kind: &str,
    object: &Value,
    namespace: &str,
    level: Level,
    config: &Config,
    lock: &Lock,
) -> Result<Vec<String>, String> {
    let Some(template) = template_of(group, kind, object) else {
        return Err(format!(
            "{group}/{kind} is not a workload attestd-webhook reviews"
        ));
    };
    let mut pod = serde_json::json!({
        "metadata": template.get("metadata").cloned().unwrap_or(Value::Null),
        "spec": template.get("spec").cloned().unwrap_or(Value::Null),
    });
    let view: PodView = serde_json::from_value(pod.clone())
        .map_err(|e| format!("its pod template does not read as a pod: {e}"))?;
    let tee = match decide(&view, namespace, config, lock) {
        Decision::Unchanged { .. } => return Ok(vec![]),
        Decision::Deny(why) => {
            return Ok(vec![format!(
                "attestd-webhook will refuse the pods of this {kind}: {why}"
            )])
        }
        Decision::Inject { tee, patch, .. } => {
            json_patch::patch(&mut pod, &patch)
                .map_err(|e| format!("its injection does not apply: {e}"))?;
            tee
        }
    };
    let found = violations(&pod, level);
    if found.is_empty() {
        return Ok(vec![]);
    }
    let needed = if found.iter().any(|v| v.ends_with("is privileged")) {
        "privileged (the attester needs the TEE's device)"
    } else {
        "baseline"
    };
    Ok(vec![format!(
        "attestd-webhook: namespace {namespace} enforces Pod Security \"{}\", which will refuse the pods of this {kind} once attestd and the {tee} attester are injected: {}; label the namespace pod-security.kubernetes.io/enforce={needed}",
        level.name(),
        found.join("; ")
    )])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pod(attester_sc: Value, core_sc: Value) -> Value {
        json!({"spec": {
            "initContainers": [
                {"name": "attestd-attester-tpm", "securityContext": attester_sc},
                {"name": "attestd", "securityContext": core_sc},
            ],
            // The app's own container is the user's business, never ours.
            "containers": [{"name": "app", "securityContext": {"privileged": true}}],
        }})
    }

    fn confined() -> Value {
        json!({"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
               "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}})
    }

    #[test]
    fn confined_containers_pass_every_level() {
        let p = pod(confined(), confined());
        assert!(violations(&p, Level::Baseline).is_empty());
        assert!(violations(&p, Level::Restricted).is_empty());
    }

    #[test]
    fn a_privileged_attester_fails_baseline_and_a_root_core_fails_restricted() {
        let root = json!({"runAsUser": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false,
                          "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
        let p = pod(json!({"privileged": true, "runAsUser": 0}), root);
        assert_eq!(
            violations(&p, Level::Baseline),
            ["container \"attestd-attester-tpm\" is privileged"]
        );
        let r = violations(&p, Level::Restricted);
        assert!(
            r.contains(&"container \"attestd\" runs as root".to_string()),
            "{r:?}"
        );
        assert!(
            r.contains(&"container \"attestd-attester-tpm\" sets no seccompProfile".to_string()),
            "{r:?}"
        );
        assert!(!r.iter().any(|v| v.contains("\"app\"")), "{r:?}");
    }

    #[test]
    fn the_pod_level_context_counts_and_added_capabilities_are_named() {
        let mut p = pod(
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}),
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
        );
        p["spec"]["securityContext"] =
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
        assert_eq!(
            violations(&p, Level::Baseline),
            ["container \"attestd-attester-tpm\" adds capabilities [\"SYS_ADMIN\"]"]
        );
        assert_eq!(
            violations(&p, Level::Restricted),
            ["container \"attestd-attester-tpm\" adds capabilities [\"SYS_ADMIN\"]"]
        );
        // Within baseline's list, but more than restricted's one.
        p["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"] = json!(["CHOWN"]);
        assert!(violations(&p, Level::Baseline).is_empty());
        assert_eq!(
            violations(&p, Level::Restricted),
            ["container \"attestd-attester-tpm\" adds capabilities [\"CHOWN\"]"]
        );
    }

    #[test]
    fn templates_are_found_where_each_kind_keeps_them() {
        let t = json!({"spec": {"containers": []}});
        let d = json!({"spec": {"template": t}});
        let c = json!({"spec": {"jobTemplate": {"spec": {"template": t}}}});
        for (g, k, o) in [
            ("apps", "Deployment", &d),
            ("apps", "StatefulSet", &d),
            ("apps", "DaemonSet", &d),
            ("apps", "ReplicaSet", &d),
            ("batch", "Job", &d),
            ("batch", "CronJob", &c),
        ] {
            assert_eq!(template_of(g, k, o), Some(&t), "{g}/{k}");
        }
        assert_eq!(template_of("", "Pod", &d), None);
        // A kind the rules should never send: said, not reviewed.
        let none = (Config::default(), Lock::default());
        assert_eq!(
            warnings("", "Pod", &d, "apps", Level::Restricted, &none.0, &none.1),
            Err("/Pod is not a workload attestd-webhook reviews".to_string())
        );
        let bad = json!({"spec": {"template": {"spec": {"containers": "x"}}}});
        let e = warnings(
            "apps",
            "Deployment",
            &bad,
            "apps",
            Level::Baseline,
            &none.0,
            &none.1,
        )
        .unwrap_err();
        assert!(
            e.starts_with("its pod template does not read as a pod: "),
            "{e}"
        );
        assert_eq!(
            Level::from_path("/workloads/restricted"),
            Some(Level::Restricted)
        );
        assert_eq!(Level::from_path("/workloads/privileged"), None);
    }
}
