//! The ledger: every target of every operation, its state, its last error and its credential.
//! It is the only source of truth of a run; reruns resume from it.
//!
//! This module owns the ledger's vocabulary (the types below, [`ItemState`], [`LedgerError`],
//! [`LedgerLocation`]) and [`Ledger`], the one face callers see. `Ledger` holds a backend in
//! `Store` and dispatches every method to it with `on_store!`; each backend has its own SQL and
//! migrations (today `sqlite`, with `migrations/sqlite/`; a PostgreSQL backend becomes a second
//! variant). Rules kept here, such as which instance a ledger belongs to, hold for every backend.
//!
//! This module must never hold SQL or name a database driver: `sqlx` appears only in the
//! backend modules. It knows nothing of HTTP or CSV parsing; it stores what it is given, in
//! batches.
//!
//! The other files: `error` (failures and their exit codes), `location` (the `--ledger` value),
//! `state` (item states), `private_file` (0600 files), `sqlite` (the SQLite backend).

mod error;
mod location;
mod private_file;
mod sqlite;
mod state;

use std::collections::BTreeMap;

pub use error::LedgerError;
pub use location::LedgerLocation;
pub use private_file::create_private;
pub use state::ItemState;

use crate::input::Row;
use crate::secret::Secret;
use sqlite::SqliteStore;

/// A claimed target, ready to dispatch.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub id: i64,
    pub target: String,
    pub attempts: i64,
    /// A call that may have taken effect was sent for it before (an earlier run's ambiguous call).
    pub maybe_applied: bool,
}

/// What the writer stores for one target.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub target: String,
    pub state: ItemState,
    pub attempts_added: i64,
    pub maybe_applied: bool,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    pub credential: Option<(String, Secret)>,
    /// `rotate`: the secret the new one replaced.
    pub previous_secret: Option<Secret>,
}

/// What an ingest added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestCounts {
    pub rows: u64,
    pub new_targets: u64,
    pub duplicates: u64,
    pub invalid: u64,
}

/// One row of `export`.
#[derive(Debug, Clone)]
pub struct ExportRow {
    pub id: i64,
    pub target: String,
    pub state: String,
    pub key_id: Option<String>,
    pub secret: Option<Secret>,
    pub file: String,
    pub line: i64,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    pub previous_secret: Option<Secret>,
}

/// Errors of one code: how many, and one example.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorGroup {
    pub code: String,
    pub count: i64,
    pub example_target: String,
    pub example_request_id: Option<String>,
    pub message: Option<String>,
}

pub struct Ledger {
    store: Store,
    instance_id: String,
}

/// The backend holding an open ledger. Each variant brings its own SQL, migrations and way of
/// keeping a second worker out (SQLite: a lock file).
enum Store {
    Sqlite(SqliteStore),
}

/// Runs `$call` with `$store` bound to the ledger's backend, whichever it is: a new backend
/// adds one arm here, not one per method.
macro_rules! on_store {
    ($ledger:expr, $store:ident => $call:expr) => {
        match &$ledger.store {
            Store::Sqlite($store) => $call,
        }
    };
}

