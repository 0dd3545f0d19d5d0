//! The PostgreSQL backend of the ledger: one database shared by several workers, its migrations
//! (`migrations/postgres/`, embedded; the migrator's advisory lock makes simultaneous starts
//! safe) and every SQL statement run against it.
//!
//! It owns what sharing needs: each process is a worker with a fresh id and a lease on the
//! database's clock, renewed by a heartbeat; a claim is one statement that takes pending targets
//! no live worker holds (`FOR UPDATE SKIP LOCKED`), records the owner and bumps the target's
//! epoch; an outcome is stored only under the epoch it was claimed with, so a worker whose
//! targets were taken over cannot overwrite what the new owner stores. No transaction is ever
//! open across a call to the service: claims and outcomes are each one short transaction.
//!
//! A worker takes over a dead worker's targets in its claim (they are claimable once their
//! owner's lease ran out, and carry `maybe_applied`, so they are reconciled); `SKIP LOCKED`
//! gives each to one worker, so no reaper or advisory lock is needed for that. The account's rate
//! budget is shared through the heartbeat (`fleet_heartbeat`, [`crate::budget`]); a database
//! that goes away under a run is ridden out by the writer (`src/pipeline/writer.rs`).
//!
//! It must never let a `sqlx` type out, nor show the URL's password: messages name the database
//! by [`PostgresUrl::shown`]. It knows nothing of HTTP, CSV parsing or exit codes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row as _, Transaction};
use tokio::task::JoinHandle;

use super::error::with_causes;
use super::location::PostgresUrl;
use super::seal::{Sealer, digest, is_sealed};
use super::{
    CREDENTIAL_OPERATIONS, CurrentRow, ErrorGroup, ExportRow, HistoryEvent, IngestCounts,
    ItemState, LedgerError, OutcomeRecord, RunRecord, Target, WorkItem, WorkerInfo, WorkerView,
    now_ms,
};
use crate::budget::Budget;
use crate::input::Row;
use crate::secret::Secret;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows per multi-row statement: 1,000 rows × ≤ 11 binds stays below PostgreSQL's 65,535.
const BATCH: usize = 1000;

/// How often a worker renews its lease, and for how long a renewal holds (the database's
/// clock). A worker whose lease ran out holds nothing: its targets may be claimed again. Twice
/// a second, so a share given up reaches the worker that asked for it within about 2 s (the
/// giver's next beat, then [`SHARE_HOLD`]).
const HEARTBEAT: Duration = Duration::from_millis(500);
const LEASE_SECONDS: i64 = 5;
/// A lowered share stays counted as the worker's for this long: it may have sent at the old
/// rate in the second before it heard, and its heartbeat may take up to [`PAUSE_AFTER`].
const SHARE_HOLD: Duration = Duration::from_millis(1300);
/// A heartbeat slower than this suspends the worker's shares until its answer comes.
const PAUSE_AFTER: Duration = Duration::from_millis(300);
/// The next heartbeat's delay while a share is below the worker's fair target.
const SHORT_BEAT: Duration = Duration::from_millis(250);
/// A worker sends nothing later than this after it sent its last renewal that succeeded (its
/// own monotonic clock): the database granted the lease no earlier than it was sent, so the
/// worker stops a second before the lease can have run out, whatever the clocks say (River's
/// leader lease keeps the same margin).
const SEND_FOR: Duration = Duration::from_secs(LEASE_SECONDS as u64 - 1);

/// How long a statement may wait for a connection, a new one included: a server that refuses
/// connections (stopped, restarting) is reported after this, and the writer's patience starts.
const ACQUIRE_WAIT: Duration = Duration::from_secs(3);

/// How long a claim, a batch of outcomes or a renewal may wait for the server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// How long ending a worker may wait for the server.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The states that say what a device holds now: a credential, or (revoked, not_found) none.
const DEVICE_STATES: [&str; 6] = [
    "registered",
    "existing",
    "fetched",
    "rotated",
    "revoked",
    "not_found",
];

/// The same credential stored again (a fetch of what register obtained) is not a replacement.
const SAME_SECRET: &str = "(devices.secret_digest IS NOT NULL AND devices.secret_digest = excluded.secret_digest) \
     OR (devices.secret_digest IS NULL AND devices.device_access_key_secret = excluded.device_access_key_secret)";

/// What went wrong, in the words an operator acts on, then PostgreSQL's own.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => {
            let hint = match db.code().as_deref() {
                Some("53100") => "the database server's disk is full",
                Some("28P01") | Some("28000") => "the database refused the login",
                Some("3D000") => "the database does not exist; create it first",
                Some("42501") => "the database user may not do this",
                _ => return format!("PostgreSQL: {}", db.message()),
            };
            format!("{hint} (PostgreSQL: {})", db.message())
        }
        sqlx::Error::PoolTimedOut => "cannot reach the database server (timed out)".into(),
        other => other.to_string(),
    }
}

/// Whether `error` says the server cannot be reached or dropped the connection, which may pass:
/// the network, a connection that broke, SQLSTATE class 08 (connection exception), a server
/// shutting down or starting (57P01–57P03), or one out of connection slots (53300).
fn unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// A PostgreSQL ledger, open.
pub(super) struct PostgresStore {
    pool: PgPool,
    /// The database as messages name it (no password).
    shown: String,
    /// This process's worker id, when it was opened for a run.
    worker: Option<String>,
    heartbeat: Option<JoinHandle<()>>,
    /// Until when this worker may send (see [`SEND_FOR`]), moved on by each renewal.
    send_until: Arc<Mutex<Instant>>,
    /// This worker's shares of the fleet's limits, once the run has said what it uses: each
    /// heartbeat states them and receives the grants.
    budget: Arc<Mutex<Option<Arc<Budget>>>>,
    /// Whether a worker held a live lease when this store was opened (`status` shows it).
    held: bool,
    /// Opened only to read (`status`, `show`).
    read_only: bool,
    /// The epoch each target this worker holds was claimed with: its outcome is stored only
    /// while the target still carries it.
    epochs: Mutex<HashMap<String, i64>>,
    /// Batches of outcomes this worker has stored, as `workers.written` counts them: a batch
    /// whose commit was cut off is retried, and the count says whether it had landed.
    written: AtomicI64,
}

