//! Reports: what the tool tells its user about a ledger and a run — the end-of-run summary
//! ([`summary`]), `status` ([`status`]), the dry-run plan ([`plan`]), `export` ([`export`]), `show`
//! ([`history`]) and
//! the `cert list` file ([`certificates`]); [`formula`] makes the cells of files meant for people
//! inert for spreadsheets. Reports read the ledger and write text or files;
//! they never send a call, and nothing here prints a secret except the export files, which are
//! created 0600.

pub mod certificates;
pub mod export;
pub mod formula;
pub mod history;
pub mod plan;
pub mod status;
pub mod summary;

pub use status::OperationStatus;
pub use summary::{exit_code, halt_code, halt_report, halted, nothing_sent, summary};
