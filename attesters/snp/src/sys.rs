//! The one place this plugin calls the kernel itself: `SNP_GET_EXT_REPORT` on
//! `/dev/sev-guest` (include/uapi/linux/sev-guest.h), giving back the report and
//! the host's certificate table as **raw bytes**. The table comes from the host,
//! which CoCo does not trust: `sev`'s own `get_ext_report` walks it through raw
//! pointers and panics on a bad one, so here it is only copied, and
//! [`crate::certs::parse`] reads it with bounds checks.
//!
//! `unsafe` is allowed in this module only, for the ioctl: every buffer it hands
//! the kernel is owned here, sized as the UAPI declares, and outlives the call.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use attester_sdk::{Error, Result};

/// `struct snp_report_req`.
#[repr(C)]
struct ReportReq {
    user_data: [u8; 64],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// `struct snp_ext_report_req`.
#[repr(C)]
struct ExtReportReq {
    data: ReportReq,
    certs_address: u64,
    certs_len: u32,
}

/// `struct snp_report_resp`: the firmware's MSG_REPORT_RSP.
#[repr(C)]
struct ReportResp {
    data: [u8; RESP_LEN],
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
struct GuestRequest {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    /// `fw_error` (low 32 bits) and `vmm_error` (high 32 bits).
    exitinfo2: u64,
}

const RESP_LEN: usize = 4000;
/// MSG_REPORT_RSP: status, report size, 24 reserved bytes, then the report.
const REPORT_AT: usize = 32;

/// `_IOWR(type, nr, size)` as Linux encodes it on x86.
const fn iowr(ty: u8, nr: u8, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64
}

/// `SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)`.
pub const SNP_GET_EXT_REPORT: u64 = iowr(b'S', 2, std::mem::size_of::<GuestRequest>());

/// The kernel's bound on the certificate buffer (`SEV_FW_BLOB_MAX_SIZE`, 16 KiB,
/// page-aligned): asked for whole, so one request is enough.
pub const MAX_CERTS: usize = 0x4000;

/// `vmm_error`: the host's table did not fit the buffer.
const VMM_ERR_INVALID_LEN: u32 = 1;

/// One extended report at `vmpl` for `report_data`: the report bytes and the raw
/// certificate table (all zeros when the host provisioned none).
pub fn ext_report(
    dev: &std::fs::File,
    report_data: &[u8; 64],
    vmpl: u32,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut certs = vec![0u8; MAX_CERTS];
    let mut req = ExtReportReq {
        data: ReportReq {
            user_data: *report_data,
            vmpl,
            rsvd: [0; 28],
        },
        certs_address: certs.as_mut_ptr() as u64,
        certs_len: MAX_CERTS as u32,
    };
    let mut resp = ReportResp {
        data: [0; RESP_LEN],
    };
    let mut ioctl = GuestRequest {
        msg_version: 1,
        req_data: &mut req as *mut ExtReportReq as u64,
        resp_data: &mut resp as *mut ReportResp as u64,
        exitinfo2: 0,
    };
    // SAFETY: `ioctl`, `req`, `resp` and `certs` are live, exclusively borrowed
    // for the call and laid out as the UAPI declares; the kernel writes at most
    // `size_of::<ReportResp>()` into `resp` and `certs_len` bytes into `certs`.
    let rc = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            SNP_GET_EXT_REPORT as libc::c_ulong,
            &mut ioctl as *mut GuestRequest,
        )
    };
    if rc < 0 {
        let errno = std::io::Error::last_os_error();
        let (fw, vmm) = (ioctl.exitinfo2 as u32, (ioctl.exitinfo2 >> 32) as u32);
        if vmm == VMM_ERR_INVALID_LEN {
            return Err(Error::internal(format!(
                "the host's SNP certificate table needs {} bytes, more than the kernel's {MAX_CERTS}",
                req.certs_len
            )));
        }
        return Err(Error::unavailable(format!(
            "SNP_GET_EXT_REPORT failed (firmware error {fw:#x}, VMM error {vmm:#x})"
        ))
        .with_source(errno));
    }
    let report = report_from_resp(&resp.data)?;
    Ok((report, certs))
}

/// The report in a MSG_REPORT_RSP, checked: a zero status and a size that fits.
pub fn report_from_resp(resp: &[u8]) -> Result<Vec<u8>> {
    let word = |at: usize| {
        resp.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| Error::internal("the SNP report response is truncated"))
    };
    let status = word(0)?;
    if status != 0 {
        return Err(Error::unavailable(format!(
            "the SNP firmware answered status {status:#x}"
        )));
    }
    let size = word(4)?;
    resp.get(REPORT_AT..REPORT_AT.saturating_add(size))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            Error::internal(format!(
                "the SNP report response claims a {size}-byte report in {} bytes",
                resp.len()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_the_request_number_match_the_uapi() {
        assert_eq!(std::mem::size_of::<ReportReq>(), 96);
        assert_eq!(std::mem::size_of::<ExtReportReq>(), 112);
        assert_eq!(std::mem::size_of::<GuestRequest>(), 32);
        assert_eq!(std::mem::size_of::<ReportResp>(), 4000);
        assert_eq!(SNP_GET_EXT_REPORT, 0xc020_5302);
    }

    #[test]
    fn the_response_is_read_with_its_bounds() {
        let mut resp = vec![0u8; RESP_LEN];
        resp[4..8].copy_from_slice(&1184u32.to_le_bytes());
        resp[REPORT_AT] = 2;
        let r = report_from_resp(&resp).unwrap();
        assert_eq!((r.len(), r[0]), (1184, 2));
        // A size past the buffer, a failed status, a short buffer: errors.
        resp[4..8].copy_from_slice(&4000u32.to_le_bytes());
        assert_eq!(
            report_from_resp(&resp).unwrap_err().message(),
            "the SNP report response claims a 4000-byte report in 4000 bytes"
        );
        resp[0] = 0x16;
        assert_eq!(
            report_from_resp(&resp).unwrap_err().message(),
            "the SNP firmware answered status 0x16"
        );
        assert!(report_from_resp(&resp[..6]).is_err());
    }
}
