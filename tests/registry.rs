//! The ledger as the registry of record: `export` hands out what every device holds now, `show`
//! tells a device's history, secrets can be sealed at rest, and spreadsheets get text cells.
//! Everything goes through the command line against the simulator.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use common::*;
use mqtt_provision::sim::{SimConfig, SimHandle};

/// Pace flags for a simulator that admits 5,000 calls/s.
const FAST: &[&str] = &["--account-qps", "3000", "--ip-qps", "3000"];

fn fast() -> SimConfig {
    SimConfig {
        account_qps: 5000,
        ip_qps: 5000,
        ..SimConfig::default()
    }
}

/// A CSV of the first `n` of `devices`.
fn subset(dir: &Path, name: &str, devices: &[String]) -> PathBuf {
    let mut s = String::from("client_id\n");
    for d in devices {
        s.push_str(d);
        s.push('\n');
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, s).unwrap();
    path
}

fn ids(n: usize, name: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("GID_test@@@{name}-{i:06}"))
        .collect()
}

/// `export` with `extra` flags into a file; (exit code, the file's text).
async fn export(
    ledger: &Path,
    extra: &[&str],
    ctx: &mqtt_provision::run::RunContext,
) -> (i32, String) {
    let out = ledger.with_extension("out.csv");
    let _ = std::fs::remove_file(&out);
    let mut args = vec![
        "export",
        "--ledger",
        ledger.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let code = run_cli(&args, ctx).await;
    (code, std::fs::read_to_string(&out).unwrap_or_default())
}

fn credentials(text: &str) -> HashMap<String, (String, String)> {
    credentials_from_csv(
        text,
        "client_id",
        "device_access_key_id",
        "device_access_key_secret",
    )
}

/// Column `name` of every row, by client_id.
fn column(text: &str, name: &str) -> HashMap<String, String> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let h = r.headers().unwrap().clone();
    let (c, k) = (
        h.iter().position(|x| x == "client_id").unwrap(),
        h.iter().position(|x| x == name).unwrap(),
    );
    r.records()
        .map(|rec| rec.unwrap())
        .map(|rec| (rec[c].to_owned(), rec[k].to_owned()))
        .collect()
}

