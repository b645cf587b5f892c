//! The SNP certificate table (GHCB spec, "SNP Extended Guest Request"): entries of
//! `{guid[16], offset u32, length u32}` ended by an all-zero entry, then the
//! certificates; offsets count from the table's start. configfs-tsm hands it over
//! as `auxblob`. `sev` parses it through raw pointers and panics on a bad table, so
//! this bounds-checked parser reads what the kernel gives us.

use attester_sdk::{Error, Result};
use sev::firmware::host::{CertTableEntry, CertType};

const ENTRY: usize = 24;
/// Far more than the five types defined; a table claiming more is garbage.
const MAX_ENTRIES: usize = 64;

fn bad(what: String) -> Error {
    Error::internal(format!("malformed SNP certificate table: {what}"))
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// The entries of a table, sorted as `sev`'s `get_ext_report` returns them. Each
/// certificate must lie inside the table, after the entries, and apart from the
/// others: a host cannot make two entries share bytes or point into the header.
pub fn parse(table: &[u8]) -> Result<Vec<CertTableEntry>> {
    let mut out = Vec::new();
    // (start, end, entry) of each certificate's bytes.
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for i in 0..=MAX_ENTRIES {
        let at = i * ENTRY;
        let Some(e) = table.get(at..at + ENTRY) else {
            return Err(bad(format!(
                "no terminating entry in {} bytes",
                table.len()
            )));
        };
        let guid = uuid::Uuid::from_slice(&e[..16])
            .map_err(|err| bad(format!("entry {i}: bad GUID: {err}")))?;
        if guid.is_nil() {
            check_spans(&mut spans, at + ENTRY)?;
            out.sort();
            return Ok(out);
        }
        let (offset, length) = (u32_at(e, 16), u32_at(e, 20));
        let data = offset
            .checked_add(length)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| {
                bad(format!(
                    "entry {i} ({guid}) points at {offset}+{length}, past the {} bytes given",
                    table.len()
                ))
            })?;
        let entry = CertTableEntry::from_guid(&guid, data.to_vec())
            .map_err(|err| bad(format!("entry {i}: {err}")))?;
        out.push(entry);
        if length > 0 {
            spans.push((offset, offset + length, i));
        }
    }
    Err(bad(format!("more than {MAX_ENTRIES} entries")))
}

/// Certificates start after the entry table (`header` bytes, terminator included)
/// and do not overlap.
fn check_spans(spans: &mut [(usize, usize, usize)], header: usize) -> Result<()> {
    spans.sort_unstable();
    for (n, &(start, _, i)) in spans.iter().enumerate() {
        if start < header {
            return Err(bad(format!(
                "entry {i}'s certificate starts at {start}, inside the {header}-byte entry table"
            )));
        }
        if let Some(&(_, prev_end, j)) = n.checked_sub(1).and_then(|p| spans.get(p)) {
            if start < prev_end {
                return Err(bad(format!(
                    "the certificates of entries {j} and {i} overlap"
                )));
            }
        }
    }
    Ok(())
}

/// Build a table (the recorded device's auxblob, and what a host hands the PSP).
pub fn build(entries: &[CertTableEntry]) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut body = Vec::new();
    let start = ENTRY * (entries.len() + 1);
    for e in entries {
        let guid = uuid::Uuid::try_from(e.cert_type.clone())
            .map_err(|err| Error::internal("certificate type has no GUID").with_source(err))?;
        let offset = u32::try_from(start + body.len())
            .map_err(|_| Error::internal("certificate table over 4 GiB"))?;
        let length =
            u32::try_from(e.data.len()).map_err(|_| Error::internal("certificate over 4 GiB"))?;
        head.extend_from_slice(guid.as_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        head.extend_from_slice(&length.to_le_bytes());
        body.extend_from_slice(&e.data);
    }
    head.extend_from_slice(&[0; ENTRY]);
    head.extend_from_slice(&body);
    Ok(head)
}

