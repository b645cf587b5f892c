//! One AdmissionReview in, one AdmissionReview out. Every input — malformed JSON,
//! a review without a request, another kind, a pod that does not parse — gets a
//! well-formed answer with a reason, so the API server reports the reason rather
//! than "webhook call failed".

use base64::Engine as _;
use kube_core::admission::{AdmissionResponse, Operation};
use kube_core::GroupVersionKind;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Config, Lock};
use crate::inject::{decide, Decision};
use crate::pod::PodView;
use crate::workloads::{self, Level};

/// The largest review read: the API server's own limit on a request body
/// (3 MiB); a pod CREATE's review is the pod and a few hundred bytes.
pub const MAX_REVIEW_BYTES: usize = 3 << 20;

/// An AdmissionReview as the webhook reads it: the envelope typed, the object
/// left as the bytes it is (borrowed from the body, not copied), then read
/// straight into the webhook's view of a pod. Fields the webhook has no use for
/// (`oldObject`, `userInfo`, …) are skipped as they are read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

/// What happened, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub uid: String,
    pub allowed: bool,
    pub patched: bool,
    pub message: String,
}

/// An allowing answer to the request `uid` (what kube-core makes from a parsed
/// request, made from its uid alone).
fn allowed_for(uid: &str) -> AdmissionResponse {
    let mut r = AdmissionResponse::invalid("");
    r.uid = uid.to_string();
    r.allowed = true;
    r.result = Default::default();
    r
}

fn answer(mut r: AdmissionResponse, code: u16, reason: &str) -> AdmissionResponse {
    r.result.code = code;
    r.result.reason = reason.to_string();
    r
}

/// A refusal for a review that could not be read (no uid to answer to).
pub fn unreadable(why: impl std::fmt::Display, code: u16) -> (Vec<u8>, Outcome) {
    let message = format!("attestd-webhook cannot read the AdmissionReview: {why}");
    let r = answer(AdmissionResponse::invalid(&message), code, "BadRequest");
    finish(r, message)
}

/// A refusal for want of room, addressed to the request's uid when the part
/// of its body that arrived names it (the API server writes `request.uid`
/// first), so the API server shows it for that request.
pub fn busy(got: &[u8], why: String) -> (Vec<u8>, Outcome) {
    let r = answer(AdmissionResponse::invalid(&why), 429, "TooManyRequests");
    let (body, outcome) = finish(r, why);
    match request_uid(got) {
        Some(uid) => answered_to(&uid, body, outcome),
        None => (body, outcome),
    }
}

/// The longest uid taken from a partial body (Kubernetes' are 36 characters).
pub const MAX_UID: usize = 128;

/// `request.uid` from the start of an AdmissionReview that may be cut short:
/// the first `"uid"` after `"request"`, its value a plain token.
pub fn request_uid(got: &[u8]) -> Option<String> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let after = find(got, b"\"request\"")? + 9;
    let rest = &got[after..];
    let at = find(rest, b"\"uid\"")? + 5;
    let rest = &rest[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().take(MAX_UID + 1).position(|b| *b == b'"')?;
    let uid = &rest[..end];
    (!uid.is_empty()
        && uid
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.' || *b == b'_'))
    .then(|| String::from_utf8_lossy(uid).into_owned())
}

/// `unreadable`'s refusal, addressed to the request `uid` after all.
fn answered_to(uid: &str, body: Vec<u8>, mut outcome: Outcome) -> (Vec<u8>, Outcome) {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (body, outcome);
    };
    if let Some(u) = doc.pointer_mut("/response/uid") {
        *u = serde_json::Value::String(uid.to_string());
    }
    outcome.uid = uid.to_string();
    (serde_json::to_vec(&doc).unwrap_or(body), outcome)
}

