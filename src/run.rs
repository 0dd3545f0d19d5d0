//! The command edge: turns parsed flags into validated plans, runs them, prints what happened,
//! and maps every outcome to a documented exit code (see `cli::EXIT_CODES`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use tokio_util::sync::CancellationToken;

use crate::api::credentials::{self, AccessKey};
use crate::api::{ClientConfig, Endpoint, OnsMqttClient};
use crate::cli::*;
use crate::input::{CsvRows, InputSpec};
use crate::ledger::{Ledger, LedgerError, LedgerLocation};
use crate::pipeline::{self, Operation, PaceConfig, RunPlan};
use crate::progress::{self, Counters, ProgressMode};
use crate::report::{self, OperationStatus};
use crate::sim::{self, Latency, SimConfig};

/// A failed command: what to print and which exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn halted(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 3,
        error: error.into(),
    }
}

fn ledger_failure(e: LedgerError) -> Failure {
    Failure {
        code: e.exit_code(),
        error: e.into(),
    }
}

/// Reads an environment variable (injected so tests never touch the process environment).
pub type EnvReader = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the process gives a command: environment, home directory, terminal, signals. Tests
/// build their own.
pub struct RunContext {
    pub env: EnvReader,
    pub home: Option<PathBuf>,
    pub stderr_is_terminal: bool,
    /// Whether a destructive command may ask for a typed confirmation.
    pub stdin_is_terminal: bool,
    /// Cancelled on the first Ctrl-C / SIGTERM.
    pub interrupt: CancellationToken,
    /// The command line as typed, for "resume with" hints.
    pub command_line: String,
}

impl RunContext {
    pub fn from_process() -> Self {
        RunContext {
            env: Box::new(|k| std::env::var(k).ok()),
            home: std::env::var_os("HOME").map(PathBuf::from),
            stderr_is_terminal: std::io::stderr().is_terminal(),
            stdin_is_terminal: std::io::stdin().is_terminal(),
            interrupt: CancellationToken::new(),
            command_line: std::env::args()
                .map(|a| shell_quote(&a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The process entry: parse, run, return the exit code. `main.rs` calls only this.
pub fn main_entry() -> i32 {
    let cli = match <Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let context = RunContext::from_process();
    progress::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 2;
        }
    };
    runtime.block_on(async {
        install_signal_handlers(context.interrupt.clone());
        match execute(cli, &context).await {
            Ok(code) => code,
            Err(failure) => {
                eprintln!("error: {:#}", failure.error);
                failure.code
            }
        }
    })
}

/// First Ctrl-C or SIGTERM: stop dispatching, finish calls in flight, flush. Second: exit now
/// (resume is still safe: claims are durable before any call).
fn install_signal_handlers(interrupt: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let next = async |term: &mut Option<tokio::signal::unix::Signal>| {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        next(&mut term).await;
        eprintln!(
            "\ninterrupted: stopping; calls in flight finish first (press Ctrl-C again to exit at once; rerunning resumes safely)"
        );
        interrupt.cancel();
        next(&mut term).await;
        eprintln!("interrupted again: exiting now");
        std::process::exit(130);
    });
}

pub async fn execute(cli: Cli, context: &RunContext) -> Result<i32, Failure> {
    match cli.command {
        Command::Register(args) => {
            run_operation(
                args.run,
                Operation::Register {
                    check_existing: args.check_existing,
                },
                None,
                context,
            )
            .await
        }
        Command::Fetch(args) => run_operation(args, Operation::Fetch, None, context).await,
        Command::Rotate(args) => run_operation(args, Operation::Rotate, None, context).await,
        Command::Revoke(args) => {
            run_operation(args.run, Operation::Revoke, Some(args.yes), context).await
        }
        Command::Cert(CertCommand::Inactivate(args)) => {
            run_operation(args, Operation::CertInactivate, None, context).await
        }
        Command::Cert(CertCommand::Activate(args)) => {
            run_operation(args, Operation::CertActivate, None, context).await
        }
        Command::Cert(CertCommand::List(args)) => cert_list(args, context).await,
        Command::Ca(CaCommand::RegisterCode(args)) => register_code(args, context).await,
        Command::Ca(CaCommand::VerificationCert(args)) => verification_cert(args, context).await,
        Command::Status(args) => status(args).await,
        Command::Export(args) => export(args).await,
        Command::Simulate(args) => simulate(args.config, context).await,
    }
}

fn pace_plan(args: &PaceArgs) -> Result<PaceConfig, Failure> {
    let raw = args.headroom.trim();
    let headroom = match raw.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => raw.parse::<f64>(),
    }
    .ok()
    .filter(|h| (0.0..0.9).contains(h))
    .ok_or_else(|| usage(anyhow!("--headroom '{raw}': give a percentage such as 2% (or a fraction such as 0.02), below 90%")))?;
    for (name, v) in [
        ("--account-qps", args.account_qps),
        ("--ip-qps", args.ip_qps),
    ] {
        if !(v.is_finite() && v >= 1.0) {
            return Err(usage(anyhow!("{name} must be at least 1")));
        }
    }
    if args.burst == 0 || args.concurrency == 0 || args.max_attempts == 0 {
        return Err(usage(anyhow!(
            "--burst, --concurrency and --max-attempts must be at least 1"
        )));
    }
    let config = PaceConfig {
        account_qps: args.account_qps,
        ip_qps: args.ip_qps,
        headroom,
        burst: args.burst,
        textbook: args.textbook_pacer,
    };
    if config.ip_ceiling() < f64::from(args.burst) {
        return Err(usage(anyhow!(
            "--burst {} is larger than the per-second ceiling; lower it",
            args.burst
        )));
    }
    Ok(config)
}

fn seconds(name: &str, v: f64) -> Result<Duration, Failure> {
    if v.is_finite() && v > 0.0 && v < 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(usage(anyhow!(
            "{name} must be a positive number of seconds"
        )))
    }
}

