//! The command line: clap derive types and the value parsers that turn each flag into a type
//! (durations, percentages, operation names, states, endpoints) as it is parsed. [`crate::plan`]
//! turns these raw arguments into validated plans; nothing downstream re-checks a flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::{Endpoint, SignatureVersion};
use crate::exit;
use crate::ledger::{ItemState, LedgerLocation};
use crate::sim::SimConfig;

#[derive(Debug, Parser)]
#[command(name = "mqtt-provision", version, about = "Provision ApsaraMQ for MQTT device credentials in bulk: paced, resumable, never re-keying a device.", after_help = exit::help())]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines on stderr look; global, so they go before or after the command.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Colour in log lines: `auto` colours only a terminal, and never when NO_COLOR is set
    /// (CLICOLOR_FORCE=1 forces it, as cargo does).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// `text` for people, `json` for log collectors: one object per line, the same fields.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register a credential for every device of the CSV files (RegisterDeviceCredential).
    #[command(after_help = exit::help())]
    Register(RegisterArgs),
    /// Fetch the existing credential of every device (GetDeviceCredential), e.g. after a lost
    /// export or for devices registered elsewhere. DeviceCredentialNotFound is the named outcome
    /// `not_found`, not a failure.
    #[command(after_help = exit::help())]
    Fetch(RunArgs),
    /// Rotate every device's secret (RefreshDeviceCredential), e.g. after a leak. Two calls per
    /// device: the current secret is fetched first and kept until the new one is exported.
    #[command(after_help = exit::help())]
    Rotate(RunArgs),
    /// Unregister every device's credential (UnRegisterDeviceCredential). Destructive: prints
    /// what it would do and needs --yes (or a typed confirmation on a terminal). Clients already
    /// connected stay connected until they disconnect.
    #[command(after_help = exit::help())]
    Revoke(RevokeArgs),
    /// Device certificates: switch off, switch on, list.
    #[command(subcommand)]
    Cert(CertCommand),
    /// CA registration: the instance's registration code and the verification certificate.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Counts per state, errors by code, and the last run of a ledger.
    Status(StatusArgs),
    /// Write the credential every device holds now (or one operation's rows, or the failures)
    /// as CSV, JSON or a spreadsheet, for flashing.
    Export(ExportArgs),
    /// A device's (or certificate's) history in time order: operation, outcome, time, attempts,
    /// error code, RequestId, the DeviceAccessKeyId of each credential, file and line. Never a
    /// secret.
    Show(ShowArgs),
    /// Ledger maintenance: seal its secrets in place, purge the ones no device holds.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Run the OnsMqtt simulator as a server (rehearsals, tests, benchmarks).
    Simulate(SimulateArgs),
    /// Print a shell completion script, generated from these same definitions.
    Completions(CompletionsArgs),
    /// Print the man page (roff), generated from these same definitions.
    Man,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: e.g. `mqtt-provision completions bash > /etc/bash_completion.d/mqtt-provision`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// InactivateDeviceCertificate for rows of `device_sn, ca_sn`; FindDeviceBySnError is the
    /// named outcome `not_found`. CaSn is checked (≤ 128 bytes) before any call.
    #[command(after_help = exit::help())]
    Inactivate(RunArgs),
    /// ActiveDeviceCertificate for rows of `device_sn, ca_sn`.
    #[command(after_help = exit::help())]
    Activate(RunArgs),
    /// Every device certificate of the instance (ListDeviceCertificate, page by page) as CSV.
    List(ListArgs),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the instance's CA registration code (GetRegisterCode).
    RegisterCode(SingleCallArgs),
    /// Fetch the registration code and write the verification certificate the console asks for:
    /// subject CN = the code, signed by the CA's key.
    VerificationCert(VerificationCertArgs),
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Call GetDeviceCredential before the first Register of each device, for migrations where
    /// devices may already hold a credential. Costs one extra call per device.
    #[arg(long)]
    pub check_existing: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Do it without asking.
    #[arg(long)]
    pub yes: bool,
}

