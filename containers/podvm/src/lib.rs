//! The pod VM's first step at boot: the user-data its provider hands the VM
//! (cloud-config, as cloud-api-adaptor renders it) turned into the files attestd
//! reads, before attestd starts.
//!
//! Trust follows measurement: user-data comes from the host, which a confidential
//! VM does not trust; init-data is measured (attestd binds its digest into the
//! evidence). So:
//!
//! - `/run/peerpod/initdata` (kata's form: base64 of the gzipped TOML, or the
//!   TOML itself) becomes `initdata.toml`, the document whose digest attestd
//!   binds (`--initdata-toml`), and its `[data]` `aa.toml`, `cdh.toml`,
//!   `policy.rego` and `policy.json` become files of those names;
//! - `cdh.toml`, `policy.rego` and `policy.json` (what is trusted: the Data Hub's
//!   KBS and keys, kata-agent's policy, which images may run) come from init-data
//!   or not at all: user-data's are skipped, with the reason;
//! - `aa.toml` from init-data, else from user-data, else empty; `attestd.env`
//!   tells attestd which (`ATTESTD_CONFIG_FILE_SOURCE`), and attestd reads an
//!   `aa.toml` from user-data for upstream's keys only (never what it launches);
//! - other `write_files` entries under `/run/peerpod/` are written there (into
//!   `out_dir`), subdirectories too (`certs.d/<host:port>/ca.crt`,
//!   `registries.d/*.yaml`: where a pull finds a registry and its signatures,
//!   while the digest pin and init-data's policy decide what is accepted);
//!   entries elsewhere, and the names this tool writes itself, are skipped;
//! - `attestd.env` holds attestd's flags for its unit's `EnvironmentFile=`.
//!
//! Every size is bounded (`MAX_…`), what this step writes is written whole or
//! not at all (staged in a private directory, then renamed into place beside
//! what other units put in `/run/peerpod`, which stays), and attestd does not
//! start on user-data that could not be read whole.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

pub mod iso;
pub mod source;
pub mod tmpfiles;

