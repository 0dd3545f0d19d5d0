//! CSV input: streams device rows from a file, one at a time, and validates each ClientId with
//! the shared rules. A row that fails becomes an [`Row::Invalid`] with its file, line and reason;
//! a file that cannot be read as this kind of CSV at all is one [`InputError`] naming file and line.
//!
//! Never reads a whole file into memory, never panics on any input, never sends anything.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::client_id::ClientId;
use crate::target::{CertificateId, Target};

/// How ClientIds are found in a file (validated flags, see `cli`).
#[derive(Debug, Clone, Default)]
pub struct InputSpec {
    /// Column holding the ClientId (default `client_id`, or `device_id` with a group).
    pub column: Option<String>,
    /// Compose `<group>@@@<value>` from a device-id column.
    pub group_id: Option<String>,
    /// Device certificates: rows of `device_sn, ca_sn` instead of ClientIds.
    pub certificates: bool,
    /// One-column file without a header row.
    pub no_header: bool,
}

impl InputSpec {
    /// A stable description, stored with a file's fingerprint: the same bytes read another way
    /// are another input.
    pub fn fingerprint_key(&self) -> String {
        format!(
            "column={:?};group={:?};no_header={}",
            self.column, self.group_id, self.no_header
        )
    }
}

/// SHA-256 of a file's content, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// One data row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    Valid {
        target: Target,
        file: Arc<str>,
        line: u64,
    },
    Invalid {
        raw: String,
        file: Arc<str>,
        line: u64,
        reason: String,
    },
}

/// A whole-file error: the file cannot be used at all (exit 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("{file}: cannot open: {reason}")]
    Open { file: String, reason: String },
    #[error("{file}: is a directory, not a CSV file")]
    IsDirectory { file: String },
    #[error("{file}: line {line}: not valid UTF-8 (save the file as UTF-8)")]
    NotUtf8 { file: String, line: u64 },
    #[error("{file}: line {line}: {reason}")]
    Malformed {
        file: String,
        line: u64,
        reason: String,
    },
    #[error("{file}: empty file: expected a header row naming the '{column}' column")]
    Empty { file: String, column: String },
    #[error(
        "{file}: line 1: no '{column}' column in the header (found: {found}); choose one with --column{hint}"
    )]
    MissingColumn {
        file: String,
        column: String,
        found: String,
        hint: String,
    },
    #[error("{file}: no data rows after the header")]
    NoRows { file: String },
}

/// Longest raw value kept for an invalid row's report: a 10 MB field must not fill the ledger.
const RAW_KEEP: usize = 80;

/// Streams the rows of one file.
pub struct CsvRows {
    reader: csv::Reader<File>,
    file: Arc<str>,
    column: usize,
    column_name: String,
    group_id: Option<String>,
    /// The `ca_sn` column, for device certificates.
    ca_column: Option<usize>,
    record: csv::ByteRecord,
    rows: u64,
    done: bool,
    /// The csv crate counts a CRLF file's lines one short (a record starts at the previous
    /// line's `\n`); CRLF files get that line back.
    line_offset: u64,
}

