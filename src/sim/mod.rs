//! A faithful simulator of the OnsMqtt OpenAPI endpoint: the same ten actions seen from the
//! server side, with signature checks, the documented error codes, flow control (per-account
//! per-API windows, per-IP blocks), seeded faults and latency, optional persistence, and stats.
//!
//! It is the opponent of every test and benchmark and the engine behind `register --simulate`,
//! so it shares the client's types ([`crate::api::actions`]) and signing ([`crate::api::sign`])
//! rather than writing them twice. Where the documents are silent it chooses, and says so in the
//! README ("What the simulator does not model").
//!
//! Temporary credentials come from `sts` (STS AssumeRole/AssumeRoleWithOIDC, the ECS metadata
//! service, a credentials URI), whose keys expire and are then refused by `auth`.
//!
//! A call goes from `http` (serving, answers) to `Sim` here, which holds the one lock and asks in
//! turn `gate` (IP blocks, nonces, windows), `auth` (signatures), `faults` (what fails on
//! purpose, latency) and `business` (each action's rule over the `registry`); `stats` counts what
//! happened. `config` is everything it can be told; `wire` the dialects requests arrive in
//! (query, form body) and answers leave in (JSON, XML).

mod auth;
mod business;
mod config;
mod faults;
mod gate;
mod http;
mod registry;
mod stats;
mod sts;
mod window;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

pub use config::{
    DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_INSTANCE_ID, Latency, SimConfig,
};
pub use registry::DupMode;
pub use stats::Stats;
pub use sts::{CREDENTIALS_URI_PATH, ECS_ROLE_NAME, TemporaryStats};

use crate::api::actions::Action;
use crate::api::credentials::AccessKey;
use auth::Incoming;
use business::{Call, Rules};
use faults::{Fault, Faults};
use gate::{Gate, Limits};
use registry::Registry;
use stats::Tally;

