//! The raw SNP `ATTESTATION_REPORT` (AMD SEV-SNP ABI, table "ATTESTATION_REPORT
//! Structure"): the two fields the attester reads or writes, and parsing with `sev`.

use attester_sdk::{Error, Result};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

/// The report is 0x4A0 bytes; the signature covers bytes 0 to 0x29F.
pub const LEN: usize = 0x4A0;
const REPORT_DATA: std::ops::Range<usize> = 0x50..0x90;
const HOST_DATA: std::ops::Range<usize> = 0xC0..0xE0;

fn check_len(report: &[u8]) -> Result<()> {
    if report.len() != LEN {
        return Err(Error::internal(format!(
            "SNP attestation report is {} bytes, expected {LEN}",
            report.len()
        )));
    }
    Ok(())
}

pub fn report_data(report: &[u8]) -> Result<&[u8]> {
    check_len(report)?;
    Ok(&report[REPORT_DATA])
}

pub fn host_data(report: &[u8]) -> Result<&[u8]> {
    check_len(report)?;
    Ok(&report[HOST_DATA])
}

/// `report` with REPORT_DATA replaced: what a recorded device answers.
pub fn with_report_data(report: &[u8], rd: &[u8; 64]) -> Result<Vec<u8>> {
    check_len(report)?;
    let mut out = report.to_vec();
    out[REPORT_DATA].copy_from_slice(rd);
    Ok(out)
}

/// Parse with `sev`, as upstream does before serialising (and as Trustee does
/// after deserialising): a report `sev` cannot read is refused here, not there.
pub fn parse(report: &[u8]) -> Result<AttestationReport> {
    check_len(report)?;
    AttestationReport::from_bytes(report)
        .map_err(|e| Error::internal("cannot parse the SNP attestation report").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &[u8] = include_bytes!("../tests/fixtures/test-report.bin");
    const VLEK_REPORT: &[u8] = include_bytes!("../tests/fixtures/test-vlek-report.bin");

    #[test]
    fn fields_agree_with_sev() {
        for raw in [REPORT, VLEK_REPORT] {
            let r = parse(raw).unwrap();
            assert_eq!(report_data(raw).unwrap(), r.report_data);
            assert_eq!(host_data(raw).unwrap(), r.host_data);
            let changed = with_report_data(raw, &[0x5a; 64]).unwrap();
            assert_eq!(parse(&changed).unwrap().report_data, [0x5a; 64]);
            assert!(changed[..0x50] == raw[..0x50] && changed[0x90..] == raw[0x90..]);
        }
    }

    #[test]
    fn truncated_is_refused_before_parsing() {
        let e = parse(&REPORT[..LEN - 1]).unwrap_err();
        assert_eq!(e.code(), attester_sdk::Code::Internal);
        assert_eq!(
            e.message(),
            "SNP attestation report is 1183 bytes, expected 1184"
        );
        assert!(with_report_data(&REPORT[..10], &[0; 64]).is_err());
    }

    #[test]
    fn an_unknown_version_is_refused_by_sev() {
        let mut bad = REPORT.to_vec();
        bad[0] = 1; // version 1 predates every report sev can read
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.message(), "cannot parse the SNP attestation report");
    }
}
