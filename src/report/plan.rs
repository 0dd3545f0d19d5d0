//! The dry run's plan: what the ledger holds for the operation, and what a real run would send,
//! at which pace, from how many addresses, for about how long.

use crate::ledger::ItemState;
use crate::pipeline::{Operation, PaceConfig};

use super::status::OperationStatus;

/// The text `--dry-run` prints after ingesting.
pub fn render(
    operation: Operation,
    status: &OperationStatus,
    pace: &PaceConfig,
    sources: usize,
    endpoint: &str,
    pending_by_file: &[(String, i64)],
) -> String {
    let pending = status.count(ItemState::Pending);
    let rate = pace.target_rate(sources);
    let (extra, calls_per_target) = match operation {
        Operation::Register {
            check_existing: true,
        } => (
            ", plus one GetDeviceCredential per device (--check-existing)",
            2.0,
        ),
        Operation::Rotate => (", two calls per device (Get, then Refresh)", 2.0),
        _ => ("", 1.0),
    };
    let mut out = String::from("dry run: nothing sent\n");
    out.push_str(&status.render());
    out.push_str(&format!(
        "  plan: {pending} targets to {} at {rate:.0} calls/s ({sources} source address(es)) to {endpoint}, {}{extra}\n",
        operation.name(),
        duration(pending as f64 * calls_per_target / rate),
    ));
    if pending_by_file.len() > 1 {
        let files: Vec<String> = pending_by_file
            .iter()
            .map(|(f, n)| format!("{} {n}", crate::terminal::escape(f)))
            .collect();
        out.push_str(&format!("  pending by file: {}\n", files.join(", ")));
    }
    // What the pacer promises is what it sends: no sliding second of its grants holds more than
    // the ceiling. The service counts arrivals, which network jitter can bunch by a call or two
    // (the benchmarks saw 298 per address against 294 sent): that is what the headroom is for.
    out.push_str(&format!(
        "  pace: sent at most {:.0} calls in any second per API (limit {:.0}) and {:.0} per address (limit {:.0}); the {:.1} % headroom absorbs the network's jitter in the service's count\n",
        pace.account_ceiling(),
        pace.account_qps,
        pace.ip_ceiling(),
        pace.ip_qps,
        pace.headroom * 100.0,
    ));
    out
}

/// A duration estimate in words a person reads at a glance.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 1.0 => "under a second".to_owned(),
        s if s < 120.0 => format!("about {s:.0} s"),
        s if s < 7200.0 => format!("about {:.0} min", s / 60.0),
        s => format!("about {:.1} h", s / 3600.0),
    }
}
