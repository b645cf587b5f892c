//! Kubernetes for real: a kube-apiserver calls attestd-webhook and stores the pods
//! it patched, and a kubelet (driving containerd and runc over CRI) runs them, with
//! attestd and the sample attester as native sidecars. The cluster is
//! `attestd_e2e::kube` (binaries from `scripts/go-build.sh`, at the versions
//! pinned in tests/go/*/go.mod), in a network namespace with only loopback.
//!
//! One test, the scenarios in an order that shares one cluster: starting it
//! takes most of the time. Each scenario says what it checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use attestd_e2e::kube::{locked, wait_for, Cluster, NODE, POD_BRIDGE};
use attestd_e2e::{alive, bin, repo_root, succeeded};
use serde_json::{json, Value};

const WEBHOOK_URL: &str = "https://127.0.0.1:8443/mutate";
const RUNTIME_CLASS: &str = "attestd-dev";
/// A runtime class the webhook maps to the TPM attester (privileged).
const TPM_CLASS: &str = "attestd-tpm";
/// Labelled `attestd.io/inject=enabled`: pods here call the webhook.
const LABELLED: &str = "attestd-demo";
const APP_POD: &str = "app";

/// The app's script: GetEvidence over the injected AA socket five times a
/// second, each answer printed (`ok <runtime data> <evidence>`) or its failure.
const APP_LOOP: &str = r#"i=0
while :; do
  i=$((i+1))
  if e=$(/attestd client --attestation_sock "$ATTESTD_AA_SOCKET" --timeout-ms 2000 get-evidence --runtime-data "kube-$i" 2>&1); then
    echo "ok kube-$i $e"
  else
    echo "fail kube-$i $e" | /busybox tr '\n' ' '; echo
  fi
  /busybox sleep 0.2
done
"#;

/// The webhook's configuration in this cluster: runc's runtime class is the
/// sample attester's (dev mode: this is not a TEE). gRPC is asked for (it is off
/// by default), so the node-network pods show how the webhook moves it to a socket.
/// `attestd-tpm` is a hardware TEE's mapping: its attester is privileged.
const WEBHOOK_TOML: &str = r#"dev_mode = true
grpc = "127.0.0.1:50002"
[runtime_classes]
attestd-dev = "sample"
attestd-tpm = "tpm"
"#;

#[test]
fn a_real_api_server_admits_and_a_real_kubelet_runs_injected_pods() {
    let images = [locked("attestd"), locked("webhook"), locked("sample")];
    let c = Cluster::start(&images);
    confined(&c, "start");
    eprintln!(
        "figure: cluster started (images built and pushed, node Ready) in {:.1} s",
        c.started_in.as_secs_f64()
    );
    let version = c.ok(&["version", "-o", "json"]);
    eprintln!("cluster: {}", compact_versions(&version));

    manifests_applied_server_side(&c);
    confined(&c, "manifests_applied_server_side");
    webhook_runs_as_its_deployment_says(&c);
    confined(&c, "webhook_runs_as_its_deployment_says");
    let pod = injected_pod_runs_in_order(&c);
    confined(&c, "injected_pod_runs_in_order");
    killed_attester_restarts_and_calls_resume(&c, &pod);
    confined(&c, "killed_attester_restarts_and_calls_resume");
    annotating_after_admission_changes_nothing_that_runs(&c, &pod);
    confined(&c, "annotating_after_admission_changes_nothing_that_runs");
    refusals_reach_kubectl(&c);
    confined(&c, "refusals_reach_kubectl");
    ephemeral_containers_are_reviewed(&c);
    confined(&c, "ephemeral_containers_are_reviewed");
    pod_security_and_shared_processes(&c);
    confined(&c, "pod_security_and_shared_processes");
    workloads_run_as_users_make_them(&c);
    confined(&c, "workloads_run_as_users_make_them");
    deleted_pod_leaves_nothing(&c, &pod);
    confined(&c, "deleted_pod_leaves_nothing");
    slow_clients_do_not_block_admission(&c);
    confined(&c, "slow_clients_do_not_block_admission");
    webhook_down_fails_closed_for_labelled_namespaces_only(&c);
    confined(&c, "webhook_down_fails_closed_for_labelled_namespaces_only");
    webhook_latency(&c);
}

/// Confinement, `after` a scenario as at the start: the cluster's namespace
/// holds loopback, the pod network's bridge and the pods' veths on it, nothing
/// else, and routes nowhere but to the pods (containerd's CNI folders are the
/// test's own: never the host's configuration).
fn confined(c: &Cluster, after: &str) {
    let links = c.netns.links();
    let own = |l: &String| {
        l.contains(": lo:")
            || l.contains(&format!(": {POD_BRIDGE}:"))
            || l.contains(&format!(" master {POD_BRIDGE} "))
    };
    assert!(
        links.iter().all(own),
        "after {after}: the cluster's namespace has links of others: {links:?}"
    );
    let routes = c.netns.routes();
    assert!(
        routes
            .iter()
            .all(|r| r.contains(&format!(" dev {POD_BRIDGE} "))),
        "after {after}: the cluster's namespace routes off the pod network: {routes:?}"
    );
}

/// `kubectl version -o json`, the two versions only.
fn compact_versions(v: &str) -> String {
    let v: Value = serde_json::from_str(v).unwrap();
    format!(
        "kubectl {} / kube-apiserver {}",
        v["clientVersion"]["gitVersion"], v["serverVersion"]["gitVersion"]
    )
}

fn webhook_cli(args: &[&str]) -> String {
    let o = std::process::Command::new(bin("attestd-webhook"))
        .args(args)
        .output()
        .unwrap();
    succeeded(&o, &format!("attestd-webhook {}", args.join(" ")))
}

/// `manifests` with its ConfigMap's `webhook.toml` replaced by `toml`.
fn with_config(manifests: &str, toml: &str) -> String {
    let cm = manifests.find("\nkind: ConfigMap\n").expect("no ConfigMap");
    let key = "\n  webhook.toml: |\n";
    let start = cm + manifests[cm..].find(key).expect("no webhook.toml") + key.len();
    let end = manifests[start..]
        .find("\n---\n")
        .map_or(manifests.len(), |e| start + e + 1);
    let body: String = toml.lines().map(|l| format!("    {l}\n")).collect();
    format!("{}{body}{}", &manifests[..start], &manifests[end..])
}

