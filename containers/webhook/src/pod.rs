//! The pod as the webhook reads it: only what deciding and patching need,
//! straight from the review's bytes. Everything else a pod holds (arguments,
//! images, probes, most of its metadata) is skipped as it is read, never
//! stored: the memory a review takes is its body and a few bytes per container,
//! whatever shape a hostile pod has (with Kubernetes' own `Pod` type, one
//! `{"name":""}` volume of 12 bytes became a 3 KiB struct).
//!
//! Lists the webhook keeps are bounded ([`MAX_CONTAINERS`]); a pod past a bound
//! is refused with the reason.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::inject::{
    AA_DIR, AA_VOLUME, ATTESTER_PREFIX, CONFIG_VOLUME, ENV_GRPC, ENV_SOCKET, RUN_VOLUME,
};

/// Containers (and, separately, init containers) a pod may have.
pub const MAX_CONTAINERS: usize = 1024;
/// Bytes of attestd's own annotations (or labels) kept: Kubernetes' limit on
/// all of a pod's annotations together.
pub const MAX_OURS_BYTES: usize = 256 << 10;

/// The annotation and label keys kept: attestd's own.
const OURS: &str = "attestd.io/";

#[derive(Debug, Default, Deserialize)]
pub struct PodView {
    #[serde(default)]
    pub metadata: Meta,
    pub spec: Option<Spec>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    pub namespace: Option<String>,
    /// Present or not, and attestd's keys (`attestd.io/…`) only.
    #[serde(default, deserialize_with = "ours_only")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "ours_only")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub runtime_class_name: Option<String>,
    pub host_network: Option<bool>,
    /// One process namespace for the pod: every container sees the others'
    /// `/proc/<pid>/root`, the attester's socket and attestd's files among them.
    pub share_process_namespace: Option<bool>,
    #[serde(rename = "hostPID")]
    pub host_pid: Option<bool>,
    #[serde(default, deserialize_with = "containers")]
    pub containers: Vec<ContainerView>,
    #[serde(default, deserialize_with = "some_containers")]
    pub init_containers: Option<Vec<ContainerView>>,
    /// `kubectl debug`'s containers, added through the `ephemeralcontainers`
    /// subresource after the pod was admitted.
    #[serde(default, deserialize_with = "some_containers")]
    pub ephemeral_containers: Option<Vec<ContainerView>>,
    /// Present or not, and the first volume named like one the webhook adds.
    #[serde(default, deserialize_with = "volumes")]
    pub volumes: Option<Names>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub name: String,
    #[serde(default, deserialize_with = "mounts")]
    pub volume_mounts: Option<Mounts>,
    #[serde(default, deserialize_with = "env")]
    pub env: Option<Env>,
}

/// A list of named things, of which only the first named like ours is kept.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub ours: Option<String>,
}

/// A container's volume mounts: whether one is at the AA socket's directory,
/// and the first that mounts a volume of ours by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    pub at_aa_dir: bool,
    pub of_ours: Option<String>,
    /// The first of ours mounted other than as an app container has the AA
    /// socket's: `attestd-aa`, read-only (what an ephemeral container may ask).
    pub beyond_aa: Option<String>,
}

/// A container's environment: which of the variables the webhook sets it has.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub has: Vec<&'static str>,
}

/// The volume names the webhook adds (an attester's is named as its container).
pub fn is_our_volume(name: &str) -> bool {
    [RUN_VOLUME, AA_VOLUME, CONFIG_VOLUME].contains(&name) || name.starts_with(ATTESTER_PREFIX)
}

fn ours_only<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            let mut bytes = 0usize;
            while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                if k.starts_with(OURS) {
                    let v = m.next_value::<String>()?;
                    bytes += k.len() + v.len();
                    if bytes > MAX_OURS_BYTES {
                        return Err(de::Error::custom(format!(
                            "attestd.io/ keys hold more than {MAX_OURS_BYTES} bytes (Kubernetes' limit for all annotations)"
                        )));
                    }
                    kept.insert(k.into_owned(), v);
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    d.deserialize_any(V)
}

/// A JSON list whose elements each fold into `acc` (nothing stored per element
/// unless `fold` keeps it), at most `max` of them.
fn fold_list<'de, D, T, A>(
    d: D,
    what: &'static str,
    max: usize,
    acc: A,
    fold: fn(&mut A, T),
) -> Result<Option<A>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T, A> {
        what: &'static str,
        max: usize,
        acc: A,
        fold: fn(&mut A, T),
    }
    impl<'de, T: Deserialize<'de>, A> Visitor<'de> for V<T, A> {
        type Value = Option<A>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list of {}", self.what)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<S: SeqAccess<'de>>(mut self, mut s: S) -> Result<Self::Value, S::Error> {
            let mut n = 0usize;
            while let Some(x) = s.next_element::<T>()? {
                n += 1;
                if n > self.max {
                    return Err(de::Error::custom(format!(
                        "more than {} {}",
                        self.max, self.what
                    )));
                }
                (self.fold)(&mut self.acc, x);
            }
            Ok(Some(self.acc))
        }
    }
    d.deserialize_any(V {
        what,
        max,
        acc,
        fold,
    })
}

