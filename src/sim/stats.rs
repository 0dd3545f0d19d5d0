//! What the simulator saw, as `GET /__sim/stats` and `--stats-out` report it. Tests and
//! benchmarks judge the worker by these numbers: the largest sliding-second windows, throttles,
//! blocks, and how many credentials each ClientId was issued. The gate and the registry report
//! their own parts; the [`Tally`] here keeps the rest, the outcome of every call as it ends.
//!
//! It only counts: nothing here decides how a call is answered.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::actions::Action;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Calls that reached the handler, all outcomes.
    pub total_calls: u64,
    /// action → outcome code (`Success` or the error code) → count.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Calls refused by the per-account per-API limit.
    pub throttled: u64,
    /// Calls refused with SystemOverFlow by the overload model (`--capacity-qps`).
    #[serde(default)]
    pub overloaded: u64,
    /// Calls refused because their source IP was blocked (including the one that tripped it).
    pub blocked_refusals: u64,
    /// Source IPs that were ever blocked.
    pub blocked_ips: Vec<String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    pub max_window: MaxWindows,
    pub credentials: CredentialStats,
    pub latency_ms: Latency,
    /// Admitted calls (all APIs) in each whole second since the first call arrived.
    pub admitted_per_second: Vec<u64>,
    /// Temporary credentials issued (STS, metadata service, credentials URI).
    #[serde(default)]
    pub temporary: super::TemporaryStats,
    /// Calls refused by flow control (`Throttling.User`) or the overload model in each whole
    /// second, counted like `admitted_per_second`.
    #[serde(default)]
    pub refused_per_second: Vec<u64>,
}

/// The most calls seen in any sliding one-second window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MaxWindows {
    pub per_api_arrivals: BTreeMap<String, usize>,
    pub per_api_admitted: BTreeMap<String, usize>,
    pub per_ip_arrivals: BTreeMap<String, usize>,
    pub per_ip_admitted: BTreeMap<String, usize>,
    pub overall_arrivals: usize,
    pub overall_admitted: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CredentialStats {
    /// Credentials that exist now.
    pub live: usize,
    /// Credentials ever issued by Register.
    pub issued_total: u64,
    /// ClientIds ever issued one.
    pub client_ids: usize,
    /// ClientIds issued more than one credential (a worker bug under `--dup-mode reissue`).
    pub duplicates: Vec<String>,
}

/// Server-side time from arrival to answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn from_micros(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at =
            |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Latency {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

impl Stats {
    /// Successful calls of one action.
    pub fn successes(&self, action: &str) -> u64 {
        self.count(action, "Success")
    }

    pub fn count(&self, action: &str, code: &str) -> u64 {
        self.calls
            .get(action)
            .and_then(|m| m.get(code))
            .copied()
            .unwrap_or(0)
    }

    /// Calls with a given code, across actions.
    pub fn code_total(&self, code: &str) -> u64 {
        self.calls.values().filter_map(|m| m.get(code)).sum()
    }
}

/// Outcomes, faults and server-side latencies, counted as calls end.
#[derive(Default)]
pub struct Tally {
    calls: BTreeMap<String, BTreeMap<String, u64>>,
    faults: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
}

impl Tally {
    /// A fault injected, by kind.
    pub fn fault(&mut self, kind: &str) {
        *self.faults.entry(kind.to_owned()).or_default() += 1;
    }

    /// How a call ended (`Success`, its error code, or how it was dropped) and how long after
    /// its arrival; a call that named no known action counts under `(none)`.
    pub fn outcome(&mut self, action: Option<Action>, code: &str, elapsed: Duration) {
        let name = action.map_or("(none)", Action::name);
        *self
            .calls
            .entry(name.to_owned())
            .or_default()
            .entry(code.to_owned())
            .or_default() += 1;
        self.latencies_us
            .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
    }

    /// Writes the tally's part of the stats: calls, faults, latency.
    pub fn report(&self, stats: &mut Stats) {
        stats.calls = self.calls.clone();
        stats.faults = self.faults.clone();
        stats.latency_ms = Latency::from_micros(&mut self.latencies_us.clone());
    }
}
