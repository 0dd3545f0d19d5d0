//! `cargo bench --bench pipeline [SCENARIO...]`: the pipeline against the simulator, each as its
//! own process (so the worker's CPU and memory are measured apart from the server's), printing
//! one Markdown row per scenario. Scenarios: pace, two-ips, shared-account, ceiling, sealed, scale,
//! naive, noise, overload, and fleet (several workers on one PostgreSQL ledger; `fleet-share`,
//! `fleet-churn`, `fleet-ledger`, `fleet-claim` run its parts alone).
//! `BENCH_DEVICES=N` shrinks the device counts for a quick look. `BENCH_WORKER_BIN=PATH` runs the
//! worker from another build of the tool (an older controller, say) against this build's
//! simulator, so a before and an after can be measured in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_provision::api::{AccessKey, ClientConfig, Endpoint, OnsMqttClient, request};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-provision");
const AK: &str = "BENCHAK";
const SECRET: &str = "bench-secret";
const INSTANCE: &str = "post-cn-bench0001";

#[path = "../tests/common/sim_process.rs"]
mod sim_process;
use sim_process::SimProcess;

#[path = "../tests/common/postgres.rs"]
mod postgres;

#[path = "pipeline/fleet.rs"]
mod fleet;

/// The benchmarks' simulator: its own process, any port, their instance and key.
fn start_sim(extra: &[&str]) -> SimProcess {
    SimProcess::start(BIN, 0, INSTANCE, &format!("{AK}:{SECRET}"), extra)
}

/// A finished worker process: exit code, wall time, CPU seconds, peak RSS, stdout.
struct Measured {
    code: i32,
    wall: f64,
    cpu: f64,
    max_rss_mib: f64,
    stdout: String,
}

fn measure(cmd: Command) -> Measured {
    Running::spawn(cmd).finish()
}

/// A worker process started and not yet reaped.
struct Running {
    child: std::process::Child,
    started: Instant,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let started = Instant::now();
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("BENCH_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("worker");
        Running { child, started }
    }

    /// SIGKILL: nothing handed back, no lease given up.
    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    // The child is reaped by `wait4` (for its rusage), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn finish(self) -> Measured {
        let Running { child, started } = self;
        let pid = child.id() as libc::pid_t;
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout {
            std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
        }
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let wall = started.elapsed().as_secs_f64();
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Measured {
            code: if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            },
            wall,
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
            stdout,
        }
    }
}

