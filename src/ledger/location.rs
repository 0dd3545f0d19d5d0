//! Where a ledger lives, read once from the `--ledger` value: a SQLite file, given as a path or
//! as a `sqlite:` URL, or a PostgreSQL database, given as a `postgres://` / `postgresql://` URL
//! (libpq's conventions: what the URL leaves out comes from the PG* environment variables).
//!
//! It owns what a `--ledger` value may say and how a location is shown in messages. It must
//! never open, create or lock anything (that is each backend's business: `status` must not
//! create a ledger), and it must never show what follows a URL's scheme in an error, since a
//! database URL can carry a password.

use std::path::{Path, PathBuf};

use super::LedgerError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerLocation {
    /// A SQLite database file, created (0600) by the commands that write a ledger.
    SqliteFile(PathBuf),
    /// A PostgreSQL database, shared by every worker pointed at it.
    Postgres(PostgresUrl),
}

/// A PostgreSQL URL as given. Its `Debug` and [`PostgresUrl::shown`] never include the password
/// or the query (where `password=` may be), so neither can reach a log or a message.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// The whole URL, for the driver only.
    pub(super) fn expose(&self) -> &str {
        &self.0
    }

    /// The URL as messages show it: scheme, user, host, port and database; no password, no
    /// parameters.
    pub fn shown(&self) -> String {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("postgres", &self.0));
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        // The authority ends at the first `/`; its user info at its last `@`.
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((user_info, host)) => {
                let user = user_info.split(':').next().unwrap_or_default();
                format!("{user}@{host}")
            }
            None => authority.to_owned(),
        };
        format!("{scheme}://{authority}{path}")
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({})", self.shown())
    }
}

impl LedgerLocation {
    /// Reads a `--ledger` value: a file path, or `sqlite:PATH` / `sqlite://PATH` (the forms
    /// sqlx's own URLs take), or a `postgres://` / `postgresql://` URL. Another URL scheme is
    /// refused.
    pub fn parse(value: &Path) -> Result<LedgerLocation, LedgerError> {
        // A path that is not UTF-8 cannot be a URL: schemes are ASCII.
        let Some(text) = value.to_str() else {
            return Ok(LedgerLocation::SqliteFile(value.to_owned()));
        };
        let refuse = |location: String, reason: &str| LedgerError::Unsupported {
            location,
            reason: reason.to_owned(),
        };
        if let Some(rest) = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            let shown = "sqlite:…".to_owned();
            if rest.is_empty() {
                return Err(refuse(shown, "the sqlite: URL names no file"));
            }
            if rest.contains('?') || rest == ":memory:" {
                return Err(refuse(
                    shown,
                    "URL parameters and in-memory databases are not supported; give the file's path",
                ));
            }
            return Ok(LedgerLocation::SqliteFile(PathBuf::from(rest)));
        }
        if let Some(scheme) = url_scheme(text) {
            let shown = format!("{scheme}://…");
            return match scheme.to_ascii_lowercase().as_str() {
                "postgres" | "postgresql" => {
                    Ok(LedgerLocation::Postgres(PostgresUrl(text.to_owned())))
                }
                _ => Err(refuse(
                    shown,
                    "not a kind of ledger this version knows; give --ledger a SQLite file path or a postgres:// URL",
                )),
            };
        }
        Ok(LedgerLocation::SqliteFile(value.to_owned()))
    }

    /// Whether the ledger is there already (a command that only reads refuses a missing one).
    /// A database server is taken to be there: only connecting would tell.
    pub fn exists(&self) -> bool {
        match self {
            LedgerLocation::SqliteFile(path) => path.exists(),
            LedgerLocation::Postgres(_) => true,
        }
    }

    /// The location as messages name it (a SQLite file: its path as given; a database: its URL
    /// without password or parameters).
    pub fn display(&self) -> String {
        match self {
            LedgerLocation::SqliteFile(path) => path.display().to_string(),
            LedgerLocation::Postgres(url) => url.shown(),
        }
    }
}

/// A path is always a SQLite file (tests and code that hold a path, not a `--ledger` value).
impl From<&Path> for LedgerLocation {
    fn from(path: &Path) -> Self {
        LedgerLocation::SqliteFile(path.to_owned())
    }
}

impl From<PathBuf> for LedgerLocation {
    fn from(path: PathBuf) -> Self {
        LedgerLocation::SqliteFile(path)
    }
}

/// The scheme of `scheme://…` (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<LedgerLocation, LedgerError> {
        LedgerLocation::parse(Path::new(value))
    }

    fn file(path: &str) -> LedgerLocation {
        LedgerLocation::SqliteFile(PathBuf::from(path))
    }

    #[test]
    fn a_path_or_a_sqlite_url_is_a_sqlite_file() {
        assert_eq!(parse("provision.sqlite").unwrap(), file("provision.sqlite"));
        assert_eq!(
            parse("/var/lib/l.sqlite").unwrap(),
            file("/var/lib/l.sqlite")
        );
        assert_eq!(parse("sqlite:l.sqlite").unwrap(), file("l.sqlite"));
        assert_eq!(parse("sqlite://l.sqlite").unwrap(), file("l.sqlite"));
        assert_eq!(
            parse("sqlite:///abs/l.sqlite").unwrap(),
            file("/abs/l.sqlite")
        );
        // Not a URL: no `://` after a scheme.
        assert_eq!(parse("dir:with/colon").unwrap(), file("dir:with/colon"));
        assert_eq!(parse("./2026://x").unwrap(), file("./2026://x"));
    }

    #[test]
    fn postgres_urls_are_databases_shown_without_their_password() {
        for (url, shown) in [
            (
                "postgres://worker:hunter2@db:5433/ledger?sslmode=require&password=hunter2",
                "postgres://worker@db:5433/ledger",
            ),
            ("postgresql://db/ledger", "postgresql://db/ledger"),
            ("POSTGRES://db", "POSTGRES://db"),
            ("postgres://w:p%40ss@word@db/l", "postgres://w@db/l"),
        ] {
            let location = parse(url).unwrap();
            assert!(matches!(location, LedgerLocation::Postgres(_)), "{url}");
            assert_eq!(location.display(), shown);
            let debug = format!("{location:?}");
            assert!(
                !debug.contains("hunter2") && !debug.contains("word"),
                "{debug}"
            );
        }
    }

    #[test]
    fn other_urls_and_sqlite_urls_without_a_file_are_refused() {
        for value in [
            "mysql://db/l",
            "sqlite:",
            "sqlite://",
            "sqlite::memory:",
            "sqlite://l.sqlite?mode=rwc",
        ] {
            let e = parse(value).unwrap_err();
            assert!(matches!(e, LedgerError::Unsupported { .. }), "{value}: {e}");
            assert_eq!(e.exit_code().code(), 2);
        }
    }
}
