//! Validated plans: the raw arguments of [`crate::cli`] turned, once, into what a command will
//! do (ripgrep's low and high arguments). Each flag was already parsed into its type by clap's
//! value parsers; a plan checks what only the combination can tell (an instance unless
//! `--simulate`, a burst that fits under the ceiling, an operation that leaves credentials) and
//! fixes the defaults. Nothing downstream re-checks a flag.
//!
//! A plan reads nothing but its arguments: no file, no network, no ledger.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;

use crate::api::{Endpoint, SignatureVersion};
use crate::cli::{
    ApiArgs, ExportArgs, ExportFormat, OperationName, OutputArgs, PaceArgs, RunArgs, SingleCallArgs,
};
use crate::client_id::ClientId;
use crate::exit::Failure;
use crate::input::InputSpec;
use crate::ledger::{ItemState, LedgerLocation, Sealer};
use crate::pipeline::{Operation, PaceConfig, RunPlan};
use crate::progress::ProgressMode;
use crate::sim;

/// Where calls go and how they are made.
#[derive(Debug, Clone)]
pub struct AccessPlan {
    pub instance_id: String,
    /// Rehearse against an in-process simulator instead of the cloud.
    pub simulate: bool,
    /// The cloud endpoint given by `--endpoint` or `--region` (unused under `--simulate`; when
    /// neither is given, the CLI profile's region or the default one).
    pub endpoint: Option<Endpoint>,
    pub signature: SignatureVersion,
    pub profile: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Tests only: how far the local clock is made wrong, milliseconds.
    pub clock_error_ms: i64,
    /// One client per entry; `None` is the host's default address.
    pub source_addresses: Vec<Option<IpAddr>>,
    /// The shared public address the calls leave from (`--egress-ip`).
    pub egress: Option<IpAddr>,
    /// What the in-process simulator of a rehearsal starts from.
    pub rehearsal: Rehearsal,
}

/// The state of a rehearsal's simulator: its registry journal (kept beside the ledger), and the
/// device certificates it holds (a certificate rehearsal's input file).
#[derive(Debug, Clone, Default)]
pub struct Rehearsal {
    pub journal: Option<PathBuf>,
    pub certificates: Option<PathBuf>,
}

