//! Reports: the end-of-run summary, `status`, and `export` (credentials or failures as CSV or
//! JSON). Export files hold DeviceAccessKeySecrets, so they are created 0600; nothing else here
//! prints a secret.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::api::mqtt;
use crate::ledger::{ErrorGroup, ItemState, Ledger, LedgerError, create_private};
use crate::pipeline::{Halt, RunOutcome};

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
        let counts: Vec<String> = ItemState::ALL
            .iter()
            .filter_map(|s| self.counts.get(s.as_str()).map(|n| format!("{s} {n}")))
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
            for e in &self.errors {
                out.push_str(&format!(
                    "    {} ×{}, e.g. {}",
                    e.code, e.count, e.example_target
                ));
                if let Some(id) = &e.example_request_id {
                    out.push_str(&format!(" (RequestId {id})"));
                }
                if let Some(m) = &e.message {
                    out.push_str(&format!(": {}", m.chars().take(160).collect::<String>()));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// What the exit code is, given how the run ended and what the ledger holds.
pub fn exit_code(halt: Option<&Halt>, status: &OperationStatus) -> i32 {
    match halt {
        Some(Halt::Interrupted) => 130,
        Some(_) => 3,
        None if status.count(ItemState::Pending) > 0
            || status.count(ItemState::Failed) > 0
            || status.count(ItemState::Invalid) > 0 =>
        {
            1
        }
        // Never report success when nothing was done at all.
        None if status.total() == 0 => 1,
        None => 0,
    }
}

/// The end-of-run summary, with what to do next.
pub fn summary(
    ledger: &Ledger,
    status: &OperationStatus,
    run: &RunOutcome,
    resume: &str,
) -> String {
    let secs = run.elapsed.as_secs_f64();
    let mut out = format!(
        "{} on instance {} (ledger {}):\n",
        status.operation,
        ledger.instance_id(),
        ledger.path()
    );
    out.push_str(&status.render());
    out.push_str(&format!(
        "  this run: {} calls in {:.1} s ({:.1} calls/s), {} throttled\n",
        run.calls,
        secs,
        if secs > 0.0 {
            run.calls as f64 / secs
        } else {
            0.0
        },
        run.throttled
    ));
    match &run.halt {
        None => {
            let failed = status.count(ItemState::Failed) + status.count(ItemState::Invalid);
            let pending = status.count(ItemState::Pending);
            if pending > 0 {
                out.push_str(&format!("  {pending} still pending: rerun the same command to finish them:\n    {resume}\n"));
            } else if failed > 0 {
                out.push_str(&format!("  finished with {failed} invalid or failed: `mqtt-provision export --failures --ledger {}` lists them; fix and rerun\n", ledger.path()));
            } else if status.total() == 0 {
                out.push_str("  nothing to do: no valid rows\n");
            } else {
                out.push_str(&match status.operation.as_str() {
                    "register" | "fetch" | "rotate" => format!(
                        "  done: every valid target holds a credential; `mqtt-provision export --operation {} --ledger {} --out credentials.csv`\n",
                        status.operation,
                        ledger.path()
                    ),
                    op => format!("  done: {op} finished for every valid target\n"),
                });
            }
        }
        Some(Halt::QuotaFull(e)) => out.push_str(&format!(
            "  HALTED: the instance's credential quota is full ({e}).\n  Unregister unused credentials or raise the quota, then resume with:\n    {resume}\n"
        )),
        Some(Halt::Fatal(e)) => out.push_str(&format!("  HALTED: {e}\n  Fix the credentials, permissions, instance or clock, then resume with:\n    {resume}\n")),
        Some(Halt::AllSourcesBlocked(e)) => out.push_str(&format!(
            "  HALTED: every source address was blocked for exceeding the per-IP limit ({e}).\n  Wait for the block to expire, lower --ip-qps, then resume with:\n    {resume}\n"
        )),
        Some(Halt::Interrupted) => out.push_str(&format!("  INTERRUPTED: resume with:\n    {resume}\n")),
        Some(Halt::Ledger(e)) => out.push_str(&format!("  HALTED: the ledger could not be written: {e}\n  Results not written are reconciled on resume:\n    {resume}\n")),
    }
    out
}

/// Opens the export destination: standard output, or a new 0600 file.
fn destination(out: &Path) -> std::io::Result<Box<dyn Write>> {
    if out.as_os_str() == "-" {
        return Ok(Box::new(std::io::BufWriter::new(std::io::stdout().lock())));
    }
    let file = create_private(out)?;
    file.set_len(0)?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

#[derive(Serialize)]
struct CredentialRow<'a> {
    client_id: &'a str,
    instance_id: &'a str,
    device_access_key_id: &'a str,
    device_access_key_secret: &'a str,
    mqtt_username: String,
    mqtt_password: String,
    state: &'a str,
}

#[derive(Serialize)]
struct FailureRow<'a> {
    file: &'a str,
    line: i64,
    client_id: &'a str,
    state: &'a str,
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

/// Writes rows as CSV or as a JSON array, streaming.
struct RowWriter {
    csv: Option<csv::Writer<Box<dyn Write>>>,
    json: Option<Box<dyn Write>>,
    first: bool,
}

impl RowWriter {
    fn new(out: Box<dyn Write>, json: bool) -> std::io::Result<Self> {
        if json {
            let mut out = out;
            out.write_all(b"[")?;
            Ok(RowWriter {
                csv: None,
                json: Some(out),
                first: true,
            })
        } else {
            Ok(RowWriter {
                csv: Some(csv::Writer::from_writer(out)),
                json: None,
                first: true,
            })
        }
    }

    fn write<T: Serialize>(&mut self, row: &T) -> std::io::Result<()> {
        if let Some(w) = &mut self.csv {
            return w.serialize(row).map_err(std::io::Error::other);
        }
        let out = self.json.as_mut().expect("one of the two");
        out.write_all(if self.first { b"\n  " } else { b",\n  " })?;
        self.first = false;
        serde_json::to_writer(&mut *out, row).map_err(std::io::Error::other)
    }

    fn finish(self) -> std::io::Result<()> {
        if let Some(mut w) = self.csv {
            return w.flush();
        }
        let mut out = self.json.expect("one of the two");
        out.write_all(b"\n]\n")?;
        out.flush()
    }
}

const PAGE: i64 = 5000;

/// Exports credentials of the given states; returns how many rows were written.
pub async fn export_credentials(
    ledger: &Ledger,
    operation: &str,
    states: &[&str],
    out: &Path,
    json: bool,
) -> anyhow::Result<u64> {
    let mut w = RowWriter::new(destination(out)?, json)?;
    let (mut cursor, mut n) = (0i64, 0u64);
    let mut exported = Vec::new();
    loop {
        let page = ledger.export_page(operation, states, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for r in &page {
            let (Some(key_id), Some(secret)) = (&r.key_id, &r.secret) else {
                continue;
            };
            exported.push(r.id);
            w.write(&CredentialRow {
                client_id: &r.target,
                instance_id: ledger.instance_id(),
                device_access_key_id: key_id,
                device_access_key_secret: secret.expose(),
                mqtt_username: mqtt::username(key_id, ledger.instance_id()),
                mqtt_password: mqtt::password(secret.expose(), &r.target),
                state: &r.state,
            })?;
            n += 1;
        }
    }
    w.finish()?;
    // Only once the file is complete: a rotated row's previous secret is no longer needed.
    ledger.mark_exported(operation, &exported).await?;
    Ok(n)
}

/// Exports every target that did not succeed, and every invalid input row.
pub async fn export_failures(
    ledger: &Ledger,
    operation: &str,
    out: &Path,
    json: bool,
) -> anyhow::Result<u64> {
    let mut w = RowWriter::new(destination(out)?, json)?;
    let (mut cursor, mut n) = (0i64, 0u64);
    loop {
        let page = ledger.rejects_page(operation, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.0;
        for (_, file, line, raw, reason) in &page {
            w.write(&FailureRow {
                file,
                line: *line,
                client_id: raw,
                state: "invalid",
                code: "InvalidInput",
                message: reason,
                request_id: "",
            })?;
            n += 1;
        }
    }
    let states = ["invalid", "failed", "pending", "not_found"];
    cursor = 0;
    loop {
        let page = ledger.export_page(operation, &states, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for r in &page {
            w.write(&FailureRow {
                file: &r.file,
                line: r.line,
                client_id: &r.target,
                state: &r.state,
                code: r.code.as_deref().unwrap_or(""),
                message: r.message.as_deref().unwrap_or(""),
                request_id: r.request_id.as_deref().unwrap_or(""),
            })?;
            n += 1;
        }
    }
    w.finish()?;
    Ok(n)
}
