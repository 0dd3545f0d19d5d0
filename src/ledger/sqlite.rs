//! The SQLite backend of the ledger: one file (WAL, FULL sync, one connection), its lock file,
//! its migrations (`migrations/sqlite/`, embedded) and every SQL statement run against it.
//!
//! It owns everything SQLite-specific: the lock that keeps a second worker off the file,
//! `rowid`, bare columns beside an aggregate, result codes and what they mean to an operator,
//! `QueryBuilder::<Sqlite>`. It must never let a `sqlx` type out: it answers in the ledger's
//! own types and turns every driver error into a [`LedgerError`] that carries SQLite's message
//! as text. It knows nothing of HTTP, CSV parsing or exit codes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::MigrateError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};

use super::error::with_causes;
use super::private_file::{
    UnsafeFile, check_private, create_new_private, identity_of, open_private,
};
use super::{
    ErrorGroup, ExportRow, IngestCounts, ItemState, LedgerError, OutcomeRecord, WorkItem, now_ms,
};
use crate::input::Row;
use crate::secret::Secret;
use crate::target::Target;

mod registry;
mod runs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement: 500 rows × ≤ 10 binds stays far below SQLite's 32 766.
const BATCH: usize = 500;

/// What went wrong, in the words an operator acts on, then SQLite's own.
fn describe(error: &sqlx::Error) -> String {
    let sqlx::Error::Database(db) = error else {
        return error.to_string();
    };
    // SQLite's primary result code is the low byte of the extended code sqlx reports.
    let primary = db
        .code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff);
    let hint = match primary {
        Some(13) => "the disk is full; free space, then rerun",
        Some(14) => "cannot open the file; its directory may be missing, read-only or full",
        Some(8) => "the file or its file system is read-only",
        Some(10) => "the disk failed to read or write",
        Some(5) | Some(6) => "another process holds the database locked",
        _ => return format!("SQLite: {}", db.message()),
    };
    format!("{hint} (SQLite: {})", db.message())
}

fn database_error(path: &str, error: &sqlx::Error) -> LedgerError {
    LedgerError::Database {
        path: path.to_owned(),
        message: describe(error),
    }
}

fn migrate_error(path: &str, error: &MigrateError) -> LedgerError {
    // The text the command edge printed when the migrator's error was this error's source: its
    // message inside ours, then again as the first link of the chain, then its causes. Kept
    // word for word; dropping the repeat is a change of message of its own.
    LedgerError::Migrate {
        path: path.to_owned(),
        message: format!("{error}: {}", with_causes(error)),
    }
}

/// A SQLite ledger file, open.
pub(super) struct SqliteStore {
    pool: SqlitePool,
    /// The file as messages name it.
    path: String,
    /// Opened read-only: nothing is written, not even a checkpoint at close.
    read_only: bool,
    /// Held for the store's lifetime when opened for a run: a second worker is refused.
    _lock: Option<File>,
}

/// Checks the ledger file and its side files (creating the ledger 0600 when `create`); returns
/// the ledger's identity.
fn secure(path: &Path, create: bool) -> Result<(u64, u64), LedgerError> {
    let missing = || LedgerError::Missing {
        path: path.display().to_string(),
    };
    let identity = match check_private(path).map_err(|e| unsafe_file(path, e))? {
        Some(identity) => identity,
        None if create => {
            create_new_private(path).map_err(|e| unsafe_file(path, e))?;
            check_private(path)
                .map_err(|e| unsafe_file(path, e))?
                .ok_or_else(missing)?
        }
        None => return Err(missing()),
    };
    // An empty file (a truncated ledger, a file that was never one): a command that does not
    // create ledgers says so rather than give it a fresh, empty schema.
    let empty = |p: &Path| std::fs::symlink_metadata(p).map_or(true, |m| m.len() == 0);
    if !create && empty(path) && empty(&side_file(path, "-wal")) {
        return Err(LedgerError::NotALedger {
            path: path.display().to_string(),
        });
    }
    for suffix in SIDE_FILES {
        let side = side_file(path, suffix);
        check_private(&side).map_err(|e| unsafe_file(&side, e))?;
    }
    Ok(identity)
}

