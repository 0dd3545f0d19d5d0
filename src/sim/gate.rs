//! The gate every call passes before its business rule, in two steps around the signature
//! check: [`Gate::arrive`] counts the arrival and refuses a blocked source IP (blocking it when
//! it goes over the per-IP limit); [`Gate::admit`] refuses a replayed nonce and a call over the
//! per-account per-API window or past the overload model's capacity, and otherwise counts the
//! call admitted. It keeps the windows, blocks and counts the stats report.
//!
//! It returns a decision (go on, or the documented refusal) and nothing more: it never sees a
//! socket, a header or a signature, and never applies a call. It runs under the simulator's lock
//! on every call, so it must not allocate or hash more than a call needs, and whatever grows with
//! the calls is kept where growing copies nothing (see [`Gate`]'s fields).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::auth::MAX_SKEW_SECS;
use super::stats::{MaxWindows, Stats};
use super::window::SlidingWindow;
use super::{SimConfig, SimError};
use crate::api::actions::Action;
use crate::api::error::IP_BLOCKED_CODE;

/// Nonces are remembered for the timestamp window: older requests are refused anyway.
const NONCE_MEMORY: Duration = Duration::from_secs(MAX_SKEW_SECS as u64 * 2);

/// The limits the gate enforces.
pub struct Limits {
    /// Admitted calls of each API per account in any sliding second.
    pub account_qps: usize,
    /// Calls of all APIs together per source IP in any sliding second before the IP is blocked.
    pub ip_qps: usize,
    pub ip_block_secs: f64,
    /// The overload model's capacity, calls/s arriving in any sliding second.
    pub capacity_qps: Option<f64>,
    /// Its own seed, so the simulator's main sequence (faults, latency, credentials) is the same
    /// with or without the model.
    pub seed: u64,
}

impl Limits {
    pub fn new(config: &SimConfig) -> Self {
        Limits {
            account_qps: config.account_qps,
            ip_qps: config.ip_qps,
            ip_block_secs: config.ip_block_secs,
            capacity_qps: config.capacity_qps,
            seed: config.seed,
        }
    }
}

#[derive(Default)]
struct IpState {
    arrivals: SlidingWindow,
    admitted: SlidingWindow,
    blocked_until: Option<Instant>,
}

/// A call that passed [`Gate::arrive`]: what [`Gate::admit`] needs of its arrival.
#[derive(Clone, Copy)]
pub struct Arrival {
    now: Instant,
    /// When the first call of all arrived: seconds of `admitted_per_second` count from it.
    first: Instant,
    peer: IpAddr,
}

pub struct Gate {
    limits: Limits,
    // Ordered maps and chunked queues for everything that grows with the calls: a hash table's
    // rehash or a deque's reallocation would hold the gate's lock for milliseconds, stall
    // every connection and bunch the arrivals the windows count (measured: one gate call took
    // 7.7 ms and the next 6.5 ms near call 28,700, where tables of 28,672 entries double; the
    // client, pacing at 497/s, was throttled for it).
    nonces: BTreeMap<String, Instant>,
    nonce_order: NonceLog,
    ips: HashMap<IpAddr, IpState>,
    blocked_ips: Vec<IpAddr>,
    api_arrivals: Vec<SlidingWindow>,
    api_admitted: Vec<SlidingWindow>,
    overall_arrivals: SlidingWindow,
    overall_admitted: SlidingWindow,
    total_calls: u64,
    throttled: u64,
    overloaded: u64,
    /// Draws of the overload model only.
    rng: StdRng,
    blocked_refusals: u64,
    first_arrival: Option<Instant>,
    admitted_per_second: Vec<u64>,
    refused_per_second: Vec<u64>,
}

/// Counts a call in its whole second since the first call arrived.
fn count_second(per_second: &mut Vec<u64>, arrival: Arrival) {
    let second = arrival.now.duration_since(arrival.first).as_secs() as usize;
    if per_second.len() <= second {
        per_second.resize(second + 1, 0);
    }
    per_second[second] += 1;
}

