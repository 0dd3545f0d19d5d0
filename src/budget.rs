//! A worker's shares of limits it shares with other workers of a fleet (one PostgreSQL ledger).
//!
//! The account's limit per API and each egress address's limit are pools; the database grants
//! every live worker a share of each pool it uses (`fleet_heartbeat`, once a second), such that
//! the shares held under unexpired leases never sum above the pool. Here the worker keeps what
//! it was granted and the pacer paces to it, with no round trip per call. Until the first grant,
//! and whenever a heartbeat is late or fails, the shares are taken as zero: a worker that does
//! not know what it holds sends nothing (Doorman's pessimistic mode, right for a batch job).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::api::Action;

/// One pool as this worker states it on each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// `api:<Action>`, `ip:<address>` or `host:<name>`.
    pub name: String,
    /// Calls per second the whole pool may hold (its limit less the headroom).
    pub cap: u32,
    /// What this worker could use of it.
    pub want: u32,
}

/// Where a source address's calls count: its own address, the shared egress address (NAT), or
/// the host's default address.
pub fn ip_pool(egress: Option<std::net::IpAddr>, source: Option<std::net::IpAddr>) -> String {
    match (egress, source) {
        (Some(egress), _) => format!("ip:{egress}"),
        (None, Some(source)) => format!("ip:{source}"),
        (None, None) => format!("host:{}", crate::host_name()),
    }
}

pub struct Budget {
    pools: Vec<Pool>,
    /// Per API (`Action::index`): its pool, if this worker uses the API.
    api_pool: Vec<Option<usize>>,
    /// Per source address: its pool, and how many of this worker's sources share that pool.
    source_pool: Vec<(usize, u32)>,
    granted: Mutex<Vec<u32>>,
    /// The shares hold until then (the lease's send deadline, on this process's clock): a
    /// process that was frozen past it sends nothing until a heartbeat renews them.
    until: Mutex<Option<std::time::Instant>>,
    /// Bumped on every change of the shares; the pacer rebuilds its buckets when it moves.
    version: AtomicU64,
    changed: Notify,
    /// Grants the pacer gave (calls sent), for the calls/s each heartbeat reports.
    calls: AtomicU64,
}

