//! Where the configuration comes from in a pod VM: the image's system file and
//! drop-ins (plugins, images, launch), then the `-c` file (upstream's `aa.toml`,
//! from init-data or user-data: `[token_configs]` and friends), merged key by
//! key. Later layers win:
//!
//! 1. built-in defaults;
//! 2. `<config_dir>/attestd.toml` (the image's; optional);
//! 3. `<config_dir>/attestd.toml.d/*.toml`, in lexical order (optional; the
//!    image's or an operator's), then the drop-in given inline (`--drop-in`,
//!    `ATTESTD_DROP_IN`: by whoever fixes attestd's command line, as
//!    attestd-webhook does in a pod's container spec, which no one can change
//!    after admission);
//! 4. the `-c` file (required when given), restricted by where it comes from
//!    ([`super::scope`]: the image's `[config_file] source` and the
//!    `--config-file-source` flag, the stricter of the two). A `-c` file that is
//!    one of the files above (the system file, say) is not read a second time.
//!
//! Tables merge recursively; any other value (arrays too) is replaced whole. Every
//! leaf remembers the file it came from, for `attestd config` and for errors,
//! which name the file and the line of the offending key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::scope::{self, Refused, Source};
use super::{Config, ConfigError};

/// The image's configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/attestd";
/// The system file, in the configuration directory.
pub const SYSTEM_FILE: &str = "attestd.toml";
/// The drop-in directory, in the configuration directory.
pub const DROP_IN_DIR: &str = "attestd.toml.d";
/// Drop-ins read at most (a directory full of files is a mistake, not a config).
pub const MAX_DROP_INS: usize = 256;
/// How the inline drop-in is named where a file's path would be (`attestd
/// config`, errors).
pub const INLINE_DROP_IN: &str = "(--drop-in)";
/// The inline drop-in's bytes at most (the webhook's is well under 4 KiB).
pub const MAX_INLINE_DROP_IN_BYTES: usize = 64 << 10;

/// A configuration and where each of its keys came from.
#[derive(Debug, Clone)]
pub struct Layered {
    pub config: Config,
    /// Dotted key (`plugins.attester.tdx.image`) → the file that set it. Keys
    /// absent here have their default.
    pub origins: BTreeMap<String, PathBuf>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Where the `-c` file was taken to come from, when one was read.
    pub cli_source: Option<Source>,
    /// The `-c` file's keys left out because its source may not set them
    /// (user-data's), each with the reason: attestd warns of each at start.
    pub ignored: Vec<Refused>,
}

impl Layered {
    /// The effective configuration, every key with its value and the file it
    /// came from ("default" for built-in values): `attestd config`.
    pub fn render(&self, json: bool) -> Result<String, ConfigError> {
        let value = toml::Value::try_from(&self.config)
            .map_err(|e| super::invalid("(effective config)", e.to_string()))?;
        let mut rows = Vec::new();
        leaves(&value, "", &mut rows);
        let origin = |k: &str| match self.origins.get(k) {
            Some(p) => p.display().to_string(),
            None => "default".to_string(),
        };
        if json {
            let keys: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .map(|(k, v)| {
                    let v = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
                    (
                        k.clone(),
                        serde_json::json!({ "value": v, "from": origin(k) }),
                    )
                })
                .collect();
            let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
            let ignored: Vec<serde_json::Value> = self
                .ignored
                .iter()
                .map(|r| serde_json::json!({ "key": r.key, "why": r.why }))
                .collect();
            let doc = serde_json::json!({
                "files": files,
                "keys": keys,
                "config_file_source": self.cli_source.map(Source::as_str),
                "ignored": ignored,
            });
            return serde_json::to_string_pretty(&doc)
                .map_err(|e| super::invalid("(effective config)", e.to_string()));
        }
        let mut out = String::new();
        for (k, v) in &rows {
            out.push_str(&format!("{k} = {v}    # {}\n", origin(k)));
        }
        if let (Some(source), Some(cli)) = (self.cli_source, self.files.last()) {
            out.push_str(&format!("# {} is read as from {source}\n", cli.display()));
        }
        for r in &self.ignored {
            out.push_str(&format!(
                "# ignored: {}: {}\n",
                crate::echo::escaped(&r.key),
                r.why
            ));
        }
        Ok(out)
    }
}