impl Gate {
    pub fn new(limits: Limits) -> Self {
        let per_api = || {
            (0..Action::ALL.len())
                .map(|_| SlidingWindow::default())
                .collect()
        };
        Gate {
            nonces: BTreeMap::new(),
            nonce_order: NonceLog::default(),
            ips: HashMap::new(),
            blocked_ips: Vec::new(),
            api_arrivals: per_api(),
            api_admitted: per_api(),
            overall_arrivals: SlidingWindow::default(),
            overall_admitted: SlidingWindow::default(),
            total_calls: 0,
            throttled: 0,
            overloaded: 0,
            rng: StdRng::seed_from_u64(limits.seed ^ 0x0ead_5eed),
            blocked_refusals: 0,
            first_arrival: None,
            admitted_per_second: Vec::new(),
            refused_per_second: Vec::new(),
            limits,
        }
    }

    /// Counts a call that arrived at `now` from `peer`, naming `action` (if it names a known
    /// one), and refuses it if its source IP is blocked or goes over the limit with it.
    pub fn arrive(
        &mut self,
        now: Instant,
        peer: IpAddr,
        action: Option<Action>,
    ) -> Result<Arrival, SimError> {
        self.total_calls += 1;
        let first = *self.first_arrival.get_or_insert(now);
        self.overall_arrivals.record(now);
        if let Some(a) = action {
            self.api_arrivals[a.index()].record(now);
        }
        // Per source IP, all APIs together (flow-control.md: over 300/s the IP "is blocked").
        let ip = self.ips.entry(peer).or_default();
        if ip.blocked_until.is_some_and(|until| now < until) {
            self.blocked_refusals += 1;
            return Err(self.blocked_error());
        }
        if ip.arrivals.record(now) > self.limits.ip_qps {
            ip.blocked_until = Some(now + Duration::from_secs_f64(self.limits.ip_block_secs));
            self.blocked_refusals += 1;
            if !self.blocked_ips.contains(&peer) {
                self.blocked_ips.push(peer);
            }
            tracing::warn!(%peer, "source IP over {} calls/s: blocked for {} s", self.limits.ip_qps, self.limits.ip_block_secs);
            return Err(self.blocked_error());
        }
        Ok(Arrival { now, first, peer })
    }