fn some_containers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<ContainerView>>, D::Error> {
    fold_list(d, "containers", MAX_CONTAINERS, Vec::new(), Vec::push)
}

fn containers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ContainerView>, D::Error> {
    Ok(some_containers(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: String,
}

fn volumes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Names>, D::Error> {
    // Not kept, so not bounded by count: the body's size bounds them.
    fold_list(
        d,
        "volumes",
        usize::MAX,
        Names::default(),
        |acc, v: Named| {
            if acc.ours.is_none() && is_our_volume(&v.name) {
                acc.ours = Some(v.name);
            }
        },
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mount {
    #[serde(default)]
    name: String,
    #[serde(default)]
    mount_path: String,
    #[serde(default)]
    read_only: bool,
}

fn mounts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mounts>, D::Error> {
    fold_list(
        d,
        "volume mounts",
        usize::MAX,
        Mounts::default(),
        |acc, m: Mount| {
            acc.at_aa_dir |= m.mount_path.trim_end_matches('/') == AA_DIR;
            if !is_our_volume(&m.name) {
                return;
            }
            let aa_only = m.name == AA_VOLUME && m.read_only;
            if acc.beyond_aa.is_none() && !aa_only {
                acc.beyond_aa = Some(m.name.clone());
            }
            if acc.of_ours.is_none() {
                acc.of_ours = Some(m.name);
            }
        },
    )
}

fn env<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Env>, D::Error> {
    fold_list(
        d,
        "environment variables",
        usize::MAX,
        Env::default(),
        |acc, v: Named| {
            for ours in [ENV_SOCKET, ENV_GRPC] {
                if v.name == ours && !acc.has.contains(&ours) {
                    acc.has.push(ours);
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(v: serde_json::Value) -> Result<PodView, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn only_what_the_webhook_needs_is_kept() {
        let p = view(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "x", "namespace": "ns",
                "annotations": {"attestd.io/inject": "true", "big": "x".repeat(1000)},
                "labels": {"app": "a"}},
            "spec": {
                "runtimeClassName": "kata",
                "containers": [{"name": "app", "args": ["a", "b"], "image": "i",
                    "env": [{"name": "A"}, {"name": ENV_SOCKET, "value": "mine"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/d"}, {"name": RUN_VOLUME, "mountPath": "/x"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": CONFIG_VOLUME}]
            }
        }))
        .unwrap();
        let a = p.metadata.annotations.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a["attestd.io/inject"], "true");
        assert_eq!(p.metadata.labels.unwrap().len(), 0);
        let spec = p.spec.unwrap();
        assert_eq!(spec.volumes.unwrap().ours.as_deref(), Some(CONFIG_VOLUME));
        assert!(spec.init_containers.is_none());
        let c = &spec.containers[0];
        assert_eq!(c.name, "app");
        assert_eq!(c.env.as_ref().unwrap().has, [ENV_SOCKET]);
        let m = c.volume_mounts.as_ref().unwrap();
        assert!(!m.at_aa_dir);
        assert_eq!(m.of_ours.as_deref(), Some(RUN_VOLUME));
    }

    #[test]
    fn the_container_bound_is_taken_and_one_past_it_refused() {
        let list = |n: usize| {
            let c: Vec<serde_json::Value> = (0..n)
                .map(|i| serde_json::json!({"name": format!("c{i}")}))
                .collect();
            serde_json::json!({"spec": {"containers": c.clone(), "initContainers": c}})
        };
        let p = view(list(MAX_CONTAINERS)).unwrap();
        assert_eq!(p.spec.unwrap().containers.len(), MAX_CONTAINERS);
        let e = view(list(MAX_CONTAINERS + 1)).unwrap_err().to_string();
        assert!(e.starts_with("more than 1024 containers"), "{e}");
    }

    #[test]
    fn our_annotations_are_bounded_at_kubernetes_limit() {
        let key = "attestd.io/config";
        let at = "x".repeat(MAX_OURS_BYTES - key.len());
        let p = view(serde_json::json!({"metadata": {"annotations": {key: at, "other": "y".repeat(MAX_OURS_BYTES)}}}))
            .unwrap();
        assert_eq!(
            p.metadata.annotations.unwrap()[key].len(),
            MAX_OURS_BYTES - key.len()
        );
        let past = "x".repeat(MAX_OURS_BYTES - key.len() + 1);
        let e = view(serde_json::json!({"metadata": {"annotations": {key: past}}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("attestd.io/ keys hold more than 262144 bytes"),
            "{e}"
        );
    }

    #[test]
    fn wrong_shapes_are_errors_and_null_lists_are_absent() {
        assert!(view(serde_json::json!({"spec": {"containers": "x"}})).is_err());
        assert!(view(serde_json::json!({"metadata": {"annotations": ["x"]}})).is_err());
        let p =
            view(serde_json::json!({"metadata": {"annotations": null}, "spec": {"volumes": null}}))
                .unwrap();
        assert!(p.metadata.annotations.is_none());
        assert!(p.spec.unwrap().volumes.is_none());
    }
}