/// Every leaf of `v` (arrays are leaves) as (dotted key, value).
fn leaves(v: &toml::Value, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &key, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// The files to read: the configuration directory's, then the `-c` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// The system file and drop-ins that exist, in order.
    pub dir: Vec<PathBuf>,
    /// The drop-in given inline, read after `dir`'s and trusted as they are.
    pub inline: Option<String>,
    /// The `-c` file, unless it is one of `dir` (then read once, as that).
    pub cli: Option<PathBuf>,
}

impl Sources {
    /// These sources with `text` as the inline drop-in (none when `None`).
    pub fn with_inline(mut self, text: Option<String>) -> Result<Sources, ConfigError> {
        if let Some(t) = &text {
            if t.len() > MAX_INLINE_DROP_IN_BYTES {
                return Err(super::invalid(
                    INLINE_DROP_IN,
                    format!("{} bytes, more than {MAX_INLINE_DROP_IN_BYTES}", t.len()),
                ));
            }
        }
        self.inline = text;
        Ok(self)
    }
}

/// The files to read, in order: the system file and drop-ins of `config_dir`
/// when they exist, then `cli` (which must).
pub fn sources(config_dir: &Path, cli: Option<&Path>) -> Result<Sources, ConfigError> {
    let mut files = Vec::new();
    let system = config_dir.join(SYSTEM_FILE);
    if exists(&system)? {
        files.push(system);
    }
    let dir = config_dir.join(DROP_IN_DIR);
    if exists(&dir)? {
        let read = |source| ConfigError::Read {
            path: dir.clone(),
            source,
        };
        let mut drop_ins = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(read)? {
            let p = e.map_err(read)?.path();
            // Editors' backups and disabled files (`x.toml.off`) are not read.
            if p.extension().is_some_and(|x| x == "toml") && !p.is_dir() {
                drop_ins.push(p);
            }
        }
        if drop_ins.len() > MAX_DROP_INS {
            return Err(super::invalid(
                dir.display().to_string(),
                format!("{} drop-ins, more than {MAX_DROP_INS}", drop_ins.len()),
            ));
        }
        drop_ins.sort();
        files.extend(drop_ins);
    }
    // Read twice, the system file's second read would win over every drop-in.
    let cli = match cli {
        Some(c) if files.iter().any(|f| same_file(f, c)) => None,
        c => c.map(Path::to_path_buf),
    };
    Ok(Sources {
        dir: files,
        inline: None,
        cli,
    })
}

/// Whether `a` and `b` are one file (by device and inode; a path that does not
/// read is no file).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn exists(p: &Path) -> Result<bool, ConfigError> {
    match std::fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ConfigError::Read {
            path: p.to_path_buf(),
            source,
        }),
    }
}

/// Read `sources` in order, merge them (the `-c` file as from `source`, or from
/// what the directory's `[config_file] source` allows, whichever is stricter),
/// and validate the result.
pub fn load(sources: &Sources, source: Source) -> Result<Layered, ConfigError> {
    let read = |f: &PathBuf| {
        std::fs::read_to_string(f).map_err(|e| ConfigError::Read {
            path: f.clone(),
            source: e,
        })
    };
    let mut texts = Vec::new();
    for f in &sources.dir {
        texts.push((f.clone(), read(f)?));
    }
    if let Some(t) = &sources.inline {
        texts.push((PathBuf::from(INLINE_DROP_IN), t.clone()));
    }
    let cli = match &sources.cli {
        Some(f) => Some((f.clone(), read(f)?)),
        None => None,
    };
    let dir: Vec<(PathBuf, &str)> = texts.iter().map(|(p, t)| (p.clone(), t.as_str())).collect();
    let cli = cli.as_ref().map(|(p, t)| (p.clone(), t.as_str()));
    merge_texts(&dir, cli, source)
}

