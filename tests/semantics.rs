//! Run semantics a new user trips over: rehearsal and real ledgers kept apart, a repeated
//! operation that says it did nothing and `--again` that does it anew, a corrected row that stops
//! being invalid, source addresses and endpoints checked before the first call.

mod common;

use std::path::Path;

use common::*;
use mqtt_provision::sim::{SimConfig, SimHandle};

const FAST: &[&str] = &["--account-qps", "3000", "--ip-qps", "3000"];
const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");

fn fast() -> SimConfig {
    SimConfig {
        account_qps: 5000,
        ip_qps: 5000,
        ..SimConfig::default()
    }
}

/// The binary with `args` in `dir`, the simulator's key in its environment, off the test's
/// runtime thread (the in-process simulator keeps serving meanwhile); (exit code, stdout+stderr).
async fn binary(dir: &Path, sim: Option<&SimHandle>, args: &[&str]) -> (i32, String) {
    let mut c = std::process::Command::new(BIN);
    c.args(args).current_dir(dir).env("HOME", dir);
    if let Some(sim) = sim {
        c.env("ALIBABA_CLOUD_ACCESS_KEY_ID", &sim.keys[0].id).env(
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            sim.keys[0].secret.expose(),
        );
    }
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn a_rehearsal_ledger_and_a_real_one_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let csv = devices_csv(dir.path(), "mix", 5);
    let csv = csv.to_str().unwrap();
    let endpoint = sim.endpoint();
    let real = [
        "register",
        csv,
        "--instance-id",
        sim.instance_id.as_str(),
        "--endpoint",
        &endpoint,
    ];
    let rehearsal = [
        "register",
        csv,
        "--simulate",
        "--instance-id",
        sim.instance_id.as_str(),
    ];

    // Without --ledger a rehearsal has a ledger of its own: the README's commands in either
    // order are safe.
    let (code, _) = binary(dir.path(), None, &rehearsal).await;
    assert_eq!(code, 0);
    assert!(dir.path().join("rehearsal.sqlite").exists());
    assert!(!dir.path().join("provision.sqlite").exists());
    let (code, _) = binary(dir.path(), Some(&sim), &real).await;
    assert_eq!(code, 0, "the real run uses provision.sqlite");
    let real_ledger = dir.path().join("provision.sqlite");
    assert_eq!(
        ledger_credentials(&real_ledger, &context_for(&sim)).await,
        simulator_credentials(&sim),
        "the real ledger holds the service's credentials, not the rehearsal's"
    );

    // Pointed at each other's ledger, both refuse before sending anything.
    let calls = sim.stats().total_calls;
    let (code, text) = binary(
        dir.path(),
        Some(&sim),
        &[&real[..], &["--ledger", "rehearsal.sqlite"]].concat(),
    )
    .await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("built-in simulator"), "{text}");
    let (code, text) = binary(
        dir.path(),
        None,
        &[&rehearsal[..], &["--ledger", "provision.sqlite"]].concat(),
    )
    .await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("must not write into it"), "{text}");
    assert_eq!(sim.stats().total_calls, calls);
    sim.stop().await;
}

