//! [`CredentialProvider`]: the key every attempt is signed with, and its renewal.
//!
//! A call reads the current key under a read lock (no fetch, no clock beyond `Instant::now`).
//! Temporary credentials are renewed ahead of their `Expiration`: once less than
//! min(15 minutes, a third of the lifetime) remains, the next call starts one renewal in the
//! background and goes on signing with the key it has, which is still valid; only a call that
//! finds the key (nearly) expired waits for the renewal. One renewal at a time: a caller that
//! waited on another's renewal takes its result instead of fetching again.
//!
//! The official libraries call STS credentials stale 15 minutes before expiry
//! (`_get_stale_time`); with a 15-minute lease that would mean "always stale", so the margin
//! shrinks to a third of the lifetime for short leases. It never logs a key, a token or a secret.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::fetch::{Fetched, Fetcher, Recipe};
use super::{AccessKey, CredentialError, CredentialSource};

/// The official libraries' stale margin (`expiration - 15 * 60`).
pub const STALE_MARGIN: Duration = Duration::from_secs(15 * 60);

/// After a failed renewal, the source is asked again no sooner than this (not on every call).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long before expiry a key is renewed: min(15 min, a third of its lifetime).
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 3).min(STALE_MARGIN)
}

/// How long before expiry a key is no longer used while a renewal is under way: half the
/// margin, at most 5 s (the time a call may take to reach the service).
fn expiry_guard(margin: Duration) -> Duration {
    (margin / 2).min(Duration::from_secs(5))
}

#[derive(Clone)]
struct Held {
    key: Arc<AccessKey>,
    /// When to start a renewal; `None` for a key that never expires.
    refresh_at: Option<Instant>,
    /// After this a call waits for the renewal rather than sign with a key about to expire.
    use_until: Option<Instant>,
}

impl Held {
    fn of(fetched: Fetched, now: Instant) -> Held {
        let key = Arc::new(fetched.key);
        let Some(expiration) = fetched.expiration else {
            return Held {
                key,
                refresh_at: None,
                use_until: None,
            };
        };
        let left = expiration
            .duration_since(jiff::Timestamp::now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let margin = refresh_margin(left);
        // An Expiration too far off for the clock (year 9999) is a key that never expires.
        let refresh_at = now.checked_add(left - margin);
        let use_until = now.checked_add(left - expiry_guard(margin));
        if refresh_at.is_none() || use_until.is_none() {
            return Held {
                key,
                refresh_at: None,
                use_until: None,
            };
        }
        Held {
            key,
            refresh_at,
            use_until,
        }
    }
}

/// The credentials of a command: fixed, or renewed from their source.
pub struct CredentialProvider {
    source: CredentialSource,
    /// How to fetch again; `None` for a fixed key.
    renewal: Option<(Recipe, Fetcher)>,
    held: RwLock<Held>,
    /// A background renewal is under way.
    renewing: AtomicBool,
    /// One fetch at a time.
    fetch_lock: tokio::sync::Mutex<()>,
    /// The last failed fetch: callers queued behind it get its error rather than each asking
    /// a source that just failed (a dead STS would otherwise be asked once per waiting call).
    last_failure: std::sync::Mutex<Option<(Instant, CredentialError)>>,
    renewals: AtomicU64,
}

impl std::fmt::Debug for CredentialProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialProvider")
            .field("source", &self.source)
            .field("access_key_id", &self.access_key_id())
            .field("renewals", &self.renewals())
            .finish()
    }
}

impl CredentialProvider {
    /// A key that is never renewed (the environment, a static profile, a rehearsal).
    pub fn fixed(key: AccessKey, source: CredentialSource) -> Arc<Self> {
        Arc::new(CredentialProvider {
            source,
            renewal: None,
            held: RwLock::new(Held {
                key: Arc::new(key),
                refresh_at: None,
                use_until: None,
            }),
            renewing: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_failure: std::sync::Mutex::new(None),
            renewals: AtomicU64::new(0),
        })
    }

    /// Fetches the first key from `recipe`; a fixed recipe gives a fixed provider.
    pub async fn start(
        recipe: Recipe,
        source: CredentialSource,
        fetcher: Fetcher,
    ) -> Result<Arc<Self>, CredentialError> {
        if let Recipe::Static(key) = recipe {
            return Ok(Self::fixed(key, source));
        }
        let fetched = fetcher.fetch(&recipe).await?;
        Ok(Arc::new(CredentialProvider {
            source,
            held: RwLock::new(Held::of(fetched, Instant::now())),
            renewal: Some((recipe, fetcher)),
            renewing: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_failure: std::sync::Mutex::new(None),
            renewals: AtomicU64::new(0),
        }))
    }

    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    /// Whether the key can be renewed (a refused expired token is then worth one retry).
    pub fn renewable(&self) -> bool {
        self.renewal.is_some()
    }

