//! The other side of temporary credentials: STS `AssumeRole` (V1-signed like any RPC call) and
//! `AssumeRoleWithOIDC` (unsigned; the OIDC token is the proof), product Sts 2015-04-01; the
//! ECS instance metadata service (`PUT /latest/api/token` for an IMDSv2 token, then the
//! instance's RAM role under `/latest/meta-data/ram/security-credentials/`); and a credentials
//! URI (`GET /credentials-uri`, the JSON the official URI provider reads).
//!
//! Every key issued here lives `--sts-ttl` seconds (else the `DurationSeconds` asked for, else
//! an hour) and is then refused with `InvalidSecurityToken.Expired` by the OnsMqtt side, which
//! finds issued keys through [`Issuer::lookup`]. Issued values are random, not seeded: nothing
//! a test compares depends on them. It decides nothing about OnsMqtt calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::HeaderMap;
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};

use super::SimError;
use super::auth::{self, Incoming, Keys, Known};
use crate::api::credentials::AccessKey;
use crate::api::credentials::fetch::STS_VERSION;
use crate::secret::Secret;

/// The RAM role of the simulated instance, as the metadata service lists it.
pub const ECS_ROLE_NAME: &str = "mqtt-provision-sim-role";
/// Where the simulator serves a credentials URI.
pub const CREDENTIALS_URI_PATH: &str = "/credentials-uri";
const ROLE_PATH: &str = "/latest/meta-data/ram/security-credentials/";
const TOKEN_PATH: &str = "/latest/api/token";
/// STS's documented `DurationSeconds` range and default.
const DURATION_RANGE: std::ops::RangeInclusive<u64> = 900..=43_200;
const DEFAULT_DURATION: u64 = 3600;
/// Expired keys are kept this long to answer `Expired` rather than `NotFound`.
const KEEP_EXPIRED: Duration = Duration::from_secs(600);

/// What was issued, for `/__sim/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TemporaryStats {
    pub assume_role: u64,
    pub assume_role_with_oidc: u64,
    /// IMDSv2 session tokens issued.
    pub metadata_tokens: u64,
    /// Metadata reads with a valid IMDSv2 token, and without one (IMDSv1).
    pub metadata_v2_reads: u64,
    pub metadata_v1_reads: u64,
    pub credentials_uri: u64,
    /// Keys issued by any of the above.
    pub keys_issued: u64,
}

/// The issuer and its keys.
pub struct Issuer {
    ttl: Option<Duration>,
    /// `--metadata-v1-only`: no IMDSv2 tokens.
    v1_only: bool,
    /// Test switch (`/__sim/refuse-issuing`): every issuing endpoint fails.
    refusing: std::sync::atomic::AtomicBool,
    state: Mutex<IssuerState>,
}

#[derive(Default)]
struct IssuerState {
    keys: HashMap<String, Known>,
    metadata_tokens: HashMap<String, Instant>,
    stats: TemporaryStats,
}

