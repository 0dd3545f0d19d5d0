//! The simulator's HTTP side: accepts connections, runs each call through the gate (IP block,
//! signature, nonce, account window), injects faults and latency, applies the business rule and
//! answers as the real endpoint does (`x-acs-request-id`, JSON bodies, error shape of
//! onsmqtt-api.md §5). A fault that "drops the connection" makes the service fail, which hyper
//! turns into a closed socket with no response.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming as Body;
use hyper::{Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Incoming};
use super::registry::{BusinessResult, Registry, StoredCredential};
use super::stats::{self, Stats};
use super::window::SlidingWindow;
use super::{Latency, SimConfig, SimError};
use crate::api::actions::*;
use crate::api::credentials::AccessKey;
use crate::api::error::IP_BLOCKED_CODE;
use crate::api::sign;
use crate::client_id::ClientId;

/// The CaSn limit of the certificate APIs (onsmqtt-api.md §4).
const MAX_CA_SN_BYTES: usize = 128;

#[derive(Default)]
struct IpState {
    arrivals: SlidingWindow,
    admitted: SlidingWindow,
    blocked_until: Option<Instant>,
}

struct Inner {
    registry: Registry,
    rng: StdRng,
    // Ordered maps and chunked queues for everything that grows with the calls: a hash table's
    // rehash or a deque's reallocation would hold the gate's lock for milliseconds, stall
    // every connection and bunch the arrivals the windows count (measured: one gate call took
    // 7.7 ms and the next 6.5 ms near call 28,700, where tables of 28,672 entries double; the
    // client, pacing at 497/s, was throttled for it).
    nonces: BTreeMap<String, Instant>,
    nonce_order: NonceLog,
    ips: HashMap<IpAddr, IpState>,
    blocked_ips: Vec<IpAddr>,
    api_arrivals: Vec<SlidingWindow>,
    api_admitted: Vec<SlidingWindow>,
    overall_arrivals: SlidingWindow,
    overall_admitted: SlidingWindow,
    calls: BTreeMap<String, BTreeMap<String, u64>>,
    total_calls: u64,
    throttled: u64,
    blocked_refusals: u64,
    faults: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    request_seq: u64,
    first_arrival: Option<Instant>,
    admitted_per_second: Vec<u64>,
}

/// Nonces in arrival order, in fixed-size chunks: it grows a chunk at a time and never copies
/// what it holds.
#[derive(Default)]
struct NonceLog {
    chunks: VecDeque<VecDeque<(Instant, String)>>,
}

const NONCE_CHUNK: usize = 4096;

impl NonceLog {
    fn push_back(&mut self, entry: (Instant, String)) {
        if self.chunks.back().is_none_or(|c| c.len() >= NONCE_CHUNK) {
            self.chunks.push_back(VecDeque::with_capacity(NONCE_CHUNK));
        }
        self.chunks
            .back_mut()
            .expect("a chunk with room")
            .push_back(entry);
    }

    fn front(&self) -> Option<&(Instant, String)> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn pop_front(&mut self) -> Option<(Instant, String)> {
        let chunk = self.chunks.front_mut()?;
        let entry = chunk.pop_front();
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        entry
    }
}

pub struct Sim {
    config: SimConfig,
    keys: Vec<AccessKey>,
    instances: Vec<String>,
    inner: Mutex<Inner>,
}

/// The connection is dropped without an answer.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

type Answer = Result<Response<Full<Bytes>>, Dropped>;

/// What the fault draw decided for one admitted call.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Error(u16, &'static str, &'static str),
    DropBefore,
    DropAfter,
    Slow,
}

