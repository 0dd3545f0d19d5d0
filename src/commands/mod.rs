//! The commands, one family per module. Each takes its validated plan (from [`crate::plan`])
//! and the process's [`crate::run::RunContext`], does its work through the library's modules,
//! prints what happened, and returns its exit code or a [`crate::exit::Failure`].
//!
//! - [`bulk`]: `register`, `fetch`, `rotate`, `revoke`, `cert inactivate|activate` — ingest,
//!   then the pipeline over the ledger's pending targets.
//! - [`single`]: `ca register-code`, `ca verification-cert`, `cert list` — a few calls, no ledger.
//! - [`inspect`]: `status`, `export` — read a ledger.
//! - [`simulate`]: the simulator as a server.
//! - [`docs`]: `completions`, `man` — generated from the clap definitions of [`crate::cli`].

pub mod bulk;
pub mod docs;
pub mod inspect;
pub mod simulate;
pub mod single;
