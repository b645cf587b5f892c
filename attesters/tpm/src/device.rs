//! The device seam: everything that talks to a TPM, on one thread that owns the
//! tss-esapi context (the context is not `Send`, and a TPM serves one command at a
//! time anyway): an SDK [`Worker`], so the queue is bounded, requests whose caller
//! gave up are skipped, and a thread that died shows in the plugin's health.

use std::str::FromStr;

use attester_sdk::worker::Worker;
use attester_sdk::{Code, Error, Result};
use num_traits::FromPrimitive;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::{CapabilityType, PropertyTag};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{
    HashingAlgorithm, PublicAlgorithm, RsaSchemeAlgorithm,
};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::structures::CapabilityData;
use tss_esapi::structures::{
    Data, Digest, DigestValues, HashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
    Public, PublicBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, RsaScheme,
    SignatureScheme,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

use crate::evidence::Quote;

/// Upstream's default AK handle.
pub const DEFAULT_AK_HANDLE: u32 = 0x8101_0002;
/// PCRs in the quote: the whole SHA-256 bank.
pub const PCR_COUNT: u64 = 24;

const SLOTS: [PcrSlot; 24] = [
    PcrSlot::Slot0,
    PcrSlot::Slot1,
    PcrSlot::Slot2,
    PcrSlot::Slot3,
    PcrSlot::Slot4,
    PcrSlot::Slot5,
    PcrSlot::Slot6,
    PcrSlot::Slot7,
    PcrSlot::Slot8,
    PcrSlot::Slot9,
    PcrSlot::Slot10,
    PcrSlot::Slot11,
    PcrSlot::Slot12,
    PcrSlot::Slot13,
    PcrSlot::Slot14,
    PcrSlot::Slot15,
    PcrSlot::Slot16,
    PcrSlot::Slot17,
    PcrSlot::Slot18,
    PcrSlot::Slot19,
    PcrSlot::Slot20,
    PcrSlot::Slot21,
    PcrSlot::Slot22,
    PcrSlot::Slot23,
];

/// Where the TPM is: a TCTI string as tpm2-tools take it (`device:/dev/tpmrm0`,
/// `swtpm:host=127.0.0.1,port=2321`, …).
#[derive(Debug, Clone)]
pub struct TpmConfig {
    pub tcti: String,
    pub ak_handle: u32,
}

/// The TCTI to use: the given one, else `TPM2TOOLS_TCTI`/`TCTI`, else the kernel
/// resource manager `/dev/tpmrm0`, else `/dev/tpm0`.
pub fn default_tcti(given: Option<String>) -> String {
    given
        .or_else(|| std::env::var("TPM2TOOLS_TCTI").ok())
        .or_else(|| std::env::var("TCTI").ok())
        .unwrap_or_else(|| {
            if std::path::Path::new("/dev/tpmrm0").exists()
                || !std::path::Path::new("/dev/tpm0").exists()
            {
                "device:/dev/tpmrm0".into()
            } else {
                "device:/dev/tpm0".into()
            }
        })
}

/// Requests that may wait for the TPM; one more is `RESOURCE_EXHAUSTED`. A quote
/// takes tens of milliseconds on a hardware TPM: 16 waiting is already a backlog
/// longer than any caller's patience.
pub const MAX_QUEUED: usize = 16;

/// A handle on the TPM thread. Cheap to clone; the thread ends with the last handle.
#[derive(Clone)]
pub struct Tpm {
    worker: Worker<Device>,
}

impl Tpm {
    /// Open the TPM and make sure the AK exists (creating and persisting it if not).
    pub fn open(cfg: TpmConfig) -> Result<Tpm> {
        Ok(Tpm {
            worker: Worker::start("TPM", MAX_QUEUED, move || Device::open(&cfg))?,
        })
    }

    /// `Ok` while the TPM thread runs.
    pub fn health(&self) -> Result<()> {
        self.worker.health()
    }

    /// A quote over the SHA-256 bank with `nonce` as qualifying data.
    pub async fn quote(&self, nonce: Vec<u8>) -> Result<Quote> {
        self.worker.run(move |d| d.quote(nonce)).await
    }

    /// Extend SHA-256 PCR `pcr` with `digest` (32 bytes).
    pub async fn extend(&self, pcr: u64, digest: Vec<u8>) -> Result<()> {
        check_pcr(pcr)?;
        if digest.len() != 32 {
            return Err(Error::invalid_argument(format!(
                "digest is {} bytes; the SHA-256 bank takes 32",
                digest.len()
            )));
        }
        self.worker.run(move |d| d.extend(pcr, digest)).await
    }

    /// Read SHA-256 PCR `pcr`.
    pub async fn read(&self, pcr: u64) -> Result<Vec<u8>> {
        check_pcr(pcr)?;
        self.worker.run(move |d| d.read(pcr)).await
    }
}

fn check_pcr(pcr: u64) -> Result<()> {
    if pcr >= PCR_COUNT {
        return Err(Error::invalid_argument(format!(
            "PCR {pcr} does not exist: the SHA-256 bank has PCRs 0 to 23"
        )));
    }
    Ok(())
}

/// Whether a TPM answers on `tcti` (cheap: open a context, ask for 1 random byte).
pub fn detect(tcti: &str) -> bool {
    let Ok(conf) = TctiNameConf::from_str(tcti) else {
        return false;
    };
    if let TctiNameConf::Device(_) = &conf {
        let path = tcti.trim_start_matches("device:");
        if !std::path::Path::new(path).exists() {
            return false;
        }
    }
    Context::new(conf).and_then(|mut c| c.get_random(1)).is_ok()
}

struct Device {
    ctx: Context,
    ak_handle: u32,
    /// The AK and its public key (DER), once found or created.
    ak: Option<(KeyHandle, Vec<u8>)>,
}

impl Device {
    fn open(cfg: &TpmConfig) -> Result<Device> {
        let conf = TctiNameConf::from_str(&cfg.tcti).map_err(|e| {
            Error::invalid_argument(format!("invalid TCTI {:?}", cfg.tcti)).with_source(e)
        })?;
        let mut ctx = Context::new(conf).map_err(|e| {
            Error::unavailable(format!("no TPM answers on {}", cfg.tcti)).with_source(e)
        })?;
        // A key already at the handle is checked now: a wrong one stops the
        // plugin at start. Creating a missing one (a fresh vTPM: every new pod
        // VM) is a key generation, left to the first quote so the plugin serves,
        // and the init-data binding's extend runs, without waiting for it.
        let ak = find_ak(&mut ctx, cfg.ak_handle)?;
        if ak.is_none() {
            // Cheap, unlike the key generation: a TPM that could never make
            // the AK is refused now, and `auto` selection passes it over.
            can_make_ak(&mut ctx, cfg.ak_handle)?;
        }
        Ok(Device {
            ctx,
            ak_handle: cfg.ak_handle,
            ak,
        })
    }

    /// The AK, created and persisted at its handle if the TPM has none yet
    /// (or taken from the handle, where another process persisted the same
    /// key since this one started: `attestd evidence`, a retiring generation).
    fn ak(&mut self) -> Result<(KeyHandle, Vec<u8>)> {
        if let Some(ak) = &self.ak {
            return Ok(ak.clone());
        }
        let ak = make_ak(&mut self.ctx, self.ak_handle)?;
        self.ak = Some(ak.clone());
        Ok(ak)
    }

    fn quote(&mut self, nonce: Vec<u8>) -> Result<Quote> {
        let data = Data::try_from(nonce)
            .map_err(|e| Error::invalid_argument("qualifying data too long").with_source(e))?;
        let (ak, ak_public_der) = self.ak()?;
        let selection = selection()?;
        let (attest, signature) = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.quote(
                    ak,
                    data,
                    SignatureScheme::RsaSsa {
                        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                    },
                    selection,
                )
            })
            .map_err(|e| tpm_error("TPM2_Quote failed", e))?;
        let message = attest
            .marshall()
            .map_err(|e| tpm_error("cannot marshal TPMS_ATTEST", e))?;
        let signature = signature
            .marshall()
            .map_err(|e| tpm_error("cannot marshal TPMT_SIGNATURE", e))?;
        Ok(Quote {
            message,
            signature,
            pcrs: self.read_bank()?,
            ak_public_der,
        })
    }

    fn read_bank(&mut self) -> Result<Vec<[u8; 32]>> {
        let data = tss_esapi::abstraction::pcr::read_all(&mut self.ctx, selection()?)
            .map_err(|e| tpm_error("TPM2_PCR_Read failed", e))?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or_else(|| Error::internal("the TPM returned no SHA-256 PCR bank"))?;
        bank.into_iter()
            .map(|(_, d)| {
                <[u8; 32]>::try_from(d.value())
                    .map_err(|_| Error::internal("a SHA-256 PCR is not 32 bytes"))
            })
            .collect()
    }

    fn extend(&mut self, pcr: u64, digest: Vec<u8>) -> Result<()> {
        let handle = PcrHandle::from_u64(pcr)
            .ok_or_else(|| Error::invalid_argument(format!("no PCR handle for {pcr}")))?;
        let mut values = DigestValues::new();
        let digest = Digest::try_from(digest)
            .map_err(|e| Error::invalid_argument("bad digest").with_source(e))?;
        values.set(HashingAlgorithm::Sha256, digest);
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
            .map_err(|e| {
                let what = format!("TPM2_PCR_Extend of PCR {pcr} failed");
                let locality = matches!(&e, tss_esapi::Error::Tss2Error(rc)
                    if rc.kind() == Some(Tss2ResponseCodeKind::Locality));
                if !locality {
                    return tpm_error(&what, e);
                }
                // Upstream's default init_pcr (17) is one of these.
                Error::new(
                    Code::FailedPrecondition,
                    format!(
                        "{what}: PCR {pcr} takes extends only from a locality this guest \
                         does not have (PCRs 17-22 need locality 1 and up): measure into \
                         PCR 23 ([eventlog_config] init_pcr = 23)"
                    ),
                )
                .with_source(e)
            })
    }

    fn read(&mut self, pcr: u64) -> Result<Vec<u8>> {
        pcr_of(&self.read_bank()?, pcr)
    }
}