impl Sim {
    pub fn new(config: SimConfig) -> std::io::Result<Self> {
        let mut registry = Registry::open(config.state.as_deref())?;
        let instances = config.instance_ids();
        if let Some(path) = &config.device_certs {
            for cert in read_device_certs(path)? {
                for instance in &instances {
                    if registry
                        .certificate(instance, &cert.ca_sn, &cert.device_sn)
                        .is_err()
                    {
                        registry.seed_certificate(instance, cert.clone());
                    }
                }
            }
        }
        let inner = Inner {
            registry,
            rng: StdRng::seed_from_u64(config.seed),
            nonces: BTreeMap::new(),
            nonce_order: NonceLog::default(),
            ips: HashMap::new(),
            blocked_ips: Vec::new(),
            api_arrivals: (0..Action::ALL.len())
                .map(|_| SlidingWindow::default())
                .collect(),
            api_admitted: (0..Action::ALL.len())
                .map(|_| SlidingWindow::default())
                .collect(),
            overall_arrivals: SlidingWindow::default(),
            overall_admitted: SlidingWindow::default(),
            calls: BTreeMap::new(),
            total_calls: 0,
            throttled: 0,
            blocked_refusals: 0,
            faults: BTreeMap::new(),
            latencies_us: Vec::new(),
            request_seq: 0,
            first_arrival: None,
            admitted_per_second: Vec::new(),
        };
        Ok(Sim {
            keys: config.keys(),
            instances,
            config,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the simulator down with a poisoned lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        let name = |i: usize| Action::ALL[i].name().to_owned();
        let nonzero = |w: &Vec<SlidingWindow>| -> BTreeMap<String, usize> {
            w.iter()
                .enumerate()
                .filter(|(_, w)| w.max() > 0)
                .map(|(i, w)| (name(i), w.max()))
                .collect()
        };
        let (issued_total, client_ids, duplicates) = inner.registry.issuance();
        let live = inner.registry.all_credentials().len();
        Stats {
            total_calls: inner.total_calls,
            calls: inner.calls.clone(),
            throttled: inner.throttled,
            blocked_refusals: inner.blocked_refusals,
            blocked_ips: inner.blocked_ips.iter().map(ToString::to_string).collect(),
            faults: inner.faults.clone(),
            max_window: stats::MaxWindows {
                per_api_arrivals: nonzero(&inner.api_arrivals),
                per_api_admitted: nonzero(&inner.api_admitted),
                per_ip_arrivals: inner
                    .ips
                    .iter()
                    .map(|(ip, s)| (ip.to_string(), s.arrivals.max()))
                    .collect(),
                per_ip_admitted: inner
                    .ips
                    .iter()
                    .map(|(ip, s)| (ip.to_string(), s.admitted.max()))
                    .collect(),
                overall_arrivals: inner.overall_arrivals.max(),
                overall_admitted: inner.overall_admitted.max(),
            },
            credentials: stats::CredentialStats {
                live,
                issued_total,
                client_ids,
                duplicates,
            },
            latency_ms: stats::Latency::from_micros(&mut inner.latencies_us.clone()),
            admitted_per_second: inner.admitted_per_second.clone(),
        }
    }

    pub fn credentials_csv(&self) -> String {
        let inner = self.lock();
        let mut out = String::from(
            "instance_id,client_id,device_access_key_id,device_access_key_secret,issued\n",
        );
        for (instance, client_id, c) in inner.registry.all_credentials() {
            out.push_str(&format!(
                "{instance},{client_id},{},{},{}\n",
                c.device_access_key_id,
                c.device_access_key_secret.expose(),
                c.issued
            ));
        }
        out
    }

    /// The gate and the business rule, under one lock: everything a call changes, it changes
    /// atomically. Returns the answer (or a fault) and how long to wait before giving it.
    fn decide(
        &self,
        peer: IpAddr,
        req: &Incoming<'_>,
        request_id: &str,
    ) -> (Result<Bytes, SimError>, Fault, Duration, Option<Action>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.total_calls += 1;
        let first = *inner.first_arrival.get_or_insert(now);
        let action = req.action_name().and_then(Action::from_name);
        inner.overall_arrivals.record(now);
        if let Some(a) = action {
            inner.api_arrivals[a.index()].record(now);
        }
        // Per source IP, all APIs together (flow-control.md: over 300/s the IP "is blocked").
        let ip = inner.ips.entry(peer).or_default();
        if ip.blocked_until.is_some_and(|until| now < until) {
            inner.blocked_refusals += 1;
            return (
                Err(blocked_error(&self.config)),
                Fault::None,
                Duration::ZERO,
                action,
            );
        }
        if ip.arrivals.record(now) > self.config.ip_qps {
            ip.blocked_until = Some(now + Duration::from_secs_f64(self.config.ip_block_secs));
            inner.blocked_refusals += 1;
            if !inner.blocked_ips.contains(&peer) {
                inner.blocked_ips.push(peer);
            }
            tracing::warn!(%peer, "source IP over {} calls/s: blocked for {} s", self.config.ip_qps, self.config.ip_block_secs);
            return (
                Err(blocked_error(&self.config)),
                Fault::None,
                Duration::ZERO,
                action,
            );
        }
        let authenticated = match auth::authenticate(&self.keys, req, jiff::Timestamp::now()) {
            Ok(a) => a,
            Err(e) => return (Err(e), Fault::None, Duration::ZERO, action),
        };
        // Nonces are remembered for the timestamp window: older requests are refused anyway.
        let horizon = Duration::from_secs(auth::MAX_SKEW_SECS as u64 * 2);
        while inner
            .nonce_order
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > horizon)
        {
            let (_, old) = inner.nonce_order.pop_front().expect("front exists");
            inner.nonces.remove(&old);
        }
        if inner.nonces.contains_key(&authenticated.nonce) {
            return (
                Err(SimError::new(
                    400,
                    "SignatureNonceUsed",
                    "Specified signature nonce was used already.",
                )),
                Fault::None,
                Duration::ZERO,
                action,
            );
        }
        inner.nonces.insert(authenticated.nonce.clone(), now);
        inner.nonce_order.push_back((now, authenticated.nonce));
        let action = authenticated.action;
        // Per account and API: at most account_qps admitted calls in any sliding second.
        if inner.api_admitted[action.index()].count(now) >= self.config.account_qps {
            inner.throttled += 1;
            return (
                Err(SimError::new(
                    400,
                    "Throttling.User",
                    "Request was denied due to user flow control.",
                )),
                Fault::None,
                Duration::ZERO,
                Some(action),
            );
        }
        inner.api_admitted[action.index()].record(now);
        inner.overall_admitted.record(now);
        let second = now.duration_since(first).as_secs() as usize;
        if inner.admitted_per_second.len() <= second {
            inner.admitted_per_second.resize(second + 1, 0);
        }
        inner.admitted_per_second[second] += 1;
        inner
            .ips
            .get_mut(&peer)
            .expect("inserted above")
            .admitted
            .record(now);

        let fault = self.draw_fault(&mut inner.rng);
        let latency = self.draw_latency(&mut inner.rng);
        if fault != Fault::None {
            let kind = match fault {
                Fault::Error(_, code, _) => code,
                Fault::DropBefore => "drop_before_apply",
                Fault::DropAfter => "drop_after_apply",
                Fault::Slow => "slow",
                Fault::None => unreachable!(),
            };
            *inner.faults.entry(kind.to_owned()).or_default() += 1;
        }
        let result = match fault {
            Fault::Error(status, code, message) => Err(SimError::new(status, code, message)),
            Fault::DropBefore => Err(SimError::new(0, "", "")),
            _ => self.business(inner, action, req, request_id),
        };
        let delay = if fault == Fault::Slow {
            Duration::from_millis(self.config.slow_ms)
        } else {
            latency
        };
        (result, fault, delay, Some(action))
    }

    fn draw_fault(&self, rng: &mut StdRng) -> Fault {
        let c = &self.config;
        let table = [
            (
                c.fault_internal_error,
                Fault::Error(
                    500,
                    "InternalError",
                    "The request processing has failed due to some unknown error, exception or failure. Try again later.",
                ),
            ),
            (
                c.fault_system_overflow,
                Fault::Error(
                    500,
                    "SystemOverFlow",
                    "The system is overloaded. Please try again.",
                ),
            ),
            (
                c.fault_unavailable,
                Fault::Error(
                    503,
                    "ServiceUnavailable",
                    "The request has failed due to a temporary failure of the server.",
                ),
            ),
            (c.fault_drop_before, Fault::DropBefore),
            (c.fault_drop_after, Fault::DropAfter),
            (c.fault_slow, Fault::Slow),
        ];
        if table.iter().all(|(rate, _)| *rate == 0.0) {
            return Fault::None;
        }
        let mut u: f64 = rng.r#gen();
        for (rate, fault) in table {
            if u < rate {
                return fault;
            }
            u -= rate;
        }
        Fault::None
    }

    fn draw_latency(&self, rng: &mut StdRng) -> Duration {
        match self.config.latency {
            Latency::None => Duration::ZERO,
            Latency::Fixed(d) => d,
            Latency::Uniform(a, b) => a + (b - a).mul_f64(rng.r#gen::<f64>()),
            Latency::LogNormal { median, sigma } => {
                // Box–Muller: one standard normal from two uniforms.
                let (u1, u2): (f64, f64) = (rng.r#gen::<f64>().max(f64::MIN_POSITIVE), rng.r#gen());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                median.mul_f64((sigma * z).exp().min(1000.0))
            }
        }
    }

    /// The business rule of one admitted call.
    fn business(
        &self,
        inner: &mut Inner,
        action: Action,
        req: &Incoming<'_>,
        request_id: &str,
    ) -> Result<Bytes, SimError> {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let param = |name: &str| -> Result<&str, SimError> {
            req.param(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                SimError::new(
                    400,
                    &format!("Missing{name}"),
                    format!("{name} is mandatory for this action."),
                )
            })
        };
        let request_id = request_id.to_owned();
        let json = |v: &dyn erased::Json| Ok(Bytes::from(v.to_json()));
        let registry = &mut inner.registry;
        match action {
            Action::RegisterDeviceCredential
            | Action::GetDeviceCredential
            | Action::RefreshDeviceCredential
            | Action::UnRegisterDeviceCredential => {
                let client_id = param("ClientId")?;
                let instance = param("InstanceId")?;
                self.credential_instance(instance)?;
                if let Err(e) = ClientId::parse(client_id) {
                    return Err(SimError::new(
                        400,
                        "ParameterCheckFailed",
                        format!("Parameter check failed: ClientId {e}"),
                    ));
                }
                let credential = match action {
                    Action::RegisterDeviceCredential => registry.register(instance, client_id, self.config.dup_mode, self.config.quota, now_ms, &mut inner.rng),
                    Action::GetDeviceCredential => registry.get(instance, client_id).cloned().ok_or_else(|| ("DeviceCredentialNotFound", "Device Credential Not Found. Check if the device certificate is registered.".to_owned())),
                    Action::RefreshDeviceCredential => registry.refresh(instance, client_id, now_ms, &mut inner.rng),
                    _ => {
                        business(registry.unregister(instance, client_id))?;
                        return json(&EmptyResponse { request_id });
                    }
                };
                let c = business(credential)?;
                json(&DeviceCredentialResponse {
                    request_id,
                    device_credential: to_wire(instance, client_id, &c),
                })
            }
            Action::ListDeviceCredentialClientId => {
                let group = param("GroupId")?;
                let instance = param("InstanceId")?;
                self.credential_instance(instance)?;
                let size = page_size(param("PageSize")?)?;
                let offset = match req.param("NextToken").filter(|t| !t.is_empty()) {
                    Some(t) => t.parse::<usize>().map_err(|_| {
                        SimError::new(400, "InvalidParameter.NextToken", "NextToken is not valid.")
                    })?,
                    None => {
                        (req.param("PageNo")
                            .and_then(|p| p.parse::<usize>().ok())
                            .unwrap_or(1)
                            .max(1)
                            - 1)
                            * size
                    }
                };
                let (ids, total) = registry.list_client_ids(instance, group, offset, size);
                let next = offset + ids.len();
                json(&ClientIdListResponse {
                    request_id,
                    device_credential_client_id_list: ClientIdPage {
                        client_id_list: ids,
                        next_token: (next < total).then(|| next.to_string()),
                        page_no: (offset / size + 1).to_string(),
                        page_size: size.to_string(),
                        total: total.to_string(),
                    },
                })
            }
            Action::GetRegisterCode => {
                let instance = param("MqttInstanceId")?;
                self.certificate_instance(instance)?;
                // Stable per instance, as the console shows one code per instance.
                let code = sign::sha256_hex(format!("register-code:{instance}").as_bytes())[..32]
                    .to_owned();
                json(&RegisterCodeResponse {
                    request_id,
                    register_code: code,
                })
            }
            Action::InactivateDeviceCertificate
            | Action::ActiveDeviceCertificate
            | Action::GetDeviceCertificate => {
                let instance = param("MqttInstanceId")?;
                let device_sn = param("DeviceSn")?;
                let ca_sn = param("CaSn")?;
                self.certificate_instance(instance)?;
                if ca_sn.len() > MAX_CA_SN_BYTES {
                    return Err(SimError::new(
                        400,
                        "ParameterFieldCheckFailed",
                        "CaSn exceeds 128 bytes.",
                    ));
                }
                match action {
                    Action::GetDeviceCertificate => {
                        let data =
                            business(registry.certificate(instance, ca_sn, device_sn).cloned())?;
                        json(&DeviceCertificateResponse { request_id, data })
                    }
                    _ => {
                        business(registry.set_certificate_status(
                            instance,
                            ca_sn,
                            device_sn,
                            action == Action::ActiveDeviceCertificate,
                        ))?;
                        json(&DeviceSnResponse {
                            request_id,
                            device_sn: device_sn.to_owned(),
                        })
                    }
                }
            }
            Action::ListDeviceCertificate => {
                let instance = param("MqttInstanceId")?;
                self.certificate_instance(instance)?;
                let page_no = param("PageNo")?
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        SimError::new(
                            400,
                            "ParameterFieldCheckFailed",
                            "PageNo must be a positive integer.",
                        )
                    })?;
                let size = page_size(param("PageSize")?)?;
                let (list, total) = registry.list_certificates(instance, page_no, size);
                json(&DeviceCertificateListResponse {
                    request_id,
                    data: DeviceCertificatePage {
                        device_certificate_vos: list,
                        page_no: page_no as i64,
                        page_size: size as i64,
                        total: total as i64,
                    },
                })
            }
        }
    }

