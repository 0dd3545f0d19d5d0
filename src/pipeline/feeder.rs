//! The feeder: claims pending targets from the ledger ahead of the dispatcher, in batches, so a
//! claim's commit never stalls the pace. When the dispatcher stops taking work, the feeder hands
//! back what it claimed but could not pass on, so those targets return to `pending` as they were.
//! On a shared ledger it runs until no other worker holds a target, so it takes over those of a
//! worker that died.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Operation;
use crate::ledger::{Ledger, LedgerError, WorkItem};

/// A claim slower than this is worth a warning: it delays the targets behind it.
const SLOW_CLAIM: Duration = Duration::from_millis(100);

/// How often a worker that has claimed everything checks the targets other workers hold (a
/// shared ledger's lease is renewed every second).
const HELD_ELSEWHERE_POLL: Duration = Duration::from_millis(500);

/// Claims per batch: half a second of work at the target rate, within bounds.
pub fn batch_size(target_rate: f64) -> i64 {
    (target_rate as i64 / 2).clamp(64, 1000)
}

/// The feeder's task; it ends with the targets it claimed and could not hand over. A claim that
/// fails stops the run's dispatch (`stop`): the ledger is in trouble.
pub fn spawn(
    ledger: Arc<Ledger>,
    operation: Operation,
    batch: i64,
    stop: CancellationToken,
    work: mpsc::Sender<WorkItem>,
) -> JoinHandle<Result<Vec<WorkItem>, LedgerError>> {
    tokio::spawn(async move {
        let fed = feed(ledger, operation, batch, &stop, work).await;
        if fed.is_err() {
            stop.cancel();
        }
        fed
    })
}

async fn feed(
    ledger: Arc<Ledger>,
    operation: Operation,
    batch: i64,
    stop: &CancellationToken,
    work: mpsc::Sender<WorkItem>,
) -> Result<Vec<WorkItem>, LedgerError> {
    let mut cursor = 0i64;
    loop {
        if stop.is_cancelled() {
            return Ok(Vec::new());
        }
        let claim_started = Instant::now();
        let mut items = ledger
            .claim(operation.name(), cursor, batch, operation.marks_effect())
            .await?;
        if items.is_empty() && cursor > 0 && ledger.is_shared() {
            // Targets handed back behind the cursor: a worker of a shared ledger that stopped
            // (Ctrl-C, a halt) returns what it had claimed and not sent, wherever it lay. Only
            // there: a claim on SQLite would take this worker's own targets in flight.
            items = ledger
                .claim(operation.name(), 0, batch, operation.marks_effect())
                .await?;
        }
        let took = claim_started.elapsed();
        if took > SLOW_CLAIM {
            tracing::warn!("claiming {} targets took {took:?}", items.len());
        }
        if items.is_empty() {
            // On a shared ledger, targets other workers hold may still come back (their
            // worker dies, its lease runs out): wait for them rather than end the run.
            if ledger.held_by_others(operation.name()).await? == 0 {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(Vec::new()),
                _ = tokio::time::sleep(HELD_ELSEWHERE_POLL) => continue,
            }
        }
        // Never back, and never past what a takeover brought: a dead worker's targets lie
        // anywhere, and free targets below them are still to be claimed from the cursor.
        if let Some(last) = items.iter().filter(|i| !i.taken_over).map(|i| i.id).max() {
            cursor = cursor.max(last);
        }
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            // The dispatcher has stopped: hand back what was claimed but never sent.
            if let Err(refused) = work.send(item).await {
                return Ok(std::iter::once(refused.0).chain(items).collect());
            }
        }
    }
}
