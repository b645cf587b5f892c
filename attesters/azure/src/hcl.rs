//! The HCL report (the paravisor's wrapper around the hardware report), parsed by
//! az-cvm-vtpm. Checks here turn its failures into status codes and never reach
//! the crate's panicking paths (`var_data_sha256` panics on a non-SHA-256 report).
//! (Where the report lives — NV 0x01400001, report data into NV 0x01400002, the AK
//! at 0x81000003 — is az-cvm-vtpm's to know: it hard-codes them.)

use attester_sdk::{Error, Result};
pub use az_cvm_vtpm::hcl::ReportType;
use az_cvm_vtpm::hcl::{HclError, HclReport};
use az_cvm_vtpm::tdx::TdReport;
use zerocopy::IntoBytes;

/// A report type's name as operators read it.
pub fn type_name(t: ReportType) -> &'static str {
    match t {
        ReportType::Snp => "SNP",
        ReportType::Tdx => "TDX",
    }
}

/// Parse `bytes` as an HCL report and require its hardware report to be `want`.
/// A report of the other type is a failed precondition (this is the other Azure
/// CVM); bytes that are no HCL report at all are internal (the paravisor answered
/// nonsense).
pub fn parse(bytes: Vec<u8>, want: ReportType) -> Result<HclReport> {
    let len = bytes.len();
    let r = HclReport::new(bytes).map_err(|e| match e {
        HclError::InvalidReportSize => Error::internal(format!(
            "the HCL report is truncated ({len} bytes, or shorter than its variable data)"
        ))
        .with_source(e),
        HclError::InvalidReportType => {
            Error::internal("the HCL report holds neither an SNP nor a TDX report").with_source(e)
        }
        other => Error::internal("cannot parse the HCL report").with_source(other),
    })?;
    let got = r.report_type();
    if got != want {
        return Err(Error::failed_precondition(format!(
            "the HCL report holds a {} report, not {}: this is an Azure {} CVM",
            type_name(got),
            type_name(want),
            type_name(got)
        )));
    }
    Ok(r)
}

/// Whether `bytes` is an HCL report of type `want` (Detect: anything else is "no").
pub fn is_type(bytes: Vec<u8>, want: ReportType) -> bool {
    HclReport::new(bytes)
        .map(|r| r.report_type() == want)
        .unwrap_or(false)
}

/// The TD report inside a TDX HCL report, as bytes (what IMDS turns into a quote).
pub fn td_report_bytes(r: &HclReport) -> Result<Vec<u8>> {
    let td = TdReport::try_from(r).map_err(|e| {
        Error::internal("cannot take the TD report out of the HCL report").with_source(e)
    })?;
    Ok(td.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::bytes as fixture;
    use attester_sdk::Code;

    #[test]
    fn recorded_reports_have_their_types() {
        assert!(is_type(fixture("snp-hcl-report.bin"), ReportType::Snp));
        assert!(is_type(fixture("snp-hcl-report-2048.bin"), ReportType::Snp));
        assert!(is_type(fixture("tdx-hcl-report.bin"), ReportType::Tdx));
        assert!(!is_type(fixture("snp-hcl-report.bin"), ReportType::Tdx));
        assert!(!is_type(fixture("tdx-hcl-report.bin"), ReportType::Snp));
        assert!(!is_type(vec![0; 10], ReportType::Snp));
    }

    #[test]
    fn wrong_type_is_failed_precondition_naming_both() {
        let e = parse(fixture("snp-hcl-report.bin"), ReportType::Tdx)
            .err()
            .unwrap();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(
            e.message(),
            "the HCL report holds a SNP report, not TDX: this is an Azure SNP CVM"
        );
    }

    #[test]
    fn truncated_report_is_refused() {
        let mut b = fixture("tdx-hcl-report.bin");
        b.truncate(1000);
        let e = parse(b, ReportType::Tdx).err().unwrap();
        assert_eq!(e.code(), Code::Internal);
        assert!(e
            .message()
            .starts_with("the HCL report is truncated (1000 bytes"));
        // Cut inside the variable data: the header promises more than is there.
        let mut b = fixture("snp-hcl-report.bin");
        b.truncate(1300);
        let e = parse(b, ReportType::Snp).err().unwrap();
        assert!(
            e.message().starts_with("the HCL report is truncated"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn unknown_report_type_is_refused() {
        let mut b = fixture("snp-hcl-report.bin");
        // IgvmRequestData.report_type sits after the 32-byte header and the
        // hardware-report area (the larger of the SNP and TD report sizes).
        let at = 32 + 1184 + 8;
        assert_eq!(&b[at..at + 4], &2u32.to_le_bytes());
        b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        let e = parse(b, ReportType::Snp).err().unwrap();
        assert_eq!(
            e.message(),
            "the HCL report holds neither an SNP nor a TDX report"
        );
    }

    #[test]
    fn td_report_comes_out_whole() {
        let r = parse(fixture("tdx-hcl-report.bin"), ReportType::Tdx).unwrap();
        let td = td_report_bytes(&r).unwrap();
        assert_eq!(td.len(), 1024);
        // TDREPORT starts with REPORTTYPE: type 0x81 (TDX).
        assert_eq!(td[0], 0x81);
        // It is the slice of the HCL report right after the 32-byte header.
        assert_eq!(&td[..], &fixture("tdx-hcl-report.bin")[32..32 + 1024]);
    }
}
