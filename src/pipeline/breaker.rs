//! The circuit breaker: tells an outage of the service (or of the network to it) from a bad
//! device, so an outage costs waiting, not devices.
//!
//! Outage signals are failures that say nothing about the device: a connection refused or
//! reset, a timeout, a DNS failure, a 5xx without a code ([`is_outage`]). After
//! [`OPEN_AFTER`] of them in a row across the run, with no answer between them, the breaker
//! opens: nothing is sent, and failures while it is open do not count against any device.
//! After a wait (1 s, doubling to 15 s) one call goes as a probe (half-open); any answer from
//! the service closes the breaker and every waiting call goes on, paced again from the pacer;
//! another outage signal opens it for the next, longer wait. An outage longer than the
//! patience halts the run, every unfinished target still pending.
//!
//! A single device that keeps failing while others get answers never opens it: every answer in
//! between resets the streak. It owns no timer of its own: waiting calls sleep until the next
//! probe time or until the state changes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::api::ApiError;

/// Outage signals in a row, with no answer between them, that open the breaker.
pub const OPEN_AFTER: u32 = 8;
/// The first wait before a probe; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(15);

/// Whether a failed call says the service (or the way to it) is down, not the device.
pub fn is_outage(e: &ApiError) -> bool {
    match e.status {
        None => e.code.starts_with("Transport."),
        // A 5xx whose body named no code (`HTTP502`: a proxy or load balancer answered).
        Some(s) => s >= 500 && e.code.starts_with("HTTP"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    /// Nothing is sent until `retry_at`.
    Open,
    /// One probe is out.
    HalfOpen,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Outage signals since the last answer.
    streak: u32,
    /// When the current streak began (the outage's start once it opens).
    since: Option<(Instant, jiff::Timestamp)>,
    /// Times it opened in this outage (the wait doubles each time).
    opened: u32,
    retry_at: Instant,
    last: Option<ApiError>,
}

/// How a call may go.
#[derive(Debug)]
pub enum Admit {
    /// At once.
    Go,
    /// After waiting out an outage: its pacer grant is stale, take a new one.
    Waited,
    /// The run stopped while it waited.
    Stopped,
    /// The outage outlasted the patience: halt.
    OutOfPatience {
        since: jiff::Timestamp,
        last: Option<ApiError>,
    },
}

/// What the progress shows while the breaker is open.
#[derive(Debug, Default)]
pub struct OutageView {
    /// Unix ms of the outage's start; 0 when there is none.
    pub since_ms: AtomicI64,
    /// Unix ms of the next probe.
    pub retry_at_ms: AtomicI64,
}

pub struct Breaker {
    /// Answers from the service so far (any answer: it is up).
    answers: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
    changed: Notify,
    patience: Duration,
}

impl Breaker {
    pub fn new(patience: Duration) -> Self {
        Breaker {
            answers: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(State {
                phase: Phase::Closed,
                streak: 0,
                since: None,
                opened: 0,
                retry_at: Instant::now(),
                last: None,
            }),
            changed: Notify::new(),
            patience,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many answers the service has given so far; unchanged between two failures of a
    /// target means nobody got one meanwhile.
    pub fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
    }

    /// Whether calls are held (open or half-open).
    pub fn is_open(&self) -> bool {
        self.lock().phase != Phase::Closed
    }

    /// Waits until a call may be sent; `stopped` resolves when the run stops.
    pub async fn admit(&self, stopped: impl std::future::Future<Output = ()>) -> Admit {
        tokio::pin!(stopped);
        let mut waited = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // One look at the state: how to go, or until when to wait.
            let (wake_at, patience_end) = {
                let mut s = self.lock();
                let now = Instant::now();
                if let Some((started, at)) = s.since
                    && s.phase != Phase::Closed
                    && now.duration_since(started) >= self.patience
                {
                    return Admit::OutOfPatience {
                        since: at,
                        last: s.last.clone(),
                    };
                }
                let wake_at = match s.phase {
                    Phase::Closed if waited => return Admit::Waited,
                    Phase::Closed => return Admit::Go,
                    Phase::Open if now >= s.retry_at => {
                        s.phase = Phase::HalfOpen;
                        return Admit::Waited;
                    }
                    Phase::Open => Some(s.retry_at),
                    // A probe is out: wait for its answer (or the patience's end).
                    Phase::HalfOpen => None,
                };
                (wake_at, s.since.map(|(started, _)| started + self.patience))
            };
            waited = true;
            let until = match (wake_at, patience_end) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => Instant::now() + MAX_WAIT,
            };
            tokio::select! {
                _ = &mut stopped => return Admit::Stopped,
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Records a call's end: an answer from the service (`None`), or the failure that says it
    /// is down. Returns true if the breaker is open after it (the failure is the outage's, not
    /// the device's).
    pub fn record(&self, outage: Option<&ApiError>, view: &OutageView) -> bool {
        let mut s = self.lock();
        let Some(e) = outage else {
            self.answers.fetch_add(1, Ordering::Relaxed);
            if s.phase != Phase::Closed {
                let lasted = s
                    .since
                    .map(|(started, _)| started.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                tracing::info!("the service answers again, after {lasted:.0} s: resuming");
                view.since_ms.store(0, Ordering::Relaxed);
                self.changed.notify_waiters();
            }
            s.phase = Phase::Closed;
            s.streak = 0;
            s.since = None;
            s.opened = 0;
            s.last = None;
            return false;
        };
        let now = Instant::now();
        s.streak += 1;
        s.last = Some(e.clone());
        if s.since.is_none() {
            s.since = Some((now, jiff::Timestamp::now()));
        }
        let open = match s.phase {
            Phase::Closed => s.streak >= OPEN_AFTER,
            // The probe failed.
            Phase::HalfOpen => true,
            Phase::Open => false,
        };
        if open {
            let wait = FIRST_WAIT
                .saturating_mul(1u32 << s.opened.min(5))
                .min(MAX_WAIT);
            s.opened += 1;
            s.phase = Phase::Open;
            s.retry_at = now + wait;
            let since = s
                .since
                .map(|(_, at)| at)
                .unwrap_or_else(jiff::Timestamp::now);
            if s.opened == 1 {
                tracing::warn!(
                    "service unreachable since {} ({e}): holding every call, retrying in {} s; failures meanwhile count against no device",
                    clock_time(since),
                    wait.as_secs()
                );
            } else {
                tracing::info!(
                    "service still unreachable since {}: retrying in {} s",
                    clock_time(since),
                    wait.as_secs()
                );
            }
            view.since_ms
                .store(since.as_millisecond(), Ordering::Relaxed);
            view.retry_at_ms.store(
                jiff::Timestamp::now().as_millisecond() + wait.as_millis() as i64,
                Ordering::Relaxed,
            );
            self.changed.notify_waiters();
        }
        s.phase != Phase::Closed
    }
}

/// `19:15:00` (UTC) of a timestamp, for "unreachable since".
pub fn clock_time(t: jiff::Timestamp) -> String {
    t.strftime("%H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> ApiError {
        ApiError::transport("Transport.Connect", "connection refused".into(), false)
    }

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_after_a_streak_and_probes_with_a_doubling_wait() {
        let b = Breaker::new(Duration::from_secs(600));
        let view = OutageView::default();
        for _ in 0..OPEN_AFTER - 1 {
            assert!(!b.record(Some(&down()), &view));
        }
        assert!(matches!(b.admit(never()).await, Admit::Go));
        assert!(b.record(Some(&down()), &view), "the streak opens it");
        assert!(view.since_ms.load(Ordering::Relaxed) > 0);
        let t0 = Instant::now();
        assert!(matches!(b.admit(never()).await, Admit::Waited));
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(1),
            "the first probe after 1 s"
        );
        // The probe fails: the next waits 2 s, then 4 s.
        assert!(b.record(Some(&down()), &view));
        let t1 = Instant::now();
        b.admit(never()).await;
        assert_eq!(t1.elapsed(), Duration::from_secs(2));
        b.record(Some(&down()), &view);
        let t2 = Instant::now();
        b.admit(never()).await;
        assert_eq!(t2.elapsed(), Duration::from_secs(4));
        // An answer closes it.
        assert!(!b.record(None, &view));
        assert!(!b.is_open());
        assert_eq!(view.since_ms.load(Ordering::Relaxed), 0);
        assert!(matches!(b.admit(never()).await, Admit::Go));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_between_failures_keep_it_closed() {
        let b = Breaker::new(Duration::from_secs(600));
        let view = OutageView::default();
        // One device failing again and again while the others get answers.
        for _ in 0..100 {
            for _ in 0..OPEN_AFTER - 1 {
                b.record(Some(&down()), &view);
            }
            b.record(None, &view);
        }
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_and_the_others_go_when_it_answers() {
        let b = std::sync::Arc::new(Breaker::new(Duration::from_secs(600)));
        let view = std::sync::Arc::new(OutageView::default());
        for _ in 0..OPEN_AFTER {
            b.record(Some(&down()), &view);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(b.admit(never()).await, Admit::Waited), "the probe");
        let other = {
            let b = b.clone();
            tokio::spawn(async move { b.admit(never()).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!other.is_finished(), "held while the probe is out");
        b.record(None, &view);
        let admitted = other.await.unwrap();
        assert!(matches!(admitted, Admit::Waited), "{admitted:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_past_the_patience_halts_and_a_stop_ends_the_wait() {
        let b = Breaker::new(Duration::from_secs(60));
        let view = OutageView::default();
        for _ in 0..OPEN_AFTER {
            b.record(Some(&down()), &view);
        }
        let t0 = Instant::now();
        loop {
            match b.admit(never()).await {
                Admit::OutOfPatience { last, .. } => {
                    assert_eq!(last.unwrap().code, "Transport.Connect");
                    break;
                }
                // Every probe fails.
                Admit::Waited => {
                    b.record(Some(&down()), &view);
                }
                other => panic!("{other:?}"),
            }
        }
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(60) && waited <= Duration::from_secs(61),
            "{waited:?}"
        );

        let b = Breaker::new(Duration::from_secs(600));
        for _ in 0..OPEN_AFTER {
            b.record(Some(&down()), &view);
        }
        let stop = tokio::time::sleep(Duration::from_millis(300));
        assert!(matches!(b.admit(stop).await, Admit::Stopped));
    }

    #[test]
    fn outage_signals_are_the_networks_and_codeless_5xx() {
        assert!(is_outage(&down()));
        let timeout = ApiError::transport("Transport.Timeout", "read timeout".into(), true);
        assert!(is_outage(&timeout));
        let bad_gateway = ApiError::from_response(502, "HTTP502".into(), "".into(), None, None);
        assert!(is_outage(&bad_gateway));
        let internal = ApiError::from_response(500, "InternalError".into(), "x".into(), None, None);
        assert!(!is_outage(&internal), "the service answered with a code");
        let bad = ApiError::from_response(400, "InvalidParameter".into(), "x".into(), None, None);
        assert!(!is_outage(&bad));
    }
}