/// Endpoint and AccessKey for real calls.
fn cloud_access(api: &ApiArgs, context: &RunContext) -> Result<(Endpoint, AccessKey), Failure> {
    let endpoint = match &api.endpoint {
        Some(url) => Endpoint::parse(url),
        None => Endpoint::for_region(&api.region),
    }
    .map_err(usage)?;
    let (key, source) = credentials::resolve(
        api.profile.as_deref(),
        &*context.env,
        context.home.as_deref(),
    )
    .map_err(usage)?;
    tracing::info!("credentials from {source:?}, access key id {}", key.id);
    Ok((endpoint, key))
}

fn clients(
    api: &ApiArgs,
    endpoint: &Endpoint,
    key: &AccessKey,
) -> Result<Vec<OnsMqttClient>, Failure> {
    let mut config = ClientConfig::new(endpoint.clone());
    config.signature = api.signature;
    config.connect_timeout = seconds("--connect-timeout", api.connect_timeout)?;
    config.read_timeout = seconds("--read-timeout", api.read_timeout)?;
    let sources: Vec<Option<std::net::IpAddr>> = if api.source_addresses.is_empty() {
        vec![None]
    } else {
        api.source_addresses.iter().copied().map(Some).collect()
    };
    sources
        .into_iter()
        .map(|source| {
            let mut c = config.clone();
            c.source_address = source;
            OnsMqttClient::new(c, key.clone())
                .map_err(|e| usage(anyhow!("cannot build the HTTP client: {e}")))
        })
        .collect()
}

/// Reads every file once, whole, before anything is stored: a file that fails half-way (not
/// UTF-8 at line 90 000, say) leaves no ledger and no half-ingested rows behind.
fn validate_files(files: &[PathBuf], spec: &InputSpec) -> Result<(), Failure> {
    for file in files {
        for row in CsvRows::open(file, spec).map_err(usage)? {
            row.map_err(usage)?;
        }
    }
    Ok(())
}

