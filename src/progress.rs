//! Progress and logs on stderr: an indicatif bar on a terminal, plain lines in logs, and the
//! tracing subscriber whose lines are written around the bar.
//!
//! Whether stderr is a terminal is decided once by the caller and passed in ([`ProgressMode`],
//! [`LogStyle`]), never queried here, so tests choose. The counters are atomics the pipeline
//! bumps; the reporter only reads them ([`Snapshot`], which the `progress` event of `--json`
//! also reads). No progress output ever carries a secret: it has only numbers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::cli::{ColorChoice, LogFormat};
use crate::ledger::ItemState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar (stderr is a terminal).
    Bar,
    /// One plain line per interval (logs, CI).
    Lines(Duration),
    /// Nothing (tests, `--quiet`).
    Off,
}

/// Live numbers of a run.
#[derive(Debug, Default)]
pub struct Counters {
    /// Targets this run will work on.
    pub total: AtomicU64,
    /// Targets finished by this run, by state (index of [`ItemState::ALL`]).
    pub finished: [AtomicU64; 11],
    /// Calls sent (all APIs, throttled ones included).
    pub calls: AtomicU64,
    pub throttled: AtomicU64,
    /// Set while the service is unreachable (the circuit breaker is open).
    pub outage: crate::pipeline::breaker::OutageView,
}

impl Counters {
    pub fn finish(&self, state: ItemState) {
        let i = ItemState::ALL
            .iter()
            .position(|s| *s == state)
            .expect("listed");
        self.finished[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn finished_total(&self) -> u64 {
        ItemState::ALL
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != ItemState::Pending)
            .map(|(i, _)| self.finished[i].load(Ordering::Relaxed))
            .sum()
    }

    /// `registered 10, existing 2, failed 1`: the non-zero finished states.
    pub fn by_state(&self) -> String {
        let parts: Vec<String> = ItemState::ALL
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != ItemState::Pending)
            .filter_map(|(i, s)| {
                let n = self.finished[i].load(Ordering::Relaxed);
                (n > 0).then(|| format!("{s} {n}"))
            })
            .collect();
        if parts.is_empty() {
            "none finished yet".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The numbers of a run at one moment: what a progress line and a `progress` event show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub done: u64,
    pub total: u64,
    /// Targets finished by this run, by state (only states reached).
    pub counts: std::collections::BTreeMap<&'static str, u64>,
    pub calls: u64,
    pub calls_per_second: f64,
    pub throttled: u64,
    pub elapsed_seconds: f64,
    /// `None` until something finished.
    pub eta_seconds: Option<f64>,
    /// While the service is unreachable: since when, and when the next try is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<Outage>,
}

/// The service is unreachable: calls are held, and one probe goes at `retry_in_seconds`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outage {
    /// RFC 3339.
    pub since: String,
    pub retry_in_seconds: f64,
}

impl Outage {
    fn read(view: &crate::pipeline::breaker::OutageView) -> Option<Outage> {
        let since = view.since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let now = jiff::Timestamp::now().as_millisecond();
        let retry_at = view.retry_at_ms.load(Ordering::Relaxed);
        Some(Outage {
            since: jiff::Timestamp::from_millisecond(since)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            retry_in_seconds: ((retry_at - now).max(0) as f64 / 1000.0).round(),
        })
    }
}

impl Snapshot {
    pub fn take(c: &Counters, started: Instant) -> Snapshot {
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let done = c.finished_total();
        let total = c.total.load(Ordering::Relaxed);
        let rate = done as f64 / elapsed;
        let counts = ItemState::ALL
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != ItemState::Pending)
            .map(|(i, s)| (s.as_str(), c.finished[i].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let calls = c.calls.load(Ordering::Relaxed);
        Snapshot {
            done,
            total,
            counts,
            calls,
            calls_per_second: calls as f64 / elapsed,
            throttled: c.throttled.load(Ordering::Relaxed),
            elapsed_seconds: elapsed,
            eta_seconds: (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate),
            outage: Outage::read(&c.outage),
        }
    }

    /// `12/40 done, 5.0 calls/s, ETA 6s, throttled 0: registered 12`.
    pub fn line(&self, by_state: &str) -> String {
        let eta = match self.eta_seconds {
            Some(s) if self.total > self.done => format!("{s:.0}s"),
            _ => "-".into(),
        };
        let outage = match &self.outage {
            Some(o) => {
                let since = o
                    .since
                    .parse::<jiff::Timestamp>()
                    .map(crate::pipeline::breaker::clock_time)
                    .unwrap_or_default();
                format!(
                    "service unreachable since {since}, retrying in {:.0} s; ",
                    o.retry_in_seconds
                )
            }
            None => String::new(),
        };
        format!(
            "{outage}{}/{} done, {:.1} calls/s, ETA {eta}, throttled {}: {by_state}",
            self.done, self.total, self.calls_per_second, self.throttled
        )
    }
}

/// Calls `each` with a snapshot every `every` until `done` is cancelled (the first after one
/// interval, not at once: a run shorter than the interval has none).
pub async fn every(
    every: Duration,
    counters: Arc<Counters>,
    done: CancellationToken,
    mut each: impl FnMut(Snapshot),
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => each(Snapshot::take(&counters, started)),
        }
    }
}

