//! The operator's surface, through the real binary: what a log file, a line controller (MES)
//! reading `--json`, a shell and a terminal see. Each child process gets a cleared environment
//! (`bin`), so the machine's NO_COLOR, CLICOLOR_FORCE or MQTT_PROVISION_* never decide a result,
//! and tests that set variables race nothing: they set them on the child only.

mod common;
#[path = "common/sim_process.rs"]
mod sim_process;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");

/// The binary with an environment holding only PATH (and what the test adds).
fn bin() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every stdout line as one JSON object; panics on a line that is not.
fn events(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// A register of `n` devices against the binary's built-in simulator, paced at 20 calls/s so
/// the run lasts long enough for progress.
fn slow_register(dir: &Path, n: usize, ledger: &str, extra: &[&str]) -> Command {
    let csv = common::devices_csv(dir, "line", n);
    let mut c = bin();
    c.current_dir(dir)
        .args([
            "register",
            csv.to_str().unwrap(),
            "--simulate",
            "--ledger",
            ledger,
        ])
        .args(["--account-qps", "20", "--ip-qps", "20"])
        .args(extra);
    c
}

#[test]
fn json_events_parse_line_by_line_and_the_summary_equals_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(slow_register(
        dir.path(),
        12,
        "l.sqlite",
        &["--json", "--progress-interval", "0.1"],
    )
    .stderr(Stdio::piped()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events = events(&out);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"start"), "{types:?}");
    assert_eq!(types.last(), Some(&"summary"), "{types:?}");
    assert!(types[1..types.len() - 1].iter().all(|t| *t == "progress"));
    assert!(
        types.len() >= 3,
        "a 0.6 s run has progress every 0.1 s: {types:?}"
    );

    // The shapes a controller relies on (README, "Running it from a script or a line
    // controller"). Times and rates are normalised; everything else is as written.
    let mut start = events[0].clone();
    start["pace"]["calls_per_second"] = 0.into();
    assert_eq!(
        start,
        serde_json::json!({
            "type": "start", "operation": "register", "instance_id": "post-cn-rehearsal01",
            "ledger": "l.sqlite", "targets": 12, "dry_run": false,
            "pace": {"calls_per_second": 0, "account_qps": 20.0, "ip_qps": 20.0,
                     "headroom": 0.02, "concurrency": 256, "sources": 1}
        })
    );
    let progress = &events[1];
    assert_eq!(
        keys(progress),
        [
            "calls",
            "calls_per_second",
            "counts",
            "done",
            "elapsed_seconds",
            "eta_seconds",
            "throttled",
            "total",
            "type"
        ]
    );
    assert_eq!(progress["total"], 12);
    let mut summary = events.last().unwrap().clone();
    assert!(summary["elapsed_seconds"].as_f64().unwrap() > 0.3);
    assert!(summary["calls_per_second"].as_f64().unwrap() > 0.0);
    summary["elapsed_seconds"] = 0.into();
    summary["calls_per_second"] = 0.into();
    assert_eq!(
        summary,
        serde_json::json!({
            "type": "summary", "operation": "register", "instance_id": "post-cn-rehearsal01",
            "ledger": "l.sqlite", "counts": {"registered": 12}, "errors": [],
            "elapsed_seconds": 0, "calls": 12, "calls_per_second": 0, "throttled": 0,
            "exit_code": 0, "resume": null
        })
    );

    // The same counts and errors as `status --json`, under the same names.
    let status = run(bin()
        .current_dir(dir.path())
        .args(["status", "--json", "--ledger", "l.sqlite"]));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let register = &status["operations"][0];
    assert_eq!(register["counts"], summary["counts"]);
    assert_eq!(register["errors"], summary["errors"]);

    // The human text went to stderr, without a single escape byte although NO_COLOR is unset.
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ingested 12 rows"), "{stderr}");
    assert!(stderr.contains("12 targets: registered 12"), "{stderr}");
    assert!(
        !out.stderr.contains(&0x1b),
        "escape in redirected stderr: {stderr:?}"
    );
    assert!(!stderr.contains('█'), "no bar in a pipe");

    // No secret of the run in the events or the logs.
    let export = run(bin()
        .current_dir(dir.path())
        .args(["export", "--ledger", "l.sqlite"]));
    let secrets = common::credentials_from_csv(
        &text(&export.stdout),
        "client_id",
        "device_access_key_id",
        "device_access_key_secret",
    );
    assert_eq!(secrets.len(), 12);
    let all = format!("{}{stderr}", text(&out.stdout));
    for (_, secret) in secrets.values() {
        assert!(!all.contains(secret.as_str()));
    }
    assert!(!all.contains(mqtt_provision::sim::DEFAULT_ACCESS_KEY_SECRET));
}

