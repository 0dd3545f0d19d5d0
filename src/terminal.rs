//! Untrusted text made safe to print: a CSV cell, the server's `Code`, `Message` and
//! `RequestId`, a redirect's location. Printed raw, a ClientId carrying OSC or CSI sequences
//! retitles or clears the operator's terminal, and a carriage return or newline draws a fake
//! line ("all registered"). Here every control character (C0, DEL, C1) and every bidirectional
//! override is shown escaped, as `\u{1b}`, `\n`, `\r`, `\t`.
//!
//! It owns only that rule. It must never be applied to what is written for machines (the JSON
//! events, which JSON escapes itself, and the export files, which hold values as they are).

use std::borrow::Cow;

/// `text` with every control character escaped: for a value inside one line.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_keeping(text, false)
}

/// `text` with every control character but the newline escaped: for a message of several lines
/// whose values were escaped with [`escape`] already (the `error:` line's chain).
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    escape_keeping(text, true)
}

fn escape_keeping(text: &str, newline: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe(c) && !(newline && c == '\n');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// Control characters, and the bidirectional embeddings, overrides and isolates that reorder
/// what a terminal shows (U+202A–U+202E, U+2066–U+2069).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_shown_not_played() {
        assert_eq!(escape("GID_a@@@x"), "GID_a@@@x");
        assert_eq!(
            escape("a\u{1b}]0;pwned\u{7}b\u{1b}[2J\r\n\u{9b}\u{202e}"),
            "a\\u{1b}]0;pwned\\u{7}b\\u{1b}[2J\\r\\n\\u{9b}\\u{202e}"
        );
        assert_eq!(escape_lines("one\ntwo\u{1b}"), "one\ntwo\\u{1b}");
        assert_eq!(escape("tab\there"), "tab\\there");
        assert_eq!(escape("ünïcode ✓"), "ünïcode ✓");
    }
}