    /// How many times the key was renewed after the first fetch.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// The id of the current key (not a secret), for logs and `Debug`.
    pub fn access_key_id(&self) -> String {
        self.held().key.id.clone()
    }

    fn held(&self) -> Held {
        self.held.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key to sign the next attempt with.
    pub async fn key(self: &Arc<Self>) -> Result<Arc<AccessKey>, CredentialError> {
        let held = self.held();
        let now = Instant::now();
        let Some(refresh_at) = held.refresh_at else {
            return Ok(held.key);
        };
        if held.use_until.is_some_and(|until| now >= until) {
            return self.renew_from(&held.key).await;
        }
        if now >= refresh_at && !self.renewing.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            let stale = held.key.clone();
            tokio::spawn(async move {
                if let Err(e) = me.renew_from(&stale).await {
                    tracing::warn!("renewing credentials ahead of expiry failed: {e}");
                }
                me.renewing.store(false, Ordering::Release);
            });
        }
        Ok(held.key)
    }

    /// The service refused `used` as expired: renew it (unless another caller already has) and
    /// give the key to retry with. An error for a fixed key.
    pub async fn renew_after_expired(
        self: &Arc<Self>,
        used: &Arc<AccessKey>,
    ) -> Result<Arc<AccessKey>, CredentialError> {
        if self.renewal.is_none() {
            return Err(CredentialError::NotRenewable(self.source.to_string()));
        }
        self.renew_from(used).await
    }

    /// Fetches a new key unless the held one is no longer `stale` (someone renewed it while
    /// this caller waited for the lock).
    async fn renew_from(&self, stale: &Arc<AccessKey>) -> Result<Arc<AccessKey>, CredentialError> {
        let Some((recipe, fetcher)) = &self.renewal else {
            return Ok(self.held().key);
        };
        let _one_at_a_time = self.fetch_lock.lock().await;
        let held = self.held();
        if !Arc::ptr_eq(&held.key, stale) {
            return Ok(held.key);
        }
        if let Some((at, e)) = &*self.last_failure.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < MIN_REFRESH_INTERVAL
        {
            return Err(e.clone());
        }
        match fetcher.fetch(recipe).await {
            Ok(fetched) => {
                let next = Held::of(fetched, Instant::now());
                let key = next.key.clone();
                *self.held.write().unwrap_or_else(|p| p.into_inner()) = next;
                self.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "credentials renewed from {}, access key id {}",
                    self.source,
                    key.id
                );
                Ok(key)
            }
            Err(e) => {
                // Try again in a second rather than on every call.
                let now = Instant::now();
                self.held
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .refresh_at = Some(now + MIN_REFRESH_INTERVAL);
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((now, e.clone()));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_source_and_the_key_id_only() {
        let mut key = AccessKey::new("STS.visible", "hunter2");
        key.security_token = Some(crate::secret::Secret::new("CAIS-token"));
        let provider = CredentialProvider::fixed(key, CredentialSource::Given);
        let shown = format!("{provider:?}");
        assert!(shown.contains("STS.visible"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("CAIS"),
            "{shown}"
        );
    }

    #[test]
    fn the_margin_is_fifteen_minutes_or_a_third_of_short_leases() {
        assert_eq!(refresh_margin(Duration::from_secs(3600)), STALE_MARGIN);
        assert_eq!(
            refresh_margin(Duration::from_secs(900)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(refresh_margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_key_is_renewed_ahead_of_expiry_and_used_until_just_before_it() {
        let now = Instant::now();
        let fetched = |secs: i64| Fetched {
            key: AccessKey::new("STS.id", "s"),
            expiration: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs)),
        };
        let hour = Held::of(fetched(3600), now);
        let at = hour.refresh_at.unwrap() - now;
        assert!(
            at > Duration::from_secs(2690) && at <= Duration::from_secs(2700),
            "{at:?}"
        );
        let until = hour.use_until.unwrap() - now;
        assert!(until > Duration::from_secs(3590), "{until:?}");
        let short = Held::of(fetched(3), now);
        let at = short.refresh_at.unwrap() - now;
        assert!(
            at >= Duration::from_millis(1900) && at <= Duration::from_secs(2),
            "{at:?}"
        );
        assert!(short.use_until.unwrap() > short.refresh_at.unwrap());
        let never = Held::of(
            Fetched {
                key: AccessKey::new("id", "s"),
                expiration: None,
            },
            now,
        );
        assert!(never.refresh_at.is_none() && never.use_until.is_none());
        let far = Held::of(
            Fetched {
                key: AccessKey::new("id", "s"),
                expiration: Some(jiff::Timestamp::MAX),
            },
            now,
        );
        assert!(
            far.use_until.is_none_or(|u| u > now),
            "no panic, no expiry in the past"
        );
    }
}