impl AccessPlan {
    fn new(instance_id: &Option<String>, simulate: bool, api: &ApiArgs) -> Result<Self, Failure> {
        let instance_id = match (instance_id, simulate) {
            (Some(id), _) if id.trim().is_empty() => {
                return Err(Failure::usage(anyhow!("--instance-id must not be empty")));
            }
            (Some(id), _) => id.clone(),
            (None, true) => sim::DEFAULT_INSTANCE_ID.to_owned(),
            (None, false) => {
                return Err(Failure::usage(anyhow!(
                    "--instance-id is required (or --simulate to rehearse against the built-in simulator)"
                )));
            }
        };
        // Without --endpoint or --region the region comes from the CLI profile when the key is
        // resolved (`access::cloud_endpoint`).
        let endpoint = match (&api.endpoint, &api.region) {
            _ if simulate => None,
            (Some(endpoint), _) => Some(endpoint.clone()),
            (None, Some(region)) => Some(Endpoint::for_region(region).map_err(Failure::usage)?),
            (None, None) => None,
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = api.source_addresses.iter().find(|a| !seen.insert(**a)) {
            return Err(Failure::usage(anyhow!(
                "--source-address {twice} is given twice: each address sends its own 300 calls/s to the service, so counting one twice would get it blocked; give each address once"
            )));
        }
        for address in &api.source_addresses {
            // The host must own it: binding tells now, not as a bind error on every device.
            std::net::TcpListener::bind((*address, 0)).map_err(|e| {
                Failure::usage(anyhow!(
                    "--source-address {address} cannot be used: this host has no such address ({e})"
                ))
            })?;
        }
        let source_addresses = if api.source_addresses.is_empty() {
            vec![None]
        } else {
            api.source_addresses.iter().copied().map(Some).collect()
        };
        Ok(AccessPlan {
            instance_id,
            simulate,
            endpoint,
            signature: api.signature,
            profile: api.profile.clone(),
            connect_timeout: api.connect_timeout,
            read_timeout: api.read_timeout,
            clock_error_ms: api.test_clock_error.unwrap_or(0).saturating_mul(1000),
            source_addresses,
            egress: api.egress_ip,
            rehearsal: Rehearsal::default(),
        })
    }

    /// How long calls in flight may take to finish once a run stops: one whole call.
    pub fn drain_timeout(&self) -> Duration {
        self.connect_timeout + self.read_timeout + Duration::from_secs(2)
    }
}

/// A bulk command (`register`, `fetch`, `rotate`, `revoke`, `cert inactivate|activate`).
#[derive(Debug, Clone)]
pub struct BulkPlan {
    pub operation: Operation,
    pub files: Vec<PathBuf>,
    pub input: InputSpec,
    pub ledger: LedgerLocation,
    pub dry_run: bool,
    pub access: AccessPlan,
    pub pace: PaceConfig,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub outage_patience: Duration,
    pub ledger_patience: Duration,
    pub progress: ProgressMode,
    /// `--json`: NDJSON events on stdout, every `progress_interval`.
    pub json: bool,
    pub progress_interval: Duration,
    /// `Some(yes)` for a destructive command, which must be confirmed.
    pub confirm: Option<bool>,
    /// `--encrypt-to`: the recipients the ledger seals secrets to.
    pub seal_to: Option<Sealer>,
    /// `--again`: finished targets of these files are sent anew.
    pub again: bool,
}

impl BulkPlan {
    pub fn new(
        args: RunArgs,
        operation: Operation,
        confirm: Option<bool>,
        stderr_is_terminal: bool,
    ) -> Result<Self, Failure> {
        let input = InputSpec {
            column: args.input.column,
            group_id: args.input.group_id,
            no_header: args.input.no_header,
            certificates: operation.targets_certificates(),
        };
        if args.files.iter().any(|f| f.as_os_str() == "-") {
            return Err(Failure::usage(anyhow!(
                "`-` (standard input) is not supported: a file is validated whole before anything is stored and fingerprinted so a rerun resumes it; save the input to a file and give its path"
            )));
        }
        if args.again && matches!(operation, Operation::Register { .. }) {
            return Err(Failure::usage(anyhow!(
                "register --again would ask for a second credential, which the service refuses (DeviceCredentialExsit); `rotate` gives a device a new secret"
            )));
        }
        if let Some(group) = &input.group_id {
            ClientId::compose(group, "x")
                .map_err(|e| Failure::usage(anyhow!("--group-id '{group}': {e}")))?;
        }
        let ledger = args.ledger.unwrap_or_else(|| {
            LedgerLocation::from(std::path::Path::new(if args.simulate {
                "rehearsal.sqlite"
            } else {
                "provision.sqlite"
            }))
        });
        let mut access = AccessPlan::new(&args.instance_id, args.simulate, &args.api)?;
        if args.simulate {
            // The rehearsal's service keeps its registry beside the rehearsal's ledger, so
            // `register --simulate` then `rotate --simulate` act on the same devices.
            let LedgerLocation::SqliteFile(path) = &ledger else {
                return Err(Failure::usage(anyhow!(
                    "--simulate keeps the rehearsal's registry beside a SQLite ledger; give --ledger a file path"
                )));
            };
            let mut journal = path.as_os_str().to_owned();
            journal.push(".simulator");
            access.rehearsal = Rehearsal {
                journal: Some(journal.into()),
                certificates: operation
                    .targets_certificates()
                    .then(|| args.files.first().cloned())
                    .flatten(),
            };
        }
        Ok(BulkPlan {
            operation,
            access,
            files: args.files,
            input,
            ledger,
            dry_run: args.dry_run,
            pace: pace(&args.pace)?,
            concurrency: args.pace.concurrency,
            max_attempts: args.pace.max_attempts,
            outage_patience: args.pace.outage_patience,
            ledger_patience: args.pace.ledger_patience,
            progress: progress(&args.output, stderr_is_terminal),
            json: args.output.json,
            progress_interval: args.output.progress_interval,
            confirm,
            again: args.again,
            seal_to: match args.encrypt_to.is_empty() {
                true => None,
                false => Some(
                    Sealer::parse(&args.encrypt_to)
                        .map_err(|e| Failure::usage(anyhow!("--encrypt-to: {e}")))?,
                ),
            },
        })
    }

    /// What the pipeline needs of the plan.
    pub fn run_plan(&self) -> RunPlan {
        RunPlan {
            operation: self.operation,
            instance_id: self.access.instance_id.clone(),
            pace: self.pace,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            outage_patience: self.outage_patience,
            ledger_patience: self.ledger_patience,
            drain_timeout: self.access.drain_timeout(),
            sources: self.access.source_addresses.clone(),
            egress: self.access.egress,
        }
    }