/// PCR `pcr` of a bank as the device returned it: checked, never indexed blindly
/// (a TPM answering a short bank is an error, not a panic of the TPM thread).
fn pcr_of(bank: &[[u8; 32]], pcr: u64) -> Result<Vec<u8>> {
    usize::try_from(pcr)
        .ok()
        .and_then(|i| bank.get(i))
        .map(|v| v.to_vec())
        .ok_or_else(|| {
            Error::internal(format!(
                "the TPM returned {} SHA-256 PCRs, not PCR {pcr}",
                bank.len()
            ))
        })
}

fn selection() -> Result<PcrSelectionList> {
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &SLOTS)
        .build()
        .map_err(|e| tpm_error("cannot build the PCR selection", e))
}

/// The AK at `handle`, created when absent: a restricted RSA-2048 RSASSA-SHA256
/// signing key, made as a primary key of the owner hierarchy and persisted there.
/// (The owner hierarchy needs no EK policy session, and a primary key from a fixed
/// template is the same key every time for the same seed.)
fn persistent_handle(handle: u32) -> Result<PersistentTpmHandle> {
    PersistentTpmHandle::new(handle).map_err(|e| {
        Error::invalid_argument(format!("AK handle {handle:#x} is not a persistent handle"))
            .with_source(e)
    })
}

