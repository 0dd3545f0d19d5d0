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
    // The old binary's `export` was one operation's rows: today's `--operation register`.
    for (extra, expected) in [
        (
            &["--operation", "register"][..],
            "ledger-824cb4e.export.csv",
        ),
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
async fn an_old_ledgers_devices_hold_what_it_registered() {
    // Migrating builds each device's current credential from its rows: the default export is
    // the old export, each row naming the operation that gave it.
    let dir = tempfile::tempdir().unwrap();
    let path = old_ledger(dir.path());
    let out = dir.path().join("current.csv");
    let context = mqtt_provision::run::RunContext {
        env: Box::new(|_| None),
        home: None,
        stderr_is_terminal: false,
        stdin_is_terminal: false,
        interrupt: tokio_util::sync::CancellationToken::new(),
        command_line: "mqtt-provision export (test)".into(),
    };
    let args = [
        "export",
        "--ledger",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_eq!(run_cli(&args, &context).await, 0);
    let old = std::fs::read_to_string(data("ledger-824cb4e.export.csv")).unwrap();
    let mut lines = old.lines();
    let mut expected = format!("{},operation\n", lines.next().unwrap());
    for line in lines {
        expected.push_str(&format!("{line},register\n"));
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    assert_eq!(
        expected.lines().count(),
        21,
        "the fixture's 20 devices and a header"
    );
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

#[tokio::test]
async fn a_ledger_of_the_previous_schema_with_rotations_and_revocations_migrates_to_what_the_service_holds()
 {
    // Made by the binary of main at 0c4ed89 against its simulator: register 12 devices, rotate
    // unit-000..002 (not exported since, so their replaced secrets are still kept), revoke
    // unit-003..004; the service's registry was dumped beside it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("previous.sqlite");
    std::fs::copy(data("ledger-0c4ed89.sqlite"), &path).unwrap();
    let out = dir.path().join("current.csv");
    let context = mqtt_provision::run::RunContext {
        env: Box::new(|_| None),
        home: None,
        stderr_is_terminal: false,
        stdin_is_terminal: false,
        interrupt: tokio_util::sync::CancellationToken::new(),
        command_line: "mqtt-provision export (test)".into(),
    };
    let args = [
        "export",
        "--ledger",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_eq!(run_cli(&args, &context).await, 0);
    let pick = |text: &str| {
        credentials_from_csv(
            text,
            "client_id",
            "device_access_key_id",
            "device_access_key_secret",
        )
    };
    let exported = pick(&std::fs::read_to_string(&out).unwrap());
    let service = pick(&std::fs::read_to_string(data("ledger-0c4ed89.service.csv")).unwrap());
    assert_eq!(service.len(), 10);
    assert_eq!(
        exported, service,
        "the migrated ledger exports what the service holds"
    );

    let ledger = Ledger::open_existing(&LedgerLocation::SqliteFile(path.clone()))
        .await
        .unwrap();
    let ops = |events: Vec<mqtt_provision::ledger::HistoryEvent>| -> Vec<(String, String)> {
        events.into_iter().map(|e| (e.operation, e.state)).collect()
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        ops(ledger.history("GID_factory@@@unit-001").await.unwrap()),
        [pair("register", "registered"), pair("rotate", "rotated")]
    );
    assert_eq!(
        ops(ledger.history("GID_factory@@@unit-004").await.unwrap()),
        [pair("register", "registered"), pair("revoke", "revoked")]
    );
    let now = ledger
        .device("GID_factory@@@unit-004")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (now.state.as_str(), now.device_access_key_id),
        ("revoked", None)
    );
    ledger.close().await;
}
