//! The time requests are signed with: the local clock, corrected by the service's.
//!
//! The gateway refuses a request whose timestamp is more than 15 minutes from its own time
//! (`InvalidTimeStamp.Expired`), and line PCs drift without NTP. Every answer carries the
//! service's `Date` header (RFC 9110 HTTP-date, whole seconds), so the client measures the local
//! clock's offset on every answer and, when it is more than [`TOLERANCE`] off, signs with local
//! time plus that offset (AWS's SDKs call this clock skew correction; the Alibaba SDKs do not).
//! Until the first answer has been read, one call goes alone and the others wait for it (one
//! round trip), so a wrong clock costs one refused call, not one per call in flight. A paced
//! pipeline waits for that answer *before* it takes the next pacer grant ([`ServiceClock::settled`]):
//! calls that had their grants and then waited would all leave together when it came, a bunch
//! the per-IP limit counts.
//!
//! It owns the offset and the calibration gate; it never sends anything itself.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// An offset smaller than this is left alone: `Date` has whole seconds and the answer took a
/// round trip, so a measurement is only good to about a second, and the service allows 15 min.
pub const TOLERANCE: Duration = Duration::from_secs(5);

/// How long a paced pipeline waits for its first call to start measuring.
const START_WAIT: Duration = Duration::from_millis(200);

/// How long a call waits for the first answer before going anyway.
const CALIBRATION_WAIT: Duration = Duration::from_secs(15);

/// The service's clock as seen from here. Shared by every client of a run.
pub struct ServiceClock {
    /// Milliseconds to add to the local clock (0 while it is within [`TOLERANCE`]).
    offset_ms: AtomicI64,
    /// Tests: how far the local clock is made wrong, in milliseconds.
    local_error_ms: i64,
    /// Set once any answer's `Date` has been read.
    calibrated: AtomicBool,
    /// A call is out measuring: the others wait for it.
    probing: AtomicBool,
    /// Calls that ended without an answer (could not connect), so far.
    unanswered: std::sync::atomic::AtomicU64,
    ready: tokio::sync::Notify,
    warned: AtomicBool,
}

