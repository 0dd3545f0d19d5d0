//! Faults and latency on purpose: which admitted calls fail, lose their connection or stall
//! (`--fault-*`, `--slow-ms`), and how long every answer waits (`--latency`). Both are drawn
//! from the simulator's seeded rng, fault first, then latency, so one seed replays a run.
//!
//! It only draws; it never applies a call, answers one or counts what it drew.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::{Latency, SimConfig};

/// What the fault draw decided for one admitted call.
#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// Answer this error instead of applying the call.
    Error(u16, &'static str, &'static str),
    DropBefore,
    DropAfter,
    Slow,
}

impl Fault {
    /// The name the `faults` stat counts it under; `None` for no fault.
    pub fn kind(self) -> Option<&'static str> {
        match self {
            Fault::None => None,
            Fault::Error(_, code, _) => Some(code),
            Fault::DropBefore => Some("drop_before_apply"),
            Fault::DropAfter => Some("drop_after_apply"),
            Fault::Slow => Some("slow"),
        }
    }

    /// The outcome the `calls` stat records for a connection dropped without an answer; `None`
    /// if the call is answered.
    pub fn dropped_outcome(self) -> Option<&'static str> {
        match self {
            Fault::DropBefore => Some("(dropped before apply)"),
            Fault::DropAfter => Some("(dropped after apply)"),
            _ => None,
        }
    }
}

/// The configured fault rates and latency.
pub struct Faults {
    /// Each fault with its rate, in the order one uniform draw is split among them.
    table: [(f64, Fault); 6],
    latency: Latency,
    slow: Duration,
}

impl Faults {
    pub fn new(c: &SimConfig) -> Self {
        let table = [
            (
                c.fault_internal_error,
                Fault::Error(
                    500,
                    "InternalError",
                    "The request processing has failed due to some unknown error, exception or failure. Try again later.",
                ),
            ),
            (
                c.fault_system_overflow,
                Fault::Error(
                    500,
                    "SystemOverFlow",
                    "The system is overloaded. Please try again.",
                ),
            ),
            (
                c.fault_unavailable,
                Fault::Error(
                    503,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                ),
            ),
            (c.fault_drop_before, Fault::DropBefore),
            (c.fault_drop_after, Fault::DropAfter),
            (c.fault_slow, Fault::Slow),
        ];
        Faults {
            table,
            latency: c.latency,
            slow: Duration::from_millis(c.slow_ms),
        }
    }

    /// The fault of one admitted call and how long to wait before answering it. The latency is
    /// drawn even when a fault replaces it, so the rng advances the same way whatever the fault.
    pub fn draw(&self, rng: &mut StdRng) -> (Fault, Duration) {
        let fault = self.draw_fault(rng);
        let latency = self.draw_latency(rng);
        let delay = if fault == Fault::Slow {
            self.slow
        } else {
            latency
        };
        (fault, delay)
    }

    fn draw_fault(&self, rng: &mut StdRng) -> Fault {
        // With every rate at zero nothing is drawn: the seeded values that follow (latency,
        // request ids, credentials) are those of a simulator without fault injection.
        if self.table.iter().all(|(rate, _)| *rate == 0.0) {
            return Fault::None;
        }
        let mut u: f64 = rng.r#gen();
        for (rate, fault) in self.table {
            if u < rate {
                return fault;
            }
            u -= rate;
        }
        Fault::None
    }

    fn draw_latency(&self, rng: &mut StdRng) -> Duration {
        match self.latency {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform(a, b) => a + (b - a).mul_f64(rng.r#gen::<f64>()),
            Latency::LogNormal { median, sigma } => {
                // Box–Muller: one standard normal from two uniforms.
                let (u1, u2): (f64, f64) = (rng.r#gen::<f64>().max(f64::MIN_POSITIVE), rng.r#gen());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                median.mul_f64((sigma * z).exp().min(1000.0))
            }
        }
    }
}