    fn credential_instance(&self, instance: &str) -> Result<(), SimError> {
        if self.instances.iter().any(|i| i == instance) {
            Ok(())
        } else {
            Err(SimError::new(
                400,
                "InstancePermissionCheckFailed",
                format!(
                    "Instance permission check failed: {instance} is not an instance of this account."
                ),
            ))
        }
    }

    fn certificate_instance(&self, instance: &str) -> Result<(), SimError> {
        if self.instances.iter().any(|i| i == instance) {
            Ok(())
        } else {
            Err(SimError::new(
                500,
                "MqttInstanceNotFound",
                format!("The MQTT instance {instance} is not found."),
            ))
        }
    }

    fn record(&self, action: Option<Action>, code: &str, elapsed: Duration) {
        let mut inner = self.lock();
        let name = action.map_or("(none)", Action::name);
        *inner
            .calls
            .entry(name.to_owned())
            .or_default()
            .entry(code.to_owned())
            .or_default() += 1;
        inner
            .latencies_us
            .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
    }

    fn next_request_id(&self) -> String {
        let mut inner = self.lock();
        inner.request_seq += 1;
        let seq = inner.request_seq;
        let r: u64 = inner.rng.r#gen();
        format!(
            "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
            (r >> 32) as u32,
            (r >> 16) as u16,
            r as u16,
            (seq >> 48) as u16,
            seq & 0xFFFF_FFFF_FFFF
        )
    }
}

