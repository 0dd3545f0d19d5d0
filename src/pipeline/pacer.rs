//! The pacer: decides when the next call may leave, and from which source address.
//!
//! Three token buckets (governor, GCRA) must all grant a call:
//! * one per API for the account (documented 500/s per API per account),
//! * one per source address for all APIs together (documented 300/s per IP, past which the IP is
//!   blocked),
//! * one adaptive bucket for the whole run, lowered multiplicatively when the service throttles
//!   (other applications share the account) and raised additively while it does not (AIMD).
//!
//! A bucket of rate R and burst B admits up to R + B − 1 calls in a second after idling
//! (crates.md §1: `Quota::per_second(500)` lets 999 through). So each bucket runs at
//! R = T − (B − 1) with a small B, where T = limit × (1 − headroom): no sliding second may hold
//! more than T grants, and B ≥ 2 lets a late timer catch up so the rate stays ≥ 99 % of T.
//!
//! Every bucket reads tokio's clock ([`TokioClock`]) and waits with `tokio::time::sleep`, so the
//! pacer's tests run on paused time and assert exact grant counts instead of sleeping.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::api::Action;

/// governor's clock on tokio's time: `now` is the time since the clock was made, so paused and
/// advanced time in tests moves the buckets as it moves every other timer.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            start: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// Waits until `bucket` grants a cell, sleeping on tokio's timer.
async fn until_ready(bucket: &Bucket, clock: &TokioClock) {
    loop {
        match bucket.check() {
            Ok(()) => return,
            Err(not_until) => tokio::time::sleep(not_until.wait_time_from(clock.now())).await,
        }
    }
}

/// Validated pacing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceConfig {
    /// Per account and API, calls/s (documented 500).
    pub account_qps: f64,
    /// Per source address, all APIs, calls/s (documented 300).
    pub ip_qps: f64,
    /// Fraction kept free under both limits for network jitter.
    pub headroom: f64,
    /// Token-bucket burst.
    pub burst: u32,
    /// Benchmarks only: the textbook `Quota::per_second(limit)` (burst = limit), to show what
    /// the careful sizing avoids.
    pub textbook: bool,
}

impl Default for PaceConfig {
    fn default() -> Self {
        PaceConfig {
            account_qps: 500.0,
            ip_qps: 300.0,
            headroom: 0.02,
            burst: 2,
            textbook: false,
        }
    }
}

impl PaceConfig {
    /// The most calls any sliding second may hold, per account and API.
    pub fn account_ceiling(&self) -> f64 {
        (self.account_qps * (1.0 - self.headroom)).floor()
    }

    /// The most calls any sliding second may hold, per source address.
    pub fn ip_ceiling(&self) -> f64 {
        (self.ip_qps * (1.0 - self.headroom)).floor()
    }

    /// The bucket rate that keeps a ceiling: R = T − (B − 1).
    fn rate_for(&self, ceiling: f64) -> f64 {
        (ceiling - f64::from(self.burst - 1)).max(1.0)
    }

    /// The steady rate the run aims at with `sources` addresses.
    pub fn target_rate(&self, sources: usize) -> f64 {
        self.rate_for(self.account_ceiling())
            .min(sources as f64 * self.rate_for(self.ip_ceiling()))
    }
}

fn limiter(rate: f64, burst: u32, clock: TokioClock) -> Bucket {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let quota = Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst ≥ 1"));
    RateLimiter::direct_with_clock(quota, clock)
}

/// The textbook `Quota::per_second(limit)`: burst = limit (benchmarks only).
fn textbook_limiter(limit: f64, clock: TokioClock) -> Bucket {
    let quota = Quota::per_second(NonZeroU32::new(limit.max(1.0) as u32).expect("≥ 1"));
    RateLimiter::direct_with_clock(quota, clock)
}