/// Ingests validated files in batches, recording each file's fingerprint once it is all in.
async fn ingest(
    ledger: &Ledger,
    operation: &str,
    files: &[(PathBuf, String)],
    spec: &InputSpec,
) -> Result<crate::ledger::IngestCounts, Failure> {
    let mut total = crate::ledger::IngestCounts::default();
    for (file, sha) in files {
        let mut batch = Vec::with_capacity(5000);
        let mut rows = CsvRows::open(file, spec).map_err(usage)?;
        let mut file_rows = 0u64;
        loop {
            let next = rows.next().transpose().map_err(usage)?;
            let end = next.is_none();
            if let Some(row) = next {
                batch.push(row);
            }
            if batch.len() >= 5000 || (end && !batch.is_empty()) {
                let c = ledger
                    .ingest(operation, &batch)
                    .await
                    .map_err(ledger_failure)?;
                total.rows += c.rows;
                total.new_targets += c.new_targets;
                total.duplicates += c.duplicates;
                total.invalid += c.invalid;
                file_rows += c.rows;
                batch.clear();
            }
            if end {
                break;
            }
        }
        let shown = file.display().to_string();
        ledger
            .mark_ingested(operation, sha, &spec.fingerprint_key(), &shown, file_rows)
            .await
            .map_err(ledger_failure)?;
    }
    Ok(total)
}

/// Files whose content was already fully ingested (same bytes, same reading) are skipped:
/// rerunning on a completed million-row ledger must not re-read a million rows twice.
async fn files_to_ingest(
    ledger_path: &LedgerLocation,
    operation: &str,
    files: &[PathBuf],
    spec: &InputSpec,
) -> Result<Vec<(PathBuf, String)>, Failure> {
    let mut fresh = Vec::new();
    let existing = if ledger_path.exists() {
        Some(
            Ledger::open_existing(ledger_path)
                .await
                .map_err(ledger_failure)?,
        )
    } else {
        None
    };
    for file in files {
        let sha = crate::input::file_sha256(file)
            .map_err(|e| usage(anyhow!("{}: cannot read: {e}", file.display())))?;
        let known = match &existing {
            Some(l) => l
                .was_ingested(operation, &sha, &spec.fingerprint_key())
                .await
                .map_err(ledger_failure)?,
            None => false,
        };
        if !known {
            fresh.push((file.clone(), sha));
        }
    }
    if let Some(l) = existing {
        l.close().await;
    }
    Ok(fresh)
}

/// The instance a command works on: `--instance-id`, or the simulator's under `--simulate`.
fn instance_for(instance_id: &Option<String>, simulate: bool) -> Result<String, Failure> {
    match (instance_id, simulate) {
        (Some(id), _) if id.trim().is_empty() => {
            Err(usage(anyhow!("--instance-id must not be empty")))
        }
        (Some(id), _) => Ok(id.clone()),
        (None, true) => Ok(sim::DEFAULT_INSTANCE_ID.to_owned()),
        (None, false) => Err(usage(anyhow!(
            "--instance-id is required (or --simulate to rehearse against the built-in simulator)"
        ))),
    }
}

/// Endpoint and key: the cloud's, or an in-process simulator's (returned so it lives as long
/// as the command).
async fn access_for(
    simulate: bool,
    instance_id: &str,
    api: &ApiArgs,
    context: &RunContext,
) -> Result<(Option<sim::SimHandle>, Endpoint, AccessKey), Failure> {
    if !simulate {
        let (endpoint, key) = cloud_access(api, context)?;
        return Ok((None, endpoint, key));
    }
    let config = SimConfig {
        instances: vec![instance_id.to_owned()],
        latency: Latency::LogNormal {
            median: Duration::from_millis(80),
            sigma: 0.5,
        },
        ..SimConfig::default()
    };
    let handle = sim::start(config)
        .await
        .map_err(|e| usage(anyhow!("cannot start the built-in simulator: {e}")))?;
    println!(
        "rehearsal: built-in simulator at {} (instance {instance_id}); no cloud account is used",
        handle.endpoint()
    );
    let endpoint = Endpoint::parse(&handle.endpoint()).map_err(usage)?;
    let key = handle.keys[0].clone();
    Ok((Some(handle), endpoint, key))
}