/// Serialising through a trait object keeps `business` one function for every response type.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("responses serialise")
        }
    }
}

fn business<T>(r: BusinessResult<T>) -> Result<T, SimError> {
    r.map_err(|(code, message)| {
        let status = if code == "FindDeviceBySnError" {
            500
        } else {
            400
        };
        SimError::new(status, code, message)
    })
}

fn page_size(raw: &str) -> Result<usize, SimError> {
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| {
            SimError::new(
                400,
                "ParameterFieldCheckFailed",
                "PageSize must be between 1 and 100.",
            )
        })
}

fn to_wire(instance: &str, client_id: &str, c: &StoredCredential) -> DeviceCredential {
    DeviceCredential {
        client_id: client_id.to_owned(),
        instance_id: instance.to_owned(),
        device_access_key_id: c.device_access_key_id.clone(),
        device_access_key_secret: c.device_access_key_secret.clone(),
        create_time: c.create_time,
        update_time: c.update_time,
    }
}

fn blocked_error(config: &SimConfig) -> SimError {
    SimError::new(
        403,
        IP_BLOCKED_CODE,
        format!(
            "Your source IP made more than {} calls in one second and is blocked for {} seconds.",
            config.ip_qps, config.ip_block_secs
        ),
    )
}

fn read_device_certs(path: &std::path::Path) -> std::io::Result<Vec<DeviceCertificate>> {
    let bad = |m: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {m}", path.display()),
        )
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(sn), Some(ca)) = (col("device_sn"), col("ca_sn")) else {
        return Err(bad("needs columns device_sn and ca_sn".into()));
    };
    let (name, status) = (col("device_name"), col("status"));
    let mut out = Vec::new();
    for record in reader.records() {
        let r = record.map_err(|e| bad(e.to_string()))?;
        let get = |i: Option<usize>| i.and_then(|i| r.get(i)).unwrap_or_default().to_owned();
        let now = jiff::Timestamp::now().as_millisecond();
        out.push(DeviceCertificate {
            ca_sn: get(Some(ca)),
            device_content: format!("-----BEGIN CERTIFICATE-----\n(simulated certificate of {})\n-----END CERTIFICATE-----", get(Some(sn))),
            device_name: get(name),
            device_sn: get(Some(sn)),
            status: if get(status) == "0" { "0".into() } else { "1".into() },
            valid_begin: now.to_string(),
            valid_end: (now + 365 * 86_400_000).to_string(),
        });
    }
    Ok(out)
}