/// The adaptive bucket steers the pace; the per-API and per-source buckets are the caps. At full
/// speed it runs slightly above them, so two buckets binding at the same rate do not add up their
/// timer lateness (measured: 0.9946 of target with both binding, see BENCHMARKS.md).
const GLOBAL_SLACK: f64 = 1.02;

/// How the adaptive rate moves: down by `DECREASE` at a throttle; back up quickly
/// (`FAST_INCREASE_PER_SEC`) to `REGAIN` of the rate that was throttled, then probing slowly
/// (`INCREASE_PER_SEC`). A lone throttle (a jittery second at our own cap) then costs a few
/// seconds rather than fifteen, and a shared account is probed gently near its capacity.
const DECREASE: f64 = 0.7;
const FLOOR: f64 = 0.05;
const REGAIN: f64 = 0.9;
const FAST_INCREASE_PER_SEC: f64 = 0.10;
const INCREASE_PER_SEC: f64 = 0.02;
/// One decrease per this interval: the throttles of one congested moment are one signal, yet
/// a server far below our pace is reached within about a second.
const DECREASE_COOLDOWN: Duration = Duration::from_millis(300);

struct Adaptive {
    factor: f64,
    /// The factor at the last throttle: the pace the service refused.
    refused: f64,
    last_decrease: Option<Instant>,
    last_change: Instant,
}

impl Adaptive {
    fn new() -> Self {
        Adaptive {
            factor: 1.0,
            refused: 1.0,
            last_decrease: None,
            last_change: Instant::now(),
        }
    }

    /// The factor after `elapsed` seconds without a throttle.
    fn recovered(&self, elapsed: f64) -> f64 {
        let regain = self.refused * REGAIN;
        let fast_until = ((regain - self.factor) / FAST_INCREASE_PER_SEC).clamp(0.0, elapsed);
        let factor = self.factor
            + FAST_INCREASE_PER_SEC * fast_until
            + INCREASE_PER_SEC * (elapsed - fast_until);
        factor.min(1.0)
    }
}

pub struct Pacer {
    config: PaceConfig,
    clock: TokioClock,
    per_api: Vec<Bucket>,
    per_source: Vec<Bucket>,
    source_active: Vec<AtomicBool>,
    next_source: AtomicUsize,
    global: RwLock<Arc<Bucket>>,
    adaptive: Mutex<Adaptive>,
}

impl Pacer {
    pub fn new(config: PaceConfig, sources: usize) -> Self {
        let sources = sources.max(1);
        let clock = TokioClock::new();
        let (per_api, per_source, global): (Vec<Bucket>, Vec<Bucket>, Bucket) = if config.textbook {
            (
                Action::ALL
                    .iter()
                    .map(|_| textbook_limiter(config.account_qps, clock))
                    .collect(),
                (0..sources)
                    .map(|_| textbook_limiter(config.ip_qps, clock))
                    .collect(),
                textbook_limiter(
                    config.account_qps.max(config.ip_qps * sources as f64),
                    clock,
                ),
            )
        } else {
            let api_rate = config.rate_for(config.account_ceiling());
            let ip_rate = config.rate_for(config.ip_ceiling());
            (
                Action::ALL
                    .iter()
                    .map(|_| limiter(api_rate, config.burst, clock))
                    .collect(),
                (0..sources)
                    .map(|_| limiter(ip_rate, config.burst, clock))
                    .collect(),
                limiter(
                    config.target_rate(sources) * GLOBAL_SLACK,
                    config.burst,
                    clock,
                ),
            )
        };
        Pacer {
            config,
            clock,
            per_api,
            per_source,
            source_active: (0..sources).map(|_| AtomicBool::new(true)).collect(),
            next_source: AtomicUsize::new(0),
            global: RwLock::new(Arc::new(global)),
            adaptive: Mutex::new(Adaptive::new()),
        }
    }

    pub fn config(&self) -> PaceConfig {
        self.config
    }