#[test]
fn a_halt_is_an_event_with_its_cause_exit_code_and_resume_command() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_process::SimProcess::start(
        BIN,
        0,
        "post-cn-line01",
        "LTAIline:line-secret",
        &["--quota", "3"],
    );
    let csv = common::devices_csv(dir.path(), "quota", 6);
    let out = run(bin()
        .current_dir(dir.path())
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIline")
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "line-secret")
        .args([
            "register",
            csv.to_str().unwrap(),
            "--json",
            "--ledger",
            "q.sqlite",
        ])
        .args([
            "--instance-id",
            "post-cn-line01",
            "--endpoint",
            &sim.endpoint(),
        ])
        .args(["--concurrency", "1"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let events = events(&out);
    let halt = events
        .iter()
        .find(|e| e["type"] == "halt")
        .expect("a halt event");
    assert_eq!(halt["cause"], "quota_full");
    assert_eq!(halt["exit_code"], 3);
    assert!(halt["action"].as_str().unwrap().contains("raise the quota"));
    assert!(halt["resume"].as_str().unwrap().contains("register"));
    let summary = events.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["exit_code"], 3);
    assert_eq!(summary["counts"]["registered"], 3);
    assert_eq!(summary["resume"], halt["resume"]);
    assert!(!text(&out.stdout).contains("line-secret"));
    assert!(!text(&out.stderr).contains("line-secret"));
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(slow_register(
        dir.path(),
        10,
        "l.sqlite",
        &["--log-format", "json", "--progress-interval", "0.1"],
    )
    .env("CLICOLOR_FORCE", "1"));
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["level"], "INFO");
            l["fields"]["message"].as_str().unwrap()
        })
        .collect();
    assert!(messages.iter().any(|m| m.starts_with("rehearsal: ")));
    assert!(
        messages.iter().any(|m| m.starts_with("progress ")),
        "{messages:?}"
    );
    assert!(!out.stderr.contains(&0x1b), "JSON lines carry no colour");
}

#[test]
fn colour_in_a_log_file_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let csv = common::devices_csv(dir.path(), "c", 2);
    let base = |c: &mut Command| {
        c.current_dir(dir.path()).args([
            "register",
            csv.to_str().unwrap(),
            "--simulate",
            "--quiet",
        ]);
    };
    let mut plain = bin();
    base(&mut plain);
    assert!(!run(&mut plain).stderr.contains(&0x1b));
    let mut forced = bin();
    base(&mut forced);
    let forced = run(forced.env("CLICOLOR_FORCE", "1"));
    assert!(
        forced.stderr.contains(&0x1b),
        "CLICOLOR_FORCE colours a file"
    );
    let mut never = bin();
    base(&mut never);
    assert!(
        !run(never.env("CLICOLOR_FORCE", "1").arg("--color=never"))
            .stderr
            .contains(&0x1b)
    );
    let mut no_color = bin();
    base(&mut no_color);
    let no_color = run(no_color.env("NO_COLOR", "1").env("CLICOLOR_FORCE", "1"));
    assert!(!no_color.stderr.contains(&0x1b), "NO_COLOR wins");
}

#[test]
fn settings_come_from_the_environment_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let csv = common::devices_csv(dir.path(), "env", 3);
    let csv = csv.to_str().unwrap();
    let dry = |extra: &[&str]| -> Command {
        let mut c = bin();
        c.current_dir(dir.path())
            .env("MQTT_PROVISION_INSTANCE_ID", "post-cn-fromenv")
            .env("MQTT_PROVISION_LEDGER", "env.sqlite")
            .env("MQTT_PROVISION_HEADROOM", "10%")
            .env("MQTT_PROVISION_SOURCE_ADDRESS", "127.0.0.1,127.0.0.2")
            .env("MQTT_PROVISION_SIGNATURE", "v1")
            .args(["register", csv, "--dry-run", "--json"])
            .args(extra);
        c
    };
    let from_env = run(&mut dry(&[]));
    assert_eq!(
        from_env.status.code(),
        Some(0),
        "{}",
        text(&from_env.stderr)
    );
    let start = &events(&from_env)[0];
    assert_eq!(start["instance_id"], "post-cn-fromenv");
    assert_eq!(start["ledger"], "env.sqlite");
    assert_eq!(start["pace"]["headroom"], 0.1);
    assert_eq!(start["pace"]["sources"], 2);
    assert!(
        !dir.path().join("env.sqlite").exists(),
        "a dry run plans without creating the ledger it names"
    );

    let flags = run(&mut dry(&[
        "--instance-id",
        "post-cn-fromflag",
        "--ledger",
        "flag.sqlite",
        "--headroom",
        "5%",
        "--source-address",
        "127.0.0.1",
    ]));
    assert_eq!(flags.status.code(), Some(0), "{}", text(&flags.stderr));
    let start = &events(&flags)[0];
    assert_eq!(start["instance_id"], "post-cn-fromflag");
    assert_eq!(start["ledger"], "flag.sqlite");
    assert_eq!(start["pace"]["headroom"], 0.05);
    assert_eq!(start["pace"]["sources"], 1);

    // An endpoint from the environment is checked like the flag, and the flag replaces it.
    let mut bad = dry(&[]);
    let bad = run(bad.env("MQTT_PROVISION_ENDPOINT", "http://example.com"));
    assert_eq!(
        bad.status.code(),
        Some(2),
        "plain http off loopback is refused"
    );
    let mut good = dry(&["--endpoint", "http://127.0.0.1:9"]);
    let good = run(good.env("MQTT_PROVISION_ENDPOINT", "http://example.com"));
    assert_eq!(good.status.code(), Some(0), "{}", text(&good.stderr));

    // --help names each variable.
    let help = text(&run(bin().args(["register", "--help"])).stdout);
    for var in [
        "INSTANCE_ID",
        "REGION",
        "ENDPOINT",
        "LEDGER",
        "SOURCE_ADDRESS",
        "HEADROOM",
        "SIGNATURE",
    ] {
        assert!(
            help.contains(&format!("[env: MQTT_PROVISION_{var}=")),
            "{var}: {help}"
        );
    }
}