/// The directory user-data's files are written to, as cloud-api-adaptor names it.
pub const PEERPOD_DIR: &str = "/run/peerpod";
/// User-data read at most (Azure's userData is at most 64 KiB in base64, AWS's 16 KiB).
pub const MAX_USER_DATA_BYTES: usize = 256 * 1024;
/// One file, decoded and decompressed, at most (a gzip bomb stops here).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// `write_files` entries at most.
pub const MAX_FILES: usize = 64;
/// Path components under `/run/peerpod/` at most (`certs.d/<host:port>/ca.crt` is 3).
pub const MAX_DEPTH: usize = 4;
/// YAML flow collections (`[`, `{`) nested at most, counted by structure before
/// parsing (the parser's time grows with the square of the nesting: 260 KB of
/// brackets cost a minute of CPU); cloud-config nests a few. Brackets in a
/// file's text do not count ([`MAX_TEXT_NESTING`] bounds those).
pub const MAX_NESTING: usize = 64;
/// The `[data]` entries of init-data that become files: what the guest
/// components read (attestd's `-c`, CDH's config, kata-agent's policy, and the
/// containers-policy.json attestd checks a pulled attester image against: the
/// tenant's, measured, never the host's).
pub const INITDATA_FILES: [&str; 4] = ["aa.toml", "cdh.toml", "policy.rego", "policy.json"];
/// What only init-data may supply: each decides what is trusted. An `aa.toml`
/// may come from user-data, read by attestd for upstream's keys only.
pub const MEASURED_ONLY: [&str; 3] = ["cdh.toml", "policy.rego", "policy.json"];
/// What this tool writes itself, never user-data.
pub const GENERATED: [&str; 3] = ["attestd.env", "initdata.toml", "initdata.digest"];
/// The init-data cloud-api-adaptor's `process-user-data` uses when none came
/// (its bytes exactly): bound like any other, its digest (sha256
/// `adb48cc1…`) is what a KBS policy recorded on those images pins, and its
/// empty `aa.toml` is attestd's `-c` file, as there.
pub const DUMMY_INITDATA: &str =
    "algorithm = \"sha256\"\nversion = \"0.1.0\"\n\n[data]\n\"aa.toml\" = '''\n'''";
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("user-data is {0} bytes; at most {MAX_USER_DATA_BYTES} are read")]
    TooLarge(usize),
    #[error("user-data is a script (#!): only cloud-config is read")]
    Script,
    #[error("user-data nests brackets more than {0} deep")]
    TooDeep(usize),
    /// Where, never what: the parser's own message quotes the user-data, and
    /// an error goes to the journal and the serial console.
    #[error("user-data is not valid cloud-config{0}")]
    Yaml(Where),
    #[error("user-data has {0} write_files entries; at most {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("write_files entry {path}: unknown encoding {encoding} (text, b64, gzip+b64)")]
    Encoding { path: String, encoding: String },
    #[error("write_files entry {path}: not base64")]
    Base64 {
        path: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{what}: not gzip")]
    Gzip {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: more than {MAX_FILE_BYTES} bytes")]
    FileTooLarge { what: String },
    /// Where, never what, as for [`Error::Yaml`].
    #[error("init-data is not a TOML document (nor base64 of its gzip){0}")]
    InitData(Where),
    #[error("init-data: algorithm {0}: expected sha256, sha384 or sha512")]
    Algorithm(String),
    #[error("init-data: [data] {0} is not a string")]
    DataEntry(String),
    #[error("init-data: {field}: {why}")]
    InitDataField { field: &'static str, why: String },
    #[error("write_files entries {file} and {under}: one is a file, the other under it")]
    FileAndDirectory { file: String, under: String },
    #[error("the image's attestd configuration {path} does not read")]
    ImageConfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(serde::Deserialize)]
struct CloudConfig {
    #[serde(default)]
    write_files: Vec<WriteFile>,
}

#[derive(serde::Deserialize)]
struct WriteFile {
    path: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: Option<String>,
}

/// Where in the host's text a parser stopped: printed instead of the
/// parser's message, which quotes the text (credentials among it).
#[derive(Debug, Default)]
pub struct Where(Option<(usize, usize)>);

impl Where {
    /// The line and column (1-based) of byte `at` in `text`.
    fn of_offset(text: &str, at: usize) -> Where {
        let before = &text.as_bytes()[..at.min(text.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        Where(Some((line, column)))
    }

    fn of_yaml(e: &serde_yaml::Error) -> Where {
        Where(e.location().map(|l| (l.line(), l.column())))
    }

    fn of_toml(e: &toml::de::Error, text: &str) -> Where {
        e.span()
            .map(|r| Where::of_offset(text, r.start))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, " (line {line}, column {column})"),
            None => Ok(()),
        }
    }
}

/// Init-data's fields as kata reads them (`kata-types`' `InitData`): each is
/// required, and `validate()` takes version "0.1.0" only; the checks are
/// attestd-podvm's own, so each refusal names its field.
#[derive(serde::Deserialize)]
struct InitDataDoc {
    version: Option<toml::Value>,
    algorithm: Option<toml::Value>,
    data: Option<toml::Table>,
}

/// The init-data version kata's agent and runtime accept (their `validate()`).
pub const INITDATA_VERSION: &str = "0.1.0";
/// A host's value quoted in an error or a message at most, in characters.
pub const MAX_QUOTED: usize = 64;

/// `s` quoted (escaped: a line break cannot forge a journal line), cut at
/// [`MAX_QUOTED`] characters.
pub fn quoted(s: &str) -> String {
    let cut: String = s.chars().take(MAX_QUOTED).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

impl InitDataDoc {
    /// What kata's `InitData::validate()` refuses, refused here before
    /// anything is written: the algorithm, and the `[data]` table.
    fn check(self) -> Result<(String, toml::Table), Error> {
        let field = |v: Option<toml::Value>, name: &'static str| match v {
            None => Err(Error::InitDataField {
                field: name,
                why: "missing".into(),
            }),
            Some(toml::Value::String(s)) => Ok(s),
            Some(other) => {
                let t = other.type_str();
                let a = if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                Err(Error::InitDataField {
                    field: name,
                    why: format!("{a} {t}, not a string"),
                })
            }
        };
        let version = field(self.version, "version")?;
        if version != INITDATA_VERSION {
            return Err(Error::InitDataField {
                field: "version",
                why: format!(
                    "{} (kata accepts {INITDATA_VERSION:?} only)",
                    quoted(&version)
                ),
            });
        }
        let algorithm = field(self.algorithm, "algorithm")?;
        if !matches!(algorithm.as_str(), "sha256" | "sha384" | "sha512") {
            return Err(Error::Algorithm(quoted(&algorithm)));
        }
        let data = self.data.ok_or(Error::InitDataField {
            field: "data",
            why: "missing (kata requires the table, empty or not)".into(),
        })?;
        // kata reads [data] as a map of strings: any other entry fails it.
        if let Some((name, _)) = data.iter().find(|(_, v)| !v.is_str()) {
            return Err(Error::DataEntry(quoted(name)));
        }
        Ok((algorithm, data))
    }
}

/// Where `aa.toml` (attestd's `-c` file) came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AaSource {
    /// Neither init-data nor user-data had one: an empty file.
    #[default]
    None,
    /// User-data's: unmeasured.
    UserData,
    /// Init-data's: measured.
    InitData,
}

/// A `write_files` entry not written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub why: &'static str,
}

