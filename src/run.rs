//! The command edge: the process's context (environment, terminal, signals), then one
//! dispatch from a parsed command line to its command, and the exit code it ends with.
//! Commands live in [`crate::commands`]; their plans in [`crate::plan`]; the exit codes in
//! [`crate::exit`].

use std::io::IsTerminal;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::cli::{CaCommand, CertCommand, Cli, Command, LedgerCommand};
use crate::commands::{bulk, docs, inspect, simulate, single};
use crate::exit::ExitCode;
pub use crate::exit::Failure;
use crate::pipeline::Operation;
use crate::plan::{BulkPlan, ExportPlan};
use crate::progress;

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
            return if e.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Success
            }
            .code();
        }
    };
    let context = RunContext::from_process();
    progress::init_logging(progress::LogStyle::decide(
        cli.log.color,
        cli.log.log_format,
        &context.env,
        context.stderr_is_terminal,
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::Usage.code();
        }
    };
    let on_interrupt = OnInterrupt::of(&cli.command);
    runtime.block_on(async {
        install_signal_handlers(context.interrupt.clone(), on_interrupt);
        match execute(cli, &context).await {
            Ok(code) => code.code(),
            Err(failure) => {
                // The chain may quote the input or the server: nothing in it plays on the terminal.
                eprintln!(
                    "error: {}",
                    crate::terminal::escape_lines(&failure.to_string())
                );
                failure.code.code()
            }
        }
    })
}

/// What the first Ctrl-C (or SIGTERM) does to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnInterrupt {
    /// A bulk run: stop dispatching, let calls in flight finish and be recorded.
    Drain,
    /// The simulator: stop serving, write its --stats-out and --dump-credentials.
    StopServing,
    /// An export: finish the file being written (it is renamed into place only when whole).
    Finish,
    /// One read-only call or a local read: nothing to keep, so exit at once.
    Exit,
}

impl OnInterrupt {
    fn of(command: &Command) -> Self {
        match command {
            Command::Register(_)
            | Command::Fetch(_)
            | Command::Rotate(_)
            | Command::Revoke(_)
            | Command::Cert(CertCommand::Inactivate(_) | CertCommand::Activate(_)) => Self::Drain,
            Command::Simulate(_) => Self::StopServing,
            Command::Export(_) | Command::Ledger(_) => Self::Finish,
            _ => Self::Exit,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Drain => {
                "\ninterrupted: stopping; calls in flight finish first (press Ctrl-C again to exit at once; rerunning resumes safely)"
            }
            Self::StopServing => "\ninterrupted: stopping the simulator",
            Self::Finish => {
                "\ninterrupted: finishing the file being written (press Ctrl-C again to exit at once)"
            }
            Self::Exit => "\ninterrupted",
        }
    }
}

/// First Ctrl-C or SIGTERM: a bulk run stops dispatching, finishes calls in flight and flushes;
/// the simulator stops serving; anything else exits at once. Second: exit now (resume is still
/// safe: claims are durable before any call).
fn install_signal_handlers(interrupt: CancellationToken, on_interrupt: OnInterrupt) {
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
        eprintln!("{}", on_interrupt.message());
        if on_interrupt == OnInterrupt::Exit {
            std::process::exit(ExitCode::Interrupted.code());
        }
        interrupt.cancel();
        next(&mut term).await;
        eprintln!("interrupted again: exiting now");
        std::process::exit(ExitCode::Interrupted.code());
    });
}

/// Runs one parsed command line.
pub async fn execute(cli: Cli, context: &RunContext) -> Result<ExitCode, Failure> {
    let terminal = context.stderr_is_terminal;
    let bulk = |args, operation, confirm| BulkPlan::new(args, operation, confirm, terminal);
    match cli.command {
        Command::Register(args) => {
            let operation = Operation::Register {
                check_existing: args.check_existing,
            };
            bulk::run(bulk(args.run, operation, None)?, context).await
        }
        Command::Fetch(args) => bulk::run(bulk(args, Operation::Fetch, None)?, context).await,
        Command::Rotate(args) => bulk::run(bulk(args, Operation::Rotate, None)?, context).await,
        Command::Revoke(args) => {
            let plan = bulk(args.run, Operation::Revoke, Some(args.yes))?;
            bulk::run(plan, context).await
        }
        Command::Cert(CertCommand::Inactivate(args)) => {
            bulk::run(bulk(args, Operation::CertInactivate, None)?, context).await
        }
        Command::Cert(CertCommand::Activate(args)) => {
            bulk::run(bulk(args, Operation::CertActivate, None)?, context).await
        }
        Command::Cert(CertCommand::List(args)) => single::cert_list(args, context).await,
        Command::Ca(CaCommand::RegisterCode(args)) => single::register_code(args, context).await,
        Command::Ca(CaCommand::VerificationCert(args)) => {
            single::verification_cert(args, context).await
        }
        Command::Status(args) => inspect::status(args).await,
        Command::Export(args) => inspect::export(ExportPlan::new(args)?).await,
        Command::Show(args) => inspect::show(args).await,
        Command::Ledger(LedgerCommand::Seal(args)) => inspect::seal(args).await,
        Command::Ledger(LedgerCommand::Purge(args)) => inspect::purge(args).await,
        Command::Simulate(args) => simulate::run(args.config, context).await,
        Command::Completions(args) => docs::completions(args.shell),
        Command::Man => docs::man(),
    }
}