#[tokio::test]
async fn a_repeated_rotation_says_it_sent_nothing_and_again_rotates_anew() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let csv = devices_csv(dir.path(), "again", 8);
    let ledger = dir.path().join("l.sqlite");
    assert_eq!(
        Run::new(&["register"], &csv, &ledger, &sim)
            .exit(FAST, &ctx)
            .await,
        0
    );
    let rotate = Run::new(&["rotate"], &csv, &ledger, &sim);
    assert_eq!(rotate.exit(FAST, &ctx).await, 0);
    let first = simulator_credentials(&sim);

    let calls = sim.stats().total_calls;
    let (code, text) = binary(dir.path(), Some(&sim), &rotate.args(FAST)).await;
    assert_eq!(code, 0);
    assert!(
        text.contains("nothing sent: every target was done in an earlier run (the last on "),
        "{text}"
    );
    assert!(text.contains("`--again` runs rotate anew"), "{text}");
    assert_eq!(
        sim.stats().total_calls,
        calls,
        "a rerun resumes: nothing was sent"
    );
    assert_eq!(simulator_credentials(&sim), first);

    let (code, text) = binary(
        dir.path(),
        Some(&sim),
        &rotate.args(&[FAST, &["--again"]].concat()),
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("--again: 8 target(s)"), "{text}");
    let second = simulator_credentials(&sim);
    for (device, (_, secret)) in &first {
        assert_ne!(&second[device].1, secret, "{device} was rotated again");
    }
    assert_eq!(ledger_credentials(&ledger, &ctx).await, second);
    let device = first.keys().next().unwrap();
    let (_, shown) = binary(
        dir.path(),
        None,
        &["show", device, "--ledger", ledger.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        shown.matches(" rotated ").count(),
        2,
        "two rounds in the history: {shown}"
    );

    // register has nothing to do again: it is refused, not silently run.
    let register = Run::new(&["register"], &csv, &ledger, &sim);
    assert_eq!(register.exit(&[FAST, &["--again"]].concat(), &ctx).await, 2);
    sim.stop().await;
}