/// Scenario 1: `attestd-webhook manifests --url` applied with `kubectl apply
/// --server-side`, and every object it names stored.
fn manifests_applied_server_side(c: &Cluster) {
    let tls = c.path("webhook-tls");
    let tls_s = tls.to_str().unwrap();
    webhook_cli(&["certs", "--url", WEBHOOK_URL, "--out-dir", tls_s]);
    let lock = repo_root().join("containers/images.lock");
    let manifests = webhook_cli(&[
        "manifests",
        "--lock",
        lock.to_str().unwrap(),
        "--certs-dir",
        tls_s,
        "--url",
        WEBHOOK_URL,
    ]);
    assert!(
        !manifests.contains("\nkind: Service\n") && !manifests.contains("service:"),
        "a webhook registered by URL needs no Service, and none may be registered here"
    );
    // The operator's configuration (runc's runtime class is the sample's) in
    // the manifests' ConfigMap before anything is applied, as a kustomization
    // puts it: the webhook reads webhook.toml once at start, and a ConfigMap
    // changed after its pod started is seen only by the next pod (a pod that
    // started on the default served without these runtime classes).
    let manifests = with_config(&manifests, WEBHOOK_TOML);
    let file = c.path("attestd-webhook.yaml");
    std::fs::write(&file, &manifests).unwrap();
    let f = file.to_str().unwrap();
    let applied = c.ok(&["apply", "--server-side", "-f", f]);
    assert!(applied.contains("serverside-applied"), "{applied}");
    assert!(!manifests.contains("kind: Secret"));
    // Every object of the file, read back from the API server.
    let stored = c.ok(&["get", "-f", f, "-o", "name"]);
    let stored: Vec<&str> = stored.lines().collect();
    for kind in [
        "namespace/attestd-system",
        "serviceaccount/attestd-webhook",
        "configmap/attestd-webhook-config",
        "deployment.apps/attestd-webhook",
        "priorityclass.scheduling.k8s.io/attestd-webhook-critical",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/attestd-webhook",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/attestd-webhook-workloads",
        "validatingadmissionpolicy.admissionregistration.k8s.io/attestd-injected-pods",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/attestd-injected-pods",
    ] {
        assert!(stored.contains(&kind), "{kind} not stored: {stored:?}");
    }
    assert_eq!(
        stored.len(),
        manifests.matches("\nkind: ").count() + usize::from(manifests.starts_with("kind: ")),
        "{stored:?}"
    );
    let hook = c.get(&["mutatingwebhookconfiguration", "attestd-webhook"]);
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["url"], WEBHOOK_URL,
        "{hook}"
    );
    assert_eq!(hook["webhooks"][0]["failurePolicy"], "Fail", "{hook}");
    for class in [RUNTIME_CLASS, TPM_CLASS] {
        c.ok_in(
            &["apply", "--server-side", "-f", "-"],
            Some(
                json!({
                    "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                    "metadata": {"name": class}, "handler": "runc"
                })
                .to_string()
                .as_bytes(),
            ),
        );
    }
    // The serving pair's Secret from certs' files, as docs/deployment.md says:
    // the key never went down the manifests' pipe.
    c.ok(&[
        "-n",
        "attestd-system",
        "create",
        "secret",
        "tls",
        "attestd-webhook-tls",
        &format!("--cert={}", tls.join("tls.crt").display()),
        &format!("--key={}", tls.join("tls.key").display()),
    ]);
    eprintln!(
        "scenario 1: {} objects applied server-side and stored",
        stored.len()
    );
}

/// The pid of a pod's container (by name, init or not) from containerd.
fn container_pid(c: &Cluster, ns: &str, pod: &str, container: &str) -> Option<u32> {
    let p = c.get(&["pod", pod, "-n", ns]);
    let id = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|k| p["status"][k].as_array())
        .flatten()
        .find(|s| s["name"] == container)?["containerID"]
        .as_str()?
        .strip_prefix("containerd://")?
        .to_string();
    c.tasks()
        .into_iter()
        .find(|(t, _)| *t == id)
        .map(|(_, p)| p)
}

/// A `/proc/<pid>/status` field.
fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Scenario 4: the webhook runs as its Deployment's pod, from its own image
/// (the controller-manager makes the pod, the scheduler places it), and
/// serves the API server.
fn webhook_runs_as_its_deployment_says(c: &Cluster) {
    c.ok(&[
        "rollout",
        "status",
        "deployment/attestd-webhook",
        "-n",
        "attestd-system",
        "--timeout=120s",
    ]);
    let pod = webhook_pod(c);
    let pid = container_pid(c, "attestd-system", &pod, "webhook").unwrap();
    // Non-root 65532, no capabilities, no privilege gain, a read-only root.
    assert_eq!(status_field(pid, "Uid"), "65532\t65532\t65532\t65532");
    assert_eq!(status_field(pid, "Gid"), "65532\t65532\t65532\t65532");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "RuntimeDefault: a filter"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(
        root.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "the webhook's root is writable: {root}"
    );
    let image = c.get(&["pod", &pod, "-n", "attestd-system"])["status"]["containerStatuses"][0]
        ["imageID"]
        .clone();
    assert_eq!(
        image.as_str().unwrap().rsplit('@').next().unwrap(),
        locked("webhook").rsplit('@').next().unwrap(),
        "the webhook runs the image pinned in images.lock"
    );
    eprintln!(
        "scenario 4: the webhook runs as 65532, no capabilities, read-only root, image by digest"
    );
}

/// The webhook Deployment's one running pod.
fn webhook_pod(c: &Cluster) -> String {
    let pods = c.get(&[
        "pods",
        "-n",
        "attestd-system",
        "-l",
        "app.kubernetes.io/name=attestd-webhook",
        "--field-selector=status.phase=Running",
    ]);
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{pods}");
    items[0]["metadata"]["name"].as_str().unwrap().to_string()
}

struct AppPod {
    uid: String,
    /// Container pids as first started: attester, attestd, app.
    pids: Vec<u32>,
    created: Instant,
}

/// `/proc/<pid>/stat`'s start time (clock ticks since boot).
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

fn app_log(c: &Cluster) -> String {
    c.ok(&["logs", "-n", LABELLED, APP_POD, "-c", "app"])
}