/// Every byte of the ledger's files (the database, `-wal`, `-shm`), as text where it is text
/// (searching it with `str::contains`, which std ships optimised).
fn ledger_bytes(ledger: &Path) -> String {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = ledger.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(bytes) = std::fs::read(PathBuf::from(name)) {
            all.extend(bytes);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

fn contains(haystack: &str, needle: &str) -> bool {
    haystack.contains(needle)
}

/// An age key pair in the form age-keygen writes: (recipient, identity file).
fn key_pair(dir: &Path, name: &str) -> (String, PathBuf) {
    let identity = age::x25519::Identity::generate();
    let path = dir.join(format!("{name}.agekey"));
    std::fs::write(
        &path,
        format!(
            "# created: (test)\n# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        ),
    )
    .unwrap();
    (identity.to_public().to_string(), path)
}

#[tokio::test]
async fn export_hands_out_what_every_device_holds_after_rotations_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let ledger = dir.path().join("l.sqlite");
    let devices = ids(20, "reg");
    let all = subset(dir.path(), "all", &devices);
    let rotated = subset(dir.path(), "rotated", &devices[0..5]);
    let revoked = subset(dir.path(), "revoked", &devices[5..10]);
    assert_eq!(
        Run::new(&["register"], &all, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    let (_, first) = export(&ledger, &[], &ctx).await;
    let first = credentials(&first);
    assert_eq!(
        Run::new(&["rotate"], &rotated, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    assert_eq!(
        Run::new(&["revoke", "--yes"], &revoked, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );

    let (code, text) = export(&ledger, &[], &ctx).await;
    assert_eq!(code, 0);
    let exported = credentials(&text);
    let theirs = simulator_credentials(&sim);
    assert_eq!(theirs.len(), 15, "the service holds 15 credentials");
    assert_eq!(
        exported, theirs,
        "export equals the service's registry exactly"
    );
    for d in &devices[5..10] {
        assert!(!exported.contains_key(d), "revoked {d} is not exported");
    }
    for d in &devices[0..5] {
        assert_ne!(
            exported[d].1, first[d].1,
            "{d} comes out with its new secret"
        );
    }
    let (states, operations) = (column(&text, "state"), column(&text, "operation"));
    assert_eq!(states[&devices[0]], "rotated");
    assert_eq!(operations[&devices[0]], "rotate");
    assert_eq!(
        (
            states[&devices[15]].as_str(),
            operations[&devices[15]].as_str()
        ),
        ("registered", "register")
    );

    // The audit form still gives one operation's rows as recorded.
    let (code, audit) = export(&ledger, &["--operation", "register"], &ctx).await;
    assert_eq!(code, 0);
    assert_eq!(credentials(&audit).len(), 20);
    sim.stop().await;
}

#[tokio::test]
async fn a_fetch_only_ledger_exports_what_it_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let devices = ids(20, "lost");
    let csv = subset(dir.path(), "devices", &devices);
    let (first, second) = (
        dir.path().join("first.sqlite"),
        dir.path().join("second.sqlite"),
    );
    assert_eq!(
        Run::new(&["register"], &csv, &first, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    // The export was lost: a fresh ledger fetches every device.
    assert_eq!(
        Run::new(&["fetch"], &csv, &second, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    let (code, text) = export(&second, &[], &ctx).await;
    assert_eq!(code, 0);
    assert_eq!(credentials(&text), simulator_credentials(&sim));
    assert!(column(&text, "state").values().all(|s| s == "fetched"));
    sim.stop().await;
}

#[tokio::test]
async fn show_tells_a_rotated_devices_history_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let ledger = dir.path().join("l.sqlite");
    let devices = ids(3, "hist");
    let csv = subset(dir.path(), "devices", &devices);
    assert_eq!(
        Run::new(&["register"], &csv, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    let (_, before) = export(&ledger, &[], &ctx).await;
    assert_eq!(
        Run::new(&["rotate"], &csv, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    let (_, after) = export(&ledger, &[], &ctx).await;

    let bin = env!("CARGO_BIN_EXE_mqtt-provision");
    let ledger_arg = ledger.to_str().unwrap();
    let run = |json: bool| {
        let mut c = std::process::Command::new(bin);
        c.args(["show", &devices[1], "--ledger", ledger_arg]);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let text = run(false);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8(text.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("rotated, from rotate"), "{text}");
    assert!(
        lines[1].contains("register") && lines[1].contains("registered"),
        "{text}"
    );
    assert!(
        lines[2].contains("rotate") && lines[2].contains("rotated"),
        "{text}"
    );
    assert!(lines[1].contains("devices.csv:3"), "file and line: {text}");

    let json: serde_json::Value = serde_json::from_slice(&run(true).stdout).unwrap();
    let events = json["events"].as_array().unwrap();
    let ops: Vec<&str> = events
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["register", "rotate"]);
    assert!(events[0]["at_ms"].as_i64().unwrap() <= events[1]["at_ms"].as_i64().unwrap());
    let key = credentials(&after)[&devices[1]].0.clone();
    assert_eq!(json["now"]["device_access_key_id"], key.as_str());
    assert_eq!(events[1]["device_access_key_id"], key.as_str());

    let shown = format!("{text}{json}");
    for (_, (_, secret)) in credentials(&before).into_iter().chain(credentials(&after)) {
        assert!(!shown.contains(&secret), "show printed a secret");
    }
    let unknown = std::process::Command::new(bin)
        .args(["show", "GID_test@@@nobody", "--ledger", ledger_arg])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    sim.stop().await;
}

#[tokio::test]
async fn a_sealed_ledger_holds_no_secret_and_opens_only_with_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let ledger = dir.path().join("sealed.sqlite");
    let (recipient, identity) = key_pair(dir.path(), "line");
    let (_, stranger) = key_pair(dir.path(), "stranger");
    let devices = ids(30, "seal");
    let csv = subset(dir.path(), "devices", &devices);
    let register = Run::new(&["register"], &csv, &ledger, &sim);
    assert_eq!(
        register
            .exit(&[FAST, &["--encrypt-to", &recipient]].concat(), &ctx)
            .await,
        0
    );
    let rotate = Run::new(
        &["rotate"],
        &subset(dir.path(), "some", &devices[0..10]),
        &ledger,
        &sim,
    );
    // The ledger remembers its recipients: later runs need not repeat them.
    assert_eq!(rotate.exit(FAST, &ctx).await, 0);

    let theirs = simulator_credentials(&sim);
    let bytes = ledger_bytes(&ledger);
    assert!(bytes.len() > 10_000);
    for (key_id, secret) in theirs.values() {
        assert!(
            contains(&bytes, key_id),
            "key ids are not secret and stay readable"
        );
        assert!(
            !contains(&bytes, secret),
            "a secret is in the ledger's files as bytes"
        );
    }

    let (code, text) = export(&ledger, &[], &ctx).await;
    assert_eq!(code, 2, "export of a sealed ledger without its identity");
    assert!(text.is_empty(), "nothing was written");
    let (code, text) = export(&ledger, &["--identity", stranger.to_str().unwrap()], &ctx).await;
    assert_eq!(
        (code, text.as_str()),
        (2, ""),
        "another identity opens nothing"
    );
    let (code, text) = export(&ledger, &["--identity", identity.to_str().unwrap()], &ctx).await;
    assert_eq!(code, 0);
    assert_eq!(credentials(&text), theirs);

    // Other recipients on a sealed ledger are refused before anything is sent.
    let (other, _) = key_pair(dir.path(), "other");
    assert_eq!(register.exit(&["--encrypt-to", &other], &ctx).await, 2);
    sim.stop().await;
}

async fn plain_ledger_of(n: usize, dir: &Path, sim: &SimHandle) -> PathBuf {
    let ctx = context_for(sim);
    let ledger = dir.join("plain.sqlite");
    let csv = subset(dir, "devices", &ids(n, "plain"));
    assert_eq!(
        Run::new(&["register"], &csv, &ledger, sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    assert_eq!(
        Run::new(&["rotate"], &csv, &ledger, sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    ledger
}

#[tokio::test]
async fn a_plain_ledger_is_sealed_in_place_and_a_kill_mid_way_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let ledger = plain_ledger_of(1000, dir.path(), &sim).await;
    let (recipient, identity) = key_pair(dir.path(), "line");
    let theirs = simulator_credentials(&sim);
    let (_, before) = export(&ledger, &[], &ctx).await;
    assert_eq!(credentials(&before), theirs);

    // A plain ledger that holds secrets is not half-sealed by a run's --encrypt-to.
    let csv = dir.path().join("devices.csv");
    let register = Run::new(&["register"], &csv, &ledger, &sim);
    assert_eq!(register.exit(&["--encrypt-to", &recipient], &ctx).await, 2);

    let bin = env!("CARGO_BIN_EXE_mqtt-provision");
    let seal = || {
        std::process::Command::new(bin)
            .args(["ledger", "seal", "--ledger", ledger.to_str().unwrap()])
            .args(["--encrypt-to", &recipient])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut killed_mid_way = 0;
    for delay_ms in [30, 80, 150, 250] {
        let mut child = seal();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            killed_mid_way += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let (code, text) = export(&ledger, &["--identity", identity.to_str().unwrap()], &ctx).await;
        assert_eq!(code, 0, "after a kill at {delay_ms} ms the ledger opens");
        assert_eq!(
            credentials(&text),
            theirs,
            "nothing lost after a kill at {delay_ms} ms"
        );
    }
    assert!(killed_mid_way > 0, "at least one seal was cut while it ran");
    let done = seal().wait_with_output().unwrap();
    assert!(done.status.success(), "{done:?}");

    let bytes = ledger_bytes(&ledger);
    for (_, secret) in theirs.values() {
        assert!(
            !contains(&bytes, secret),
            "a plaintext secret survived sealing"
        );
    }
    let (code, text) = export(&ledger, &[], &ctx).await;
    assert_eq!((code, text.as_str()), (2, ""));
    let (code, text) = export(&ledger, &["--identity", identity.to_str().unwrap()], &ctx).await;
    assert_eq!(code, 0);
    assert_eq!(credentials(&text), theirs);
    // Status needs no identity.
    assert_eq!(
        run_cli(&["status", "--ledger", ledger.to_str().unwrap()], &ctx).await,
        0
    );
    sim.stop().await;
}

#[tokio::test]
async fn purge_clears_the_secrets_no_device_holds() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let ledger = dir.path().join("l.sqlite");
    let devices = ids(10, "purge");
    let csv = subset(dir.path(), "devices", &devices);
    assert_eq!(
        Run::new(&["register"], &csv, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    let (_, old) = export(&ledger, &[], &ctx).await;
    let old = credentials(&old);
    assert_eq!(
        Run::new(&["rotate"], &csv, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    assert!(
        old.values()
            .any(|(_, s)| contains(&ledger_bytes(&ledger), s)),
        "before a purge the rotated-away secrets are kept"
    );
    let ledger_arg = ledger.to_str().unwrap();
    assert_eq!(
        run_cli(&["ledger", "purge", "--ledger", ledger_arg], &ctx).await,
        0
    );
    let bytes = ledger_bytes(&ledger);
    for (_, secret) in old.values() {
        assert!(
            !contains(&bytes, secret),
            "a rotated-away secret survived the purge"
        );
    }
    let (code, text) = export(&ledger, &[], &ctx).await;
    assert_eq!(code, 0);
    assert_eq!(credentials(&text), simulator_credentials(&sim));
    sim.stop().await;
}

#[tokio::test]
async fn a_spreadsheet_export_keeps_every_password_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let ledger = dir.path().join("l.sqlite");
    let csv = subset(dir.path(), "devices", &ids(200, "xlsx"));
    assert_eq!(
        Run::new(&["register"], &csv, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    let (_, text) = export(&ledger, &[], &ctx).await;
    let passwords = column(&text, "mqtt_password");
    assert!(
        passwords
            .values()
            .any(|p| p.starts_with('+') || p.starts_with('=')),
        "some of 200 Base64 passwords begin with + or = (the case that breaks a CSV)"
    );

    let out = dir.path().join("credentials.xlsx");
    let args = [
        "export",
        "--ledger",
        ledger.to_str().unwrap(),
        "--format",
        "xlsx",
        "--out",
        out.to_str().unwrap(),
    ];
    assert_eq!(run_cli(&args, &ctx).await, 0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut read = |name: &str| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut zip.by_name(name).unwrap(), &mut s).unwrap();
        s
    };
    let sheet = read("xl/worksheets/sheet1.xml");
    let strings = read("xl/sharedStrings.xml");
    assert!(!sheet.contains("<f>"), "no formula cells");
    let cells = sheet.matches("<c ").count();
    assert_eq!(
        cells,
        sheet.matches("t=\"s\"").count(),
        "every cell is a string"
    );
    assert_eq!(cells, 201 * 8, "a header and 200 rows of 8 columns");
    for p in passwords.values() {
        assert!(
            strings.contains(&format!(">{p}<")),
            "password {p} is kept as text"
        );
    }
    // A spreadsheet is a file, not a stream.
    let to_stdout = [
        "export",
        "--ledger",
        ledger.to_str().unwrap(),
        "--format",
        "xlsx",
    ];
    assert_eq!(run_cli(&to_stdout, &ctx).await, 2);
    sim.stop().await;
}