    /// Admits an authenticated call, unless its nonce was used already or its API is at the
    /// account's limit. The nonce is remembered even when the call is then throttled.
    pub fn admit(
        &mut self,
        arrival: Arrival,
        action: Action,
        nonce: String,
    ) -> Result<(), SimError> {
        let now = arrival.now;
        if !self.first_use_of(nonce, now) {
            return Err(SimError::new(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        // Per account and API: at most account_qps admitted calls in any sliding second.
        if self.api_admitted[action.index()].count(now) >= self.limits.account_qps {
            self.throttled += 1;
            count_second(&mut self.refused_per_second, arrival);
            return Err(SimError::new(
                400,
                "Throttling.User",
                "Request was denied due to user flow control.",
            ));
        }
        // The overload model: past its capacity the service refuses the share of calls it has
        // no room for, whoever sends them.
        if let Some(capacity) = self.limits.capacity_qps {
            let offered = self.overall_arrivals.count(now) as f64;
            if offered > capacity && self.rng.r#gen::<f64>() < 1.0 - capacity / offered {
                self.overloaded += 1;
                count_second(&mut self.refused_per_second, arrival);
                return Err(SimError::new(
                    500,
                    "SystemOverFlow",
                    "The system is overloaded. Please try again.",
                ));
            }
        }
        self.api_admitted[action.index()].record(now);
        self.overall_admitted.record(now);
        count_second(&mut self.admitted_per_second, arrival);
        self.ips
            .get_mut(&arrival.peer)
            .expect("inserted on arrival")
            .admitted
            .record(now);
        Ok(())
    }

    /// Forgets the nonces older than [`NONCE_MEMORY`], then remembers this one; false if it was
    /// remembered already.
    fn first_use_of(&mut self, nonce: String, now: Instant) -> bool {
        while self
            .nonce_order
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > NONCE_MEMORY)
        {
            let (_, old) = self.nonce_order.pop_front().expect("front exists");
            self.nonces.remove(&old);
        }
        if self.nonces.contains_key(&nonce) {
            return false;
        }
        self.nonces.insert(nonce.clone(), now);
        self.nonce_order.push_back((now, nonce));
        true
    }

    fn blocked_error(&self) -> SimError {
        SimError::new(
            403,
            IP_BLOCKED_CODE,
            format!(
                "Your source IP made more than {} calls in one second and is blocked for {} seconds.",
                self.limits.ip_qps, self.limits.ip_block_secs
            ),
        )
    }

    /// Writes the gate's part of the stats: calls, refusals, blocks, windows, admissions.
    pub fn report(&self, stats: &mut Stats) {
        let per_api = |windows: &[SlidingWindow]| -> BTreeMap<String, usize> {
            windows
                .iter()
                .enumerate()
                .filter(|(_, w)| w.max() > 0)
                .map(|(i, w)| (Action::ALL[i].name().to_owned(), w.max()))
                .collect()
        };
        let per_ip = |window: fn(&IpState) -> &SlidingWindow| -> BTreeMap<String, usize> {
            self.ips
                .iter()
                .map(|(ip, s)| (ip.to_string(), window(s).max()))
                .collect()
        };
        stats.total_calls = self.total_calls;
        stats.throttled = self.throttled;
        stats.overloaded = self.overloaded;
        stats.blocked_refusals = self.blocked_refusals;
        stats.blocked_ips = self.blocked_ips.iter().map(ToString::to_string).collect();
        stats.max_window = MaxWindows {
            per_api_arrivals: per_api(&self.api_arrivals),
            per_api_admitted: per_api(&self.api_admitted),
            per_ip_arrivals: per_ip(|s| &s.arrivals),
            per_ip_admitted: per_ip(|s| &s.admitted),
            overall_arrivals: self.overall_arrivals.max(),
            overall_admitted: self.overall_admitted.max(),
        };
        stats.admitted_per_second = self.admitted_per_second.clone();
        stats.refused_per_second = self.refused_per_second.clone();
    }
}

/// Nonces in arrival order, in fixed-size chunks: it grows a chunk at a time and never copies
/// what it holds.
#[derive(Default)]
struct NonceLog {
    chunks: VecDeque<VecDeque<(Instant, String)>>,
}

const NONCE_CHUNK: usize = 4096;

impl NonceLog {
    fn push_back(&mut self, entry: (Instant, String)) {
        if self.chunks.back().is_none_or(|c| c.len() >= NONCE_CHUNK) {
            self.chunks.push_back(VecDeque::with_capacity(NONCE_CHUNK));
        }
        self.chunks
            .back_mut()
            .expect("a chunk with room")
            .push_back(entry);
    }

    fn front(&self) -> Option<&(Instant, String)> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn pop_front(&mut self) -> Option<(Instant, String)> {
        let chunk = self.chunks.front_mut()?;
        let entry = chunk.pop_front();
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_log_is_a_queue_across_chunks() {
        let t0 = Instant::now();
        let mut log = NonceLog::default();
        let n = NONCE_CHUNK * 2 + 7;
        for i in 0..n {
            log.push_back((t0 + Duration::from_micros(i as u64), i.to_string()));
            if i % 3 == 0 {
                // Interleaved pops keep the order.
                let (_, first) = log.pop_front().unwrap();
                assert_eq!(first, (i / 3).to_string());
            }
        }
        assert!(
            log.chunks.iter().all(|c| c.len() <= NONCE_CHUNK),
            "a chunk never holds more than its size, so it never reallocates"
        );
        let mut expected = n.div_ceil(3);
        while let Some((_, nonce)) = log.pop_front() {
            assert_eq!(nonce, expected.to_string());
            expected += 1;
        }
        assert_eq!(expected, n);
        assert!(log.front().is_none() && log.chunks.is_empty());
    }
}