/// Why an entry outside `/run/peerpod/` (or not a plain path there) is skipped.
pub const SKIP_OUTSIDE: &str = "only plain paths under /run/peerpod, at most 4 deep, are written";
/// Why user-data's `cdh.toml`, `policy.rego` or `policy.json` is skipped.
pub const SKIP_MEASURED: &str = "only init-data (measured) may supply it";
/// Why user-data's `attestd.env` or `initdata.toml` is skipped.
pub const SKIP_GENERATED: &str = "attestd-podvm writes it itself";
/// Why init-data's `cdh.toml`, `policy.rego` or `policy.json` is skipped on an
/// image that takes unbound init-data as user-data.
pub const SKIP_UNBOUND: &str = "the image takes init-data that nothing binds as user-data \
    ([config_file] unbound_init_data = \"treat-as-user-data\"), and whether attestd binds \
    it is known only once attestd runs, after these files are read";

/// What [`provision`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// Files written, by name under the output directory.
    pub written: Vec<String>,
    /// `write_files` entries skipped, with the reason.
    pub skipped: Vec<Skipped>,
    /// Whether init-data arrived (else [`DUMMY_INITDATA`] stood in for it).
    pub initdata: bool,
    /// Where `aa.toml` came from.
    pub aa_toml: AaSource,
    /// Files an earlier run wrote that this one does not, and could not remove.
    pub stale_left: Vec<String>,
}

/// Turn `user_data` into files under `out_dir` (which stands for
/// [`PEERPOD_DIR`]). Nothing is written unless all of it reads; then the
/// planned files take their names in `out_dir` together, beside what other
/// units put there, and what an earlier run wrote and this one does not goes
/// (`write_dir`).
///
/// `image` is what the image's own attestd configuration says about init-data
/// ([`ImageSettings::read`]).
pub fn provision(
    user_data: &[u8],
    out_dir: &Path,
    image: &ImageSettings,
) -> Result<Provisioned, Error> {
    apply(plan(user_data, image)?, out_dir)
}

/// Write a [`plan`]'s files under `out_dir`, as [`provision`] does.
pub fn apply(plan: Plan, out_dir: &Path) -> Result<Provisioned, Error> {
    let stale_left = write_dir(out_dir, &plan.write)?;
    Ok(Provisioned {
        stale_left,
        written: plan.write.into_iter().map(|(n, _)| n).collect(),
        skipped: plan.skipped,
        initdata: plan.initdata,
        aa_toml: plan.aa_toml,
    })
}

/// What user-data comes to: the files to write, and what was left out.
pub struct Plan {
    /// (file name, contents), in the order to write.
    pub write: Vec<(String, Vec<u8>)>,
    pub skipped: Vec<Skipped>,
    pub initdata: bool,
    pub aa_toml: AaSource,
}

/// What the image's attestd configuration (its configuration directory, on the
/// verified root) says that changes what is written here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageSettings {
    /// `[config_file] unbound_init_data = "treat-as-user-data"`: init-data may
    /// be left unbound, so it supplies no trust files (see [`SKIP_UNBOUND`]).
    pub unbound_as_user_data: bool,
}