/// Now, in the epoch milliseconds every backend stores (portable, no time zone types).
fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Ledger {
    /// Opens (creating, mode 0600) the ledger of `instance_id` for a run, exclusively.
    pub async fn open(location: &LedgerLocation, instance_id: &str) -> Result<Ledger, LedgerError> {
        let store = match location {
            LedgerLocation::SqliteFile(path) => {
                Store::Sqlite(SqliteStore::open_exclusive(path).await?)
            }
        };
        let mut ledger = Ledger {
            store,
            instance_id: String::new(),
        };
        match on_store!(ledger, s => s.instance_id().await)? {
            Some(found) if found != instance_id => {
                return Err(LedgerError::WrongInstance {
                    path: ledger.path().to_owned(),
                    found,
                    wanted: instance_id.to_owned(),
                });
            }
            Some(_) => {}
            None => on_store!(ledger, s => s.set_instance_id(instance_id).await)?,
        }
        ledger.instance_id = instance_id.to_owned();
        Ok(ledger)
    }

    /// Opens an existing ledger to read it (`status`, `export`), alongside a running worker.
    pub async fn open_existing(location: &LedgerLocation) -> Result<Ledger, LedgerError> {
        let store = match location {
            LedgerLocation::SqliteFile(path) => {
                Store::Sqlite(SqliteStore::open_shared(path).await?)
            }
        };
        let mut ledger = Ledger {
            store,
            instance_id: String::new(),
        };
        ledger.instance_id = on_store!(ledger, s => s.instance_id().await)?.unwrap_or_default();
        Ok(ledger)
    }

    /// The ledger as messages name it (a SQLite ledger: its file's path).
    pub fn path(&self) -> &str {
        on_store!(self, s => s.path())
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Adds rows idempotently: a target already present (from this file, another file or an
    /// earlier run) is left as it is; an invalid row is kept with its file, line and reason.
    pub async fn ingest(&self, operation: &str, rows: &[Row]) -> Result<IngestCounts, LedgerError> {
        on_store!(self, s => s.ingest(operation, rows).await)
    }

    /// Whether a file with this content was already fully ingested with this input spec.
    pub async fn was_ingested(
        &self,
        operation: &str,
        sha256: &str,
        spec: &str,
    ) -> Result<bool, LedgerError> {
        on_store!(self, s => s.was_ingested(operation, sha256, spec).await)
    }

    /// Records that a file was fully ingested.
    pub async fn mark_ingested(
        &self,
        operation: &str,
        sha256: &str,
        spec: &str,
        path: &str,
        rows: u64,
    ) -> Result<(), LedgerError> {
        on_store!(self, s => s.mark_ingested(operation, sha256, spec, path, rows).await)
    }

    /// Puts `failed` targets back to `pending`, so rerunning a command retries them.
    pub async fn retry_failed(&self, operation: &str) -> Result<u64, LedgerError> {
        on_store!(self, s => s.retry_failed(operation).await)
    }

    /// Claims up to `limit` pending targets after `after_id`, in id order. When the operation's
    /// call may change something (`marks_effect`), the claim durably records `maybe_applied`
    /// before any call is sent, so a kill -9 at any moment leaves a trace that makes the next
    /// run reconcile instead of calling again.
    pub async fn claim(
        &self,
        operation: &str,
        after_id: i64,
        limit: i64,
        marks_effect: bool,
    ) -> Result<Vec<WorkItem>, LedgerError> {
        on_store!(self, s => s.claim(operation, after_id, limit, marks_effect).await)
    }

    /// Stores outcomes in one transaction, in multi-row statements (500 rows each in SQLite).
    pub async fn record(
        &self,
        operation: &str,
        outcomes: &[OutcomeRecord],
    ) -> Result<(), LedgerError> {
        on_store!(self, s => s.record(operation, outcomes).await)
    }

    /// Targets per state, with invalid input rows counted as `invalid`.
    pub async fn counts(&self, operation: &str) -> Result<BTreeMap<String, i64>, LedgerError> {
        on_store!(self, s => s.counts(operation).await)
    }

    /// The operations this ledger has items for.
    pub async fn operations(&self) -> Result<Vec<String>, LedgerError> {
        on_store!(self, s => s.operations().await)
    }

    /// Errors of targets that did not succeed, grouped by code, with one example each (the
    /// target with the lowest id); then invalid input rows grouped by reason (at most 20).
    pub async fn error_groups(&self, operation: &str) -> Result<Vec<ErrorGroup>, LedgerError> {
        on_store!(self, s => s.error_groups(operation).await)
    }

    /// A page of items in the given states, after `after_id`.
    pub async fn export_page(
        &self,
        operation: &str,
        states: &[&str],
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ExportRow>, LedgerError> {
        on_store!(self, s => s.export_page(operation, states, after_id, limit).await)
    }

    /// Invalid input rows: (cursor, file, line, raw, reason), in the order they were stored,
    /// after the cursor of the previous page's last row (0 for the first page).
    pub async fn rejects_page(
        &self,
        operation: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, i64, String, String)>, LedgerError> {
        on_store!(self, s => s.rejects_page(operation, after, limit).await)
    }

    /// Marks rows as exported; a rotated row's previous secret is dropped then, no longer needed.
    pub async fn mark_exported(&self, operation: &str, ids: &[i64]) -> Result<(), LedgerError> {
        on_store!(self, s => s.mark_exported(operation, ids).await)
    }

    pub async fn begin_run(&self, operation: &str, command: &str) -> Result<i64, LedgerError> {
        on_store!(self, s => s.begin_run(operation, command).await)
    }

    pub async fn finish_run(
        &self,
        run: i64,
        exit_code: i32,
        summary: &str,
    ) -> Result<(), LedgerError> {
        on_store!(self, s => s.finish_run(run, exit_code, summary).await)
    }

    /// The newest run: (operation, command, started, finished, exit code, summary).
    pub async fn last_run(
        &self,
    ) -> Result<
        Option<(
            String,
            String,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
        )>,
        LedgerError,
    > {
        on_store!(self, s => s.last_run().await)
    }

    pub async fn close(self) {
        match self.store {
            Store::Sqlite(s) => s.close().await,
        }
    }
}
