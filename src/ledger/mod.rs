//! The SQLite ledger: every target of every operation, its state, its last error and its
//! credential. It is the only source of truth of a run; reruns resume from it.
//!
//! Storage stays behind this module (runtime queries, portable SQL, epoch-millisecond times) so
//! a PostgreSQL ledger for several workers can replace it. It knows nothing of HTTP or CSV
//! parsing; it stores what it is given, in batches.

mod state;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row as _, Sqlite, SqlitePool};

pub use state::ItemState;

use crate::input::Row;
use crate::secret::Secret;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Rows per multi-row statement: 500 rows × ≤ 10 binds stays far below SQLite's 32 766.
const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "ledger {path} is in use by another mqtt-provision process (lock {path}.lock); wait for it to finish, or use another --ledger"
    )]
    Busy { path: String },
    #[error(
        "ledger {path} belongs to instance {found}, not {wanted}; use another --ledger for another instance"
    )]
    WrongInstance {
        path: String,
        found: String,
        wanted: String,
    },
    #[error(
        "ledger {path} does not exist; run a command that creates it first (for example `register`)"
    )]
    Missing { path: String },
    /// Not a `source`: the description already carries SQLite's own words once.
    #[error("ledger {path}: {}", describe(error))]
    Database { path: String, error: sqlx::Error },
    #[error("ledger {path}: migrating the schema failed: {source}")]
    Migrate {
        path: String,
        source: sqlx::migrate::MigrateError,
    },
}

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
    pool: SqlitePool,
    path: String,
    instance_id: String,
    /// Held for the ledger's lifetime: a second worker on the same ledger is refused.
    _lock: Option<File>,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Ledger {
    /// Opens (creating, mode 0600) the ledger of `instance_id` for a run, exclusively.
    pub async fn open(path: &Path, instance_id: &str) -> Result<Ledger, LedgerError> {
        let shown = path.display().to_string();
        let io = |source| LedgerError::Io {
            path: shown.clone(),
            source,
        };
        let lock = create_private(&lock_path(path)).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LedgerError::Busy { path: shown });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        create_private(path).map_err(io)?;
        let mut ledger = Self::connect(path).await?;
        ledger._lock = Some(lock);
        let found: Option<String> =
            sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = 'instance_id'")
                .fetch_optional(&ledger.pool)
                .await
                .map_err(|e| ledger.db(e))?;
        match found {
            Some(found) if found != instance_id => {
                return Err(LedgerError::WrongInstance {
                    path: shown,
                    found,
                    wanted: instance_id.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO ledger_meta (key, value) VALUES ('instance_id', $1)")
                    .bind(instance_id)
                    .execute(&ledger.pool)
                    .await
                    .map_err(|e| ledger.db(e))?;
            }
        }
        ledger.instance_id = instance_id.to_owned();
        Ok(ledger)
    }

    /// Opens an existing ledger to read it (`status`, `export`), alongside a running worker.
    pub async fn open_existing(path: &Path) -> Result<Ledger, LedgerError> {
        if !path.exists() {
            return Err(LedgerError::Missing {
                path: path.display().to_string(),
            });
        }
        let mut ledger = Self::connect(path).await?;
        ledger.instance_id =
            sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = 'instance_id'")
                .fetch_optional(&ledger.pool)
                .await
                .map_err(|e| ledger.db(e))?
                .unwrap_or_default();
        Ok(ledger)
    }

    async fn connect(path: &Path) -> Result<Ledger, LedgerError> {
        let shown = path.display().to_string();
        // WAL lets `status` read during a run; FULL makes each batched commit durable across
        // power loss, which matters for the claim written before a call (4 commits/s: cheap).
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // One connection: the claimer, the writer and reports take turns, never SQLITE_BUSY
        // among themselves.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|error| LedgerError::Database {
                path: shown.clone(),
                error,
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                path: shown.clone(),
                source,
            })?;
        Ok(Ledger {
            pool,
            path: shown,
            instance_id: String::new(),
            _lock: None,
        })
    }

    fn db(&self, error: sqlx::Error) -> LedgerError {
        LedgerError::Database {
            path: self.path.clone(),
            error,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Adds rows idempotently: a target already present (from this file, another file or an
    /// earlier run) is left as it is; an invalid row is kept with its file, line and reason.
    pub async fn ingest(&self, operation: &str, rows: &[Row]) -> Result<IngestCounts, LedgerError> {
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

    /// Whether a file with this content was already fully ingested with this input spec.
    pub async fn was_ingested(
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

    /// Records that a file was fully ingested.
    pub async fn mark_ingested(
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

    /// Puts `failed` targets back to `pending`, so rerunning a command retries them.
    pub async fn retry_failed(&self, operation: &str) -> Result<u64, LedgerError> {
        let done = sqlx::query("UPDATE items SET state = 'pending', updated_at = $1 WHERE operation = $2 AND state = 'failed'")
            .bind(now_ms())
            .bind(operation)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(done.rows_affected())
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
                target: r.get(1),
                attempts: r.get(2),
                maybe_applied: r.get::<i64, _>(3) != 0,
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

    /// Stores outcomes in one transaction, one multi-row statement per 500.
    pub async fn record(
        &self,
        operation: &str,
        outcomes: &[OutcomeRecord],
    ) -> Result<(), LedgerError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        for chunk in outcomes.chunks(BATCH) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "WITH v(target, state, attempts_added, maybe_applied, code, message, request_id, key_id, key_secret, previous_secret) AS (",
            );
            q.push_values(chunk, |mut b, o| {
                b.push_bind(o.target.as_str())
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
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Targets per state, with invalid input rows counted as `invalid`.
    pub async fn counts(&self, operation: &str) -> Result<BTreeMap<String, i64>, LedgerError> {
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

    /// The operations this ledger has items for.
    pub async fn operations(&self) -> Result<Vec<String>, LedgerError> {
        sqlx::query_scalar("SELECT DISTINCT operation FROM items UNION SELECT DISTINCT operation FROM rejects ORDER BY 1")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }

    /// Errors of targets that did not succeed, grouped by code, with one example each.
    pub async fn error_groups(&self, operation: &str) -> Result<Vec<ErrorGroup>, LedgerError> {
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

    /// A page of items in the given states, after `after_id`.
    pub async fn export_page(
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

    /// Invalid input rows: (file, line, raw, reason), after a rowid.
    pub async fn rejects_page(
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

    /// Marks rows as exported; a rotated row's previous secret is dropped then, no longer needed.
    pub async fn mark_exported(&self, operation: &str, ids: &[i64]) -> Result<(), LedgerError> {
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

    pub async fn begin_run(&self, operation: &str, command: &str) -> Result<i64, LedgerError> {
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

    pub async fn finish_run(
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
        let row = sqlx::query("SELECT operation, command, started_at, finished_at, exit_code, summary FROM runs ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Opens (creating if needed) a file readable by its owner only.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
