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

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::api::Action;

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

fn limiter(rate: f64, burst: u32) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let quota = Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst ≥ 1"));
    RateLimiter::direct(quota)
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
    per_api: Vec<DefaultDirectRateLimiter>,
    per_source: Vec<DefaultDirectRateLimiter>,
    source_active: Vec<AtomicBool>,
    next_source: AtomicUsize,
    global: RwLock<Arc<DefaultDirectRateLimiter>>,
    adaptive: Mutex<Adaptive>,
}

impl Pacer {
    pub fn new(config: PaceConfig, sources: usize) -> Self {
        let sources = sources.max(1);
        if config.textbook {
            let per_second = |limit: f64| {
                RateLimiter::direct(Quota::per_second(
                    NonZeroU32::new(limit.max(1.0) as u32).expect("≥ 1"),
                ))
            };
            return Pacer {
                config,
                per_api: Action::ALL
                    .iter()
                    .map(|_| per_second(config.account_qps))
                    .collect(),
                per_source: (0..sources).map(|_| per_second(config.ip_qps)).collect(),
                source_active: (0..sources).map(|_| AtomicBool::new(true)).collect(),
                next_source: AtomicUsize::new(0),
                global: RwLock::new(Arc::new(per_second(
                    config.account_qps.max(config.ip_qps * sources as f64),
                ))),
                adaptive: Mutex::new(Adaptive::new()),
            };
        }
        let api_rate = config.rate_for(config.account_ceiling());
        let ip_rate = config.rate_for(config.ip_ceiling());
        Pacer {
            config,
            per_api: Action::ALL
                .iter()
                .map(|_| limiter(api_rate, config.burst))
                .collect(),
            per_source: (0..sources)
                .map(|_| limiter(ip_rate, config.burst))
                .collect(),
            source_active: (0..sources).map(|_| AtomicBool::new(true)).collect(),
            next_source: AtomicUsize::new(0),
            global: RwLock::new(Arc::new(limiter(
                config.target_rate(sources) * GLOBAL_SLACK,
                config.burst,
            ))),
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
        global.until_ready().await;
        self.per_api[action.index()].until_ready().await;
        loop {
            let n = self.per_source.len();
            let start = self.next_source.fetch_add(1, Ordering::Relaxed);
            let idx = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| self.source_active[i].load(Ordering::Relaxed))?;
            self.per_source[idx].until_ready().await;
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
            Arc::new(limiter(rate, self.config.burst));
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

    /// Grants for 2.5 s, as seen by the caller: (largest sliding second, steady rate/s).
    async fn observed(config: PaceConfig) -> (usize, f64) {
        let p = Pacer::new(config, 1);
        let started = Instant::now();
        let mut grants = Vec::new();
        while started.elapsed() < Duration::from_millis(2500) {
            p.acquire(Action::RegisterDeviceCredential).await.unwrap();
            grants.push(Instant::now());
        }
        let mut max = 0;
        let mut j = 0;
        for i in 0..grants.len() {
            while grants[i].duration_since(grants[j]) >= Duration::from_secs(1) {
                j += 1;
            }
            max = max.max(i - j + 1);
        }
        let steady = grants
            .iter()
            .filter(|g| g.duration_since(started) >= Duration::from_millis(500))
            .count() as f64
            / 2.0;
        (max, steady)
    }

    /// The bucket admits at most the ceiling (200) in any second of its own clock. The caller
    /// stamps a grant only when it gets to run, so a grant delivered late by a busy scheduler can
    /// bunch one more into a window: that, and network jitter, is what `--headroom` is for. The
    /// textbook quota under the same measurement puts about twice the limit into its first second.
    #[tokio::test]
    async fn no_sliding_second_exceeds_the_ceiling() {
        let careful = PaceConfig {
            account_qps: 1000.0,
            ip_qps: 200.0,
            headroom: 0.0,
            burst: 2,
            textbook: false,
        };
        let (max, steady) = observed(careful).await;
        assert!(max <= 201, "max window {max}");
        // A sanity floor only: the benchmarks measure the real ratio at the server.
        assert!(steady >= 0.8 * 199.0, "steady rate {steady}");
        let (textbook_max, _) = observed(PaceConfig {
            textbook: true,
            ..careful
        })
        .await;
        assert!(
            textbook_max >= 350,
            "the textbook quota overshoots: {textbook_max}"
        );
    }
}