#[derive(Serialize)]
struct WireError<'a> {
    #[serde(rename = "RequestId")]
    request_id: &'a str,
    #[serde(rename = "HostId")]
    host_id: &'a str,
    #[serde(rename = "Code")]
    code: &'a str,
    #[serde(rename = "Message")]
    message: &'a str,
    #[serde(rename = "Recommend")]
    recommend: String,
}

fn respond(
    status: u16,
    request_id: &str,
    body: Bytes,
    retry_after_ms: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json;charset=utf-8")
        .header("x-acs-request-id", request_id);
    if let Some(ms) = retry_after_ms {
        builder = builder.header("x-acs-retry-after", ms.to_string());
    }
    builder
        .body(Full::new(body))
        .expect("static response parts are valid")
}

async fn handle(sim: Arc<Sim>, peer: IpAddr, req: Request<Body>) -> Answer {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if path.starts_with("/__sim/") {
        return Ok(introspection(&sim, &path));
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let incoming = Incoming {
        method: parts.method.as_str(),
        path: &path,
        query: &query,
        headers: &parts.headers,
        body_sha256: sign::sha256_hex(&body),
    };
    let request_id = sim.next_request_id();
    let (result, fault, delay, action) = sim.decide(peer, &incoming, &request_id);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if matches!(fault, Fault::DropBefore | Fault::DropAfter) {
        sim.record(
            action,
            if fault == Fault::DropBefore {
                "(dropped before apply)"
            } else {
                "(dropped after apply)"
            },
            started.elapsed(),
        );
        return Err(Dropped);
    }
    match result {
        Ok(body) => {
            sim.record(action, "Success", started.elapsed());
            Ok(respond(200, &request_id, body, None))
        }
        Err(e) => {
            sim.record(action, &e.code, started.elapsed());
            let host = parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("onsmqtt.simulator");
            let body = serde_json::to_vec(&WireError {
                request_id: &request_id,
                host_id: host,
                code: &e.code,
                message: &e.message,
                recommend: format!("https://api.alibabacloud.com/troubleshoot?q={}&product=OnsMqtt&requestId={request_id}", e.code),
            })
            .expect("error bodies serialise");
            let retry_after = if e.code.starts_with("Throttling") {
                sim.config.retry_after_ms
            } else {
                None
            };
            Ok(respond(e.status, &request_id, body.into(), retry_after))
        }
    }
}

fn introspection(sim: &Sim, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/__sim/stats" => respond(
            200,
            "sim",
            serde_json::to_vec_pretty(&sim.stats())
                .expect("stats serialise")
                .into(),
            None,
        ),
        "/__sim/credentials" => Response::builder()
            .header("content-type", "text/csv")
            .body(Full::new(Bytes::from(sim.credentials_csv())))
            .expect("valid"),
        _ => respond(
            404,
            "sim",
            Bytes::from_static(br#"{"Code":"NotFound","Message":"unknown simulator path"}"#),
            None,
        ),
    }
}

/// Accepts connections until cancelled; cancelling also closes every open connection.
pub async fn serve(listener: TcpListener, sim: Arc<Sim>, cancel: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(sim.clone(), peer.ip(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_log_is_a_queue_across_chunks() {
        let t0 = Instant::now();
        let mut log = NonceLog::default();
        let n = NONCE_CHUNK * 2 + 7;
        for i in 0..n {
            log.push_back((t0 + Duration::from_micros(i as u64), i.to_string()));
            if i % 3 == 0 {
                // Interleaved pops keep the order.
                let (_, first) = log.pop_front().unwrap();
                assert_eq!(first, (i / 3).to_string());
            }
        }
        assert!(
            log.chunks.iter().all(|c| c.len() <= NONCE_CHUNK),
            "a chunk never holds more than its size, so it never reallocates"
        );
        let mut expected = n.div_ceil(3);
        while let Some((_, nonce)) = log.pop_front() {
            assert_eq!(nonce, expected.to_string());
            expected += 1;
        }
        assert_eq!(expected, n);
        assert!(log.front().is_none() && log.chunks.is_empty());
    }
}