#[tokio::test]
async fn certificates_switched_back_and_forth_end_as_the_last_command_said() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = dir.path().join("seeds.csv");
    let input = dir.path().join("certs.csv");
    let (mut seed, mut rows) = (
        String::from("device_sn,ca_sn\n"),
        String::from("device_sn,ca_sn\n"),
    );
    for i in 0..4 {
        seed.push_str(&format!("SN-{i},CA-1\n"));
        rows.push_str(&format!("SN-{i},CA-1\n"));
    }
    std::fs::write(&seeds, seed).unwrap();
    std::fs::write(&input, rows).unwrap();
    let sim = simulator(SimConfig {
        device_certs: Some(seeds),
        ..fast()
    })
    .await;
    let ctx = context_for(&sim);
    let ledger = dir.path().join("l.sqlite");
    let inactivate = Run::new(&["cert", "inactivate"], &input, &ledger, &sim);
    let activate = Run::new(&["cert", "activate"], &input, &ledger, &sim);
    assert_eq!(inactivate.exit(FAST, &ctx).await, 0);
    assert_eq!(activate.exit(FAST, &ctx).await, 0);
    assert_eq!(
        inactivate.exit(&[FAST, &["--again"]].concat(), &ctx).await,
        0
    );

    let out = dir.path().join("list.csv");
    let list = [
        "cert",
        "list",
        "--instance-id",
        sim.instance_id.as_str(),
        "--endpoint",
        &sim.endpoint(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_eq!(run_cli(&list, &ctx).await, 0);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let status = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "status")
        .unwrap();
    let statuses: Vec<String> = r.records().map(|x| x.unwrap()[status].to_owned()).collect();
    assert_eq!(statuses.len(), 4);
    assert!(
        statuses.iter().all(|s| s == "inactive"),
        "every certificate is inactive: {statuses:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_corrected_row_is_no_longer_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let csv = dir.path().join("d.csv");
    std::fs::write(
        &csv,
        "client_id\nGID_test@@@ok-1\nGID_test@@@bad id\nGID_test@@@ok-2\n",
    )
    .unwrap();
    let ledger = dir.path().join("l.sqlite");
    let run = Run::new(&["register"], &csv, &ledger, &sim);
    assert_eq!(run.exit(FAST, &ctx).await, 1, "one invalid row");
    // The engineer fixes line 3 and reruns the same command.
    std::fs::write(
        &csv,
        "client_id\nGID_test@@@ok-1\nGID_test@@@bad-id\nGID_test@@@ok-2\n",
    )
    .unwrap();
    assert_eq!(
        run.exit(FAST, &ctx).await,
        0,
        "the fixed file finishes clean"
    );
    assert_eq!(simulator_credentials(&sim).len(), 3);
    let (_, failures) = binary(
        dir.path(),
        None,
        &["export", "--failures", "--ledger", ledger.to_str().unwrap()],
    )
    .await;
    assert!(
        !failures.contains("bad id"),
        "the old rejection is retired: {failures}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn source_addresses_and_endpoints_are_checked_before_the_first_call() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let csv = devices_csv(dir.path(), "src", 3);
    let ledger = dir.path().join("l.sqlite");
    let run = Run::new(&["register"], &csv, &ledger, &sim);
    for (extra, says) in [
        (
            &[
                "--source-address",
                "127.0.0.2",
                "--source-address",
                "127.0.0.2",
            ][..],
            "given twice",
        ),
        (&["--source-address", "192.0.2.77"][..], "no such address"),
        (
            &["--source-address", "192.0.2.77", "--dry-run"][..],
            "no such address",
        ),
    ] {
        let (code, text) = binary(dir.path(), Some(&sim), &run.args(&[FAST, extra].concat())).await;
        assert_eq!(code, 2, "{extra:?}: {text}");
        assert!(text.contains(says), "{extra:?}: {text}");
    }
    assert_eq!(sim.stats().total_calls, 0);
    // The form the SDKs are given for the simulator: no scheme, a loopback host.
    let bare = sim
        .endpoint()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut args = run.args(FAST);
    let at = args.iter().position(|a| *a == "--endpoint").unwrap();
    args[at + 1] = &bare;
    assert_eq!(run_cli(&args, &ctx).await, 0, "--endpoint {bare}");
    assert_eq!(simulator_credentials(&sim).len(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn standard_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = binary(dir.path(), None, &["register", "-", "--simulate"]).await;
    assert_eq!(code, 2);
    assert!(
        text.contains("standard input") && text.contains("save the input to a file"),
        "{text}"
    );
    assert!(!dir.path().join("rehearsal.sqlite").exists());
}

#[tokio::test]
async fn the_dry_runs_estimate_counts_the_calls_of_each_target() {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices_csv(dir.path(), "estimate", 2940);
    let csv = csv.to_str().unwrap();
    let plan = |command: &'static str| {
        let dir = dir.path().to_owned();
        let csv = csv.to_owned();
        async move {
            let ledger = format!("{command}.sqlite");
            binary(
                &dir,
                None,
                &[
                    command,
                    &csv,
                    "--simulate",
                    "--dry-run",
                    "--ledger",
                    &ledger,
                ],
            )
            .await
        }
    };
    let (code, register) = plan("register").await;
    assert_eq!(code, 0, "{register}");
    let (code, rotate) = plan("rotate").await;
    assert_eq!(code, 0, "{rotate}");
    let seconds = |text: &str| -> f64 {
        let at = text.find("about ").expect("an estimate") + 6;
        text[at..].split(' ').next().unwrap().parse().unwrap()
    };
    // One address: 294 calls/s. Register sends one call per device, rotate two.
    assert_eq!(seconds(&register), 10.0, "{register}");
    assert_eq!(seconds(&rotate), 20.0, "{rotate}");
    // The promise is about what is sent (the pacer's sliding-second ceiling, which its tests
    // measure), not a per-second rate the service's own count could exceed by jitter.
    assert!(
        register.contains(
            "sent at most 490 calls in any second per API (limit 500) and 294 per address (limit 300)"
        ),
        "{register}"
    );
    // A dry run changes nothing on disk: no ledger was created or bound to the instance.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".csv"))
        .collect();
    assert!(left.is_empty(), "the dry runs left {left:?}");
}

#[tokio::test]
async fn every_operation_can_be_rehearsed_on_the_rehearsals_own_devices() {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices_csv(dir.path(), "rehearse", 8);
    let some = dir.path().join("some.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(
        &some,
        text.lines().take(3).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let (csv, some) = (csv.to_str().unwrap(), some.to_str().unwrap());
    for (args, expect) in [
        (&["register", csv, "--simulate"][..], "registered 8"),
        (&["rotate", csv, "--simulate"][..], "rotated 8"),
        (&["fetch", csv, "--simulate"][..], "fetched 8"),
        (&["revoke", some, "--simulate", "--yes"][..], "revoked 2"),
    ] {
        let (code, text) = binary(dir.path(), None, args).await;
        assert_eq!(code, 0, "{args:?}: {text}");
        assert!(text.contains(expect), "{args:?}: {text}");
    }
    let (code, text) = binary(
        dir.path(),
        None,
        &["export", "--ledger", "rehearsal.sqlite"],
    )
    .await;
    assert_eq!(code, 0);
    let states = text.lines().skip(1).filter(|l| l.contains("GID_")).count();
    assert_eq!(states, 6, "8 rotated and fetched, 2 revoked: {text}");
    use std::os::unix::fs::PermissionsExt;
    let journal = dir.path().join("rehearsal.sqlite.simulator");
    assert_eq!(
        std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn the_region_comes_from_the_cli_profile_and_the_endpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".aliyun")).unwrap();
    std::fs::write(
        dir.path().join(".aliyun/config.json"),
        r#"{"current":"line","profiles":[{"name":"line","mode":"AK","access_key_id":"LTAI5tExample","access_key_secret":"not-used","region_id":"cn-shanghai"}]}"#,
    )
    .unwrap();
    let csv = devices_csv(dir.path(), "region", 3);
    let csv = csv.to_str().unwrap();
    let plan = |extra: &'static [&'static str]| {
        let dir = dir.path().to_owned();
        let mut args = vec![
            "register",
            csv,
            "--instance-id",
            "post-cn-region01",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            binary(&dir, None, &args).await
        }
    };
    let (code, text) = plan(&[]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("to https://onsmqtt.cn-shanghai.aliyuncs.com/"),
        "the profile's region_id: {text}"
    );
    let (code, text) = plan(&["--region", "cn-beijing"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("to https://onsmqtt.cn-beijing.aliyuncs.com/"),
        "--region wins: {text}"
    );
    // A refused connection names where it tried to go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}");
    let ledger = dir.path().join("closed.sqlite");
    let (code, text) = binary(
        dir.path(),
        None,
        &[
            "register",
            csv,
            "--instance-id",
            "post-cn-region01",
            "--endpoint",
            &endpoint,
            "--ledger",
            ledger.to_str().unwrap(),
            "--max-attempts",
            "1",
        ],
    )
    .await;
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains(&format!("cannot connect to http://127.0.0.1:{port}/")),
        "{text}"
    );
}

#[tokio::test]
async fn errors_of_one_code_show_their_total() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "client_id\nGID_a@@@ok-1\nbad id one\nbad id two\nGID_a@@@ok-2\n@@@\n",
    )
    .unwrap();
    let (code, text) = binary(
        dir.path(),
        None,
        &["register", csv.to_str().unwrap(), "--simulate", "--dry-run"],
    )
    .await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("InvalidInput ×5 in all, 3 kinds:"), "{text}");
    assert!(
        text.contains("      ×2, e.g. "),
        "each kind under its total: {text}"
    );
}

