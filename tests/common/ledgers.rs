//! The ledger a test runs on. By default a SQLite file in the test's own directory, as a user's
//! `--ledger provision.sqlite` would be; with `MQTT_PROVISION_TEST_LEDGER=postgres` a fresh
//! database of its own in a PostgreSQL cluster (tests/common/postgres.rs) that the test process
//! starts on first use and stops when it exits.
//!
//! A test body takes a [`TestLedger`] and runs unchanged on either backend. A test of something
//! only a SQLite file has (its lock file, its file system, its bytes) begins with
//! [`sqlite_only`], which under the PostgreSQL setting says so and tells the test to return.
//! Without PostgreSQL installed the PostgreSQL setting fails: it never falls back to SQLite.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, TryLockError};

use mqtt_provision::ledger::LedgerLocation;

use super::postgres::Postgres;

/// The variable that picks the tests' backend: unset, empty or `sqlite`, or `postgres`.
pub const VARIABLE: &str = "MQTT_PROVISION_TEST_LEDGER";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend `MQTT_PROVISION_TEST_LEDGER` names; another value fails the test.
pub fn backend() -> Backend {
    match std::env::var(VARIABLE) {
        Err(std::env::VarError::NotPresent) => Backend::Sqlite,
        Ok(v) => match v.as_str() {
            "" | "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            other => panic!("{VARIABLE}={other:?}: give sqlite or postgres"),
        },
        Err(e) => panic!("{VARIABLE}: {e}"),
    }
}

/// True (after saying why, on stderr) when the tests run on PostgreSQL: the calling test checks
/// something only a SQLite ledger has, and returns.
pub fn sqlite_only(test: &str, reason: &str) -> bool {
    if backend() == Backend::Postgres {
        eprintln!("{test}: SQLite-only: {reason}");
        true
    } else {
        false
    }
}

/// One test's ledger: what `--ledger` is given, and a directory for the files beside it
/// (exports, the workers' HOME).
#[derive(Debug, Clone)]
pub struct TestLedger {
    arg: String,
    /// The SQLite file; on PostgreSQL the name the files beside the ledger are named after.
    file: PathBuf,
    postgres: bool,
}

impl TestLedger {
    /// The ledger of a test whose files live in `dir`: `dir/l.sqlite`, or a fresh database.
    pub fn new(dir: &Path) -> TestLedger {
        TestLedger::named(dir, "l.sqlite")
    }

    /// As [`TestLedger::new`], the SQLite file named `file`.
    pub fn named(dir: &Path, file: &str) -> TestLedger {
        match backend() {
            Backend::Sqlite => TestLedger::sqlite(dir.join(file)),
            Backend::Postgres => TestLedger {
                arg: shared_database(),
                file: dir.join(file),
                postgres: true,
            },
        }
    }

    /// A SQLite ledger at `path`, whatever the setting (for the SQLite-only tests).
    pub fn sqlite(path: PathBuf) -> TestLedger {
        TestLedger {
            arg: path.to_str().expect("a UTF-8 test path").to_owned(),
            file: path,
            postgres: false,
        }
    }

    /// The `--ledger` value: the file's path, or the database's URL.
    pub fn arg(&self) -> &str {
        &self.arg
    }

    pub fn location(&self) -> LedgerLocation {
        LedgerLocation::parse(Path::new(&self.arg)).expect("a test ledger's location parses")
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// The SQLite file, if the ledger is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        (!self.postgres).then_some(self.file.as_path())
    }

    /// The directory the test's files beside the ledger go in.
    pub fn dir(&self) -> &Path {
        self.file.parent().expect("a ledger file has a directory")
    }

    /// A file beside the ledger, as `Path::with_extension` names it beside the SQLite file.
    pub fn with_extension(&self, extension: &str) -> PathBuf {
        self.file.with_extension(extension)
    }
}

/// The test process's cluster: started by the first test that asks, stopped at exit (statics
/// are never dropped, so an `atexit` hook drops it).
static CLUSTER: Mutex<Option<Postgres>> = Mutex::new(None);

/// A new database in the test process's cluster; its URL.
fn shared_database() -> String {
    let mut cluster = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
    if cluster.is_none() {
        let started = Postgres::start().unwrap_or_else(|| {
            panic!("{VARIABLE}=postgres, but PostgreSQL 15 is not installed (see above)")
        });
        *cluster = Some(started);
        // SAFETY: `stop_cluster` is a plain function that neither unwinds nor calls `exit`.
        let registered = unsafe { libc::atexit(stop_cluster) };
        assert_eq!(registered, 0, "atexit registers the cluster's stop");
    }
    cluster
        .as_ref()
        .expect("the cluster was started")
        .database()
}

/// Stops the cluster (`pg_ctl stop -m immediate`) and removes its directory, as the process
/// exits. A test still holding the lock at exit (it cannot: the harness has joined them) would
/// leave the cluster running rather than hang the exit.
extern "C" fn stop_cluster() {
    let mut cluster = match CLUSTER.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    drop(cluster.take());
}

/// What the shared helpers (`Run`, `ledger_credentials`) take as a ledger: a [`TestLedger`], or
/// the path of a SQLite file, as the tests that are about SQLite files give it.
pub trait LedgerArg {
    /// The `--ledger` value.
    fn ledger_arg(&self) -> String;
    /// A file beside the ledger (an export), as `Path::with_extension` names it.
    fn beside(&self, extension: &str) -> PathBuf;
}

impl LedgerArg for TestLedger {
    fn ledger_arg(&self) -> String {
        self.arg.clone()
    }
    fn beside(&self, extension: &str) -> PathBuf {
        self.with_extension(extension)
    }
}

impl LedgerArg for Path {
    fn ledger_arg(&self) -> String {
        self.to_str().expect("a UTF-8 test path").to_owned()
    }
    fn beside(&self, extension: &str) -> PathBuf {
        self.with_extension(extension)
    }
}

impl LedgerArg for PathBuf {
    fn ledger_arg(&self) -> String {
        self.as_path().ledger_arg()
    }
    fn beside(&self, extension: &str) -> PathBuf {
        self.as_path().beside(extension)
    }
}
