//! `export`: credentials (with the derived MQTT login) or failures, as CSV, a JSON array or a
//! spreadsheet, streamed page by page from the ledger. Export files hold
//! DeviceAccessKeySecrets, so they are written to a fresh 0600 file renamed over the target once
//! whole (never an existing file's mode, never through a link); this is the only place besides
//! the ledger that writes a device secret, and the only one that opens a sealed one.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::formula;
use crate::api::mqtt;
use crate::cli::ExportFormat;
use crate::ledger::{Ledger, LedgerError, Opener, Replacement};
use crate::secret::Secret;

/// Where an export goes: standard output, or a file that appears only once it is whole.
struct Destination(Option<Replacement>);

impl Destination {
    /// Opens the destination and the writer its rows go through.
    fn open(out: Option<&Path>) -> std::io::Result<(Destination, Box<dyn Write>)> {
        let Some(out) = out else {
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            return Ok((Destination(None), Box::new(stdout)));
        };
        let replacement = Replacement::create(out)?;
        let file = replacement.file().try_clone()?;
        Ok((
            Destination(Some(replacement)),
            Box::new(std::io::BufWriter::new(file)),
        ))
    }

    /// Puts a complete file in place (the writer was flushed by `RowWriter::finish`).
    fn commit(self) -> std::io::Result<()> {
        match self.0 {
            Some(replacement) => replacement.commit(),
            None => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct CredentialRow<'a> {
    client_id: &'a str,
    instance_id: &'a str,
    device_access_key_id: &'a str,
    device_access_key_secret: &'a str,
    mqtt_username: String,
    mqtt_password: String,
    state: &'a str,
    /// The operation that gave the credential (exports of what devices hold now).
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<&'a str>,
}

impl<'a> CredentialRow<'a> {
    fn new(
        instance_id: &'a str,
        client_id: &'a str,
        key_id: &'a str,
        secret: &'a Secret,
        state: &'a str,
    ) -> Self {
        CredentialRow {
            client_id,
            instance_id,
            device_access_key_id: key_id,
            device_access_key_secret: secret.expose(),
            mqtt_username: mqtt::username(key_id, instance_id),
            mqtt_password: mqtt::password(secret.expose(), client_id),
            state,
            operation: None,
        }
    }
}

/// Opens the ledger's secrets: sealed ones need the identity, and without it nothing is written.
struct Unsealer(Option<Opener>);

impl Unsealer {
    fn new(ledger: &Ledger, identity: Option<&Path>) -> Result<Self, LedgerError> {
        let sealing = |reason: String| LedgerError::Sealing {
            path: ledger.path().to_owned(),
            reason,
        };
        match identity {
            Some(path) => Ok(Unsealer(Some(Opener::from_file(path).map_err(sealing)?))),
            None if ledger.is_sealed() => Err(sealing(
                "its secrets are sealed; pass --identity FILE (the age identity of one of its recipients)".into(),
            )),
            None => Ok(Unsealer(None)),
        }
    }

    fn open(&self, ledger: &Ledger, secret: &Secret) -> Result<Secret, LedgerError> {
        match &self.0 {
            Some(opener) => opener.open(secret).map_err(|reason| LedgerError::Sealing {
                path: ledger.path().to_owned(),
                reason,
            }),
            None if crate::ledger::is_sealed(secret) => Err(LedgerError::Sealing {
                path: ledger.path().to_owned(),
                reason: "a secret is sealed; pass --identity FILE".into(),
            }),
            None => Ok(secret.clone()),
        }
    }
}

#[derive(Serialize)]
struct FailureRow<'a> {
    file: &'a str,
    line: i64,
    client_id: &'a str,
    state: &'a str,
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

/// Writes rows as CSV or as a JSON array, streaming, or as a spreadsheet of text cells.
enum RowWriter {
    Csv(Box<csv::Writer<Box<dyn Write>>>),
    Json { out: Box<dyn Write>, first: bool },
    Xlsx(Box<Spreadsheet>),
}

impl RowWriter {
    fn new(mut out: Box<dyn Write>, format: ExportFormat) -> std::io::Result<Self> {
        Ok(match format {
            ExportFormat::Csv => RowWriter::Csv(Box::new(csv::Writer::from_writer(out))),
            ExportFormat::Json => {
                out.write_all(b"[")?;
                RowWriter::Json { out, first: true }
            }
            ExportFormat::Xlsx => RowWriter::Xlsx(Box::new(Spreadsheet::new(out))),
        })
    }

    fn write<T: Serialize>(&mut self, row: &T) -> std::io::Result<()> {
        match self {
            RowWriter::Csv(w) => w.serialize(row).map_err(std::io::Error::other),
            RowWriter::Json { out, first } => {
                out.write_all(if *first { b"\n  " } else { b",\n  " })?;
                *first = false;
                serde_json::to_writer(&mut *out, row).map_err(std::io::Error::other)
            }
            RowWriter::Xlsx(sheet) => sheet.write(row),
        }
    }

    /// Ends the file. `header` is written when no row was (a CSV or sheet of no rows still
    /// names its columns, so a reader can tell "none" from "broken").
    fn finish(self, empty: Option<&[&str]>) -> std::io::Result<()> {
        match self {
            RowWriter::Csv(mut w) => {
                if let Some(header) = empty {
                    w.write_record(header).map_err(std::io::Error::other)?;
                }
                w.flush()
            }
            RowWriter::Json { mut out, .. } => {
                out.write_all(b"\n]\n")?;
                out.flush()
            }
            RowWriter::Xlsx(mut sheet) => {
                if let Some(header) = empty {
                    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
                    sheet.put_row(0, &header)?;
                }
                sheet.finish()
            }
        }
    }
}

/// The columns of a credential export (`operation` only in exports of what devices hold now).
const CREDENTIAL_COLUMNS: [&str; 8] = [
    "client_id",
    "instance_id",
    "device_access_key_id",
    "device_access_key_secret",
    "mqtt_username",
    "mqtt_password",
    "state",
    "operation",
];

/// The columns of a failures export.
const FAILURE_COLUMNS: [&str; 7] = [
    "file",
    "line",
    "client_id",
    "state",
    "code",
    "message",
    "request_id",
];

/// An `.xlsx` workbook of one sheet whose every cell is a string (never a formula or a number),
/// so a password beginning with `+` or `=` reaches the engineer intact.
struct Spreadsheet {
    out: Box<dyn Write>,
    workbook: rust_xlsxwriter::Workbook,
    next_row: u32,
}

impl Spreadsheet {
    fn new(out: Box<dyn Write>) -> Self {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        workbook.add_worksheet().set_name("credentials").ok();
        Spreadsheet {
            out,
            workbook,
            next_row: 0,
        }
    }

    /// The row's fields as the CSV export names and writes them.
    fn cells<T: Serialize>(row: &T) -> std::io::Result<(Vec<String>, Vec<String>)> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(row).map_err(std::io::Error::other)?;
        let bytes = w
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut r = csv::Reader::from_reader(&bytes[..]);
        let header = r.headers().map_err(std::io::Error::other)?.clone();
        let record = r
            .records()
            .next()
            .transpose()
            .map_err(std::io::Error::other)?;
        let strings = |rec: &csv::StringRecord| rec.iter().map(str::to_owned).collect();
        Ok((
            strings(&header),
            record.as_ref().map(strings).unwrap_or_default(),
        ))
    }

    fn write<T: Serialize>(&mut self, row: &T) -> std::io::Result<()> {
        const MAX_ROWS: u32 = 1_048_576;
        if self.next_row + 1 >= MAX_ROWS {
            return Err(std::io::Error::other(
                "a spreadsheet holds at most 1,048,575 rows; export to CSV or JSON, or select fewer with --state",
            ));
        }
        let (header, values) = Self::cells(row)?;
        if self.next_row == 0 {
            self.put_row(0, &header)?;
            self.next_row = 1;
        }
        self.put_row(self.next_row, &values)?;
        self.next_row += 1;
        Ok(())
    }

    /// One row of text cells.
    fn put_row(&mut self, row: u32, cells: &[String]) -> std::io::Result<()> {
        let text = rust_xlsxwriter::Format::new().set_num_format("@");
        let sheet = self
            .workbook
            .worksheet_from_index(0)
            .map_err(std::io::Error::other)?;
        for (col, value) in cells.iter().enumerate() {
            sheet
                .write_string_with_format(row, col as u16, value, &text)
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        let bytes = self
            .workbook
            .save_to_buffer()
            .map_err(std::io::Error::other)?;
        self.out.write_all(&bytes)?;
        self.out.flush()
    }
}

const PAGE: i64 = 5000;

/// Exports the credential every device of the ledger holds now (in the given states), with the
/// operation that gave it; returns how many rows were written. The secrets those credentials
/// replaced are dropped once the file is complete.
pub async fn export_current(
    ledger: &Ledger,
    states: &[&str],
    out: Option<&Path>,
    format: ExportFormat,
    identity: Option<&Path>,
) -> anyhow::Result<u64> {
    let unsealer = Unsealer::new(ledger, identity)?;
    let mut page = ledger.current_page(states, 0, PAGE).await?;
    // The first secret is opened before the file is created: a wrong identity writes nothing.
    if let Some(first) = page.first() {
        unsealer.open(ledger, &first.secret)?;
    }
    let (destination, out) = Destination::open(out)?;
    let mut w = RowWriter::new(out, format)?;
    let (mut n, mut exported) = (0u64, Vec::new());
    while let Some(last) = page.last() {
        let cursor = last.cursor;
        for r in &page {
            let secret = unsealer.open(ledger, &r.secret)?;
            let mut row = CredentialRow::new(
                ledger.instance_id(),
                &r.target,
                &r.key_id,
                &secret,
                &r.state,
            );
            row.operation = Some(&r.operation);
            w.write(&row)?;
            exported.push(r.cursor);
            n += 1;
        }
        page = ledger.current_page(states, cursor, PAGE).await?;
    }
    w.finish((n == 0).then_some(&CREDENTIAL_COLUMNS[..]))?;
    destination.commit()?;
    // A read-only ledger cannot record it: what the exported credentials replaced is kept.
    if !ledger.is_read_only() {
        ledger.mark_current_exported(&exported).await?;
    }
    Ok(n)
}

/// Exports one operation's rows of the given states, as recorded; returns how many rows were
/// written.
pub async fn export_credentials(
    ledger: &Ledger,
    operation: &str,
    states: &[&str],
    out: Option<&Path>,
    format: ExportFormat,
    identity: Option<&Path>,
) -> anyhow::Result<u64> {
    let unsealer = Unsealer::new(ledger, identity)?;
    let (destination, out) = Destination::open(out)?;
    let mut w = RowWriter::new(out, format)?;
    let (mut cursor, mut n) = (0i64, 0u64);
    let mut exported = Vec::new();
    loop {
        let page = ledger.export_page(operation, states, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for r in &page {
            let (Some(key_id), Some(secret)) = (&r.key_id, &r.secret) else {
                continue;
            };
            let secret = unsealer.open(ledger, secret)?;
            exported.push(r.id);
            let row =
                CredentialRow::new(ledger.instance_id(), &r.target, key_id, &secret, &r.state);
            w.write(&row)?;
            n += 1;
        }
    }
    // An operation's rows carry no `operation` column.
    w.finish((n == 0).then_some(&CREDENTIAL_COLUMNS[..7]))?;
    destination.commit()?;
    // Only once the file is complete: a rotated row's previous secret is no longer needed.
    if !ledger.is_read_only() {
        ledger.mark_exported(operation, &exported).await?;
    }
    Ok(n)
}

/// Exports every target that did not succeed, and every invalid input row.
pub async fn export_failures(
    ledger: &Ledger,
    operation: &str,
    states: &[&str],
    out: Option<&Path>,
    format: ExportFormat,
) -> anyhow::Result<u64> {
    let (destination, out) = Destination::open(out)?;
    let mut w = RowWriter::new(out, format)?;
    // A CSV of failures is read by people in a spreadsheet: what came from the input or the
    // server is made inert (JSON is for programs; the spreadsheet's cells are text already).
    let cell = |text: &'_ str| -> String {
        match format {
            ExportFormat::Csv => formula::inert(text).into_owned(),
            _ => text.to_owned(),
        }
    };
    let (mut cursor, mut n) = (0i64, 0u64);
    // Rows rejected at ingest are `invalid` too.
    while states.contains(&"invalid") {
        let page = ledger.rejects_page(operation, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.0;
        for (_, file, line, raw, reason) in &page {
            w.write(&FailureRow {
                file: &cell(file),
                line: *line,
                client_id: &cell(raw),
                state: "invalid",
                code: "InvalidInput",
                message: &cell(reason),
                request_id: "",
            })?;
            n += 1;
        }
    }
    cursor = 0;
    loop {
        let page = ledger.export_page(operation, states, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for r in &page {
            w.write(&FailureRow {
                file: &cell(&r.file),
                line: r.line,
                client_id: &cell(&r.target),
                state: &r.state,
                code: &cell(r.code.as_deref().unwrap_or("")),
                message: &cell(r.message.as_deref().unwrap_or("")),
                request_id: &cell(r.request_id.as_deref().unwrap_or("")),
            })?;
            n += 1;
        }
    }
    w.finish((n == 0).then_some(&FAILURE_COLUMNS[..]))?;
    destination.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of<T: Serialize>(row: &T) -> Vec<String> {
        Spreadsheet::cells(row).unwrap().0
    }

    /// The header written for an empty export is the one a row would have written.
    #[test]
    fn the_empty_exports_header_is_the_rows_header() {
        let secret = Secret::new("s".to_owned());
        let mut row = CredentialRow::new("post-cn-x", "GID_test@@@d", "k", &secret, "registered");
        assert_eq!(header_of(&row), CREDENTIAL_COLUMNS[..7]);
        row.operation = Some("register");
        assert_eq!(header_of(&row), CREDENTIAL_COLUMNS);
        let failure = FailureRow {
            file: "f",
            line: 1,
            client_id: "c",
            state: "failed",
            code: "X",
            message: "m",
            request_id: "r",
        };
        assert_eq!(header_of(&failure), FAILURE_COLUMNS);
    }
}