/// `vcek`, `vlek`, `ask`, `ark`, `crl` → the certificate type.
pub fn cert_type(name: &str) -> Result<CertType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "ark" => CertType::ARK,
        "ask" => CertType::ASK,
        "vcek" => CertType::VCEK,
        "vlek" => CertType::VLEK,
        "crl" => CertType::CRL,
        other => {
            return Err(Error::invalid_argument(format!(
                "unknown certificate type {other:?}: expected ark, ask, vcek, vlek or crl"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VCEK: &[u8] = include_bytes!("../tests/fixtures/test-vcek.der");

    fn entries() -> Vec<CertTableEntry> {
        vec![
            CertTableEntry::new(CertType::ASK, vec![2; 10]),
            CertTableEntry::new(CertType::VCEK, VCEK.to_vec()),
        ]
    }

    #[test]
    fn round_trip_sorted_like_sev() {
        let table = build(&entries()).unwrap();
        let parsed = parse(&table).unwrap();
        assert_eq!(
            parsed[0].cert_type,
            CertType::VCEK,
            "sev's order: VCEK before ASK"
        );
        assert_eq!(parsed[0].data, VCEK);
        assert_eq!(parsed[1].cert_type, CertType::ASK);
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn layout_matches_the_sev_crate() {
        // sev's own encoder (what a host-side tool uses) yields the same bytes.
        let ours = build(&entries()).unwrap();
        let theirs = CertTableEntry::cert_table_to_vec_bytes(&entries()).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn empty_table_is_empty() {
        assert!(parse(&[0; ENTRY]).unwrap().is_empty());
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        let table = build(&entries()).unwrap();
        // cut inside the certificates
        let e = parse(&table[..table.len() - 1]).unwrap_err();
        assert!(
            e.message().starts_with("malformed SNP certificate table: entry 1 (63da758d-e664-4564-adc5-f4b93be8accd) points at"),
            "{}",
            e.message()
        );
        // cut inside the entries
        let e = parse(&table[..30]).unwrap_err();
        assert_eq!(
            e.message(),
            "malformed SNP certificate table: entry 0 (4ab7b379-bbac-4fe4-a02f-05aef327c782) points at 72+10, past the 30 bytes given"
        );
        // one valid (empty) entry and then nothing: no terminator
        let mut t = table[..16].to_vec();
        t.extend_from_slice(&[0; 8]);
        let e = parse(&t).unwrap_err();
        assert_eq!(
            e.message(),
            "malformed SNP certificate table: no terminating entry in 24 bytes"
        );
        // an offset near u32::MAX must not overflow
        let mut t = table.clone();
        t[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&t).is_err());
        // endless entries
        let mut t = Vec::new();
        for _ in 0..=MAX_ENTRIES {
            t.extend_from_slice(&[1; 16]);
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&0u32.to_le_bytes());
        }
        assert_eq!(
            parse(&t).unwrap_err().message(),
            "malformed SNP certificate table: more than 64 entries"
        );
    }

    #[test]
    fn overlapping_or_misplaced_certificates_are_refused() {
        let table = build(&entries()).unwrap();
        let field = |t: &mut Vec<u8>, entry: usize, at: usize, v: u32| {
            t[entry * ENTRY + at..entry * ENTRY + at + 4].copy_from_slice(&v.to_le_bytes())
        };
        // Entry 1 (the VCEK) pointed at entry 0's bytes.
        let mut t = table.clone();
        let first = u32::from_le_bytes(t[16..20].try_into().unwrap());
        field(&mut t, 1, 16, first);
        assert_eq!(
            parse(&t).unwrap_err().message(),
            "malformed SNP certificate table: the certificates of entries 0 and 1 overlap"
        );
        // A certificate inside the entry table itself (3 entries: 72 bytes).
        let mut t = table.clone();
        field(&mut t, 0, 16, 8);
        assert_eq!(
            parse(&t).unwrap_err().message(),
            "malformed SNP certificate table: entry 0's certificate starts at 8, inside the 72-byte entry table"
        );
        // The terminator missing: the next "entry" is certificate bytes, whose
        // GUID is no known type or whose span is off: an error either way.
        let mut t = table.clone();
        t[2 * ENTRY..3 * ENTRY].fill(0x41);
        assert!(parse(&t).is_err());
        // Unchanged, it parses.
        assert_eq!(parse(&table).unwrap().len(), 2);
    }

    #[test]
    fn cert_type_names() {
        assert_eq!(cert_type("VCEK").unwrap(), CertType::VCEK);
        assert_eq!(
            cert_type("vcekk").unwrap_err().message(),
            "unknown certificate type \"vcekk\": expected ark, ask, vcek, vlek or crl"
        );
    }
}
