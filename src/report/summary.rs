//! The end-of-run summary and the exit code: honest counts, what this run did, and what to do
//! next (the command to resume, where the failures are, how to export).

use crate::events::HaltReport;
use crate::exit::ExitCode;
use crate::ledger::{ItemState, Ledger};
use crate::pipeline::{Halt, Operation, RunOutcome};
use crate::terminal::escape;

use super::status::OperationStatus;

/// The count a shared ledger gives the pending targets other live workers hold.
const IN_PROGRESS: &str = "in_progress";

/// What the exit code is, given how the run ended and what the ledger holds.
pub fn exit_code(halt: Option<&Halt>, status: &OperationStatus) -> ExitCode {
    match halt {
        Some(halt) => halt_code(halt),
        None if status.count(ItemState::Pending) > 0
            || status.count(ItemState::Failed) > 0
            || status.count(ItemState::Invalid) > 0 =>
        {
            ExitCode::Incomplete
        }
        // Never report success when nothing was done at all.
        None if status.total() == 0 => ExitCode::Incomplete,
        None => ExitCode::Success,
    }
}

/// The exit code of a run that stopped early.
pub fn halt_code(halt: &Halt) -> ExitCode {
    match halt {
        Halt::Interrupted => ExitCode::Interrupted,
        _ => ExitCode::Halted,
    }
}

/// The end-of-run summary, with what to do next.
pub fn summary(
    ledger: &Ledger,
    operation: Operation,
    status: &OperationStatus,
    run: &RunOutcome,
    resume: &str,
) -> String {
    let secs = run.elapsed.as_secs_f64();
    let mut out = format!(
        "{} on instance {} (ledger {}):\n",
        status.operation,
        escape(ledger.instance_id()),
        escape(ledger.path())
    );
    out.push_str(&status.render());
    // A rate over less than a second says nothing (two calls are not "991.8 calls/s").
    let rate = if secs >= 1.0 {
        format!(" ({:.1} calls/s)", run.calls as f64 / secs)
    } else {
        String::new()
    };
    out.push_str(&format!(
        "  this run: {} calls in {secs:.1} s{rate}, {} throttled\n",
        run.calls, run.throttled
    ));
    match &run.halt {
        None => {
            let failed = status.count(ItemState::Failed) + status.count(ItemState::Invalid);
            let pending = status.count(ItemState::Pending);
            if pending > 0 {
                out.push_str(&format!("  {pending} still pending: rerun the same command to finish them:\n    {resume}\n"));
            } else if failed > 0 {
                let selection = match operation.name() {
                    "register" => String::new(),
                    other => format!(" --operation {other}"),
                };
                out.push_str(&format!("  finished with {failed} invalid or failed: `mqtt-provision export --failures{selection} --ledger {}` lists them; fix and rerun\n", ledger.path()));
            } else if let Some(held) = status.counts.get(IN_PROGRESS).filter(|n| **n > 0) {
                out.push_str(&format!("  this worker's share is done; {held} target(s) are held by other workers still running (if one dies, the others take its targets over)\n"));
            } else if status.total() == 0 {
                out.push_str("  nothing to do: no valid rows\n");
            } else {
                let not_found = status.count(ItemState::NotFound);
                out.push_str(&if operation.leaves_credentials() {
                    let holding = match not_found {
                        0 => "every valid target holds a credential".to_owned(),
                        n => format!("{n} not found by the service (they hold no credential); the others hold one"),
                    };
                    format!(
                        "  done: {holding}; `mqtt-provision export --ledger {} --out credentials.csv` writes what every device holds now\n",
                        ledger.path()
                    )
                } else {
                    format!(
                        "  done: {} finished for every valid target\n",
                        operation.name()
                    )
                });
            }
        }
        Some(halt) => out.push_str(&halted(halt, resume)),
    }
    out
}

/// The summary's lines for a run that stopped early: why, what to do, the command to resume.
pub fn halted(halt: &Halt, resume: &str) -> String {
    match halt {
        Halt::Interrupted => format!("  INTERRUPTED: resume with:\n    {resume}\n"),
        halt => {
            let report = halt_report(halt);
            format!(
                "  HALTED: {}\n  {} with:\n    {resume}\n",
                escape(&report.message),
                report.action
            )
        }
    }
}

/// Why a run halted and what to do before resuming: the summary's text and the `halt` event.
pub fn halt_report(halt: &Halt) -> HaltReport {
    let (cause, message, action) = match halt {
        Halt::QuotaFull(e) => (
            "quota_full",
            format!("the instance's credential quota is full ({e})."),
            "Unregister unused credentials or raise the quota, then resume",
        ),
        Halt::Fatal(e) => (
            "fatal",
            e.to_string(),
            "Fix the credentials, permissions, instance or clock, then resume",
        ),
        Halt::AllSourcesBlocked(e) => (
            "all_sources_blocked",
            format!("every source address was blocked for exceeding the per-IP limit ({e})."),
            "Wait for the block to expire, lower --ip-qps, then resume",
        ),
        Halt::Outage { since, last } => (
            "outage",
            format!(
                "the service has been unreachable since {} (longer than --outage-patience){}; every unfinished target is still pending",
                crate::pipeline::breaker::clock_time(*since),
                last.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            "Check the network and the service, then resume (the same command)",
        ),
        Halt::Interrupted => (
            "interrupted",
            "interrupted by Ctrl-C or SIGTERM".to_owned(),
            "Resume",
        ),
        Halt::Ledger(e) => (
            "ledger",
            format!("the ledger could not be written: {e}"),
            "Results not written are reconciled on resume; fix the ledger's disk, then resume",
        ),
        Halt::LedgerUnreachable(e) => (
            "ledger_unreachable",
            format!("the ledger's database could not be reached: {e}"),
            "Check the database server and the network to it, then resume (the same command)",
        ),
    };
    HaltReport {
        cause,
        message,
        action: action.to_owned(),
    }
}

/// A rerun with nothing left to do says so, and when the work was done: resume is the default,
/// so a second `rotate` of the same devices must not look like a rotation.
pub fn nothing_sent(operation: Operation, done_ms: Option<i64>) -> String {
    let when = done_ms
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| format!(" (the last on {t})"))
        .unwrap_or_default();
    let again = match operation {
        Operation::Register { .. } => String::new(),
        _ => format!("; `--again` runs {} anew for them", operation.name()),
    };
    format!("nothing sent: every target was done in an earlier run{when}{again}\n")
}
