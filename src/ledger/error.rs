//! What can go wrong with a ledger, in the words an operator acts on, and the exit code each
//! failure means.
//!
//! It owns the operator's wording and the one `match` from failure to exit code. A backend
//! turns its driver's errors into these variants, keeping the database's own message as text;
//! this module must never carry a driver's error type (`sqlx::Error`, a migration error), so
//! callers decide on the same variants whichever backend holds the ledger.

use crate::exit::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {}", describe_io(source))]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "ledger {path} is in use by another mqtt-provision process (lock {path}.lock); wait for it to finish, or use another --ledger"
    )]
    Busy { path: String },
    /// Maintenance on a database ledger while a worker holds a lease on it.
    #[error(
        "ledger {path} is in use by a running mqtt-provision worker; wait for every run on it to finish"
    )]
    InUse { path: String },
    #[error(
        "ledger {path} belongs to instance {found}, not {wanted}; use another --ledger for another instance"
    )]
    WrongInstance {
        path: String,
        found: String,
        wanted: String,
    },
    #[error(
        "ledger {path} does not exist; run a command that creates it first (for example `register`)"
    )]
    Missing { path: String },
    /// A file refused as a ledger (a link, another user's file, a file with two names …), or
    /// refused as one of its side files or its lock. Nothing was read or written.
    #[error("ledger {path} {reason}")]
    Unsafe { path: String, reason: String },
    /// An existing file with no ledger in it (empty): reading commands never create one.
    #[error("ledger {path} is empty, not a ledger; give the ledger a run created")]
    NotALedger { path: String },
    /// A `--ledger` value naming a kind of ledger this version cannot open. `location` is shown
    /// without what may follow the scheme (a URL can carry a password).
    #[error("ledger {location}: {reason}")]
    Unsupported { location: String, reason: String },
    /// `message`: what went wrong in the operator's words, then the database's own.
    #[error("ledger {path}: {message}")]
    Database { path: String, message: String },
    /// The database server cannot be reached, or dropped the connection (a server stopped or
    /// restarting, a network cut): worth trying again for a while, unlike the others.
    #[error("ledger {path}: {message}")]
    Unreachable { path: String, message: String },
    /// A rehearsal ledger under a real run, or a real one under a rehearsal.
    #[error("{}", origin_message(path, *simulated))]
    Origin { path: String, simulated: bool },
    /// Sealed secrets: recipients that do not match, a plain ledger that needs `ledger seal`, a
    /// missing or wrong identity. Nothing was sent or written.
    #[error("ledger {path}: {reason}")]
    Sealing { path: String, reason: String },
    /// `message`: the migrator's error with its causes, as `{:#}` printed them.
    #[error("ledger {path}: migrating the schema failed: {message}")]
    Migrate { path: String, message: String },
}

impl LedgerError {
    /// The exit code this failure means: usage when the command was pointed at the wrong ledger
    /// and nothing was sent, halted when the ledger failed under a run.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            LedgerError::Busy { .. }
            | LedgerError::InUse { .. }
            | LedgerError::WrongInstance { .. }
            | LedgerError::Missing { .. }
            | LedgerError::Unsafe { .. }
            | LedgerError::NotALedger { .. }
            | LedgerError::Unsupported { .. }
            | LedgerError::Sealing { .. }
            | LedgerError::Origin { .. } => ExitCode::Usage,
            LedgerError::Io { .. }
            | LedgerError::Database { .. }
            | LedgerError::Unreachable { .. }
            | LedgerError::Migrate { .. } => ExitCode::Halted,
        }
    }
}

impl LedgerError {
    /// A failure that may pass by itself: the database server unreachable.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, LedgerError::Unreachable { .. })
    }
}

fn origin_message(path: &str, simulated: bool) -> String {
    if simulated {
        format!(
            "ledger {path} holds credentials from the built-in simulator (a rehearsal), not from the service; a real run needs a ledger of its own: give another --ledger (a rehearsal without --ledger uses rehearsal.sqlite)"
        )
    } else {
        format!(
            "ledger {path} holds credentials from the service; a rehearsal (--simulate) must not write into it: give another --ledger, or leave --ledger out to use rehearsal.sqlite"
        )
    }
}

/// A file-system failure in the words an operator acts on (the same words SQLite's result codes
/// get), then the system's own.
fn describe_io(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let hint = match error.kind() {
        ErrorKind::ReadOnlyFilesystem => "the file or its file system is read-only",
        ErrorKind::StorageFull => "the disk is full; free space, then rerun",
        ErrorKind::PermissionDenied => "permission denied",
        _ => return error.to_string(),
    };
    format!("{hint} ({error})")
}

/// An error and its causes joined with ": ", as anyhow's `{:#}` prints a chain: the command edge
/// shows the text exactly as it did when the driver's error itself was the source.
pub(super) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_system_failures_say_what_to_do() {
        let read_only = LedgerError::Io {
            path: "l.sqlite".into(),
            source: std::io::Error::from_raw_os_error(30),
        };
        assert!(read_only.to_string().contains("read-only"), "{read_only}");
        let full = LedgerError::Io {
            path: "l.sqlite".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert!(full.to_string().contains("the disk is full"), "{full}");
        assert_eq!(full.exit_code(), ExitCode::Halted);
    }
}