/// Shows progress until `done` is cancelled.
pub async fn report(mode: ProgressMode, counters: Arc<Counters>, done: CancellationToken) {
    let started = Instant::now();
    let line = |c: &Counters| Snapshot::take(c, started).line(&c.by_state());
    match mode {
        ProgressMode::Off => done.cancelled().await,
        ProgressMode::Lines(interval) => {
            let c = counters.clone();
            every(interval, counters, done, |snapshot| {
                tracing::info!("progress {}", snapshot.line(&c.by_state()))
            })
            .await
        }
        ProgressMode::Bar => {
            let bar = ProgressBar::with_draw_target(
                Some(counters.total.load(Ordering::Relaxed)),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            bar.set_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {msg}")
                    .expect("valid template")
                    .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            set_bar(Some(bar.clone()));
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tick.tick() => {
                        bar.set_length(counters.total.load(Ordering::Relaxed));
                        bar.set_position(counters.finished_total());
                        bar.set_message(line(&counters));
                    }
                }
            }
            set_bar(None);
            bar.finish_and_clear();
        }
    }
}

/// The bar being drawn, if any: log lines are written around it.
static BAR: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

fn set_bar(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(|p| p.into_inner()) = bar;
}

/// Writes log lines to stderr; while a bar is drawn, it is cleared and redrawn around each line
/// so neither tears the other.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// How log lines look, decided once at the edge ([`LogStyle::decide`]) and passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStyle {
    /// ANSI colour and dimming.
    pub color: bool,
    /// One JSON object per line instead of text.
    pub json: bool,
}

impl LogStyle {
    /// cargo's rules: `--color always|never` wins; under `auto`, a non-empty `NO_COLOR`
    /// (no-color.org) switches colour off, then `CLICOLOR_FORCE` (not `0`) switches it on,
    /// else colour only on a terminal. JSON lines never carry colour.
    pub fn decide(
        color: ColorChoice,
        format: LogFormat,
        env: &dyn Fn(&str) -> Option<String>,
        stderr_is_terminal: bool,
    ) -> LogStyle {
        let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
        let json = format == LogFormat::Json;
        let color = !json
            && match color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto if set("NO_COLOR") => false,
                ColorChoice::Auto if set("CLICOLOR_FORCE") => {
                    env("CLICOLOR_FORCE").as_deref() != Some("0")
                }
                ColorChoice::Auto => stderr_is_terminal,
            };
        LogStyle { color, json }
    }
}

/// tracing to stderr through [`LogWriter`], filtered by `RUST_LOG` (default `info`).
pub fn init_logging(style: LogStyle) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(style.color)
        .with_writer(|| LogWriter);
    let _ = if style.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn style(color: ColorChoice, vars: &[(&str, &str)], terminal: bool) -> bool {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        LogStyle::decide(color, LogFormat::Text, &env, terminal).color
    }

    #[test]
    fn colour_follows_the_terminal_no_color_and_clicolor_force() {
        use ColorChoice::*;
        assert!(style(Auto, &[], true));
        assert!(!style(Auto, &[], false), "a log file gets no escapes");
        assert!(!style(Auto, &[("NO_COLOR", "1")], true));
        assert!(
            style(Auto, &[("NO_COLOR", "")], true),
            "empty NO_COLOR is unset"
        );
        assert!(style(Auto, &[("CLICOLOR_FORCE", "1")], false));
        assert!(!style(Auto, &[("CLICOLOR_FORCE", "0")], false));
        assert!(!style(
            Auto,
            &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
            false
        ));
        assert!(style(Always, &[("NO_COLOR", "1")], false));
        assert!(!style(Never, &[("CLICOLOR_FORCE", "1")], true));
        let json = LogStyle::decide(Always, LogFormat::Json, &|_| None, true);
        assert!(json.json && !json.color);
    }
}
