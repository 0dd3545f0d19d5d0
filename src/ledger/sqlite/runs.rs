//! The runs of the SQLite backend: when each command started and how it ended, and what a new
//! round (`--again`) sends anew.

use sqlx::{QueryBuilder, Row as _, Sqlite};

use super::{BATCH, SqliteStore};
use crate::ledger::{LedgerError, RunRecord, now_ms};

impl SqliteStore {
    pub(in crate::ledger) async fn begin_run(
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

    pub(in crate::ledger) async fn finish_run(
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

    pub(in crate::ledger) async fn last_run(&self) -> Result<Option<RunRecord>, LedgerError> {
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

    pub(in crate::ledger) async fn start_again(
        &self,
        operation: &str,
        targets: &[String],
    ) -> Result<u64, LedgerError> {
        let mut total = 0;
        for chunk in targets.chunks(BATCH) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE items SET state = 'pending', attempts = 0, maybe_applied = 0, updated_at = ",
            );
            q.push_bind(now_ms());
            q.push(" WHERE operation = ");
            q.push_bind(operation);
            q.push(" AND state NOT IN ('pending', 'invalid') AND target IN (");
            let mut sep = q.separated(", ");
            for t in chunk {
                sep.push_bind(t.as_str());
            }
            q.push(")");
            total += q
                .build()
                .execute(&self.pool)
                .await
                .map_err(|e| self.db(e))?
                .rows_affected();
        }
        Ok(total)
    }

    pub(in crate::ledger) async fn last_done(
        &self,
        operation: &str,
    ) -> Result<Option<i64>, LedgerError> {
        sqlx::query_scalar("SELECT MAX(updated_at) FROM items WHERE operation = $1 AND state NOT IN ('pending', 'invalid')")
            .bind(operation)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }
}
