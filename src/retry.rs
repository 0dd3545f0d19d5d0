//! The one retry policy: how long to wait before trying a call again, for the pipeline and for
//! the single-call commands alike.
//!
//! Full-jitter exponential backoff (a uniform draw in `[0, min(cap, base × 2^failures))`, the
//! variant that spreads retrying clients best), and for a throttled call the server's
//! `x-acs-retry-after` exactly when it sent one. Waits are computed here and slept on tokio's
//! clock by the caller, so tests drive them with `tokio::time::pause()`; the jitter is an input,
//! so they can also pin it.

use std::time::Duration;

use crate::api::{ApiError, ErrorClass};

/// The longest wait the tool accepts from `x-acs-retry-after`. The official SDKs cap a
/// server-requested delay at `maxDelay`, 120 s by default (shared/reference/onsmqtt-api.md §5);
/// a larger or absurd value ("retry in 18446744073709551 s") is clamped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// After a transient failure (a 5xx, a lost connection).
    pub const TRANSIENT: Backoff = Backoff {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(10),
    };
    /// After a throttle without `x-acs-retry-after`: shorter at first, since the pacer has
    /// already slowed the whole run down.
    pub const THROTTLED: Backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(10),
    };

    /// The wait after the `failures`-th failure in a row (1 for the first); `jitter` is a
    /// uniform draw in `[0, 1)`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << failures.clamp(1, 16))
            .min(self.cap);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// How long a throttled call waits: the server's word (clamped), else the backoff.
pub fn throttle_wait(retry_after_ms: Option<u64>, throttles: u32, jitter: f64) -> Duration {
    match retry_after_ms {
        Some(ms) => Duration::from_millis(ms).min(MAX_RETRY_AFTER),
        None => Backoff::THROTTLED.delay(throttles, jitter),
    }
}

/// Sends a single call until it succeeds, retrying throttles and transient errors with the
/// policy above (at most `max_attempts` failures); any other error is returned at once.
pub async fn single<T, F, Fut>(what: &str, max_attempts: u32, mut call: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut failures = 0u32;
    let mut renewed = false;
    loop {
        let e = match call().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let wait = match e.class {
            // The client renewed the expired key: once more at once, not a failure.
            ErrorClass::Renewed if !renewed => {
                renewed = true;
                tracing::info!("{what}: {e}; credentials renewed, sending again");
                continue;
            }
            ErrorClass::Renewed => {
                return Err(ApiError {
                    class: ErrorClass::Fatal,
                    ..e
                });
            }
            ErrorClass::Throttled { retry_after_ms } if failures < max_attempts => {
                throttle_wait(retry_after_ms, failures + 1, rand::random())
            }
            ErrorClass::Transient if failures < max_attempts => {
                Backoff::TRANSIENT.delay(failures + 1, rand::random())
            }
            _ => return Err(e),
        };
        failures += 1;
        tracing::warn!("{what}: {e}; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_grows_to_the_cap() {
        let b = Backoff::TRANSIENT;
        assert_eq!(b.delay(1, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(400));
        assert_eq!(
            b.delay(3, 0.999_999),
            Duration::from_millis(1600).mul_f64(0.999_999)
        );
        assert_eq!(b.delay(10, 1.0), Duration::from_secs(10), "capped");
        assert_eq!(
            b.delay(u32::MAX, 1.0),
            Duration::from_secs(10),
            "no overflow"
        );
        assert_eq!(b.delay(5, 0.0), Duration::ZERO);
    }

    #[test]
    fn the_servers_retry_after_wins_and_is_clamped() {
        assert_eq!(
            throttle_wait(Some(1500), 9, 0.9),
            Duration::from_millis(1500)
        );
        assert_eq!(throttle_wait(Some(u64::MAX), 1, 0.0), MAX_RETRY_AFTER);
        assert_eq!(throttle_wait(None, 1, 0.5), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_call_retries_transient_errors_on_tokios_clock() {
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let result: Result<u32, ApiError> = single("test", 6, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(ApiError::transport(
                        "Transport.Connect",
                        "refused".into(),
                        false,
                    ))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
        // Two waits, each under its ceiling (400 ms, then 800 ms): on paused time the clock
        // moves by exactly the waits, and no real time passes.
        assert!(started.elapsed() < Duration::from_millis(1200));
        let fatal: Result<(), ApiError> = single("test", 6, || async {
            Err(ApiError::from_response(
                400,
                "SignatureDoesNotMatch".into(),
                "no".into(),
                None,
                None,
            ))
        })
        .await;
        assert_eq!(fatal.unwrap_err().code, "SignatureDoesNotMatch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_key_is_sent_once_more_and_a_second_refusal_is_fatal() {
        let renewed = || {
            let mut e = ApiError::from_response(
                400,
                "InvalidSecurityToken.Expired".into(),
                "expired".into(),
                None,
                None,
            );
            e.class = ErrorClass::Renewed;
            e
        };
        let mut calls = 0;
        let once: Result<u32, ApiError> = single("test", 1, || {
            calls += 1;
            let n = calls;
            async move { if n == 1 { Err(renewed()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(
            once.unwrap(),
            2,
            "sent again, not counted against max_attempts"
        );
        let twice: Result<(), ApiError> = single("test", 6, || async { Err(renewed()) }).await;
        let e = twice.unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "InvalidSecurityToken.Expired")
        );
    }
}
