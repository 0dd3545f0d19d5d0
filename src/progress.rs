//! Progress: an indicatif bar on a terminal, plain lines in logs.
//!
//! Whether stderr is a terminal is decided once by the caller and passed in ([`ProgressMode`]),
//! never queried here, so tests choose. The counters are atomics the pipeline bumps; the
//! reporter only reads them. No progress output ever carries a secret: it has only numbers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

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

/// Shows progress until `done` is cancelled.
pub async fn report(mode: ProgressMode, counters: Arc<Counters>, done: CancellationToken) {
    let started = Instant::now();
    let line = |c: &Counters| {
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let calls = c.calls.load(Ordering::Relaxed);
        let finished = c.finished_total();
        let total = c.total.load(Ordering::Relaxed);
        let rate = finished as f64 / elapsed;
        let eta = if rate > 0.0 && total > finished {
            format!("{:.0}s", (total - finished) as f64 / rate)
        } else {
            "-".into()
        };
        format!(
            "{finished}/{total} done, {:.1} calls/s, ETA {eta}, throttled {}: {}",
            calls as f64 / elapsed,
            c.throttled.load(Ordering::Relaxed),
            c.by_state()
        )
    };
    match mode {
        ProgressMode::Off => done.cancelled().await,
        ProgressMode::Lines(every) => {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tick.tick() => tracing::info!("progress {}", line(&counters)),
                }
            }
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

/// tracing to stderr through [`LogWriter`], filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(|| LogWriter)
        .try_init();
}