/// The AK persisted at `handle`, checked, with its public key; `None` when the
/// handle is empty.
fn find_ak(ctx: &mut Context, handle: u32) -> Result<Option<(KeyHandle, Vec<u8>)>> {
    let persistent = persistent_handle(handle)?;
    // Asked, not guessed from a failed load: a TPM that cannot answer (not
    // started, say) is an error now, not at the first quote.
    let (handles, _) = ctx
        .get_capability(CapabilityType::Handles, handle, 1)
        .map_err(|e| tpm_error("cannot list the TPM's persistent handles", e))?;
    let present = matches!(&handles, CapabilityData::Handles(l)
        if l.first() == Some(&TpmHandle::Persistent(persistent)));
    if !present {
        return Ok(None);
    }
    let obj = ctx
        .tr_from_tpm_public(TpmHandle::Persistent(persistent))
        .map_err(|e| tpm_error(&format!("cannot load the key at {handle:#x}"), e))?;
    Ok(Some(ak_with_der(ctx, KeyHandle::from(obj), handle)?))
}

fn ak_with_der(ctx: &mut Context, key: KeyHandle, handle: u32) -> Result<(KeyHandle, Vec<u8>)> {
    let (public, _, _) = ctx
        .read_public(key)
        .map_err(|e| tpm_error(&format!("cannot read the key at {handle:#x}"), e))?;
    Ok((key, ak_der(&public, handle)?))
}