/// The number of the last call the app printed, ok or failed.
fn last_call(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split_once(" kube-")?.1.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

fn ok_lines(log: &str) -> Vec<(u64, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("ok kube-")?;
            let (n, evidence) = rest.split_once(' ')?;
            Some((n.parse().ok()?, evidence.to_string()))
        })
        .collect()
}

/// Scenario 2: a pod opting in by runtime class in a labelled namespace is
/// stored injected, started in order by the kubelet, and its app gets the
/// sample attester's evidence, byte for byte, over the injected AA socket.
fn injected_pod_runs_in_order(c: &Cluster) -> AppPod {
    c.namespace(LABELLED, &[("attestd.io/inject", "enabled")]);
    // The service-account controllers are off: the default ServiceAccount by hand.
    c.ok(&["create", "serviceaccount", "default", "-n", LABELLED]);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": APP_POD, "namespace": LABELLED},
        "spec": {
            "nodeName": NODE,
            "runtimeClassName": RUNTIME_CLASS,
            // No CNI here: the node's network (the cluster's namespace).
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            // The app's own init container: it must find attestd serving.
            "initContainers": [{
                "name": "app-init",
                "image": c.images.app,
                "command": ["/attestd", "client", "--attestation_sock",
                            "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock",
                            "get-tee-type"],
            }],
            "containers": [{
                "name": "app",
                "image": c.images.app,
                "command": ["/busybox", "sh", "-c", APP_LOOP],
            }],
        },
    });
    let created = Instant::now();
    let out = c.kubectl_in(&["create", "-f", "-"], Some(pod.to_string().as_bytes()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The API server relays the webhook's warning (the node's network).
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("Warning: the pod uses the node's network"),
        "{warning}"
    );
    // As stored: ours first, then the pod's own init container.
    let stored = c.get(&["pod", APP_POD, "-n", LABELLED]);
    assert_eq!(
        stored["metadata"]["annotations"]["attestd.io/injected"], "sample",
        "{stored}"
    );
    let inits: Vec<&Value> = stored["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let names: Vec<&str> = inits.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["attestd-attester-sample", "attestd", "app-init"],
        "{stored}"
    );
    for (i, want) in [(0, locked("sample")), (1, locked("attestd"))] {
        assert_eq!(inits[i]["restartPolicy"], "Always");
        assert_eq!(
            inits[i]["image"],
            want.as_str(),
            "pinned by digest from images.lock"
        );
        assert!(inits[i]["startupProbe"].is_object());
        assert!(inits[i]["livenessProbe"].is_object());
    }
    let first = c.wait_pod(
        LABELLED,
        APP_POD,
        "the app's first evidence",
        Duration::from_secs(180),
        || {
            let o = c.kubectl(&["logs", "-n", LABELLED, APP_POD, "-c", "app"]);
            o.status
                .success()
                .then(|| {
                    ok_lines(&String::from_utf8_lossy(&o.stdout))
                        .into_iter()
                        .next()
                })
                .flatten()
        },
    );
    eprintln!(
        "figure: pod created to the app's first evidence in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    // Byte for byte what the sample attester makes of that runtime data.
    let want = attester_sample::evidence(format!("kube-{}", first.0).as_bytes())
        .unwrap()
        .bytes;
    assert_eq!(
        first.1.as_bytes(),
        &want[..],
        "evidence through the pod's AA socket"
    );
    // The order: attester, then attestd, each after the previous one's startup
    // probe, then the app's init container (which found attestd serving) and
    // then the app.
    let init_log = c.ok(&["logs", "-n", LABELLED, APP_POD, "-c", "app-init"]);
    assert_eq!(
        init_log.trim(),
        "sample",
        "the app's init container asked attestd its TEE"
    );
    let pids: Vec<u32> = ["attestd-attester-sample", "attestd", "app"]
        .iter()
        .map(|n| container_pid(c, LABELLED, APP_POD, n).unwrap_or_else(|| panic!("no {n}")))
        .collect();
    // The sample needs no device: the injected pair runs as 65532, not root.
    for pid in &pids[..2] {
        let uid = status_field(*pid, "Uid");
        assert!(
            uid.split_whitespace().all(|u| u == "65532"),
            "pid {pid} runs as uid {uid}"
        );
    }
    let ticks: Vec<u64> = pids.iter().map(|p| start_ticks(*p)).collect();
    assert!(
        ticks[0] < ticks[1] && ticks[1] < ticks[2],
        "containers started out of order (attester, attestd, app): {ticks:?}"
    );
    let p = c.get(&["pod", APP_POD, "-n", LABELLED]);
    let started = |s: &Value| {
        s["state"]["running"]["startedAt"]
            .as_str()
            .or(s["state"]["terminated"]["startedAt"].as_str())
            .unwrap()
            .to_string()
    };
    let init_status = p["status"]["initContainerStatuses"].as_array().unwrap();
    let t: Vec<String> = init_status.iter().map(started).collect();
    let app_started = started(&p["status"]["containerStatuses"][0]);
    // RFC 3339 at one second: non-decreasing in the order the kubelet ran them.
    assert!(
        t[0] <= t[1] && t[1] <= t[2] && t[2] <= app_started,
        "{t:?} {app_started}"
    );
    for s in init_status.iter().take(2) {
        assert_eq!(s["started"], true, "{s}");
    }
    let events = c.get(&[
        "events",
        "-n",
        LABELLED,
        "--field-selector",
        &format!("involvedObject.name={APP_POD},reason=Started"),
    ]);
    let started_events: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["involvedObject"]["fieldPath"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for f in [
        "spec.initContainers{attestd-attester-sample}",
        "spec.initContainers{attestd}",
        "spec.initContainers{app-init}",
        "spec.containers{app}",
    ] {
        assert!(
            started_events.iter().any(|e| e == f),
            "no Started event for {f}: {started_events:?}"
        );
    }
    eprintln!("scenario 2: injected as stored, started attester < attestd < app-init < app, evidence byte-exact");
    AppPod {
        uid: p["metadata"]["uid"].as_str().unwrap().to_string(),
        pids,
        created,
    }
}

/// How often the kubelet restarted the app pod's init container `name`.
fn restarts(c: &Cluster, name: &str) -> u64 {
    let p = c.get(&["pod", APP_POD, "-n", LABELLED]);
    p["status"]["initContainerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["restartCount"]
        .as_u64()
        .unwrap()
}

/// Scenario 3: the attester sidecar killed in the running pod; the kubelet
/// restarts it, attestd (not restarted) reconnects, and the app's calls
/// succeed again.
fn killed_attester_restarts_and_calls_resume(c: &Cluster, pod: &AppPod) {
    let log = app_log(c);
    assert!(
        !log.contains("fail kube-"),
        "calls failed before the kill: {log}"
    );
    let killed_at = Instant::now();
    attestd_e2e::signal(pod.pids[0], nix::sys::signal::Signal::SIGKILL);
    wait_for(
        "the kubelet to restart the attester",
        Duration::from_secs(120),
        || (restarts(c, "attestd-attester-sample") >= 1).then_some(()),
    );
    let restart_seen = killed_at.elapsed();
    // The call under way once the kubelet had restarted it: a later one must
    // succeed (attestd reconnects to the new attester on its own).
    let at_restart = last_call(&app_log(c));
    let (resumed, log) = wait_for(
        "the app's calls to succeed again",
        Duration::from_secs(120),
        || {
            let log = app_log(c);
            let after = ok_lines(&log).into_iter().find(|(n, _)| *n > at_restart)?;
            Some((after, log))
        },
    );
    let fails: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("fail kube-"))
        .collect();
    let failed = fails.len();
    for f in &fails {
        eprintln!("  {f}");
    }
    let want = attester_sample::evidence(format!("kube-{}", resumed.0).as_bytes())
        .unwrap()
        .bytes;
    assert_eq!(resumed.1.as_bytes(), &want[..]);
    assert_eq!(restarts(c, "attestd"), 0, "attestd itself was restarted");
    assert!(alive(pod.pids[1]), "attestd's process is gone");
    eprintln!(
        "figure: attester killed: its restart seen {:.1} s after the kill, calls succeeded again after {:.1} s; {failed} calls failed (2 s deadline each)",
        restart_seen.as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );
    eprintln!("scenario 3: the kubelet restarted the attester, attestd reconnected ({failed} failed calls)");
}

/// Scenario 3b (issue 38): what the webhook decided cannot be changed after
/// admission. An earlier release projected the `attestd.io/plugin-config`
/// annotation into attestd's drop-in directory, and annotations stay writable:
/// `kubectl annotate` then made a restarted attestd run another command. Now
/// the decision is in attestd's container spec. The test annotates the pod,
/// waits until the kubelet has refreshed the pod's downward API volume (the
/// author's own `attestd.io/config` is changed too, as a witness), restarts
/// both sidecars, and shows attestd runs the same attester as before.
fn annotating_after_admission_changes_nothing_that_runs(c: &Cluster, pod: &AppPod) {
    let evil = "[plugins]\nprimary = \"evil\"\n[plugins.attester.evil]\nlaunch = \"process\"\n\
                command = \"/busybox\"\nargs = [\"sh\", \"-c\", \"touch /run/attestd/owned; sleep 600\"]\n";
    let witness = "[log]\nlevel = \"debug\"\n";
    // Scenario 10 (issue 42): the manifests' ValidatingAdmissionPolicy keeps
    // the pin after creation, in the API server itself: kubectl set image,
    // annotate and edit of what was injected are refused with its message.
    let refused = |o: std::process::Output, what: &str, want: &str| {
        let mut err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{what} was admitted");
        // kubectl edit says only "is invalid" and keeps the API server's
        // message in the copy of the edit it saves.
        if let Some(copy) = err
            .split("stored to \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(String::from)
        {
            err.push_str(&std::fs::read_to_string(&copy).unwrap_or_default());
            let _ = std::fs::remove_file(copy);
        }
        assert!(
            err.contains("ValidatingAdmissionPolicy 'attestd-injected-pods'") && err.contains(want),
            "{what}: {err}"
        );
    };
    let annotate = |kvs: &[&str]| {
        let mut args = vec!["annotate", "pod", APP_POD, "-n", LABELLED, "--overwrite"];
        args.extend_from_slice(kvs);
        c.kubectl(&args)
    };
    let pinned = c.get(&["pod", APP_POD, "-n", LABELLED]);
    refused(
        c.kubectl(&[
            "set",
            "image",
            &format!("pod/{APP_POD}"),
            "-n",
            LABELLED,
            &format!("attestd-attester-sample={}", c.images.app),
        ]),
        "kubectl set image",
        "run the images attestd-webhook pinned at creation",
    );
    refused(
        annotate(&[&format!("attestd.io/plugin-config={evil}")]),
        "kubectl annotate",
        "the attestd.io/ annotations of a pod attestd-webhook injected are fixed",
    );
    refused(
        c.kubectl_env(
            &["edit", "pod", APP_POD, "-n", LABELLED],
            None,
            &[(
                "KUBE_EDITOR",
                "sed -i -e s|attestd.io/injected:|attestd.io/injected-was:|",
            )],
        ),
        "kubectl edit",
        "the attestd.io/ annotations of a pod attestd-webhook injected are fixed",
    );
    // Other updates pass: a label of the user's own.
    c.ok(&["label", "pod", APP_POD, "-n", LABELLED, "team=demo"]);
    let now = c.get(&["pod", APP_POD, "-n", LABELLED]);
    assert_eq!(
        now["spec"]["initContainers"],
        pinned["spec"]["initContainers"]
    );
    assert_eq!(
        now["metadata"]["annotations"],
        pinned["metadata"]["annotations"]
    );
    eprintln!("scenario 10: set image, annotate and edit of the injected pod refused by the pin policy; a label passes");
    // Without the policy (a cluster before 1.30, or one whose admin removed
    // it), an annotation changed after admission still changes nothing that
    // runs: the rest of this scenario, with the binding removed meanwhile.
    c.ok(&[
        "delete",
        "validatingadmissionpolicybinding",
        "attestd-injected-pods",
    ]);
    wait_for(
        "the API server to drop the pin policy's binding",
        Duration::from_secs(60),
        || {
            annotate(&["attestd.io/probe=1"])
                .status
                .success()
                .then_some(())
        },
    );
    succeeded(
        &annotate(&[
            &format!("attestd.io/plugin-config={evil}"),
            &format!("attestd.io/config={witness}"),
        ]),
        "kubectl annotate after admission",
    );
    let projected = c
        .kubelet_root()
        .join("pods")
        .join(&pod.uid)
        .join("volumes/kubernetes.io~downward-api/attestd-config");
    wait_for(
        "the kubelet to refresh the pod's downward API volume",
        Duration::from_secs(180),
        || (std::fs::read_to_string(projected.join("pod-config")).ok()? == witness).then_some(()),
    );
    // Nothing of the webhook's is in that volume to be refreshed.
    let files: Vec<String> = std::fs::read_dir(&projected)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    assert_eq!(files, ["pod-config"], "{}", projected.display());
    let before = restarts(c, "attestd");
    for name in ["attestd-attester-sample", "attestd"] {
        let pid = container_pid(c, LABELLED, APP_POD, name).unwrap();
        attestd_e2e::signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    wait_for(
        "the kubelet to restart attestd",
        Duration::from_secs(120),
        || (restarts(c, "attestd") > before).then_some(()),
    );
    let at_restart = last_call(&app_log(c));
    let resumed = wait_for(
        "the app's calls to succeed after the restart",
        Duration::from_secs(120),
        || {
            ok_lines(&app_log(c))
                .into_iter()
                .find(|(n, _)| *n > at_restart)
        },
    );
    let want = attester_sample::evidence(format!("kube-{}", resumed.0).as_bytes())
        .unwrap()
        .bytes;
    assert_eq!(
        resumed.1.as_bytes(),
        &want[..],
        "the sample attester answers"
    );
    // Nothing of the annotation ran, nor was it read.
    let attestd = container_pid(c, LABELLED, APP_POD, "attestd").unwrap();
    let logs = c.ok(&["logs", "-n", LABELLED, APP_POD, "-c", "attestd"]);
    assert!(!logs.contains("evil"), "{logs}");
    assert!(
        !std::path::Path::new(&format!("/proc/{attestd}/root/run/attestd/owned")).exists(),
        "the annotation's command ran"
    );
    for p in c.netns.pids() {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmd).contains("/run/attestd/owned"),
            "pid {p} runs the annotation's command"
        );
    }
    eprintln!("scenario 3b: annotated after admission, both sidecars restarted: the same attester answers");
    // The policy's binding back, as the manifests ship it.
    let binding = attestd_webhook::manifests::PIN_POLICY
        .split("\n---\n")
        .find(|d| d.contains("kind: ValidatingAdmissionPolicyBinding"))
        .unwrap();
    c.ok_in(&["apply", "-f", "-"], Some(binding.as_bytes()));
}

/// Scenario 6: the webhook's refusals as the API server returns them to kubectl.
fn refusals_reach_kubectl(c: &Cluster) {
    let refused = |name: &str, containers: Value, want: &str| {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": LABELLED},
            "spec": {"nodeName": NODE, "runtimeClassName": RUNTIME_CLASS, "hostNetwork": true,
                     "automountServiceAccountToken": false, "containers": containers},
        });
        let o = c.kubectl_in(&["create", "-f", "-"], Some(pod.to_string().as_bytes()));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name} was admitted");
        assert!(
            err.contains("admission webhook \"inject.attestd.io\" denied the request")
                && err.contains(want),
            "{name}: {err}"
        );
        assert!(!c
            .kubectl(&["get", "pod", name, "-n", LABELLED])
            .status
            .success());
    };
    refused(
        "clash",
        json!([{"name": "attestd", "image": c.images.app}]),
        "the pod already has a container named \"attestd\"",
    );
    refused(
        "mounts-ours",
        json!([{"name": "app", "image": c.images.app,
                "volumeMounts": [{"name": "attestd-run", "mountPath": "/run/attestd"}]}]),
        "mounts the volume \"attestd-run\"",
    );
    eprintln!(
        "scenario 6: a clashing name and a mount of attestd-run refused, as kubectl shows them"
    );
}