/// A fresh worker id: 128 random bits.
fn new_worker_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl PostgresStore {
    /// Connects and migrates. `worker`: open for a run (register a worker with a lease and keep
    /// it renewed); otherwise alongside the workers, `read_only` not even migrating, and a
    /// database that holds no ledger is refused.
    pub(super) async fn open(
        url: &PostgresUrl,
        worker: bool,
        read_only: bool,
    ) -> Result<PostgresStore, LedgerError> {
        let shown = url.shown();
        let fail = |e: sqlx::Error| LedgerError::Database {
            path: shown.clone(),
            message: describe(&e),
        };
        // PgConnectOptions reads what the URL leaves out from the PG* variables (libpq's
        // conventions), and `sslmode` from the URL or PGSSLMODE.
        let options =
            PgConnectOptions::from_str(url.expose()).map_err(|e| LedgerError::Unsupported {
                location: shown.clone(),
                reason: format!(
                    "not a PostgreSQL URL sqlx can use: {}",
                    strip_url(&e.to_string(), url)
                ),
            })?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_WAIT)
            .connect_with(
                options
                    .application_name("mqtt-provision")
                    // A claim's "possibly sent" mark must outlive a crash of the server once it
                    // is acknowledged: a server set to `synchronous_commit = off` loses the last
                    // commits, and a lost mark sends a Register again (a second credential).
                    // A worker that vanishes (a cut network) is noticed by the server within
                    // about 25 s, which then ends its session and releases its row locks.
                    .options([
                        ("synchronous_commit", "on"),
                        ("tcp_keepalives_idle", "10"),
                        ("tcp_keepalives_interval", "5"),
                        ("tcp_keepalives_count", "3"),
                        ("idle_in_transaction_session_timeout", "30s"),
                    ]),
            )
            .await
            .map_err(|e| LedgerError::Database {
                path: shown.clone(),
                message: strip_url(&describe(&e), url),
            })?;
        let mut store = PostgresStore {
            pool,
            shown: shown.clone(),
            worker: None,
            heartbeat: None,
            send_until: Arc::new(Mutex::new(Instant::now())),
            budget: Arc::new(Mutex::new(None)),
            held: worker,
            read_only,
            epochs: Mutex::new(HashMap::new()),
            written: AtomicI64::new(0),
        };
        if !worker {
            let has_ledger: bool =
                sqlx::query_scalar("SELECT to_regclass('ledger_meta') IS NOT NULL")
                    .fetch_one(&store.pool)
                    .await
                    .map_err(fail)?;
            if !has_ledger {
                store.pool.close().await;
                return Err(LedgerError::NotALedger { path: shown });
            }
            if read_only && store.schema_is_current().await? {
                store.held = store.any_live_worker().await?;
                return Ok(store);
            }
        }
        MIGRATOR
            .run(&store.pool)
            .await
            .map_err(|e| migrate_error(&shown, &e))?;
        if worker {
            let id = new_worker_id();
            let host = crate::host_name();
            let sent = Instant::now();
            sqlx::query(
                "INSERT INTO workers (id, host, pid, lease_until) VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            )
            .bind(&id)
            .bind(host)
            .bind(i64::from(std::process::id()))
            .bind(LEASE_SECONDS as f64)
            .execute(&store.pool)
            .await
            .map_err(fail)?;
            *store.send_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + SEND_FOR;
            store.heartbeat = Some(spawn_heartbeat(
                store.pool.clone(),
                id.clone(),
                shown,
                store.send_until.clone(),
                store.budget.clone(),
            ));
            store.worker = Some(id);
        } else {
            store.held = store.any_live_worker().await?;
        }
        Ok(store)
    }

    async fn schema_is_current(&self) -> Result<bool, LedgerError> {
        let newest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .unwrap_or(None);
        Ok(applied == Some(newest))
    }

    /// `work`, or `Unreachable` once it has had no answer for [`ANSWER_WAIT`]: a network that
    /// drops packets rather than refusing them leaves a statement waiting for the kernel's TCP
    /// timeout (about 15 minutes).
    async fn answered<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        tokio::time::timeout(ANSWER_WAIT, work)
            .await
            .unwrap_or_else(|_| {
                Err(LedgerError::Unreachable {
                    path: self.shown.clone(),
                    message: format!(
                        "no answer from the database server within {} s",
                        ANSWER_WAIT.as_secs()
                    ),
                })
            })
    }

    fn db(&self, error: sqlx::Error) -> LedgerError {
        let (path, message) = (self.shown.clone(), describe(&error));
        if unreachable(&error) {
            LedgerError::Unreachable { path, message }
        } else {
            LedgerError::Database { path, message }
        }
    }

    pub(super) fn path(&self) -> &str {
        &self.shown
    }

    /// The worker id, or an error for a store not opened for a run (it never claims).
    fn worker_id(&self) -> Result<&str, LedgerError> {
        self.worker.as_deref().ok_or_else(|| LedgerError::Database {
            path: self.shown.clone(),
            message: "this ledger was not opened for a run".into(),
        })
    }

    pub(super) async fn instance_id(&self) -> Result<Option<String>, LedgerError> {
        self.meta("instance_id").await
    }

    /// Sets the instance, unless a worker that started at the same moment set it first: then
    /// the ledger belongs to whichever was first, and a different one is refused.
    pub(super) async fn set_instance_id(&self, instance_id: &str) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO ledger_meta (key, value) VALUES ('instance_id', $1) ON CONFLICT (key) DO NOTHING")
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        match self.instance_id().await? {
            Some(found) if found != instance_id => Err(LedgerError::WrongInstance {
                path: self.shown.clone(),
                found,
                wanted: instance_id.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    pub(super) async fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }

    pub(super) async fn set_meta(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO ledger_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn holds_secrets(&self) -> Result<bool, LedgerError> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM items WHERE device_access_key_secret IS NOT NULL OR previous_secret IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(found.is_some())
    }

    /// Adds rows idempotently, also against workers ingesting the same file at the same moment:
    /// `ON CONFLICT DO NOTHING` waits for the other's insert of the same target, then skips it
    /// (every worker inserts in the file's order, so two never wait on each other).
    pub(super) async fn ingest(
        &self,
        operation: &str,
        rows: &[Row],
    ) -> Result<IngestCounts, LedgerError> {
        let mut counts = IngestCounts {
            rows: rows.len() as u64,
            ..Default::default()
        };
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let valid: Vec<(String, &str, u64)> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Valid { target, file, line } => Some((target.key(), &**file, *line)),
                Row::Invalid { .. } => None,
            })
            .collect();
        for chunk in valid.chunks(BATCH) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO items (operation, target, state, source_file, source_line, created_at, updated_at) ",
            );
            q.push_values(chunk, |mut b, (target, file, line)| {
                b.push_bind(operation)
                    .push_bind(target.as_str())
                    .push_bind("pending")
                    .push_bind(*file)
                    .push_bind(*line as i64)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (operation, target) DO NOTHING");
            let done = q.build().execute(&mut *tx).await.map_err(|e| self.db(e))?;
            counts.new_targets += done.rows_affected();
            counts.duplicates += chunk.len() as u64 - done.rows_affected();
            let mut q = QueryBuilder::<Postgres>::new("DELETE FROM rejects WHERE operation = ");
            q.push_bind(operation);
            q.push(" AND (source_file, source_line) IN (VALUES ");
            let mut sep = q.separated(", ");
            for (_, file, line) in chunk {
                sep.push("(");
                sep.push_bind_unseparated(*file);
                sep.push_unseparated(", ");
                sep.push_bind_unseparated(*line as i64);
                sep.push_unseparated(")");
            }
            q.push(")");
            q.build().execute(&mut *tx).await.map_err(|e| self.db(e))?;
        }
        let invalid: Vec<(&str, u64, &str, &str)> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Invalid {
                    raw,
                    file,
                    line,
                    reason,
                } => Some((&**file, *line, raw.as_str(), reason.as_str())),
                Row::Valid { .. } => None,
            })
            .collect();
        counts.invalid = invalid.len() as u64;
        for chunk in invalid.chunks(BATCH) {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO rejects (operation, source_file, source_line, raw, reason, created_at) ",
            );
            q.push_values(chunk, |mut b, (file, line, raw, reason)| {
                b.push_bind(operation)
                    .push_bind(*file)
                    .push_bind(*line as i64)
                    .push_bind(*raw)
                    .push_bind(*reason)
                    .push_bind(now);
            });
            q.push(" ON CONFLICT (operation, source_file, source_line) DO UPDATE SET raw = excluded.raw, reason = excluded.reason");
            q.build().execute(&mut *tx).await.map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        // A table that just grew from nothing has no statistics until autovacuum's next pass
        // (a minute or more): meanwhile the planner takes `items` for a few hundred rows and
        // answers the writer's history insert (`target IN (…)`, 500 targets) by scanning every
        // target of the operation, 400 ms per batch over 50,000 (pg_stat_statements, issue 12's
        // benchmark). Fresh statistics give it the (operation, target) index: 3 ms.
        if counts.new_targets > 0 {
            sqlx::query("ANALYZE items")
                .execute(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
        }
        Ok(counts)
    }

    pub(super) async fn was_ingested(
        &self,
        operation: &str,
        sha256: &str,
        spec: &str,
    ) -> Result<bool, LedgerError> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM inputs WHERE operation = $1 AND sha256 = $2 AND spec = $3",
        )
        .bind(operation)
        .bind(sha256)
        .bind(spec)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(found.is_some())
    }

    pub(super) async fn mark_ingested(
        &self,
        operation: &str,
        sha256: &str,
        spec: &str,
        path: &str,
        rows: u64,
    ) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO inputs (operation, sha256, spec, path, rows, ingested_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (operation, sha256, spec) DO UPDATE SET path = excluded.path, ingested_at = excluded.ingested_at")
            .bind(operation)
            .bind(sha256)
            .bind(spec)
            .bind(path)
            .bind(rows as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn retry_failed(&self, operation: &str) -> Result<u64, LedgerError> {
        let done = sqlx::query("UPDATE items SET state = 'pending', updated_at = $1 WHERE operation = $2 AND state = 'failed'")
            .bind(now_ms())
            .bind(operation)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(done.rows_affected())
    }

    /// Who may take a target is tested on the target's own columns (`owner IS NULL`, or an
    /// owner in the list of dead workers computed once per statement): when a row another worker
    /// claimed an instant earlier is locked, PostgreSQL re-checks only the row's own conditions
    /// against its new version, not a join with `workers` (a `NOT EXISTS` over `workers` let two
    /// workers claim the same targets here, 7 of 1,500).
    ///
    /// One statement: the pending targets of workers whose lease ran out (they died or lost the
    /// database), wherever they are (`taken`, found through `items_held`), then pending targets
    /// after `after_id` that no worker holds (never claimed, or handed back; `fresh`, an index
    /// range from the cursor), skipping rows another worker is claiming this
    /// instant, become this worker's with the epoch bumped. Two branches rather than one `OR`:
    /// with the `OR` the cursor was only a filter. The update repeats the picked ids as an
    /// array (read from the materialized CTE, so the locked rows are not picked again): without
    /// it the planner, which cannot know how many rows `picked` holds, joined it to a scan of the
    /// whole table (72 ms per claim at 200,000 targets, 3 ms with it). With
    /// `marks_effect`, `maybe_applied` is set in the same statement, before any call is sent; the
    /// item carries the value from before the claim (an earlier holder's possibly sent call), so
    /// a target taken from a dead worker is reconciled, not sent blindly again. A worker whose
    /// own lease ran out claims nothing.
    pub(super) async fn claim(
        &self,
        operation: &str,
        after_id: i64,
        limit: i64,
        marks_effect: bool,
    ) -> Result<Vec<WorkItem>, LedgerError> {
        self.answered(self.claim_now(operation, after_id, limit, marks_effect))
            .await
    }

    async fn claim_now(
        &self,
        operation: &str,
        after_id: i64,
        limit: i64,
        marks_effect: bool,
    ) -> Result<Vec<WorkItem>, LedgerError> {
        let worker = self.worker_id()?;
        let rows = sqlx::query(
            "WITH me AS (SELECT 1 FROM workers WHERE id = $1 AND state = 'live' AND lease_until > now()), \
             taken AS MATERIALIZED ( \
               SELECT i.id, i.maybe_applied, true AS taken_over FROM items i \
               WHERE i.operation = $2 AND i.state = 'pending' AND EXISTS (SELECT 1 FROM me) \
                 AND i.owner = ANY(ARRAY( \
                   SELECT w.id FROM workers w WHERE (w.state <> 'live' OR w.lease_until <= now()) \
                   AND EXISTS (SELECT 1 FROM items x WHERE x.owner = w.id AND x.state = 'pending'))) \
               ORDER BY i.id LIMIT $4 FOR UPDATE OF i SKIP LOCKED), \
             fresh AS MATERIALIZED ( \
               SELECT i.id, i.maybe_applied, false AS taken_over FROM items i \
               WHERE i.operation = $2 AND i.state = 'pending' AND i.id > $3 AND i.owner IS NULL \
                 AND EXISTS (SELECT 1 FROM me) \
               ORDER BY i.id LIMIT greatest($4 - (SELECT count(*) FROM taken), 0) \
               FOR UPDATE OF i SKIP LOCKED), \
             picked AS (SELECT * FROM taken UNION ALL SELECT * FROM fresh) \
             UPDATE items i SET owner = $1, epoch = i.epoch + 1, \
               maybe_applied = CASE WHEN $5 THEN 1 ELSE i.maybe_applied END, updated_at = $6 \
             FROM picked p WHERE i.id = p.id AND i.id = ANY(ARRAY(SELECT id FROM picked)) \
             RETURNING i.id, i.target, i.attempts, p.maybe_applied, i.epoch, p.taken_over",
        )
        .bind(worker)
        .bind(operation)
        .bind(after_id)
        .bind(limit)
        .bind(marks_effect)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        let mut items: Vec<(WorkItem, i64)> = rows
            .iter()
            .map(|r| {
                (
                    WorkItem {
                        id: r.get(0),
                        target: Target::from_key(r.get(1)),
                        attempts: r.get(2),
                        maybe_applied: r.get::<i64, _>(3) != 0,
                        taken_over: r.get(5),
                    },
                    r.get(4),
                )
            })
            .collect();
        // RETURNING gives no order: the feeder's cursor is the highest id claimed from it.
        items.sort_by_key(|(item, _)| item.id);
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        for (item, epoch) in &items {
            epochs.insert(item.target.key(), *epoch);
        }
        Ok(items.into_iter().map(|(item, _)| item).collect())
    }

    /// Stores outcomes in one transaction, each only if its target still carries the epoch this
    /// worker claimed it with (another worker took over a target whose lease ran out: its
    /// outcome is the one kept). A target handed back as `pending` is released at once.
    pub(super) async fn record(
        &self,
        operation: &str,
        outcomes: &[OutcomeRecord],
        digests: &[Option<String>],
    ) -> Result<(), LedgerError> {
        // Cut off without an answer, the batch may have landed: the writer sends it again and
        // the count of batches tells.
        self.answered(self.record_now(operation, outcomes, digests))
            .await
    }

    async fn record_now(
        &self,
        operation: &str,
        outcomes: &[OutcomeRecord],
        digests: &[Option<String>],
    ) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let epochs: Vec<Option<i64>> = {
            let map = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            outcomes
                .iter()
                .map(|o| map.get(&o.target.key()).copied())
                .collect()
        };
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let mut fenced = 0usize;
        for ((chunk, digests), epochs) in outcomes
            .chunks(BATCH)
            .zip(digests.chunks(BATCH))
            .zip(epochs.chunks(BATCH))
        {
            let rows: Vec<(&OutcomeRecord, Option<i64>)> =
                chunk.iter().zip(epochs.iter().copied()).collect();
            let mut q = QueryBuilder::<Postgres>::new(
                "WITH v(target, state, attempts_added, maybe_applied, code, message, request_id, key_id, key_secret, previous_secret, epoch) AS (",
            );
            q.push_values(&rows, |mut b, (o, epoch)| {
                b.push_bind(o.target.key())
                    .push_bind(o.state.as_str())
                    .push_bind(o.attempts_added)
                    .push_bind(i64::from(o.maybe_applied))
                    .push_bind(o.code.as_deref())
                    .push_bind(o.message.as_deref())
                    .push_bind(o.request_id.as_deref())
                    .push_bind(o.credential.as_ref().map(|c| c.0.as_str()))
                    .push_bind(o.credential.as_ref().map(|c| c.1.expose()))
                    .push_bind(o.previous_secret.as_ref().map(Secret::expose))
                    .push_bind(*epoch);
            });
            q.push(
                ") UPDATE items SET state = v.state, attempts = items.attempts + v.attempts_added, \
                 maybe_applied = v.maybe_applied, \
                 last_code = CASE WHEN v.code IS NULL AND v.state = 'pending' THEN items.last_code ELSE v.code END, \
                 last_message = CASE WHEN v.code IS NULL AND v.state = 'pending' THEN items.last_message ELSE v.message END, \
                 last_request_id = COALESCE(v.request_id, items.last_request_id), \
                 device_access_key_id = COALESCE(v.key_id, items.device_access_key_id), \
                 device_access_key_secret = COALESCE(v.key_secret, items.device_access_key_secret), \
                 previous_secret = COALESCE(v.previous_secret, items.previous_secret), \
                 owner = CASE WHEN v.state = 'pending' THEN NULL ELSE items.owner END, updated_at = ",
            );
            q.push_bind(now);
            q.push(" FROM v WHERE items.operation = ");
            q.push_bind(operation);
            q.push(" AND items.target = v.target AND items.epoch = v.epoch RETURNING items.target");
            let stored: HashSet<String> = q
                .build()
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.db(e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let kept: Vec<(OutcomeRecord, Option<String>)> = chunk
                .iter()
                .zip(digests)
                .filter(|(o, _)| stored.contains(&o.target.key()))
                .map(|(o, d)| (o.clone(), d.clone()))
                .collect();
            fenced += chunk.len() - kept.len();
            let (kept, kept_digests): (Vec<_>, Vec<_>) = kept.into_iter().unzip();
            self.record_registry(&mut tx, operation, &kept, &kept_digests, now)
                .await?;
        }
        // The batch's number, counted in the same transaction: when a commit is cut off (the
        // server gone before it answered) the writer sends the same batch again, and a count
        // already past it means the first commit landed; storing it twice would add its
        // attempts and its history again.
        if let Some(worker) = &self.worker {
            let expected = self.written.load(Ordering::Relaxed);
            let counted = sqlx::query(
                "UPDATE workers SET written = written + 1 WHERE id = $1 AND written = $2",
            )
            .bind(worker)
            .bind(expected)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
            if counted.rows_affected() == 0 {
                drop(tx);
                let landed: Option<i64> =
                    sqlx::query_scalar("SELECT written FROM workers WHERE id = $1")
                        .bind(worker)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| self.db(e))?;
                if landed != Some(expected + 1) {
                    return Err(LedgerError::Database {
                        path: self.shown.clone(),
                        message: format!(
                            "this worker's count of stored batches is {landed:?} in the database, {expected} here: another process writes as this worker"
                        ),
                    });
                }
                tracing::info!(
                    "ledger {}: a batch of {} outcome(s) whose commit was cut off had been stored",
                    self.shown,
                    outcomes.len()
                );
            } else {
                tx.commit().await.map_err(|e| self.db(e))?;
            }
            self.written.store(expected + 1, Ordering::Relaxed);
        } else {
            tx.commit().await.map_err(|e| self.db(e))?;
        }
        // A finished target is not claimed again by this worker: forget its epoch.
        {
            let mut map = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            for o in outcomes.iter().filter(|o| o.state != ItemState::Pending) {
                map.remove(&o.target.key());
            }
        }
        if fenced > 0 {
            tracing::warn!(
                "ledger {}: {fenced} outcome(s) not stored: another worker claimed those targets after this one's lease ran out",
                self.shown
            );
        }
        Ok(())
    }

    /// Appends the finished outcomes of `chunk` to the history and moves each device's current
    /// credential; runs inside `record`'s transaction, after the items were updated.
    async fn record_registry(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        operation: &str,
        chunk: &[OutcomeRecord],
        digests: &[Option<String>],
        now: i64,
    ) -> Result<(), LedgerError> {
        let finished: Vec<String> = chunk
            .iter()
            .filter(|o| o.state.as_str() != "pending")
            .map(|o| o.target.key())
            .collect();
        if !finished.is_empty() {
            let mut q = QueryBuilder::<Postgres>::new(
                "INSERT INTO history (target, operation, state, attempts, code, message, request_id, device_access_key_id, source_file, source_line, at) \
                 SELECT target, operation, state, attempts, last_code, last_message, last_request_id, \
                 CASE WHEN state IN ('registered', 'existing', 'fetched', 'rotated') THEN device_access_key_id END, \
                 source_file, source_line, updated_at FROM items WHERE operation = ",
            );
            q.push_bind(operation);
            q.push(" AND target IN (");
            let mut sep = q.separated(", ");
            for t in &finished {
                sep.push_bind(t.as_str());
            }
            q.push(") ORDER BY id");
            q.build().execute(&mut **tx).await.map_err(|e| self.db(e))?;
        }
        if !CREDENTIAL_OPERATIONS.contains(&operation) {
            return Ok(());
        }
        let moved: Vec<(&OutcomeRecord, &Option<String>)> = chunk
            .iter()
            .zip(digests)
            .filter(|(o, _)| DEVICE_STATES.contains(&o.state.as_str()))
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO devices (target, state, operation, device_access_key_id, device_access_key_secret, secret_digest, updated_at) ",
        );
        q.push_values(&moved, |mut b, (o, digest)| {
            let credential = o.credential.as_ref();
            b.push_bind(o.target.key())
                .push_bind(o.state.as_str())
                .push_bind(operation)
                .push_bind(credential.map(|c| c.0.as_str()))
                .push_bind(credential.map(|c| c.1.expose()))
                .push_bind(digest.as_deref())
                .push_bind(now);
        });
        q.push(format!(
            " ON CONFLICT (target) DO UPDATE SET \
             previous_secret = CASE WHEN devices.device_access_key_secret IS NULL OR {SAME_SECRET} \
               THEN devices.previous_secret ELSE devices.device_access_key_secret END, \
             exported_at = CASE WHEN {SAME_SECRET} THEN devices.exported_at END, \
             state = excluded.state, operation = excluded.operation, \
             device_access_key_id = excluded.device_access_key_id, \
             device_access_key_secret = excluded.device_access_key_secret, \
             secret_digest = excluded.secret_digest, updated_at = excluded.updated_at"
        ));
        q.build().execute(&mut **tx).await.map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn pending_by_file(
        &self,
        operation: &str,
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let rows = sqlx::query(
            "SELECT source_file, COUNT(*) FROM items WHERE operation = $1 AND state = 'pending' \
             GROUP BY source_file ORDER BY source_file",
        )
        .bind(operation)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub(super) async fn counts(
        &self,
        operation: &str,
    ) -> Result<BTreeMap<String, i64>, LedgerError> {
        // Pending targets another live worker holds are being worked on, not left over: they
        // count as `in_progress`, so a worker that finished its share does not call them
        // unfinished.
        let rows = sqlx::query(
            "SELECT CASE WHEN i.state = 'pending' AND i.owner IS NOT NULL AND i.owner IS DISTINCT FROM $2 \
               AND EXISTS (SELECT 1 FROM workers w WHERE w.id = i.owner AND w.state = 'live' AND w.lease_until > now()) \
               THEN 'in_progress' ELSE i.state END AS s, COUNT(*) FROM items i WHERE i.operation = $1 GROUP BY 1",
        )
        .bind(operation)
        .bind(self.worker.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        let mut out: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let rejects: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rejects WHERE operation = $1")
            .bind(operation)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        if rejects > 0 {
            *out.entry(ItemState::Invalid.as_str().to_owned())
                .or_default() += rejects;
        }
        Ok(out)
    }

    pub(super) async fn operations(&self) -> Result<Vec<String>, LedgerError> {
        sqlx::query_scalar(
            "SELECT operation FROM items UNION SELECT operation FROM rejects ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))
    }

    pub(super) async fn error_groups(
        &self,
        operation: &str,
    ) -> Result<Vec<ErrorGroup>, LedgerError> {
        // The example of each code is its target with the lowest id, as on SQLite.
        let rows = sqlx::query(
            "SELECT g.code, g.n, i.target, i.last_request_id, i.last_message FROM ( \
               SELECT last_code AS code, COUNT(*) AS n, MIN(id) AS first FROM items \
               WHERE operation = $1 AND last_code IS NOT NULL AND state IN ('pending', 'failed', 'invalid') \
               GROUP BY last_code) g JOIN items i ON i.id = g.first ORDER BY g.n DESC",
        )
        .bind(operation)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        let mut groups: Vec<ErrorGroup> = rows
            .iter()
            .map(|r| ErrorGroup {
                code: r.get(0),
                count: r.get(1),
                example_target: r.get(2),
                example_request_id: r.get(3),
                message: r.get(4),
            })
            .collect();
        let rejects = sqlx::query(
            "SELECT reason, COUNT(*), (array_agg(source_file ORDER BY id DESC))[1], (array_agg(source_line ORDER BY id DESC))[1] \
             FROM rejects WHERE operation = $1 GROUP BY reason ORDER BY COUNT(*) DESC LIMIT 20",
        )
        .bind(operation)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        for r in rejects {
            let (file, line): (String, i64) = (r.get(2), r.get(3));
            groups.push(ErrorGroup {
                code: "InvalidInput".into(),
                count: r.get(1),
                example_target: format!("{file}:{line}"),
                example_request_id: None,
                message: Some(r.get(0)),
            });
        }
        Ok(groups)
    }

    pub(super) async fn export_page(
        &self,
        operation: &str,
        states: &[&str],
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<ExportRow>, LedgerError> {
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT id, target, state, device_access_key_id, device_access_key_secret, source_file, source_line, last_code, last_message, last_request_id, previous_secret FROM items WHERE operation = ",
        );
        q.push_bind(operation);
        q.push(" AND id > ");
        q.push_bind(after_id);
        q.push(" AND state IN (");
        let mut sep = q.separated(", ");
        for s in states {
            sep.push_bind(*s);
        }
        q.push(") ORDER BY id LIMIT ");
        q.push_bind(limit);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|r| ExportRow {
                id: r.get(0),
                target: r.get(1),
                state: r.get(2),
                key_id: r.get(3),
                secret: r.get::<Option<String>, _>(4).map(Secret::new),
                file: r.get(5),
                line: r.get(6),
                code: r.get(7),
                message: r.get(8),
                request_id: r.get(9),
                previous_secret: r.get::<Option<String>, _>(10).map(Secret::new),
            })
            .collect())
    }

    pub(super) async fn rejects_page(
        &self,
        operation: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, i64, String, String)>, LedgerError> {
        let rows = sqlx::query("SELECT id, source_file, source_line, raw, reason FROM rejects WHERE operation = $1 AND id > $2 ORDER BY id LIMIT $3")
            .bind(operation)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }

    pub(super) async fn mark_exported(
        &self,
        operation: &str,
        ids: &[i64],
    ) -> Result<(), LedgerError> {
        for chunk in ids.chunks(BATCH) {
            sqlx::query("UPDATE items SET previous_secret = NULL, exported_at = $1 WHERE operation = $2 AND id = ANY($3)")
                .bind(now_ms())
                .bind(operation)
                .bind(chunk)
                .execute(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    pub(super) async fn current_page(
        &self,
        states: &[&str],
        after: i64,
        limit: i64,
    ) -> Result<Vec<CurrentRow>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, target, state, operation, device_access_key_id, device_access_key_secret FROM devices \
             WHERE device_access_key_secret IS NOT NULL AND id > $1 AND state = ANY($2) ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(states)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|r| CurrentRow {
                cursor: r.get(0),
                target: r.get(1),
                state: r.get(2),
                operation: r.get(3),
                key_id: r.get(4),
                secret: Secret::new(r.get::<String, _>(5)),
            })
            .collect())
    }

    pub(super) async fn mark_current_exported(&self, cursors: &[i64]) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let now = now_ms();
        for chunk in cursors.chunks(BATCH) {
            sqlx::query("UPDATE items SET previous_secret = NULL WHERE operation = 'rotate' AND target IN (SELECT target FROM devices WHERE id = ANY($1))")
                .bind(chunk)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
            sqlx::query(
                "UPDATE devices SET previous_secret = NULL, exported_at = $1 WHERE id = ANY($2)",
            )
            .bind(now)
            .bind(chunk)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn history(&self, target: &str) -> Result<Vec<HistoryEvent>, LedgerError> {
        let rows = sqlx::query("SELECT operation, state, attempts, code, message, request_id, device_access_key_id, source_file, source_line, at FROM history WHERE target = $1 ORDER BY id")
            .bind(target)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|r| HistoryEvent {
                operation: r.get(0),
                state: r.get(1),
                attempts: r.get(2),
                code: r.get(3),
                message: r.get(4),
                request_id: r.get(5),
                key_id: r.get(6),
                file: r.get(7),
                line: r.get(8),
                at_ms: r.get(9),
            })
            .collect())
    }

    pub(super) async fn device(
        &self,
        target: &str,
    ) -> Result<Option<(String, String, Option<String>)>, LedgerError> {
        let row = sqlx::query(
            "SELECT state, operation, device_access_key_id FROM devices WHERE target = $1",
        )
        .bind(target)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Seals every plain secret and records the recipients, in one transaction.
    pub(super) async fn seal_all(&self, sealer: &Sealer) -> Result<u64, LedgerError> {
        let fail = |message: String| LedgerError::Database {
            path: self.shown.clone(),
            message,
        };
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let mut sealed = 0u64;
        for (table, column, with_digest) in [
            ("items", "device_access_key_secret", false),
            ("items", "previous_secret", false),
            ("devices", "device_access_key_secret", true),
            ("devices", "previous_secret", false),
        ] {
            let mut after = 0i64;
            loop {
                // `table` and `column` come from the list above, never from input.
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT id, {column} FROM {table} WHERE id > $1 AND {column} IS NOT NULL ORDER BY id LIMIT 1000"
                )))
                .bind(after)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
                let Some(last) = rows.last() else { break };
                after = last.get(0);
                for r in &rows {
                    let value = Secret::new(r.get::<String, _>(1));
                    if is_sealed(&value) {
                        continue;
                    }
                    let sealed_value = sealer.seal(&value).map_err(fail)?;
                    let update = if with_digest {
                        sqlx::query(
                            "UPDATE devices SET device_access_key_secret = $1, secret_digest = COALESCE(secret_digest, $3) WHERE id = $2",
                        )
                    } else {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE {table} SET {column} = $1 WHERE id = $2"
                        )))
                    };
                    let update = update
                        .bind(sealed_value.expose().to_owned())
                        .bind(r.get::<i64, _>(0));
                    let update = if with_digest {
                        update.bind(digest(&value))
                    } else {
                        update
                    };
                    update.execute(&mut *tx).await.map_err(|e| self.db(e))?;
                    sealed += 1;
                }
            }
        }
        sqlx::query("INSERT INTO ledger_meta (key, value) VALUES ('recipients', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(sealer.to_meta())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        tx.commit().await.map_err(|e| self.db(e))?;
        self.compact().await?;
        Ok(sealed)
    }

    pub(super) async fn purge(&self) -> Result<u64, LedgerError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let mut cleared = 0;
        for sql in [
            "UPDATE devices SET previous_secret = NULL WHERE previous_secret IS NOT NULL",
            "UPDATE items SET previous_secret = NULL WHERE previous_secret IS NOT NULL",
            "UPDATE items SET device_access_key_secret = NULL WHERE device_access_key_secret IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.target = items.target \
             AND d.device_access_key_secret = items.device_access_key_secret)",
        ] {
            cleared += sqlx::query(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?
                .rows_affected();
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        self.compact().await?;
        Ok(cleared)
    }

    /// Reclaims the space of the rewritten rows (the old versions hold the plain secrets).
    async fn compact(&self) -> Result<(), LedgerError> {
        sqlx::query("VACUUM items, devices")
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn begin_run(
        &self,
        operation: &str,
        command: &str,
    ) -> Result<i64, LedgerError> {
        sqlx::query_scalar(
            "INSERT INTO runs (operation, command, started_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(operation)
        .bind(command)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db(e))
    }

    pub(super) async fn finish_run(
        &self,
        run: i64,
        exit_code: i32,
        summary: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query("UPDATE runs SET finished_at = $1, exit_code = $2, summary = $3 WHERE id = $4")
            .bind(now_ms())
            .bind(i64::from(exit_code))
            .bind(summary)
            .bind(run)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(super) async fn last_run(&self) -> Result<Option<RunRecord>, LedgerError> {
        let row = sqlx::query("SELECT operation, command, started_at, finished_at, exit_code, summary FROM runs ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.map(|r| RunRecord {
            operation: r.get(0),
            command: r.get(1),
            started_ms: r.get(2),
            finished_ms: r.get(3),
            exit_code: r.get(4),
            summary: r.get(5),
        }))
    }

    pub(super) async fn start_again(
        &self,
        operation: &str,
        targets: &[String],
    ) -> Result<u64, LedgerError> {
        let mut total = 0;
        for chunk in targets.chunks(BATCH) {
            total += sqlx::query(
                "UPDATE items SET state = 'pending', attempts = 0, maybe_applied = 0, owner = NULL, updated_at = $1 \
                 WHERE operation = $2 AND state NOT IN ('pending', 'invalid') AND target = ANY($3)",
            )
            .bind(now_ms())
            .bind(operation)
            .bind(chunk)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?
            .rows_affected();
        }
        Ok(total)
    }

    pub(super) async fn last_done(&self, operation: &str) -> Result<Option<i64>, LedgerError> {
        sqlx::query_scalar("SELECT MAX(updated_at) FROM items WHERE operation = $1 AND state NOT IN ('pending', 'invalid')")
            .bind(operation)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }

    /// Says what this worker uses of the fleet's limits and takes its first shares (one
    /// heartbeat now); from then on every heartbeat renews them.
    pub(super) async fn share_budget(
        &self,
        budget: Arc<Budget>,
        info: &WorkerInfo,
    ) -> Result<(), LedgerError> {
        let worker = self.worker_id()?;
        sqlx::query("UPDATE workers SET operation = $2, sources = $3, egress = $4 WHERE id = $1")
            .bind(worker)
            .bind(&info.operation)
            .bind(info.sources.join(","))
            .bind(info.egress.as_deref())
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        let sent = Instant::now();
        let beat = beat(&self.pool, worker, Some(&budget), 0.0, sent)
            .await
            .map_err(|e| self.db(e))?;
        if beat.renewed {
            *self.send_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + SEND_FOR;
        }
        *self.budget.lock().unwrap_or_else(|p| p.into_inner()) = Some(budget);
        Ok(())
    }

    /// The fleet as `status` shows it: live workers, and those that ended or died in the last
    /// ten minutes, oldest first (at most 100).
    pub(super) async fn workers(&self) -> Result<Vec<WorkerView>, LedgerError> {
        let rows = sqlx::query(
            "SELECT w.id, w.host, w.pid, coalesce(w.operation, ''), w.sources, w.egress, \
               CASE WHEN w.state = 'live' AND w.lease_until > now() THEN 'live' \
                    WHEN w.state = 'gone' THEN 'finished' ELSE 'dead' END, \
               (extract(epoch FROM w.started_at) * 1000)::BIGINT, \
               (extract(epoch FROM w.heartbeat_at) * 1000)::BIGINT, \
               extract(epoch FROM now() - w.heartbeat_at)::FLOAT8, w.calls_per_second, \
               coalesce((SELECT json_object_agg(g.pool, g.granted)::TEXT FROM budget_grants g \
                         WHERE g.worker = w.id), '{}') \
             FROM workers w \
             WHERE (w.state = 'live' AND w.lease_until > now()) \
                OR w.heartbeat_at > now() - interval '10 minutes' \
             ORDER BY w.started_at, w.id LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|r| {
                let state: String = r.get(6);
                let live = state == "live";
                let sources: String = r.get(4);
                let shares: BTreeMap<String, i64> = if live {
                    serde_json::from_str(&r.get::<String, _>(11)).unwrap_or_default()
                } else {
                    BTreeMap::new()
                };
                WorkerView {
                    id: r.get(0),
                    host: r.get(1),
                    pid: r.get(2),
                    operation: r.get(3),
                    sources: sources
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    egress: r.get(5),
                    state,
                    started_ms: r.get(7),
                    heartbeat_ms: r.get(8),
                    heartbeat_age_s: r.get(9),
                    calls_per_second: if live { r.get(10) } else { 0.0 },
                    shares,
                }
            })
            .collect())
    }

    /// Until when this worker may send calls (`None`: not opened for a run).
    pub(super) fn send_deadline(&self) -> Option<Instant> {
        self.worker
            .as_ref()
            .map(|_| *self.send_until.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Pending targets of the operation that other workers hold: under a live lease they are
    /// being worked on, or are taken over once it runs out; a dead worker's that a claim just
    /// passed over are locked (another worker taking them this instant, or a frozen worker's
    /// open transaction, which the server ends after `idle_in_transaction_session_timeout`), so
    /// they are waited for, not left pending.
    pub(super) async fn held_by_others(&self, operation: &str) -> Result<i64, LedgerError> {
        self.answered(self.held_by_others_now(operation)).await
    }

    async fn held_by_others_now(&self, operation: &str) -> Result<i64, LedgerError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM items i \
             WHERE i.operation = $1 AND i.state = 'pending' AND i.owner IS NOT NULL \
             AND i.owner IS DISTINCT FROM $2",
        )
        .bind(operation)
        .bind(self.worker.as_deref())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db(e))
    }

    /// Whether a run held the ledger when it was opened (this process's, or a live worker's).
    pub(super) fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(super) fn held_by_a_run(&self) -> bool {
        self.held
    }

    /// No file is a database server's: writing a file never writes over this ledger.
    pub(super) fn owns_file(&self, _candidate: &std::path::Path) -> bool {
        false
    }

    /// Whether a live worker (this process's or another's) holds a lease on the ledger now.
    pub(super) async fn any_live_worker(&self) -> Result<bool, LedgerError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM workers WHERE state = 'live' AND lease_until > now())",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db(e))
    }

    /// Ends this worker: its lease is given up, so what it still holds may be claimed at once.
    pub(super) async fn close(mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        if let Some(worker) = &self.worker {
            let gone = sqlx::query(
                "WITH gone AS (UPDATE workers SET state = 'gone', lease_until = now() WHERE id = $1) \
                 UPDATE items SET owner = NULL WHERE owner = $1 AND state = 'pending'",
            )
            .bind(worker);
            // A server that went away is not waited for: the lease then runs out by itself.
            match tokio::time::timeout(CLOSE_WAIT, gone.execute(&self.pool)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "ledger {}: ending the worker's lease failed: {}",
                    self.shown,
                    describe(&e)
                ),
                Err(_) => tracing::warn!(
                    "ledger {}: ending the worker's lease took longer than {CLOSE_WAIT:?}; it runs out by itself",
                    self.shown
                ),
            }
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, self.pool.close()).await;
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}

