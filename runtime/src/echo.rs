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
            push_escaped(&mut out, c);
        }
        n += 1;
    }
    if n > max {
        out.push_str(&format!("… ({n} characters)"));
    }
    out
}

/// `s` whole, escaped as [`bounded`] escapes (for text attestd itself stores,
/// such as event-log entries, printed for a person).
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// A caller's value quoted in a message: `"…"`, bounded and escaped.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", bounded(s, MAX_ECHO))
}

fn push_escaped(out: &mut String, c: char) {
    let e = c.escape_debug();
    match c {
        '"' | '\'' => out.push(c),
        // Rust's own escape where it has one (`\n`, `\u{202e}`, `\\`).
        _ if e.len() > 1 => out.extend(e),
        _ if is_hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        _ => out.push(c),
    }
}

/// Unicode categories Cc (controls), Cf (format: bidi overrides, zero-width
/// characters, …), Zl and Zp (line and paragraph separators): characters that
/// move, hide or break the text around them. Cf as of Unicode 15.
pub fn is_hidden(c: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let u = c as u32;
    c.is_control() || FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
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
    fn hidden_characters_are_the_ones_that_move_or_hide_text() {
        for c in [
            '\n',
            '\u{7f}',
            '\u{202e}',
            '\u{2028}',
            '\u{2029}',
            '\u{200b}',
            '\u{feff}',
            '\u{e0041}',
            '\u{ad}',
        ] {
            assert!(is_hidden(c), "{:x}", c as u32);
        }
        for c in ['a', ' ', 'é', '中', '\u{2027}', '\u{2030}'] {
            assert!(!is_hidden(c), "{:x}", c as u32);
        }
        assert_eq!(escaped("a\u{ad}b\u{e0041}"), "a\\u{ad}b\\u{e0041}");
        assert_eq!(quoted("kbs\n"), "\"kbs\\n\"");
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
