//! Cells of the CSV files meant for people (`export --failures`, `cert list`) made inert for
//! spreadsheets: a cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is a
//! formula to Excel and LibreOffice (`=HYPERLINK(...)`, `+cmd|...`), so it gets a leading `'`,
//! which spreadsheets show as text and hide.
//!
//! It must never touch the credential CSV: flashing tools read it, and a password beginning
//! with `+` or `=` must reach them intact (people get the `.xlsx`, whose cells are all text).

use std::borrow::Cow;

/// `text` as a cell no spreadsheet evaluates.
pub fn inert(text: &str) -> Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_become_text_and_the_rest_is_untouched() {
        for (cell, shown) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("GID_test@@@dev-1", "GID_test@@@dev-1"),
            ("", ""),
        ] {
            assert_eq!(inert(cell), shown);
        }
    }
}