/// What one heartbeat learnt.
struct Beat {
    /// The lease was renewed (a worker whose lease ran out is not: it must stop).
    renewed: bool,
    /// Some share is below this worker's fair target (another worker still holds it).
    short: bool,
}

/// Renews the lease and, with a budget, states its pools and takes the shares granted: one
/// round trip (`fleet_heartbeat`, migrations/postgres/0002_fleet_budget.sql).
async fn beat(
    pool: &PgPool,
    worker: &str,
    budget: Option<&Budget>,
    calls_per_second: f64,
    sent: Instant,
) -> Result<Beat, sqlx::Error> {
    let Some(budget) = budget else {
        let done = sqlx::query(
            "UPDATE workers SET lease_until = now() + make_interval(secs => $2), heartbeat_at = now() \
             WHERE id = $1 AND state = 'live' AND lease_until > now()",
        )
        .bind(worker)
        .bind(LEASE_SECONDS as f64)
        .execute(pool)
        .await?;
        return Ok(Beat {
            renewed: done.rows_affected() == 1,
            short: false,
        });
    };
    let pools = budget.pools();
    let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
    let caps: Vec<i32> = pools.iter().map(|p| clamp_i32(p.cap)).collect();
    let wants: Vec<i32> = pools.iter().map(|p| clamp_i32(p.want)).collect();
    let row = sqlx::query(
        "SELECT renewed, granted, short FROM fleet_heartbeat($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(worker)
    .bind(LEASE_SECONDS as f64)
    .bind(SHARE_HOLD.as_secs_f64())
    .bind(calls_per_second)
    .bind(&names)
    .bind(&caps)
    .bind(&wants)
    .fetch_one(pool)
    .await?;
    let renewed: bool = row.try_get(0)?;
    let granted: Vec<i32> = row.try_get(1)?;
    if renewed {
        let granted: Vec<u32> = granted.iter().map(|&g| g.max(0) as u32).collect();
        budget.grant(&granted, sent + SEND_FOR);
    } else {
        budget.suspend();
    }
    Ok(Beat {
        renewed,
        short: row.try_get(2)?,
    })
}

fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Renews the worker's lease every second (every [`SHORT_BEAT`] while a share is short of its
/// target, so a joining worker gets its share soon after the others gave it up). A renewal that
/// fails is logged; the lease then runs out on the database's clock, and the worker claims
/// nothing more (the claim checks it). While a heartbeat is late (past [`PAUSE_AFTER`]) or
/// after one failed, the worker holds no share: the database may have lowered it already.
fn spawn_heartbeat(
    pool: PgPool,
    worker: String,
    shown: String,
    send_until: Arc<Mutex<Instant>>,
    budget: Arc<Mutex<Option<Arc<Budget>>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        let mut next = tokio::time::Instant::now() + HEARTBEAT;
        loop {
            tokio::time::sleep_until(next).await;
            let budget = budget.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let sent = Instant::now();
            let calls = budget.as_ref().map_or(0, |b| b.calls());
            let elapsed = sent.duration_since(last.0).as_secs_f64();
            let rate = if elapsed > 0.0 {
                calls.saturating_sub(last.1) as f64 / elapsed
            } else {
                0.0
            };
            last = (sent, calls);
            let renewal = async {
                tokio::time::timeout(
                    ANSWER_WAIT,
                    beat(&pool, &worker, budget.as_deref(), rate, sent),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", ANSWER_WAIT.as_secs()),
                    )))
                })
            };
            let renewed = match &budget {
                None => renewal.await,
                Some(shares) => {
                    tokio::pin!(renewal);
                    tokio::select! {
                        done = &mut renewal => done,
                        _ = tokio::time::sleep(PAUSE_AFTER) => {
                            shares.suspend();
                            renewal.await
                        }
                    }
                }
            };
            let mut short = false;
            match renewed {
                Ok(beat) if beat.renewed => {
                    *send_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + SEND_FOR;
                    short = beat.short;
                }
                Ok(_) => tracing::warn!(
                    "ledger {shown}: this worker's lease ran out before it was renewed"
                ),
                Err(e) => {
                    if let Some(shares) = &budget {
                        shares.suspend();
                    }
                    tracing::warn!(
                        "ledger {shown}: renewing this worker's lease failed: {}",
                        describe(&e)
                    )
                }
            }
            next =
                tokio::time::Instant::from_std(sent) + if short { SHORT_BEAT } else { HEARTBEAT };
        }
    })
}

fn migrate_error(path: &str, error: &MigrateError) -> LedgerError {
    LedgerError::Migrate {
        path: path.to_owned(),
        message: format!("{error}: {}", with_causes(error)),
    }
}

/// A driver's message with the URL, should it quote it, replaced by its shown form.
fn strip_url(message: &str, url: &PostgresUrl) -> String {
    message.replace(url.expose(), &url.shown())
}
