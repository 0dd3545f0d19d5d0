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
mod postgres;
mod private_file;
mod seal;
mod sqlite;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use error::LedgerError;
pub use location::{LedgerLocation, PostgresUrl};
pub use private_file::{Replacement, UnsafeFile, open_private};
pub use seal::{Opener, Sealer, is_sealed};
pub use state::ItemState;

use crate::budget::Budget;
use crate::input::Row;
use crate::secret::Secret;
use crate::target::Target;
use postgres::PostgresStore;
use sqlite::SqliteStore;

/// One run of a command on the ledger, as `status` shows the newest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub operation: String,
    /// The command line as typed.
    pub command: String,
    pub started_ms: i64,
    /// `None` while it runs, or if it was killed.
    pub finished_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub summary: Option<String>,
}

/// A worker of a shared ledger, as the fleet's `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub operation: String,
    /// The addresses it sends from (`[]`: the host's default).
    pub sources: Vec<String>,
    pub egress: Option<String>,
    /// `live`, `finished` (it ended and gave its lease up) or `dead` (its lease ran out).
    pub state: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    /// Seconds since its last heartbeat, on the database's clock.
    pub heartbeat_age_s: f64,
    /// Calls it sent per second, as of its last heartbeat (0 unless live).
    pub calls_per_second: f64,
    /// Its share of each pool it uses, calls/s (`api:<Action>`, `ip:<address>`, `host:<name>`);
    /// empty unless live.
    pub shares: BTreeMap<String, i64>,
}

/// A claimed target, ready to dispatch.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub id: i64,
    pub target: Target,
    pub attempts: i64,
    /// A call that may have taken effect was sent for it before (an earlier run's ambiguous call).
    pub maybe_applied: bool,
    /// Taken over from a worker whose lease ran out: it may lie anywhere in the ledger, so it
    /// does not move the claiming worker's cursor.
    pub taken_over: bool,
}

/// What the writer stores for one target.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub target: Target,
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

/// The operations that give or take a device's credential, and so move its current one.
pub const CREDENTIAL_OPERATIONS: [&str; 4] = ["register", "fetch", "rotate", "revoke"];

/// A device's current credential, as `export` writes it. `secret` may be sealed.
#[derive(Debug, Clone)]
pub struct CurrentRow {
    /// Where the next page starts.
    pub cursor: i64,
    pub target: String,
    pub state: String,
    /// The operation that gave it.
    pub operation: String,
    pub key_id: String,
    pub secret: Secret,
}

/// One outcome in a target's history (`show`). Never a secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEvent {
    pub operation: String,
    pub state: String,
    pub attempts: i64,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    /// The DeviceAccessKeyId the outcome obtained, if it obtained a credential.
    #[serde(rename = "device_access_key_id")]
    pub key_id: Option<String>,
    pub file: Option<String>,
    pub line: Option<i64>,
    pub at_ms: i64,
}

/// What a device holds now (`show`): its state, the operation that set it, its key id.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceNow {
    pub state: String,
    pub operation: String,
    pub device_access_key_id: Option<String>,
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
    /// Set when the ledger seals its secrets: every secret is sealed before it is stored.
    sealer: Option<Sealer>,
}

/// The backend holding an open ledger. Each variant brings its own SQL, migrations and way of
/// keeping workers apart (SQLite: a lock file keeps a second one out; PostgreSQL: leases, and
/// claims that each take a target for one worker).
/// What a fleet worker says of itself (the fleet's `status` shows it).
#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    pub operation: String,
    /// The addresses it sends from ('' for the host's default).
    pub sources: Vec<String>,
    /// The shared public address its calls leave from, if it said so.
    pub egress: Option<String>,
}

enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Runs `$call` with `$store` bound to the ledger's backend, whichever it is: a new backend
/// adds one arm here, not one per method.
macro_rules! on_store {
    ($ledger:expr, $store:ident => $call:expr) => {
        match &$ledger.store {
            Store::Sqlite($store) => $call,
            Store::Postgres($store) => $call,
        }
    };
}

/// The ledger's operations, each one line: the same signature on every backend, dispatched by
/// [`on_store!`]. (rustfmt leaves macro input alone, so each signature stays on its line.)
macro_rules! delegate {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, $($arg: $ty),*) -> Result<$ret, LedgerError> {
                on_store!(self, s => s.$name($($arg),*).await)
            }
        )*
    };
}