impl ImageSettings {
    /// From `config_dir`'s `attestd.toml` and `attestd.toml.d/*.toml` (in
    /// attestd's order: later files win), each optional.
    pub fn read(config_dir: &Path) -> Result<ImageSettings, Error> {
        let mut files = vec![config_dir.join("attestd.toml")];
        let drop_ins = config_dir.join("attestd.toml.d");
        if let Ok(entries) = std::fs::read_dir(&drop_ins) {
            let mut more: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.is_dir())
                .collect();
            more.sort();
            files.extend(more);
        }
        let mut unbound = None;
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::ImageConfig {
                        path: f,
                        source: source.into(),
                    })
                }
            };
            let t: toml::Table = toml::from_str(&text).map_err(|e| Error::ImageConfig {
                path: f.clone(),
                source: Box::new(e),
            })?;
            if let Some(v) = t
                .get("config_file")
                .and_then(|c| c.get("unbound_init_data"))
            {
                unbound = v.as_str().map(str::to_string);
            }
        }
        Ok(ImageSettings {
            unbound_as_user_data: unbound.as_deref() == Some("treat-as-user-data"),
        })
    }
}

/// Read `user_data` (bounded, nothing written): the files it comes to.
pub fn plan(user_data: &[u8], image: &ImageSettings) -> Result<Plan, Error> {
    if user_data.len() > MAX_USER_DATA_BYTES {
        return Err(Error::TooLarge(user_data.len()));
    }
    if user_data.starts_with(b"#!") {
        return Err(Error::Script);
    }
    if nesting(user_data) > MAX_NESTING {
        return Err(Error::TooDeep(MAX_NESTING));
    }
    if text_nesting(user_data) > MAX_TEXT_NESTING {
        return Err(Error::TooDeep(MAX_TEXT_NESTING));
    }
    let cc: CloudConfig = if user_data.iter().all(u8::is_ascii_whitespace) {
        CloudConfig {
            write_files: Vec::new(),
        }
    } else {
        serde_yaml::from_slice(user_data).map_err(|e| Error::Yaml(Where::of_yaml(&e)))?
    };
    if cc.write_files.len() > MAX_FILES {
        return Err(Error::TooManyFiles(cc.write_files.len()));
    }
    let mut write: Vec<(String, Vec<u8>)> = Vec::new();
    let mut skipped = Vec::new();
    for f in cc.write_files {
        let name = match peerpod_name(&f.path) {
            Some(n) if !MEASURED_ONLY.contains(&n) && !GENERATED.contains(&n) => n,
            other => {
                let why = match other {
                    None => SKIP_OUTSIDE,
                    Some(n) if MEASURED_ONLY.contains(&n) => SKIP_MEASURED,
                    Some(_) => SKIP_GENERATED,
                };
                skipped.push(Skipped { path: f.path, why });
                continue;
            }
        };
        let bytes = decode(&f)?;
        write.retain(|(n, _)| n != name);
        write.push((name.to_string(), bytes));
    }
    let mut aa_toml = if write.iter().any(|(n, _)| n == "aa.toml") {
        AaSource::UserData
    } else {
        AaSource::None
    };
    // No init-data: process-user-data's stand-in, in kata's annotation form.
    let (raw, initdata) = match write.iter().position(|(n, _)| n == "initdata") {
        Some(pos) => (write.remove(pos).1, true),
        None => (gzip_b64(DUMMY_INITDATA.as_bytes()), false),
    };
    let toml_bytes = initdata_toml(&raw)?;
    let text = String::from_utf8_lossy(&toml_bytes);
    let doc: InitDataDoc =
        toml::from_str(&text).map_err(|e| Error::InitData(Where::of_toml(&e, &text)))?;
    let (algorithm, data) = doc.check()?;
    // init-data is measured: its files win over unmeasured write_files.
    for name in INITDATA_FILES {
        if let Some(s) = data.get(name).and_then(toml::Value::as_str) {
            if image.unbound_as_user_data && MEASURED_ONLY.contains(&name) {
                skipped.push(Skipped {
                    path: format!("init-data [data] {name}"),
                    why: SKIP_UNBOUND,
                });
                continue;
            }
            write.retain(|(n, _)| n != name);
            write.push((name.to_string(), s.as_bytes().to_vec()));
            if name == "aa.toml" {
                aa_toml = AaSource::InitData;
            }
        }
    }
    // As process-user-data leaves them: the document as it came, and its
    // digest in hex (for a unit that extends a register itself: attestd
    // binds it, so such a unit must go, or the register is extended twice).
    write.push(("initdata".into(), raw));
    write.push((
        "initdata.digest".into(),
        hex::encode(digest(&algorithm, &toml_bytes)).into_bytes(),
    ));
    write.push(("initdata.toml".into(), toml_bytes));
    // attestd always gets a -c file: upstream's AA config, empty when none came.
    if !write.iter().any(|(n, _)| n == "aa.toml") {
        write.push(("aa.toml".into(), Vec::new()));
    }
    // Always init-data: the tenant's, or the stand-in, which attestd binds only
    // where binding extends a register (a TPM's PCR 8, as cloud-api-adaptor's
    // images extend it), never compared with a launch-time value.
    let mut env = format!(
        "ATTESTD_INITDATA=--initdata-toml {PEERPOD_DIR}/initdata.toml{}\n",
        if initdata { "" } else { " --initdata-stand-in" }
    );
    // attestd reads a -c file from user-data (or none) for upstream's keys only.
    let source = match aa_toml {
        AaSource::InitData => "init-data",
        AaSource::UserData | AaSource::None => "user-data",
    };
    env.push_str(&format!("ATTESTD_CONFIG_FILE_SOURCE={source}\n"));
    write.push(("attestd.env".into(), env.into_bytes()));
    // Checked once every file is planned (init-data's and attestd.env too),
    // before anything is written: a name both a file and a directory would
    // fail half-way through.
    for (file, _) in &write {
        let dir = format!("{file}/");
        if let Some((under, _)) = write.iter().find(|(n, _)| n.starts_with(&dir)) {
            return Err(Error::FileAndDirectory {
                file: file.clone(),
                under: under.clone(),
            });
        }
    }
    Ok(Plan {
        write,
        skipped,
        initdata,
        aa_toml,
    })
}