/// What every bulk command takes: input, ledger, endpoint, pace, output.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// CSV files: a `client_id` column (or `device_id` with --group-id); `device_sn` and `ca_sn`
    /// columns for the certificate commands.
    #[arg(required = true, value_name = "CSV")]
    pub files: Vec<PathBuf>,
    /// The ApsaraMQ for MQTT instance (required unless --simulate).
    #[arg(long, value_name = "ID", env = "MQTT_PROVISION_INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[command(flatten)]
    pub input: InputArgs,
    /// The ledger: a SQLite file (created 0600; one per instance), `sqlite:PATH`, or a
    /// PostgreSQL database several workers share (`postgres://…`, PG* variables, sslmode). Default
    /// `provision.sqlite`, and `rehearsal.sqlite` under --simulate: a rehearsal's credentials
    /// never land in the ledger of real ones.
    #[arg(long, value_name = "PATH", value_parser = parse_ledger, env = "MQTT_PROVISION_LEDGER")]
    pub ledger: Option<LedgerLocation>,
    /// Run the operation anew for the targets of these files that an earlier run finished (a
    /// second rotation, revoking again, switching certificates back). Without it a rerun
    /// resumes: what was done is not sent again.
    #[arg(long)]
    pub again: bool,
    /// Ingest and validate, print the plan (counts, pace, estimated duration), send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rehearse against the built-in simulator (no cloud account needed).
    #[arg(long)]
    pub simulate: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Seal every secret the ledger stores to this age X25519 recipient (age1…; repeatable or
    /// comma-separated). A new ledger remembers its recipients and seals from then on.
    #[arg(
        long = "encrypt-to",
        value_name = "RECIPIENT",
        value_delimiter = ',',
        env = "MQTT_PROVISION_ENCRYPT_TO"
    )]
    pub encrypt_to: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The device's ClientId.
    #[arg(
        value_name = "CLIENT_ID",
        required_unless_present = "device_sn",
        conflicts_with = "device_sn"
    )]
    pub client_id: Option<String>,
    /// A device certificate's serial number (with --ca-sn) instead of a ClientId.
    #[arg(long, value_name = "SN", requires = "ca_sn")]
    pub device_sn: Option<String>,
    #[arg(long, value_name = "SN", requires = "device_sn")]
    pub ca_sn: Option<String>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Seal every plain secret of the ledger to age recipients, atomically (interrupted, it is
    /// left as it was; rerun it), and seal every secret stored from then on.
    Seal(SealArgs),
    /// Clear every secret that is no device's current credential (rotated away, revoked,
    /// copies older operations kept), then compact the file.
    Purge(LedgerArgs),
}

#[derive(Debug, Args)]
pub struct SealArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// An age X25519 recipient (age1…); repeatable or comma-separated.
    #[arg(
        long = "encrypt-to",
        value_name = "RECIPIENT",
        value_delimiter = ',',
        required = true,
        env = "MQTT_PROVISION_ENCRYPT_TO"
    )]
    pub encrypt_to: Vec<String>,
}

/// One call (or a few pages) against the API, no ledger.
#[derive(Debug, Args)]
pub struct SingleCallArgs {
    /// The ApsaraMQ for MQTT instance (required unless --simulate).
    #[arg(long, value_name = "ID", env = "MQTT_PROVISION_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Against the built-in simulator.
    #[arg(long)]
    pub simulate: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub call: SingleCallArgs,
    /// Output file (created 0600), or `-` for standard output.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerificationCertArgs {
    #[command(flatten)]
    pub call: SingleCallArgs,
    /// The CA certificate (PEM).
    #[arg(long, value_name = "CA.pem")]
    pub ca_cert: PathBuf,
    /// The CA's private key (PEM, PKCS#8).
    #[arg(long, value_name = "CA.key")]
    pub ca_key: PathBuf,
    /// Where to write the verification certificate (PEM).
    #[arg(long, default_value = "verification.pem")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// Column holding the ClientId (default `client_id`; `device_id` with --group-id).
    #[arg(long, value_name = "NAME")]
    pub column: Option<String>,
    /// Compose ClientIds as `<GROUP_ID>@@@<device_id>`.
    #[arg(long, value_name = "GID_xxx")]
    pub group_id: Option<String>,
    /// The files have no header row: one ClientId (or device id) per line.
    #[arg(long)]
    pub no_header: bool,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// The ledger: a SQLite file (created 0600; one per instance), `sqlite:PATH`, or a
    /// PostgreSQL database (`postgres://…`).
    #[arg(long, value_name = "PATH", default_value = "provision.sqlite", value_parser = parse_ledger, env = "MQTT_PROVISION_LEDGER")]
    pub ledger: LedgerLocation,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Region of the instance; gives https://onsmqtt.<region>.aliyuncs.com (default: the CLI
    /// profile's region_id, as the aliyun CLI does, else cn-hangzhou).
    #[arg(long, env = "MQTT_PROVISION_REGION")]
    pub region: Option<String>,
    /// Endpoint URL, overriding --region (plain http only to a loopback host).
    #[arg(long, value_name = "URL", value_parser = EndpointParser, env = "MQTT_PROVISION_ENDPOINT")]
    pub endpoint: Option<Endpoint>,
    /// Signature version.
    #[arg(long, value_enum, default_value_t = SignatureVersion::V3, env = "MQTT_PROVISION_SIGNATURE")]
    pub signature: SignatureVersion,
    /// Tests only: sign as if the local clock were SECS off (negative: slow), to prove the
    /// correction from the service's `Date`.
    #[arg(long, hide = true, value_name = "SECS", allow_negative_numbers = true)]
    pub test_clock_error: Option<i64>,
    /// Profile of ~/.aliyun/config.json, or section of ~/.alibabacloud/credentials.ini (default:
    /// ALIBABA_CLOUD_PROFILE, else the file's `current`); skips the environment's key.
    #[arg(long)]
    pub profile: Option<String>,
    /// Connect timeout, seconds.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_timeout)]
    pub connect_timeout: Duration,
    /// Read timeout, seconds.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_timeout)]
    pub read_timeout: Duration,
    /// Local address to send from (repeatable; comma-separated in the environment): each gets
    /// its own per-IP budget.
    #[arg(
        long = "source-address",
        value_name = "IP",
        env = "MQTT_PROVISION_SOURCE_ADDRESS",
        value_delimiter = ','
    )]
    pub source_addresses: Vec<IpAddr>,
    /// The public address this host's calls reach the service from, when it shares it with
    /// other workers of a fleet (NAT): they then share its 300 calls/s instead of each taking
    /// them (PostgreSQL ledger only).
    #[arg(long, value_name = "IP", env = "MQTT_PROVISION_EGRESS_IP")]
    pub egress_ip: Option<IpAddr>,
}