fn finish(r: AdmissionResponse, message: String) -> (Vec<u8>, Outcome) {
    let outcome = Outcome {
        uid: r.uid.clone(),
        allowed: r.allowed,
        patched: r.patch.is_some(),
        message,
    };
    // Serialising our own types cannot fail; an empty body would still be a
    // refusal the API server reports.
    let mut doc = serde_json::to_value(r.into_review()).unwrap_or_default();
    // The patch as Kubernetes' own webhooks send a []byte: base64 (kube-core
    // writes an array of numbers, which Go's decoder also takes).
    if let Some(patch) = doc.pointer_mut("/response/patch") {
        if let Ok(bytes) = serde_json::from_value::<Vec<u8>>(patch.clone()) {
            *patch =
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    let body = serde_json::to_vec(&doc).unwrap_or_default();
    (body, outcome)
}

/// The request's uid from a review that does not parse as a whole (a field of
/// the wrong type, an unknown operation): the refusal must carry it, or the API
/// server reports a uid mismatch instead of the reason.
fn uid_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Uid {
        uid: String,
    }
    #[derive(Deserialize)]
    struct Envelope {
        request: Option<Uid>,
    }
    serde_json::from_slice::<Envelope>(body)
        .ok()?
        .request
        .map(|r| r.uid)
}

/// The pod a request carries, read into the webhook's view; the refusal (400)
/// when `what` came without one or it does not parse.
fn pod_of(
    base: &AdmissionResponse,
    object: Option<&RawValue>,
    what: &str,
) -> Result<PodView, (Vec<u8>, Outcome)> {
    let refuse = |message: String| {
        finish(
            answer(base.clone().deny(&message), 400, "BadRequest"),
            message,
        )
    };
    let Some(object) = object else {
        return Err(refuse(format!("{what} without the pod")));
    };
    serde_json::from_str(object.get()).map_err(|e| {
        refuse(format!(
            "the pod does not parse: {}",
            attestd::echo::bounded(&e.to_string(), attestd::echo::MAX_ECHO)
        ))
    })
}

/// An UPDATE of the `ephemeralcontainers` subresource (`kubectl debug`): an
/// ephemeral container mounting a volume of ours by name (attestd's sockets,
/// an attester's) is refused, as a container of the pod is at its creation;
/// but the AA socket's, read-only, as every app container has it.
fn ephemeral(base: AdmissionResponse, object: Option<&RawValue>) -> (Vec<u8>, Outcome) {
    let pod = match pod_of(&base, object, "an ephemeral-container UPDATE") {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let mounting = pod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| {
            // The AA socket read-only is what every app container has: a
            // debugging container may have it too (`kubectl debug --custom`).
            let v = c.volume_mounts.as_ref()?.beyond_aa.as_ref()?;
            Some((c.name.clone(), v.clone()))
        });
    match mounting {
        Some((c, v)) => {
            let message = format!(
                "attestd-webhook: ephemeral container {} mounts the volume {}, which attestd-webhook adds for attestd and its attesters alone",
                attestd::echo::quoted(&c),
                attestd::echo::quoted(&v)
            );
            finish(answer(base.deny(&message), 403, "Forbidden"), message)
        }
        None => finish(
            base,
            "ephemeral containers: none mounts a volume of ours".into(),
        ),
    }
}

/// A workload's review: always allowed, with the warnings its pods would earn.
fn workload(
    base: AdmissionResponse,
    req: &Request,
    level: Level,
    config: &Config,
    lock: &Lock,
) -> (Vec<u8>, Outcome) {
    let object: serde_json::Value = match req.object.map(|o| serde_json::from_str(o.get())) {
        Some(Ok(v)) => v,
        _ => return finish(base, "a workload review without a readable object".into()),
    };
    let namespace = req
        .namespace
        .as_deref()
        .or(object
            .pointer("/metadata/namespace")
            .and_then(|v| v.as_str()))
        .unwrap_or("default");
    let (group, kind) = (req.kind.group.as_str(), req.kind.kind.as_str());
    match workloads::warnings(group, kind, &object, namespace, level, config, lock) {
        Ok(w) if w.is_empty() => finish(base, format!("{kind}: its pods pass {}", level.name())),
        Ok(w) => {
            let message = w.join(" ");
            let mut r = base;
            r.warnings = Some(w);
            finish(r, message)
        }
        // Never a refusal here: the pods' own review says what is wrong.
        Err(why) => finish(base, format!("{kind}: not reviewed: {why}")),
    }
}

/// The answer to `body`, a pod's review (`level` None: `/mutate`) or a
/// workload's in a namespace enforcing `level` (`/workloads/<level>`).
pub fn review(
    body: &[u8],
    level: Option<Level>,
    config: &Config,
    lock: &Lock,
) -> (Vec<u8>, Outcome) {
    let parsed: Envelope = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let (body_out, outcome) = unreadable(e, 400);
            return match uid_of(body) {
                Some(uid) => answered_to(&uid, body_out, outcome),
                None => (body_out, outcome),
            };
        }
    };
    if parsed.api_version != "admission.k8s.io/v1" || parsed.kind != "AdmissionReview" {
        return unreadable(
            format!(
                "expected admission.k8s.io/v1 AdmissionReview, got {} {}",
                attestd::echo::bounded(&parsed.api_version, attestd::echo::MAX_ECHO),
                attestd::echo::bounded(&parsed.kind, attestd::echo::MAX_ECHO)
            ),
            400,
        );
    }
    let Some(req) = parsed.request else {
        return unreadable("it holds no request", 400);
    };
    let base = allowed_for(&req.uid);
    let kind = &req.kind;
    if let Some(level) = level {
        return workload(base, &req, level, config, lock);
    }
    if (
        kind.group.as_str(),
        kind.version.as_str(),
        kind.kind.as_str(),
    ) != ("", "v1", "Pod")
    {
        let message = format!(
            "attestd-webhook mutates v1 Pods, not {}/{} {}: check the MutatingWebhookConfiguration's rules",
            if kind.group.is_empty() {
                "core".to_string()
            } else {
                attestd::echo::bounded(&kind.group, attestd::echo::MAX_ECHO)
            },
            attestd::echo::bounded(&kind.version, attestd::echo::MAX_ECHO),
            attestd::echo::bounded(&kind.kind, attestd::echo::MAX_ECHO)
        );
        return finish(answer(base.deny(&message), 400, "BadRequest"), message);
    }
    if req.operation == Operation::Update
        && req.sub_resource.as_deref() == Some("ephemeralcontainers")
    {
        return ephemeral(base, req.object);
    }
    if req.operation != Operation::Create || req.sub_resource.is_some() {
        let message = format!("{:?} of a pod: nothing to inject", req.operation);
        return finish(base, message);
    }
    let pod = match pod_of(&base, req.object, "a pod CREATE") {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let namespace = req
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    match decide(&pod, namespace, config, lock) {
        Decision::Unchanged { why, warn } => {
            let mut r = base;
            if warn {
                r.warnings = Some(vec![why.clone()]);
            }
            finish(r, why)
        }
        Decision::Deny(why) => {
            let message = format!("attestd-webhook: {why}");
            finish(answer(base.deny(&message), 403, "Forbidden"), message)
        }
        Decision::Inject {
            tee,
            patch,
            warnings,
        } => match base.clone().with_patch(patch) {
            Ok(mut r) => {
                if !warnings.is_empty() {
                    r.warnings = Some(warnings);
                }
                finish(r, format!("injected attestd and the {tee} attester"))
            }
            Err(e) => {
                let message = format!("attestd-webhook: cannot encode the patch: {e}");
                finish(answer(base.deny(&message), 500, "InternalError"), message)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Issue 29: a review that does not parse as a whole was refused with
    /// `"uid": ""`, which the API server takes for a broken webhook.
    #[test]
    fn a_review_that_does_not_parse_is_refused_with_its_uid() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"abc-123","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"EXPLODE"}}"#;
        let (out, outcome) = review(body, None, &Config::default(), &Lock::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["uid"], "abc-123", "{v}");
        assert_eq!(v["response"]["allowed"], false, "{v}");
        assert_eq!(v["response"]["status"]["code"], 400, "{v}");
        assert_eq!(outcome.uid, "abc-123");
        // No uid to be found: none to answer to.
        let (out, outcome) = review(b"{", None, &Config::default(), &Lock::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["uid"], "", "{v}");
        assert_eq!(outcome.uid, "");
    }

    /// Issue 41 (high): a review answered busy before its body arrived whole
    /// names the request it answers, from what did arrive.
    #[test]
    fn a_busy_answer_carries_the_uid_of_a_partial_body() {
        let got = br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid" : "705ab4f5-6393-11e8-b7cc-42010a800002","kind":{"gr"#;
        let (out, outcome) = busy(got, "busy".into());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["code"], 429);
        assert_eq!(v["response"]["status"]["reason"], "TooManyRequests");
        assert_eq!(outcome.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        // Cut inside the uid, no request yet, a uid that is not a token, one
        // past the bound: none taken.
        for cut in [
            &br#"{"request":{"uid":"705ab4f5"#[..],
            br#"{"kind":"AdmissionReview","uid":"x"}"#,
            br#"{"request":{"uid":"a/b"}}"#,
            br#"{"request":{"uid":"a b"}}"#,
        ] {
            assert_eq!(request_uid(cut), None, "{}", String::from_utf8_lossy(cut));
        }
        let long = format!(r#"{{"request":{{"uid":"{}"}}}}"#, "a".repeat(MAX_UID + 1));
        assert_eq!(request_uid(long.as_bytes()), None);
        let at = format!(r#"{{"request":{{"uid":"{}"}}}}"#, "a".repeat(MAX_UID));
        assert_eq!(request_uid(at.as_bytes()), Some("a".repeat(MAX_UID)));
    }

    /// Issue 41 (low): `kubectl debug` adds an ephemeral container through
    /// the `ephemeralcontainers` subresource, which was never reviewed: one
    /// could mount attestd-run. Refused now; one without our volumes passes.
    #[test]
    fn an_ephemeral_container_mounting_our_volume_is_refused() {
        let review = |mounts: &str| {
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"eph-1","kind":{{"group":"","version":"v1","kind":"Pod"}},"subResource":"ephemeralcontainers","operation":"UPDATE","namespace":"apps","object":{{"metadata":{{"name":"app"}},"spec":{{"containers":[{{"name":"app"}}],"ephemeralContainers":[{{"name":"debugger","image":"busybox","volumeMounts":[{mounts}]}}]}}}}}}}}"#
            )
        };
        let (out, outcome) = review_str(&review(
            r#"{"name":"attestd-run","mountPath":"/run/attestd"}"#,
        ));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["allowed"], false, "{v}");
        assert_eq!(v["response"]["status"]["code"], 403);
        assert!(
            outcome
                .message
                .contains("ephemeral container \"debugger\" mounts the volume \"attestd-run\""),
            "{}",
            outcome.message
        );
        let (out, _) = review_str(&review(r#"{"name":"scratch","mountPath":"/x"}"#));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["allowed"], true, "{v}");
        // The AA socket's volume: read-only passes (what the app has), writable
        // does not.
        let aa =
            r#"{"name":"attestd-aa","mountPath":"/run/confidential-containers/attestation-agent""#;
        let (out, _) = review_str(&review(&format!(r#"{aa},"readOnly":true}}"#)));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["allowed"], true, "{v}");
        let (out, outcome) = review_str(&review(&format!("{aa}}}")));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["allowed"], false, "{v}");
        assert!(
            outcome.message.contains("mounts the volume \"attestd-aa\""),
            "{}",
            outcome.message
        );
        assert_eq!(v["response"]["uid"], "eph-1");
    }

    fn review_str(body: &str) -> (Vec<u8>, Outcome) {
        review(body.as_bytes(), None, &Config::default(), &Lock::default())
    }
}