impl Budget {
    /// The pools of a worker using `actions` from `sources` (each source's pool name, as
    /// [`ip_pool`] gives it), under per-API ceiling `api_cap` and per-address ceiling `ip_cap`.
    pub fn new(actions: &[Action], sources: &[String], api_cap: u32, ip_cap: u32) -> Budget {
        let mut pools: Vec<Pool> = Vec::new();
        let mut source_pool = Vec::with_capacity(sources.len());
        for name in sources {
            let idx = match pools.iter().position(|p| &p.name == name) {
                Some(idx) => idx,
                None => {
                    pools.push(Pool {
                        name: name.clone(),
                        cap: ip_cap,
                        want: ip_cap,
                    });
                    pools.len() - 1
                }
            };
            source_pool.push((idx, 0));
        }
        let counts: Vec<u32> = (0..pools.len())
            .map(|p| source_pool.iter().filter(|(i, _)| *i == p).count() as u32)
            .collect();
        for entry in &mut source_pool {
            entry.1 = counts[entry.0];
        }
        // An API can use at most what the addresses it leaves from may carry.
        let reach = (pools.len() as u32).saturating_mul(ip_cap);
        let mut api_pool = vec![None; Action::ALL.len()];
        for action in actions {
            if api_pool[action.index()].is_some() {
                continue;
            }
            pools.push(Pool {
                name: format!("api:{}", action.name()),
                cap: api_cap,
                want: api_cap.min(reach),
            });
            api_pool[action.index()] = Some(pools.len() - 1);
        }
        Budget {
            granted: Mutex::new(vec![0; pools.len()]),
            until: Mutex::new(None),
            pools,
            api_pool,
            source_pool,
            version: AtomicU64::new(1),
            changed: Notify::new(),
            calls: AtomicU64::new(0),
        }
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    fn shares(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.granted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shares the database granted, in the order of [`Budget::pools`], valid until `until`.
    pub fn grant(&self, granted: &[u32], until: std::time::Instant) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        let mut shares = self.shares();
        if shares.as_slice() == granted || granted.len() != shares.len() {
            return;
        }
        shares.copy_from_slice(granted);
        drop(shares);
        self.bump();
    }

    /// Nothing is held: before the first grant is known, or a heartbeat is late or failed.
    pub fn suspend(&self) {
        let mut shares = self.shares();
        if shares.iter().all(|&s| s == 0) {
            return;
        }
        shares.iter_mut().for_each(|s| *s = 0);
        drop(shares);
        self.bump();
    }

    /// Whether the shares have run out unrenewed (then they are suspended).
    pub fn lapsed(&self) -> bool {
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        let lapsed = until.is_some_and(|u| std::time::Instant::now() >= u);
        if lapsed {
            self.suspend();
        }
        lapsed
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub(crate) fn count_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls sent so far under this budget.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Resolves once the shares change after `seen` (a version read before).
    pub async fn changed_since(&self, seen: u64) {
        loop {
            let notified = self.changed.notified();
            if self.version() != seen {
                return;
            }
            notified.await;
        }
    }

    /// Calls per second this worker holds of `action`'s account limit (`None`: the API is not
    /// one it said it uses, so it holds nothing of it).
    pub fn api_share(&self, action: Action) -> u32 {
        match self.api_pool[action.index()] {
            Some(pool) => self.shares()[pool],
            None => 0,
        }
    }

    /// Calls per second source address `idx` may send: its pool's share split evenly over this
    /// worker's sources in that pool.
    pub fn source_share(&self, idx: usize) -> u32 {
        let (pool, sharing) = self.source_pool[idx];
        self.shares()[pool] / sharing.max(1)
    }

    /// What `status` shows: each pool with this worker's share.
    pub fn snapshot(&self) -> Vec<(String, u32)> {
        let shares = self.shares();
        self.pools
            .iter()
            .zip(shares.iter())
            .map(|(p, s)| (p.name.clone(), *s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn shares_lapse_at_their_deadline() {
        let b = Budget::new(
            &[Action::GetDeviceCredential],
            &["ip:127.0.0.2".to_owned()],
            490,
            294,
        );
        b.grant(&[294, 490], far());
        assert!(!b.lapsed());
        assert_eq!(b.api_share(Action::GetDeviceCredential), 490);
        b.grant(&[294, 490], Instant::now());
        assert!(b.lapsed());
        assert_eq!(b.api_share(Action::GetDeviceCredential), 0);
    }

    #[test]
    fn sources_behind_one_egress_share_one_pool_and_apis_want_what_the_addresses_carry() {
        let sources = vec!["ip:198.51.100.7".to_owned(), "ip:198.51.100.7".to_owned()];
        let b = Budget::new(
            &[
                Action::RegisterDeviceCredential,
                Action::GetDeviceCredential,
                Action::RegisterDeviceCredential,
            ],
            &sources,
            490,
            294,
        );
        let names: Vec<&str> = b.pools().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ip:198.51.100.7",
                "api:RegisterDeviceCredential",
                "api:GetDeviceCredential"
            ]
        );
        assert_eq!(b.pools()[1].want, 294, "one egress address carries 294/s");
        assert_eq!(b.api_share(Action::RegisterDeviceCredential), 0);
        b.grant(&[200, 150, 20], far());
        assert_eq!(b.source_share(0), 100);
        assert_eq!(b.source_share(1), 100);
        assert_eq!(b.api_share(Action::RegisterDeviceCredential), 150);
        assert_eq!(b.api_share(Action::RefreshDeviceCredential), 0);
        let v = b.version();
        b.suspend();
        assert!(b.version() > v);
        assert_eq!(b.api_share(Action::GetDeviceCredential), 0);
    }

    #[test]
    fn separate_addresses_are_separate_pools() {
        let sources = vec!["ip:127.0.0.2".to_owned(), "ip:127.0.0.3".to_owned()];
        let b = Budget::new(&[Action::GetDeviceCredential], &sources, 490, 294);
        assert_eq!(b.pools().len(), 3);
        assert_eq!(b.pools()[2].want, 490);
        b.grant(&[294, 100, 400], far());
        assert_eq!(b.source_share(0), 294);
        assert_eq!(b.source_share(1), 100);
    }
}