    fn active_sources(&self) -> usize {
        self.source_active
            .iter()
            .filter(|a| a.load(Ordering::Relaxed))
            .count()
    }

    /// The rate the run currently aims at (after AIMD).
    pub fn current_rate(&self) -> f64 {
        let factor = self
            .adaptive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .factor;
        self.config.target_rate(self.active_sources().max(1)) * factor
    }

    /// Waits until a call of `action` may leave; returns the source address index to send it
    /// from, or `None` when every source address has been retired.
    pub async fn acquire(&self, action: Action) -> Option<usize> {
        let global = self
            .global
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        until_ready(&global, &self.clock).await;
        until_ready(&self.per_api[action.index()], &self.clock).await;
        loop {
            let n = self.per_source.len();
            let start = self.next_source.fetch_add(1, Ordering::Relaxed);
            let idx = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| self.source_active[i].load(Ordering::Relaxed))?;
            until_ready(&self.per_source[idx], &self.clock).await;
            if self.source_active[idx].load(Ordering::Relaxed) {
                return Some(idx);
            }
        }
    }

    /// Stops using a blocked source address. Returns whether this call retired it (calls in
    /// flight on it all see the block; one reports it) and how many addresses are left.
    pub fn retire_source(&self, idx: usize) -> (bool, usize) {
        let retired = self.source_active[idx].swap(false, Ordering::Relaxed);
        if retired {
            self.rebuild_global();
        }
        (retired, self.active_sources())
    }

    /// The service throttled a call: slow the whole run down (once per cooldown).
    pub fn on_throttled(&self) {
        let mut a = self.adaptive.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if a.last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_COOLDOWN)
        {
            return;
        }
        a.refused = a.factor;
        a.factor = (a.factor * DECREASE).max(FLOOR);
        a.last_decrease = Some(now);
        a.last_change = now;
        drop(a);
        self.rebuild_global();
    }

    /// Called about once a second: recover the pace additively while no throttle is seen.
    pub fn tick(&self) {
        let mut a = self.adaptive.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if a.factor >= 1.0
            || a.last_decrease
                .is_some_and(|t| now.duration_since(t) < DECREASE_COOLDOWN * 2)
        {
            return;
        }
        let elapsed = now.duration_since(a.last_change).as_secs_f64();
        if elapsed < 0.5 {
            return;
        }
        a.factor = a.recovered(elapsed);
        a.last_change = now;
        drop(a);
        self.rebuild_global();
    }

    fn rebuild_global(&self) {
        if self.config.textbook {
            return;
        }
        let rate = self.current_rate() * GLOBAL_SLACK;
        *self.global.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(limiter(rate, self.config.burst, self.clock));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_and_rates_follow_r_plus_b_minus_one() {
        let c = PaceConfig::default();
        assert_eq!(c.account_ceiling(), 490.0);
        assert_eq!(c.ip_ceiling(), 294.0);
        assert_eq!(c.target_rate(1), 293.0);
        assert_eq!(c.target_rate(2), 489.0);
    }

    #[tokio::test]
    async fn throttles_lower_the_rate_and_quiet_raises_it() {
        let p = Pacer::new(PaceConfig::default(), 1);
        let full = p.current_rate();
        p.on_throttled();
        p.on_throttled(); // within the cooldown: one signal
        assert!((p.current_rate() - full * DECREASE).abs() < 1e-9);
        assert_eq!(p.retire_source(0), (true, 0));
        assert_eq!(p.retire_source(0), (false, 0), "retired once");
        assert!(p.acquire(Action::GetDeviceCredential).await.is_none());
    }

    #[test]
    fn recovery_is_fast_up_to_near_the_refused_pace_then_slow() {
        let mut a = Adaptive::new();
        a.refused = 1.0;
        a.factor = 0.7;
        // 2 s fast (0.7 → 0.9), then 0.02/s.
        assert!((a.recovered(1.0) - 0.8).abs() < 1e-9);
        assert!((a.recovered(2.0) - 0.9).abs() < 1e-9);
        assert!((a.recovered(3.0) - 0.92).abs() < 1e-9);
        assert_eq!(a.recovered(60.0), 1.0, "never above the configured pace");
        // Near the refused pace already: only the slow probe.
        a.refused = 0.75;
        a.factor = 0.7;
        assert!((a.recovered(1.0) - 0.72).abs() < 1e-9);
    }

    /// Grant times over `secs` seconds of paused time, as the caller sees them.
    async fn grants(config: PaceConfig, secs: u64) -> Vec<Duration> {
        let p = Pacer::new(config, 1);
        let started = Instant::now();
        let mut grants = Vec::new();
        while started.elapsed() < Duration::from_secs(secs) {
            p.acquire(Action::RegisterDeviceCredential).await.unwrap();
            grants.push(started.elapsed());
        }
        grants
    }

    /// The most grants in any sliding second `[t, t + 1 s)`.
    fn largest_second(grants: &[Duration]) -> usize {
        let mut max = 0;
        let mut j = 0;
        for i in 0..grants.len() {
            while grants[i] - grants[j] >= Duration::from_secs(1) {
                j += 1;
            }
            max = max.max(i - j + 1);
        }
        max
    }

    /// A per-address ceiling of 101 calls: the bucket runs at 100/s with burst 2, so the first
    /// two grants leave at once and one every 10 ms follows. On paused time the counts are exact.
    #[tokio::test(start_paused = true)]
    async fn no_sliding_second_exceeds_the_ceiling() {
        let careful = PaceConfig {
            account_qps: 1000.0,
            ip_qps: 101.0,
            headroom: 0.0,
            burst: 2,
            textbook: false,
        };
        let g = grants(careful, 10).await;
        assert_eq!(&g[..2], &[Duration::ZERO, Duration::ZERO], "the burst");
        assert_eq!(largest_second(&g), 101, "never above the ceiling");
        // 10 s at 100/s plus the burst's extra cell; the last grant may fall on the 10 s mark.
        assert!((1001..=1002).contains(&g.len()), "{} grants", g.len());
        let steady = g.iter().filter(|t| **t >= Duration::from_secs(1)).count();
        assert!((900..=901).contains(&steady), "steady {steady}");
        // The textbook quota (burst = limit) puts almost twice the limit into its first second.
        let textbook = grants(
            PaceConfig {
                textbook: true,
                ..careful
            },
            3,
        )
        .await;
        assert!(
            largest_second(&textbook) >= 200,
            "the textbook quota overshoots: {}",
            largest_second(&textbook)
        );
    }

    /// A throttle cuts the pace to 70 % at once; two quiet seconds later it is back at 90 %.
    #[tokio::test(start_paused = true)]
    async fn a_throttle_slows_the_grants_and_quiet_brings_them_back() {
        let config = PaceConfig {
            account_qps: 1000.0,
            ip_qps: 1000.0,
            headroom: 0.0,
            burst: 2,
            textbook: false,
        };
        let p = Pacer::new(config, 1);
        let count_for = async |p: &Pacer, d: Duration| {
            let until = Instant::now() + d;
            let mut n = 0;
            while Instant::now() < until {
                p.acquire(Action::GetDeviceCredential).await.unwrap();
                n += 1;
            }
            n
        };
        let full = count_for(&p, Duration::from_secs(2)).await;
        p.on_throttled();
        let slowed = count_for(&p, Duration::from_secs(2)).await;
        let ratio = slowed as f64 / full as f64;
        assert!((0.68..=0.72).contains(&ratio), "{slowed}/{full}");
        // Two quiet seconds at the fast regain (0.10/s) reach 90 % of the refused pace.
        p.tick();
        let target = config.target_rate(1);
        assert!(
            (p.current_rate() - 0.9 * target).abs() < 1e-6,
            "{} of {target}",
            p.current_rate()
        );
    }
}