/// Asks before a destructive run: `--yes`, or a typed "yes" on a terminal; otherwise refuses.
fn confirm_destructive(what: &str, yes: bool, context: &RunContext) -> Result<(), Failure> {
    println!("{what}");
    if yes {
        return Ok(());
    }
    if !context.stdin_is_terminal {
        return Err(usage(anyhow!(
            "refusing a destructive operation without confirmation: rerun with --yes"
        )));
    }
    print!("Type 'yes' to continue: ");
    std::io::Write::flush(&mut std::io::stdout()).map_err(|e| usage(anyhow!(e)))?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| usage(anyhow!(e)))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(usage(anyhow!("not confirmed: nothing was sent")))
    }
}

/// Every bulk command: validate the input, ingest it into the ledger, then run `operation` over
/// the ledger's pending targets. `destructive` is `Some(yes)` for commands that must confirm.
async fn run_operation(
    args: RunArgs,
    operation: Operation,
    destructive: Option<bool>,
    context: &RunContext,
) -> Result<i32, Failure> {
    let pace = pace_plan(&args.pace)?;
    let spec = InputSpec {
        column: args.input.column.clone(),
        group_id: args.input.group_id.clone(),
        no_header: args.input.no_header,
        certificates: operation.targets_certificates(),
    };
    if let Some(group) = &spec.group_id {
        crate::client_id::ClientId::compose(group, "x")
            .map_err(|e| usage(anyhow!("--group-id '{group}': {e}")))?;
    }
    let instance_id = instance_for(&args.instance_id, args.simulate)?;
    if args.files.iter().any(|f| f.is_dir() || !f.exists()) {
        // Name the file exactly as the reader does.
        validate_files(&args.files, &spec)?;
    }
    let location = LedgerLocation::parse(&args.ledger.ledger).map_err(ledger_failure)?;
    let fresh = files_to_ingest(&location, operation.name(), &args.files, &spec).await?;
    let fresh_files: Vec<PathBuf> = fresh.iter().map(|(f, _)| f.clone()).collect();
    validate_files(&fresh_files, &spec)?;
    let progress_mode = if args.output.quiet {
        ProgressMode::Off
    } else if context.stderr_is_terminal {
        ProgressMode::Bar
    } else {
        ProgressMode::Lines(seconds(
            "--progress-interval",
            args.output.progress_interval,
        )?)
    };

    // Everything that can be refused is checked before the ledger is touched.
    let (simulator, clients) = if args.dry_run {
        (None, Vec::new())
    } else {
        let (simulator, endpoint, key) =
            access_for(args.simulate, &instance_id, &args.api, context).await?;
        (simulator, clients(&args.api, &endpoint, &key)?)
    };

    let ledger = Arc::new(
        Ledger::open(&location, &instance_id)
            .await
            .map_err(ledger_failure)?,
    );
    let retried = ledger
        .retry_failed(operation.name())
        .await
        .map_err(ledger_failure)?;
    let counts = ingest(&ledger, operation.name(), &fresh, &spec).await?;
    let unchanged = args.files.len() - fresh.len();
    if unchanged > 0 {
        println!("{unchanged} file(s) already ingested unchanged: not read again");
    }
    println!(
        "ingested {} rows from {} file(s): {} new targets, {} already in the ledger or repeated, {} invalid{}",
        counts.rows,
        fresh.len(),
        counts.new_targets,
        counts.duplicates,
        counts.invalid,
        if retried > 0 {
            format!("; {retried} failed targets will be retried")
        } else {
            String::new()
        }
    );
    let before = OperationStatus::load(&ledger, operation.name())
        .await
        .map_err(ledger_failure)?;
    let pending = before.count(crate::ledger::ItemState::Pending);
    let sources = args.api.source_addresses.len().max(1);
    if args.dry_run {
        let rate = pace.target_rate(sources);
        println!("dry run: nothing sent");
        print!("{}", before.render());
        let extra = match operation {
            Operation::Register {
                check_existing: true,
            } => ", plus one GetDeviceCredential per device (--check-existing)",
            Operation::Rotate => ", two calls per device (Get, then Refresh)",
            _ => "",
        };
        println!(
            "  plan: {pending} targets to {} at {rate:.0} calls/s ({sources} source address(es); ≤ {:.0}/s per API per account, ≤ {:.0}/s per address), about {:.0} s{extra}",
            operation.name(),
            pace.account_ceiling(),
            pace.ip_ceiling(),
            pending as f64 / rate,
        );
        return Ok(if before.count(crate::ledger::ItemState::Invalid) > 0 {
            1
        } else {
            0
        });
    }
    if let Some(yes) = destructive
        && pending > 0
    {
        let what = format!(
            "{} will call {} for {pending} target(s) on instance {instance_id}. This cannot be undone; clients already connected stay connected until they disconnect.",
            operation.name(),
            operation.first_action(&crate::ledger::WorkItem {
                id: 0,
                target: String::new(),
                attempts: 0,
                maybe_applied: false
            })
        );
        confirm_destructive(&what, yes, context)?;
    }

    let plan = RunPlan {
        operation,
        instance_id: instance_id.clone(),
        pace,
        concurrency: args.pace.concurrency,
        max_attempts: args.pace.max_attempts,
        drain_timeout: seconds("--connect-timeout", args.api.connect_timeout)?
            + seconds("--read-timeout", args.api.read_timeout)?
            + Duration::from_secs(2),
    };
    let run_id = ledger
        .begin_run(operation.name(), &context.command_line)
        .await
        .map_err(ledger_failure)?;
    let counters = Arc::new(Counters::default());
    counters
        .total
        .store(pending.max(0) as u64, Ordering::Relaxed);
    let progress_done = CancellationToken::new();
    let reporter = tokio::spawn(progress::report(
        progress_mode,
        counters.clone(),
        progress_done.clone(),
    ));
    let outcome = pipeline::run(
        plan,
        ledger.clone(),
        clients,
        counters,
        context.interrupt.clone(),
    )
    .await
    .map_err(ledger_failure)?;
    progress_done.cancel();
    let _ = reporter.await;

    let after = OperationStatus::load(&ledger, operation.name())
        .await
        .map_err(ledger_failure)?;
    let code = report::exit_code(outcome.halt.as_ref(), &after);
    let summary = report::summary(&ledger, &after, &outcome, &context.command_line);
    print!("{summary}");
    if let Err(e) = ledger.finish_run(run_id, code, &summary).await {
        tracing::warn!("could not record the run's end: {e}");
    }
    if let Some(sim) = simulator {
        sim.stop().await;
    }
    Ok(code)
}

