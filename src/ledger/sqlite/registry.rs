//! The registry half of the SQLite backend: `history` (every outcome in time order) and
//! `devices` (each device's current credential), kept in the same transaction as the items they
//! come from, and the maintenance that seals or purges the secrets at rest.

use sqlx::{QueryBuilder, Row as _, Sqlite, Transaction};

use super::{BATCH, SqliteStore};
use crate::ledger::seal::{Sealer, digest, is_sealed};
use crate::ledger::{
    CREDENTIAL_OPERATIONS, CurrentRow, HistoryEvent, LedgerError, OutcomeRecord, now_ms,
};
use crate::secret::Secret;

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

impl SqliteStore {
    /// Appends the finished outcomes of `chunk` to the history and moves each device's current
    /// credential; runs inside `record`'s transaction, after the items were updated.
    pub(super) async fn record_registry(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
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
            let mut q = QueryBuilder::<Sqlite>::new(
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
        let mut q = QueryBuilder::<Sqlite>::new(
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

    pub(in crate::ledger) async fn current_page(
        &self,
        states: &[&str],
        after: i64,
        limit: i64,
    ) -> Result<Vec<CurrentRow>, LedgerError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT rowid, target, state, operation, device_access_key_id, device_access_key_secret FROM devices \
             WHERE device_access_key_secret IS NOT NULL AND rowid > ",
        );
        q.push_bind(after);
        q.push(" AND state IN (");
        let mut sep = q.separated(", ");
        for s in states {
            sep.push_bind(*s);
        }
        q.push(") ORDER BY rowid LIMIT ");
        q.push_bind(limit);
        let rows = q
            .build()
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

    /// The current credentials were handed out: the secrets they replaced are no longer needed.
    pub(in crate::ledger) async fn mark_current_exported(
        &self,
        cursors: &[i64],
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let now = now_ms();
        for chunk in cursors.chunks(BATCH) {
            let list = |q: &mut QueryBuilder<Sqlite>| {
                let mut sep = q.separated(", ");
                for c in chunk {
                    sep.push_bind(*c);
                }
            };
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE items SET previous_secret = NULL WHERE operation = 'rotate' AND target IN (SELECT target FROM devices WHERE rowid IN (",
            );
            list(&mut q);
            q.push("))");
            q.build().execute(&mut *tx).await.map_err(|e| self.db(e))?;
            let mut q = QueryBuilder::<Sqlite>::new(
                "UPDATE devices SET previous_secret = NULL, exported_at = ",
            );
            q.push_bind(now);
            q.push(" WHERE rowid IN (");
            list(&mut q);
            q.push(")");
            q.build().execute(&mut *tx).await.map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(())
    }

    pub(in crate::ledger) async fn history(
        &self,
        target: &str,
    ) -> Result<Vec<HistoryEvent>, LedgerError> {
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

    /// A device's current state and the DeviceAccessKeyId it holds, if it is a known device.
    pub(in crate::ledger) async fn device(
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

    pub(in crate::ledger) async fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }

    /// Whether the ledger holds any secret yet (a plain ledger then needs `ledger seal`).
    pub(in crate::ledger) async fn holds_secrets(&self) -> Result<bool, LedgerError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM items WHERE device_access_key_secret IS NOT NULL OR previous_secret IS NOT NULL LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(found.is_some())
    }

    pub(in crate::ledger) async fn set_meta(
        &self,
        key: &str,
        value: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO ledger_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Seals every plain secret and records the recipients, in one transaction: interrupted at
    /// any point, the ledger is as it was (plain), and a rerun starts again. Then the file is
    /// rewritten (VACUUM) and the WAL truncated, so no plaintext stays in free pages or frames.
    /// Returns how many values were sealed.
    pub(in crate::ledger) async fn seal_all(&self, sealer: &Sealer) -> Result<u64, LedgerError> {
        let fail = |message: String| LedgerError::Database {
            path: self.path.clone(),
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
                    "SELECT rowid, {column} FROM {table} WHERE rowid > $1 AND {column} IS NOT NULL ORDER BY rowid LIMIT 1000"
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
                            "UPDATE devices SET device_access_key_secret = $1, secret_digest = COALESCE(secret_digest, $3) WHERE rowid = $2",
                        )
                    } else {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE {table} SET {column} = $1 WHERE rowid = $2"
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

    /// Drops every secret that is not a device's current credential: rotated-away and revoked
    /// ones, and the copies older operations kept. Returns how many values were cleared.
    pub(in crate::ledger) async fn purge(&self) -> Result<u64, LedgerError> {
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

    /// Rewrites the file without free pages and empties the WAL.
    async fn compact(&self) -> Result<(), LedgerError> {
        for sql in ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"] {
            sqlx::query(sql)
                .execute(&self.pool)
                .await
                .map_err(|e| self.db(e))?;
        }
        Ok(())
    }
}