/// Brackets nested at most counting every one, inside strings and block
/// scalars too: a backstop to [`nesting`], far above what a file's text holds,
/// so a structure the scan below misreads still cannot cost the parser time.
pub const MAX_TEXT_NESTING: usize = 1024;

fn text_nesting(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// How deep YAML flow collections (`[`, `{`) nest in `text`, by its structure:
/// a bracket in a quoted string, a comment, a plain scalar or a block scalar
/// (`content: |`, where a file's text is) opens nothing. A flow collection
/// starts only where a value does: at a line's start, after `- `, `? `, `: `,
/// `--- `, a tag or an anchor. Linear, before the parser sees it.
fn nesting(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    // Block context only: whether a value may start here, the indentation of
    // the line, and that of the line owning a block scalar being skipped.
    let (mut at_value, mut indent) = (true, 0usize);
    let mut block_owner: Option<usize> = None;
    let mut i = 0;
    let n = text.len();
    let space = |j: usize| j >= n || matches!(text[j], b' ' | b'\t' | b'\n' | b'\r');
    let skip_line = |j: usize| {
        text[j..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(n, |p| j + p)
    };
    let skip_quoted = |j: usize| {
        // From the opening quote to just past the closing one.
        let q = text[j];
        let mut k = j + 1;
        while k < n {
            match text[k] {
                b'\\' if q == b'"' => k += 2,
                c if c == q => {
                    if q == b'\'' && text.get(k + 1) == Some(&b'\'') {
                        k += 2;
                    } else {
                        return k + 1;
                    }
                }
                _ => k += 1,
            }
        }
        n
    };
    let mut line_start = true;
    while i < n {
        if line_start && depth == 0 {
            line_start = false;
            let ind = text[i..].iter().take_while(|b| **b == b' ').count();
            let blank = matches!(text.get(i + ind), None | Some(b'\n') | Some(b'\r'));
            if let Some(owner) = block_owner {
                if blank || ind > owner {
                    i = skip_line(i);
                    continue;
                }
                block_owner = None;
            }
            indent = ind;
            at_value = true;
            i += ind;
            if text[i..].starts_with(b"---") && space(i + 3) {
                i += 3;
            }
            continue;
        }
        let c = text[i];
        if c == b'\n' {
            line_start = true;
            i += 1;
            continue;
        }
        if c == b'#' && (i == 0 || matches!(text[i - 1], b' ' | b'\t' | b'\n')) {
            i = skip_line(i);
            continue;
        }
        if depth > 0 {
            match c {
                b'"' | b'\'' => {
                    i = skip_quoted(i);
                    continue;
                }
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => {
                    depth -= 1;
                    at_value = false;
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b' ' || c == b'\t' {
            i += 1;
            continue;
        }
        if at_value {
            match c {
                b'-' | b'?' if space(i + 1) => {}
                b'!' | b'&' => {
                    // A tag or an anchor: the value comes after it.
                    i += text[i..]
                        .iter()
                        .take_while(|b| !matches!(b, b' ' | b'\n'))
                        .count();
                    continue;
                }
                b'[' | b'{' => {
                    depth = 1;
                    deepest = deepest.max(1);
                    at_value = false;
                }
                b'|' | b'>' => {
                    block_owner = Some(indent);
                    i = skip_line(i);
                    continue;
                }
                b'"' | b'\'' => {
                    i = skip_quoted(i);
                    at_value = false;
                    continue;
                }
                _ => at_value = false,
            }
            i += 1;
            continue;
        }
        // Inside a plain scalar (a key or a value): `: ` starts a value.
        if c == b':' && space(i + 1) {
            at_value = true;
        }
        i += 1;
    }
    deepest
}

/// The path of `path` relative to `/run/peerpod/` when every component of it is
/// a plain name (no `..`, nothing hidden, no empty component; `:` for a
/// registry's `host:port`) and there are at most [`MAX_DEPTH`] of them.
fn peerpod_name(path: &str) -> Option<&str> {
    let name = path.strip_prefix(PEERPOD_DIR)?.strip_prefix('/')?;
    let plain = |c: &str| {
        !c.is_empty()
            && !c.starts_with('.')
            && c.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
    };
    let parts = name.split('/').count();
    (parts <= MAX_DEPTH && name.split('/').all(plain)).then_some(name)
}

fn decode(f: &WriteFile) -> Result<Vec<u8>, Error> {
    let b64 = |s: &str| {
        // cloud-config folds long base64 over lines.
        let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|source| Error::Base64 {
                path: quoted(&f.path),
                source,
            })
    };
    let bytes = match f.encoding.as_deref().unwrap_or("text") {
        "text" => f.content.as_bytes().to_vec(),
        "b64" | "base64" => b64(&f.content)?,
        "gzip+b64" | "gz+b64" | "gzip+base64" | "gz+base64" => gunzip(
            &b64(&f.content)?,
            &format!("write_files entry {}", quoted(&f.path)),
        )?,
        other => {
            return Err(Error::Encoding {
                path: quoted(&f.path),
                encoding: quoted(other),
            })
        }
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Error::FileTooLarge {
            what: format!("write_files entry {}", quoted(&f.path)),
        });
    }
    Ok(bytes)
}

fn gunzip(bytes: &[u8], what: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    // One byte past the bound tells "too large" from "exactly at it".
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| Error::Gzip {
            what: what.to_string(),
            source,
        })?;
    if out.len() > MAX_FILE_BYTES {
        return Err(Error::FileTooLarge {
            what: what.to_string(),
        });
    }
    Ok(out)
}

/// `algorithm`'s digest of `bytes` (one [`InitDataDoc::check`] accepted).
fn digest(algorithm: &str, bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    match algorithm {
        "sha384" => sha2::Sha384::digest(bytes).to_vec(),
        "sha512" => sha2::Sha512::digest(bytes).to_vec(),
        _ => sha2::Sha256::digest(bytes).to_vec(),
    }
}

/// `bytes` as kata's annotation carries init-data: base64 of its gzip.
fn gzip_b64(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into memory does not fail.
    let _ = gz.write_all(bytes);
    let out = gz.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .encode(out)
        .into_bytes()
}

/// The init-data document from the `initdata` file: the TOML itself, or kata's
/// annotation form (base64 of its gzip).
fn initdata_toml(raw: &[u8]) -> Result<Vec<u8>, Error> {
    let text = String::from_utf8_lossy(raw);
    if let Err(as_toml) = toml::from_str::<toml::Table>(&text) {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        return match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(gz) => gunzip(&gz, "init-data"),
            Err(_) => Err(Error::InitData(Where::of_toml(&as_toml, &text))),
        };
    }
    Ok(raw.to_vec())
}

/// The names this step wrote the last time, one per line, kept in the
/// directory: the next run removes those it no longer writes, and nothing
/// else (a dot name, which no user-data entry can take).
pub const MANIFEST: &str = ".attestd-podvm.files";

/// `files` into `out_dir`, in place: what other units put there (the image's
/// tmpfiles defaults, kata-agent's policy link) is kept. Every file is first
/// written into a private staging directory inside `out_dir`, then each is
/// renamed over its name, so a failure before the renames leaves what was
/// there; what this step wrote the last time and does not write now goes
/// ([`MANIFEST`]). Nothing is followed: a symlink or file where a directory
/// of ours goes is removed, not followed; directories this step writes into
/// are 0700, files 0600.
fn write_dir(out_dir: &Path, files: &[(String, Vec<u8>)]) -> Result<Vec<String>, Error> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| Error::Write { path, source: e }
    };
    if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The parent is the system's (/run): created when missing, never changed.
        std::fs::create_dir_all(parent).map_err(werr(parent))?;
    }
    let out = own_dir(out_dir)?;
    let previous = read_manifest(&out);
    let mut all = files.to_vec();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    all.push((
        MANIFEST.to_string(),
        format!("{}\n", names.join("\n")).into_bytes(),
    ));
    let staging = fresh_dir(out_dir, std::ffi::OsStr::new("staging")).map_err(werr(out_dir))?;
    let staging_name = staging.file_name().map(PathBuf::from).unwrap_or_default();
    let done = write_files(&staging, &all)
        .and_then(|()| place(&out, out_dir, &staging_name, &all))
        .map(|()| remove_stale(&out, out_dir, &previous, &names));
    // What the renames left (empty directories), or a failed write's files.
    let _ = std::fs::remove_dir_all(&staging);
    done
}

