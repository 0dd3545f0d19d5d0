//! The factory floor: a wrong clock is corrected from the service's `Date`, and (below) an
//! outage of the service costs no device.

mod common;

use common::*;
use mqtt_provision::sim::{SimConfig, SimHandle};

const FAST: &[&str] = &["--account-qps", "3000", "--ip-qps", "3000"];

fn fast() -> SimConfig {
    SimConfig {
        account_qps: 5000,
        ip_qps: 5000,
        ..SimConfig::default()
    }
}

/// Answers refused for their timestamp, all actions.
fn timestamp_refusals(sim: &SimHandle) -> u64 {
    sim.stats()
        .calls
        .values()
        .flat_map(|by_code| by_code.iter())
        .filter(|(code, _)| code.starts_with("InvalidTimeStamp"))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn the_simulator_dates_every_answer_as_the_gateway_does() {
    let sim = simulator(fast()).await;
    let answer = reqwest::get(sim.endpoint()).await.unwrap();
    let date = answer.headers().get("date").expect("a Date header");
    let date = date.to_str().unwrap();
    // IMF-fixdate: "Thu, 03 Dec 2026 13:31:37 GMT".
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    sim.stop().await;
}

#[tokio::test]
async fn a_clock_twenty_minutes_off_either_way_is_corrected_from_the_service() {
    for (error, signature) in [("-1200", "v3"), ("1200", "v1"), ("-1200", "v1")] {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulator(fast()).await;
        let ctx = context_for(&sim);
        let csv = devices_csv(dir.path(), "clock", 400);
        let ledger = dir.path().join("l.sqlite");
        let run = Run::new(&["register"], &csv, &ledger, &sim);
        let extra = [
            FAST,
            &["--test-clock-error", error, "--signature", signature],
        ]
        .concat();
        assert_eq!(
            run.exit(&extra, &ctx).await,
            0,
            "clock {error} s, {signature}"
        );
        assert_eq!(
            simulator_credentials(&sim).len(),
            400,
            "clock {error} s, {signature}"
        );
        // The first call measures the clock while the others wait for its answer.
        let refused = timestamp_refusals(&sim);
        assert!(
            (1..=2).contains(&refused),
            "clock {error} s, {signature}: {refused} calls refused for their timestamp"
        );
        sim.stop().await;
    }
}

#[tokio::test]
async fn a_right_clock_is_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let csv = devices_csv(dir.path(), "clock", 200);
    let ledger = dir.path().join("l.sqlite");
    let run = Run::new(&["register"], &csv, &ledger, &sim);
    let extra = [FAST, &["--test-clock-error", "3"]].concat();
    assert_eq!(run.exit(&extra, &ctx).await, 0);
    assert_eq!(timestamp_refusals(&sim), 0);
    sim.stop().await;
}

/// A TCP relay in front of the simulator that can be cut (connections dropped, new ones
/// refused: the port is closed) and restored on the same port, as a line PC's uplink drops.
struct Relay {
    port: u16,
    target: std::net::SocketAddr,
    cut: std::sync::Mutex<tokio_util::sync::CancellationToken>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let relay = Relay {
            port,
            target,
            cut: std::sync::Mutex::new(tokio_util::sync::CancellationToken::new()),
        };
        relay.restore();
        relay
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops every connection and closes the port.
    fn cut(&self) {
        self.cut.lock().unwrap().cancel();
    }

