//! A ledger made by an earlier release opens, reads, exports and resumes with this one.
//!
//! `tests/data/ledger-824cb4e.sqlite` was made by the binary of commit 824cb4e (before the
//! ledger's SQL moved behind a backend and its migrations into `migrations/sqlite/`), in a
//! directory holding `ledger-824cb4e.csv` as `devices.csv` (20 devices, one of them repeated,
//! two invalid rows):
//!
//! ```text
//! mqtt-provision register devices.csv --simulate --ledger ledger-824cb4e.sqlite --quiet
//! ```
//!
//! It holds simulator credentials only. `ledger-824cb4e.export.csv` and
//! `ledger-824cb4e.failures.csv` are what that binary's `export` and `export --failures` wrote
//! from copies of it. Opening a ledger runs the migrator, which refuses one whose applied
//! migrations differ from the embedded ones (checksums), so a migration edited or lost on the
//! way fails every test here.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mqtt_provision::ledger::{ItemState, Ledger, LedgerError, LedgerLocation};
use mqtt_provision::report::OperationStatus;
use mqtt_provision::sim::SimConfig;

const INSTANCE: &str = "post-cn-rehearsal01";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A copy of the old ledger: opening it migrates and exporting writes, so never the original.
fn old_ledger(dir: &Path) -> PathBuf {
    let copy = dir.join("old.sqlite");
    std::fs::copy(data("ledger-824cb4e.sqlite"), &copy).unwrap();
    copy
}

#[tokio::test]
async fn an_old_ledger_reads_as_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let path = old_ledger(dir.path());
    let ledger = Ledger::open_existing(&LedgerLocation::from(path.as_path()))
        .await
        .unwrap();
    assert_eq!(ledger.instance_id(), INSTANCE);
    assert_eq!(ledger.operations().await.unwrap(), ["register"]);
    let status = OperationStatus::load(&ledger, "register").await.unwrap();
    assert_eq!(status.count(ItemState::Registered), 20);
    assert_eq!(status.count(ItemState::Invalid), 2);
    assert_eq!(status.counts.values().sum::<i64>(), 22);
    let mut reasons: Vec<(&str, &str)> = status
        .errors
        .iter()
        .map(|g| (g.example_target.as_str(), g.message.as_deref().unwrap()))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (
                "devices.csv:23",
                "ClientId has no '@@@' separator between the group and the device"
            ),
            (
                "devices.csv:24",
                "character '/' at position 18 is not allowed (only letters, digits, '-' and '_')"
            ),
        ]
    );
    let mqtt_provision::ledger::RunRecord {
        operation,
        started_ms: started,
        finished_ms: finished,
        exit_code,
        summary,
        ..
    } = ledger.last_run().await.unwrap().expect("the old run");
    assert_eq!(operation, "register");
    assert!(finished.unwrap() >= started);
    assert_eq!(exit_code, Some(1));
    assert!(summary.unwrap().contains("registered 20, invalid 2"));
    ledger.close().await;
}

#[tokio::test]
async fn an_old_ledger_exports_what_the_old_binary_exported() {
    let dir = tempfile::tempdir().unwrap();
    let path = old_ledger(dir.path());
    let ledger = path.to_str().unwrap();
    let context = mqtt_provision::run::RunContext {
        env: Box::new(|_| None),
        home: None,
        stderr_is_terminal: false,
        stdin_is_terminal: false,
        interrupt: tokio_util::sync::CancellationToken::new(),
        command_line: "mqtt-provision export (test)".into(),
    };
    for (extra, expected) in [
        (&[][..], "ledger-824cb4e.export.csv"),
        (&["--failures"][..], "ledger-824cb4e.failures.csv"),
    ] {
        let out = dir.path().join(expected);
        let mut args = vec!["export", "--ledger", ledger, "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        assert_eq!(run_cli(&args, &context).await, 0, "{args:?}");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            std::fs::read_to_string(data(expected)).unwrap(),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn an_old_ledger_resumes_without_sending_anything_and_keeps_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = old_ledger(dir.path());
    let sim = simulator(SimConfig::default()).await;
    assert_eq!(sim.instance_id, INSTANCE);
    let ctx = context_for(&sim);
    let run = Run::new(&["register"], &data("ledger-824cb4e.csv"), &path, &sim);
    // Every valid device is registered already; the two invalid rows remain.
    assert_eq!(run.exit(&[], &ctx).await, 1);
    assert_eq!(
        sim.stats().total_calls,
        0,
        "a completed old ledger sends nothing"
    );
    let ledger = Ledger::open_existing(&LedgerLocation::from(path.as_path()))
        .await
        .unwrap();
    let status = OperationStatus::load(&ledger, "register").await.unwrap();
    assert_eq!(status.count(ItemState::Registered), 20);
    assert_eq!(status.count(ItemState::Invalid), 2);
    ledger.close().await;
    let refused = Ledger::open(&LedgerLocation::from(path.as_path()), "post-cn-other").await;
    let Err(e @ LedgerError::WrongInstance { .. }) = refused else {
        panic!("another instance must be refused");
    };
    assert!(
        e.to_string()
            .contains(&format!("belongs to instance {INSTANCE}")),
        "{e}"
    );
    sim.stop().await;
}
