//! The simulator's HTTP side: the hyper accept loop, turning a request into what [`Sim`] decides
//! on, waiting out the drawn latency, and answering as the real endpoint does
//! (`x-acs-request-id`, JSON or XML bodies as [`wire`] renders them, the error shape of
//! onsmqtt-api.md §5, `x-acs-retry-after` on throttling when configured). Bodies are read up to
//! [`wire::MAX_BODY_BYTES`] and no further. `/__sim/*` serves the stats and the registry, to
//! loopback clients only: the registry holds every secret. A connection that sends no whole
//! request header within [`Limits::header_timeout`] (idle between requests included) is closed,
//! and at most [`Limits::max_connections`] are served at once.
//!
//! A fault that "drops the connection" makes the service fail, which hyper turns into a closed
//! socket with no response. It decides nothing about a call: gate, faults and business rules
//! are [`Sim`]'s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming as Body;
use hyper::{Request, Response};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::Incoming;
use super::wire::{self, Format};
use super::{Decision, Sim, SimError};
use crate::api::actions::Action;
use crate::api::sign;

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

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Accepts connections until cancelled; cancelling also closes every open connection. Past
/// `max_connections`, accepting waits for one to close (new ones wait in the kernel's backlog).
pub async fn serve(
    listener: TcpListener,
    sim: Arc<Sim>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
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
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |req| handle(sim.clone(), peer.ip(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

async fn handle(sim: Arc<Sim>, peer: IpAddr, req: Request<Body>) -> Answer {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if let Some(plain) = sim
        .issuer
        .serve_plain(parts.method.as_str(), &path, &parts.headers)
    {
        return Ok(Response::builder()
            .status(plain.status)
            .header("content-type", plain.content_type)
            .body(Full::new(plain.body))
            .expect("static response parts are valid"));
    }
    if path.starts_with("/__sim/") {
        if !is_loopback(peer) {
            return Ok(respond(
                403,
                "sim",
                Format::Json,
                Bytes::from_static(
                    br#"{"Code":"Forbidden.SimulatorIntrospection","Message":"/__sim/ is served to loopback clients only"}"#,
                ),
                None,
            ));
        }
        return Ok(introspection(&sim, &path));
    }
    let query: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("onsmqtt.simulator")
        .to_owned();
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(e) => {
            // Refused before any parameter of the body is known: the query alone picks the format.
            let format = Format::requested(
                query
                    .iter()
                    .find(|(k, _)| k == "Format")
                    .map(|(_, v)| v.as_str()),
            );
            let request_id = sim.next_request_id();
            sim.record(None, &e.code, started.elapsed());
            return Ok(respond(
                e.status,
                &request_id,
                format,
                error_body(format, &e, &request_id, &host),
                None,
            ));
        }
    };
    let form = wire::form_params(&parts.headers, &body);
    let incoming = Incoming {
        method: parts.method.as_str(),
        path: &path,
        query: &query,
        form: &form,
        headers: &parts.headers,
        body_sha256: sign::sha256_hex(&body),
    };
    let format = Format::requested(incoming.param("Format"));
    let request_id = sim.next_request_id();
    if super::sts::Issuer::is_sts(&incoming) {
        return Ok(match sim.sts(&incoming) {
            Ok(body) => respond(200, &request_id, Format::Json, body, None),
            Err(e) => respond(
                e.status,
                &request_id,
                Format::Json,
                error_body(Format::Json, &e, &request_id, &host),
                None,
            ),
        });
    }
    let Decision {
        answer,
        fault,
        delay,
        action,
    } = sim.decide(peer, &incoming, &request_id);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(outcome) = fault.dropped_outcome() {
        sim.record(action, outcome, started.elapsed());
        return Err(Dropped);
    }
    match answer {
        Ok(body) => {
            sim.record(action, "Success", started.elapsed());
            let body = match (format, action) {
                (Format::Xml, Some(action)) => success_xml(action, &body),
                _ => body,
            };
            Ok(respond(200, &request_id, format, body, None))
        }
        Err(e) => {
            sim.record(action, &e.code, started.elapsed());
            let retry_after = if e.code.starts_with("Throttling") {
                sim.retry_after_ms()
            } else {
                None
            };
            Ok(respond(
                e.status,
                &request_id,
                format,
                error_body(format, &e, &request_id, &host),
                retry_after,
            ))
        }
    }
}

/// The whole body, or 413 past [`wire::MAX_BODY_BYTES`]: refused from `content-length` before
/// reading when it is declared, else as soon as the streamed body crosses the bound.
async fn read_body(headers: &hyper::HeaderMap, body: Body) -> Result<Bytes, SimError> {
    let too_large = || {
        SimError::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "The request body exceeds the simulator's limit of {} bytes.",
                wire::MAX_BODY_BYTES
            ),
        )
    };
    let declared = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > wire::MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, wire::MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        // A body that broke off mid-way: treated as empty, as before; the signature check
        // then refuses whatever it was missing.
        Err(_) => Ok(Bytes::new()),
    }
}

/// A success body in XML: the root element named after the response, as the gateway names it
/// (`<RegisterDeviceCredentialResponse>`).
fn success_xml(action: Action, json: &[u8]) -> Bytes {
    let value: serde_json::Value = serde_json::from_slice(json).expect("business answers are JSON");
    wire::json_to_xml(&format!("{}Response", action.name()), &value)
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

/// The body every error answer carries (onsmqtt-api.md §5), in JSON or as `<Error>…</Error>`.
fn error_body(format: Format, e: &SimError, request_id: &str, host: &str) -> Bytes {
    let error = WireError {
        request_id,
        host_id: host,
        code: &e.code,
        message: &e.message,
        recommend: format!(
            "https://api.alibabacloud.com/troubleshoot?q={}&product=OnsMqtt&requestId={request_id}",
            e.code
        ),
    };
    let json = serde_json::to_value(&error).expect("error bodies serialise");
    match format {
        Format::Json => serde_json::to_vec(&json)
            .expect("error bodies serialise")
            .into(),
        Format::Xml => wire::json_to_xml("Error", &json),
    }
}

fn respond(
    status: u16,
    request_id: &str,
    format: Format,
    body: Bytes,
    retry_after_ms: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", format.content_type())
        .header("x-acs-request-id", request_id);
    if let Some(ms) = retry_after_ms {
        builder = builder.header("x-acs-retry-after", ms.to_string());
    }
    builder
        .body(Full::new(body))
        .expect("static response parts are valid")
}

/// A loopback client, also when it arrives on an IPv6 socket as `::ffff:127.0.0.1`.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

fn introspection(sim: &Sim, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/__sim/stats" => respond(
            200,
            "sim",
            Format::Json,
            serde_json::to_vec_pretty(&sim.stats())
                .expect("stats serialise")
                .into(),
            None,
        ),
        "/__sim/expire-temporary" => respond(
            200,
            "sim",
            Format::Json,
            format!("{{\"expired\":{}}}", sim.issuer.expire_all()).into(),
            None,
        ),
        "/__sim/refuse-issuing" | "/__sim/resume-issuing" => {
            sim.issuer.refuse_issuing(path == "/__sim/refuse-issuing");
            respond(200, "sim", Format::Json, Bytes::from_static(b"{}"), None)
        }
        "/__sim/credentials" => Response::builder()
            .header("content-type", "text/csv")
            .body(Full::new(Bytes::from(sim.credentials_csv())))
            .expect("valid"),
        _ => respond(
            404,
            "sim",
            Format::Json,
            Bytes::from_static(br#"{"Code":"NotFound","Message":"unknown simulator path"}"#),
            None,
        ),
    }
}
