//! The pipeline: claims targets from the ledger, paces and bounds the calls, runs an
//! [`Operation`] on each, and hands every outcome to the single writer.
//!
//! ```text
//! ledger ──claim──▶ feeder ──▶ dispatcher (pacer, semaphore) ──spawn──▶ operation ──▶ writer ──▶ ledger
//! ```
//! One dispatcher waits on the pacer for each target's first call (hundreds of tasks waiting on
//! one bucket cost CPU, crates.md §1.3); follow-up calls (a Get after `DeviceCredentialExsit`,
//! retries) wait on it themselves. Stopping — Ctrl-C, quota, a fatal error, every source address
//! blocked, a ledger failure — ends dispatch at once, lets calls in flight finish within a bounded
//! wait, and returns claimed-but-unsent targets to `pending`.
//!
//! Its parts: [`feeder`] (claims ahead), [`pacer`] (when a call may leave, and from which
//! address), [`worker`] (the one paced call, throttles and blocks), [`operation`] (what each
//! answer means for a target), [`writer`] (batched outcomes). The pipeline never parses input and
//! never prints; it returns a [`RunOutcome`] that the report turns into words.

pub mod breaker;
mod feeder;
pub mod operation;
pub mod pacer;
pub mod worker;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use operation::Operation;
pub use pacer::{PaceConfig, Pacer};
pub use worker::Worker;

use crate::api::{ApiError, OnsMqttClient};
use crate::budget::{Budget, ip_pool};
use crate::ledger::{ItemState, Ledger, LedgerError, OutcomeRecord, WorkItem, WorkerInfo};
use crate::progress::Counters;

/// Validated settings of one run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub operation: Operation,
    pub instance_id: String,
    pub pace: PaceConfig,
    /// Targets in progress at once (`--concurrency`).
    pub concurrency: usize,
    /// Transient failures per target before it is `failed` (`--max-attempts`).
    pub max_attempts: u32,
    /// How long the service may stay unreachable before the run halts (`--outage-patience`).
    pub outage_patience: Duration,
    /// How long the ledger's database may stay unreachable before the run halts
    /// (`--ledger-patience`): the outcomes of calls in flight wait in memory meanwhile.
    pub ledger_patience: Duration,
    /// How long calls in flight may take to finish once the run stops.
    pub drain_timeout: Duration,
    /// The addresses the clients send from, in the clients' order (`None`: the host's default).
    pub sources: Vec<Option<std::net::IpAddr>>,
    /// The shared public address the calls leave from (`--egress-ip`).
    pub egress: Option<std::net::IpAddr>,
}

/// Why a run stopped before its work was done.
#[derive(Debug, Clone)]
pub enum Halt {
    /// `DeviceCredentialNumExceed`.
    QuotaFull(ApiError),
    /// Credentials, permissions, instance, signature, clock.
    Fatal(ApiError),
    /// Every source address was blocked for exceeding the per-IP limit.
    AllSourcesBlocked(ApiError),
    /// The service stayed unreachable longer than the patience.
    Outage {
        since: jiff::Timestamp,
        last: Option<ApiError>,
    },
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// The ledger could not be written.
    Ledger(String),
    /// The ledger's database server could not be reached (what was kept, what was lost).
    LedgerUnreachable(String),
}

/// How often the run looks at its lease's send deadline (it also wakes at the deadline).
const LEASE_CHECK: Duration = Duration::from_millis(100);

/// What a run did.
#[derive(Debug)]
pub struct RunOutcome {
    pub halt: Option<Halt>,
    pub elapsed: Duration,
    pub calls: u64,
    pub throttled: u64,
}

/// A task that panicked left its target as claimed (`maybe_applied`), which the next run
/// reconciles; say so rather than lose the panic.
fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(
            "a target's task panicked ({e}); it stays pending and is reconciled on the next run"
        );
    }
}

