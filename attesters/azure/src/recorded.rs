//! The recorded vTPM: serves an HCL report and a quote recorded on a real Azure
//! CVM, with a software PCR bank. Tests and demos only: compiled with feature
//! `recorded` (and for this crate's tests); shipped plugins have no such mode.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use attester_sdk::{Error, Result};
use sha2::{Digest, Sha256};

use crate::vtpm::{check_pcr, Quote, Vtpm, PCR_COUNT, USER_DATA_LEN};

/// Recordings a [`Recorded`] vTPM serves.
#[derive(Debug, Clone)]
pub struct Recording {
    /// An HCL report as read from NV index 0x01400001.
    pub hcl_report: PathBuf,
    /// A quote as JSON `{"signature":"<hex>","message":"<hex>","pcrs":["<hex>",…]}`
    /// (az-snp-vtpm's `tpm-quote-v1.json`). Without one, quoting is unavailable.
    pub quote: Option<PathBuf>,
}

/// A vTPM that serves recordings: the HCL report as recorded (report data cannot
/// change a signed report), the recorded quote, and a software SHA-256 PCR bank
/// starting at the recorded PCR values (zeros without a quote).
pub struct Recorded {
    hcl_report: Vec<u8>,
    quote: Option<Quote>,
    pcrs: Mutex<Vec<[u8; 32]>>,
    /// Report data written last, as the paravisor's index would hold it.
    last_report_data: Mutex<Vec<u8>>,
}

#[derive(serde::Deserialize)]
struct HexQuote {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::unavailable(format!(
            "cannot read the recorded {what} {}",
            path.display()
        ))
        .with_source(e)
    })
}

/// Parse a recorded quote in its hex JSON form.
pub fn parse_hex_quote(bytes: &[u8]) -> Result<Quote> {
    let bad = |m: String| Error::invalid_argument(format!("recorded vTPM quote: {m}"));
    let h: HexQuote = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let hexd = |s: &str, f: &str| hex::decode(s).map_err(|e| bad(format!("{f}: {e}")));
    let signature = hexd(&h.signature, "signature")?;
    let message = hexd(&h.message, "message")?;
    let mut pcrs = Vec::with_capacity(h.pcrs.len());
    for (i, p) in h.pcrs.iter().enumerate() {
        let b = hexd(p, "pcrs")?;
        pcrs.push(
            <[u8; 32]>::try_from(b.as_slice())
                .map_err(|_| bad(format!("PCR {i} is {} bytes, not 32", b.len())))?,
        );
    }
    if pcrs.len() != PCR_COUNT as usize {
        return Err(bad(format!("{} PCRs, not {PCR_COUNT}", pcrs.len())));
    }
    Ok(Quote {
        signature,
        message,
        pcrs,
    })
}

impl Recorded {
    pub fn open(r: &Recording) -> Result<Recorded> {
        let hcl_report = read(&r.hcl_report, "HCL report")?;
        let quote = match &r.quote {
            Some(p) => Some(parse_hex_quote(&read(p, "vTPM quote")?)?),
            None => None,
        };
        let pcrs = quote
            .as_ref()
            .map(|q| q.pcrs.clone())
            .unwrap_or_else(|| vec![[0; 32]; PCR_COUNT as usize]);
        Ok(Recorded {
            hcl_report,
            quote,
            pcrs: Mutex::new(pcrs),
            last_report_data: Mutex::new(Vec::new()),
        })
    }

    /// The report data written last (what the paravisor's index would hold).
    pub fn last_report_data(&self) -> Vec<u8> {
        self.last_report_data
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    fn bank(&self) -> Result<std::sync::MutexGuard<'_, Vec<[u8; 32]>>> {
        self.pcrs
            .lock()
            .map_err(|_| Error::internal("the recorded PCR bank lock is poisoned"))
    }
}

impl Vtpm for Recorded {
    fn hcl_report(&self, report_data: &[u8]) -> Result<Vec<u8>> {
        if let Ok(mut g) = self.last_report_data.lock() {
            *g = report_data.to_vec();
        }
        Ok(self.hcl_report.clone())
    }

    fn current_hcl_report(&self) -> Result<Vec<u8>> {
        Ok(self.hcl_report.clone())
    }

    fn quote(&self, nonce: &[u8]) -> Result<Quote> {
        if nonce.len() > USER_DATA_LEN {
            return Err(Error::invalid_argument(format!(
                "quote nonce is {} bytes, more than {USER_DATA_LEN}",
                nonce.len()
            )));
        }
        self.quote.clone().ok_or_else(|| {
            Error::unavailable("no recorded vTPM quote was given (--recorded-quote)")
        })
    }

    fn extend(&self, pcr: u8, digest: &[u8; 32]) -> Result<()> {
        check_pcr(pcr)?;
        let mut bank = self.bank()?;
        let mut h = Sha256::new();
        h.update(bank[pcr as usize]);
        h.update(digest);
        bank[pcr as usize] = h.finalize().into();
        Ok(())
    }

    fn read_pcr(&self, pcr: u8) -> Result<[u8; 32]> {
        check_pcr(pcr)?;
        Ok(self.bank()?[pcr as usize])
    }
}