#[derive(Debug, Args)]
pub struct PaceArgs {
    /// Account limit per API, calls/s (documented: 500).
    #[arg(long, default_value = "500", value_parser = parse_rate_limit)]
    pub account_qps: f64,
    /// Per source address limit, all APIs, calls/s (documented: 300; past it the IP is blocked).
    #[arg(long, default_value = "300", value_parser = parse_rate_limit)]
    pub ip_qps: f64,
    /// Kept free under both limits for network jitter: `2%` or `0.02`.
    #[arg(long, default_value = "2%", value_parser = parse_headroom, env = "MQTT_PROVISION_HEADROOM")]
    pub headroom: f64,
    /// Token-bucket burst (the pace is lowered by burst − 1 to keep every second under the limit).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
    /// Devices in progress at once.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Transient failures per device before it is `failed` (throttling does not count, nor
    /// failures while the service is unreachable).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// How long the service may stay unreachable before the run halts (exit 3, everything
    /// unfinished still pending): seconds, or with a unit (`90s`, `15m`, `1h`).
    #[arg(long, default_value = "15m", value_name = "DURATION", value_parser = parse_patience, env = "MQTT_PROVISION_OUTAGE_PATIENCE")]
    pub outage_patience: Duration,
    /// How long the ledger's database (PostgreSQL) may stay unreachable before the run halts
    /// (exit 3): dispatch stops at once, and the outcomes of the calls in flight wait in memory
    /// for the database to answer again.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_patience, env = "MQTT_PROVISION_LEDGER_PATIENCE")]
    pub ledger_patience: Duration,
    /// Benchmarks only: pace with the textbook `Quota::per_second(limit)` instead.
    #[arg(long, hide = true)]
    pub textbook_pacer: bool,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Seconds between plain progress lines when stderr is not a terminal.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_progress_interval)]
    pub progress_interval: Duration,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    /// Standard output becomes NDJSON events (`start`, `progress`, `halt`, `summary`; see the
    /// README); the human text goes to stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Print JSON instead of text (the counts and errors as the `summary` event has them).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
    /// A spreadsheet whose cells are text: passwords beginning with `+` or `=` stay intact.
    Xlsx,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// States to export, comma-separated (default: every state that holds a credential; with
    /// --operation, that operation's success states).
    #[arg(long, value_delimiter = ',', value_parser = parse_state)]
    pub state: Vec<ItemState>,
    /// Output file (created 0600), or `-` for standard output.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// Write the failures instead: file, line, client_id, state, code, message, request_id.
    #[arg(long)]
    pub failures: bool,
    /// One operation's rows instead of what devices hold now, for audits: register, fetch,
    /// rotate, or any operation with --failures (whose default is register).
    #[arg(long, value_enum)]
    pub operation: Option<OperationName>,
    /// The age identity file that opens a sealed ledger's secrets (AGE-SECRET-KEY-1…).
    #[arg(long, value_name = "FILE", env = "MQTT_PROVISION_IDENTITY")]
    pub identity: Option<PathBuf>,
}