/// Scenario 9 (issue 42): the injected pair passes Pod Security's
/// `restricted` level as the user's own containers must (a pod that sets
/// seccomp per container was refused once injected, naming containers its
/// author never wrote); a pod sharing its process namespace (or the host's)
/// is refused by the webhook, with the reason, since through /proc its app
/// reached the attester's socket.
fn pod_security_and_shared_processes(c: &Cluster) {
    const RESTRICTED: &str = "attestd-restricted";
    c.namespace(
        RESTRICTED,
        &[
            ("attestd.io/inject", "enabled"),
            ("pod-security.kubernetes.io/enforce", "restricted"),
        ],
    );
    c.ok(&["create", "serviceaccount", "default", "-n", RESTRICTED]);
    // Valid under `restricted` with seccomp set on its one container only.
    let pod = |name: &str, ns: &str, extra: Value| {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": NODE, "runtimeClassName": RUNTIME_CLASS,
                     "automountServiceAccountToken": false,
                     "containers": [{"name": "app", "image": c.images.app,
                                     "command": ["/busybox", "sleep", "3600"],
                                     "securityContext": {
                                         "runAsNonRoot": true, "runAsUser": 1000,
                                         "allowPrivilegeEscalation": false,
                                         "capabilities": {"drop": ["ALL"]},
                                         "seccompProfile": {"type": "RuntimeDefault"}}}]},
        });
        for (k, v) in extra.as_object().unwrap() {
            p["spec"][k] = v.clone();
        }
        p.to_string()
    };
    let o = c.kubectl_in(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(pod("restricted", RESTRICTED, json!({})).as_bytes()),
    );
    let out = succeeded(&o, "a restricted pod, injected");
    let admitted: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        admitted["metadata"]["annotations"]["attestd.io/injected"], "sample",
        "{admitted}"
    );
    // And it runs on the pod network (no hostNetwork under `restricted`): the
    // cluster's own bridge, its namespace `lo` and `eth0`.
    let o = c.kubectl_in(
        &["create", "-f", "-"],
        Some(
            pod(
                "restricted",
                RESTRICTED,
                json!({"terminationGracePeriodSeconds": 1}),
            )
            .as_bytes(),
        ),
    );
    succeeded(&o, "the restricted pod, created");
    let pid = c.wait_pod(
        RESTRICTED,
        "restricted",
        "the restricted pod's app running",
        Duration::from_secs(120),
        || container_pid(c, RESTRICTED, "restricted", "app"),
    );
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    assert_eq!(ifaces, ["lo", "eth0"], "the pod's network namespace: {dev}");
    c.ok(&[
        "delete",
        "pod",
        "restricted",
        "-n",
        RESTRICTED,
        "--wait=true",
    ]);
    for field in ["shareProcessNamespace", "hostPID"] {
        let o = c.kubectl_in(
            &["create", "--dry-run=server", "-f", "-"],
            Some(pod("shared", LABELLED, json!({ field: true })).as_bytes()),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "a pod with {field} was admitted");
        assert!(
            err.contains("admission webhook \"inject.attestd.io\" denied the request")
                && err.contains(&format!("the pod sets {field}: ")),
            "{field}: {err}"
        );
    }
    // A hardware TEE's privileged attester: the API server allows privileged
    // containers (as every cluster running such pods must), Pod Security
    // admits it in a `privileged` namespace and refuses it, naming the
    // attester, in a `baseline` one.
    for (ns, level) in [
        ("attestd-privileged", "privileged"),
        ("attestd-baseline", "baseline"),
    ] {
        c.namespace(
            ns,
            &[
                ("attestd.io/inject", "enabled"),
                ("pod-security.kubernetes.io/enforce", level),
            ],
        );
        c.ok(&["create", "serviceaccount", "default", "-n", ns]);
        let o = c.kubectl_in(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(pod("tpm", ns, json!({"runtimeClassName": TPM_CLASS})).as_bytes()),
        );
        if level == "privileged" {
            let admitted: Value =
                serde_json::from_str(&succeeded(&o, "a TPM pod in a privileged namespace"))
                    .unwrap();
            let attester = &admitted["spec"]["initContainers"][0];
            assert_eq!(attester["name"], "attestd-attester-tpm", "{admitted}");
            assert_eq!(
                attester["securityContext"]["privileged"], true,
                "{admitted}"
            );
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                !o.status.success(),
                "a privileged attester was admitted under baseline"
            );
            assert!(
                err.contains("violates PodSecurity \"baseline:latest\"")
                    && err.contains("privileged (container \"attestd-attester-tpm\""),
                "{err}"
            );
        }
    }
    // Warned at the workload, before any pod is refused: a Deployment and a
    // CronJob whose injected attester Pod Security will refuse hear it from
    // kubectl; one whose injected pair passes hears nothing from us.
    let workload = |kind: &str, ns: &str, class: &str| {
        let template =
            serde_json::from_str::<Value>(&pod("t", ns, json!({"runtimeClassName": class})))
                .unwrap();
        let template = json!({"metadata": {"labels": {"app": "w"}}, "spec": template["spec"]});
        let spec = match kind {
            "Deployment" => {
                json!({"selector": {"matchLabels": {"app": "w"}}, "template": template})
            }
            _ => json!({"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": {
                "metadata": template["metadata"],
                "spec": {"restartPolicy": "Never", "containers": template["spec"]["containers"],
                         "nodeName": NODE, "runtimeClassName": class,
                         "automountServiceAccountToken": false}}}}}),
        };
        let api = if kind == "Deployment" {
            "apps/v1"
        } else {
            "batch/v1"
        };
        let o = c.kubectl_in(
            &["create", "--dry-run=server", "-f", "-"],
            Some(
                json!({"apiVersion": api, "kind": kind,
                       "metadata": {"name": "w", "namespace": ns}, "spec": spec})
                .to_string()
                .as_bytes(),
            ),
        );
        succeeded(&o, &format!("a {kind} in {ns}"));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let warned = workload("Deployment", RESTRICTED, TPM_CLASS);
    assert!(
        warned.contains(&format!(
            "Warning: attestd-webhook: namespace {RESTRICTED} enforces Pod Security \"restricted\", which will refuse the pods of this Deployment once attestd and the tpm attester are injected: container \"attestd-attester-tpm\" is privileged"
        )) && warned.contains("label the namespace pod-security.kubernetes.io/enforce=privileged"),
        "{warned}"
    );
    let warned = workload("CronJob", "attestd-baseline", TPM_CLASS);
    assert!(
        warned.contains(
            "enforces Pod Security \"baseline\", which will refuse the pods of this CronJob"
        ),
        "{warned}"
    );
    let quiet = workload("Deployment", RESTRICTED, RUNTIME_CLASS);
    assert!(!quiet.contains("attestd-webhook"), "{quiet}");
    eprintln!(
        "scenario 9: a Deployment and a CronJob warned at kubectl of what Pod Security will refuse ({})",
        first_line(warned.trim_start_matches("Warning: "))
    );
    eprintln!(
        "scenario 9: a pod valid under Pod Security restricted admitted with the injected pair and run on the pod network (lo and eth0 on the cluster's bridge); shareProcessNamespace and hostPID refused by the webhook; the TPM's privileged attester admitted under privileged, refused under baseline"
    );
}