/// The template's key at `handle`. The template makes the same key every time
/// from the owner hierarchy's seed, so it is made first (transient), and then
/// persisted, or, where the handle holds a key by now (another process made
/// it after this one looked), compared with it: the same key is taken, any
/// other refused. Before, a key persisted meanwhile failed every quote until
/// the plugin restarted, while its health stayed green.
fn make_ak(ctx: &mut Context, handle: u32) -> Result<(KeyHandle, Vec<u8>)> {
    let persistent = persistent_handle(handle)?;
    tracing::info!(
        handle = format!("{handle:#x}"),
        "no AK found; creating one in the owner hierarchy"
    );
    let primary = ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.create_primary(Hierarchy::Owner, ak_template()?, None, None, None, None)
        })
        .map_err(|e| tpm_error("cannot create the AK", e))?;
    let transient = ObjectHandle::from(primary.key_handle);
    let made = ak_der(&primary.out_public, handle).and_then(|want| {
        if let Some(there) = find_ak(ctx, handle)? {
            return same_key(there, &want, handle);
        }
        let persisted = ctx.execute_with_nullauth_session(|ctx| {
            ctx.evict_control(
                Provision::Owner,
                transient,
                Persistent::Persistent(persistent),
            )
        });
        match persisted {
            Ok(p) => Ok((KeyHandle::from(p), want)),
            // Persisted by someone else between the look and the write.
            Err(e) => match find_ak(ctx, handle)? {
                Some(there) => same_key(there, &want, handle),
                None => Err(tpm_error(
                    &format!("cannot persist the AK at {handle:#x}"),
                    e,
                )),
            },
        }
    });
    let _ = ctx.flush_context(transient);
    made
}

/// The key found at `handle`, when it is the one the template makes.
fn same_key(there: (KeyHandle, Vec<u8>), want: &[u8], handle: u32) -> Result<(KeyHandle, Vec<u8>)> {
    if there.1 == want {
        tracing::info!(
            handle = format!("{handle:#x}"),
            "the AK was persisted by another process meanwhile; it is the template's key, taken"
        );
        return Ok(there);
    }
    Err(Error::failed_precondition(format!(
        "a key was persisted at AK handle {handle:#x} after the plugin started, and it is not \
         the key the AK template makes: quotes are refused (remove it with `tpm2_evictcontrol \
         -C o -c {handle:#x}`, or give the plugin another --ak-handle)"
    )))
}

/// TPMA_PERMANENT's ownerAuthSet: the owner hierarchy has an authorization
/// value, which this plugin (using the empty one) does not know.
const OWNER_AUTH_SET: u32 = 1;

/// Whether this TPM can make the AK at all: the owner hierarchy without an
/// authorization value, and a free persistent slot.
fn can_make_ak(ctx: &mut Context, handle: u32) -> Result<()> {
    let property = |ctx: &mut Context, tag, what: &str| {
        ctx.get_tpm_property(tag)
            .map_err(|e| tpm_error(&format!("cannot read the TPM's {what}"), e))
    };
    let cannot = |why: &str| {
        Err(Error::failed_precondition(format!(
            "no AK at {handle:#x}, and this TPM cannot make one: {why}"
        )))
    };
    let permanent = property(ctx, PropertyTag::Permanent, "permanent attributes")?;
    if permanent.is_some_and(|p| p & OWNER_AUTH_SET != 0) {
        return cannot(
            "its owner hierarchy has an authorization value (provision the AK at the handle \
             beforehand, or clear the owner authorization)",
        );
    }
    if property(ctx, PropertyTag::HrPersistentAvail, "free persistent slots")? == Some(0) {
        return cannot("it has no free persistent slot (remove one with `tpm2_evictcontrol`)");
    }
    Ok(())
}

fn ak_template() -> tss_esapi::Result<Public> {
    let attrs = ObjectAttributesBuilder::new()
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_user_with_auth(true)
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_rsa_parameters(
            PublicRsaParametersBuilder::new()
                .with_scheme(RsaScheme::create(
                    RsaSchemeAlgorithm::RsaSsa,
                    Some(HashingAlgorithm::Sha256),
                )?)
                .with_key_bits(RsaKeyBits::Rsa2048)
                .with_exponent(RsaExponent::default())
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(true)
                .build()?,
        )
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}

/// A key fit to sign quotes: RSA, restricted, signing, not decrypting.
fn check_ak(public: &Public, handle: u32) -> Result<()> {
    match public {
        Public::Rsa {
            object_attributes: a,
            ..
        } if a.restricted() && a.sign_encrypt() && !a.decrypt() => Ok(()),
        _ => Err(Error::failed_precondition(format!(
            "the key at AK handle {handle:#x} is not a restricted RSA signing key"
        ))),
    }
}