/// [`load`] on texts already read (tests, fuzzing): the directory's files, then
/// the `-c` file.
pub fn merge_texts(
    dir: &[(PathBuf, &str)],
    cli: Option<(PathBuf, &str)>,
    source: Source,
) -> Result<Layered, ConfigError> {
    let parse = |path: &PathBuf, text: &str| {
        toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            source: Box::new(e),
        })
    };
    let mut merged = toml::Table::new();
    let mut origins = BTreeMap::new();
    for (path, text) in dir {
        merge(&mut merged, parse(path, text)?, "", path, &mut origins);
    }
    let mut texts = dir.to_vec();
    let mut ignored = Vec::new();
    let mut cli_source = None;
    if let Some((path, text)) = cli {
        let source = source.min(ceiling(&merged));
        let mut table = parse(&path, text)?;
        if source == Source::UserData && ignores_user_data(&merged) {
            // The image wants none of the host's words, upstream's keys included.
            table.clear();
            ignored.push(scope::Refused {
                key: "(every key)".into(),
                why: "the image's configuration ignores user-data ([config_file] user_data = \"ignore\")".into(),
            });
        }
        ignored.extend(
            scope::restrict(&mut table, source).map_err(|r| ConfigError::InFile {
                line: line_of(text, &r.key),
                path: path.clone(),
                key: r.key,
                message: r.why,
            })?,
        );
        merge(&mut merged, table, "", &path, &mut origins);
        cli_source = Some(source);
        texts.push((path, text));
    }
    let config: Config = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| located(&e, &texts, &origins))?;
    config.validate().map_err(|e| match e {
        ConfigError::Invalid { key, message } => {
            placed(&key, key.clone(), message, &texts, &origins)
        }
        other => other,
    })?;
    Ok(Layered {
        config,
        origins,
        files: texts.iter().map(|(p, _)| p.clone()).collect(),
        cli_source,
        ignored,
    })
}

/// The directory's `[config_file] source`: the most a `-c` file may be trusted
/// with. One that does not parse allows the least (and fails validation after).
fn ceiling(dir: &toml::Table) -> Source {
    match dir.get("config_file").and_then(|t| t.get("source")) {
        None => Source::Operator,
        Some(v) => v
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(Source::UserData),
    }
}

/// Whether the directory's `[config_file] user_data` says to read nothing of a
/// `-c` file from user-data.
fn ignores_user_data(dir: &toml::Table) -> bool {
    dir.get("config_file")
        .and_then(|t| t.get("user_data"))
        .and_then(|v| v.as_str())
        == Some("ignore")
}

/// `from` into `into`, key by key; leaves remember `path`.
fn merge(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    path: &Path,
    origins: &mut BTreeMap<String, PathBuf>,
) {
    for (k, v) in from {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => {
                merge(old, new, &key, path, origins);
            }
            (_, v) => {
                // A whole subtree replaced: its old leaves' origins go with it.
                let below = format!("{key}.");
                origins.retain(|o, _| !o.starts_with(&below));
                if let toml::Value::Table(t) = &v {
                    record(t, &key, path, origins);
                } else {
                    origins.insert(key, path.to_path_buf());
                }
                into.insert(k, v);
            }
        }
    }
}

fn record(t: &toml::Table, prefix: &str, path: &Path, origins: &mut BTreeMap<String, PathBuf>) {
    if t.is_empty() {
        origins.insert(prefix.to_string(), path.to_path_buf());
    }
    for (k, v) in t {
        let key = format!("{prefix}.{k}");
        match v {
            toml::Value::Table(sub) => record(sub, &key, path, origins),
            _ => {
                origins.insert(key, path.to_path_buf());
            }
        }
    }
}

/// The file that set `key` or, for a key no file set, the file that set the
/// closest key under it or above it.
fn origin_of(key: &str, origins: &BTreeMap<String, PathBuf>) -> Option<PathBuf> {
    if let Some(p) = origins.get(key) {
        return Some(p.clone());
    }
    let below = format!("{key}.");
    if let Some((_, p)) = origins
        .range(below.clone()..)
        .find(|(k, _)| k.starts_with(&below))
    {
        return Some(p.clone());
    }
    let mut k = key;
    while let Some((up, _)) = k.rsplit_once('.') {
        if let Some(p) = origins.get(up) {
            return Some(p.clone());
        }
        k = up;
    }
    None
}

/// A serde error on the merged table, placed in the file and on the line of
/// the key it is about (toml says which key: "… in `plugins.attester.x`").
fn located(
    e: &toml::de::Error,
    texts: &[(PathBuf, &str)],
    origins: &BTreeMap<String, PathBuf>,
) -> ConfigError {
    let full = e.to_string().trim().to_string();
    let (message, at) = match full.rsplit_once("\nin `") {
        Some((m, k)) => (m.trim().to_string(), k.trim_end_matches('`').to_string()),
        None => (full.clone(), String::new()),
    };
    // An unknown field is named in the message, one level below `at`.
    let key = match message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        Some((field, _)) if at.is_empty() => field.to_string(),
        Some((field, _)) => format!("{at}.{field}"),
        None => at.clone(),
    };
    let key_shown = if key.is_empty() {
        "(top level)".to_string()
    } else {
        key.clone()
    };
    placed(&key, key_shown, message, texts, origins)
}