/// Scenario 6b (issue 41): an ephemeral container (what `kubectl debug` adds,
/// through the `ephemeralcontainers` subresource) that mounts attestd's
/// sockets is refused with the webhook's message; the pod keeps none.
fn ephemeral_containers_are_reviewed(c: &Cluster) {
    let mut pod = c.get(&["pod", APP_POD, "-n", LABELLED]);
    pod["spec"]["ephemeralContainers"] = json!([{
        "name": "debugger", "image": c.images.app,
        "command": ["/busybox", "sleep", "3600"],
        "volumeMounts": [{"name": "attestd-run", "mountPath": "/run/attestd"}],
    }]);
    let path = format!("/api/v1/namespaces/{LABELLED}/pods/{APP_POD}/ephemeralcontainers");
    let o = c.kubectl_in(
        &["replace", "--raw", &path, "-f", "-"],
        Some(pod.to_string().as_bytes()),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "an ephemeral container mounting attestd-run was added"
    );
    assert!(
        err.contains("ephemeral container \"debugger\" mounts the volume \"attestd-run\""),
        "{err}"
    );
    let stored = c.get(&["pod", APP_POD, "-n", LABELLED]);
    assert!(stored["spec"]["ephemeralContainers"].is_null(), "{stored}");

    // The AA socket's volume, read-only (what `kubectl debug --custom` adds):
    // admitted, and the debugging container gets attestd's answers.
    let mut pod = stored;
    pod["spec"]["ephemeralContainers"] = json!([{
        "name": "debugger", "image": c.images.app,
        "command": ["/attestd", "client", "--attestation_sock",
                    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock",
                    "get-tee-type"],
        "volumeMounts": [{"name": "attestd-aa", "readOnly": true,
                          "mountPath": "/run/confidential-containers/attestation-agent"}],
    }]);
    let o = c.kubectl_in(
        &["replace", "--raw", &path, "-f", "-"],
        Some(pod.to_string().as_bytes()),
    );
    succeeded(&o, "an ephemeral container with the AA socket read-only");
    let said = c.wait_pod(
        LABELLED,
        APP_POD,
        "the debugging container's answer",
        Duration::from_secs(60),
        || {
            let o = c.kubectl(&["logs", "-n", LABELLED, APP_POD, "-c", "debugger"]);
            let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
            (o.status.success() && !out.is_empty()).then_some(out)
        },
    );
    assert_eq!(said, "sample", "GetTeeType from the debugging container");
    eprintln!(
        "scenario 6b: an ephemeral container mounting attestd-run refused ({}); one with the AA socket read-only admitted and answered",
        first_line(&err)
    );
}

