//! Ingest: CSV files into the ledger, before any call is sent.
//!
//! Every file is read once whole to validate it before anything is stored, so a file that fails
//! half-way (not UTF-8 at line 90,000, say) leaves no half-ingested rows behind; then the valid
//! files are stored in batches, and each file's fingerprint is recorded once all of it is in,
//! so a rerun does not read an unchanged file again. It never sends anything.

use std::path::PathBuf;

use anyhow::anyhow;

use crate::exit::Failure;
use crate::input::{self, CsvRows, InputSpec};
use crate::ledger::{IngestCounts, Ledger, LedgerError, LedgerLocation};

/// Rows per ingest transaction.
const BATCH: usize = 5000;

/// A file to ingest and the SHA-256 of its content.
pub struct Fresh {
    pub path: PathBuf,
    sha256: String,
}

/// Reads every file whole and stops at the first that cannot be used at all (exit 2).
pub fn validate(files: &[PathBuf], spec: &InputSpec) -> Result<(), Failure> {
    for file in files {
        for row in CsvRows::open(file, spec).map_err(Failure::usage)? {
            row.map_err(Failure::usage)?;
        }
    }
    Ok(())
}

/// The files whose content was not fully ingested already (same bytes, same reading):
/// rerunning on a completed million-row ledger must not read a million rows again.
pub async fn fresh_files(
    location: &LedgerLocation,
    operation: &str,
    files: &[PathBuf],
    spec: &InputSpec,
) -> Result<Vec<Fresh>, Failure> {
    if files.iter().any(|f| f.is_dir() || !f.exists()) {
        // Name the file exactly as the reader does.
        validate(files, spec)?;
    }
    let existing = if location.exists() {
        match Ledger::open_existing(location).await {
            Ok(ledger) => Some(ledger),
            // A database holds no ledger until the first run creates it there.
            Err(LedgerError::NotALedger { .. })
                if matches!(location, LedgerLocation::Postgres(_)) =>
            {
                None
            }
            Err(e) => return Err(Failure::from(e)),
        }
    } else {
        None
    };
    let mut fresh = Vec::new();
    for file in files {
        let sha256 = input::file_sha256(file)
            .map_err(|e| Failure::usage(anyhow!("{}: cannot read: {e}", file.display())))?;
        let known = match &existing {
            Some(l) => l
                .was_ingested(operation, &sha256, &spec.fingerprint_key())
                .await
                .map_err(Failure::from)?,
            None => false,
        };
        if !known {
            fresh.push(Fresh {
                path: file.clone(),
                sha256,
            });
        }
    }
    if let Some(l) = existing {
        l.close().await;
    }
    let paths: Vec<PathBuf> = fresh.iter().map(|f| f.path.clone()).collect();
    validate(&paths, spec)?;
    Ok(fresh)
}

/// `--again`: the finished targets of `files` go back to `pending`, so this run sends them anew
/// (their earlier outcomes stay in the history). Returns how many.
pub async fn again(
    ledger: &Ledger,
    operation: &str,
    files: &[PathBuf],
    spec: &InputSpec,
) -> Result<u64, Failure> {
    let mut total = 0;
    for file in files {
        let mut keys = Vec::with_capacity(BATCH);
        let mut rows = CsvRows::open(file, spec).map_err(Failure::usage)?;
        loop {
            let next = rows.next().transpose().map_err(Failure::usage)?;
            let end = next.is_none();
            if let Some(input::Row::Valid { target, .. }) = next {
                keys.push(target.key());
            }
            if keys.len() >= BATCH || (end && !keys.is_empty()) {
                total += ledger
                    .start_again(operation, &keys)
                    .await
                    .map_err(Failure::from)?;
                keys.clear();
            }
            if end {
                break;
            }
        }
    }
    Ok(total)
}

/// Stores validated files in batches, recording each file's fingerprint once it is all in.
pub async fn ingest(
    ledger: &Ledger,
    operation: &str,
    files: &[Fresh],
    spec: &InputSpec,
) -> Result<IngestCounts, Failure> {
    let mut total = IngestCounts::default();
    for file in files {
        let mut batch = Vec::with_capacity(BATCH);
        let mut rows = CsvRows::open(&file.path, spec).map_err(Failure::usage)?;
        let mut file_rows = 0u64;
        loop {
            let next = rows.next().transpose().map_err(Failure::usage)?;
            let end = next.is_none();
            if let Some(row) = next {
                batch.push(row);
            }
            if batch.len() >= BATCH || (end && !batch.is_empty()) {
                let c = ledger
                    .ingest(operation, &batch)
                    .await
                    .map_err(Failure::from)?;
                total.rows += c.rows;
                total.new_targets += c.new_targets;
                total.duplicates += c.duplicates;
                total.invalid += c.invalid;
                file_rows += c.rows;
                batch.clear();
            }
            if end {
                break;
            }
        }
        let shown = file.path.display().to_string();
        ledger
            .mark_ingested(
                operation,
                &file.sha256,
                &spec.fingerprint_key(),
                &shown,
                file_rows,
            )
            .await
            .map_err(Failure::from)?;
    }
    Ok(total)
}