    /// Source addresses the run sends from.
    pub fn sources(&self) -> usize {
        self.access.source_addresses.len()
    }
}

fn pace(args: &PaceArgs) -> Result<PaceConfig, Failure> {
    let config = PaceConfig {
        account_qps: args.account_qps,
        ip_qps: args.ip_qps,
        headroom: args.headroom,
        burst: args.burst,
        textbook: args.textbook_pacer,
    };
    if config.ip_ceiling() < f64::from(args.burst) {
        return Err(Failure::usage(anyhow!(
            "--burst {} is larger than the per-second ceiling; lower it",
            args.burst
        )));
    }
    Ok(config)
}

/// The progress policy: decided here from the flags and whether stderr is a terminal, never
/// queried deeper down.
fn progress(args: &OutputArgs, stderr_is_terminal: bool) -> ProgressMode {
    if args.quiet {
        ProgressMode::Off
    } else if stderr_is_terminal {
        ProgressMode::Bar
    } else {
        ProgressMode::Lines(args.progress_interval)
    }
}

/// A command of one or a few calls and no ledger (`ca …`, `cert list`).
pub fn single_call(args: &SingleCallArgs) -> Result<AccessPlan, Failure> {
    AccessPlan::new(&args.instance_id, args.simulate, &args.api)
}

/// The operation a ledger records under `name` (`register` as without `--check-existing`).
pub fn operation(name: OperationName) -> Operation {
    match name {
        OperationName::Register => Operation::Register {
            check_existing: false,
        },
        OperationName::Fetch => Operation::Fetch,
        OperationName::Rotate => Operation::Rotate,
        OperationName::Revoke => Operation::Revoke,
        OperationName::CertInactivate => Operation::CertInactivate,
        OperationName::CertActivate => Operation::CertActivate,
    }
}

/// What `export` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportSelection {
    /// The credential every device holds now, for devices in these states.
    Current { states: Vec<ItemState> },
    /// One operation's rows in these states, as they were recorded (audits).
    Operation {
        operation: Operation,
        states: Vec<ItemState>,
    },
    /// The targets of the operation that did not succeed, and the invalid input rows, in these
    /// states.
    Failures {
        operation: Operation,
        states: Vec<ItemState>,
    },
}

/// The states of a target that did not succeed (what `export --failures` lists).
pub const FAILED_STATES: [ItemState; 4] = [
    ItemState::Invalid,
    ItemState::Failed,
    ItemState::Pending,
    ItemState::NotFound,
];

/// The states in which a device holds a credential.
pub const HOLDING_STATES: [ItemState; 4] = [
    ItemState::Registered,
    ItemState::Existing,
    ItemState::Fetched,
    ItemState::Rotated,
];

#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub ledger: LedgerLocation,
    pub selection: ExportSelection,
    pub format: ExportFormat,
    /// `None` is standard output.
    pub out: Option<PathBuf>,
    /// Opens a sealed ledger's secrets.
    pub identity: Option<PathBuf>,
}

impl ExportPlan {
    pub fn new(args: ExportArgs) -> Result<Self, Failure> {
        let out = (args.out.as_os_str() != "-").then_some(args.out);
        if args.format == ExportFormat::Xlsx && out.is_none() {
            return Err(Failure::usage(anyhow!(
                "--format xlsx writes a file: give --out FILE.xlsx"
            )));
        }
        let selection = match (args.failures, args.operation.map(operation)) {
            (true, operation) => {
                if let Some(s) = args.state.iter().find(|s| !FAILED_STATES.contains(s)) {
                    return Err(Failure::usage(anyhow!(
                        "--failures lists targets that did not succeed; --state takes {} (without --failures for {s})",
                        FAILED_STATES.map(|s| s.as_str()).join(", ")
                    )));
                }
                ExportSelection::Failures {
                    operation: operation.unwrap_or(Operation::Register {
                        check_existing: false,
                    }),
                    states: if args.state.is_empty() {
                        FAILED_STATES.to_vec()
                    } else {
                        args.state
                    },
                }
            }
            (false, None) => {
                if let Some(s) = args.state.iter().find(|s| !HOLDING_STATES.contains(s)) {
                    return Err(Failure::usage(anyhow!(
                        "a device in state {s} holds no credential; --state takes {} (or use --failures, or --operation)",
                        HOLDING_STATES.map(|s| s.as_str()).join(", ")
                    )));
                }
                ExportSelection::Current {
                    states: if args.state.is_empty() {
                        HOLDING_STATES.to_vec()
                    } else {
                        args.state
                    },
                }
            }
            (false, Some(operation)) if !operation.leaves_credentials() => {
                return Err(Failure::usage(anyhow!(
                    "{} leaves no credentials to export; use --failures",
                    operation.name()
                )));
            }
            (false, Some(operation)) => ExportSelection::Operation {
                states: if args.state.is_empty() {
                    operation.success_states().to_vec()
                } else {
                    args.state
                },
                operation,
            },
        };
        Ok(ExportPlan {
            ledger: args.ledger.ledger,
            selection,
            format: args.format,
            out,
            identity: args.identity,
        })
    }
}