    /// Listens again on the same port.
    fn restore(&self) {
        let token = tokio_util::sync::CancellationToken::new();
        *self.cut.lock().unwrap() = token.clone();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(([127, 0, 0, 1], self.port).into())
            .expect("the relay's port is free again");
        let listener = socket.listen(1024).unwrap();
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");

/// The binary with `args`, the simulator's key in its environment, off the test's runtime
/// thread; (exit code, events of stdout, stderr).
fn run_binary(
    sim: &SimHandle,
    args: Vec<String>,
) -> impl std::future::Future<Output = (i32, Vec<serde_json::Value>, String)> + use<> {
    let mut c = std::process::Command::new(BIN);
    c.args(&args)
        .env("ALIBABA_CLOUD_ACCESS_KEY_ID", &sim.keys[0].id)
        .env(
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            sim.keys[0].secret.expose(),
        );
    async move {
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        let events = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (
            out.status.code().unwrap_or(-1),
            events,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn summary(events: &[serde_json::Value]) -> &serde_json::Value {
    events
        .iter()
        .rfind(|e| e["type"] == "summary")
        .expect("a summary event")
}

fn register_args(
    csv: &std::path::Path,
    ledger: &std::path::Path,
    relay: &Relay,
    sim: &SimHandle,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "register",
        csv.to_str().unwrap(),
        "--ledger",
        ledger.to_str().unwrap(),
        "--instance-id",
        &sim.instance_id,
        "--endpoint",
        &relay.endpoint(),
        "--json",
        "--progress-interval",
        "1",
        "--account-qps",
        "400",
        "--ip-qps",
        "400",
        "--max-attempts",
        "2",
        "--connect-timeout",
        "1",
        "--read-timeout",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test]
async fn an_outage_mid_run_costs_no_device_and_few_calls() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let relay = Relay::start(sim.addr).await;
    let csv = devices_csv(dir.path(), "outage", 2400);
    let ledger = dir.path().join("l.sqlite");
    let args = register_args(&csv, &ledger, &relay, &sim, &[]);
    let run = tokio::spawn(run_binary(&sim, args));
    // About 2 s in (of 6 s of work), the uplink drops for 6 s.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    relay.cut();
    // Calls the relay had already passed on may still land just after the cut.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let arrived_at_cut = sim.stats().total_calls;
    tokio::time::sleep(std::time::Duration::from_millis(5700)).await;
    let arrived_in_outage = sim.stats().total_calls - arrived_at_cut;
    relay.restore();
    let (code, events, stderr) = run.await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    let s = summary(&events);
    assert_eq!(s["counts"]["registered"], 2400, "{s}");
    assert!(s["counts"].get("failed").is_none(), "nothing failed: {s}");
    assert_eq!(arrived_in_outage, 0, "the relay was cut");
    // Calls sent into the outage: the run's calls minus what reached the service.
    let sent = s["calls"].as_u64().unwrap();
    let lost = sent - sim.stats().total_calls;
    // The calls in flight at the cut, the streak that opens the breaker, and a probe every
    // 1, 2, 4 s (without the breaker: 400/s for 6 s, about 2,400).
    assert!(lost <= 100, "{lost} calls went into a dead uplink");
    // The operator saw it in the progress events.
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "progress" && e["outage"]["retry_in_seconds"].is_number()),
        "a progress event during the outage carries it"
    );
    assert!(stderr.contains("service unreachable since"), "{stderr}");
    assert!(sim.stats().credentials.duplicates.is_empty());
    sim.stop().await;
}

#[tokio::test]
async fn an_outage_past_the_patience_halts_with_everything_pending_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let relay = Relay::start(sim.addr).await;
    let csv = devices_csv(dir.path(), "patience", 1200);
    let ledger = dir.path().join("l.sqlite");
    let run = tokio::spawn(run_binary(
        &sim,
        register_args(&csv, &ledger, &relay, &sim, &["--outage-patience", "3s"]),
    ));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    relay.cut();
    let (code, events, stderr) = run.await.unwrap();
    assert_eq!(code, 3, "{stderr}");
    let halt = events
        .iter()
        .find(|e| e["type"] == "halt")
        .expect("a halt event");
    assert_eq!(halt["cause"], "outage", "{halt}");
    let s = summary(&events);
    assert!(s["counts"].get("failed").is_none(), "nothing failed: {s}");
    let done = s["counts"]["registered"].as_u64().unwrap_or(0);
    assert!(done > 0 && done < 1200, "{s}");
    assert_eq!(
        s["counts"]["pending"].as_u64().unwrap(),
        1200 - done,
        "the rest is pending: {s}"
    );

    // The uplink is back: the same command finishes, and no device got a second credential.
    relay.restore();
    let (code, events, stderr) =
        run_binary(&sim, register_args(&csv, &ledger, &relay, &sim, &[])).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary(&events)["counts"]["registered"], 1200);
    assert_eq!(simulator_credentials(&sim).len(), 1200);
    assert!(sim.stats().credentials.duplicates.is_empty());
    sim.stop().await;
}

