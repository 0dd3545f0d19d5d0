//! The writer: the one task that stores outcomes, in batched transactions (every 500 outcomes
//! or 250 ms, whichever first). A kill -9 loses at most the last batch and the calls in flight;
//! the durable claim (`maybe_applied`) makes the next run reconcile those instead of re-sending.
//!
//! A database server that cannot be reached (a ledger on PostgreSQL) stops dispatch at once;
//! the writer keeps the outcomes of the calls still in flight in memory and tries the write
//! again until the server answers or the patience runs out, then the run halts either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, LedgerError, OutcomeRecord};

pub const FLUSH_ROWS: usize = 500;
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The first wait before a write is tried again, doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Runs until every sender is gone; on a ledger error it cancels `stop` (so dispatch ends) and
/// returns the error, which the run reports. An unreachable database is tried again for up to
/// `patience` (see [`outage`]).
pub async fn run(
    ledger: Arc<Ledger>,
    operation: &'static str,
    mut rx: mpsc::Receiver<OutcomeRecord>,
    stop: CancellationToken,
    patience: Duration,
) -> Result<(), LedgerError> {
    let mut buffer: Vec<OutcomeRecord> = Vec::with_capacity(FLUSH_ROWS);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            biased;
            message = rx.recv() => match message {
                Some(record) => {
                    buffer.push(record);
                    if buffer.len() < FLUSH_ROWS {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
        };
        match ledger.record(operation, &buffer).await {
            Ok(()) => buffer.clear(),
            Err(e) if e.is_unreachable() => {
                stop.cancel();
                return Err(outage(&ledger, operation, rx, buffer, e, patience).await);
            }
            Err(e) => {
                stop.cancel();
                return Err(e);
            }
        }
        if closed {
            return Ok(());
        }
    }
}

/// The database went away with `failed` unwritten: gathers the outcomes still coming (the calls
/// in flight, the targets handed back) and writes them, `failed` first and unchanged (the ledger
/// tells a retried batch that had landed from one that had not), trying again with a growing
/// pause until the server answers or `patience` has passed since the failure. Returns why the
/// run halts: what happened and how many outcomes were kept or lost.
async fn outage(
    ledger: &Ledger,
    operation: &'static str,
    mut rx: mpsc::Receiver<OutcomeRecord>,
    mut failed: Vec<OutcomeRecord>,
    mut cause: LedgerError,
    patience: Duration,
) -> LedgerError {
    let since = Instant::now();
    let since_clock = super::breaker::clock_time(jiff::Timestamp::now());
    let mut answered_after: Option<Duration> = None;
    tracing::warn!(
        "{cause}; dispatch stopped: the outcomes of calls in flight are kept and written once the database answers (for up to {})",
        seconds(patience)
    );
    // While writes fail: until when they may be tried (a success clears it, a new failure
    // starts a new patience).
    let mut deadline = Some(tokio::time::Instant::from_std(since + patience));
    let mut later: Vec<OutcomeRecord> = Vec::new();
    let mut open = true;
    let mut written = 0usize;
    let mut pause = RETRY_FIRST;
    loop {
        if failed.is_empty() {
            // Written up to here: wait for what is still coming.
            while open && later.len() < FLUSH_ROWS {
                tokio::select! {
                    message = rx.recv() => match message {
                        Some(record) => later.push(record),
                        None => open = false,
                    },
                    _ = tokio::time::sleep(FLUSH_EVERY), if !later.is_empty() => break,
                }
            }
            if later.is_empty() {
                break;
            }
            failed = std::mem::take(&mut later);
        } else {
            // Take what arrives during the pause, never past the deadline.
            let mut wake = tokio::time::Instant::now() + pause;
            if let Some(deadline) = deadline {
                wake = wake.min(deadline);
            }
            while open {
                tokio::select! {
                    message = rx.recv() => match message {
                        Some(record) => later.push(record),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(wake) => break,
                }
            }
            if !open {
                tokio::time::sleep_until(wake).await;
            }
        }
        let limit = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + patience);
        match tokio::time::timeout_at(limit, ledger.record(operation, &failed)).await {
            Ok(Ok(())) => {
                answered_after.get_or_insert_with(|| since.elapsed());
                written += failed.len();
                failed.clear();
                deadline = None;
                pause = RETRY_FIRST;
                continue;
            }
            Ok(Err(e)) if e.is_unreachable() => cause = e,
            Ok(Err(e)) => return e,
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= limit {
            // Whatever else is still arriving is lost with these.
            rx.close();
            while let Ok(record) = rx.try_recv() {
                later.push(record);
            }
            let lost = failed.len() + later.len();
            return LedgerError::Unreachable {
                path: ledger.path().to_owned(),
                message: format!(
                    "the database has been unreachable since {since_clock}, longer than --ledger-patience {}; {written} outcome(s) were written meanwhile, {lost} could not be: those targets stay claimed as possibly sent and are reconciled on resume (the service is asked what they hold before anything is sent again). Last error: {}",
                    seconds(patience),
                    unprefixed(&cause, ledger.path())
                ),
            };
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
    LedgerError::Unreachable {
        path: ledger.path().to_owned(),
        message: format!(
            "the database was unreachable from {since_clock} for {:.1} s ({}); dispatch stopped, and the {written} outcome(s) of the calls in flight were written once it answered again",
            answered_after.unwrap_or_default().as_secs_f64(),
            unprefixed(&cause, ledger.path()),
        ),
    }
}

/// `error`'s message without the `ledger <path>: ` its display starts with.
fn unprefixed(error: &LedgerError, path: &str) -> String {
    let text = error.to_string();
    text.strip_prefix(&format!("ledger {path}: "))
        .map(str::to_owned)
        .unwrap_or(text)
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