/// SQLite's side files of a database: its write-ahead log, its shared-memory index, and the
/// rollback journal of a database that was not in WAL mode.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// A file refused as a ledger (or one of its side files, or its lock), or an I/O failure.
fn unsafe_file(path: &Path, error: UnsafeFile) -> LedgerError {
    let path = path.display().to_string();
    match error {
        UnsafeFile::Io(source) => LedgerError::Io { path, source },
        other => LedgerError::Unsafe {
            path,
            reason: other.to_string(),
        },
    }
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl SqliteStore {
    /// Opens the file for a run (`create`: creating it 0600 if missing) or for maintenance,
    /// exclusively: the lock file beside it is held until the store is dropped.
    ///
    /// The lock is named after the path, yet no second name can reach the same ledger: the
    /// ledger must not be a symbolic link and must have a single name (no hard link), and a
    /// link to its directory leads to the same lock file.
    pub(super) async fn open_exclusive(
        path: &Path,
        create: bool,
    ) -> Result<SqliteStore, LedgerError> {
        let shown = path.display().to_string();
        let lock_file = lock_path(path);
        let lock = open_private(&lock_file).map_err(|e| unsafe_file(&lock_file, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LedgerError::Busy { path: shown });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(LedgerError::Io {
                    path: shown,
                    source: e,
                });
            }
        }
        let identity = secure(path, create)?;
        let mut store = Self::connect(path, identity, false, create).await?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// Opens an existing file alongside a running worker: to write what an export records
    /// (`read_only` false), or only to read it (`status`, `show`). Never creates one.
    pub(super) async fn open_shared(
        path: &Path,
        read_only: bool,
    ) -> Result<SqliteStore, LedgerError> {
        let identity = secure(path, false)?;
        Self::connect(path, identity, read_only, false).await
    }

    async fn connect(
        path: &Path,
        identity: (u64, u64),
        read_only: bool,
        may_be_empty: bool,
    ) -> Result<SqliteStore, LedgerError> {
        let shown = path.display().to_string();
        // WAL lets `status` read during a run; FULL makes each batched commit durable across
        // power loss, which matters for the claim written before a call (4 commits/s: cheap).
        // secure_delete: a secret cleared (`purge`, an exported rotation) is overwritten, not
        // left readable in a free page.
        let mut options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .read_only(read_only)
            .synchronous(SqliteSynchronous::Full)
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(5));
        if !read_only {
            options = options.journal_mode(SqliteJournalMode::Wal);
        }
        // One connection: the claimer, the writer and reports take turns, never SQLITE_BUSY
        // among themselves.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| database_error(&shown, &e))?;
        let store = SqliteStore {
            pool,
            path: shown.clone(),
            read_only,
            _lock: None,
        };
        // SQLite opened the file by its path: it must be the file that was checked.
        if identity_of(path).ok() != Some(identity) {
            store.pool.close().await;
            return Err(LedgerError::Unsafe {
                path: shown,
                reason: "was replaced while being opened".into(),
            });
        }
        let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master")
            .fetch_one(&store.pool)
            .await
            .map_err(|e| store.db(e))?;
        if tables == 0 && !may_be_empty {
            // An empty file (a truncated ledger, a file that was never one): reading commands
            // say so rather than give it a fresh, empty schema.
            store.pool.close().await;
            return Err(LedgerError::NotALedger { path: shown });
        }
        if read_only {
            if store.schema_is_current().await? {
                return Ok(store);
            }
            // A ledger of an older version: migrating writes, as every command did before.
            store.pool.close().await;
            return Box::pin(Self::connect(path, identity, false, false)).await;
        }
        MIGRATOR
            .run(&store.pool)
            .await
            .map_err(|e| migrate_error(&shown, &e))?;
        Ok(store)
    }

    /// Whether every embedded migration is applied (a read-only open need not migrate).
    async fn schema_is_current(&self) -> Result<bool, LedgerError> {
        let newest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .unwrap_or(None);
        Ok(applied == Some(newest))
    }

    fn db(&self, error: sqlx::Error) -> LedgerError {
        database_error(&self.path, &error)
    }

    pub(super) fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The instance the ledger was created for, if it was set yet.
    pub(super) async fn instance_id(&self) -> Result<Option<String>, LedgerError> {
        sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = 'instance_id'")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }

    pub(super) async fn set_instance_id(&self, instance_id: &str) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO ledger_meta (key, value) VALUES ('instance_id', $1)")
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

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
            let mut q = QueryBuilder::<Sqlite>::new(
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
            // A line refused before that is valid now (the file was corrected): retired.
            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM rejects WHERE operation = ");
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
            let mut q = QueryBuilder::<Sqlite>::new(
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
        Ok(counts)
    }

    pub(super) async fn was_ingested(
        &self,
        operation: &str,
        sha256: &str,
        spec: &str,
    ) -> Result<bool, LedgerError> {
        let found: Option<i64> = sqlx::query_scalar(
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

    pub(super) async fn claim(
        &self,
        operation: &str,
        after_id: i64,
        limit: i64,
        marks_effect: bool,
    ) -> Result<Vec<WorkItem>, LedgerError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let rows = sqlx::query("SELECT id, target, attempts, maybe_applied FROM items WHERE operation = $1 AND state = 'pending' AND id > $2 ORDER BY id LIMIT $3")
            .bind(operation)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        let items: Vec<WorkItem> = rows
            .iter()
            .map(|r| WorkItem {
                id: r.get(0),
                target: Target::from_key(r.get(1)),
                attempts: r.get(2),
                maybe_applied: r.get::<i64, _>(3) != 0,
                taken_over: false,
            })
            .collect();
        if marks_effect && let (Some(first), Some(last)) = (items.first(), items.last()) {
            sqlx::query("UPDATE items SET maybe_applied = 1, updated_at = $1 WHERE operation = $2 AND state = 'pending' AND id >= $3 AND id <= $4")
                .bind(now_ms())
                .bind(operation)
                .bind(first.id)
                .bind(last.id)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(items)
    }

    pub(super) async fn record(
        &self,
        operation: &str,
        outcomes: &[OutcomeRecord],
        digests: &[Option<String>],
    ) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        for (chunk, digests) in outcomes.chunks(BATCH).zip(digests.chunks(BATCH)) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "WITH v(target, state, attempts_added, maybe_applied, code, message, request_id, key_id, key_secret, previous_secret) AS (",
            );
            q.push_values(chunk, |mut b, o| {
                b.push_bind(o.target.key())
                    .push_bind(o.state.as_str())
                    .push_bind(o.attempts_added)
                    .push_bind(i64::from(o.maybe_applied))
                    .push_bind(o.code.as_deref())
                    .push_bind(o.message.as_deref())
                    .push_bind(o.request_id.as_deref())
                    .push_bind(o.credential.as_ref().map(|c| c.0.as_str()))
                    .push_bind(o.credential.as_ref().map(|c| c.1.expose()))
                    .push_bind(o.previous_secret.as_ref().map(Secret::expose));
            });
            q.push(
                ") UPDATE items SET state = v.state, attempts = items.attempts + v.attempts_added, \
                 maybe_applied = v.maybe_applied, \
                 last_code = CASE WHEN v.code IS NULL AND v.state = 'pending' THEN items.last_code ELSE v.code END, \
                 last_message = CASE WHEN v.code IS NULL AND v.state = 'pending' THEN items.last_message ELSE v.message END, \
                 last_request_id = COALESCE(v.request_id, items.last_request_id), \
                 device_access_key_id = COALESCE(v.key_id, items.device_access_key_id), \
                 device_access_key_secret = COALESCE(v.key_secret, items.device_access_key_secret), \
                 previous_secret = COALESCE(v.previous_secret, items.previous_secret), updated_at = ",
            );
            q.push_bind(now);
            q.push(" FROM v WHERE items.operation = ");
            q.push_bind(operation);
            q.push(" AND items.target = v.target");
            q.build().execute(&mut *tx).await.map_err(|e| self.db(e))?;
            self.record_registry(&mut tx, operation, chunk, digests, now)
                .await?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(())
    }

    /// No other worker can hold a target: the lock file keeps a second one out.
    pub(super) async fn held_by_others(&self, _operation: &str) -> Result<i64, LedgerError> {
        Ok(0)
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
        let rows =
            sqlx::query("SELECT state, COUNT(*) FROM items WHERE operation = $1 GROUP BY state")
                .bind(operation)
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
        sqlx::query_scalar("SELECT DISTINCT operation FROM items UNION SELECT DISTINCT operation FROM rejects ORDER BY 1")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }

    pub(super) async fn error_groups(
        &self,
        operation: &str,
    ) -> Result<Vec<ErrorGroup>, LedgerError> {
        // SQLite takes the bare columns from the row that MIN(id) picked.
        let rows = sqlx::query(
            "SELECT last_code, COUNT(*), MIN(id), target, last_request_id, last_message FROM items \
             WHERE operation = $1 AND last_code IS NOT NULL AND state IN ('pending', 'failed', 'invalid') \
             GROUP BY last_code ORDER BY COUNT(*) DESC",
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
                example_target: r.get(3),
                example_request_id: r.get(4),
                message: r.get(5),
            })
            .collect();
        let rejects = sqlx::query("SELECT reason, COUNT(*), source_file, source_line FROM rejects WHERE operation = $1 GROUP BY reason ORDER BY COUNT(*) DESC LIMIT 20")
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
        let mut q = QueryBuilder::<Sqlite>::new(
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
        after_rowid: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, i64, String, String)>, LedgerError> {
        let rows = sqlx::query("SELECT rowid, source_file, source_line, raw, reason FROM rejects WHERE operation = $1 AND rowid > $2 ORDER BY rowid LIMIT $3")
            .bind(operation)
            .bind(after_rowid)
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
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE items SET previous_secret = NULL, exported_at = ",
            );
            q.push_bind(now_ms());
            q.push(" WHERE operation = ");
            q.push_bind(operation);
            q.push(" AND id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            q.push(")");
            q.build()
                .execute(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
        }
        Ok(())
    }

    /// Closes the file with its write-ahead log folded into it, so the file alone holds
    /// everything (a copy of it after a clean exit is a whole ledger). When no other process has
    /// it open, it is left in rollback-journal mode with no side file at all, which a read-only
    /// inspection can open even in a directory it may not write (a WAL database needs its
    /// `-shm` there); the next run turns WAL on again.
    ///
    /// Only the process that holds the ledger exclusively does this: a shared open (`export`,
    /// or a second worker checking what was ingested before it is refused) beside a running
    /// worker must never make that worker wait (a TRUNCATE checkpoint waits on its writes and
    /// could make them fail as busy); it folds what it can without waiting (PASSIVE).
    pub(super) async fn close(self) {
        if !self.read_only && self._lock.is_none() {
            let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&self.pool)
                .await;
        } else if !self.read_only {
            // Leaving WAL needs the only connection: with a reader beside it, SQLite answers
            // SQLITE_BUSY at once, and the log is checkpointed and emptied instead.
            let left_wal = sqlx::query("PRAGMA journal_mode = DELETE")
                .execute(&self.pool)
                .await
                .is_ok();
            if !left_wal
                && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&self.pool)
                    .await
            {
                tracing::warn!(
                    "ledger {}: checkpoint at close failed: {}",
                    self.path,
                    describe(&e)
                );
            }
        }
        self.pool.close().await;
    }

    /// Whether a run holds the ledger now (its lock file is locked). Reads only: a missing lock
    /// file means no run; the probe's shared lock is let go at once.
    pub(super) fn held_by_a_run(&self) -> bool {
        let Ok(lock) = File::open(lock_path(Path::new(&self.path))) else {
            return false;
        };
        matches!(
            lock.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        )
    }

    /// Whether `candidate` is this ledger's file or one of its side files (by device and inode,
    /// and by name for side files that do not exist yet).
    pub(super) fn owns_file(&self, candidate: &Path) -> bool {
        let path = Path::new(&self.path);
        let mut own: Vec<PathBuf> = SIDE_FILES.iter().map(|s| side_file(path, s)).collect();
        own.push(path.to_owned());
        own.push(lock_path(path));
        let id = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    std::os::unix::fs::MetadataExt::dev(&m),
                    std::os::unix::fs::MetadataExt::ino(&m),
                )
            })
        };
        if let Some(found) = id(candidate)
            && own.iter().any(|p| id(p) == Some(found))
        {
            return true;
        }
        let named = |p: &Path| {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            Some((std::fs::canonicalize(dir).ok()?, p.file_name()?.to_owned()))
        };
        named(candidate).is_some_and(|c| own.iter().any(|p| named(p).as_ref() == Some(&c)))
    }
}

fn lock_path(path: &Path) -> PathBuf {
    side_file(path, ".lock")
}