/// One client for the single-call commands (`ca`, `cert list`), with a simulator if asked.
async fn single_client(
    call: &SingleCallArgs,
    context: &RunContext,
) -> Result<(Option<sim::SimHandle>, OnsMqttClient, String), Failure> {
    let instance_id = instance_for(&call.instance_id, call.simulate)?;
    let (simulator, endpoint, key) =
        access_for(call.simulate, &instance_id, &call.api, context).await?;
    let client = clients(&call.api, &endpoint, &key)?.remove(0);
    Ok((simulator, client, instance_id))
}

/// A single call with the pipeline's patience: throttling and transient errors are retried with
/// backoff; anything else is the command's error (exit 3).
async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::api::ApiError>>,
{
    let mut attempt = 0u32;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e)
                if attempt < 6
                    && matches!(
                        e.class,
                        crate::api::ErrorClass::Throttled { .. }
                            | crate::api::ErrorClass::Transient
                    ) =>
            {
                attempt += 1;
                let wait = match e.class {
                    crate::api::ErrorClass::Throttled {
                        retry_after_ms: Some(ms),
                    } => Duration::from_millis(ms),
                    _ => Duration::from_millis(200 << attempt.min(6)),
                };
                tracing::warn!("{what}: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(halted(anyhow!("{what}: {e}"))),
        }
    }
}

