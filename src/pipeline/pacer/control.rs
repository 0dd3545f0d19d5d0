//! The pace controller: how far below the configured pace the run goes, from the evidence of
//! the service's answers. It owns one number, the factor (0.05 to 1) the pacer multiplies its
//! target rate by, and never raises the pace above the target: the per-address ceiling (300/s,
//! past which the address is blocked) is a hard cap it never probes.
//!
//! It reacts to the share of calls throttled over an epoch (about a second of answers), not to
//! each throttle, the way DCTCP scales its cut by the fraction of marked packets and the SRE
//! book's client-side throttling compares requests to accepts:
//! * an epoch whose throttles exceed what the noise floor explains (by more than chance allows)
//!   cuts the pace to what the service admitted of it: factor × (1 − excess share), less 2 %;
//! * the next epoch, a second after the cut (the service's window still holds the old pace
//!   until then), is the cut's trial. If the throttled share stayed what it was (within
//!   chance, and still above the noise floor) while the admitted rate fell with the pace, the
//!   throttles were not caused by our rate (random `SystemOverFlow`, say): the cut is undone and
//!   the share becomes the noise floor. If the share fell, or rose, the cut stays;
//! * epochs without excess raise the pace by 1 % of the target per second, doubling with every
//!   further clean epoch up to 16 %/s, so a limit just below is probed gently and a lifted one
//!   is regained in a few seconds.
//!
//! A trickle of throttles that does not follow the pace therefore costs one trial epoch now and
//! then, while a limit that refuses what is above it is tracked within a cut and its trial,
//! about three seconds.
//!
//! It reads no clock: callers pass `now`, so tests drive it on paused time.

use std::time::Duration;

use tokio::time::Instant;

/// An epoch lasts at least this long, and until it holds `MIN_ANSWERS` answers or lasts
/// `MAX_EPOCH`: a second of answers is 290 at the default pace, enough to tell a 2 % trickle
/// from a 4 % one, and short enough to track a limit within a few seconds.
const EPOCH: Duration = Duration::from_secs(1);
const MAX_EPOCH: Duration = Duration::from_secs(4);
const MIN_ANSWERS: u32 = 30;

/// Throttles above the noise floor's expectation count as evidence only if there are at least
/// this many and more than `CHANCE` standard deviations of a Poisson count: random throttles at
/// the noise floor then trigger a (cheap, undone) trial in a few percent of epochs.
const MIN_EXCESS: f64 = 3.0;
const CHANCE: f64 = 2.0;

/// After a cut, answers to calls sent within this time are left out of the trial: the service
/// counts its limits over a second (flow-control.md), so for a second it still holds the calls
/// of the old pace and refuses as if the pace had not changed.
const SETTLE: Duration = Duration::from_secs(1);

/// A cut goes this far below the admitted rate, so the trial epoch is clean under a hard limit
/// and the next overshoot comes a few clean epochs later (half the throttled share of a 1 % margin
/// in the paused-time step-down test, 0.6 % instead of 1.2 %, for 0.5 % less admitted).
const CUT_MARGIN: f64 = 0.02;
const FLOOR: f64 = 0.05;

/// Increase per second of a clean epoch, as a share of the target: doubling per clean epoch.
const INCREASE_FIRST: f64 = 0.01;
const INCREASE_MAX: f64 = 0.16;

/// The noise floor moves down towards a lower share seen in a clean epoch by this weight; it
/// moves up only when a trial shows the throttles did not follow the pace.
const NOISE_DECAY: f64 = 0.1;

/// What one epoch saw: answers to calls sent since it began.
#[derive(Debug, Clone, Copy)]
struct Epoch {
    start: Instant,
    answered: u32,
    throttled: u32,
}

impl Epoch {
    fn new(start: Instant) -> Self {
        Epoch {
            start,
            answered: 0,
            throttled: 0,
        }
    }

    fn share(&self) -> f64 {
        f64::from(self.throttled) / f64::from(self.answered.max(1))
    }

    /// Calls admitted (answered without a throttle) per second of the epoch.
    fn admitted_rate(&self, end: Instant) -> f64 {
        let secs = end.duration_since(self.start).as_secs_f64().max(1e-3);
        f64::from(self.answered - self.throttled) / secs
    }
}

/// A cut waiting for its verdict.
#[derive(Debug, Clone, Copy)]
struct Trial {
    factor_before: f64,
    clean_before: u32,
    /// The epoch that caused the cut, and its admitted rate.
    cause: Epoch,
    cause_admitted: f64,
}

/// What happened at the end of an epoch (for tests and the log).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Throttles beyond the noise floor: the pace was cut.
    Cut,
    /// The last cut did not change the throttled share: undone, the share is noise.
    Noise,
    /// No excess: the pace rose (or stayed at the target).
    Clean,
}

