//! Where the user-data comes from. cloud-api-adaptor's `process-user-data`
//! fetches it itself on each cloud and never writes the raw bytes anywhere, so
//! this step does the same, from the same places, with the same headers:
//!
//! | `--from` | where | body |
//! | --- | --- | --- |
//! | `fw-cfg` | qemu's `opt/org.attestd/user-data` | as is |
//! | `cidata` | `/media/cidata/user-data`, else `user-data` read from the ISO labelled `cidata` without mounting it (libvirt, byom) | as is |
//! | `azure` | IMDS `compute/userData`, header `Metadata: true` | base64 |
//! | `aws` | IMDS `/latest/user-data`, an IMDSv2 token first, IMDSv1 without one | as is |
//! | `gcp` | the metadata server's `attributes/user-data`, header `Metadata-Flavor: Google` | base64 |
//! | `alibaba` | its IMDS `/latest/user-data` | as is |
//! | `file` | `--user-data PATH` | as is |
//!
//! `auto` picks the first that applies, in that order, as `process-user-data`
//! does: a file first (no network), then the cloud from CPUID's hypervisor
//! vendor and the DMI strings. On IBM Cloud cloud-init writes the files itself
//! and nothing here applies.
//!
//! This step runs early, before the network is up: a metadata service that does
//! not answer yet, answers an error, answers late or answers what does not read
//! as cloud-config is asked again, with a growing pause, until the deadline
//! (`--fetch-timeout`, 180 s as upstream's).

use std::io::{Read as _, Seek as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::MAX_USER_DATA_BYTES;

/// Where qemu's `-fw_cfg name=opt/org.attestd/user-data,file=…` appears in the guest.
pub const FW_CFG_USER_DATA: &str =
    "/sys/firmware/qemu_fw_cfg/by_name/opt/org.attestd/user-data/raw";
/// Where cloud-api-adaptor's images find (or mount) the `cidata` disk.
pub const CIDATA_DIR: &str = "/media/cidata";
/// The ISO 9660 volume label of a NoCloud config disk (any case).
pub const CIDATA_LABEL: &str = "cidata";
pub const AZURE_USER_DATA: &str =
    "http://169.254.169.254/metadata/instance/compute/userData?api-version=2021-01-01&format=text";
pub const AWS_USER_DATA: &str = "http://169.254.169.254/latest/user-data";
pub const AWS_TOKEN: &str = "http://169.254.169.254/latest/api/token";
/// Seconds an IMDSv2 token lives: this step needs it for one request.
pub const AWS_TOKEN_TTL: &str = "60";
pub const GCP_INSTANCE: &str = "http://metadata.google.internal/computeMetadata/v1/instance";
pub const GCP_USER_DATA: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/user-data";
pub const ALIBABA_USER_DATA: &str = "http://100.100.100.200/latest/user-data";

/// One request at most (upstream's IMDSv2 token request has the same bound).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause between attempts; it doubles up to [`RETRY_DELAY_MAX`].
pub const RETRY_DELAY_MIN: Duration = Duration::from_millis(250);
/// The longest pause between attempts (upstream's fixed delay).
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// How long all attempts may take, unless `--fetch-timeout` says otherwise
/// (upstream's default).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(180);
/// A metadata body read at most: base64 of [`MAX_USER_DATA_BYTES`], with room
/// for line breaks.
pub const MAX_BODY_BYTES: usize = MAX_USER_DATA_BYTES / 3 * 4 + 4096;
/// An IMDSv2 token read at most (AWS's are about 60 bytes).
pub const MAX_TOKEN_BYTES: usize = 1024;
/// Block devices looked at for the `cidata` label at most.
pub const MAX_BLOCK_DEVICES: usize = 64;
/// Entries of /sys/class/block listed at most (loop and ram devices among them).
pub const MAX_BLOCK_NAMES: usize = 1024;
/// With nothing else found, how long `auto` looks again for a `cidata` disk
/// whose driver is still probing (a CD drive's comes with udev's coldplug,
/// which this step does not wait for).
pub const CIDATA_SETTLE: Duration = Duration::from_secs(3);

/// What `--from` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Origin {
    Auto,
    File,
    FwCfg,
    Cidata,
    Azure,
    Aws,
    Gcp,
    Alibaba,
}