impl CsvRows {
    pub fn open(path: &Path, spec: &InputSpec) -> Result<Self, InputError> {
        let shown = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|e| InputError::Open {
            file: shown.clone(),
            reason: e.to_string(),
        })?;
        if metadata.is_dir() {
            return Err(InputError::IsDirectory { file: shown });
        }
        let file = File::open(path).map_err(|e| InputError::Open {
            file: shown.clone(),
            reason: e.to_string(),
        })?;
        let line_offset = u64::from(first_line_ends_with_crlf(&file));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(!spec.no_header)
            .flexible(true)
            .from_reader(file);
        let default_column = if spec.certificates {
            "device_sn"
        } else if spec.group_id.is_some() {
            "device_id"
        } else {
            "client_id"
        };
        let column_name = spec
            .column
            .clone()
            .unwrap_or_else(|| default_column.to_owned());
        let names: Option<Vec<String>> = if spec.no_header {
            None
        } else {
            let headers = reader
                .byte_headers()
                .map_err(|e| csv_error(&shown, e))?
                .clone();
            if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
                return Err(InputError::Empty {
                    file: shown,
                    column: column_name,
                });
            }
            let names = headers
                .iter()
                .map(|h| std::str::from_utf8(h).map(|s| s.trim().to_owned()))
                .collect::<Result<_, _>>()
                .map_err(|_| InputError::NotUtf8 {
                    file: shown.clone(),
                    line: 1,
                })?;
            Some(names)
        };
        let find = |wanted: &str, position_without_header: usize| -> Result<usize, InputError> {
            let Some(names) = &names else {
                return Ok(position_without_header);
            };
            if let Some(i) = names.iter().position(|n| n == wanted) {
                return Ok(i);
            }
            let hint = if names.iter().any(|n| n == "device_id")
                && spec.group_id.is_none()
                && !spec.certificates
            {
                ", or compose ClientIds from 'device_id' with --group-id GID_xxx".to_owned()
            } else if !spec.certificates
                && names
                    .iter()
                    .any(|n| crate::client_id::ClientId::parse(n).is_ok())
            {
                "; but line 1 holds a ClientId, not column names: a file without a header row needs --no-header".to_owned()
            } else {
                String::new()
            };
            let found = names
                .iter()
                .map(|n| format!("'{}'", truncate(n)))
                .collect::<Vec<_>>()
                .join(", ");
            Err(InputError::MissingColumn {
                file: shown.clone(),
                column: wanted.to_owned(),
                found,
                hint,
            })
        };
        let column = find(&column_name, 0)?;
        let ca_column = if spec.certificates {
            Some(find("ca_sn", 1)?)
        } else {
            None
        };
        Ok(CsvRows {
            reader,
            file: shown.into(),
            column,
            column_name,
            group_id: spec.group_id.clone(),
            ca_column,
            record: csv::ByteRecord::new(),
            rows: 0,
            done: false,
            line_offset,
        })
    }

    fn row(&self, line: u64) -> Result<Row, InputError> {
        let invalid = |raw: &str, reason: String| Row::Invalid {
            raw: truncate(raw),
            file: self.file.clone(),
            line,
            reason,
        };
        let Some(field) = self.record.get(self.column) else {
            return Ok(invalid(
                "",
                format!(
                    "row has {} field(s); no '{}' column",
                    self.record.len(),
                    self.column_name
                ),
            ));
        };
        let value = std::str::from_utf8(field)
            .map_err(|_| InputError::NotUtf8 {
                file: self.file.to_string(),
                line,
            })?
            .trim();
        if let Some(ca_column) = self.ca_column {
            let ca = std::str::from_utf8(self.record.get(ca_column).unwrap_or_default())
                .map_err(|_| InputError::NotUtf8 {
                    file: self.file.to_string(),
                    line,
                })?
                .trim();
            return Ok(match CertificateId::new(value, ca) {
                Ok(certificate) => Row::Valid {
                    target: Target::Certificate(certificate),
                    file: self.file.clone(),
                    line,
                },
                Err(reason) => invalid(&format!("{value} / {ca}"), reason),
            });
        }
        let parsed = match &self.group_id {
            Some(_) if value.is_empty() => {
                return Ok(invalid(value, "device id is empty".into()));
            }
            Some(group) => ClientId::compose(group, value),
            None => ClientId::parse(value),
        };
        Ok(match parsed {
            Ok(client_id) => Row::Valid {
                target: Target::Device(client_id),
                file: self.file.clone(),
                line,
            },
            Err(e) => invalid(value, e.to_string()),
        })
    }
}

impl Iterator for CsvRows {
    type Item = Result<Row, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.reader.read_byte_record(&mut self.record) {
            Ok(true) => {
                self.rows += 1;
                let line = self.record.position().map_or(0, |p| p.line()) + self.line_offset;
                let row = self.row(line);
                if row.is_err() {
                    self.done = true;
                }
                Some(row)
            }
            Ok(false) => {
                self.done = true;
                (self.rows == 0).then(|| {
                    Err(InputError::NoRows {
                        file: self.file.to_string(),
                    })
                })
            }
            Err(e) => {
                self.done = true;
                Some(Err(csv_error(&self.file, e)))
            }
        }
    }
}

/// Whether the first line break in the first 64 KiB is CRLF. Reads through a duplicate handle
/// with positioned reads, so the reader's own cursor stays at the start.
fn first_line_ends_with_crlf(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    match buf[..n].iter().position(|&b| b == b'\n') {
        Some(i) => i > 0 && buf[i - 1] == b'\r',
        None => false,
    }
}