async fn register_code(call: SingleCallArgs, context: &RunContext) -> Result<i32, Failure> {
    let (simulator, client, instance_id) = single_client(&call, context).await?;
    let code = with_retries("GetRegisterCode", || client.get_register_code(&instance_id)).await?;
    println!("{}", code.register_code);
    if let Some(sim) = simulator {
        sim.stop().await;
    }
    Ok(0)
}

async fn verification_cert(
    args: VerificationCertArgs,
    context: &RunContext,
) -> Result<i32, Failure> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| usage(anyhow!("{}: {e}", p.display())))
    };
    let (ca_cert, ca_key) = (read(&args.ca_cert)?, read(&args.ca_key)?);
    // Check the CA files before spending a call.
    crate::ca::check_ca(&ca_cert, &ca_key).map_err(|e| usage(anyhow!("{e}")))?;
    let (simulator, client, instance_id) = single_client(&args.call, context).await?;
    let code = with_retries("GetRegisterCode", || client.get_register_code(&instance_id))
        .await?
        .register_code;
    let pem = crate::ca::verification_certificate(&ca_cert, &ca_key, &code)
        .map_err(|e| usage(anyhow!("{e}")))?;
    std::fs::write(&args.out, pem)
        .map_err(|e| halted(anyhow!("writing {}: {e}", args.out.display())))?;
    println!(
        "wrote {} (CN = registration code {code}); upload it with the CA certificate in the console",
        args.out.display()
    );
    if let Some(sim) = simulator {
        sim.stop().await;
    }
    Ok(0)
}

async fn cert_list(args: ListArgs, context: &RunContext) -> Result<i32, Failure> {
    let (simulator, client, instance_id) = single_client(&args.call, context).await?;
    let out: Box<dyn std::io::Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let f = crate::ledger::create_private(&args.out)
            .and_then(|f| f.set_len(0).map(|_| f))
            .map_err(|e| halted(anyhow!("{}: {e}", args.out.display())))?;
        Box::new(f)
    };
    let mut w = csv::Writer::from_writer(out);
    let io = |e: csv::Error| halted(anyhow!("writing {}: {e}", args.out.display()));
    w.write_record([
        "device_sn",
        "ca_sn",
        "device_name",
        "status",
        "valid_begin",
        "valid_end",
    ])
    .map_err(io)?;
    let (mut page, mut written) = (1u32, 0i64);
    loop {
        let data = with_retries("ListDeviceCertificate", || {
            client.list_device_certificate(&instance_id, page, 100)
        })
        .await?
        .data;
        for c in &data.device_certificate_vos {
            let status = if c.status == "1" {
                "active"
            } else {
                "inactive"
            };
            w.write_record([
                &c.device_sn,
                &c.ca_sn,
                &c.device_name,
                status,
                &c.valid_begin,
                &c.valid_end,
            ])
            .map_err(io)?;
            written += 1;
        }
        if data.device_certificate_vos.is_empty() || written >= data.total {
            break;
        }
        page += 1;
    }
    w.flush().map_err(|e| halted(anyhow!(e)))?;
    if args.out.as_os_str() != "-" {
        eprintln!("wrote {written} certificates to {}", args.out.display());
    }
    if let Some(sim) = simulator {
        sim.stop().await;
    }
    Ok(0)
}