/// The worker's binary: this build's, or `BENCH_WORKER_BIN`.
fn worker_bin() -> String {
    std::env::var("BENCH_WORKER_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// `ledger`: a SQLite file or a PostgreSQL URL.
fn worker(
    csv: &Path,
    ledger: impl AsRef<std::ffi::OsStr>,
    endpoint: &str,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(worker_bin());
    c.arg("register")
        .arg(csv)
        .arg("--ledger")
        .arg(ledger)
        .args(["--instance-id", INSTANCE, "--endpoint", endpoint, "--quiet"])
        .args(extra);
    c.env("ALIBABA_CLOUD_ACCESS_KEY_ID", AK)
        .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
        .env("RUST_LOG", "error");
    c
}

fn devices(dir: &Path, n: usize, tag: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(format!("{tag}-{n}.csv"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(w, "client_id").unwrap();
    for i in 0..n {
        writeln!(w, "GID_bench@@@{tag}-{i:08}").unwrap();
    }
    path
}

fn count(n: usize) -> usize {
    std::env::var("BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(n, |cap: usize| n.min(cap))
}

/// Mean admitted calls/s over the steady phase: whole seconds, first 2 and last 2 dropped.
fn steady_rate(stats: &serde_json::Value) -> f64 {
    let per: Vec<f64> = stats["admitted_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    if per.len() <= 5 {
        return per.iter().sum::<f64>() / per.len().max(1) as f64;
    }
    let steady = &per[2..per.len() - 2];
    steady.iter().sum::<f64>() / steady.len() as f64
}

/// The share of calls the server refused (flow control, overload) over the steady phase, whole
/// seconds with the first 2 and last 2 dropped as in `steady_rate`, in percent.
fn steady_refused_share(stats: &serde_json::Value) -> f64 {
    let series = |key: &str| -> Vec<f64> {
        stats[key]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect())
            .unwrap_or_default()
    };
    let (admitted, refused) = (series("admitted_per_second"), series("refused_per_second"));
    let end = admitted.len().saturating_sub(2).max(2);
    let a: f64 = admitted.iter().take(end).skip(2).sum();
    let r: f64 = refused.iter().take(end).skip(2).sum();
    100.0 * r / (a + r).max(1.0)
}

fn max_of(v: &serde_json::Value) -> u64 {
    v.as_object()
        .map(|m| m.values().filter_map(|x| x.as_u64()).max().unwrap_or(0))
        .unwrap_or(0)
}

fn throttled_in(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            l.split("), ")
                .nth(1)
                .and_then(|r| r.strip_suffix(" throttled"))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// `target`: the pacer's own aim; `limit`: the service's limit the goal is measured against.
fn paced(
    name: &str,
    n: usize,
    worker_extra: &[&str],
    (target, limit): (f64, f64),
    goal: f64,
    textbook: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices(dir.path(), n, name);
    let sim = start_sim(&["--latency", "lognormal:80:0.5"]);
    let mut extra = worker_extra.to_vec();
    if textbook {
        extra.push("--textbook-pacer");
    }
    let m = measure(worker(
        &csv,
        dir.path().join("l.sqlite"),
        &sim.endpoint(),
        &extra,
    ));
    let s = sim.stats();
    let rate = steady_rate(&s);
    if std::env::var_os("BENCH_TIMELINE").is_some() {
        eprintln!("{name} admitted per second: {}", s["admitted_per_second"]);
        eprintln!("{name} calls: {}", s["calls"]);
        eprintln!("{name} worker: {}", m.stdout);
    }
    println!(
        "| {name} | {n} devices, exit {} | steady {rate:.1} calls/s = {:.4} of target {target:.0}, {:.4} of the {limit:.0}/s limit (goal ≥ {goal}) | max 1-s window: per API {}, per IP {} | throttled {}, blocked IPs {:?} | worker CPU {:.1} % of one core, peak RSS {:.1} MiB | wall {:.1} s |",
        m.code,
        rate / target,
        rate / limit,
        max_of(&s["max_window"]["per_api_arrivals"]),
        max_of(&s["max_window"]["per_ip_arrivals"]),
        s["throttled"],
        s["blocked_ips"].as_array().unwrap(),
        100.0 * m.cpu / m.wall,
        m.max_rss_mib,
        m.wall
    );
}

/// With `BENCH_TIMELINE`, the simulator's admitted calls per second; and the worker's output
/// whenever it did not finish with exit 0, so a halt is never just a number in a row.
fn explain(name: &str, stats: &serde_json::Value, m: &Measured) {
    if std::env::var_os("BENCH_TIMELINE").is_some() {
        eprintln!(
            "{name} admitted per second: {}",
            stats["admitted_per_second"]
        );
    }
    if m.code != 0 {
        eprintln!(
            "{name}: exit {}, blocked IPs {}, worker said:\n{}",
            m.code, stats["blocked_ips"], m.stdout
        );
    }
}

/// The worker's own count of calls, from its summary ("this run: N calls ...").
fn calls_in(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("this run: ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The worker's throttled share of its calls, in percent.
fn throttled_share(stdout: &str) -> f64 {
    100.0 * throttled_in(stdout) as f64 / calls_in(stdout).max(1) as f64
}

/// The simulator's per-IP block for the noise and overload scenarios: 330/s, not 300. The worker
/// still paces each address under 300 (at 293); the margin only keeps the simulator's own
/// arrival-time jitter on a loaded machine (connections accepted late, then timestamped
/// together) from blocking the address, which happened to both the old and the new worker in
/// runs on 2026-12-03 and says nothing about how either follows noise or a limit. The per-IP
/// ceiling itself is what pace, two-ips and naive measure.
const IP_BLOCK_MARGIN: [&str; 2] = ["--ip-qps", "330"];

/// Random `SystemOverFlow` at 0 %, 0.5 %, 2 % and 5 % of calls, one address, defaults: devices/s
/// end to end, and as a share of the no-fault run's (goals ≥ 0.97, ≥ 0.90, ≥ 0.80).
fn noise() {
    let n = count(10_000);
    let mut base = None;
    for (rate, goal) in [
        (0.0, None),
        (0.005, Some(0.97)),
        (0.02, Some(0.90)),
        (0.05, Some(0.80)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let csv = devices(dir.path(), n, "noise");
        let fault = rate.to_string();
        let sim = start_sim(&[
            "--latency",
            "lognormal:80:0.5",
            "--fault-system-overflow",
            &fault,
            IP_BLOCK_MARGIN[0],
            IP_BLOCK_MARGIN[1],
        ]);
        let m = measure(worker(
            &csv,
            dir.path().join("l.sqlite"),
            &sim.endpoint(),
            &[],
        ));
        explain("noise", &sim.stats(), &m);
        let devices_per_sec = n as f64 / m.wall;
        let base_rate = *base.get_or_insert(devices_per_sec);
        let judged = goal.map_or_else(
            || "the no-fault reference".to_owned(),
            |g| {
                format!(
                    "{:.3} of the no-fault rate (goal ≥ {g})",
                    devices_per_sec / base_rate
                )
            },
        );
        println!(
            "| noise | {n} devices, {:.1} % random SystemOverFlow, exit {} | {devices_per_sec:.1} devices/s = {judged} | | worker throttled {} of {} calls = {:.2} % | worker CPU {:.1} % | wall {:.1} s |",
            rate * 100.0,
            m.code,
            throttled_in(&m.stdout),
            calls_in(&m.stdout),
            throttled_share(&m.stdout),
            100.0 * m.cpu / m.wall,
            m.wall
        );
    }
}

/// Limits that are real: an account limit of 200/s (the worker believes 500/s; goals: admitted
/// ≥ 0.95 of 200, ≤ 2 % of calls throttled), an overload model at 250/s (settles within 5 s),
/// and the shared account (another client at 150/s).
fn overload() {
    let n = count(10_000);
    {
        let dir = tempfile::tempdir().unwrap();
        let csv = devices(dir.path(), n, "limit");
        let sim = start_sim(&[
            "--latency",
            "lognormal:80:0.5",
            "--account-qps",
            "200",
            IP_BLOCK_MARGIN[0],
            IP_BLOCK_MARGIN[1],
        ]);
        let m = measure(worker(
            &csv,
            dir.path().join("l.sqlite"),
            &sim.endpoint(),
            &[],
        ));
        let s = sim.stats();
        explain("limit", &s, &m);
        let rate = steady_rate(&s);
        println!(
            "| overload: account limit 200/s | {n} devices, one address, exit {} | steady {rate:.1} admitted calls/s = {:.3} of 200 (goal ≥ 0.95) | max 1-s window per API admitted {} | worker throttled {} of {} calls = {:.2} % (goal ≤ 2 %); steady phase {:.2} % | worker CPU {:.1} % | wall {:.1} s |",
            m.code,
            rate / 200.0,
            max_of(&s["max_window"]["per_api_admitted"]),
            throttled_in(&m.stdout),
            calls_in(&m.stdout),
            throttled_share(&m.stdout),
            steady_refused_share(&s),
            100.0 * m.cpu / m.wall,
            m.wall
        );
    }
    {
        let capacity = 250.0;
        let dir = tempfile::tempdir().unwrap();
        let csv = devices(dir.path(), n, "capacity");
        let sim = start_sim(&[
            "--latency",
            "lognormal:80:0.5",
            "--capacity-qps",
            "250",
            IP_BLOCK_MARGIN[0],
            IP_BLOCK_MARGIN[1],
        ]);
        let m = measure(worker(
            &csv,
            dir.path().join("l.sqlite"),
            &sim.endpoint(),
            &[],
        ));
        let s = sim.stats();
        explain("capacity", &s, &m);
        let per: Vec<f64> = s["admitted_per_second"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // Settled: from this second on, every 3-second mean of served calls is within 5 % of the
        // capacity (single seconds scatter by a few percent: the model refuses at random). The
        // last three seconds, the run's tail, are left out.
        let body = &per[..per.len().saturating_sub(3)];
        let mean3: Vec<f64> = body
            .windows(3)
            .map(|w| w.iter().sum::<f64>() / 3.0)
            .collect();
        let settled = (0..mean3.len())
            .find(|&i| {
                mean3[i..]
                    .iter()
                    .all(|&a| (a - capacity).abs() <= 0.05 * capacity)
            })
            .unwrap_or(mean3.len());
        let after = &body[settled.min(body.len())..];
        let mean = after.iter().sum::<f64>() / after.len().max(1) as f64;
        println!(
            "| overload: capacity model 250/s | {n} devices, one address, exit {} | settled (every later 3-s mean within 5 % of 250) after {settled} s (goal ≤ 5 s); then {mean:.1} served calls/s = {:.3} of 250 | refused by the model {} | worker throttled {} of {} calls = {:.2} %; steady phase {:.2} % | worker CPU {:.1} % | wall {:.1} s |",
            m.code,
            mean / capacity,
            s["overloaded"],
            throttled_in(&m.stdout),
            calls_in(&m.stdout),
            throttled_share(&m.stdout),
            steady_refused_share(&s),
            100.0 * m.cpu / m.wall,
            m.wall
        );
    }
    shared_account_with(count(10_000));
}

fn shared_account() {
    shared_account_with(count(30_000));
}

fn shared_account_with(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let csv = devices(dir.path(), n, "shared");
    let sim = start_sim(&["--latency", "lognormal:80:0.5"]);
    let endpoint = sim.endpoint();
    // Another application of the same account: 150 Register calls/s from its own address.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let stop = stop.clone();
        let endpoint = endpoint.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut config = ClientConfig::new(Endpoint::parse(&endpoint).unwrap());
                config.source_address = Some("127.0.0.4".parse().unwrap());
                let client = OnsMqttClient::new(config, AccessKey::new(AK, SECRET)).unwrap();
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / 150));
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let c = client.clone();
                    i += 1;
                    tokio::spawn(async move {
                        let _ = c
                            .send(&request::register_device_credential(
                                INSTANCE,
                                &format!("GID_other@@@o-{i:08}"),
                            ))
                            .await;
                    });
                }
            });
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let m = measure(worker(
        &csv,
        dir.path().join("l.sqlite"),
        &endpoint,
        &[
            "--source-address",
            "127.0.0.2",
            "--source-address",
            "127.0.0.3",
        ],
    ));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = other.join();
    let s = sim.stats();
    explain("shared-account", &s, &m);
    let worker_calls = calls_in(&m.stdout);
    let throttled = throttled_in(&m.stdout);
    let devices_per_sec = n as f64 / m.wall;
    println!(
        "| shared-account | {n} devices + another client at 150/s, exit {} | worker {devices_per_sec:.1} devices/s = {:.3} of the ~350/s left for it (goal ≥ 0.95) | max 1-s window per API {} (limit 500) | worker throttled {throttled} of {worker_calls} calls = {:.2} %; steady phase, both clients' calls: {:.2} % refused | worker CPU {:.1} % | wall {:.1} s |",
        m.code,
        devices_per_sec / 350.0,
        max_of(&s["max_window"]["per_api_admitted"]),
        100.0 * throttled as f64 / worker_calls.max(1) as f64,
        steady_refused_share(&s),
        100.0 * m.cpu / m.wall,
        m.wall
    );
}

const UNLIMITED: [&str; 4] = ["--account-qps", "10000000", "--ip-qps", "10000000"];

fn ceiling() {
    let n = count(200_000);
    let dir = tempfile::tempdir().unwrap();
    let csv = devices(dir.path(), n, "ceiling");
    let sim = start_sim(&UNLIMITED);
    let sim_cpu_before = sim.cpu_seconds();
    let m = measure(worker(
        &csv,
        dir.path().join("l.sqlite"),
        &sim.endpoint(),
        &UNLIMITED,
    ));
    let sim_cpu = sim.cpu_seconds() - sim_cpu_before;
    let s = sim.stats();
    println!(
        "| ceiling | {n} devices, zero latency, limits lifted, exit {} | {:.0} devices/s end to end (goal ≥ 10000) | worker {:.3} CPU-s per 1000 devices, peak RSS {:.1} MiB | simulator served {:.0} calls/s using {:.0} % of a core | wall {:.1} s |",
        m.code,
        n as f64 / m.wall,
        1000.0 * m.cpu / n as f64,
        m.max_rss_mib,
        s["total_calls"].as_f64().unwrap() / m.wall,
        100.0 * sim_cpu / m.wall,
        m.wall
    );
    drop(sim);
    simulator_capacity();
}

/// The cost of sealing: the ceiling scenario with a plain ledger and with one sealed to an age
/// recipient, alternated in one run (plain, sealed, plain, sealed) so both see the same machine.
fn sealed() {
    let n = count(50_000);
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let mut rows = Vec::new();
    for round in 0..2 {
        for seal in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let csv = devices(dir.path(), n, "sealed");
            let sim = start_sim(&UNLIMITED);
            let mut extra = UNLIMITED.to_vec();
            if seal {
                extra.extend(["--encrypt-to", recipient.as_str()]);
            }
            let m = measure(worker(
                &csv,
                dir.path().join("l.sqlite"),
                &sim.endpoint(),
                &extra,
            ));
            rows.push((
                round,
                seal,
                m.code,
                n as f64 / m.wall,
                1e6 * m.cpu / n as f64,
            ));
        }
    }
    for (round, seal, code, rate, cpu_us) in &rows {
        println!(
            "| sealed | {n} devices, limits lifted, {} ledger (round {}), exit {code} | {rate:.0} devices/s | worker {cpu_us:.0} µs CPU per device | | | |",
            if *seal { "sealed" } else { "plain" },
            round + 1
        );
    }
    let mean = |sealed: bool, pick: fn(&(usize, bool, i32, f64, f64)) -> f64| {
        let v: Vec<f64> = rows.iter().filter(|r| r.1 == sealed).map(pick).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "| sealed | ratio sealed / plain | rate {:.3} | CPU per device {:.2}× ({:+.0} µs) | | | |",
        mean(true, |r| r.3) / mean(false, |r| r.3),
        mean(true, |r| r.4) / mean(false, |r| r.4),
        mean(true, |r| r.4) - mean(false, |r| r.4)
    );
}

/// The simulator alone, signatures checked: a load generator of 128 concurrent V3-signed calls.
fn simulator_capacity() {
    let sim = start_sim(&UNLIMITED);
    let endpoint = sim.endpoint();
    let cpu0 = sim.cpu_seconds();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (calls, secs) = rt.block_on(async move {
        let client = OnsMqttClient::new(
            ClientConfig::new(Endpoint::parse(&endpoint).unwrap()),
            AccessKey::new(AK, SECRET),
        )
        .unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let mut set = tokio::task::JoinSet::new();
        for t in 0..128u64 {
            let c = client.clone();
            set.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if c.send(&request::get_device_credential(
                        INSTANCE,
                        &format!("GID_bench@@@cap-{t}"),
                    ))
                    .await
                    .is_err()
                    {
                        n += 1; // DeviceCredentialNotFound: a full, signed, answered call
                    } else {
                        n += 1;
                    }
                }
                n
            });
        }
        let mut total = 0;
        while let Some(n) = set.join_next().await {
            total += n.unwrap();
        }
        (total, started.elapsed().as_secs_f64())
    });
    let cpu = sim.cpu_seconds() - cpu0;
    println!(
        "| simulator capacity | 128 concurrent V3-signed calls for 5 s (load generator on the same 2 cores) | {:.0} calls/s (goal ≥ 5000) | simulator CPU {:.0} % of a core | | | |",
        calls as f64 / secs,
        100.0 * cpu / secs
    );
}