/// Runs `plan` over the ledger's pending targets until none is left or the run stops.
/// `interrupt` is cancelled by Ctrl-C / SIGTERM.
pub async fn run(
    plan: RunPlan,
    ledger: Arc<Ledger>,
    clients: Vec<OnsMqttClient>,
    counters: Arc<Counters>,
    interrupt: CancellationToken,
) -> Result<RunOutcome, LedgerError> {
    let started = Instant::now();
    let operation = plan.operation;
    let op_name = operation.name();
    let stop = CancellationToken::new();
    let worker = Arc::new(Worker::new(
        plan.clone(),
        clients,
        counters.clone(),
        stop.clone(),
    ));

    // On a shared ledger the limits are the fleet's: this worker paces to its shares of them.
    let pools: Vec<String> = (0..worker.sources())
        .map(|i| ip_pool(plan.egress, plan.sources.get(i).copied().flatten()))
        .collect();
    let budget = Arc::new(Budget::new(
        &operation.actions(),
        &pools,
        plan.pace.account_ceiling() as u32,
        plan.pace.ip_ceiling() as u32,
    ));
    let info = WorkerInfo {
        operation: op_name.to_owned(),
        sources: plan
            .sources
            .iter()
            .map(|s| s.map(|a| a.to_string()).unwrap_or_default())
            .collect(),
        egress: plan.egress.map(|e| e.to_string()),
    };
    if ledger.share_budget(budget.clone(), &info).await? {
        worker.pacer.share(budget);
    }

    let (out_tx, out_rx) = mpsc::channel::<OutcomeRecord>(4096);
    let writer = tokio::spawn(writer::run(
        ledger.clone(),
        op_name,
        out_rx,
        stop.clone(),
        plan.ledger_patience,
    ));

    // Ctrl-C becomes a halt like any other.
    let on_interrupt = {
        let worker = worker.clone();
        let interrupt = interrupt.clone();
        tokio::spawn(async move {
            interrupt.cancelled().await;
            worker.set_halt(Halt::Interrupted);
        })
    };
    // A shared ledger's lease not renewed in time: stop sending before another worker may take
    // this one's targets over.
    let lease_watch = ledger.send_deadline().map(|_| {
        let (ledger, worker) = (ledger.clone(), worker.clone());
        tokio::spawn(async move {
            while let Some(deadline) = ledger.send_deadline() {
                if std::time::Instant::now() >= deadline {
                    worker.set_halt(lease_lost());
                    return;
                }
                let wake = deadline.min(std::time::Instant::now() + LEASE_CHECK);
                tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
            }
        })
    });
    // Closes the pace controller's epoch when no answer does (a stalled service).
    let ticker = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                worker.pacer.tick();
            }
        })
    };

    let batch = feeder::batch_size(plan.pace.target_rate(worker.sources()));
    let (work_tx, mut work_rx) = mpsc::channel::<WorkItem>(batch as usize);
    let feeder = feeder::spawn(ledger.clone(), operation, batch, stop.clone(), work_tx);
    let (mut tasks, mut unsent) =
        dispatch(&worker, &ledger, &mut work_rx, &out_tx, plan.concurrency).await;

    // Claimed but never sent: back to pending as they were.
    work_rx.close();
    while let Ok(item) = work_rx.try_recv() {
        unsent.push(item);
    }
    let feeder_result = feeder.await;
    while let Ok(item) = work_rx.try_recv() {
        unsent.push(item);
    }
    if let Ok(Ok(held)) = &feeder_result {
        unsent.extend(held.iter().cloned());
    }
    for item in unsent {
        let _ = out_tx.send(unsent_record(item)).await;
    }

    drain(&mut tasks, &stop, plan.drain_timeout).await;
    ticker.abort();
    on_interrupt.abort();
    if let Some(watch) = lease_watch {
        watch.abort();
    }
    drop(out_tx);
    let writer_result = writer.await.unwrap_or_else(|e| {
        Err(LedgerError::Io {
            path: ledger.path().to_owned(),
            source: std::io::Error::other(e.to_string()),
        })
    });
    let mut halt = worker.take_halt();
    match feeder_result {
        Ok(Err(e)) => halt = Some(ledger_halt(e)),
        Err(e) => halt = Some(Halt::Ledger(format!("the claim task failed: {e}"))),
        Ok(Ok(_)) => {}
    }
    // The writer's account comes last: it says what became of the outcomes in flight.
    if let Err(e) = writer_result {
        halt = Some(ledger_halt(e));
    }
    Ok(RunOutcome {
        halt,
        elapsed: started.elapsed(),
        calls: counters.calls.load(Ordering::Relaxed),
        throttled: counters.throttled.load(Ordering::Relaxed),
    })
}