/// A plain (non-API) answer: status, content type, body.
pub struct Plain {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

fn err(status: u16, code: &str, message: impl Into<String>) -> SimError {
    SimError::new(status, code, message)
}

fn random(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

fn stamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Issuer {
    pub fn new(ttl: Option<Duration>, v1_only: bool) -> Self {
        Issuer {
            ttl,
            v1_only,
            refusing: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(IssuerState::default()),
        }
    }

    fn refusing(&self) -> bool {
        self.refusing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on every issuing endpoint fails (STS 503 `ServiceUnavailable`, the metadata
    /// service and the URI 500), or works again.
    pub fn refuse_issuing(&self, refuse: bool) {
        self.refusing
            .store(refuse, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every key issued so far expires now; how many there were.
    pub fn expire_all(&self) -> usize {
        let now = jiff::Timestamp::now();
        let mut state = self.lock();
        for known in state.keys.values_mut() {
            known.expires = Some(now);
        }
        state.keys.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IssuerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An issued key by its id, expired or not.
    pub fn lookup(&self, id: &str) -> Option<Known> {
        self.lock().keys.get(id).cloned()
    }

    pub fn stats(&self) -> TemporaryStats {
        self.lock().stats.clone()
    }

    /// A new key that expires after `--sts-ttl` (else `asked`), on a whole second as the
    /// `Expiration` string says, so the client and the simulator agree on the instant.
    fn issue(&self, asked: Duration) -> (AccessKey, jiff::Timestamp) {
        let ttl = self.ttl.unwrap_or(asked);
        let now = jiff::Timestamp::now();
        let end = now
            .checked_add(jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(jiff::Timestamp::MAX);
        let expires = jiff::Timestamp::from_second(end.as_second()).unwrap_or(end);
        let key = AccessKey {
            id: format!("STS.{}", random(24)),
            secret: Secret::new(random(40)),
            security_token: Some(Secret::new(format!("CAIS{}", random(96)))),
        };
        let mut state = self.lock();
        let keep_after = now
            .checked_sub(jiff::SignedDuration::try_from(KEEP_EXPIRED).unwrap_or_default())
            .unwrap_or(now);
        state
            .keys
            .retain(|_, k| k.expires.is_none_or(|at| at > keep_after));
        state.keys.insert(
            key.id.clone(),
            Known {
                key: key.clone(),
                expires: Some(expires),
            },
        );
        state.stats.keys_issued += 1;
        (key, expires)
    }

    /// Whether a request is an STS call this simulator answers.
    pub fn is_sts(req: &Incoming<'_>) -> bool {
        !req.has_header("authorization")
            && matches!(
                req.param("Action"),
                Some("AssumeRole" | "AssumeRoleWithOIDC")
            )
    }

    /// `AssumeRole` / `AssumeRoleWithOIDC`: the JSON answer, or the error.
    pub fn sts(&self, keys: Keys<'_>, req: &Incoming<'_>) -> Result<Bytes, SimError> {
        if self.refusing() {
            return Err(err(
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            ));
        }
        if req.param("Version") != Some(STS_VERSION) {
            return Err(err(
                400,
                "InvalidVersion",
                format!("Specified parameter Version is not valid: use {STS_VERSION}."),
            ));
        }
        let oidc = req.param("Action") == Some("AssumeRoleWithOIDC");
        if oidc {
            let token = required(req, "OIDCToken")?;
            let provider = required(req, "OIDCProviderArn")?;
            // A JWT: three non-empty base64url parts. The simulator checks no signature.
            let parts: Vec<&str> = token.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
                return Err(err(
                    400,
                    "InvalidParameter.OIDCToken",
                    "The parameter OIDCToken is not a valid JWT.",
                ));
            }
            if !provider.starts_with("acs:ram::") || !provider.contains(":oidc-provider/") {
                return Err(err(
                    400,
                    "InvalidParameter.OIDCProviderArn",
                    "The parameter OIDCProviderArn is invalid.",
                ));
            }
        } else {
            auth::verify_v1(keys, req, jiff::Timestamp::now())?;
        }
        let role_arn = required(req, "RoleArn")?;
        let session = required(req, "RoleSessionName")?;
        let account = role_arn
            .strip_prefix("acs:ram::")
            .and_then(|r| r.split_once(":role/"))
            .filter(|(account, role)| {
                !account.is_empty()
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && !role.is_empty()
            });
        let Some((account, role)) = account else {
            return Err(err(
                400,
                "InvalidParameter.RoleArn",
                "The parameter RoleArn is invalid.",
            ));
        };
        let duration = match req.param("DurationSeconds") {
            None => DEFAULT_DURATION,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|d| DURATION_RANGE.contains(d))
                .ok_or_else(|| {
                    err(
                        400,
                        "InvalidParameter.DurationSeconds",
                        "The parameter DurationSeconds must be between 900 and 43200.",
                    )
                })?,
        };
        let (key, expires) = self.issue(Duration::from_secs(duration));
        {
            let mut state = self.lock();
            if oidc {
                state.stats.assume_role_with_oidc += 1;
            } else {
                state.stats.assume_role += 1;
            }
        }
        let body = serde_json::json!({
            "RequestId": random(32),
            "AssumedRoleUser": {
                "Arn": format!("acs:ram::{account}:role/{role}/{session}"),
                "AssumedRoleId": format!("3{}:{session}", random(16)),
            },
            "Credentials": {
                "AccessKeyId": key.id,
                "AccessKeySecret": key.secret.expose(),
                "SecurityToken": key.security_token.as_ref().map(Secret::expose),
                "Expiration": stamp(expires),
            },
        });
        Ok(serde_json::to_vec(&body).expect("json").into())
    }

    /// The metadata service and the credentials URI; `None` for any other path.
    pub fn serve_plain(&self, method: &str, path: &str, headers: &HeaderMap) -> Option<Plain> {
        let text = |status: u16, body: String| Plain {
            status,
            content_type: "text/plain",
            body: body.into(),
        };
        let issuing =
            path == TOKEN_PATH || path.starts_with(ROLE_PATH) || path == CREDENTIALS_URI_PATH;
        if issuing && self.refusing() {
            return Some(text(500, "refusing (simulator test switch)".into()));
        }
        if path == TOKEN_PATH {
            if method != "PUT" {
                return Some(text(405, "use PUT".into()));
            }
            if self.v1_only {
                return Some(text(404, "Not Found".into()));
            }
            let ttl = headers
                .get("x-aliyun-ecs-metadata-token-ttl-seconds")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|s| (1..=21_600).contains(s));
            let Some(ttl) = ttl else {
                return Some(text(
                    400,
                    "X-aliyun-ecs-metadata-token-ttl-seconds must be 1..21600".into(),
                ));
            };
            let token = random(48);
            let mut state = self.lock();
            let now = Instant::now();
            state.metadata_tokens.retain(|_, until| *until > now);
            state
                .metadata_tokens
                .insert(token.clone(), now + Duration::from_secs(ttl));
            state.stats.metadata_tokens += 1;
            return Some(text(200, token));
        }
        if let Some(role) = path.strip_prefix(ROLE_PATH) {
            if method != "GET" {
                return Some(text(405, "use GET".into()));
            }
            let token = headers
                .get("x-aliyun-ecs-metadata-token")
                .and_then(|v| v.to_str().ok());
            {
                let mut state = self.lock();
                match token {
                    Some(t)
                        if state
                            .metadata_tokens
                            .get(t)
                            .is_some_and(|u| *u > Instant::now()) =>
                    {
                        state.stats.metadata_v2_reads += 1
                    }
                    Some(_) => return Some(text(401, "invalid or expired metadata token".into())),
                    None => state.stats.metadata_v1_reads += 1,
                }
            }
            if role.is_empty() {
                return Some(text(200, ECS_ROLE_NAME.to_owned()));
            }
            if role != ECS_ROLE_NAME {
                return Some(text(404, "Not Found".into()));
            }
            return Some(self.flat_credentials());
        }
        if path == CREDENTIALS_URI_PATH && method == "GET" {
            self.lock().stats.credentials_uri += 1;
            return Some(self.flat_credentials());
        }
        None
    }

    /// `{Code: "Success", AccessKeyId, AccessKeySecret, SecurityToken, Expiration}`.
    fn flat_credentials(&self) -> Plain {
        let (key, expires) = self.issue(Duration::from_secs(DEFAULT_DURATION));
        let body = serde_json::json!({
            "Code": "Success",
            "AccessKeyId": key.id,
            "AccessKeySecret": key.secret.expose(),
            "SecurityToken": key.security_token.as_ref().map(Secret::expose),
            "Expiration": stamp(expires),
            "LastUpdated": stamp(jiff::Timestamp::now()),
        });
        Plain {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_vec(&body).expect("json").into(),
        }
    }
}

fn required<'a>(req: &'a Incoming<'_>, name: &str) -> Result<&'a str, SimError> {
    req.param(name).filter(|v| !v.is_empty()).ok_or_else(|| {
        err(
            400,
            &format!("Missing{name}"),
            format!("{name} is mandatory for this action."),
        )
    })
}