/// A place user-data is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    File(PathBuf),
    FwCfg,
    /// The `cidata` disk: already mounted (or a directory someone filled, as
    /// byom's sftp does), or a device whose ISO 9660 volume is read.
    Cidata(Option<PathBuf>),
    Azure,
    Aws,
    Gcp,
    Alibaba,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::File(p) => write!(f, "file {}", p.display()),
            Provider::FwCfg => f.write_str("qemu fw_cfg"),
            Provider::Cidata(None) => write!(f, "cidata ({CIDATA_DIR})"),
            Provider::Cidata(Some(d)) => write!(f, "cidata (disk {})", d.display()),
            Provider::Azure => f.write_str("Azure IMDS"),
            Provider::Aws => f.write_str("AWS IMDS"),
            Provider::Gcp => f.write_str("GCP metadata server"),
            Provider::Alibaba => f.write_str("Alibaba Cloud IMDS"),
        }
    }
}

impl Provider {
    /// Whether a failed attempt is worth repeating: a metadata service comes up
    /// with the network; a file is there or not.
    fn retries(&self) -> bool {
        matches!(
            self,
            Provider::Azure | Provider::Aws | Provider::Gcp | Provider::Alibaba
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("--from file needs --user-data PATH")]
    NoPath,
    #[error("no user-data at {0}")]
    Missing(PathBuf),
    #[error("cannot read user-data {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("user-data {0} is more than {MAX_USER_DATA_BYTES} bytes")]
    FileTooLarge(PathBuf),
    #[error("no disk labelled {CIDATA_LABEL} and no {CIDATA_DIR}/user-data")]
    NoCidata,
    #[error("cannot read user-data from the {CIDATA_LABEL} disk {device}")]
    Iso {
        device: PathBuf,
        #[source]
        source: crate::iso::IsoError,
    },
    #[error("{url}: request failed")]
    Http {
        url: &'static str,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: status {status}")]
    Status { url: &'static str, status: u16 },
    #[error("{url}: the body is more than {limit} bytes")]
    BodyTooLarge { url: &'static str, limit: usize },
    #[error("{url}: the body is not base64")]
    Base64 {
        url: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error(transparent)]
    UserData(#[from] crate::Error),
    #[error("{provider}: no usable user-data in {attempts} attempts within the {secs} s deadline")]
    GaveUp {
        provider: String,
        attempts: u32,
        secs: u64,
        #[source]
        last: Box<FetchError>,
    },
}

impl FetchError {
    /// Whether asking again cannot help: the answer was too large for a bound.
    fn is_final(&self) -> bool {
        matches!(
            self,
            FetchError::BodyTooLarge { .. }
                | FetchError::FileTooLarge(_)
                | FetchError::Iso {
                    source: crate::iso::IsoError::TooLarge { .. },
                    ..
                }
                | FetchError::UserData(crate::Error::TooLarge(_))
        )
    }
}

/// The hypervisor CPUID names (leaf 0x40000000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    None,
    /// "Microsoft Hv": Hyper-V, so Azure (as upstream decides).
    HyperV,
    /// "KVMKVMKVM": KVM, as on GCP, AWS's Nitro and libvirt.
    Kvm,
    Other,
}

/// What identifies the cloud without asking the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub hypervisor: Hypervisor,
    /// DMI's system manufacturer (`/sys/class/dmi/id/sys_vendor`): "Amazon
    /// EC2", "Google", "Alibaba Cloud".
    pub sys_vendor: Option<String>,
    /// DMI's product name: "Google Compute Engine".
    pub product_name: Option<String>,
}

impl Platform {
    pub fn read() -> Platform {
        let dmi = |f: &str| {
            std::fs::read_to_string(Path::new("/sys/class/dmi/id").join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        Platform {
            hypervisor: hypervisor(),
            sys_vendor: dmi("sys_vendor"),
            product_name: dmi("product_name"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn hypervisor() -> Hypervisor {
    use raw_cpuid::{CpuId, Hypervisor as H};
    match CpuId::new().get_hypervisor_info().map(|h| h.identify()) {
        None => Hypervisor::None,
        Some(H::HyperV) => Hypervisor::HyperV,
        Some(H::KVM) => Hypervisor::Kvm,
        Some(_) => Hypervisor::Other,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn hypervisor() -> Hypervisor {
    Hypervisor::None
}

/// What `auto` looks at besides the [`Platform`]: the machine's files and
/// disks, and the metadata server GCP answers on (a seam for the unit tests).
pub trait Probe {
    fn exists(&self, path: &Path) -> bool;
    /// A block device whose ISO 9660 volume is labelled `cidata`.
    fn cidata_device(&self) -> Option<PathBuf>;
    /// Whether GCP's metadata server answers (upstream's only GCP test).
    fn gcp_answers(&self) -> bool;
    fn sleep(&self, d: Duration);
}

/// The machine itself.
pub struct System;

impl Probe for System {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn cidata_device(&self) -> Option<PathBuf> {
        cidata_device(Path::new("/sys/class/block"), Path::new("/dev"))
    }
    fn gcp_answers(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        get(
            GCP_INSTANCE,
            &[("Metadata-Flavor", "Google")],
            deadline,
            64 * 1024,
        )
        .is_ok()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// `--from auto`: the first place that applies, in upstream's order (a file,
/// then Azure, AWS, GCP, Alibaba), with qemu's fw_cfg (this image's own test
/// form) first. `None`: there is no user-data.
pub fn detect(platform: &Platform, probe: &dyn Probe) -> Option<Provider> {
    if let Some(p) = detect_local(probe) {
        return Some(p);
    }
    let vendor = platform.sys_vendor.as_deref();
    if platform.hypervisor == Hypervisor::HyperV {
        return Some(Provider::Azure);
    }
    if vendor == Some("Amazon EC2") {
        return Some(Provider::Aws);
    }
    // Upstream asks the metadata server, which this early in the boot may not
    // be reachable yet; DMI says it without the network.
    if platform.hypervisor == Hypervisor::Kvm
        && (vendor == Some("Google")
            || platform.product_name.as_deref() == Some("Google Compute Engine")
            || probe.gcp_answers())
    {
        return Some(Provider::Gcp);
    }
    if vendor == Some("Alibaba Cloud") {
        return Some(Provider::Alibaba);
    }
    None
}

/// The forms [`detect`] tries first, which need neither CPUID nor DMI: qemu's
/// fw_cfg blob, then a cidata directory or disk.
pub fn detect_local(probe: &dyn Probe) -> Option<Provider> {
    if probe.exists(Path::new(FW_CFG_USER_DATA)) {
        return Some(Provider::FwCfg);
    }
    if probe.exists(&Path::new(CIDATA_DIR).join("user-data")) {
        return Some(Provider::Cidata(None));
    }
    probe.cidata_device().map(|d| Provider::Cidata(Some(d)))
}

/// [`detect`], then, with nothing found, a look for a `cidata` disk every
/// quarter second for `settle`: its driver may still be probing.
pub fn detect_settled(
    platform: &Platform,
    probe: &dyn Probe,
    settle: Duration,
) -> Option<Provider> {
    if let Some(p) = detect(platform, probe) {
        return Some(p);
    }
    let step = Duration::from_millis(250);
    let mut waited = Duration::ZERO;
    while waited < settle {
        probe.sleep(step);
        waited += step;
        if let Some(d) = probe.cidata_device() {
            return Some(Provider::Cidata(Some(d)));
        }
    }
    None
}

/// The provider `--from` names (`auto`: [`detect_settled`]).
pub fn resolve(from: Origin, user_data: Option<PathBuf>) -> Result<Option<Provider>, FetchError> {
    Ok(Some(match from {
        // The boot's usual forms first, before CPUID and DMI are read.
        Origin::Auto => {
            return Ok(detect_local(&System)
                .or_else(|| detect_settled(&Platform::read(), &System, CIDATA_SETTLE)))
        }
        Origin::File => Provider::File(user_data.ok_or(FetchError::NoPath)?),
        Origin::FwCfg => Provider::FwCfg,
        Origin::Cidata if Path::new(CIDATA_DIR).join("user-data").exists() => {
            Provider::Cidata(None)
        }
        Origin::Cidata => {
            Provider::Cidata(Some(System.cidata_device().ok_or(FetchError::NoCidata)?))
        }
        Origin::Azure => Provider::Azure,
        Origin::Aws => Provider::Aws,
        Origin::Gcp => Provider::Gcp,
        Origin::Alibaba => Provider::Alibaba,
    }))
}

/// Read `provider`'s user-data and hand it to `accept` (which parses it),
/// asking a metadata service again until `accept` takes an answer or
/// `deadline` passes. Files are read once.
pub fn fetch<T>(
    provider: &Provider,
    deadline: Instant,
    mut accept: impl FnMut(&[u8]) -> Result<T, crate::Error>,
) -> Result<T, FetchError> {
    let started = Instant::now();
    let mut pause = RETRY_DELAY_MIN;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match read(provider, deadline) {
            Ok(bytes) => match accept(&bytes) {
                Ok(t) => return Ok(t),
                Err(e) => FetchError::UserData(e),
            },
            Err(e) => e,
        };
        if !provider.retries() || err.is_final() {
            return Err(err);
        }
        // No attempt that the deadline would cut short: the last error stands.
        let left = deadline.saturating_duration_since(Instant::now());
        if left <= pause {
            return Err(FetchError::GaveUp {
                provider: provider.to_string(),
                attempts,
                secs: deadline
                    .saturating_duration_since(started)
                    .as_secs_f64()
                    .round() as u64,
                last: Box::new(err),
            });
        }
        println!("{provider}: attempt {attempts}: {}", chain(&err));
        std::thread::sleep(pause);
        pause = (pause * 2).min(RETRY_DELAY_MAX);
    }
}

/// An error and its causes on one line (the journal's).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// One attempt.
fn read(provider: &Provider, deadline: Instant) -> Result<Vec<u8>, FetchError> {
    match provider {
        Provider::File(p) => read_file(p),
        Provider::FwCfg => read_file(Path::new(FW_CFG_USER_DATA)),
        Provider::Cidata(None) => read_file(&Path::new(CIDATA_DIR).join("user-data")),
        Provider::Cidata(Some(device)) => read_cidata(device),
        Provider::Azure => {
            let body = get(
                AZURE_USER_DATA,
                &[("Metadata", "true")],
                deadline,
                MAX_BODY_BYTES,
            )?;
            base64_body(AZURE_USER_DATA, &body)
        }
        Provider::Aws => {
            // IMDSv2 when the instance has it; IMDSv1 (no token) otherwise, as
            // upstream falls back.
            let token = aws_token(deadline);
            let headers: Vec<(&str, &str)> = match &token {
                Some(t) => vec![("X-aws-ec2-metadata-token", t.as_str())],
                None => Vec::new(),
            };
            get(AWS_USER_DATA, &headers, deadline, MAX_USER_DATA_BYTES)
        }
        Provider::Gcp => {
            let body = get(
                GCP_USER_DATA,
                &[("Metadata-Flavor", "Google")],
                deadline,
                MAX_BODY_BYTES,
            )?;
            base64_body(GCP_USER_DATA, &body)
        }
        Provider::Alibaba => get(ALIBABA_USER_DATA, &[], deadline, MAX_USER_DATA_BYTES),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, FetchError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FetchError::Missing(path.to_path_buf()))
        }
        Err(source) => {
            return Err(FetchError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut bytes = Vec::new();
    f.take(MAX_USER_DATA_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| FetchError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() > MAX_USER_DATA_BYTES {
        return Err(FetchError::FileTooLarge(path.to_path_buf()));
    }
    Ok(bytes)
}

/// The `cidata` disk's `user-data`, read from the device's ISO 9660 volume
/// without mounting it: no module to load at boot, and the file (APF's TLS key,
/// registry credentials) is never where another process could find it.
fn read_cidata(device: &Path) -> Result<Vec<u8>, FetchError> {
    let iso = |source| FetchError::Iso {
        device: device.to_path_buf(),
        source,
    };
    let mut disk = std::fs::File::open(device).map_err(|e| iso(crate::iso::IsoError::Io(e)))?;
    crate::iso::read_root_file(&mut disk, "user-data", MAX_USER_DATA_BYTES).map_err(iso)
}

/// The first block device (of at most [`MAX_BLOCK_DEVICES`] under `sys_block`)
/// whose ISO 9660 primary volume descriptor names the volume `cidata`. Read
/// from the device node under `dev`, so it needs no udev.
pub fn cidata_device(sys_block: &Path, dev: &Path) -> Option<PathBuf> {
    // Names are cheap, opening devices is not: the first MAX_BLOCK_DEVICES in
    // name order (vda before vdb, sr0 after them) are looked at, of at most
    // MAX_BLOCK_NAMES listed.
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .take(MAX_BLOCK_NAMES)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    names.truncate(MAX_BLOCK_DEVICES);
    names.into_iter().map(|n| dev.join(n)).find(|d| {
        let mut pvd = [0u8; 2048];
        std::fs::OpenOptions::new()
            .read(true)
            // A CD drive with no disc in it: the open does not wait.
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(d)
            .and_then(|mut f| {
                f.seek(std::io::SeekFrom::Start(ISO_PVD_OFFSET))?;
                f.read_exact(&mut pvd)
            })
            .is_ok()
            && is_cidata_volume(&pvd)
    })
}

/// Where ISO 9660's primary volume descriptor starts (sector 16 of 2048 bytes).
pub const ISO_PVD_OFFSET: u64 = 16 * 2048;

/// Whether `pvd` is an ISO 9660 primary volume descriptor labelled `cidata`
/// (type 1, "CD001", the volume identifier at bytes 40..72, space-padded).
pub fn is_cidata_volume(pvd: &[u8]) -> bool {
    pvd.len() >= 72
        && pvd[0] == 1
        && &pvd[1..6] == b"CD001"
        && std::str::from_utf8(&pvd[40..72]).is_ok_and(|id| {
            id.trim_end_matches([' ', '\0'])
                .eq_ignore_ascii_case(CIDATA_LABEL)
        })
}

/// A base64 body (Azure's and GCP's), decoded as Go's `StdEncoding` does
/// upstream: padded, line breaks ignored.
fn base64_body(url: &'static str, body: &[u8]) -> Result<Vec<u8>, FetchError> {
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    let bytes = LENIENT
        .decode(text)
        .map_err(|source| FetchError::Base64 { url, source })?;
    if bytes.len() > MAX_USER_DATA_BYTES {
        return Err(crate::Error::TooLarge(bytes.len()).into());
    }
    Ok(bytes)
}

/// An IMDSv2 token, or `None` (IMDSv1, as upstream falls back to).
fn aws_token(deadline: Instant) -> Option<String> {
    let agent = agent(deadline);
    let mut resp = agent
        .put(AWS_TOKEN)
        .header("X-aws-ec2-metadata-token-ttl-seconds", AWS_TOKEN_TTL)
        .send_empty()
        .map_err(|e| println!("IMDSv2 token: {e}; trying IMDSv1"))
        .ok()?;
    if resp.status() != 200 {
        println!(
            "IMDSv2 token: status {}; trying IMDSv1",
            resp.status().as_u16()
        );
        return None;
    }
    let token = resp
        .body_mut()
        .with_config()
        .limit(MAX_TOKEN_BYTES as u64)
        .read_to_string()
        .map_err(|e| println!("IMDSv2 token: {e} (at most {MAX_TOKEN_BYTES} bytes); trying IMDSv1"))
        .ok()?;
    // It goes into a header: printable ASCII only.
    let token = token.trim().to_string();
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// A plain-HTTP agent for one attempt: no proxy (the metadata service is
/// link-local), no redirects (an answer may not send the request elsewhere),
/// every status returned as it is.
fn agent(deadline: Instant) -> ureq::Agent {
    let left = deadline.saturating_duration_since(Instant::now());
    ureq::Agent::config_builder()
        .timeout_global(Some(
            REQUEST_TIMEOUT.min(left).max(Duration::from_millis(1)),
        ))
        .max_redirects(0)
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url` with `headers`: the body, at most `limit` bytes.
fn get(
    url: &'static str,
    headers: &[(&str, &str)],
    deadline: Instant,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let mut req = agent(deadline).get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().map_err(|e| FetchError::Http {
        url,
        source: Box::new(e),
    })?;
    if resp.status() != 200 {
        return Err(FetchError::Status {
            url,
            status: resp.status().as_u16(),
        });
    }
    match resp
        .body_mut()
        .with_config()
        .limit(limit as u64)
        .read_to_vec()
    {
        Ok(b) => Ok(b),
        Err(ureq::Error::BodyExceedsLimit(_)) => Err(FetchError::BodyTooLarge { url, limit }),
        Err(e) => Err(FetchError::Http {
            url,
            source: Box::new(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Fake {
        files: Vec<&'static str>,
        disk_after: Option<u32>,
        looks: Cell<u32>,
        gcp: bool,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                files: vec![],
                disk_after: None,
                looks: Cell::new(0),
                gcp: false,
            }
        }
    }

    impl Probe for Fake {
        fn exists(&self, path: &Path) -> bool {
            self.files.iter().any(|f| Path::new(f) == path)
        }
        fn cidata_device(&self) -> Option<PathBuf> {
            self.looks.set(self.looks.get() + 1);
            self.disk_after
                .filter(|n| self.looks.get() > *n)
                .map(|_| PathBuf::from("/dev/vdb"))
        }
        fn gcp_answers(&self) -> bool {
            self.gcp
        }
        fn sleep(&self, _: Duration) {}
    }

    fn platform(hypervisor: Hypervisor, vendor: Option<&str>) -> Platform {
        Platform {
            hypervisor,
            sys_vendor: vendor.map(str::to_string),
            product_name: None,
        }
    }

    #[test]
    fn auto_picks_as_process_user_data_does() {
        let kvm = platform(Hypervisor::Kvm, None);
        let mut p = Fake::new();
        assert_eq!(detect(&kvm, &p), None);
        p.gcp = true;
        assert_eq!(detect(&kvm, &p), Some(Provider::Gcp));
        // GCP only under KVM, as upstream.
        assert_eq!(detect(&platform(Hypervisor::Other, None), &p), None);
        p.gcp = false;
        let gce = Platform {
            product_name: Some("Google Compute Engine".into()),
            ..kvm.clone()
        };
        assert_eq!(detect(&gce, &p), Some(Provider::Gcp));
        assert_eq!(
            detect(&platform(Hypervisor::HyperV, None), &p),
            Some(Provider::Azure)
        );
        assert_eq!(
            detect(&platform(Hypervisor::Kvm, Some("Amazon EC2")), &p),
            Some(Provider::Aws)
        );
        assert_eq!(
            detect(&platform(Hypervisor::Kvm, Some("Alibaba Cloud")), &p),
            Some(Provider::Alibaba)
        );
        // A file beats the cloud: upstream checks /media/cidata/user-data first.
        p.files = vec!["/media/cidata/user-data"];
        assert_eq!(
            detect(&platform(Hypervisor::HyperV, None), &p),
            Some(Provider::Cidata(None))
        );
        p.files.push(FW_CFG_USER_DATA);
        assert_eq!(
            detect(&platform(Hypervisor::HyperV, None), &p),
            Some(Provider::FwCfg)
        );
    }

    #[test]
    fn auto_waits_a_bounded_time_for_a_late_cidata_disk() {
        let none = platform(Hypervisor::None, None);
        let mut p = Fake::new();
        p.disk_after = Some(3);
        assert_eq!(
            detect_settled(&none, &p, CIDATA_SETTLE),
            Some(Provider::Cidata(Some("/dev/vdb".into())))
        );
        // Never there: looked for once and once each quarter second, then none.
        let p = Fake::new();
        assert_eq!(detect_settled(&none, &p, Duration::from_secs(1)), None);
        assert_eq!(p.looks.get(), 5);
    }

    #[test]
    fn a_cidata_volume_is_known_by_its_descriptor() {
        let mut pvd = [0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[40..72].copy_from_slice(format!("{:<32}", "CIDATA").as_bytes());
        assert!(is_cidata_volume(&pvd));
        pvd[40..72].copy_from_slice(format!("{:<32}", "config-2").as_bytes());
        assert!(!is_cidata_volume(&pvd));
        pvd[40..72].copy_from_slice(format!("{:<32}", "cidata").as_bytes());
        pvd[0] = 2;
        assert!(!is_cidata_volume(&pvd));
        assert!(!is_cidata_volume(&pvd[..10]));
    }

    /// A fake /sys/class/block and /dev, and a disk whose volume is `cidata`.
    fn block_devices() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let (sys, dev) = (d.path().join("sys"), d.path().join("dev"));
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let mut iso = vec![0u8; ISO_PVD_OFFSET as usize + 2048];
        let pvd = &mut iso[ISO_PVD_OFFSET as usize..];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[40..72].copy_from_slice(format!("{:<32}", "cidata").as_bytes());
        (d, sys, dev, iso)
    }

    #[test]
    fn a_cidata_disk_is_found_among_block_devices() {
        let (_d, sys, dev, iso) = block_devices();
        for (name, bytes) in [("vda", vec![0u8; 4096]), ("vdb", iso), ("loop0", vec![])] {
            std::fs::create_dir(sys.join(name)).unwrap();
            std::fs::write(dev.join(name), bytes).unwrap();
        }
        assert_eq!(cidata_device(&sys, &dev), Some(dev.join("vdb")));
        std::fs::remove_file(dev.join("vdb")).unwrap();
        assert_eq!(cidata_device(&sys, &dev), None);
    }

    #[test]
    fn at_most_max_block_devices_are_opened_in_name_order() {
        let (_d, sys, dev, iso) = block_devices();
        // Disks named so their order is known; the cidata one is the last.
        let disk = |i: usize| format!("sd{i:04}");
        for i in 0..MAX_BLOCK_DEVICES - 1 {
            std::fs::create_dir(sys.join(disk(i))).unwrap();
            std::fs::write(dev.join(disk(i)), b"").unwrap();
        }
        let last = disk(MAX_BLOCK_DEVICES - 1);
        std::fs::create_dir(sys.join(&last)).unwrap();
        std::fs::write(dev.join(&last), &iso).unwrap();
        // The 64th in name order is looked at; loop devices do not count.
        std::fs::create_dir(sys.join("loop0")).unwrap();
        assert_eq!(cidata_device(&sys, &dev), Some(dev.join(&last)));
        // One more disk before it pushes it past the bound.
        std::fs::create_dir(sys.join("sd")).unwrap();
        assert_eq!(cidata_device(&sys, &dev), None);
    }

    #[test]
    fn base64_bodies_decode_as_gos_std_encoding() {
        let url = AZURE_USER_DATA;
        assert_eq!(base64_body(url, b"aGVsbG8=\n").unwrap(), b"hello");
        assert_eq!(base64_body(url, b"aGVs\r\nbG8=").unwrap(), b"hello");
        assert_eq!(base64_body(url, b"").unwrap(), b"");
        assert!(matches!(
            base64_body(url, b"#cloud-config"),
            Err(FetchError::Base64 { .. })
        ));
    }
}