/// The long form (`cargo test --release --test factory_floor -- --ignored --nocapture`): 6,000
/// devices at the default pace, the service unreachable from second 5 to second 65, against the
/// same run without an outage; prints both wall times and what the outage cost.
#[tokio::test]
#[ignore]
async fn a_sixty_second_outage_costs_sixty_seconds_and_no_device() {
    let n = 6000;
    let mut walls = Vec::new();
    for outage in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulator(SimConfig::default()).await;
        let relay = Relay::start(sim.addr).await;
        let csv = devices_csv(dir.path(), "sixty", n);
        let ledger = dir.path().join("l.sqlite");
        let mut args = register_args(&csv, &ledger, &relay, &sim, &[]);
        // The defaults: pace, attempts, timeouts.
        let at = args.iter().position(|a| a == "--account-qps").unwrap();
        args.drain(at..);
        let started = std::time::Instant::now();
        let run = tokio::spawn(run_binary(&sim, args));
        if outage {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            relay.cut();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            relay.restore();
        }
        let (code, events, stderr) = run.await.unwrap();
        let wall = started.elapsed().as_secs_f64();
        let s = summary(&events);
        let sent = s["calls"].as_u64().unwrap();
        let lost = sent - sim.stats().total_calls;
        println!(
            "| {} | {n} devices, exit {code} | wall {wall:.1} s | failed {} | calls {sent}, {lost} into the outage |",
            if outage {
                "60-s outage from second 5"
            } else {
                "no outage"
            },
            s["counts"]["failed"].as_u64().unwrap_or(0)
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(s["counts"]["registered"], n as u64);
        assert!(sim.stats().credentials.duplicates.is_empty());
        walls.push(wall);
        sim.stop().await;
    }
    println!(
        "outage run {:.1} s against the outage-free run + 60 s = {:.1} s: {:+.1} s",
        walls[1],
        walls[0] + 60.0,
        walls[1] - walls[0] - 60.0
    );
    assert!(walls[1] <= walls[0] + 60.0 + 20.0, "{walls:?}");
}

/// The first call of a run measures the clock while the next grant waits for its answer: no
/// call waits holding a grant, so none leave in a bunch when the answer comes. With a long
/// round trip, a bunch would put more than 300 calls into the first second at the service.
#[tokio::test]
async fn measuring_the_clock_puts_no_bunch_into_the_first_second() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(SimConfig {
        latency: "fixed:150".parse().unwrap(),
        ..SimConfig::default()
    })
    .await;
    let ctx = context_for(&sim);
    let csv = devices_csv(dir.path(), "bunch", 450);
    let ledger = dir.path().join("l.sqlite");
    let run = Run::new(&["register"], &csv, &ledger, &sim);
    let extra = ["--test-clock-error", "-1200"];
    assert_eq!(run.exit(&extra, &ctx).await, 0);
    let stats = sim.stats();
    assert!(stats.blocked_ips.is_empty(), "{:?}", stats.blocked_ips);
    let per_ip = stats
        .max_window
        .per_ip_arrivals
        .values()
        .max()
        .copied()
        .unwrap();
    // 294 sent in any second, the one refused call resent, a little jitter.
    assert!(
        per_ip <= 297,
        "{per_ip} calls in one second from one address"
    );
    assert_eq!(simulator_credentials(&sim).len(), 450);
    sim.stop().await;
}

/// The README's first command, as a new user runs it: the rehearsal's simulator blocks an
/// address past 300 calls in any second, and its latency is 80 ms; the run's first second
/// (the clock measured by the first call) must not bunch calls past it.
#[tokio::test]
async fn the_readmes_first_command_rehearses_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/devices.csv");
    let mut c = std::process::Command::new(BIN);
    c.args(["register", fixture, "--simulate", "--quiet"])
        .current_dir(dir.path());
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("every valid target holds a credential"),
        "{text}"
    );
}
