//! `--json`: the NDJSON events a bulk command writes to stdout for a program that started it (a
//! script, a line controller): one object per line, each with a `type` — `start`, `progress`
//! (every `--progress-interval`), `halt` (only when the run halts) and `summary` (always last
//! when the run got as far as the ledger). The shapes are documented in the README and fixed by
//! `tests/operator.rs`; change them only by adding fields.
//!
//! Events carry numbers, states, error codes, ClientIds and the command line; never a secret.
//! Where stdout goes is the caller's business; this module only writes lines to it.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use crate::ledger::ErrorGroup;
use crate::progress::Snapshot;

/// The pace a run will keep, as `start` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Pace {
    /// The rate the pacer aims at, all sources together.
    pub calls_per_second: f64,
    pub account_qps: f64,
    pub ip_qps: f64,
    pub headroom: f64,
    pub concurrency: usize,
    pub sources: usize,
}

/// How a run halted and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct HaltReport {
    /// `quota_full`, `fatal`, `all_sources_blocked`, `interrupted` or `ledger`.
    pub cause: &'static str,
    pub message: String,
    /// What a person has to do before resuming.
    pub action: String,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    Start {
        operation: &'a str,
        instance_id: &'a str,
        ledger: &'a str,
        /// Targets pending before the run: what it will work on.
        targets: i64,
        dry_run: bool,
        pace: Pace,
    },
    /// What this run has finished so far (`counts` are this run's, by state).
    Progress(Snapshot),
    Halt {
        #[serde(flatten)]
        halt: &'a HaltReport,
        exit_code: i32,
        resume: &'a str,
    },
    /// The ledger's counts for the operation after the run (what `status --json` shows) and
    /// what this run did.
    Summary {
        operation: &'a str,
        instance_id: &'a str,
        ledger: &'a str,
        counts: &'a BTreeMap<String, i64>,
        errors: &'a [ErrorGroup],
        elapsed_seconds: f64,
        calls: u64,
        calls_per_second: f64,
        throttled: u64,
        exit_code: i32,
        /// The command that resumes or retries the run, when there is something left to do.
        resume: Option<&'a str>,
    },
}

/// Writes events to stdout, or nothing without `--json`.
#[derive(Debug, Clone, Copy)]
pub struct Events {
    pub enabled: bool,
}

impl Events {
    pub fn emit(&self, event: &Event<'_>) {
        if !self.enabled {
            return;
        }
        let mut line = serde_json::to_vec(event).expect("events serialise");
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        // A controller that closed its end of the pipe has stopped listening; the run goes on.
        let _ = out.write_all(&line).and_then(|_| out.flush());
    }

    /// Human text: stdout without `--json`, stderr with it (stdout is the controller's).
    pub fn say(&self, text: &str) {
        if self.enabled {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
}
