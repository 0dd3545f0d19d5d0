//! The real binary under abuse, against a simulator running as its own process: kill -9 at
//! random moments, a simulator restart, a locked ledger, a second worker, a Ctrl-C storm, and
//! secrets in every output. Short forms run in `cargo test`; `--ignored` runs the long forms.
//!
//! Every test runs on a SQLite ledger, or with `MQTT_PROVISION_TEST_LEDGER=postgres` on a
//! PostgreSQL one (tests/common/ledgers.rs), except those about a SQLite file, which under that
//! setting say `SQLite-only` and return: a ledger locked by another process (SQLite's write
//! lock), a full disk and a read-only file system under the ledger file (a tmpfs of the test's
//! own). On PostgreSQL a second worker on the same ledger is not refused but joins the run (the
//! fleet, by design); that test checks the PostgreSQL story instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");
const AK: &str = "TORTUREAK";
const SECRET: &str = "torture-access-key-secret";
const INSTANCE: &str = "post-cn-torture01";

#[path = "common/ledgers.rs"]
mod ledgers;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/sim_process.rs"]
mod sim_process;
use ledgers::{TestLedger, sqlite_only};
use sim_process::SimProcess;

/// The simulator process of these tests: their instance and key, a `--journal`.
fn start_sim(state: &Path, listen_port: u16, extra: &[&str]) -> SimProcess {
    let mut args = vec!["--journal", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    SimProcess::start(BIN, listen_port, INSTANCE, &format!("{AK}:{SECRET}"), &args)
}

fn worker(csv: &Path, ledger: &TestLedger, endpoint: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["register"])
        .arg(csv)
        .arg("--ledger")
        .arg(ledger.arg())
        .args([
            "--instance-id",
            INSTANCE,
            "--endpoint",
            endpoint,
            "--read-timeout",
            "0.5",
            "--connect-timeout",
            "0.5",
            "--max-attempts",
            "30",
            "--progress-interval",
            "0.5",
        ])
        .args(extra)
        // Fast pacing unless the caller paces.
        .args(if extra.contains(&"--account-qps") {
            &[][..]
        } else {
            &["--account-qps", "3000", "--ip-qps", "3000"][..]
        })
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", AK)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
        .env("HOME", ledger.dir())
        .stdin(Stdio::null());
    c
}

fn devices(dir: &Path, n: usize) -> PathBuf {
    let mut s = String::from("client_id\n");
    for i in 0..n {
        s.push_str(&format!("GID_torture@@@dev-{i:07}\n"));
    }
    let p = dir.join("devices.csv");
    std::fs::write(&p, s).unwrap();
    p
}

fn credentials(csv_text: &str) -> HashMap<String, (String, String)> {
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (c, k, s) = (
        col("client_id"),
        col("device_access_key_id"),
        col("device_access_key_secret"),
    );
    r.records()
        .map(Result::unwrap)
        .map(|rec| (rec[c].to_owned(), (rec[k].to_owned(), rec[s].to_owned())))
        .collect()
}