/// Scenario 11 (issue 42): pods made by controllers, as users make them: a
/// Deployment's pods (on the pod network, placed by the scheduler) are
/// injected once each and get evidence; it scales to 0 and back and rolls
/// over to injected pods; a Job's pod completes and its sidecars stop.
fn workloads_run_as_users_make_them(c: &Cluster) {
    let template = |command: Value, restart: &str| {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"runtimeClassName": RUNTIME_CLASS, "restartPolicy": restart,
                     "automountServiceAccountToken": false,
                     "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "app", "image": c.images.app, "command": command}]},
        })
    };
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": LABELLED},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": template(json!(["/busybox", "sh", "-c", APP_LOOP]), "Always")},
    });
    c.ok_in(
        &["create", "-f", "-"],
        Some(deployment.to_string().as_bytes()),
    );
    // Every running pod of the Deployment: injected once, serving evidence.
    let serving = |n: usize| {
        wait_for(
            &format!("{n} pods of the Deployment serving evidence"),
            Duration::from_secs(180),
            || {
                let pods = c.get(&["pods", "-n", LABELLED, "-l", "app=web"]);
                let pods: Vec<&Value> = pods["items"].as_array()?.iter().collect();
                let names: Vec<String> = pods
                    .iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
                    .collect();
                if names.len() != n || pods.len() != n {
                    return None;
                }
                for p in &pods {
                    let inits: Vec<&str> = p["spec"]["initContainers"]
                        .as_array()?
                        .iter()
                        .map(|i| i["name"].as_str().unwrap())
                        .collect();
                    assert_eq!(inits, ["attestd-attester-sample", "attestd"], "{p}");
                    assert_eq!(
                        p["metadata"]["annotations"]["attestd.io/injected"],
                        "sample"
                    );
                }
                names
                    .iter()
                    .all(|pod| {
                        let o = c.kubectl(&["logs", "-n", LABELLED, pod, "-c", "app"]);
                        !ok_lines(&String::from_utf8_lossy(&o.stdout)).is_empty()
                    })
                    .then_some(names)
            },
        )
    };
    let first = serving(2);
    c.ok(&["scale", "deployment/web", "-n", LABELLED, "--replicas=0"]);
    serving(0);
    c.ok(&["scale", "deployment/web", "-n", LABELLED, "--replicas=1"]);
    let again = serving(1);
    assert!(!first.contains(&again[0]), "a new pod after scaling back");
    // A rollout: the template changes, a new ReplicaSet's pod is injected.
    c.ok(&["set", "env", "deployment/web", "-n", LABELLED, "ROLLED=1"]);
    c.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        LABELLED,
        "--timeout=180s",
    ]);
    let rolled = serving(1);
    assert_ne!(rolled, again, "the rollout replaced the pod");
    c.ok(&["delete", "deployment/web", "-n", LABELLED, "--wait=true"]);

    // A Job: its app asks attestd once and exits; the pod completes, its
    // sidecars stopped after it (native sidecars do not hold a Job open).
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once", "namespace": LABELLED},
        "spec": {"backoffLimit": 0, "template": template(json!(["/attestd", "client", "--attestation_sock",
            "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock",
            "get-tee-type"]), "Never")},
    });
    c.ok_in(&["create", "-f", "-"], Some(job.to_string().as_bytes()));
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "-n",
        LABELLED,
        "--timeout=180s",
    ]);
    let said = c.ok(&["logs", "-n", LABELLED, "job/once", "-c", "app"]);
    assert_eq!(said.trim(), "sample");
    let pod = c.get(&["pods", "-n", LABELLED, "-l", "job-name=once"]);
    assert_eq!(pod["items"][0]["status"]["phase"], "Succeeded", "{pod}");
    c.ok(&["delete", "job/once", "-n", LABELLED, "--wait=true"]);
    eprintln!(
        "scenario 11: a Deployment's pods injected once each and serving, scaled to 0 and back, rolled over; a Job completed with its sidecars stopped"
    );
}

