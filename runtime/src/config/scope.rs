//! What the `-c` file may set, by where it comes from.
//!
//! Trust follows measurement. In a pod VM the `-c` file is `/run/peerpod/aa.toml`,
//! and it comes either from init-data (measured: its digest is bound into the
//! evidence) or from the host's user-data (unmeasured). Neither may change what
//! attestd launches; the unmeasured one may carry only upstream attestation-agent's
//! own keys, as upstream reads them. The image's configuration directory (its system
//! file and drop-ins) is the image's own and may set anything.
//!
//! | source       | may set                                                   | anything else     |
//! | ------------ | --------------------------------------------------------- | ----------------- |
//! | `operator`   | everything but `[config_file]` (the default off a pod VM) | refused           |
//! | `init-data`  | everything but what decides what runs ([`LAUNCH_KEYS`])   | refused           |
//! | `workload`   | what a pod's author chooses ([`WORKLOAD_KEYS`]): no listener, no path | refused |
//! | `user-data`  | upstream's keys only ([`UPSTREAM_KEYS`])                  | ignored, warned   |
//!
//! The source is the stricter of two: `[config_file] source` in the configuration
//! directory (the image's ceiling: the pod VM's says `init-data`), and the
//! `--config-file-source` flag (`ATTESTD_CONFIG_FILE_SOURCE`, which the pod VM's
//! first-boot step writes for attestd's unit). An unmeasured file's other keys are
//! ignored rather than refused because upstream's agent ignores keys it does not
//! know, so a drop-in deployment's `aa.toml` keeps working; a measured file that
//! asks for something it may not have is the tenant's mistake, and said at once.

use serde::{Deserialize, Serialize};

