//! The bad-input corpus (`fixtures/bad/`): every file ends either as per-row `invalid` with its
//! reason, or as one whole-file error (exit 2) naming the file and the line. Nothing panics.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/bad")
        .join(name)
}

struct Run {
    code: i32,
    stderr: String,
    ledger: PathBuf,
    _dir: tempfile::TempDir,
}

/// `register --simulate`: ingests and validates, then registers the valid rows with the built-in
/// simulator (a dry run would leave no ledger to inspect), needs no credentials.
fn ingest(file: &Path) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("l.sqlite");
    let out = Command::new(BIN)
        .args([
            "register",
            "--simulate",
            "--quiet",
            "--instance-id",
            "post-cn-bad01",
            "--ledger",
        ])
        .arg(&ledger)
        .arg(file)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "panic on {}: {stderr}",
        file.display()
    );
    Run {
        code: out.status.code().expect("exited normally"),
        stderr,
        ledger,
        _dir: dir,
    }
}

fn whole_file_error(name: &str, needles: &[&str]) {
    let run = ingest(&fixture(name));
    assert_eq!(run.code, 2, "{name}: {}", run.stderr);
    assert!(
        run.stderr.contains(name),
        "{name}: the error names the file: {}",
        run.stderr
    );
    for n in needles {
        assert!(
            run.stderr.contains(n),
            "{name}: expected {n:?} in {}",
            run.stderr
        );
    }
    assert_eq!(
        run.stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one clear sentence: {}",
        run.stderr
    );
    assert!(!run.ledger.exists(), "{name}: nothing was ingested");
}

fn counts(run: &Run) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--ledger"])
        .arg(&run.ledger)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["operations"][0]["counts"].clone()
}

fn failures(run: &Run) -> String {
    let out = Command::new(BIN)
        .args(["export", "--failures", "--ledger"])
        .arg(&run.ledger)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Per-row outcome: `valid` devices registered, `invalid` rows with reasons found in the failures.
fn per_row(name: &str, valid: i64, invalid: i64, reasons: &[&str]) {
    let run = ingest(&fixture(name));
    assert_eq!(
        run.code,
        if invalid > 0 { 1 } else { 0 },
        "{name}: {}",
        run.stderr
    );
    let c = counts(&run);
    assert_eq!(c["registered"].as_i64().unwrap_or(0), valid, "{name}: {c}");
    assert_eq!(c["invalid"].as_i64().unwrap_or(0), invalid, "{name}: {c}");
    let f = failures(&run);
    for r in reasons {
        assert!(f.contains(r), "{name}: expected {r:?} in\n{f}");
    }
}

#[test]
fn wrong_or_missing_header_and_missing_column() {
    whole_file_error(
        "wrong-header.csv",
        &["line 1", "no 'client_id' column", "'clientid'"],
    );
    whole_file_error(
        "missing-header.csv",
        &["line 1", "no 'client_id' column", "needs --no-header"],
    );
    whole_file_error("missing-column.csv", &["line 1", "'device_sn', 'name'"]);
}

#[test]
fn empty_and_header_only() {
    whole_file_error("empty.csv", &["empty file"]);
    whole_file_error("header-only.csv", &["no data rows"]);
}

#[test]
fn bom_crlf_and_quoted_fields_are_read_correctly() {
    per_row("bom.csv", 2, 0, &[]);
    per_row("crlf.csv", 2, 0, &[]);
    per_row("quoted.csv", 3, 0, &[]);
}

#[test]
fn invalid_utf8_and_binary_junk_are_whole_file_errors() {
    whole_file_error("invalid-utf8.csv", &["line 3", "not valid UTF-8"]);
    let run = ingest(&fixture("binary-junk.bin"));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("binary-junk.bin"), "{}", run.stderr);
}

#[test]
fn each_clientid_rule_is_a_per_row_reason() {
    per_row("too-long.csv", 1, 1, &["has 65 characters; at most 64"]);
    per_row(
        "illegal-chars.csv",
        1,
        3,
        &["character '/'", "character ' '", "character ':'"],
    );
    per_row(
        "wrong-prefix.csv",
        1,
        2,
        &["must start with 'GID_' or 'GID-'"],
    );
    per_row(
        "short-group.csv",
        1,
        1,
        &["group 'GID_ab' has 6 characters"],
    );
    per_row(
        "empty-device.csv",
        1,
        1,
        &["device part after '@@@' is empty"],
    );
}

#[test]
fn duplicates_are_registered_once() {
    let run = ingest(&fixture("duplicates.csv"));
    assert_eq!(run.code, 0);
    assert_eq!(counts(&run)["registered"], 2);
}

#[test]
fn a_10_mb_line_is_an_invalid_row_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-line.csv");
    let mut content = b"client_id\nGID_test@@@ok-1\n".to_vec();
    content.extend(std::iter::repeat_n(b'z', 10 * 1024 * 1024));
    content.extend(b"\nGID_test@@@ok-2\n");
    std::fs::write(&path, content).unwrap();
    let run = ingest(&path);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(counts(&run)["registered"], 2);
    let f = failures(&run);
    assert!(
        f.contains("10485760 characters"),
        "{}",
        &f[..f.len().min(500)]
    );
    assert!(
        f.len() < 2000,
        "the report keeps a short excerpt, not 10 MB"
    );
}

#[test]
fn a_directory_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = ingest(dir.path());
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is a directory"), "{}", run.stderr);
    let run = ingest(&dir.path().join("nope.csv"));
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("nope.csv") && run.stderr.contains("No such file"),
        "{}",
        run.stderr
    );
}