const DIR_FLAGS: nix::fcntl::OFlag = nix::fcntl::OFlag::O_DIRECTORY
    .union(nix::fcntl::OFlag::O_NOFOLLOW)
    .union(nix::fcntl::OFlag::O_RDONLY)
    .union(nix::fcntl::OFlag::O_CLOEXEC);

/// `name` in `dir` as a directory of ours (0700): made when missing; a
/// symlink or file there is removed, not followed.
fn own_subdir(dir: &std::os::fd::OwnedFd, name: &str) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::openat;
    use nix::sys::stat::{fchmod, mkdirat, Mode};
    use nix::unistd::{unlinkat, UnlinkatFlags};
    for _ in 0..3 {
        match openat(dir, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => {
                fchmod(&fd, Mode::S_IRWXU)?;
                return Ok(fd);
            }
            Err(nix::Error::ENOENT) => match mkdirat(dir, name, Mode::S_IRWXU) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(e),
            },
            Err(nix::Error::ELOOP | nix::Error::ENOTDIR) => {
                unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(nix::Error::EAGAIN)
}

/// `out_dir` itself, as [`own_subdir`] takes a name in its parent.
fn own_dir(out_dir: &Path) -> Result<std::os::fd::OwnedFd, Error> {
    let err = |e: nix::Error| Error::Write {
        path: out_dir.to_path_buf(),
        source: std::io::Error::from(e),
    };
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| err(nix::Error::EINVAL))?;
    let parent = nix::fcntl::open(parent, DIR_FLAGS, nix::sys::stat::Mode::empty()).map_err(err)?;
    own_subdir(&parent, name).map_err(err)
}