/// Where the `-c` file comes from, least trusted first.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The host's user-data: unmeasured.
    UserData,
    /// A pod's own configuration (attestd-webhook's `attestd.io/config`
    /// annotation): its author's choices, never a listener or a path.
    Workload,
    /// Init-data: measured, the tenant's word.
    InitData,
    /// The machine's operator (a host, not a pod VM).
    #[default]
    Operator,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::UserData => "user-data",
            Source::Workload => "workload",
            Source::InitData => "init-data",
            Source::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user-data" => Ok(Source::UserData),
            "workload" => Ok(Source::Workload),
            "init-data" => Ok(Source::InitData),
            "operator" => Ok(Source::Operator),
            other => Err(format!(
                "{other:?} is not a config file source: expected user-data, workload, init-data or operator"
            )),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[config_file]`: set in the configuration directory only (the image's).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFileConfig {
    /// The most the `-c` file is trusted with (the flag may only lower it).
    #[serde(default)]
    pub source: Source,
    /// Init-data given that the primary plugin cannot bind into its evidence.
    #[serde(default)]
    pub unbound_init_data: UnboundInitData,
    /// What a `-c` file from user-data is read for.
    #[serde(default)]
    pub user_data: UserDataPolicy,
}

/// What of an unmeasured (user-data) `-c` file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserDataPolicy {
    /// Upstream's keys ([`UPSTREAM_KEYS`]), as upstream's agent reads them:
    /// the KBS URL and certificate among them, which the host then chooses.
    #[default]
    UpstreamKeys,
    /// Nothing: the image's configuration and init-data decide everything.
    Ignore,
}

/// What init-data is worth when nothing binds it: nothing measures it then, so
/// it is only more host input, yet it would supply the `-c` file at the
/// init-data scope (and, in the pod VM, the Data Hub's configuration and
/// kata-agent's policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnboundInitData {
    /// attestd stops, saying why (the default: fail closed).
    #[default]
    Refuse,
    /// attestd starts again with the `-c` file read as user-data's (upstream's
    /// keys only), and the pod VM's first-boot step takes no trust files from
    /// init-data (`attestd-podvm`).
    TreatAsUserData,
}

impl UnboundInitData {
    pub fn as_str(self) -> &'static str {
        match self {
            UnboundInitData::Refuse => "refuse",
            UnboundInitData::TreatAsUserData => "treat-as-user-data",
        }
    }
}

/// The keys upstream's attestation-agent reads from its config file (its
/// `[token_configs]` and `[eventlog_config]`): all an unmeasured file may set.
/// attestd's own additions to those tables (`allow_insecure_http`,
/// `reuse_token_secs`, the event log's `path`) are not among them.
pub const UPSTREAM_KEYS: &[&str] = &[
    "token_configs.kbs.url",
    "token_configs.kbs.tee_key_algorithm",
    "token_configs.kbs.cert",
    "token_configs.coco_as.url",
    "eventlog_config.init_pcr",
    "eventlog_config.enable_eventlog",
    "eventlog_config.eventlog_algorithm",
];

/// The `[plugins]` keys a measured `-c` file may set: how long attestd waits,
/// never what it runs, where from, or what it trusts. Every other key under
/// `[plugins]` is a launch key (an allow-list, so a key added later is one).
pub const PLUGIN_TUNABLES: &[&str] = &[
    "call_timeout_ms",
    "startup_timeout_ms",
    "health_interval_ms",
    "health_timeout_ms",
    "restart_backoff_max_ms",
    "restart_wait_ms",
    "restart_stable_ms",
    "shutdown_timeout_ms",
    "pull_timeout_ms",
    "pull_attempts",
    "no_tee_settle_ms",
];

/// What a pod's author may set (dotted keys; one ending in `.` covers every
/// key under it): what token to get and from where, what to log, how long to
/// wait. Not a listener (`[keyprovider]`), not a path (`eventlog_config.path`,
/// `keyprovider.wrap_kek`), not what runs: a pod's author is not the node's.
pub const WORKLOAD_KEYS: &[&str] = &[
    "token_configs.",
    "eventlog_config.enable_eventlog",
    "eventlog_config.init_pcr",
    "eventlog_config.eventlog_algorithm",
    "log.",
];

/// A key's path, one entry per table: `"a.b" = 1` at the top is one key named
/// `a.b`, not `b` in `[a]`, so paths are compared entry by entry, never as
/// dotted text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key(Vec<String>);

impl Key {
    /// Whether it is exactly `dotted` (one of our own names: no quoted parts).
    fn is(&self, dotted: &str) -> bool {
        self.0.iter().map(String::as_str).eq(dotted.split('.'))
    }

    /// Whether it is the table `dotted` or a key in it.
    fn within(&self, dotted: &str) -> bool {
        let mut mine = self.0.iter().map(String::as_str);
        dotted.split('.').all(|d| mine.next() == Some(d))
    }

    /// Whether `dotted` is a key below this table.
    fn holds(&self, dotted: &str) -> bool {
        let mut theirs = dotted.split('.');
        self.0.iter().all(|m| theirs.next() == Some(m.as_str())) && theirs.next().is_some()
    }

    /// A `[plugins]` tunable's name, when it is one.
    fn plugin_tunable(&self) -> bool {
        matches!(self.0.as_slice(), [p, k] if p == "plugins" && PLUGIN_TUNABLES.contains(&k.as_str()))
    }

    fn child(&self, k: &str) -> Key {
        let mut v = self.0.clone();
        v.push(k.to_string());
        Key(v)
    }
}

/// As TOML writes it: dotted, a part that is not a bare key quoted.
impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            let bare = !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if bare {
                f.write_str(part)?;
            } else {
                write!(f, "{}", crate::echo::quoted(part))?;
            }
        }
        Ok(())
    }
}

/// Whether `key` is among [`WORKLOAD_KEYS`] or the [`PLUGIN_TUNABLES`].
fn workload_may_set(key: &Key) -> bool {
    WORKLOAD_KEYS.iter().any(|k| match k.strip_suffix('.') {
        Some(table) => key.within(table),
        None => key.is(k),
    }) || key.plugin_tunable()
}

/// What a `[plugins]` key that is not a tunable decides, for the refusal's words.
pub const LAUNCH_KEYS: &str = "which plugins run and how (primary, additional, \
    [plugins.attester.*]), from where (images_lock, registries, insecure_registries, \
    policy_json, registries_d, registry_certs_dir, oci_dir, podman_runtime, auto_launch, \
    socket_dir, sysroot) and dev_mode";

/// A key of the `-c` file that its source may not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Dotted key (`plugins.attester.sample.command`).
    pub key: String,
    pub why: String,
}

/// Whether `source` may set `key` (a leaf, or a table with no keys).
fn allowed(source: Source, key: &Key) -> Result<(), String> {
    if key.within("config_file") {
        return Err("[config_file] is read from the configuration directory only".into());
    }
    match source {
        Source::Operator => Ok(()),
        Source::InitData => match key.0.first().map(String::as_str) {
            Some("plugins") if key.plugin_tunable() => Ok(()),
            Some("plugins") if key.0.len() > 1 => Err(format!(
                "a -c file from init-data may not set what attestd launches ({LAUNCH_KEYS}); \
                 the image's own configuration sets those, or allows them with \
                 [config_file] source = \"operator\""
            )),
            Some("plugins") => Err("a -c file from init-data may not replace [plugins]".into()),
            _ => Ok(()),
        },
        Source::Workload => {
            if workload_may_set(key) {
                Ok(())
            } else {
                Err(
                    "a pod's configuration (attestd.io/config) may set token configs, \
                     [eventlog_config] (not its path), [log] and [plugins]' timeouts: no \
                     listener, no path and nothing that runs, which are the node's"
                        .into(),
                )
            }
        }
        Source::UserData => {
            if UPSTREAM_KEYS.iter().any(|k| key.is(k)) {
                Ok(())
            } else {
                Err(format!(
                    "user-data is unmeasured: only upstream's keys are read from it ({})",
                    UPSTREAM_KEYS.join(", ")
                ))
            }
        }
    }
}

/// Apply `source`'s rule to the `-c` file's table: keys an unmeasured file may not
/// set are removed and returned (each with the reason); a key a measured or
/// operator's file may not set is refused.
pub fn restrict(table: &mut toml::Table, source: Source) -> Result<Vec<Refused>, Refused> {
    let mut ignored = Vec::new();
    prune(table, &Key(Vec::new()), source, &mut ignored)?;
    if source == Source::InitData {
        allow_measured_plain_http(table);
    }
    Ok(ignored)
}

/// A plain-http KBS or attestation-service URL in init-data is the tenant's
/// measured choice (kata's CI and older cloud-api-adaptor releases use them,
/// in upstream's keys alone): the table gets `allow_insecure_http = true`
/// beside it, unless it says otherwise, and attestd warns of it at every start.
/// From user-data or a pod's annotation it stays refused.
fn allow_measured_plain_http(t: &mut toml::Table) {
    let Some(toml::Value::Table(tokens)) = t.get_mut("token_configs") else {
        return;
    };
    for peer in ["kbs", "coco_as"] {
        if let Some(toml::Value::Table(p)) = tokens.get_mut(peer) {
            let plain = p
                .get("url")
                .and_then(toml::Value::as_str)
                .is_some_and(|u| u.starts_with("http://"));
            if plain && !p.contains_key("allow_insecure_http") {
                p.insert("allow_insecure_http".into(), toml::Value::Boolean(true));
            }
        }
    }
}

/// Removes what `source` may not set from `t` (under dotted `prefix`); a table
/// left empty by the removal goes too, so it does not stand for a half table.
fn prune(
    t: &mut toml::Table,
    prefix: &Key,
    source: Source,
    ignored: &mut Vec<Refused>,
) -> Result<(), Refused> {
    let keys: Vec<String> = t.keys().cloned().collect();
    for k in keys {
        let key = prefix.child(&k);
        let verdict = match t.get_mut(&k) {
            Some(toml::Value::Table(sub)) if !sub.is_empty() && may_hold_allowed(source, &key) => {
                prune(sub, &key, source, ignored)?;
                if sub.is_empty() {
                    t.remove(&k);
                }
                continue;
            }
            // An empty `[plugins]` sets nothing.
            Some(toml::Value::Table(sub))
                if sub.is_empty() && key.is("plugins") && source != Source::UserData =>
            {
                continue
            }
            Some(v) => allowed(source, &key).and_then(|()| unmeasured_value(source, &key, v)),
            None => allowed(source, &key),
        };
        if let Err(why) = verdict {
            let key = key.to_string();
            if source != Source::UserData {
                return Err(Refused { key, why });
            }
            t.remove(&k);
            ignored.push(Refused { key, why });
        }
    }
    Ok(())
}

/// PCRs a TPM lets anyone at locality 0 reset: a log measured into one can be
/// replaced by another after a reset.
pub const RESETTABLE_PCRS: [i64; 2] = [16, 23];

/// What an unmeasured file may not do with a key it may set: turn the event
/// log off (the image may have turned it on), or move measurements to a PCR
/// anyone can reset.
fn unmeasured_value(source: Source, key: &Key, v: &toml::Value) -> Result<(), String> {
    if source != Source::UserData {
        return Ok(());
    }
    match v {
        toml::Value::Boolean(false) if key.is("eventlog_config.enable_eventlog") => {
            Err("user-data may turn the event log on, never off".into())
        }
        toml::Value::Integer(n)
            if key.is("eventlog_config.init_pcr") && RESETTABLE_PCRS.contains(n) =>
        {
            Err(format!(
                "user-data may not move measurements to PCR {n}, which a TPM lets anyone reset"
            ))
        }
        _ => Ok(()),
    }
}

/// Whether a table at `key` may hold a key `source` may set (else it is judged
/// whole, and named once).
fn may_hold_allowed(source: Source, key: &Key) -> bool {
    match source {
        Source::UserData => UPSTREAM_KEYS.iter().any(|k| key.holds(k)),
        // A refusal names the first key it meets below.
        Source::Workload | Source::InitData | Source::Operator => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    fn dotted(s: &str) -> Key {
        Key(s.split('.').map(str::to_string).collect())
    }

    /// Issue 41 (low): `"a.b" = 1` is one key named `a.b`; judged as dotted
    /// text it passed for `b` in `[a]` (an upstream key from user-data, a
    /// workload's token config) and reached the parser as a key of its own.
    #[test]
    fn a_quoted_key_with_dots_is_one_key_not_a_path() {
        let mut t = table(
            "\"token_configs.kbs.url\" = \"http://evil\"\n[token_configs.kbs]\nurl = \"https://kbs\"\n",
        );
        let ignored = restrict(&mut t, Source::UserData).unwrap();
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert_eq!(ignored[0].key, "\"token_configs.kbs.url\"");
        assert_eq!(t, table("[token_configs.kbs]\nurl = \"https://kbs\"\n"));
        for (text, key) in [
            ("\"log.level\" = \"trace\"\n", "\"log.level\""),
            (
                "[plugins]\n\"startup_timeout_ms.x\" = 1\n",
                "plugins.\"startup_timeout_ms.x\"",
            ),
        ] {
            let e = restrict(&mut table(text), Source::Workload).unwrap_err();
            assert_eq!(e.key, key, "{text}");
        }
        // Written unquoted, the same keys are what they say.
        let mut t = table("[log]\nlevel = \"trace\"\n[plugins]\nstartup_timeout_ms = 1\n");
        restrict(&mut t, Source::Workload).unwrap();
    }

    const HOSTILE: &str = r#"
[token_configs.kbs]
url = "http://10.0.2.2:8080"
cert = "PEM"
allow_insecure_http = true

[eventlog_config]
enable_eventlog = true
path = "/etc/shadow"

[log]
level = "trace"

[plugins]
dev_mode = true
call_timeout_ms = 1

[plugins.attester.sample]
launch = "process"
command = "/bin/sh"
transport = "ttrpc"

[keyprovider]
grpc = "0.0.0.0:50000"
"#;

    #[test]
    fn user_data_keeps_upstream_keys_only_and_names_each_one_it_ignores() {
        let mut t = table(HOSTILE);
        let ignored = restrict(&mut t, Source::UserData).unwrap();
        assert_eq!(
            toml::to_string(&t).unwrap(),
            "[eventlog_config]\nenable_eventlog = true\n\n\
             [token_configs.kbs]\ncert = \"PEM\"\nurl = \"http://10.0.2.2:8080\"\n"
        );
        let keys: Vec<&str> = ignored.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "eventlog_config.path",
                "keyprovider",
                "log",
                "plugins",
                "token_configs.kbs.allow_insecure_http"
            ]
        );
        assert!(ignored[0].why.starts_with("user-data is unmeasured: only upstream's keys are read from it (token_configs.kbs.url, "), "{}", ignored[0].why);
    }

    /// Issue 39 (medium): a plain-http KBS in init-data (upstream's keys only,
    /// as kata's CI writes it) stopped attestd; it is the tenant's measured
    /// choice, allowed (and warned of at start). From user-data it is not.
    #[test]
    fn a_plain_http_kbs_is_allowed_from_init_data_only() {
        let text = "[token_configs.kbs]\nurl = \"http://kbs.example:8080\"\n[token_configs.coco_as]\nurl = \"http://as.example\"\n";
        let mut t = table(text);
        restrict(&mut t, Source::InitData).unwrap();
        assert_eq!(
            t["token_configs"]["kbs"]["allow_insecure_http"].as_bool(),
            Some(true)
        );
        assert_eq!(
            t["token_configs"]["coco_as"]["allow_insecure_http"].as_bool(),
            Some(true)
        );
        // Its own word wins.
        let mut t =
            table("[token_configs.kbs]\nurl = \"http://kbs\"\nallow_insecure_http = false\n");
        restrict(&mut t, Source::InitData).unwrap();
        assert_eq!(
            t["token_configs"]["kbs"]["allow_insecure_http"].as_bool(),
            Some(false)
        );
        // https needs nothing.
        let mut t = table("[token_configs.kbs]\nurl = \"https://kbs\"\n");
        restrict(&mut t, Source::InitData).unwrap();
        assert!(t["token_configs"]["kbs"]
            .get("allow_insecure_http")
            .is_none());
        for source in [Source::UserData, Source::Workload, Source::Operator] {
            let mut t = table(text);
            restrict(&mut t, source).unwrap();
            assert!(
                t["token_configs"]["kbs"]
                    .get("allow_insecure_http")
                    .is_none(),
                "{source}"
            );
        }
    }

    /// Issue 38 (medium): unmeasured user-data turned the event log off or
    /// moved it to a PCR anyone may reset.
    #[test]
    fn user_data_may_turn_the_event_log_on_but_not_off_nor_move_it_to_a_resettable_pcr() {
        let mut on = table("[eventlog_config]\nenable_eventlog = true\ninit_pcr = 17\n");
        let before = on.clone();
        assert_eq!(restrict(&mut on, Source::UserData).unwrap(), []);
        assert_eq!(on, before);
        for (text, key, why) in [
            (
                "[eventlog_config]\nenable_eventlog = false\n",
                "eventlog_config.enable_eventlog",
                "user-data may turn the event log on, never off",
            ),
            (
                "[eventlog_config]\ninit_pcr = 23\n",
                "eventlog_config.init_pcr",
                "user-data may not move measurements to PCR 23, which a TPM lets anyone reset",
            ),
            (
                "[eventlog_config]\ninit_pcr = 16\n",
                "eventlog_config.init_pcr",
                "user-data may not move measurements to PCR 16, which a TPM lets anyone reset",
            ),
        ] {
            let mut t = table(text);
            let ignored = restrict(&mut t, Source::UserData).unwrap();
            assert_eq!(
                ignored,
                [Refused {
                    key: key.into(),
                    why: why.into()
                }]
            );
            assert!(t.is_empty(), "{text}");
            // A measured file is the tenant's word.
            let mut t = table(text);
            assert_eq!(restrict(&mut t, Source::InitData).unwrap(), []);
        }
    }

    #[test]
    fn a_user_data_table_left_empty_goes_with_its_keys() {
        let mut t = table("[token_configs.kbs]\nreuse_token_secs = 60\n[token_configs.coco_as]\nurl = \"https://as\"\n");
        let ignored = restrict(&mut t, Source::UserData).unwrap();
        assert_eq!(
            toml::to_string(&t).unwrap(),
            "[token_configs.coco_as]\nurl = \"https://as\"\n"
        );
        assert_eq!(ignored[0].key, "token_configs.kbs.reuse_token_secs");
    }

    #[test]
    fn init_data_may_tune_but_not_launch() {
        let mut ok = table("[plugins]\ncall_timeout_ms = 9000\n[log]\nlevel = \"debug\"\n[keyprovider]\nttrpc = \"unix:///run/kp.sock\"\n[token_configs.kbs]\nurl = \"https://kbs\"\nreuse_token_secs = 60\n");
        let before = ok.clone();
        assert_eq!(restrict(&mut ok, Source::InitData).unwrap(), []);
        assert_eq!(ok, before);
        for (text, key) in [
            (
                "[plugins.attester.sample]\ncommand = \"/bin/sh\"\n",
                "plugins.attester.sample.command",
            ),
            ("[plugins]\ndev_mode = true\n", "plugins.dev_mode"),
            (
                "[plugins]\npolicy_json = \"/tmp/p.json\"\n",
                "plugins.policy_json",
            ),
            ("[plugins]\nprimary = \"sample\"\n", "plugins.primary"),
            ("[plugins.attester.x]\n", "plugins.attester.x"),
            ("plugins = 1\n", "plugins"),
            (
                "[config_file]\nsource = \"operator\"\n",
                "config_file.source",
            ),
        ] {
            let e = restrict(&mut table(text), Source::InitData).unwrap_err();
            assert_eq!(e.key, key, "{text}");
        }
        let e = restrict(
            &mut table("[plugins]\nsysroot = \"/x\"\n"),
            Source::InitData,
        )
        .unwrap_err();
        assert!(e.why.starts_with("a -c file from init-data may not set what attestd launches (which plugins run and how"), "{}", e.why);
        assert!(
            e.why
                .ends_with("or allows them with [config_file] source = \"operator\""),
            "{}",
            e.why
        );
    }

    /// Issue 38 (medium): a pod's annotation was read at the init-data scope,
    /// which allows listeners and paths (`[keyprovider] grpc = "0.0.0.0:50000"`
    /// was served). The workload scope allows its author's choices only.
    #[test]
    fn a_workload_may_choose_its_tokens_but_open_no_listener_and_name_no_path() {
        let mut ok = table("[plugins]\ncall_timeout_ms = 9000\n[log]\nlevel = \"debug\"\nformat = \"json\"\n[eventlog_config]\nenable_eventlog = true\ninit_pcr = 17\n[token_configs.kbs]\nurl = \"https://kbs\"\ncert = \"PEM\"\nreuse_token_secs = 60\n[token_configs.coco_as]\nurl = \"https://as\"\n");
        let before = ok.clone();
        assert_eq!(restrict(&mut ok, Source::Workload).unwrap(), []);
        assert_eq!(ok, before);
        for (text, key) in [
            (
                "[keyprovider]\ngrpc = \"0.0.0.0:50000\"\n",
                "keyprovider.grpc",
            ),
            (
                "[keyprovider]\nttrpc = \"unix:///run/kp.sock\"\n",
                "keyprovider.ttrpc",
            ),
            (
                "[keyprovider]\nwrap_kek = \"/etc/shadow\"\n",
                "keyprovider.wrap_kek",
            ),
            (
                "[eventlog_config]\npath = \"/etc/shadow\"\n",
                "eventlog_config.path",
            ),
            ("[plugins]\nprimary = \"sample\"\n", "plugins.primary"),
            (
                "[plugins.attester.x]\ncommand = \"/bin/sh\"\n",
                "plugins.attester.x.command",
            ),
            (
                "[config_file]\nsource = \"operator\"\n",
                "config_file.source",
            ),
        ] {
            let e = restrict(&mut table(text), Source::Workload).unwrap_err();
            assert_eq!(e.key, key, "{text}");
        }
        let e = restrict(&mut table(HOSTILE), Source::Workload).unwrap_err();
        assert!(
            e.why
                .starts_with("a pod's configuration (attestd.io/config) may set token configs"),
            "{}",
            e.why
        );
    }

    #[test]
    fn every_plugins_key_but_the_tunables_is_a_launch_key() {
        // Every key PluginsConfig has (serialized, its optional ones set): a key
        // added later is refused from init-data until it is listed as a tunable,
        // and the count below makes whoever adds one look here.
        let every = super::super::PluginsConfig {
            primary: Some("x".into()),
            podman_runtime: Some("runc".into()),
            registry_certs_dir: Some("/x".into()),
            policy_json: Some("/x".into()),
            registries_d: Some("/x".into()),
            ..Default::default()
        };
        let all = toml::Value::try_from(every).unwrap();
        let keys: Vec<&String> = all.as_table().unwrap().keys().collect();
        assert_eq!(keys.len(), 26, "{keys:?}");
        for k in keys {
            let verdict = allowed(Source::InitData, &dotted(&format!("plugins.{k}")));
            assert_eq!(
                verdict.is_ok(),
                PLUGIN_TUNABLES.contains(&k.as_str()),
                "{k}"
            );
        }
        for must in [
            "command", "args", "launch", "devices", "env", "image", "socket", "probe",
        ] {
            assert!(allowed(
                Source::InitData,
                &dotted(&format!("plugins.attester.x.{must}"))
            )
            .is_err());
        }
    }

    #[test]
    fn an_operators_file_may_set_anything_but_the_ceiling() {
        let mut t = table(HOSTILE);
        assert_eq!(restrict(&mut t, Source::Operator).unwrap(), []);
        let e = restrict(
            &mut table("[config_file]\nsource = \"operator\"\n"),
            Source::Operator,
        )
        .unwrap_err();
        assert_eq!(
            e.why,
            "[config_file] is read from the configuration directory only"
        );
    }

    #[test]
    fn sources_order_from_least_trusted_and_parse_as_written() {
        let all = [
            Source::UserData,
            Source::Workload,
            Source::InitData,
            Source::Operator,
        ];
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        for s in all {
            assert_eq!(s.as_str().parse::<Source>().unwrap(), s);
        }
        assert_eq!(
            "host".parse::<Source>().unwrap_err(),
            "\"host\" is not a config file source: expected user-data, workload, init-data or operator"
        );
    }
}
