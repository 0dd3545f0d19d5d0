//! `status`: counts per state, errors by code with an example each, and the last run, as text
//! or JSON; the same per-operation block opens the summary and the dry-run plan.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::{ErrorGroup, ItemState, Ledger, LedgerError, RunRecord, WorkerView};
use crate::terminal::escape;

/// Counts per state and errors of one operation of a ledger.
#[derive(Debug, Clone, Serialize)]
pub struct OperationStatus {
    pub operation: String,
    pub counts: BTreeMap<String, i64>,
    pub errors: Vec<ErrorGroup>,
}

impl OperationStatus {
    pub async fn load(ledger: &Ledger, operation: &str) -> Result<Self, LedgerError> {
        Ok(OperationStatus {
            operation: operation.to_owned(),
            counts: ledger.counts(operation).await?,
            errors: ledger.error_groups(operation).await?,
        })
    }

    pub fn count(&self, state: ItemState) -> i64 {
        self.counts.get(state.as_str()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> i64 {
        self.counts.values().sum()
    }

    /// Human lines: counts, then errors by code with an example each.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Then what a backend counts beside the states (a shared ledger: `in_progress`).
        let counts: Vec<String> = ItemState::ALL
            .iter()
            .filter_map(|s| self.counts.get(s.as_str()).map(|n| format!("{s} {n}")))
            .chain(
                self.counts
                    .iter()
                    .filter(|(k, _)| !ItemState::ALL.iter().any(|s| s.as_str() == *k))
                    .map(|(k, n)| format!("{k} {n}")),
            )
            .collect();
        out.push_str(&format!(
            "  {} targets: {}\n",
            self.total(),
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        ));
        if !self.errors.is_empty() {
            out.push_str("  errors by code:\n");
            // A code can come in several groups (invalid input, one per reason): its total
            // first, then each group under it.
            let mut codes: Vec<&str> = Vec::new();
            for e in &self.errors {
                if !codes.contains(&e.code.as_str()) {
                    codes.push(&e.code);
                }
            }
            for code in codes {
                let groups: Vec<&ErrorGroup> =
                    self.errors.iter().filter(|e| e.code == code).collect();
                if let [e] = groups[..] {
                    out.push_str(&format!(
                        "    {} ×{}, {}\n",
                        escape(&e.code),
                        e.count,
                        example(e)
                    ));
                    continue;
                }
                let total: i64 = groups.iter().map(|e| e.count).sum();
                out.push_str(&format!(
                    "    {} ×{total} in all, {} kinds:\n",
                    escape(code),
                    groups.len()
                ));
                for e in groups {
                    out.push_str(&format!("      ×{}, {}\n", e.count, example(e)));
                }
            }
        }
        out
    }
}

/// "e.g. TARGET (RequestId …): message" of an error group, the message cut to 160 characters.
/// Targets, RequestIds and messages come from the input and the server: escaped.
fn example(e: &ErrorGroup) -> String {
    let mut out = format!("e.g. {}", escape(&e.example_target));
    if let Some(id) = &e.example_request_id {
        out.push_str(&format!(" (RequestId {})", escape(id)));
    }
    if let Some(m) = &e.message {
        let m: String = m.chars().take(160).collect();
        out.push_str(&format!(": {}", escape(&m)));
    }
    out
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerStatus {
    pub ledger: String,
    pub instance_id: String,
    pub operations: Vec<OperationStatus>,
    pub last_run: Option<RunRecord>,
    /// A run holds the ledger now (the last run is that one, not one that died).
    pub running: bool,
    /// A shared ledger's workers: live, and ended or dead in the last ten minutes.
    pub workers: Vec<WorkerView>,
}

impl LedgerStatus {
    pub async fn load(ledger: &Ledger) -> Result<Self, LedgerError> {
        let mut operations = Vec::new();
        for op in ledger.operations().await? {
            operations.push(OperationStatus::load(ledger, &op).await?);
        }
        let last_run = ledger.last_run().await?;
        let running = ledger.held_by_a_run();
        let workers = ledger.workers().await?;
        Ok(LedgerStatus {
            ledger: ledger.path().to_owned(),
            instance_id: ledger.instance_id().to_owned(),
            operations,
            last_run,
            running,
            workers,
        })
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "ledger {} (instance {})\n",
            escape(&self.ledger),
            escape(&self.instance_id)
        );
        for op in &self.operations {
            out.push_str(&format!("{}:\n", escape(&op.operation)));
            out.push_str(&op.render());
        }
        match &self.last_run {
            Some(run) => {
                let at = |ms: i64| {
                    jiff::Timestamp::from_millisecond(ms)
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                };
                let end = match (run.finished_ms, run.exit_code) {
                    (Some(f), Some(code)) => format!("ended {} with exit code {code}", at(f)),
                    _ if self.running => "running now".to_owned(),
                    _ => {
                        "did not finish (killed or crashed): rerun its command to resume".to_owned()
                    }
                };
                out.push_str(&format!(
                    "last run: {}, started {}, {end}\n  {}\n",
                    run.operation,
                    at(run.started_ms),
                    run.command
                ));
            }
            None => out.push_str("no run yet\n"),
        }
        if !self.workers.is_empty() {
            out.push_str(&render_workers(&self.workers));
        }
        out
    }
}

/// The fleet's workers: one line each (who, from where, its shares and pace, its heartbeat).
fn render_workers(workers: &[WorkerView]) -> String {
    let live = workers.iter().filter(|w| w.state == "live").count();
    let mut out = format!(
        "workers: {live} live, {} ended or dead in the last 10 minutes\n",
        workers.len() - live
    );
    for w in workers {
        let from = match (&w.egress, w.sources.is_empty()) {
            (Some(egress), true) => format!("default address via {egress}"),
            (Some(egress), false) => format!("{} via {egress}", w.sources.join(",")),
            (None, true) => "default address".to_owned(),
            (None, false) => w.sources.join(","),
        };
        let short_id: String = w.id.chars().take(8).collect();
        let mut line = format!(
            "  {short_id} {:<8} {} pid {} {} from {from}, heartbeat {:.1} s ago",
            w.state,
            escape(&w.host),
            w.pid,
            if w.operation.is_empty() {
                "-".to_owned()
            } else {
                escape(&w.operation).to_string()
            },
            w.heartbeat_age_s.max(0.0),
        );
        if w.state == "live" {
            let shares: Vec<String> = w
                .shares
                .iter()
                .map(|(pool, share)| format!("{} {share}", escape(pool)))
                .collect();
            line.push_str(&format!(", {:.0} calls/s", w.calls_per_second));
            if !shares.is_empty() {
                line.push_str(&format!(", shares/s: {}", shares.join(", ")));
            }
        } else if w.state == "dead" {
            line.push_str(" (its lease ran out: what it held is taken over)");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