fn scale() {
    for n in [100_000, 1_000_000].map(count) {
        let dir = tempfile::tempdir().unwrap();
        let csv = devices(dir.path(), n, "scale");
        let ledger = dir.path().join("l.sqlite");
        let sim = start_sim(&UNLIMITED);
        let ingest = measure(worker(&csv, &ledger, &sim.endpoint(), &["--dry-run"]));
        let run = measure(worker(&csv, &ledger, &sim.endpoint(), &UNLIMITED));
        let rerun = measure(worker(&csv, &ledger, &sim.endpoint(), &UNLIMITED));
        println!(
            "| scale | {n} rows | ingest (validate + store, --dry-run) {:.2} s (goal ≤ 10 s for 1M), peak RSS {:.1} MiB | full run exit {}: {:.1} s, worker peak RSS {:.1} MiB (goal ≤ 64) | rerun on the completed ledger: exit {} in {:.2} s (goal ≤ 2 s) | | |",
            ingest.wall,
            ingest.max_rss_mib,
            run.code,
            run.wall,
            run.max_rss_mib,
            rerun.code,
            rerun.wall
        );
    }
}

fn main() {
    let all = [
        "pace",
        "two-ips",
        "shared-account",
        "ceiling",
        "sealed",
        "scale",
        "naive",
        "noise",
        "overload",
        "fleet",
    ];
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let chosen: Vec<&str> = if chosen.is_empty() {
        all.to_vec()
    } else {
        chosen.iter().map(String::as_str).collect()
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    if let Ok(bin) = std::env::var("BENCH_WORKER_BIN") {
        println!("worker: {bin}");
    }
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!("| scenario | load | rate | windows / CPU | throttles | resources | time |");
    println!("|---|---|---|---|---|---|---|");
    for s in chosen {
        match s {
            "pace" => paced("pace", count(30_000), &[], (293.0, 300.0), 0.995, false),
            "two-ips" => {
                // 0.4 %: a ceiling of 498, two calls of margin for jitter (BENCH_HEADROOM to change).
                let headroom = std::env::var("BENCH_HEADROOM").unwrap_or_else(|_| "0.4%".into());
                let fraction = headroom.trim_end_matches('%').parse::<f64>().unwrap_or(0.4) / 100.0;
                let target = (500.0 * (1.0 - fraction)).floor() - 1.0;
                paced(
                    "two-ips",
                    count(30_000),
                    &[
                        "--source-address",
                        "127.0.0.2",
                        "--source-address",
                        "127.0.0.3",
                        "--headroom",
                        &headroom,
                    ],
                    (target, 500.0),
                    0.99,
                    false,
                )
            }
            "shared-account" => shared_account(),
            "ceiling" => ceiling(),
            "sealed" => sealed(),
            "scale" => scale(),
            "naive" => paced("naive", count(30_000), &[], (300.0, 300.0), 0.995, true),
            "noise" => noise(),
            "overload" => overload(),
            "fleet" | "fleet-share" | "fleet-churn" | "fleet-ledger" | "fleet-claim" => {
                fleet::run(s)
            }
            other => eprintln!("unknown scenario {other}; choose from {all:?}"),
        }
    }
}
