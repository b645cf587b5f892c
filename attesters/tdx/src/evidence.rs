//! Pure assembly of upstream's TDX evidence: `{"cc_eventlog":<std-b64>|null,"quote":"<std-b64>"}`.

use attester_sdk::{Evidence, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

pub const FORMAT: &str = "tdx/1";

#[derive(serde::Serialize)]
struct Document {
    cc_eventlog: Option<String>,
    quote: String,
}

pub fn evidence(quote: &[u8], cc_eventlog: Option<&[u8]>) -> Result<Evidence> {
    let doc = Document {
        cc_eventlog: cc_eventlog.map(|l| STANDARD.encode(l)),
        quote: STANDARD.encode(quote),
    };
    Evidence::from_json(&doc, FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_with_and_without_eventlog() {
        let e = evidence(&[1, 2, 3], Some(&[4])).unwrap();
        assert_eq!(e.bytes, br#"{"cc_eventlog":"BA==","quote":"AQID"}"#);
        let e = evidence(&[1, 2, 3], None).unwrap();
        assert_eq!(e.bytes, br#"{"cc_eventlog":null,"quote":"AQID"}"#);
    }
}