fn csv_error(file: &str, e: csv::Error) -> InputError {
    let line = e.position().map_or(0, |p| p.line());
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => InputError::NotUtf8 {
            file: file.to_owned(),
            line,
        },
        csv::ErrorKind::Io(io) => InputError::Malformed {
            file: file.to_owned(),
            line,
            reason: io.to_string(),
        },
        _ => InputError::Malformed {
            file: file.to_owned(),
            line,
            reason: e.to_string(),
        },
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= RAW_KEEP {
        s.to_owned()
    } else {
        let head: String = s.chars().take(RAW_KEEP).collect();
        format!("{head}… ({} characters)", s.chars().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(content: &[u8], spec: &InputSpec) -> Result<Vec<Row>, InputError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, content).unwrap();
        CsvRows::open(&path, spec)?.collect()
    }

    fn valid_ids(rows: &[Row]) -> Vec<(String, u64)> {
        rows.iter()
            .filter_map(|r| match r {
                Row::Valid { target, line, .. } => Some((target.key(), *line)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bom_crlf_quotes_and_line_numbers() {
        let rows = rows_of(b"\xEF\xBB\xBFclient_id,note\r\nGID_test@@@a,\"x, y\"\r\n\"GID_test@@@b\",\"multi\nline\"\r\nGID_test@@@c,z\r\n", &InputSpec::default()).unwrap();
        assert_eq!(
            valid_ids(&rows),
            vec![
                ("GID_test@@@a".into(), 2),
                ("GID_test@@@b".into(), 3),
                ("GID_test@@@c".into(), 5)
            ]
        );
    }

    #[test]
    fn device_id_with_group_and_no_header() {
        let spec = InputSpec {
            group_id: Some("GID_line".into()),
            ..Default::default()
        };
        let rows = rows_of(b"device_id\n0001\n\n", &spec).unwrap();
        assert_eq!(valid_ids(&rows), vec![("GID_line@@@0001".into(), 2)]);
        let spec = InputSpec {
            no_header: true,
            ..Default::default()
        };
        let rows = rows_of(b"GID_test@@@x\nbad\n", &spec).unwrap();
        assert_eq!(valid_ids(&rows).len(), 1);
        assert!(
            matches!(&rows[1], Row::Invalid { line: 2, reason, .. } if reason.contains("separator"))
        );
    }

    #[test]
    fn whole_file_errors_name_file_and_line() {
        let d = InputSpec::default();
        assert!(matches!(rows_of(b"", &d), Err(InputError::Empty { .. })));
        assert!(matches!(
            rows_of(b"client_id\n", &d),
            Err(InputError::NoRows { .. })
        ));
        let e = rows_of(b"id,name\nx,y\n", &d).unwrap_err();
        assert!(
            e.to_string().contains("no 'client_id' column")
                && e.to_string().contains("'id', 'name'"),
            "{e}"
        );
        let e = rows_of(b"client_id\nGID_test@@@a\nGID_test@@@\xff\n", &d).unwrap_err();
        assert_eq!(
            e,
            InputError::NotUtf8 {
                file: e_file(&e),
                line: 3
            }
        );
        let e = rows_of(b"device_id\n1\n", &d).unwrap_err();
        assert!(e.to_string().contains("--group-id"), "{e}");
    }

    fn e_file(e: &InputError) -> String {
        match e {
            InputError::NotUtf8 { file, .. } => file.clone(),
            _ => String::new(),
        }
    }

    #[test]
    fn long_values_are_truncated_in_reports() {
        let mut content = b"client_id\n".to_vec();
        content.extend(std::iter::repeat_n(b'x', 1_000_000));
        let rows = rows_of(&content, &InputSpec::default()).unwrap();
        match &rows[0] {
            Row::Invalid { raw, reason, .. } => {
                assert!(
                    raw.len() < 200 && reason.contains("1000000 characters"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod certificate_tests {
    use super::*;

    #[test]
    fn certificate_rows_need_both_columns_and_a_short_ca_sn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        let long = "C".repeat(129);
        std::fs::write(
            &path,
            format!("ca_sn,device_sn\nCA1,SN1\nCA1,\n{long},SN3\n"),
        )
        .unwrap();
        let spec = InputSpec {
            certificates: true,
            ..Default::default()
        };
        let rows: Vec<Row> = CsvRows::open(&path, &spec)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            matches!(&rows[0], Row::Valid { target: Target::Certificate(c), .. } if (c.device_sn.as_str(), c.ca_sn.as_str()) == ("SN1", "CA1"))
        );
        assert!(matches!(&rows[1], Row::Invalid { reason, .. } if reason == "device_sn is empty"));
        assert!(matches!(&rows[2], Row::Invalid { reason, .. } if reason.contains("129 bytes")));
        std::fs::write(&path, "device_sn\nSN1\n").unwrap();
        assert!(
            matches!(CsvRows::open(&path, &spec), Err(InputError::MissingColumn { column, .. }) if column == "ca_sn")
        );
    }
}