fn ak_der(public: &Public, handle: u32) -> Result<Vec<u8>> {
    check_ak(public, handle)?;
    match public {
        Public::Rsa {
            parameters, unique, ..
        } => {
            // An exponent of 0 means the default, 65537.
            let e = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            Ok(crate::evidence::rsa_spki_der(unique.value(), e))
        }
        _ => Err(Error::internal("unreachable: checked RSA above")),
    }
}

/// What to do about a TPM nobody has started (TPM_RC_INITIALIZE).
const NOT_STARTED: &str = "the TPM has not been started (TPM2_Startup): firmware does \
     this on hardware; start swtpm with --flags not-need-init,startup-clear, or run \
     `tpm2_startup -c` against it once";

/// A TPM error, `Unavailable` when waiting may help (lockout, retry, busy).
fn tpm_error(what: &str, e: tss_esapi::Error) -> Error {
    if let tss_esapi::Error::Tss2Error(rc) = &e {
        if rc.kind() == Some(Tss2ResponseCodeKind::Initialize) {
            return Error::new(Code::FailedPrecondition, format!("{what}: {NOT_STARTED}"))
                .with_source(e);
        }
    }
    let code = match &e {
        tss_esapi::Error::Tss2Error(rc) => match rc.kind() {
            Some(
                Tss2ResponseCodeKind::Lockout
                | Tss2ResponseCodeKind::Retry
                | Tss2ResponseCodeKind::Yielded
                | Tss2ResponseCodeKind::Testing
                | Tss2ResponseCodeKind::NvRate
                | Tss2ResponseCodeKind::NvUnavailable,
            ) => Code::Unavailable,
            // PCRs 17-22 only take extends from localities a guest OS does not have.
            Some(Tss2ResponseCodeKind::Locality) => Code::FailedPrecondition,
            _ => Code::Internal,
        },
        _ => Code::Internal,
    };
    Error::new(code, what.to_string()).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::constants::response_code::Tss2ResponseCode;

    fn code_of(rc: u32) -> Code {
        tpm_error(
            "op",
            tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc)),
        )
        .code()
    }

    #[test]
    fn busy_and_locked_out_are_unavailable() {
        assert_eq!(code_of(0x921), Code::Unavailable); // TPM_RC_LOCKOUT
        assert_eq!(code_of(0x922), Code::Unavailable); // TPM_RC_RETRY
        assert_eq!(code_of(0x908), Code::Unavailable); // TPM_RC_YIELDED
    }

    #[test]
    fn locality_is_failed_precondition_others_internal() {
        assert_eq!(code_of(0x907), Code::FailedPrecondition); // TPM_RC_LOCALITY
        assert_eq!(code_of(0x101), Code::Internal); // TPM_RC_FAILURE
    }

    #[test]
    fn error_keeps_its_cause() {
        let e = tpm_error(
            "TPM2_Quote failed",
            tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x921)),
        );
        assert!(
            e.chain().starts_with("TPM2_Quote failed: "),
            "{}",
            e.chain()
        );
    }

    #[test]
    fn bad_pcr_index_is_refused_before_the_tpm() {
        let e = check_pcr(24).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        check_pcr(23).unwrap();
    }

    #[test]
    fn pcr_values_from_the_device_are_checked_not_indexed() {
        let bank = [[7u8; 32]; 24];
        assert_eq!(pcr_of(&bank, 23).unwrap(), vec![7; 32]);
        // A device answering a short bank (or a huge index): an error, no panic.
        let e = pcr_of(&bank[..3], 17).unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert_eq!(e.message(), "the TPM returned 3 SHA-256 PCRs, not PCR 17");
        assert!(pcr_of(&bank, u64::MAX).is_err());
    }

    #[test]
    fn default_tcti_prefers_the_given_one() {
        assert_eq!(default_tcti(Some("swtpm:port=1".into())), "swtpm:port=1");
    }

    #[test]
    fn a_tpm_nobody_started_says_what_to_do() {
        let e = tpm_error(
            "cannot create the AK",
            tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x100)),
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.chain()
                .starts_with("cannot create the AK: the TPM has not been started (TPM2_Startup)"),
            "{}",
            e.chain()
        );
        assert!(e.chain().contains("tpm2_startup -c"), "{}", e.chain());
    }
}