async fn status(args: StatusArgs) -> Result<i32, Failure> {
    let location = LedgerLocation::parse(&args.ledger.ledger).map_err(ledger_failure)?;
    let ledger = Ledger::open_existing(&location)
        .await
        .map_err(ledger_failure)?;
    let mut operations = Vec::new();
    for op in ledger.operations().await.map_err(ledger_failure)? {
        operations.push(
            OperationStatus::load(&ledger, &op)
                .await
                .map_err(ledger_failure)?,
        );
    }
    let last = ledger.last_run().await.map_err(ledger_failure)?;
    if args.json {
        let last = last.map(|(operation, command, started, finished, exit, summary)| {
            serde_json::json!({"operation": operation, "command": command, "started_ms": started, "finished_ms": finished, "exit_code": exit, "summary": summary})
        });
        let doc = serde_json::json!({"ledger": ledger.path(), "instance_id": ledger.instance_id(), "operations": operations, "last_run": last});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| halted(anyhow!(e)))?
        );
    } else {
        println!(
            "ledger {} (instance {})",
            ledger.path(),
            ledger.instance_id()
        );
        for op in &operations {
            println!("{}:", op.operation);
            print!("{}", op.render());
        }
        match last {
            Some((operation, command, started, finished, exit, _)) => {
                let at = |ms: i64| {
                    jiff::Timestamp::from_millisecond(ms)
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                };
                let end = match (finished, exit) {
                    (Some(f), Some(code)) => format!("ended {} with exit code {code}", at(f)),
                    _ => "did not finish (killed, or still running)".to_owned(),
                };
                println!(
                    "last run: {operation}, started {}, {end}\n  {command}",
                    at(started)
                );
            }
            None => println!("no run yet"),
        }
    }
    Ok(0)
}

async fn export(args: ExportArgs) -> Result<i32, Failure> {
    let location = LedgerLocation::parse(&args.ledger.ledger).map_err(ledger_failure)?;
    let ledger = Ledger::open_existing(&location)
        .await
        .map_err(ledger_failure)?;
    let json = args.format == ExportFormat::Json;
    let operation = Operation::from_name(&args.operation).ok_or_else(|| {
        usage(anyhow!("--operation '{}': one of register, fetch, rotate, revoke, cert-inactivate, cert-activate", args.operation))
    })?;
    let n = if args.failures {
        report::export_failures(&ledger, operation.name(), &args.out, json).await
    } else {
        if !matches!(
            operation,
            Operation::Register { .. } | Operation::Fetch | Operation::Rotate
        ) {
            return Err(usage(anyhow!(
                "{} leaves no credentials to export; use --failures",
                operation.name()
            )));
        }
        let states: Vec<&str> = if args.state.is_empty() {
            operation
                .success_states()
                .iter()
                .map(|s| s.as_str())
                .collect()
        } else {
            args.state.iter().map(|s| s.trim()).collect()
        };
        for s in &states {
            if crate::ledger::ItemState::parse(s).is_none() {
                let all: Vec<&str> = crate::ledger::ItemState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect();
                return Err(usage(anyhow!(
                    "--state '{s}': states are {}",
                    all.join(", ")
                )));
            }
        }
        report::export_credentials(&ledger, operation.name(), &states, &args.out, json).await
    }
    .with_context(|| format!("writing {}", args.out.display()))
    .map_err(halted)?;
    if args.out.as_os_str() != "-" {
        eprintln!("wrote {n} rows to {}", args.out.display());
    }
    Ok(0)
}

async fn simulate(config: SimConfig, context: &RunContext) -> Result<i32, Failure> {
    let stats_out = config.stats_out.clone();
    let dump = config.dump_credentials.clone();
    let handle = sim::start(config.clone()).await.map_err(|e| {
        usage(anyhow!(
            "cannot start the simulator on {}: {e}",
            config.listen
        ))
    })?;
    println!(
        "simulator listening on {} (instance {}, access key id {})",
        handle.endpoint(),
        handle.instance_id,
        handle.keys[0].id
    );
    context.interrupt.cancelled().await;
    if let Some(path) = stats_out {
        let json = serde_json::to_vec_pretty(&handle.stats()).map_err(|e| halted(anyhow!(e)))?;
        std::fs::write(&path, json)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(halted)?;
    }
    if let Some(path) = dump {
        let mut file = crate::ledger::create_private(&path)
            .and_then(|f| f.set_len(0).map(|_| f))
            .with_context(|| format!("writing {}", path.display()))
            .map_err(halted)?;
        std::io::Write::write_all(&mut file, handle.credentials_csv().as_bytes())
            .map_err(|e| halted(anyhow!(e)))?;
    }
    handle.stop().await;
    Ok(0)
}
