//! The writer: the one task that stores outcomes, in batched transactions (every 500 outcomes
//! or 250 ms, whichever first). A kill -9 loses at most the last batch and the calls in flight;
//! the durable claim (`maybe_applied`) makes the next run reconcile those instead of re-sending.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, LedgerError, OutcomeRecord};

pub const FLUSH_ROWS: usize = 500;
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Runs until every sender is gone; on a ledger error it cancels `stop` (so dispatch ends) and
/// returns the error, which the run reports.
pub async fn run(
    ledger: Arc<Ledger>,
    operation: &'static str,
    mut rx: mpsc::Receiver<OutcomeRecord>,
    stop: CancellationToken,
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
        if let Err(e) = ledger.record(operation, &buffer).await {
            stop.cancel();
            return Err(e);
        }
        buffer.clear();
        if closed {
            return Ok(());
        }
    }
}