/// Whether this user may write the file and create its journal beside it (the effective user, as
/// the kernel will check it), asked without opening the file.
fn may_write(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    [path, dir].iter().all(|p| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).is_ok_and(|c| {
            // SAFETY: a valid NUL-terminated path; faccessat only reads it.
            unsafe {
                libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0
            }
        })
    })
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
                Store::Sqlite(SqliteStore::open_exclusive(path, true).await?)
            }
            LedgerLocation::Postgres(url) => {
                Store::Postgres(PostgresStore::open(url, true, false).await?)
            }
        };
        let mut ledger = Ledger {
            store,
            instance_id: String::new(),
            sealer: None,
        };
        ledger.sealer = ledger.stored_sealer().await?;
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

    /// Opens an existing ledger to export from it, alongside a running worker: it records what
    /// was exported (and migrates an older schema). A missing or empty ledger is an error.
    pub async fn open_existing(location: &LedgerLocation) -> Result<Ledger, LedgerError> {
        Self::open_shared(location, false).await
    }

    /// Opens an existing ledger for `export`: to record what was exported when this user may
    /// write it, else read-only (the export is written all the same; nothing is recorded).
    pub async fn open_for_export(location: &LedgerLocation) -> Result<Ledger, LedgerError> {
        let writable = match location {
            LedgerLocation::SqliteFile(path) => may_write(path),
            // The database's own permissions decide; a refused write is its error.
            LedgerLocation::Postgres(_) => true,
        };
        Self::open_shared(location, !writable).await
    }

    /// Opens an existing ledger only to read it (`status`, `show`), alongside a running worker:
    /// nothing is written, so a read-only ledger can be inspected (only a ledger of an older
    /// schema is migrated first, which writes).
    pub async fn open_read_only(location: &LedgerLocation) -> Result<Ledger, LedgerError> {
        Self::open_shared(location, true).await
    }

    async fn open_shared(
        location: &LedgerLocation,
        read_only: bool,
    ) -> Result<Ledger, LedgerError> {
        let store = match location {
            LedgerLocation::SqliteFile(path) => {
                Store::Sqlite(SqliteStore::open_shared(path, read_only).await?)
            }
            LedgerLocation::Postgres(url) => {
                Store::Postgres(PostgresStore::open(url, false, read_only).await?)
            }
        };
        let mut ledger = Ledger {
            store,
            instance_id: String::new(),
            sealer: None,
        };
        ledger.sealer = ledger.stored_sealer().await?;
        ledger.instance_id = on_store!(ledger, s => s.instance_id().await)?.unwrap_or_default();
        Ok(ledger)
    }

    /// Opens an existing ledger exclusively for maintenance (`ledger seal`, `ledger purge`):
    /// no run may write while its secrets are rewritten.
    pub async fn open_maintenance(location: &LedgerLocation) -> Result<Ledger, LedgerError> {
        let store = match location {
            LedgerLocation::SqliteFile(path) => {
                Store::Sqlite(SqliteStore::open_exclusive(path, false).await?)
            }
            LedgerLocation::Postgres(url) => {
                // No run may write while secrets are rewritten: none may hold a lease.
                let store = PostgresStore::open(url, false, false).await?;
                if store.held_by_a_run() {
                    let path = store.path().to_owned();
                    store.close().await;
                    return Err(LedgerError::InUse { path });
                }
                Store::Postgres(store)
            }
        };
        let mut ledger = Ledger {
            store,
            instance_id: String::new(),
            sealer: None,
        };
        ledger.sealer = ledger.stored_sealer().await?;
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

    fn sealing_error(&self, reason: impl Into<String>) -> LedgerError {
        LedgerError::Sealing {
            path: self.path().to_owned(),
            reason: reason.into(),
        }
    }

    async fn stored_sealer(&self) -> Result<Option<Sealer>, LedgerError> {
        match on_store!(self, s => s.meta("recipients").await)? {
            None => Ok(None),
            Some(meta) => Sealer::from_meta(&meta)
                .map(Some)
                .map_err(|e| self.sealing_error(format!("its recipients are damaged: {e}"))),
        }
    }

    /// Whether secrets are sealed in this ledger.
    pub fn is_sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// A run's `--encrypt-to`: a new ledger remembers the recipients and seals from now on; a
    /// sealed one must be given the same ones (or none: it keeps its own); a plain ledger that
    /// already holds secrets is sealed with `ledger seal` first, so no secret stays plain.
    pub async fn require_recipients(&mut self, given: Option<Sealer>) -> Result<(), LedgerError> {
        let Some(given) = given else { return Ok(()) };
        match &self.sealer {
            Some(own) if own.to_meta() == given.to_meta() => Ok(()),
            Some(own) => Err(self.sealing_error(format!(
                "it seals to {}, not to the recipients given; use the ledger's own (or omit --encrypt-to)",
                own.to_meta()
            ))),
            None if on_store!(self, s => s.holds_secrets().await)? => Err(self.sealing_error(format!(
                "it already holds plain secrets; seal them first: mqtt-provision ledger seal --ledger {} --encrypt-to RECIPIENT",
                self.path()
            ))),
            None => {
                on_store!(self, s => s.set_meta("recipients", &given.to_meta()).await)?;
                self.sealer = Some(given);
                Ok(())
            }
        }
    }

    /// Where a run's credentials come from: the built-in simulator (`--simulate`) or a service.
    /// A ledger remembers the first and refuses the other, so a rehearsal's credentials are
    /// never handed out as real ones, and a rehearsal never writes into a real registry.
    pub async fn require_origin(&self, simulated: bool) -> Result<(), LedgerError> {
        let wanted = if simulated { "simulator" } else { "service" };
        match on_store!(self, s => s.meta("origin").await)? {
            None => on_store!(self, s => s.set_meta("origin", wanted).await),
            Some(found) if found == wanted => Ok(()),
            Some(found) => Err(LedgerError::Origin {
                path: self.path().to_owned(),
                simulated: found == "simulator",
            }),
        }
    }

    /// Stores outcomes in one transaction (500 rows per statement in SQLite): the items, each
    /// finished outcome into the history, each device's credential into `devices`. Secrets are
    /// sealed first when the ledger seals.
    pub async fn record(
        &self,
        operation: &str,
        outcomes: &[OutcomeRecord],
    ) -> Result<(), LedgerError> {
        let digests: Vec<Option<String>> = outcomes
            .iter()
            .map(|o| o.credential.as_ref().map(|c| seal::digest(&c.1)))
            .collect();
        let Some(sealer) = &self.sealer else {
            return on_store!(self, s => s.record(operation, outcomes, &digests).await);
        };
        let seal = |secret: &Secret| sealer.seal(secret).map_err(|e| self.sealing_error(e));
        let mut sealed = outcomes.to_vec();
        for o in &mut sealed {
            if let Some((_, secret)) = &mut o.credential {
                *secret = seal(secret)?;
            }
            if let Some(previous) = &mut o.previous_secret {
                *previous = seal(previous)?;
            }
        }
        on_store!(self, s => s.record(operation, &sealed, &digests).await)
    }

    /// `ledger seal`: seals every plain secret to `sealer` and remembers it, atomically.
    pub async fn seal_in_place(&mut self, sealer: Sealer) -> Result<u64, LedgerError> {
        if let Some(own) = &self.sealer
            && own.to_meta() != sealer.to_meta()
        {
            return Err(self.sealing_error(format!(
                "it is sealed to {} already; its recipients do not change",
                own.to_meta()
            )));
        }
        let sealed = on_store!(self, s => s.seal_all(&sealer).await)?;
        self.sealer = Some(sealer);
        Ok(sealed)
    }

    /// A device's current state, the operation that set it and its key id.
    pub async fn device(&self, target: &str) -> Result<Option<DeviceNow>, LedgerError> {
        let found = on_store!(self, s => s.device(target).await)?;
        Ok(
            found.map(|(state, operation, device_access_key_id)| DeviceNow {
                state,
                operation,
                device_access_key_id,
            }),
        )
    }

    delegate! {
        /// Adds rows idempotently: a target already present (from this file, another file or an
        /// earlier run) is left as it is; an invalid row is kept with its file, line and reason.
        fn ingest(operation: &str, rows: &[Row]) -> IngestCounts;
        /// Whether a file with this content was already fully ingested with this input spec.
        fn was_ingested(operation: &str, sha256: &str, spec: &str) -> bool;
        /// Records that a file was fully ingested.
        fn mark_ingested(operation: &str, sha256: &str, spec: &str, path: &str, rows: u64) -> ();
        /// `--again`: these targets, if an earlier run finished them, go back to `pending`.
        fn start_again(operation: &str, targets: &[String]) -> u64;
        /// When the newest finished target of the operation was finished.
        fn last_done(operation: &str) -> Option<i64>;
        /// Puts `failed` targets back to `pending`, so rerunning a command retries them.
        fn retry_failed(operation: &str) -> u64;
        /// Claims up to `limit` pending targets after `after_id`, in id order. When the
        /// operation's call may change something (`marks_effect`), the claim durably records
        /// `maybe_applied` before any call is sent, so a kill -9 at any moment leaves a trace that
        /// makes the next run reconcile instead of calling again.
        fn claim(operation: &str, after_id: i64, limit: i64, marks_effect: bool) -> Vec<WorkItem>;
        /// Pending targets of the operation that other live workers hold (a shared ledger):
        /// once none claim is left, a worker waits for these, and takes over those whose
        /// worker's lease runs out. Always 0 on SQLite.
        fn held_by_others(operation: &str) -> i64;
        /// Targets per state, with invalid input rows counted as `invalid` (and, on a shared
        /// ledger, pending targets another live worker holds as `in_progress`).
        fn counts(operation: &str) -> BTreeMap<String, i64>;
        /// The operations this ledger has items for.
        fn operations() -> Vec<String>;
        /// Errors of targets that did not succeed, grouped by code, with one example each (the
        /// target with the lowest id); then invalid input rows grouped by reason (at most 20).
        fn error_groups(operation: &str) -> Vec<ErrorGroup>;
        /// A page of items in the given states, after `after_id`.
        fn export_page(operation: &str, states: &[&str], after_id: i64, limit: i64) -> Vec<ExportRow>;
        /// Invalid input rows: (cursor, file, line, raw, reason), in the order they were stored,
        /// after the cursor of the previous page's last row (0 for the first page).
        fn rejects_page(operation: &str, after: i64, limit: i64) -> Vec<(i64, String, i64, String, String)>;
        /// Marks rows as exported; a rotated row's previous secret is dropped then.
        fn mark_exported(operation: &str, ids: &[i64]) -> ();
        /// A page of devices that hold a credential now, in the given states, after `after`.
        fn current_page(states: &[&str], after: i64, limit: i64) -> Vec<CurrentRow>;
        /// The current credentials at these cursors were exported: drop what they replaced.
        fn mark_current_exported(cursors: &[i64]) -> ();
        /// A target's outcomes in the order they were recorded.
        fn history(target: &str) -> Vec<HistoryEvent>;
        /// `ledger purge`: clears every secret that is not a device's current credential.
        fn purge() -> u64;
        /// Records the start of a run; returns its id.
        fn begin_run(operation: &str, command: &str) -> i64;
        /// Records how a run ended.
        fn finish_run(run: i64, exit_code: i32, summary: &str) -> ();
        /// The newest run.
        fn last_run() -> Option<RunRecord>;
        /// Pending targets of the operation by the file they came from.
        fn pending_by_file(operation: &str) -> Vec<(String, i64)>;
    }

    /// On a shared ledger, the moment this worker must stop sending unless its lease is renewed
    /// before (its own monotonic clock); `None` when no lease applies (SQLite).
    pub fn send_deadline(&self) -> Option<std::time::Instant> {
        match &self.store {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => s.send_deadline(),
        }
    }

    /// On a shared ledger, this worker's limits become its shares of the fleet's pools: `budget`
    /// states them on every heartbeat and receives the grants, starting now (one heartbeat before
    /// this returns). Returns whether it applies (`false` on SQLite: one worker holds the limits).
    pub async fn share_budget(
        &self,
        budget: Arc<Budget>,
        worker: &WorkerInfo,
    ) -> Result<bool, LedgerError> {
        match &self.store {
            Store::Sqlite(_) => Ok(false),
            Store::Postgres(s) => s.share_budget(budget, worker).await.map(|()| true),
        }
    }

    /// The live workers of a shared ledger and those that ended or died in the last ten
    /// minutes (none on SQLite: one run holds it).
    pub async fn workers(&self) -> Result<Vec<WorkerView>, LedgerError> {
        match &self.store {
            Store::Sqlite(_) => Ok(Vec::new()),
            Store::Postgres(s) => s.workers().await,
        }
    }

    /// Whether a run (this process's or another's) holds the ledger now.
    pub fn held_by_a_run(&self) -> bool {
        on_store!(self, s => s.held_by_a_run())
    }

    /// Whether several workers may share it (PostgreSQL): a claim then takes only targets no
    /// live worker holds, so one from the start of the ledger never takes this worker's own
    /// targets in flight (on SQLite those are `pending` too, and only the cursor keeps them).
    pub fn is_shared(&self) -> bool {
        matches!(self.store, Store::Postgres(_))
    }

    /// Whether it was opened read-only (nothing it is asked to record is recorded).
    pub fn is_read_only(&self) -> bool {
        on_store!(self, s => s.is_read_only())
    }

    /// Whether writing to `path` would write over this ledger or one of its files (compared by
    /// device and inode, not by name).
    pub fn owns_file(&self, path: &std::path::Path) -> bool {
        on_store!(self, s => s.owns_file(path))
    }

    /// Closes the ledger; a ledger that was written is checkpointed first, so its file alone
    /// holds everything.
    pub async fn close(self) {
        match self.store {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}