/// Scenario 7: the pod deleted: its sidecars stop, its sockets go with its
/// volumes, and none of its processes is left.
fn deleted_pod_leaves_nothing(c: &Cluster, pod: &AppPod) {
    let dir = c.kubelet_root().join("pods").join(&pod.uid);
    let sockets = dir.join("volumes/kubernetes.io~empty-dir/attestd-aa");
    assert!(
        sockets.join("attestation-agent.sock").exists(),
        "the AA socket is not where the pod's volume is: {}",
        sockets.display()
    );
    let pids: Vec<u32> = ["attestd-attester-sample", "attestd", "app"]
        .iter()
        .filter_map(|n| container_pid(c, LABELLED, APP_POD, n))
        .collect();
    assert_eq!(pids.len(), 3);
    c.ok(&["delete", "pod", APP_POD, "-n", LABELLED, "--timeout=90s"]);
    assert!(!c
        .kubectl(&["get", "pod", APP_POD, "-n", LABELLED])
        .status
        .success());
    wait_for("the pod's directory to go", Duration::from_secs(60), || {
        (!dir.exists()).then_some(())
    });
    for p in pids.iter().chain(&pod.pids) {
        assert!(!alive(*p), "pid {p} of the deleted pod is still running");
    }
    // Nothing of ours anywhere in the cluster's namespace.
    for p in c.netns.pids() {
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        assert!(
            argv0 != b"/attestd" && argv0 != b"/attester" && argv0 != b"/busybox",
            "pid {p} ({}) outlived its pod",
            String::from_utf8_lossy(argv0)
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&pod.uid),
        "a volume of the deleted pod is still mounted"
    );
    eprintln!(
        "scenario 7: deleted {:.0} s after creation: sidecars stopped, sockets gone, no process left",
        pod.created.elapsed().as_secs_f64()
    );
}