/// Hands each claimed target to a task once a concurrency permit and a pacer grant are free,
/// until the feeder runs dry or the run stops. Returns the tasks in flight and any target that
/// was taken from the feeder but not sent.
async fn dispatch(
    worker: &Arc<Worker>,
    ledger: &Ledger,
    work: &mut mpsc::Receiver<WorkItem>,
    out: &mpsc::Sender<OutcomeRecord>,
    concurrency: usize,
) -> (JoinSet<()>, Vec<WorkItem>) {
    let operation = worker.operation();
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut unsent = Vec::new();
    let mut measuring = true;
    while let Some(item) = work.recv().await {
        while let Some(done) = tasks.try_join_next() {
            report_panic(done);
        }
        let permit = tokio::select! {
            _ = worker.stopped() => { unsent.push(item); break; }
            p = semaphore.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let first = operation.first_action(item.maybe_applied);
        let grant = tokio::select! {
            _ = worker.stopped() => { unsent.push(item); break; }
            g = worker.pacer.acquire(first) => g,
        };
        let Some(grant) = grant else {
            unsent.push(item);
            break;
        };
        // Checked again at the last moment: a process that was frozen (SIGSTOP, a VM paused)
        // wakes with its deadline behind it before the lease watch has run.
        if ledger
            .send_deadline()
            .is_some_and(|deadline| std::time::Instant::now() >= deadline)
        {
            worker.set_halt(lease_lost());
            unsent.push(item);
            break;
        }
        let task_worker = worker.clone();
        let out = out.clone();
        tasks.spawn(async move {
            let worker = task_worker;
            let record = operation.execute(&worker, item, Some(grant)).await;
            worker.counters.finish(record.state);
            let _ = out.send(record).await;
            drop(permit);
        });
        // The first call sets the signing clock from the service's answer: the next grant is
        // taken after it, so no call waits for it holding a grant (a bunch when it comes).
        if std::mem::take(&mut measuring) {
            tokio::select! {
                _ = worker.stopped() => break,
                _ = worker.clock_settled() => {}
            }
        }
    }
    (tasks, unsent)
}

/// A run that ends normally waits for every target, retries and backoffs included. Once the
/// run is stopping, calls in flight get a bounded wait; those cut off stay claimed
/// (`maybe_applied`), which the next run reconciles.
async fn drain(tasks: &mut JoinSet<()>, stop: &CancellationToken, timeout: Duration) {
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => report_panic(done),
                None => return,
            },
            _ = stop.cancelled() => break,
        }
    }
    let drained = tokio::time::timeout(timeout, async {
        while let Some(done) = tasks.join_next().await {
            report_panic(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} call(s) still in flight after {timeout:?}; leaving them for the next run to reconcile",
            tasks.len(),
        );
        tasks.abort_all();
    }
}

fn ledger_halt(error: LedgerError) -> Halt {
    if error.is_unreachable() {
        Halt::LedgerUnreachable(error.to_string())
    } else {
        Halt::Ledger(error.to_string())
    }
}

/// The halt of a worker whose lease on a shared ledger was not renewed in time.
fn lease_lost() -> Halt {
    Halt::Ledger(
        "this worker's lease on the ledger was not renewed in time; it stopped sending so that another worker can take its targets over".into(),
    )
}

/// A target that was claimed but never sent goes back to `pending` as it was.
fn unsent_record(item: WorkItem) -> OutcomeRecord {
    OutcomeRecord {
        target: item.target,
        state: ItemState::Pending,
        attempts_added: 0,
        maybe_applied: item.maybe_applied,
        code: None,
        message: None,
        request_id: None,
        credential: None,
        previous_secret: None,
    }
}