/// The operations a ledger records, by the name it records them under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OperationName {
    Register,
    Fetch,
    Rotate,
    Revoke,
    CertInactivate,
    CertActivate,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub config: SimConfig,
}

fn parse_ledger(raw: &str) -> Result<LedgerLocation, String> {
    LedgerLocation::parse(std::path::Path::new(raw)).map_err(|e| e.to_string())
}

/// `--endpoint`: clap's own message would repeat the value, and with it a password the URL
/// may carry; this one says only what [`Endpoint::parse`] says (which hides it).
#[derive(Clone)]
struct EndpointParser;

impl clap::builder::TypedValueParser for EndpointParser {
    type Value = Endpoint;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Endpoint, clap::Error> {
        let fail = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid --endpoint: {message}\n"),
            )
            .with_cmd(cmd)
        };
        let raw = value
            .to_str()
            .ok_or_else(|| fail("it is not UTF-8".into()))?;
        Endpoint::parse(raw).map_err(|e| fail(e.to_string()))
    }
}

/// Seconds as a positive number below a day, at least `min`.
fn seconds_at_least(raw: &str, min: f64) -> Result<Duration, String> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= min && *v < 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("'{raw}': give a number of seconds from {min} to 86399"))
}

fn parse_timeout(raw: &str) -> Result<Duration, String> {
    seconds_at_least(raw, 0.001)
}

/// A progress line more often than this would only flood the log.
fn parse_progress_interval(raw: &str) -> Result<Duration, String> {
    seconds_at_least(raw, 0.1)
}

/// `900`, `90s`, `15m` or `1h`: from 1 s to a week.
fn parse_patience(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => (&raw[..at], &raw[at..]),
        None => (raw, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|s| s.is_finite() && (1.0..=604_800.0).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            format!("'{raw}': give a duration such as 900, 90s, 15m or 1h (1 s to a week)")
        })
}

/// `2%` or `0.02`: a fraction below 90 %.
fn parse_headroom(raw: &str) -> Result<f64, String> {
    let raw = raw.trim();
    match raw.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => raw.parse::<f64>(),
    }
    .ok()
    .filter(|h| (0.0..0.9).contains(h))
    .ok_or_else(|| {
        format!("'{raw}': give a percentage such as 2% (or a fraction such as 0.02), below 90%")
    })
}

fn parse_rate_limit(raw: &str) -> Result<f64, String> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 1.0)
        .ok_or_else(|| format!("'{raw}': must be at least 1 call/s"))
}

fn at_least_one(raw: &str) -> Result<usize, String> {
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| format!("'{raw}': must be a whole number of at least 1"))
}

fn parse_state(raw: &str) -> Result<ItemState, String> {
    ItemState::parse(raw.trim()).ok_or_else(|| {
        let all: Vec<&str> = ItemState::ALL.iter().map(|s| s.as_str()).collect();
        format!("'{raw}': states are {}", all.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_types_or_clear_errors() {
        assert_eq!(parse_headroom("2%"), Ok(0.02));
        assert_eq!(parse_headroom("0.4%"), Ok(0.004));
        assert_eq!(parse_headroom("0.1"), Ok(0.1));
        assert!(parse_headroom("95%").is_err() && parse_headroom("x").is_err());
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_timeout("0").is_err() && parse_timeout("nan").is_err());
        assert!(parse_progress_interval("1e-10").is_err());
        assert_eq!(parse_patience("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_patience("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_patience("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_patience("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "0", "15x", "-5m", "nan", "2w", "1e10"] {
            assert!(parse_patience(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_state("not_found"), Ok(ItemState::NotFound));
        assert!(parse_state("done").unwrap_err().contains("registered"));
        assert!(parse_rate_limit("0.5").is_err());
        assert!(at_least_one("0").is_err());
    }

    #[test]
    fn operation_names_are_the_ledger_names() {
        let names: Vec<String> = OperationName::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "register",
                "fetch",
                "rotate",
                "revoke",
                "cert-inactivate",
                "cert-activate"
            ]
        );
    }
}
