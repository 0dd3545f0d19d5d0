//! `export`: credentials (with the derived MQTT login) or failures, as CSV or a JSON array,
//! streamed page by page from the ledger. Export files hold DeviceAccessKeySecrets, so they are
//! created 0600; this is the only place besides the ledger that writes a device secret.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::api::mqtt;
use crate::ledger::{Ledger, create_private};

/// Opens the export destination: a new 0600 file, or standard output.
fn destination(out: Option<&Path>) -> std::io::Result<Box<dyn Write>> {
    let Some(out) = out else {
        return Ok(Box::new(std::io::BufWriter::new(std::io::stdout().lock())));
    };
    let file = create_private(out)?;
    file.set_len(0)?;
    Ok(Box::new(std::io::BufWriter::new(file)))
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

/// Writes rows as CSV or as a JSON array, streaming.
struct RowWriter {
    csv: Option<csv::Writer<Box<dyn Write>>>,
    json: Option<Box<dyn Write>>,
    first: bool,
}

impl RowWriter {
    fn new(out: Box<dyn Write>, json: bool) -> std::io::Result<Self> {
        if json {
            let mut out = out;
            out.write_all(b"[")?;
            Ok(RowWriter {
                csv: None,
                json: Some(out),
                first: true,
            })
        } else {
            Ok(RowWriter {
                csv: Some(csv::Writer::from_writer(out)),
                json: None,
                first: true,
            })
        }
    }

    fn write<T: Serialize>(&mut self, row: &T) -> std::io::Result<()> {
        if let Some(w) = &mut self.csv {
            return w.serialize(row).map_err(std::io::Error::other);
        }
        let out = self.json.as_mut().expect("one of the two");
        out.write_all(if self.first { b"\n  " } else { b",\n  " })?;
        self.first = false;
        serde_json::to_writer(&mut *out, row).map_err(std::io::Error::other)
    }

    fn finish(self) -> std::io::Result<()> {
        if let Some(mut w) = self.csv {
            return w.flush();
        }
        let mut out = self.json.expect("one of the two");
        out.write_all(b"\n]\n")?;
        out.flush()
    }
}

const PAGE: i64 = 5000;

/// Exports credentials of the given states; returns how many rows were written.
pub async fn export_credentials(
    ledger: &Ledger,
    operation: &str,
    states: &[&str],
    out: Option<&Path>,
    json: bool,
) -> anyhow::Result<u64> {
    let mut w = RowWriter::new(destination(out)?, json)?;
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
            exported.push(r.id);
            w.write(&CredentialRow {
                client_id: &r.target,
                instance_id: ledger.instance_id(),
                device_access_key_id: key_id,
                device_access_key_secret: secret.expose(),
                mqtt_username: mqtt::username(key_id, ledger.instance_id()),
                mqtt_password: mqtt::password(secret.expose(), &r.target),
                state: &r.state,
            })?;
            n += 1;
        }
    }
    w.finish()?;
    // Only once the file is complete: a rotated row's previous secret is no longer needed.
    ledger.mark_exported(operation, &exported).await?;
    Ok(n)
}

/// Exports every target that did not succeed, and every invalid input row.
pub async fn export_failures(
    ledger: &Ledger,
    operation: &str,
    out: Option<&Path>,
    json: bool,
) -> anyhow::Result<u64> {
    let mut w = RowWriter::new(destination(out)?, json)?;
    let (mut cursor, mut n) = (0i64, 0u64);
    loop {
        let page = ledger.rejects_page(operation, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.0;
        for (_, file, line, raw, reason) in &page {
            w.write(&FailureRow {
                file,
                line: *line,
                client_id: raw,
                state: "invalid",
                code: "InvalidInput",
                message: reason,
                request_id: "",
            })?;
            n += 1;
        }
    }
    let states = ["invalid", "failed", "pending", "not_found"];
    cursor = 0;
    loop {
        let page = ledger.export_page(operation, &states, cursor, PAGE).await?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for r in &page {
            w.write(&FailureRow {
                file: &r.file,
                line: r.line,
                client_id: &r.target,
                state: &r.state,
                code: r.code.as_deref().unwrap_or(""),
                message: r.message.as_deref().unwrap_or(""),
                request_id: r.request_id.as_deref().unwrap_or(""),
            })?;
            n += 1;
        }
    }
    w.finish()?;
    Ok(n)
}