/// Scenario 8 (issue 41): 3, then 100 clients whose review bodies never end
/// (chunked, a byte every 300 ms, starting over when dropped) beside the API
/// server: each pod it is asked to admit (server-side dry runs, which call the
/// webhook as a create does) is admitted and injected.
fn slow_clients_do_not_block_admission(c: &Cluster) {
    use attestd_e2e::webhook::Flood;
    let ca = std::fs::read(c.path("webhook-tls").join("ca.crt")).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
    let mut cut = Vec::new();
    for n in [3, 100] {
        let flood = Flood::slow(
            Some(c.netns.file()),
            ca.clone(),
            WEBHOOK_URL.into(),
            "127.0.0.1".into(),
            addr,
            n,
        );
        std::thread::sleep(Duration::from_millis(700));
        for i in 0..3 {
            admitted_injected(c, &format!("beside-{n}-slow-{i}"));
        }
        std::thread::sleep(Duration::from_millis(1500));
        cut.push(flood.stop());
        assert!(
            cut[cut.len() - 1] >= n as u64,
            "{n} slow clients: {cut:?} cut off"
        );
    }
    eprintln!(
        "scenario 8: 3, then 100 slow clients: every pod admitted and injected; their bodies cut off {cut:?} times"
    );
    // And 300 clients that connect and never say hello (re-opened as they
    // are closed): the API server's reviews still get through at once.
    let flood = Flood::silent(Some(c.netns.file()), addr, 300);
    std::thread::sleep(Duration::from_millis(700));
    for i in 0..3 {
        let took = admitted_injected(c, &format!("beside-silent-{i}"));
        // Inside the manifest's timeoutSeconds (5), with room to spare.
        assert!(
            took < Duration::from_secs(4),
            "pod {i} took {took:?} beside the silent flood"
        );
    }
    // The webhook closes silent connections once they are a second old and
    // a newcomer needs room, or at the handshake deadline (10 s): the reviews
    // above may all be done before that.
    let enough = flood.wait_counted(100, Duration::from_secs(20));
    let closed = flood.stop();
    assert!(enough, "silent connections closed in 20 s: {closed}");
    eprintln!(
        "scenario 8: 300 silent clients: every pod admitted and injected; {closed} of their connections closed"
    );
}

/// A pod named `name` in the labelled namespace, created as a server-side dry
/// run (which calls the webhook as a create does): it must be admitted and
/// injected. How long the API server took.
fn admitted_injected(c: &Cluster, name: &str) -> Duration {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": LABELLED},
        "spec": {"nodeName": NODE, "runtimeClassName": RUNTIME_CLASS, "hostNetwork": true,
                 "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": c.images.app,
                                 "command": ["/busybox", "sleep", "3600"]}]},
    });
    let started = std::time::Instant::now();
    let o = c.kubectl_in(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(pod.to_string().as_bytes()),
    );
    let took = started.elapsed();
    let out = succeeded(&o, &format!("pod {name}"));
    let admitted: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        admitted["metadata"]["annotations"]["attestd.io/injected"], "sample",
        "{admitted}"
    );
    took
}

/// Scenario 5: the webhook stopped, `failurePolicy: Fail`: a pod in a labelled
/// namespace is refused with the API server's message; other namespaces are
/// not affected.
fn webhook_down_fails_closed_for_labelled_namespaces_only(c: &Cluster) {
    let pod = webhook_pod(c);
    c.ok(&[
        "scale",
        "deployment/attestd-webhook",
        "-n",
        "attestd-system",
        "--replicas=0",
    ]);
    c.ok(&[
        "wait",
        "--for=delete",
        &format!("pod/{pod}"),
        "-n",
        "attestd-system",
        "--timeout=60s",
    ]);
    let pod = |ns: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "while-down", "namespace": ns},
            "spec": {"nodeName": NODE, "runtimeClassName": RUNTIME_CLASS, "hostNetwork": true,
                     "automountServiceAccountToken": false,
                     "containers": [{"name": "app", "image": c.images.app,
                                     "command": ["/busybox", "sleep", "3600"]}]},
        })
        .to_string()
    };
    let o = c.kubectl_in(&["create", "-f", "-"], Some(pod(LABELLED).as_bytes()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "created while the webhook was down");
    assert!(
        err.contains("failed calling webhook \"inject.attestd.io\"")
            && err.contains(WEBHOOK_URL)
            && err.contains("connection refused"),
        "{err}"
    );
    // An unlabelled namespace never calls it.
    c.ok(&["create", "serviceaccount", "default", "-n", "default"]);
    let o = c.kubectl_in(&["create", "-f", "-"], Some(pod("default").as_bytes()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored = c.get(&["pod", "while-down", "-n", "default"]);
    assert!(stored["metadata"]["annotations"]["attestd.io/injected"].is_null());
    c.ok(&[
        "delete",
        "pod",
        "while-down",
        "-n",
        "default",
        "--wait=false",
    ]);
    eprintln!(
        "scenario 5: webhook down: refused in {LABELLED} ({}), admitted unchanged in default",
        first_line(&err)
    );
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The API server's own measure of the webhook's calls.
fn webhook_latency(c: &Cluster) {
    let metrics = c.metrics();
    let sum_count = |suffix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "apiserver_admission_webhook_admission_duration_seconds_{suffix}{{"
                )) && l.contains("name=\"inject.attestd.io\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (sum, count) = (sum_count("sum"), sum_count("count"));
    // The app's pod and the two refused ones (the calls that failed to connect
    // while it was down are not the webhook's).
    assert!(
        count >= 3.0,
        "the API server recorded {count} webhook calls"
    );
    eprintln!(
        "figure: webhook calls by the API server's metric: {count} calls, mean {:.2} ms",
        sum / count * 1000.0
    );
}
