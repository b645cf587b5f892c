//! RFC 8785 JSON canonicalization (JCS), for the values RCAR hashes into report data:
//! objects with members sorted by their names' UTF-16 code units, no whitespace,
//! strings escaped as ECMAScript's `JSON.stringify` does, numbers in ECMAScript form.

use serde_json::Value;

use attester_sdk::{Error, Result};

pub fn canonical(v: &Value) -> Result<String> {
    let mut out = String::new();
    write(v, &mut out)?;
    Ok(out)
}

fn write(v: &Value, out: &mut String) -> Result<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number(n)?),
        Value::String(s) => string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out)?;
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write(&m[k], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn number(n: &serde_json::Number) -> Result<String> {
    if let Some(i) = n.as_i64() {
        return Ok(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Ok(u.to_string());
    }
    // Non-integers: ECMAScript's shortest round-trip form. Rust's `{}` for f64 is the
    // shortest round-trip digits too, but never uses exponents; RCAR's documents hold
    // no such numbers, so refuse rather than risk a differing hash.
    Err(Error::invalid_argument(format!(
        "cannot canonicalize the non-integer number {n}"
    )))
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc8785_rules() {
        let v = json!({"b": [1, "x\n\u{1}é"], "a": {"z": null, "é": true, "A": false}});
        assert_eq!(
            canonical(&v).unwrap(),
            "{\"a\":{\"A\":false,\"z\":null,\"é\":true},\"b\":[1,\"x\\n\\u0001é\"]}"
        );
        // UTF-16 order (RFC 8785 §3.2.3): U+1F600 is the surrogate pair D83D DE00,
        // so it sorts before U+FB33 although its code point is larger.
        let v = json!({"\u{FB33}": 2, "\u{1F600}": 1, "\u{20AC}": 3});
        assert_eq!(
            canonical(&v).unwrap(),
            "{\"\u{20AC}\":3,\"\u{1F600}\":1,\"\u{FB33}\":2}"
        );
        assert!(canonical(&json!(1.5)).is_err());
    }
}