/// An error about dotted `key` (shown as `shown`), in the file that set it and on
/// its line there; plain `Invalid` when no file did.
fn placed(
    key: &str,
    shown: String,
    message: String,
    texts: &[(PathBuf, &str)],
    origins: &BTreeMap<String, PathBuf>,
) -> ConfigError {
    match origin_of(key, origins).and_then(|p| texts.iter().find(|(q, _)| *q == p)) {
        Some((path, text)) => ConfigError::InFile {
            path: path.clone(),
            line: line_of(text, key),
            key: shown,
            message,
        },
        None => super::invalid(shown, message),
    }
}

/// The 1-based line of dotted `key` in TOML `text`, or of its closest parent.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = text.parse::<toml_edit::ImDocument<String>>().ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in key.split('.') {
        // `additional[0]`-style keys: the array's own line is close enough.
        let name = part.split('[').next().unwrap_or(part);
        let Some(table) = item.as_table_like() else {
            break;
        };
        let Some((k, v)) = table.get_key_value(name) else {
            break;
        };
        span = k.span().or_else(|| v.span()).or(span);
        item = v;
    }
    let start = span?.start;
    Some(text[..start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layered(files: &[(&str, &str)]) -> Result<Layered, ConfigError> {
        layered_as(files, Source::Operator)
    }

    /// The directory's files, and a last one named `/run/aa.toml` as the `-c`
    /// file, from `source`.
    fn layered_as(files: &[(&str, &str)], source: Source) -> Result<Layered, ConfigError> {
        let (dir, cli) = match files.split_last() {
            Some(((p, t), rest)) if *p == "/run/aa.toml" => (rest, Some((PathBuf::from(p), *t))),
            _ => (files, None),
        };
        let dir: Vec<(PathBuf, &str)> = dir.iter().map(|(p, t)| (PathBuf::from(p), *t)).collect();
        merge_texts(&dir, cli, source)
    }

    const IMAGE: &str = r#"
[plugins]
primary = "tdx"
socket_dir = "/run/attestd/plugins"

[plugins.attester.tdx]
launch = "podman"
image = "localhost/attestd/attester-tdx@sha256:1111111111111111111111111111111111111111111111111111111111111111"
transport = "ttrpc"
"#;

    #[test]
    fn later_files_win_key_by_key_and_each_key_knows_its_file() {
        let drop_in = r#"
[plugins.attester.tdx]
image = "localhost/attestd/attester-tdx@sha256:2222222222222222222222222222222222222222222222222222222222222222"
"#;
        let aa = "[token_configs.kbs]\nurl = \"https://kbs.example:8080\"\n";
        let l = layered(&[
            ("/etc/attestd/attestd.toml", IMAGE),
            ("/etc/attestd/attestd.toml.d/50-pin.toml", drop_in),
            ("/run/aa.toml", aa),
        ])
        .unwrap();
        let tdx = &l.config.plugins.attester["tdx"];
        assert!(tdx.image.as_deref().unwrap().ends_with("2222"));
        assert_eq!(tdx.transport, attester_sdk::Transport::Ttrpc);
        assert_eq!(
            l.config.token_configs.kbs.as_ref().unwrap().url,
            "https://kbs.example:8080"
        );
        let from = |k: &str| l.origins[k].display().to_string();
        assert_eq!(
            from("plugins.attester.tdx.image"),
            "/etc/attestd/attestd.toml.d/50-pin.toml"
        );
        assert_eq!(
            from("plugins.attester.tdx.launch"),
            "/etc/attestd/attestd.toml"
        );
        assert_eq!(from("token_configs.kbs.url"), "/run/aa.toml");
        assert!(!l.origins.contains_key("plugins.call_timeout_ms"));
    }

    #[test]
    fn a_malformed_drop_in_names_its_file_and_line() {
        let e = layered(&[
            ("/etc/attestd/attestd.toml", IMAGE),
            (
                "/etc/attestd/attestd.toml.d/10-bad.toml",
                "[plugins]\n\nprimary = \n",
            ),
        ])
        .unwrap_err();
        let s = format!("{}: {}", e, std::error::Error::source(&e).unwrap());
        assert!(
            s.starts_with("invalid config file /etc/attestd/attestd.toml.d/10-bad.toml"),
            "{s}"
        );
        assert!(s.contains("line 3"), "{s}");
    }

    #[test]
    fn an_unknown_key_in_a_drop_in_names_its_file_and_line() {
        let e = layered(&[
            ("/etc/attestd/attestd.toml", IMAGE),
            (
                "/etc/attestd/attestd.toml.d/20-x.toml",
                "[plugins.attester.tdx]\n\nimgae = \"x\"\n",
            ),
        ])
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("invalid config: /etc/attestd/attestd.toml.d/20-x.toml, line 3: plugins.attester.tdx.imgae: unknown field `imgae`, expected one of `launch`"),
            "{s}"
        );
    }

    #[test]
    fn a_wrong_type_is_placed_in_the_file_that_set_it() {
        let e = layered(&[
            ("/etc/attestd/attestd.toml", IMAGE),
            ("/run/aa.toml", "[plugins]\ncall_timeout_ms = \"soon\"\n"),
        ])
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with(
                "invalid config: /run/aa.toml, line 2: plugins.call_timeout_ms: invalid type"
            ),
            "{s}"
        );
    }

    #[test]
    fn a_validation_error_names_the_file_that_set_the_key() {
        let e = layered(&[
            ("/etc/attestd/attestd.toml", IMAGE),
            ("/run/aa.toml", "[plugins]\nprimary = \"snp\"\n"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config: /run/aa.toml, line 2: plugins.primary: \"snp\" has no [plugins.attester.snp] table"
        );
    }

    #[test]
    fn the_effective_config_names_each_keys_file_or_default() {
        let aa = "[token_configs.kbs]\nurl = \"https://kbs.example:8080\"\n";
        let l = layered(&[("/etc/attestd/attestd.toml", IMAGE), ("/run/aa.toml", aa)]).unwrap();
        let text = l.render(false).unwrap();
        assert!(
            text.contains(
                "token_configs.kbs.url = \"https://kbs.example:8080\"    # /run/aa.toml\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("plugins.primary = \"tdx\"    # /etc/attestd/attestd.toml\n"),
            "{text}"
        );
        assert!(
            text.contains("plugins.call_timeout_ms = 50000    # default\n"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&l.render(true).unwrap()).unwrap();
        assert_eq!(
            json["keys"]["plugins.attester.tdx.launch"]["value"],
            "podman"
        );
        assert_eq!(
            json["keys"]["plugins.attester.tdx.launch"]["from"],
            "/etc/attestd/attestd.toml"
        );
        assert_eq!(json["keys"]["log.level"]["from"], "default");
        assert_eq!(json["files"][1], "/run/aa.toml");
    }

    #[test]
    fn sources_are_the_system_file_drop_ins_in_lexical_order_then_the_cli_file() {
        let d = tempfile::tempdir().unwrap();
        let none = sources(d.path(), None).unwrap();
        assert_eq!(none, Sources::default());
        std::fs::write(d.path().join(SYSTEM_FILE), "").unwrap();
        let dir = d.path().join(DROP_IN_DIR);
        std::fs::create_dir(&dir).unwrap();
        for f in ["20-b.toml", "10-a.toml", "30-c.toml.off", "README"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let got = sources(d.path(), Some(Path::new("/run/aa.toml"))).unwrap();
        assert_eq!(got.cli.as_deref(), Some(Path::new("/run/aa.toml")));
        let names: Vec<String> = got
            .dir
            .iter()
            .chain(&got.cli)
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["attestd.toml", "10-a.toml", "20-b.toml", "aa.toml"]);
    }

    #[test]
    fn the_inline_drop_in_comes_after_the_directorys_and_is_trusted_as_they_are() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(DROP_IN_DIR);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("10-image.toml"), IMAGE).unwrap();
        // What a tenant's (init-data) -c file may not set, the inline one may.
        let inline = "[plugins]\nprimary = \"x\"\nsocket_dir = \"/run/attestd/core\"\n\n\
                      [plugins.attester.x]\nlaunch = \"external\"\nsocket = \"/run/attestd/x/x.sock\"\ntransport = \"ttrpc\"\n";
        let cli = d.path().join("aa.toml");
        std::fs::write(&cli, "[plugins]\nprimary = \"tdx\"\n").unwrap();
        let files = sources(d.path(), Some(&cli))
            .unwrap()
            .with_inline(Some(inline.into()))
            .unwrap();
        let e = load(&files, Source::InitData).unwrap_err().to_string();
        assert!(
            e.contains("aa.toml") && e.contains("plugins.primary"),
            "{e}"
        );
        std::fs::write(&cli, "[token_configs.kbs]\nurl = \"https://kbs\"\n").unwrap();
        let l = load(&files, Source::InitData).unwrap();
        assert_eq!(l.config.plugins.primary.as_deref(), Some("x"));
        assert_eq!(l.origins["plugins.primary"], Path::new(INLINE_DROP_IN));
        // The directory's tdx table is still there; the inline one came after it.
        assert!(l.config.plugins.attester.contains_key("tdx"));
        let names: Vec<String> = l.files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names[1], INLINE_DROP_IN, "{names:?}");
        // At the bound, and past it.
        let at = format!(
            "{inline}#{}",
            "x".repeat(MAX_INLINE_DROP_IN_BYTES - inline.len() - 1)
        );
        assert!(Sources::default().with_inline(Some(at.clone())).is_ok());
        let e = Sources::default()
            .with_inline(Some(format!("{at}x")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("65537 bytes, more than 65536"), "{e}");
    }

    /// Issue 38 (medium): an image may take nothing from user-data, not even
    /// upstream's keys (the KBS URL and certificate among them).
    #[test]
    fn an_image_may_ignore_user_data_entirely() {
        let aa = "[token_configs.kbs]\nurl = \"https://host.example\"\ncert = \"PEM\"\n";
        let image = "[config_file]\nsource = \"init-data\"\nuser_data = \"ignore\"\n";
        let l = layered_as(
            &[("/etc/attestd/attestd.toml", image), ("/run/aa.toml", aa)],
            Source::UserData,
        )
        .unwrap();
        assert!(l.config.token_configs.kbs.is_none());
        assert_eq!(l.ignored.len(), 1);
        assert_eq!(l.ignored[0].key, "(every key)");
        assert!(l.ignored[0].why.contains("user_data = \"ignore\""));
        // Init-data's file is still read.
        let l = layered_as(
            &[("/etc/attestd/attestd.toml", image), ("/run/aa.toml", aa)],
            Source::InitData,
        )
        .unwrap();
        assert_eq!(
            l.config.token_configs.kbs.unwrap().url,
            "https://host.example"
        );
        // Without the setting, upstream's keys are read from user-data.
        let l = layered_as(&[("/run/aa.toml", aa)], Source::UserData).unwrap();
        assert!(l.config.token_configs.kbs.is_some());
    }

    #[test]
    fn too_many_drop_ins_are_refused_and_the_bound_is_taken() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(DROP_IN_DIR);
        std::fs::create_dir(&dir).unwrap();
        for i in 0..MAX_DROP_INS {
            std::fs::write(dir.join(format!("{i:04}.toml")), "").unwrap();
        }
        assert_eq!(sources(d.path(), None).unwrap().dir.len(), MAX_DROP_INS);
        std::fs::write(dir.join("9999.toml"), "").unwrap();
        let e = sources(d.path(), None).unwrap_err().to_string();
        assert!(e.ends_with("257 drop-ins, more than 256"), "{e}");
    }

    #[test]
    fn a_cli_file_that_is_the_system_file_is_read_once_so_drop_ins_win() {
        let d = tempfile::tempdir().unwrap();
        let system = d.path().join(SYSTEM_FILE);
        std::fs::write(&system, "[log]\nlevel = \"info\"\n").unwrap();
        std::fs::create_dir(d.path().join(DROP_IN_DIR)).unwrap();
        let drop_in = d.path().join(DROP_IN_DIR).join("10-debug.toml");
        std::fs::write(&drop_in, "[log]\nlevel = \"debug\"\n").unwrap();
        // Named another way (a symlink): still the same file.
        let link = d.path().join("link.toml");
        std::os::unix::fs::symlink(&system, &link).unwrap();
        for cli in [&system, &link] {
            let s = sources(d.path(), Some(cli)).unwrap();
            assert_eq!(s.cli, None);
            let l = load(&s, Source::Operator).unwrap();
            assert_eq!(l.config.log.level, "debug");
            assert_eq!(l.files, [system.clone(), drop_in.clone()]);
            assert_eq!(l.cli_source, None);
        }
    }

    const POD_VM: &str = "[config_file]\nsource = \"init-data\"\n";

    #[test]
    fn the_images_ceiling_refuses_launch_keys_in_the_cli_file_naming_key_file_and_line() {
        let aa = "[token_configs.kbs]\nurl = \"https://kbs\"\n\n[plugins.attester.sample]\ncommand = \"/bin/sh\"\n";
        let e = layered_as(
            &[("/etc/attestd/attestd.toml", POD_VM), ("/run/aa.toml", aa)],
            Source::Operator,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid config: /run/aa.toml, line 5: plugins.attester.sample.command: a -c file \
                 from init-data may not set what attestd launches ({}); the image's own \
                 configuration sets those, or allows them with [config_file] source = \"operator\"",
                scope::LAUNCH_KEYS
            )
        );
        // The same file, the image allowing it.
        let allow = "[config_file]\nsource = \"operator\"\n";
        let aa_ok = "[plugins.attester.sample]\nlaunch = \"process\"\ncommand = \"/bin/sh\"\ntransport = \"ttrpc\"\n";
        let l = layered_as(
            &[
                ("/etc/attestd/attestd.toml", allow),
                ("/run/aa.toml", aa_ok),
            ],
            Source::Operator,
        )
        .unwrap();
        assert!(l.config.plugins.attester.contains_key("sample"));
        assert_eq!(l.cli_source, Some(Source::Operator));
        // The flag lowers what the directory allows, never raises it.
        let e = layered_as(
            &[
                ("/etc/attestd/attestd.toml", allow),
                ("/run/aa.toml", aa_ok),
            ],
            Source::InitData,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("plugins.attester.sample.command: a -c file from init-data may not"),
            "{e}"
        );
        // Tunables pass.
        let l = layered_as(
            &[
                ("/etc/attestd/attestd.toml", POD_VM),
                ("/run/aa.toml", "[plugins]\ncall_timeout_ms = 7000\n"),
            ],
            Source::Operator,
        )
        .unwrap();
        assert_eq!(l.config.plugins.call_timeout_ms, 7000);
        assert_eq!(l.cli_source, Some(Source::InitData));
    }

    #[test]
    fn an_unmeasured_cli_file_keeps_upstreams_keys_and_the_rest_is_ignored_and_said() {
        let aa = "[token_configs.kbs]\nurl = \"https://kbs\"\nallow_insecure_http = true\n\n[plugins]\ndev_mode = true\n\n[plugins.attester.sample]\nlaunch = \"process\"\ncommand = \"/bin/sh\"\ntransport = \"ttrpc\"\n";
        let l = layered_as(
            &[("/etc/attestd/attestd.toml", IMAGE), ("/run/aa.toml", aa)],
            Source::UserData,
        )
        .unwrap();
        assert_eq!(l.cli_source, Some(Source::UserData));
        assert!(!l.config.plugins.attester.contains_key("sample"));
        assert!(!l.config.plugins.dev_mode);
        let kbs = l.config.token_configs.kbs.as_ref().unwrap();
        assert_eq!(kbs.url, "https://kbs");
        assert!(!kbs.allow_insecure_http);
        let keys: Vec<&str> = l.ignored.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["plugins", "token_configs.kbs.allow_insecure_http"]);
        let text = l.render(false).unwrap();
        assert!(
            text.contains("# /run/aa.toml is read as from user-data\n"),
            "{text}"
        );
        assert!(text.contains("# ignored: plugins: user-data is unmeasured: only upstream's keys are read from it ("), "{text}");
        let json: serde_json::Value = serde_json::from_str(&l.render(true).unwrap()).unwrap();
        assert_eq!(json["config_file_source"], "user-data");
        assert_eq!(
            json["ignored"][1]["key"],
            "token_configs.kbs.allow_insecure_http"
        );
    }

    #[test]
    fn the_ceiling_is_set_in_the_directory_only_and_must_be_a_source() {
        let e = layered_as(
            &[
                ("/etc/attestd/attestd.toml", IMAGE),
                ("/run/aa.toml", "[config_file]\nsource = \"operator\"\n"),
            ],
            Source::Operator,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config: /run/aa.toml, line 2: config_file.source: [config_file] is read from the configuration directory only"
        );
        let e = layered(&[(
            "/etc/attestd/attestd.toml",
            "[config_file]\nsource = \"host\"\n",
        )])
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid config: /etc/attestd/attestd.toml, line 2: config_file.source: unknown variant `host`"), "{e}");
    }
}
