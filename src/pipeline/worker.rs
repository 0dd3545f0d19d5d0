//! The worker: what every target's task of a run shares — the plan, the clients (one per source
//! address), the pacer, the live counters and the stop signal — and the one paced call every
//! operation sends through.
//!
//! A call here waits for the pacer, is signed and sent by the client, and comes back as the
//! response or as a [`CallError`]; every answer is reported to the pacer, which judges the pace
//! by the throttled share, and to the circuit breaker, which tells an outage from a bad device.
//! Throttles (wait, try again: not an attempt), blocked source addresses (retire, try another),
//! a first replayed nonce and a first token refused as expired (the client has renewed it: send
//! again) are settled here;
//! every other error goes back to the operation, counted as an attempt. It never touches the
//! ledger: outcomes go to the writer.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::breaker::{self, Admit, Breaker};
use super::operation::Attempt;
use super::{Halt, Pacer, RunPlan};
use crate::api::{ApiError, ErrorClass, OnsMqttClient, Request};
use crate::progress::Counters;
use crate::retry::{self, Backoff};

pub(crate) enum CallError {
    Api(ApiError),
    /// The run is stopping; the call was not sent.
    Stopped,
}

pub struct Worker {
    plan: RunPlan,
    clients: Vec<OnsMqttClient>,
    pub(crate) pacer: Pacer,
    pub(crate) counters: Arc<Counters>,
    stop: CancellationToken,
    halt: Mutex<Option<Halt>>,
    nonce_reused: AtomicBool,
    breaker: Breaker,
}

impl Worker {
    pub(crate) fn new(
        plan: RunPlan,
        clients: Vec<OnsMqttClient>,
        counters: Arc<Counters>,
        stop: CancellationToken,
    ) -> Self {
        Worker {
            pacer: Pacer::new(plan.pace, clients.len()),
            breaker: Breaker::new(plan.outage_patience),
            plan,
            clients,
            counters,
            stop,
            halt: Mutex::new(None),
            nonce_reused: AtomicBool::new(false),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.plan.instance_id
    }

    pub fn max_attempts(&self) -> u32 {
        self.plan.max_attempts
    }

    pub fn sources(&self) -> usize {
        self.clients.len()
    }

    pub fn operation(&self) -> super::Operation {
        self.plan.operation
    }

    /// Resolves once the first answer has set the signing clock (every client shares it).
    pub async fn clock_settled(&self) {
        if let Some(client) = self.clients.first() {
            client.clock_settled().await;
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the run is stopping.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    pub(crate) fn set_halt(&self, halt: Halt) {
        let mut slot = self.halt.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(halt);
        }
        self.stop.cancel();
    }

    /// Why the run stopped early, if it did.
    pub(crate) fn take_halt(&self) -> Option<Halt> {
        self.halt.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Stops the run because of a run-fatal error.
    pub(crate) fn halt_on(&self, e: ApiError) {
        if !self.stopping() {
            tracing::error!("halting: {e}");
        }
        match e.class {
            ErrorClass::QuotaFull => self.set_halt(Halt::QuotaFull(e)),
            _ => self.set_halt(Halt::Fatal(e)),
        }
    }

    /// Whether `e` is the outage's, not the device's: the service is unreachable (the breaker
    /// is open) and `e` says so. Such a failure is not counted; the next call waits for the
    /// service.
    pub(crate) fn outage_holds(&self, e: &ApiError) -> bool {
        breaker::is_outage(e) && self.breaker.is_open()
    }

    /// Answers from the service so far (see [`Breaker::answers`]).
    pub(crate) fn answers_seen(&self) -> u64 {
        self.breaker.answers()
    }

    /// Waits out the backoff after the `failures`-th transient failure of a target. False if
    /// the run stopped meanwhile.
    pub(crate) async fn backoff(&self, failures: u32) -> bool {
        self.sleep(Backoff::TRANSIENT.delay(failures, rand::random()))
            .await
    }

    /// Sleeps unless the run stops first; false if it stopped.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// One paced call of `request` for the target `a` works on.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        a: &mut Attempt,
        request: &Request<T>,
    ) -> Result<T, CallError> {
        let mut throttles = 0u32;
        let mut renewed = false;
        loop {
            match self.breaker.admit(self.stop.cancelled()).await {
                Admit::Go => {}
                // Held through an outage: a grant taken before it is stale, and every held call
                // going at once would break the pace.
                Admit::Waited => a.grant = None,
                Admit::Stopped => return Err(CallError::Stopped),
                Admit::OutOfPatience { since, last } => {
                    self.set_halt(Halt::Outage { since, last });
                    return Err(CallError::Stopped);
                }
            }
            let source = match a.grant.take() {
                Some(source) => source,
                None => {
                    if self.stopping() {
                        return Err(CallError::Stopped);
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return Err(CallError::Stopped),
                        source = self.pacer.acquire(request.action()) => match source {
                            Some(s) => s,
                            None => return Err(CallError::Stopped),
                        },
                    }
                }
            };
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            let sent = tokio::time::Instant::now();
            let e = match self.clients[source].send(request).await {
                Ok(v) => {
                    self.breaker.record(None, &self.counters.outage);
                    self.pacer.on_answer(sent, false);
                    return Ok(v);
                }
                Err(e) => e,
            };
            let outage = breaker::is_outage(&e).then_some(&e);
            self.breaker.record(outage, &self.counters.outage);
            // Every answer of the service is evidence for the pace; a lost connection is not an
            // answer, and a blocked address is the per-address ceiling, never a pace to find.
            let throttled = matches!(e.class, ErrorClass::Throttled { .. });
            if e.status.is_some() && e.class != ErrorClass::SourceBlocked {
                self.pacer.on_answer(sent, throttled);
            }
            match e.class {
                ErrorClass::Throttled { retry_after_ms } => {
                    self.counters.throttled.fetch_add(1, Ordering::Relaxed);
                    throttles += 1;
                    let wait = retry::throttle_wait(retry_after_ms, throttles, rand::random());
                    a.last_error = Some(e);
                    if !self.sleep(wait).await {
                        return Err(CallError::Stopped);
                    }
                }
                ErrorClass::SourceBlocked => {
                    let address = self.clients[source]
                        .source_address()
                        .map_or_else(|| "the default address".to_owned(), |a| a.to_string());
                    let (retired, left) = self.pacer.retire_source(source);
                    if retired {
                        tracing::error!(
                            "source address {address} is blocked by the service ({e}); {left} address(es) left"
                        );
                    }
                    if left == 0 {
                        self.set_halt(Halt::AllSourcesBlocked(e));
                        return Err(CallError::Stopped);
                    }
                }
                ErrorClass::NonceReused if !self.nonce_reused.swap(true, Ordering::Relaxed) => {
                    tracing::warn!("{e}; retrying once with a fresh nonce");
                }
                // The key was renewed: once more with it, paced, not an attempt.
                ErrorClass::Renewed if !renewed => {
                    renewed = true;
                    tracing::debug!("{e}; credentials renewed, sending again");
                }
                _ => {
                    a.attempts += 1;
                    if matches!(e.class, ErrorClass::NonceReused | ErrorClass::Renewed) {
                        self.halt_on(ApiError {
                            class: ErrorClass::Fatal,
                            ..e
                        });
                        return Err(CallError::Stopped);
                    }
                    return Err(CallError::Api(e));
                }
            }
        }
    }
}