fn exported(ledger: &TestLedger) -> HashMap<String, (String, String)> {
    let out = Command::new(BIN)
        .args(["export", "--ledger", ledger.arg()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    credentials(&String::from_utf8(out.stdout).unwrap())
}

/// Runs the worker to completion (exit 0), then checks the invariants of the whole story.
fn finish_and_check(sim: &SimProcess, csv: &Path, ledger: &TestLedger, n: usize) {
    let out = worker(csv, ledger, &sim.endpoint(), &[]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "final run:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = sim.stats();
    assert_eq!(
        stats["credentials"]["duplicates"].as_array().unwrap().len(),
        0,
        "duplicates: {}",
        stats["credentials"]["duplicates"]
    );
    let ours = exported(ledger);
    assert_eq!(ours.len(), n, "every device holds a credential");
    let theirs = credentials(&sim.get("/__sim/credentials"));
    assert_eq!(
        ours, theirs,
        "the ledger equals the simulator's registry, row for row"
    );
    let status = status_json(ledger);
    assert!(
        status["operations"][0]["counts"].get("pending").is_none(),
        "nothing pending: {}",
        status["operations"][0]["counts"]
    );
}

fn status_json(ledger: &TestLedger) -> serde_json::Value {
    let status = Command::new(BIN)
        .args(["status", "--json", "--ledger", ledger.arg()])
        .output()
        .unwrap();
    serde_json::from_slice(&status.stdout).unwrap()
}

const FAULTS: [&str; 10] = [
    "--dup-mode",
    "reissue",
    "--fault-internal-error",
    "0.02",
    "--fault-drop-after",
    "0.02",
    "--fault-slow",
    "0.01",
    "--slow-ms",
    "1500",
];

/// `n` devices, a ledger, and a simulator with `FAULTS` on and a fast pace, for the stories.
fn faulty_world(n: usize) -> (tempfile::TempDir, PathBuf, TestLedger, SimProcess) {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices(dir.path(), n);
    let ledger = TestLedger::named(dir.path(), "ledger.sqlite");
    let mut extra = FAULTS.to_vec();
    extra.extend([
        "--latency",
        "uniform:1:10",
        "--account-qps",
        "3000",
        "--ip-qps",
        "3000",
    ]);
    let sim = start_sim(&dir.path().join("sim.jsonl"), 0, &extra);
    (dir, csv, ledger, sim)
}

fn kill9_story(n: usize, kills: usize, seed: u64) {
    let (_dir, csv, ledger, sim) = faulty_world(n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut killed_mid_run = 0;
    for k in 0..kills {
        let mut child = worker(&csv, &ledger, &sim.endpoint(), &["--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..900)));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if finished {
            eprintln!("kill {k}: the run had already finished");
        } else {
            killed_mid_run += 1;
        }
    }
    assert!(killed_mid_run > 0, "at least one run was killed mid-run");
    finish_and_check(&sim, &csv, &ledger, n);
    sim.kill();
}

#[test]
fn kill_9_at_random_moments_then_resume() {
    kill9_story(2_000, 6, 1);
}

#[test]
#[ignore = "long form: 20,000 devices, 20 kills"]
fn kill_9_at_random_moments_then_resume_long() {
    kill9_story(20_000, 20, 2);
}

fn sigint_story(n: usize, interrupts: usize, seed: u64) {
    let (_dir, csv, ledger, sim) = faulty_world(n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut interrupted = 0;
    for _ in 0..interrupts {
        let mut child = worker(&csv, &ledger, &sim.endpoint(), &["--quiet"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
        unsafe_sigint(&child);
        let out = wait_with_timeout(&mut child, Duration::from_secs(20));
        let code = out.status.code();
        assert!(code == Some(130) || code == Some(0), "exit {code:?}");
        if code == Some(130) {
            interrupted += 1;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("INTERRUPTED: resume with:"), "{text}");
        }
    }
    assert!(interrupted > 0, "at least one run was cut");
    finish_and_check(&sim, &csv, &ledger, n);
}

fn unsafe_sigint(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < limit,
            "the worker did not stop within {limit:?} of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        std::io::Read::read_to_end(&mut s, &mut stdout).unwrap();
    }
    Output {
        status: child.wait().unwrap(),
        stdout,
        stderr: Vec::new(),
    }
}

#[test]
fn ctrl_c_storm_then_resume() {
    sigint_story(2_000, 5, 3);
}

#[test]
#[ignore = "long form: 20,000 devices, 20 interrupts"]
fn ctrl_c_storm_then_resume_long() {
    sigint_story(20_000, 20, 4);
}

#[test]
fn the_worker_rides_out_a_simulator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices(dir.path(), 1_500);
    let ledger = TestLedger::named(dir.path(), "ledger.sqlite");
    let state = dir.path().join("sim.jsonl");
    let extra = [
        "--latency",
        "fixed:2",
        "--account-qps",
        "3000",
        "--ip-qps",
        "3000",
        "--dup-mode",
        "reissue",
    ];
    // A port below the ephemeral range: while this simulator is down, no other test's
    // simulator (listening on port 0) can be handed the same port.
    let port = (20_000..30_000)
        .map(|p| p + (std::process::id() % 1000) as u16 * 10 % 10_000)
        .map(|p| 20_000 + (p - 20_000) % 10_000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port");
    let sim = start_sim(&state, port, &extra);
    let child = worker(
        &csv,
        &ledger,
        &sim.endpoint(),
        &["--account-qps", "500", "--ip-qps", "500", "--quiet"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    sim.kill();
    std::thread::sleep(Duration::from_millis(800));
    let sim = start_sim(&state, port, &extra);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    finish_and_check(&sim, &csv, &ledger, 1_500);
}

/// On SQLite a second worker on a ledger in use is refused before it sends anything. On
/// PostgreSQL it joins: both finish with exit 0, both show in `status` as finished workers, and
/// no device is keyed twice (the simulator reissues on a second Register, so one would show).
#[test]
fn a_second_worker_on_the_same_ledger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices(dir.path(), 3_000);
    let ledger = TestLedger::named(dir.path(), "ledger.sqlite");
    let sim = start_sim(
        &dir.path().join("sim.jsonl"),
        0,
        &[
            "--latency",
            "fixed:2",
            "--account-qps",
            "3000",
            "--ip-qps",
            "3000",
            "--dup-mode",
            "reissue",
        ],
    );
    let mut first = worker(
        &csv,
        &ledger,
        &sim.endpoint(),
        &["--account-qps", "500", "--ip-qps", "500", "--quiet"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second = worker(&csv, &ledger, &sim.endpoint(), &[])
        .output()
        .unwrap();
    if ledger.is_postgres() {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&second.stdout),
            String::from_utf8_lossy(&second.stderr)
        );
        assert_eq!(
            second.status.code(),
            Some(0),
            "the second worker joins the run on PostgreSQL: {said}"
        );
        let calls: u64 = said
            .split_once("this run: ")
            .and_then(|(_, rest)| rest.split_once(" calls"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("the second worker's summary: {said}"));
        assert!(
            calls > 0,
            "the second worker took a share of the work: {said}"
        );
        assert_eq!(first.wait().unwrap().code(), Some(0));
        let status = status_json(&ledger);
        let finished = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "finished")
            .count();
        assert_eq!(finished, 2, "both workers ran and finished: {status}");
        finish_and_check(&sim, &csv, &ledger, 3_000);
        return;
    }
    assert_eq!(
        second.status.code(),
        Some(2),
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("in use by another mqtt-provision process"),
        "{err}"
    );
    assert_eq!(first.wait().unwrap().code(), Some(0));
    finish_and_check(&sim, &csv, &ledger, 3_000);
}

/// A paced run of 3,000 devices (about 6 s) against `--dup-mode reissue`, its ledger at
/// `ledger`; one second in, `trouble` strikes the ledger and returns how to repair it. The run
/// must halt (exit 3) saying `says`; after the repair a rerun finishes with nothing lost and no
/// device keyed twice.
fn ledger_trouble_mid_run(
    dir: &Path,
    ledger: &Path,
    trouble: impl FnOnce() -> Box<dyn FnOnce()>,
    says: &str,
) {
    let ledger = &TestLedger::sqlite(ledger.to_owned());
    let csv = devices(dir, 3_000);
    let sim = start_sim(
        &dir.join("sim.jsonl"),
        0,
        &[
            "--latency",
            "fixed:2",
            "--dup-mode",
            "reissue",
            "--account-qps",
            "3000",
            "--ip-qps",
            "3000",
        ],
    );
    let child = worker(
        &csv,
        ledger,
        &sim.endpoint(),
        &["--account-qps", "500", "--ip-qps", "500", "--quiet"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let repair = trouble();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() == Some(0) {
        panic!("the run finished before the trouble struck; make the run longer:\n{text}");
    }
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains(says), "{text}");
    assert!(text.contains("resume"), "{text}");
    repair();
    finish_and_check(&sim, &csv, ledger, 3_000);
}

#[test]
fn a_ledger_locked_mid_run_halts_clearly_and_loses_nothing() {
    if sqlite_only(
        "a_ledger_locked_mid_run_halts_clearly_and_loses_nothing",
        "another process holds SQLite's write lock on the ledger file",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let lock = || -> Box<dyn FnOnce()> {
        // Another process takes SQLite's write lock and holds it past the 5 s busy timeout.
        let mut locker = Command::new("python3")
            .args(["-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10); c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(9)"])
            .arg(&ledger)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Box::new(move || {
            let _ = locker.wait();
        })
    };
    ledger_trouble_mid_run(
        dir.path(),
        &ledger,
        lock,
        "another process holds the database locked",
    );
}

/// A small file system of the test's own (tmpfs), so it can be filled or made read-only;
/// unmounted on drop. `None` where mounting is not permitted (not root, no CAP_SYS_ADMIN).
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallDisk {
            path: path.to_owned(),
        })
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }

    /// Writes zeros into `filler` until the file system refuses (ENOSPC).
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn skipped(test: &str) {
    eprintln!("{test}: SKIPPED, this machine does not let the test mount a tmpfs (needs root)");
}

#[test]
fn a_full_disk_mid_run_halts_clearly_and_loses_nothing() {
    if sqlite_only(
        "a_full_disk_mid_run_halts_clearly_and_loses_nothing",
        "fills the file system under the ledger file (a tmpfs)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "64m") else {
        return skipped("a_full_disk_mid_run_halts_clearly_and_loses_nothing");
    };
    let fill = || -> Box<dyn FnOnce()> {
        let filler = disk.fill();
        Box::new(move || std::fs::remove_file(filler).unwrap())
    };
    ledger_trouble_mid_run(
        dir.path(),
        &disk.path.join("ledger.sqlite"),
        fill,
        "the disk is full",
    );
}

#[test]
fn a_read_only_ledger_is_refused_before_any_call_and_loses_nothing() {
    if sqlite_only(
        "a_read_only_ledger_is_refused_before_any_call_and_loses_nothing",
        "turns the file system under the ledger file read-only (a tmpfs)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "64m") else {
        return skipped("a_read_only_ledger_is_refused_before_any_call_and_loses_nothing");
    };
    let csv = devices(dir.path(), 1_000);
    let ledger = TestLedger::sqlite(disk.path.join("ledger.sqlite"));
    let sim = start_sim(
        &dir.path().join("sim.jsonl"),
        0,
        &[
            "--latency",
            "0",
            "--account-qps",
            "3000",
            "--ip-qps",
            "3000",
        ],
    );
    // Half the devices registered, then the ledger's file system turns read-only (the kernel
    // refuses that while a worker has the ledger open for writing, so it happens between runs).
    let out = worker(&csv, &ledger, &sim.endpoint(), &["--quiet"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let more = dir.path().join("more.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    for i in 0..500 {
        text.push_str(&format!("GID_torture@@@more-{i:05}\n"));
    }
    std::fs::write(&more, text).unwrap();
    disk.remount("ro");
    let calls_before = sim.stats()["total_calls"].as_u64().unwrap();
    let out = worker(&more, &ledger, &sim.endpoint(), &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(ledger.arg()), "{err}");
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(
        sim.stats()["total_calls"].as_u64().unwrap(),
        calls_before,
        "no call is sent when the ledger cannot record it"
    );
    disk.remount("rw");
    finish_and_check(&sim, &more, &ledger, 1_500);
}

/// Every output of every command, at trace level, with failures and STS in the mix: no
/// AccessKey secret, no token, no DeviceAccessKeySecret.
#[test]
fn no_secret_in_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices(dir.path(), 50);
    let token = "CAIS-torture-token-value";
    let sim = SimProcess::start(
        BIN,
        0,
        INSTANCE,
        &format!("STSAK:{SECRET}:{token}"),
        &["--fault-internal-error", "0.2"],
    );
    let mut outputs = String::new();
    let mut ledgers = Vec::new();
    for signature in ["v3", "v1"] {
        // The wrong secret first, on a fresh ledger, so its calls are really sent.
        let ledger = TestLedger::named(dir.path(), &format!("ledger-{signature}.sqlite"));
        for (id, secret) in [("STSAK", "wrong-secret-value"), ("STSAK", SECRET)] {
            let out = worker(&csv, &ledger, &sim.endpoint(), &["--signature", signature])
                .env("ALIBABA_CLOUD_ACCESS_KEY_ID", id)
                .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret)
                .env("ALIBABA_CLOUD_SECURITY_TOKEN", token)
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            outputs.push_str(&String::from_utf8_lossy(&out.stdout));
            outputs.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        ledgers.push(ledger);
    }
    for ledger in &ledgers {
        for args in [
            vec!["status"],
            vec!["status", "--json"],
            vec!["export", "--failures"],
        ] {
            let out = Command::new(BIN)
                .args(&args)
                .args(["--ledger", ledger.arg()])
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            outputs.push_str(&String::from_utf8_lossy(&out.stdout));
            outputs.push_str(&String::from_utf8_lossy(&out.stderr));
        }
    }
    assert!(
        outputs.contains("SignatureDoesNotMatch"),
        "the failing runs ran"
    );
    assert!(
        outputs.len() > 10_000,
        "trace output was captured ({} bytes)",
        outputs.len()
    );
    for secret in [SECRET, "wrong-secret-value", token] {
        if let Some(at) = outputs.find(secret) {
            let context: String = outputs[at.saturating_sub(300)..]
                .chars()
                .take(400)
                .collect();
            panic!("a secret leaked: {secret} in …{context}…");
        }
    }
    let theirs = credentials(&sim.get("/__sim/credentials"));
    assert!(!theirs.is_empty());
    for (_, (_, device_secret)) in theirs {
        assert!(
            !outputs.contains(&device_secret),
            "a DeviceAccessKeySecret leaked"
        );
    }
}

#[test]
fn a_single_call_command_exits_at_once_on_ctrl_c() {
    // One read-only call has nothing to drain: the first Ctrl-C ends it, even while its answer
    // is seconds away (here 8 s of latency, within a 20 s read timeout).
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(
        &dir.path().join("sim.journal"),
        0,
        &["--latency", "fixed:8000"],
    );
    let mut child = Command::new(BIN)
        .args([
            "ca",
            "register-code",
            "--instance-id",
            INSTANCE,
            "--read-timeout",
            "20",
        ])
        .args(["--endpoint", &sim.endpoint()])
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", AK)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "the call is in flight");
    let interrupted = Instant::now();
    unsafe_sigint(&child);
    let out = wait_with_timeout(&mut child, Duration::from_secs(3));
    assert_eq!(out.status.code(), Some(130), "exit code of an interrupt");
    assert!(
        interrupted.elapsed() < Duration::from_secs(3),
        "it did not wait for the answer"
    );
    sim.kill();
}
