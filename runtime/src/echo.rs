//! Foreign text (a KBS's error detail, a caller's input) as it goes into an error
//! message or a log line: bounded and escaped, so it can neither flood the log nor
//! forge a line in it or hide what it says (line breaks, bidi overrides).

/// How many characters of foreign text an error or log line quotes.
pub const MAX_ECHO: usize = 256;

/// `s` with control, format and separator characters (and backslashes) escaped
/// as `\u{…}`/`\n`, cut at `max` characters with its full length noted.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0usize;
    for c in s.chars() {
        if n < max {
            match c {
                '"' | '\'' => out.push(c),
                c => out.extend(c.escape_debug()),
            }
        }
        n += 1;
    }
    if n > max {
        out.push_str(&format!("… ({n} characters)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_or_hide_a_line() {
        assert_eq!(
            bounded("resource not found: a/b/c", MAX_ECHO),
            "resource not found: a/b/c"
        );
        assert_eq!(bounded("a\nb\r\u{1b}[31m", 64), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(
            bounded("x\u{2028}y\u{2029}\u{202e}z\u{200b}", 64),
            "x\\u{2028}y\\u{2029}\\u{202e}z\\u{200b}"
        );
        assert_eq!(bounded(r#"say "hi" \o/"#, 64), r#"say "hi" \\o/"#);
        assert_eq!(bounded("déjà vu", 64), "déjà vu");
    }

    #[test]
    fn cuts_at_the_bound_and_says_how_long_it_was() {
        let at = "a".repeat(MAX_ECHO);
        assert_eq!(bounded(&at, MAX_ECHO), at);
        let over = "a".repeat(MAX_ECHO + 1);
        assert_eq!(
            bounded(&over, MAX_ECHO),
            format!("{at}… ({} characters)", MAX_ECHO + 1)
        );
    }
}