impl std::fmt::Debug for ServiceClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClock")
            .field("offset_ms", &self.offset_ms.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for ServiceClock {
    fn default() -> Self {
        ServiceClock::with_local_error(0)
    }
}

impl ServiceClock {
    /// A clock whose local reading is `local_error_ms` off the truth (tests of a wrong clock).
    pub fn with_local_error(local_error_ms: i64) -> Self {
        ServiceClock {
            offset_ms: AtomicI64::new(0),
            local_error_ms,
            calibrated: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            unanswered: std::sync::atomic::AtomicU64::new(0),
            ready: tokio::sync::Notify::new(),
            warned: AtomicBool::new(false),
        }
    }

    fn local(&self) -> jiff::Timestamp {
        let now = jiff::Timestamp::now();
        now.checked_add(jiff::SignedDuration::from_millis(self.local_error_ms))
            .unwrap_or(now)
    }

    /// The offset in use, milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// The time to sign with now, and the offset it includes.
    pub fn now(&self) -> (jiff::Timestamp, i64) {
        let offset = self.offset_ms();
        let local = self.local();
        let t = local
            .checked_add(jiff::SignedDuration::from_millis(offset))
            .unwrap_or(local);
        (t, offset)
    }

    /// Waits, before the first answer, until a call that went ahead has read one.
    pub async fn calibrated(&self) {
        let deadline = tokio::time::Instant::now() + CALIBRATION_WAIT;
        loop {
            if self.calibrated.load(Ordering::Acquire) {
                return;
            }
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.calibrated.load(Ordering::Acquire) {
                return;
            }
            // Nobody is measuring: this call does.
            if !self.probing.swap(true, Ordering::AcqRel) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Waits until the first answer has been read, or a call ended without one (it could not
    /// connect), without becoming the measuring call itself; bounded like
    /// [`ServiceClock::calibrated`]. The call it waits for may not have started yet.
    pub async fn settled(&self) {
        let unanswered = self.unanswered.load(Ordering::Acquire);
        // The call it waits for has been handed to a task that may not have run yet; if none
        // starts measuring soon (the task ended without a call), there is nothing to wait for.
        let start = tokio::time::Instant::now() + START_WAIT;
        while !self.probing.load(Ordering::Acquire) && !self.calibrated.load(Ordering::Acquire) {
            if tokio::time::Instant::now() >= start {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let deadline = tokio::time::Instant::now() + CALIBRATION_WAIT;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.calibrated.load(Ordering::Acquire)
                || self.unanswered.load(Ordering::Acquire) != unanswered
            {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// A call ended without an answer (it could not connect): another may measure.
    pub fn no_answer(&self) {
        self.unanswered.fetch_add(1, Ordering::AcqRel);
        if !self.calibrated.load(Ordering::Acquire) {
            self.probing.store(false, Ordering::Release);
            self.ready.notify_waiters();
        }
    }

    /// Reads an answer's `Date` header, received now. An unreadable or missing one counts as an
    /// answer (the gate opens) and changes nothing.
    pub fn observe(&self, date: Option<&str>) {
        if let Some(server) = date.and_then(parse_http_date) {
            // `Date` is truncated to the second: the service's time was in [date, date + 1 s).
            let server_ms = server.as_millisecond() + 500;
            let skew = server_ms - self.local().as_millisecond();
            let offset = if skew.unsigned_abs() > TOLERANCE.as_millis() as u64 {
                // Whole seconds: the measurement is not finer than that.
                (skew as f64 / 1000.0).round() as i64 * 1000
            } else {
                0
            };
            let before = self.offset_ms.swap(offset, Ordering::Relaxed);
            if offset != 0 && before == 0 && !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the local clock is {} the service's (its Date header): signing with the service's time; set the clock (NTP) to silence this",
                    describe(offset)
                );
            }
        }
        if !self.calibrated.swap(true, Ordering::AcqRel) {
            self.ready.notify_waiters();
        }
    }
}

/// "20 min 3 s behind" / "7 s ahead of".
fn describe(offset_ms: i64) -> String {
    let secs = (offset_ms.unsigned_abs() as f64 / 1000.0).round() as u64;
    let size = match secs {
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{s} s"),
    };
    // The service is ahead when the offset is positive: the local clock is behind.
    if offset_ms > 0 {
        format!("{size} behind")
    } else {
        format!("{size} ahead of")
    }
}

/// An RFC 9110 IMF-fixdate (`Thu, 03 Dec 2026 13:31:37 GMT`), which is also RFC 2822.
fn parse_http_date(value: &str) -> Option<jiff::Timestamp> {
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_date(t: jiff::Timestamp) -> String {
        t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
    }

    #[test]
    fn a_clock_twenty_minutes_slow_signs_with_the_services_time() {
        let clock = ServiceClock::with_local_error(-20 * 60 * 1000);
        let truth = jiff::Timestamp::now();
        clock.observe(Some(&http_date(truth)));
        let (signed, offset) = clock.now();
        assert!((offset - 20 * 60 * 1000).abs() <= 1000, "{offset}");
        let off_by = (signed.as_millisecond() - jiff::Timestamp::now().as_millisecond()).abs();
        assert!(off_by <= 1500, "signed {off_by} ms from the truth");
        // Whole seconds, from a date good to a second: 19 min 59 s to 20 min 1 s.
        let said = describe(offset);
        assert!(
            [
                "19 min 59 s behind",
                "20 min 0 s behind",
                "20 min 1 s behind"
            ]
            .contains(&said.as_str()),
            "{said}"
        );
    }

    #[test]
    fn a_clock_ahead_is_corrected_back_and_a_small_offset_is_left_alone() {
        let ahead = ServiceClock::with_local_error(20 * 60 * 1000);
        ahead.observe(Some(&http_date(jiff::Timestamp::now())));
        assert!(ahead.offset_ms() < -19 * 60 * 1000, "{}", ahead.offset_ms());
        assert!(describe(ahead.offset_ms()).ends_with("ahead of"));

        let close = ServiceClock::with_local_error(2_000);
        close.observe(Some(&http_date(jiff::Timestamp::now())));
        assert_eq!(close.offset_ms(), 0);
        // Unreadable dates change nothing.
        let clock = ServiceClock::with_local_error(-3_600_000);
        for bad in ["", "yesterday", "Thu, 99 Dec 2026 13:31:37 GMT"] {
            clock.observe(Some(bad));
        }
        clock.observe(None);
        assert_eq!(clock.offset_ms(), 0);
    }

    #[tokio::test]
    async fn one_call_measures_while_the_others_wait_for_its_answer() {
        let clock = std::sync::Arc::new(ServiceClock::default());
        // The first caller goes at once.
        tokio::time::timeout(Duration::from_millis(100), clock.calibrated())
            .await
            .expect("the first call is not held");
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.calibrated().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "a second call waits for the first answer"
        );
        clock.observe(Some(&http_date(jiff::Timestamp::now())));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released by the answer")
            .unwrap();
    }

    #[tokio::test]
    async fn a_dispatcher_waits_for_the_first_answer_without_measuring() {
        let clock = std::sync::Arc::new(ServiceClock::default());
        // The dispatcher may wait before the first call has even started.
        let dispatcher = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.settled().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.calibrated().await; // the first call goes
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!dispatcher.is_finished(), "waits for the first answer");
        clock.observe(Some(&http_date(jiff::Timestamp::now())));
        tokio::time::timeout(Duration::from_secs(1), dispatcher)
            .await
            .expect("released by the answer")
            .unwrap();
        // Waiting never took the probe's role: the gate is open for everyone.
        tokio::time::timeout(Duration::from_millis(100), clock.calibrated())
            .await
            .expect("calibrated");
    }

    #[tokio::test]
    async fn a_probe_without_an_answer_hands_the_measuring_on() {
        let clock = std::sync::Arc::new(ServiceClock::default());
        clock.calibrated().await;
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.calibrated().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        clock.no_answer();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter becomes the probe")
            .unwrap();
    }
}