/// The directory of `name` (its parts but the last) under `root`, walked
/// without following anything; made as [`own_subdir`] makes them when `make`.
fn walk(
    root: &std::os::fd::OwnedFd,
    name: &str,
    make: bool,
) -> nix::Result<(std::os::fd::OwnedFd, String)> {
    let mut parts: Vec<&str> = name.split('/').collect();
    let file = parts.pop().unwrap_or_default().to_string();
    let mut dir = root.try_clone().map_err(|_| nix::Error::EBADF)?;
    for part in parts {
        dir = if make {
            own_subdir(&dir, part)?
        } else {
            nix::fcntl::openat(&dir, part, DIR_FLAGS, nix::sys::stat::Mode::empty())?
        };
    }
    Ok((dir, file))
}

/// Each staged file renamed over its name in `out`: every directory is made
/// and every name checked first, so the renames, which cannot fail on one
/// file system, happen all together or not at all.
fn place(
    out: &std::os::fd::OwnedFd,
    out_dir: &Path,
    staging: &Path,
    files: &[(String, Vec<u8>)],
) -> Result<(), Error> {
    use nix::sys::stat::{fstatat, SFlag};
    let staging_name = staging.to_string_lossy();
    let staging_fd = walk(out, &format!("{staging_name}/x"), false)
        .map(|(fd, _)| fd)
        .map_err(|e| Error::Write {
            path: out_dir.join(staging),
            source: e.into(),
        })?;
    let mut moves = Vec::new();
    for (name, _) in files {
        let err = |e: nix::Error| Error::Write {
            path: out_dir.join(name),
            source: std::io::Error::from(e),
        };
        let (from, file) = walk(&staging_fd, name, false).map_err(err)?;
        let (to, _) = walk(out, name, true).map_err(err)?;
        match fstatat(&to, file.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                return Err(err(nix::Error::EISDIR));
            }
            Ok(_) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(err(e)),
        }
        moves.push((from, to, file, name));
    }
    for (from, to, file, name) in moves {
        nix::fcntl::renameat(&from, file.as_str(), &to, file.as_str()).map_err(|e| {
            Error::Write {
                path: out_dir.join(name),
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// The names [`MANIFEST`] lists, each a plain relative path (a planted list
/// names nothing outside the directory); none when it does not read.
fn read_manifest(out: &std::os::fd::OwnedFd) -> Vec<String> {
    use std::io::Read as _;
    let Ok(fd) = nix::fcntl::openat(
        out,
        MANIFEST,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut text = String::new();
    let _ = std::fs::File::from(fd)
        .take(MAX_FILE_BYTES as u64)
        .read_to_string(&mut text);
    text.lines()
        .filter(|l| peerpod_name(&format!("{PEERPOD_DIR}/{l}")) == Some(*l))
        .map(str::to_string)
        .collect()
}

/// What this step wrote the last time and does not write now: removed when
/// it is still a file (never followed); what cannot be is left, and returned.
fn remove_stale(
    out: &std::os::fd::OwnedFd,
    out_dir: &Path,
    previous: &[String],
    now: &[&str],
) -> Vec<String> {
    use nix::sys::stat::{fstatat, SFlag};
    let mut left = Vec::new();
    for name in previous.iter().filter(|n| !now.contains(&n.as_str())) {
        let Ok((dir, file)) = walk(out, name, false) else {
            continue;
        };
        let is_file = fstatat(
            &dir,
            file.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG);
        if is_file {
            if let Err(e) =
                nix::unistd::unlinkat(&dir, file.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir)
            {
                left.push(format!("{}: {e}", out_dir.join(name).display()));
            }
        }
    }
    left
}

/// A new directory `.<name>.<pid>.<n>` in `parent`, mode 0700 whatever the umask.
fn fresh_dir(parent: &Path, name: &std::ffi::OsStr) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let pid = std::process::id();
    let mut n = 0u32;
    loop {
        let tmp = parent.join(format!(
            ".{}.{pid}.{n}.attestd-podvm",
            name.to_string_lossy()
        ));
        // mkdir never follows a name planted there: it fails instead.
        match std::fs::DirBuilder::new().mode(0o700).create(&tmp) {
            Ok(()) => {
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
                return Ok(tmp);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Each file under `root` (ours, fresh), its directories 0700, files 0600.
fn write_files(root: &Path, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fchmod, mkdirat, Mode};
    use std::io::Write as _;
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let open_root = std::fs::File::open(root).map_err(|source| Error::Write {
        path: root.to_path_buf(),
        source,
    })?;
    for (name, bytes) in files {
        let path = root.join(name);
        let err = |e: nix::Error| Error::Write {
            path: path.clone(),
            source: std::io::Error::from(e),
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let file = parts.pop().unwrap_or_default();
        // Walk down by descriptor, creating what is missing (ours alone: 0700).
        let mut dir: std::os::fd::OwnedFd = open_root
            .try_clone()
            .map_err(|source| Error::Write {
                path: root.to_path_buf(),
                source,
            })?
            .into();
        for part in parts {
            match mkdirat(&dir, part, Mode::S_IRWXU) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(err(e)),
            }
            let next = openat(&dir, part, dir_flags, Mode::empty()).map_err(err)?;
            fchmod(&next, Mode::S_IRWXU).map_err(err)?;
            dir = next;
        }
        let fd = openat(
            &dir,
            file,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(err)?;
        fchmod(&fd, Mode::S_IRUSR | Mode::S_IWUSR).map_err(err)?;
        let mut f = std::fs::File::from(fd);
        let ioerr = |source| Error::Write {
            path: path.clone(),
            source,
        };
        f.write_all(bytes).map_err(ioerr)?;
        f.sync_all().map_err(ioerr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
