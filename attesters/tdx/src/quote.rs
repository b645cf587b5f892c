//! Just enough of the TDX quote layout to find the TD report fields we touch
//! (verification parses quotes with dcap-qvl in the tests).

use attester_sdk::{Error, Result};

/// Header size of quote versions 4 and 5.
const HEADER: usize = 48;
/// In a TD report body: MRCONFIGID and REPORTDATA.
const MRCONFIGID: usize = 184;
const REPORT_DATA: usize = 520;
/// TD report body size (TDX 1.0); TDX 1.5 bodies extend it.
const BODY_MIN: usize = 584;

/// Offset of the TD report body: right after the header in v4, after a 6-byte
/// type/size prefix in v5 and later.
pub fn body_offset(quote: &[u8]) -> Result<usize> {
    if quote.len() < HEADER + 6 {
        return Err(Error::internal(format!(
            "TDX quote is {} bytes: truncated",
            quote.len()
        )));
    }
    let version = u16::from_le_bytes([quote[0], quote[1]]);
    let tee = u32::from_le_bytes([quote[4], quote[5], quote[6], quote[7]]);
    if tee != 0x81 {
        return Err(Error::internal(format!(
            "quote TEE type {tee:#x} is not TDX (0x81)"
        )));
    }
    let body = match version {
        4 => HEADER,
        5.. => HEADER + 6,
        v => {
            return Err(Error::internal(format!(
                "TDX quote version {v} is not supported"
            )))
        }
    };
    if quote.len() < body + BODY_MIN {
        return Err(Error::internal(format!(
            "TDX quote is {} bytes: truncated",
            quote.len()
        )));
    }
    Ok(body)
}

pub fn report_data(quote: &[u8]) -> Result<&[u8]> {
    let b = body_offset(quote)? + REPORT_DATA;
    Ok(&quote[b..b + 64])
}

pub fn mrconfigid(quote: &[u8]) -> Result<&[u8]> {
    let b = body_offset(quote)? + MRCONFIGID;
    Ok(&quote[b..b + 48])
}

/// A copy of `quote` with its REPORTDATA replaced: what the recorded device serves.
pub fn with_report_data(quote: &[u8], rd: &[u8; 64]) -> Result<Vec<u8>> {
    let b = body_offset(quote)? + REPORT_DATA;
    let mut q = quote.to_vec();
    q[b..b + 64].copy_from_slice(rd);
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q4: &[u8] = include_bytes!("../tests/fixtures/tdx_quote_4.dat");
    const Q5: &[u8] = include_bytes!("../tests/fixtures/tdx_quote_5.dat");

    #[test]
    fn finds_bodies_of_v4_and_v5() {
        assert_eq!(body_offset(Q4).unwrap(), 48);
        assert_eq!(body_offset(Q5).unwrap(), 54);
    }

    #[test]
    fn report_data_round_trips() {
        for q in [Q4, Q5] {
            let patched = with_report_data(q, &[7; 64]).unwrap();
            assert_eq!(report_data(&patched).unwrap(), &[7; 64]);
            assert_eq!(patched.len(), q.len());
            assert_eq!(mrconfigid(&patched).unwrap(), mrconfigid(q).unwrap());
        }
    }

    #[test]
    fn truncated_and_foreign_quotes_are_errors() {
        let e = body_offset(&Q4[..300]).unwrap_err();
        assert_eq!(e.message(), "TDX quote is 300 bytes: truncated");
        let mut sgx = Q4.to_vec();
        sgx[4] = 0;
        assert_eq!(
            body_offset(&sgx).unwrap_err().message(),
            "quote TEE type 0x0 is not TDX (0x81)"
        );
        let mut v3 = Q4.to_vec();
        v3[0] = 3;
        assert_eq!(
            body_offset(&v3).unwrap_err().message(),
            "TDX quote version 3 is not supported"
        );
    }
}
