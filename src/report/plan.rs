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
        "  plan: {pending} targets to {} at {rate:.0} calls/s ({sources} source address(es); ≤ {:.0}/s per API per account, ≤ {:.0}/s per address), about {:.0} s{extra}\n",
        operation.name(),
        pace.account_ceiling(),
        pace.ip_ceiling(),
        pending as f64 * calls_per_target / rate,
    ));
    out
}