#[derive(Debug)]
pub(crate) struct Controller {
    factor: f64,
    /// The share of calls throttled whatever the pace (random refusals), as far as trials showed.
    noise: f64,
    epoch: Epoch,
    trial: Option<Trial>,
    /// Clean epochs in a row since the last cut.
    clean: u32,
}

impl Controller {
    /// The share of `epoch`'s calls throttled beyond the noise floor, if it is more than chance.
    fn significant_excess(&self, epoch: &Epoch) -> Option<f64> {
        let expected = self.noise * f64::from(epoch.answered);
        let excess = f64::from(epoch.throttled) - expected;
        (excess >= MIN_EXCESS && excess > CHANCE * (expected + 1.0).sqrt())
            .then(|| excess / f64::from(epoch.answered))
    }

    pub(crate) fn new(now: Instant) -> Self {
        Controller {
            factor: 1.0,
            noise: 0.0,
            epoch: Epoch::new(now),
            trial: None,
            clean: 0,
        }
    }

    /// The share of the target pace to run at.
    pub(crate) fn factor(&self) -> f64 {
        self.factor
    }

    /// The throttled share the controller takes for noise.
    pub(crate) fn noise_floor(&self) -> f64 {
        self.noise
    }

    /// One answer of the service to a call sent at `sent`; `throttled` if it said slow down.
    /// Returns the verdict if this answer closed an epoch.
    pub(crate) fn on_answer(
        &mut self,
        now: Instant,
        sent: Instant,
        throttled: bool,
    ) -> Option<Verdict> {
        // A call sent before the epoch began was sent at another pace: it says nothing of this one.
        if sent >= self.epoch.start {
            self.epoch.answered += 1;
            self.epoch.throttled += u32::from(throttled);
        }
        self.maybe_close(now)
    }

    /// Closes an epoch that is over even if no answer comes (called about once a second).
    pub(crate) fn on_tick(&mut self, now: Instant) -> Option<Verdict> {
        if self.epoch.answered == 0 && now.duration_since(self.epoch.start) >= MAX_EPOCH {
            // Nothing was sent: nothing learned; measure afresh once calls flow again.
            self.epoch = Epoch::new(now);
            return None;
        }
        self.maybe_close(now)
    }

    fn maybe_close(&mut self, now: Instant) -> Option<Verdict> {
        let age = now.duration_since(self.epoch.start);
        let over = (age >= EPOCH && self.epoch.answered >= MIN_ANSWERS)
            || (age >= MAX_EPOCH && self.epoch.answered > 0);
        if !over {
            return None;
        }
        let epoch = std::mem::replace(&mut self.epoch, Epoch::new(now));
        let verdict = self.judge(epoch, now);
        if verdict == Verdict::Cut {
            self.epoch = Epoch::new(now + SETTLE);
        }
        Some(verdict)
    }

    fn judge(&mut self, epoch: Epoch, now: Instant) -> Verdict {
        let admitted = epoch.admitted_rate(now);
        if let Some(trial) = self.trial.take() {
            // Noise keeps its share whatever the pace, and the admitted rate falls with the pace;
            // refusals caused by the pace fall with it while the admitted rate holds (a limit) —
            // or, after a change in the service, the share rises: both keep the cut. Only a
            // trial that still shows an excess can call it noise: a clean trial is the cut working.
            let still_excess = self.significant_excess(&epoch).is_some();
            let expected_as_before = trial.cause.share() * f64::from(epoch.answered);
            let share_held = (f64::from(epoch.throttled) - expected_as_before).abs()
                < MIN_EXCESS.max(CHANCE * (expected_as_before + 1.0).sqrt());
            let cut = 1.0 - self.factor / trial.factor_before;
            let admitted_fell = admitted < trial.cause_admitted * (1.0 - cut / 2.0);
            if still_excess && share_held && admitted_fell {
                self.noise = f64::from(trial.cause.throttled + epoch.throttled)
                    / f64::from((trial.cause.answered + epoch.answered).max(1));
                self.factor = trial.factor_before;
                self.clean = trial.clean_before;
                return Verdict::Noise;
            }
            // The cut helped: the share now seen below the refused pace is all the noise there is.
            self.noise = self.noise.min(epoch.share());
        }
        if let Some(excess_share) = self.significant_excess(&epoch) {
            let before = self.factor;
            self.factor = (before * (1.0 - excess_share) * (1.0 - CUT_MARGIN)).max(FLOOR);
            self.trial = Some(Trial {
                factor_before: before,
                clean_before: self.clean,
                cause: epoch,
                cause_admitted: admitted,
            });
            self.clean = 0;
            return Verdict::Cut;
        }
        if epoch.share() < self.noise {
            self.noise += NOISE_DECAY * (epoch.share() - self.noise);
        }
        let secs = now.duration_since(epoch.start).as_secs_f64();
        let rate = (INCREASE_FIRST * 2f64.powi(self.clean.min(8) as i32)).min(INCREASE_MAX);
        self.factor = (self.factor + rate * secs).min(1.0);
        self.clean += 1;
        Verdict::Clean
    }
}