/// An error answer: HTTP status, `Code`, `Message`.
#[derive(Debug, Clone)]
pub struct SimError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl SimError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        SimError {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// The simulated service: what never changes after start outside the lock, and everything a
/// call changes inside one lock, so that a call changes it atomically (gate, registry, rng,
/// tally). HTTP ([`http`]) calls in; the gate, the fault draw and the business rule are asked in
/// turn, each in its own module.
struct Sim {
    keys: Vec<AccessKey>,
    /// STS, the metadata service, the credentials URI, and the keys they issued.
    issuer: sts::Issuer,
    rules: Rules,
    faults: Faults,
    retry_after_ms: Option<u64>,
    state: Mutex<State>,
}

/// Everything a call changes.
struct State {
    gate: Gate,
    registry: Registry,
    /// One seeded sequence for request ids, faults, latency and credential values.
    rng: StdRng,
    tally: Tally,
    request_seq: u64,
}

/// What [`Sim::decide`] settled for one call.
struct Decision {
    /// The body of a success or the error to answer (not answered if the fault drops it).
    answer: Result<Bytes, SimError>,
    fault: Fault,
    /// How long to wait before answering.
    delay: Duration,
    /// The action the call named, if it is one of the ten.
    action: Option<Action>,
}

impl Decision {
    /// A call the gate or the signature check refused: answered at once, no fault drawn.
    fn refused(e: SimError, action: Option<Action>) -> Self {
        Decision {
            answer: Err(e),
            fault: Fault::None,
            delay: Duration::ZERO,
            action,
        }
    }
}

impl Sim {
    fn new(config: SimConfig) -> std::io::Result<Self> {
        let rules = Rules::new(&config);
        let mut registry = Registry::open(config.journal.as_deref())?;
        if let Some(path) = &config.device_certs {
            registry.seed_certificates_from(path, rules.instances())?;
        }
        let state = State {
            gate: Gate::new(Limits::new(&config)),
            registry,
            rng: StdRng::seed_from_u64(config.seed),
            tally: Tally::default(),
            request_seq: 0,
        };
        Ok(Sim {
            keys: config.keys(),
            issuer: sts::Issuer::new(
                config.sts_ttl.map(Duration::from_secs_f64),
                config.metadata_v1_only,
            ),
            rules,
            faults: Faults::new(&config),
            retry_after_ms: config.retry_after_ms,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the simulator down with a poisoned lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate and the business rule, under one lock: everything a call changes, it changes
    /// atomically. Returns the answer (or a fault) and how long to wait before giving it.
    fn decide(&self, peer: IpAddr, req: &Incoming<'_>, request_id: &str) -> Decision {
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let named = req.action_name().and_then(Action::from_name);
        let arrival = match state.gate.arrive(now, peer, named) {
            Ok(arrival) => arrival,
            Err(e) => return Decision::refused(e, named),
        };
        let authenticated =
            match auth::authenticate(&|id| self.known(id), req, jiff::Timestamp::now()) {
                Ok(a) => a,
                Err(e) => return Decision::refused(e, named),
            };
        let action = authenticated.action;
        if let Err(e) = state.gate.admit(arrival, action, authenticated.nonce) {
            return Decision::refused(e, Some(action));
        }
        let (fault, delay) = self.faults.draw(&mut state.rng);
        if let Some(kind) = fault.kind() {
            state.tally.fault(kind);
        }
        let answer = match fault {
            Fault::Error(status, code, message) => Err(SimError::new(status, code, message)),
            // Never answered: the connection is dropped before the call is applied.
            Fault::DropBefore => Err(SimError::new(0, "", "")),
            _ => Call {
                rules: &self.rules,
                registry: &mut state.registry,
                rng: &mut state.rng,
                req,
                request_id,
            }
            .apply(action),
        };
        Decision {
            answer,
            fault,
            delay,
            action: Some(action),
        }
    }

    /// The key of an AccessKeyId: a configured one, or one the issuer gave out.
    fn known(&self, id: &str) -> Option<auth::Known> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .map(|k| auth::Known {
                key: k.clone(),
                expires: None,
            })
            .or_else(|| self.issuer.lookup(id))
    }

    /// An STS call (`AssumeRole`, `AssumeRoleWithOIDC`).
    fn sts(&self, req: &Incoming<'_>) -> Result<Bytes, SimError> {
        self.issuer.sts(&|id| self.known(id), req)
    }

    /// Counts how a call ended, once it is answered or dropped.
    fn record(&self, action: Option<Action>, code: &str, elapsed: Duration) {
        self.lock().tally.outcome(action, code, elapsed);
    }

    fn next_request_id(&self) -> String {
        let mut state = self.lock();
        state.request_seq += 1;
        let seq = state.request_seq;
        let r: u64 = state.rng.r#gen();
        format!(
            "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
            (r >> 32) as u32,
            (r >> 16) as u16,
            r as u16,
            (seq >> 48) as u16,
            seq & 0xFFFF_FFFF_FFFF
        )
    }

    /// The `x-acs-retry-after` of throttled answers, if configured.
    fn retry_after_ms(&self) -> Option<u64> {
        self.retry_after_ms
    }

    fn stats(&self) -> Stats {
        let state = self.lock();
        let (issued_total, client_ids, duplicates) = state.registry.issuance();
        let mut stats = Stats {
            credentials: stats::CredentialStats {
                live: state.registry.all_credentials().len(),
                issued_total,
                client_ids,
                duplicates,
            },
            ..Stats::default()
        };
        stats.temporary = self.issuer.stats();
        state.gate.report(&mut stats);
        state.tally.report(&mut stats);
        stats
    }

    fn credentials_csv(&self) -> String {
        let state = self.lock();
        let mut out = String::from(
            "instance_id,client_id,device_access_key_id,device_access_key_secret,issued\n",
        );
        for (instance, client_id, c) in state.registry.all_credentials() {
            out.push_str(&format!(
                "{instance},{client_id},{},{},{}\n",
                c.device_access_key_id,
                c.device_access_key_secret.expose(),
                c.issued
            ));
        }
        out
    }
}

/// A running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub keys: Vec<AccessKey>,
    pub instance_id: String,
    sim: Arc<Sim>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, for `--endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    /// The registry as CSV (`instance_id,client_id,device_access_key_id,device_access_key_secret,issued`).
    pub fn credentials_csv(&self) -> String {
        self.sim.credentials_csv()
    }

    /// Every temporary key issued so far expires now (the test route `/__sim/expire-temporary`).
    pub fn expire_temporary_keys(&self) -> usize {
        self.sim.issuer.expire_all()
    }

    /// STS, the metadata service and the credentials URI fail from now on, or work again
    /// (`/__sim/refuse-issuing`, `/__sim/resume-issuing`).
    pub fn refuse_issuing(&self, refuse: bool) {
        self.sim.issuer.refuse_issuing(refuse)
    }

    /// Stops accepting and closes every open connection.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Waits until the server stops on its own (never, unless stopped).
    pub async fn join(self) {
        let _ = self.task.await;
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Starts the simulator and returns once it listens.
pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let keys = config.keys();
    let instance_id = config.instance_ids()[0].clone();
    let limits = http::Limits {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections as usize,
    };
    let sim = Arc::new(Sim::new(config)?);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(http::serve(listener, sim.clone(), limits, cancel.clone()));
    Ok(SimHandle {
        addr,
        keys,
        instance_id,
        sim,
        cancel,
        task,
    })
}