#[test]
fn simulate_calls_the_instance_instance_id_too() {
    // SimProcess starts `simulate --instance-id` and checks the instance it serves.
    let sim = sim_process::SimProcess::start(BIN, 0, "post-cn-same01", "LTAIs:s-secret", &[]);
    sim.kill();
    let help = text(&run(bin().args(["simulate", "--help"])).stdout);
    assert!(help.contains("--instance-id <ID>"), "{help}");
    assert!(
        !help.contains("--instance <"),
        "the old name is a hidden alias: {help}"
    );
    for command in [
        &["register", "--help"][..],
        &["ca", "register-code", "--help"],
        &["cert", "list", "--help"],
    ] {
        let help = text(&run(bin().args(command)).stdout);
        assert!(help.contains("--instance-id <ID>"), "{command:?}");
    }
}

#[test]
fn completions_load_in_their_shells_and_the_man_page_is_roff() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = run(bin().args(["completions", shell]));
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains("register") && script.contains("instance-id"),
            "{shell}"
        );
        std::fs::write(dir.path().join(shell), script).unwrap();
    }
    let check = |shell: &str| {
        Command::new(shell)
            .arg("-n")
            .arg(dir.path().join(shell))
            .status()
    };
    assert!(check("bash").expect("bash runs").success(), "bash -n");
    match check("zsh") {
        Ok(status) => assert!(status.success(), "zsh -n"),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("zsh is missing in CI: .ci/run installs it")
        }
        Err(_) => eprintln!("zsh not installed: its completion script was not checked"),
    }
    let man = run(bin().arg("man"));
    assert_eq!(man.status.code(), Some(0));
    let man = text(&man.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH mqtt-provision"),
        "{man}"
    );
    assert!(man.contains("completions"));
}

/// A terminal draws the bar; a pipe gets none. `script` gives the child a pseudo-terminal.
#[test]
fn a_bar_is_drawn_on_a_terminal_and_not_in_a_pipe() {
    if Command::new("script").arg("--version").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "script is missing in CI"
        );
        eprintln!("script (util-linux) not installed: the terminal check was skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = common::devices_csv(dir.path(), "pty", 20);
    let line = format!(
        "{BIN} register {} --simulate --ledger pty.sqlite --account-qps 20 --ip-qps 20",
        csv.display()
    );
    let out = Command::new("script")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .args(["-qfec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    assert!(screen.contains('█'), "a bar on the terminal: {screen:?}");
    assert!(screen.contains("/20 done"), "{screen:?}");

    let piped = run(bin()
        .current_dir(dir.path())
        .args([
            "register",
            csv.to_str().unwrap(),
            "--simulate",
            "--ledger",
            "pipe.sqlite",
        ])
        .args(["--account-qps", "20", "--ip-qps", "20"]));
    assert_eq!(piped.status.code(), Some(0));
    assert!(!piped.stderr.contains(&0x1b), "{:?}", text(&piped.stderr));
    assert!(!text(&piped.stderr).contains('█'));
}

#[test]
fn an_unconfirmed_revoke_writes_no_event_and_its_question_goes_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let csv = common::devices_csv(dir.path(), "revoke", 3);
    let out = run(bin().current_dir(dir.path()).args([
        "revoke",
        csv.to_str().unwrap(),
        "--simulate",
        "--json",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "", "stdout is only for events");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("revoke will call UnRegisterDeviceCredential for 3 target(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("rerun with --yes"), "{stderr}");
}
