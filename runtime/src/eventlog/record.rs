//! The AAEL wire format, pure: TCG2 crypto-agile records (`TCG_PCR_EVENT2`, TCG PC
//! Client PFP §10.2.2) of one digest each, whose event is a `TCG_PCClientTaggedEvent`
//! with id 0x4141454c ("AAEL") around the text `<domain> <operation> <content>`.
//! The digest is the hash of the whole tagged event, and that digest is what the
//! register is extended with — as upstream's attestation agent writes it.
//!
//! The first record of each register is `INIT/<alg> <hex>`: the register's value
//! when the log started. It is `EV_NO_ACTION`, because it is not extended: a TCG
//! replayer skips it, and an AAEL replayer starts that register from its value.

use std::collections::BTreeMap;

use attester_sdk::{Error, Result};
use sha2::Digest as _;

pub const EV_NO_ACTION: u32 = 0x3;
pub const EV_EVENT_TAG: u32 = 0x6;
/// `taggedEventID` of an AAEL entry: ASCII "AAEL".
pub const AAEL_TAG: u32 = 0x4141_454c;

/// Bounds on one entry's text, so a caller cannot grow the log without limit in
/// one request (CDH's largest entry is an image reference and digest).
pub const MAX_TEXT: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn parse(s: &str) -> Result<HashAlg> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "sha256" => Ok(HashAlg::Sha256),
            "sha384" => Ok(HashAlg::Sha384),
            "sha512" => Ok(HashAlg::Sha512),
            _ => Err(Error::invalid_argument(format!(
                "unknown hash algorithm {s:?}: expected sha256, sha384 or sha512"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// TPM_ALG_ID.
    pub fn tcg_id(self) -> u16 {
        match self {
            HashAlg::Sha256 => 0x000b,
            HashAlg::Sha384 => 0x000c,
            HashAlg::Sha512 => 0x000d,
        }
    }

    fn from_tcg_id(id: u16) -> Option<HashAlg> {
        match id {
            0x000b => Some(HashAlg::Sha256),
            0x000c => Some(HashAlg::Sha384),
            0x000d => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// The register after extending `value` with `digest`.
    pub fn extend(self, value: &[u8], digest: &[u8]) -> Vec<u8> {
        self.digest(&[value, digest].concat())
    }
}

/// One record: the register index as the log names it (PCR for (v)TPMs, CC MR index
/// for TDX), the event type, the digest and the AAEL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub index: u32,
    pub event_type: u32,
    pub alg: HashAlg,
    pub digest: Vec<u8>,
    pub text: String,
}

fn tagged(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&AAEL_TAG.to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

impl Record {
    /// An event entry; its digest is what gets extended.
    pub fn event(index: u32, alg: HashAlg, text: String) -> Record {
        Record {
            index,
            event_type: EV_EVENT_TAG,
            alg,
            digest: alg.digest(&tagged(&text)),
            text,
        }
    }

    /// The `INIT/<alg> <hex>` entry recording a register's starting value.
    pub fn init(index: u32, alg: HashAlg, value: &[u8]) -> Record {
        let text = format!("INIT/{} {}", alg.name(), hex::encode(value));
        Record {
            event_type: EV_NO_ACTION,
            ..Record::event(index, alg, text)
        }
    }

    /// The starting value an INIT record carries.
    pub fn init_value(&self) -> Option<Vec<u8>> {
        if self.event_type != EV_NO_ACTION {
            return None;
        }
        let rest = self.text.strip_prefix("INIT/")?;
        let (alg, hex_value) = rest.split_once(' ')?;
        if HashAlg::parse(alg).ok()? != self.alg {
            return None;
        }
        hex::decode(hex_value)
            .ok()
            .filter(|v| v.len() == self.alg.digest_len())
    }

    pub fn encode(&self) -> Vec<u8> {
        let event = tagged(&self.text);
        let mut out = Vec::with_capacity(22 + self.digest.len() + event.len());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.event_type.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&self.alg.tcg_id().to_le_bytes());
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&(event.len() as u32).to_le_bytes());
        out.extend_from_slice(&event);
        out
    }
}

fn malformed(at: usize, what: &str) -> Error {
    Error::internal(format!("malformed event log record at byte {at}: {what}"))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, start: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| malformed(start, "truncated"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, start: usize) -> Result<u32> {
        let s = self.take(4, start)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Every record of a log, with its byte offset. A torn or foreign record is an
/// error naming its offset, never skipped: the log must replay exactly.
pub fn parse(log: &[u8]) -> Result<Vec<(u64, Record)>> {
    let mut r = Reader { b: log, pos: 0 };
    let mut out = Vec::new();
    while r.pos < log.len() {
        let start = r.pos;
        let index = r.u32(start)?;
        let event_type = r.u32(start)?;
        if event_type != EV_EVENT_TAG && event_type != EV_NO_ACTION {
            return Err(malformed(start, &format!("event type {event_type:#x}")));
        }
        if r.u32(start)? != 1 {
            return Err(malformed(start, "not exactly one digest"));
        }
        let alg_id = r.take(2, start)?;
        let alg = HashAlg::from_tcg_id(u16::from_le_bytes([alg_id[0], alg_id[1]]))
            .ok_or_else(|| malformed(start, "unknown digest algorithm"))?;
        let digest = r.take(alg.digest_len(), start)?.to_vec();
        let size = r.u32(start)? as usize;
        let event = r.take(size, start)?;
        if size < 8 || u32::from_le_bytes([event[0], event[1], event[2], event[3]]) != AAEL_TAG {
            return Err(malformed(start, "not an AAEL tagged event"));
        }
        let text_len = u32::from_le_bytes([event[4], event[5], event[6], event[7]]) as usize;
        if text_len != size - 8 {
            return Err(malformed(start, "tagged event size disagrees"));
        }
        if alg.digest(event) != digest {
            return Err(malformed(start, "digest is not the hash of its event"));
        }
        let text = std::str::from_utf8(&event[8..])
            .map_err(|_| malformed(start, "text is not UTF-8"))?
            .to_string();
        let rec = Record {
            index,
            event_type,
            alg,
            digest,
            text,
        };
        if event_type == EV_NO_ACTION && rec.init_value().is_none() {
            return Err(malformed(start, "EV_NO_ACTION record is not an INIT entry"));
        }
        out.push((start as u64, rec));
    }
    Ok(out)
}

/// Each register's value after replaying the log: its INIT value extended with
/// every later event's digest, in order.
pub fn replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<BTreeMap<u32, Vec<u8>>> {
    let mut regs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for rec in records {
        match (rec.init_value(), regs.get_mut(&rec.index)) {
            (Some(v), None) => {
                regs.insert(rec.index, v);
            }
            (Some(_), Some(_)) => {
                return Err(Error::internal(format!(
                    "event log has a second INIT entry for register {}",
                    rec.index
                )))
            }
            (None, Some(v)) => *v = rec.alg.extend(v, &rec.digest),
            (None, None) => {
                return Err(Error::internal(format!(
                    "event log extends register {} before its INIT entry",
                    rec.index
                )))
            }
        }
    }
    Ok(regs)
}

/// Upstream's rules for an entry's fields: domain and operation non-empty without
/// whitespace, content without line breaks, all printable; and none of the
/// characters that move, hide or break text (Unicode Cc, Cf, Zl, Zp: bidi
/// overrides, zero-width characters, line separators), so an entry reads as what
/// it is and cannot display as two.
pub fn validate(domain: &str, operation: &str, content: &str) -> Result<String> {
    let field = |name: &str, v: &str, spaces: bool| -> Result<()> {
        if v.is_empty() && !spaces {
            return Err(Error::invalid_argument(format!("{name} is empty")));
        }
        if let Some(c) = v
            .chars()
            .find(|&c| crate::echo::is_hidden(c) || (!spaces && c.is_whitespace()))
        {
            let what = if matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}') {
                "a line break"
            } else if c.is_whitespace() {
                "whitespace"
            } else if c.is_control() {
                "a control character"
            } else {
                "an invisible formatting character"
            };
            return Err(Error::invalid_argument(format!(
                "{name} contains {what} ({:?})",
                c
            )));
        }
        Ok(())
    };
    field("domain", domain, false)?;
    field("operation", operation, false)?;
    field("content", content, true)?;
    let text = format!("{domain} {operation} {content}");
    if text.len() > MAX_TEXT {
        return Err(Error::invalid_argument(format!(
            "entry is {} bytes; the event log takes at most {MAX_TEXT}",
            text.len()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_upstreams_test_vectors() {
        // From upstream's eventlog tests: the digest of "domain operation content".
        let cases = [
            (
                HashAlg::Sha256,
                "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351",
            ),
            (
                HashAlg::Sha384,
                "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02",
            ),
        ];
        for (alg, want) in cases {
            let r = Record::event(4, alg, "domain operation content".into());
            assert_eq!(hex::encode(&r.digest), want);
        }
    }

    #[test]
    fn layout_is_tcg_pcr_event2() {
        let r = Record::event(17, HashAlg::Sha256, "d o c".into());
        let b = r.encode();
        assert_eq!(&b[0..4], &17u32.to_le_bytes());
        assert_eq!(&b[4..8], &6u32.to_le_bytes());
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..14], &0x000bu16.to_le_bytes());
        assert_eq!(&b[14..46], r.digest.as_slice());
        assert_eq!(&b[46..50], &13u32.to_le_bytes());
        assert_eq!(&b[50..54], b"LEAA", "0x4141454c little-endian");
        assert_eq!(&b[54..58], &5u32.to_le_bytes());
        assert_eq!(&b[58..], b"d o c");
    }

    #[test]
    fn parse_and_replay_round_trip() {
        let init = Record::init(17, HashAlg::Sha256, &[0; 32]);
        let a = Record::event(17, HashAlg::Sha256, "d op one".into());
        let b = Record::event(17, HashAlg::Sha256, "d op two".into());
        let log = [init.encode(), a.encode(), b.encode()].concat();
        let parsed = parse(&log).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1].0, init.encode().len() as u64);
        assert_eq!(parsed[2].1, b);
        let want = HashAlg::Sha256.extend(&HashAlg::Sha256.extend(&[0; 32], &a.digest), &b.digest);
        assert_eq!(replay(parsed.iter().map(|(_, r)| r)).unwrap()[&17], want);
    }

    #[test]
    fn torn_and_foreign_records_are_errors() {
        let init = Record::init(3, HashAlg::Sha384, &[1; 48]).encode();
        let e = Record::event(3, HashAlg::Sha384, "d op c".into()).encode();
        let log = [init.clone(), e.clone()].concat();
        let torn = &log[..log.len() - 1];
        assert_eq!(
            parse(torn).unwrap_err().message(),
            format!(
                "malformed event log record at byte {}: truncated",
                init.len()
            )
        );
        let mut flipped = log.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            parse(&flipped).unwrap_err().message(),
            format!(
                "malformed event log record at byte {}: digest is not the hash of its event",
                init.len()
            )
        );
        let mut typed = log.clone();
        typed[4] = 0x0d;
        assert_eq!(
            parse(&typed).unwrap_err().message(),
            "malformed event log record at byte 0: event type 0xd"
        );
        // An event before its INIT cannot replay.
        let parsed = parse(&e).unwrap();
        assert_eq!(
            replay(parsed.iter().map(|(_, r)| r)).unwrap_err().message(),
            "event log extends register 3 before its INIT entry"
        );
    }

    #[test]
    fn entries_are_validated_like_upstream() {
        assert_eq!(
            validate(
                "github.com/confidential-containers",
                "PullImage",
                "{\"image\":\"a b\"}"
            )
            .unwrap(),
            "github.com/confidential-containers PullImage {\"image\":\"a b\"}"
        );
        let msg = |d, o, c| validate(d, o, c).unwrap_err().message().to_string();
        assert_eq!(msg("a b", "op", "c"), "domain contains whitespace (' ')");
        assert_eq!(
            msg("d", "o\tp", "c"),
            "operation contains whitespace ('\\t')"
        );
        assert_eq!(
            msg("d", "op", "c\nd"),
            "content contains a line break ('\\n')"
        );
        assert_eq!(
            msg("d", "op", "c\u{7}"),
            "content contains a control character ('\\u{7}')"
        );
        assert_eq!(msg("", "op", "c"), "domain is empty");
        // Characters that make an entry read as something else, or as two.
        assert_eq!(
            msg("d", "op", "pull\u{202e}gpj.exe"),
            "content contains an invisible formatting character ('\\u{202e}')"
        );
        assert_eq!(
            msg("d", "op", "a\u{2028}b"),
            "content contains a line break ('\\u{2028}')"
        );
        assert_eq!(
            msg("d", "op", "a\u{2029}b"),
            "content contains a line break ('\\u{2029}')"
        );
        assert_eq!(
            msg("dom\u{200b}ain", "op", "c"),
            "domain contains an invisible formatting character ('\\u{200b}')"
        );
        assert_eq!(
            msg("d", "o\u{feff}p", "c"),
            "operation contains an invisible formatting character ('\\u{feff}')"
        );
        // Accented and non-Latin text is fine.
        assert!(validate("d", "op", "déjà 中文").is_ok());
        let big = "x".repeat(MAX_TEXT);
        assert_eq!(
            msg("d", "op", &big),
            format!(
                "entry is {} bytes; the event log takes at most {MAX_TEXT}",
                MAX_TEXT + 5
            )
        );
        // Empty content is allowed (the INIT entry's shape has none either).
        validate("d", "op", "").unwrap();
    }

    #[test]
    fn hash_names() {
        assert_eq!(HashAlg::parse("SHA-384").unwrap(), HashAlg::Sha384);
        assert_eq!(
            HashAlg::parse("md5").unwrap_err().message(),
            "unknown hash algorithm \"md5\": expected sha256, sha384 or sha512"
        );
    }
}