#[tokio::test]
async fn a_closed_pipe_ends_export_quietly_and_a_bad_path_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let csv = devices_csv(dir.path(), "pipe", 1500);
    let ledger = dir.path().join("l.sqlite");
    let run = Run::new(&["register"], &csv, &ledger, &sim);
    assert_eq!(run_cli(&run.args(FAST), &ctx).await, 0);
    sim.stop().await;
    let ledger_arg = ledger.to_str().unwrap().to_owned();

    // `export | head -1`: 1,500 rows are far more than a pipe holds, so the writer meets a
    // closed pipe.
    let mut child = std::process::Command::new(BIN)
        .args(["export", "--ledger", &ledger_arg])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.starts_with("client_id,"), "{first}");
    drop(stdout);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.trim().is_empty(), "quiet: {stderr}");

    let (code, text) = binary(
        dir.path(),
        None,
        &["export", "--ledger", &ledger_arg, "--out", "nodir/x.csv"],
    )
    .await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("nodir/x.csv"), "{text}");
}

#[tokio::test]
async fn an_export_of_no_rows_names_its_columns_and_failures_take_a_state() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("some.csv");
    std::fs::write(
        &csv,
        "client_id\nGID_lines@@@ok-1\nbad id\nGID_lines@@@ok-2\n",
    )
    .unwrap();
    let (code, text) = binary(
        dir.path(),
        None,
        &[
            "register",
            csv.to_str().unwrap(),
            "--simulate",
            "--ledger",
            "l.sqlite",
        ],
    )
    .await;
    assert_eq!(code, 1, "one row is invalid: {text}");
    let export = |args: &'static [&'static str]| {
        let dir = dir.path().to_owned();
        async move {
            let mut all = vec!["export", "--ledger", "l.sqlite"];
            all.extend_from_slice(args);
            let out = std::process::Command::new(BIN)
                .args(&all)
                .current_dir(&dir)
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // Nothing was rotated: the file still has its header.
    let (code, out, err) = export(&["--state", "rotated"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "client_id,instance_id,device_access_key_id,device_access_key_secret,mqtt_username,mqtt_password,state,operation\n"
    );
    // --failures with --state: only that state (the invalid row is not `failed`).
    let (code, out, err) = export(&["--failures", "--state", "failed"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "file,line,client_id,state,code,message,request_id\n");
    let (code, out, _) = export(&["--failures", "--state", "invalid"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("bad id"), "{out}");
    // A state no failure is in is refused, saying why.
    let (code, _, err) = export(&["--failures", "--state", "registered"]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("--failures lists targets that did not succeed"),
        "{err}"
    );
}

#[tokio::test]
async fn status_tells_a_live_run_from_one_that_died() {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices_csv(dir.path(), "live", 400);
    let mut run = std::process::Command::new(BIN)
        .args([
            "register",
            csv.to_str().unwrap(),
            "--simulate",
            "--ledger",
            "l.sqlite",
            "--account-qps",
            "40",
            "--ip-qps",
            "40",
            "--quiet",
        ])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = |json: bool| {
        let dir = dir.path().to_owned();
        async move {
            let mut args = vec!["status", "--ledger", "l.sqlite"];
            if json {
                args.push("--json");
            }
            binary(&dir, None, &args).await
        }
    };
    // Until the run has recorded itself.
    let mut live = String::new();
    for _ in 0..100 {
        let (code, text) = status(false).await;
        if code == 0 && text.contains("last run:") {
            live = text;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(live.contains("running now"), "{live}");
    let (_, json) = status(true).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["running"], true, "{json}");
    run.kill().unwrap();
    run.wait().unwrap();
    let (_, dead) = status(false).await;
    assert!(
        dead.contains("did not finish (killed or crashed)"),
        "{dead}"
    );
    let (_, json) = status(true).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["running"], false, "{json}");
}

#[tokio::test]
async fn the_plan_names_pending_targets_of_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.csv"),
        "client_id\nGID_lines@@@a1\nGID_lines@@@a2\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.csv"), "client_id\nGID_lines@@@b1\n").unwrap();
    let run = |args: &'static [&'static str]| {
        let dir = dir.path().to_owned();
        async move {
            let mut all = args.to_vec();
            all.extend_from_slice(&["--simulate", "--ledger", "l.sqlite"]);
            binary(&dir, None, &all).await
        }
    };
    assert_eq!(run(&["register", "b.csv"]).await.0, 0);
    // A dry run on an existing ledger ingests: a.csv's rows are pending now.
    assert_eq!(run(&["register", "a.csv", "--dry-run"]).await.0, 0);
    let (code, text) = run(&["register", "b.csv", "--dry-run"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "also pending in this ledger from other files, and sent by this run: 2 from a.csv"
        ),
        "{text}"
    );
    assert!(text.contains("plan: 2 targets"), "{text}");
}
