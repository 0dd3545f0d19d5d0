//! The OnsMqtt HTTP client: builds a signed request for an action, sends it with reqwest
//! (rustls), and turns the answer into a typed response or a classified [`ApiError`].
//!
//! Every attempt is signed afresh (new nonce and timestamp): a retry that reused either would be
//! refused as `SignatureNonceUsed` or, after 15 minutes, `InvalidTimeStamp.Expired`. Retrying is
//! the caller's business; this client sends each call once. It logs no secret at any level.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::actions::*;
use super::clock::{self, ServiceClock};
use super::credentials::{AccessKey, CredentialProvider, CredentialSource};
use super::endpoint::Endpoint;
use super::error::{ApiError, ErrorClass};
use super::request::Request;
use super::sign::{self, SignatureVersion};

/// What the SDK sends as `user-agent`; ours names the tool instead.
pub fn user_agent() -> String {
    format!(
        "AlibabaCloud ({}; {}) mqtt-provision/{} TeaDSL/2",
        std::env::consts::OS,
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    )
}

/// A request ready to send: method, full URL and headers (including `Authorization` for V3).
#[derive(Clone)]
pub struct SignedRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
}

/// The fixed inputs of a signature, so tests can pin the timestamp and nonce.
pub struct SigningContext<'a> {
    pub key: &'a AccessKey,
    pub version: SignatureVersion,
    pub endpoint: &'a Endpoint,
    pub user_agent: &'a str,
    pub timestamp: String,
    pub nonce: String,
}

/// Builds the request exactly as the official SDK does (onsmqtt-api.md §1–§3): all parameters in
/// the query, empty body; V3 signs every header it sends, V1 signs the query.
pub fn sign_request(
    ctx: &SigningContext<'_>,
    action: Action,
    params: &[(&str, &str)],
) -> SignedRequest {
    let provider = if ctx.key.security_token.is_some() {
        "static_sts"
    } else {
        "static_ak"
    };
    let mut headers: Vec<(&'static str, String)> = vec![
        ("host", ctx.endpoint.host_header.clone()),
        ("x-acs-version", VERSION.to_owned()),
        ("x-acs-action", action.name().to_owned()),
        ("user-agent", ctx.user_agent.to_owned()),
    ];
    match ctx.version {
        SignatureVersion::V3 => {
            headers.extend([
                ("x-acs-date", ctx.timestamp.clone()),
                ("x-acs-signature-nonce", ctx.nonce.clone()),
                ("accept", "application/json".to_owned()),
                ("x-acs-content-sha256", sign::EMPTY_BODY_SHA256.to_owned()),
                ("x-acs-credentials-provider", provider.to_owned()),
            ]);
            if let Some(token) = &ctx.key.security_token {
                headers.push(("x-acs-accesskey-id", ctx.key.id.clone()));
                headers.push(("x-acs-security-token", token.expose().to_owned()));
            }
            let to_sign: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (canonical, signed_headers) = sign::v3_canonical_request(&sign::V3Parts {
                method: action.method(),
                path: "/",
                query: params,
                headers: &to_sign,
                body_sha256: sign::EMPTY_BODY_SHA256,
            });
            let signature = sign::v3_signature(
                ctx.key.secret.expose(),
                &sign::v3_string_to_sign(&canonical),
            );
            let query = sign::canonical_query(params.iter().copied());
            headers.push((
                "authorization",
                sign::v3_authorization(&ctx.key.id, &signed_headers, &signature),
            ));
            SignedRequest {
                method: action.method(),
                url: format!("{}?{query}", ctx.endpoint.base),
                headers,
            }
        }
        SignatureVersion::V1 => {
            headers.push(("x-acs-credentials-provider", provider.to_owned()));
            let mut query: Vec<(&str, &str)> = vec![
                ("Action", action.name()),
                ("Format", "json"),
                ("Version", VERSION),
                ("Timestamp", &ctx.timestamp),
                ("SignatureNonce", &ctx.nonce),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureVersion", "1.0"),
                ("AccessKeyId", &ctx.key.id),
            ];
            query.extend_from_slice(params);
            if let Some(token) = &ctx.key.security_token {
                query.push(("SecurityToken", token.expose()));
            }
            let string_to_sign = sign::v1_string_to_sign(action.method(), query.iter().copied());
            let signature = sign::v1_signature(ctx.key.secret.expose(), &string_to_sign);
            query.push(("Signature", &signature));
            let url = format!(
                "{}?{}",
                ctx.endpoint.base,
                sign::canonical_query(query.iter().copied())
            );
            SignedRequest {
                method: action.method(),
                url,
                headers,
            }
        }
    }
}

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Endpoint,
    pub signature: SignatureVersion,
    /// 5 s, as the SDK (onsmqtt-api.md §5, "Timeouts / pool").
    pub connect_timeout: Duration,
    /// 10 s, as the SDK.
    pub read_timeout: Duration,
    /// Bind outgoing connections to this local address (one client per source IP).
    pub source_address: Option<IpAddr>,
    /// The signing time, corrected by the service's `Date`; shared by every client of a run.
    pub clock: Arc<ServiceClock>,
}

impl ClientConfig {
    pub fn new(endpoint: Endpoint) -> Self {
        ClientConfig {
            endpoint,
            signature: SignatureVersion::V3,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            source_address: None,
            clock: Arc::new(ServiceClock::default()),
        }
    }
}

/// One OnsMqtt client, bound to one source address. Cheap to clone.
#[derive(Clone)]
pub struct OnsMqttClient {
    http: reqwest::Client,
    config: Arc<ClientConfig>,
    credentials: Arc<CredentialProvider>,
    user_agent: Arc<str>,
}

impl std::fmt::Debug for OnsMqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnsMqttClient")
            .field("config", &self.config)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl OnsMqttClient {
    /// A client signing with one fixed key.
    pub fn new(config: ClientConfig, key: AccessKey) -> Result<Self, reqwest::Error> {
        Self::with_credentials(
            config,
            CredentialProvider::fixed(key, CredentialSource::Given),
        )
    }

    /// A client signing each attempt with the credentials current at that moment.
    pub fn with_credentials(
        config: ClientConfig,
        credentials: Arc<CredentialProvider>,
    ) -> Result<Self, reqwest::Error> {
        // No idle-connection cap: below the concurrency it would churn connections
        // (crates.md §3.2); the dispatcher's semaphore is the cap.
        let mut builder = reqwest::Client::builder();
        // HTTP(S)_PROXY, ALL_PROXY and NO_PROXY are honoured on the way to the service, never
        // to a loopback endpoint: a proxy would carry the signed call, STS token included, in
        // clear, and the simulator is on this machine anyway.
        if config.endpoint.is_loopback() {
            builder = builder.no_proxy();
        }
        let http = builder
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .timeout(config.connect_timeout + config.read_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // The gateway never redirects; a redirect followed would carry the signed headers
            // (x-acs-security-token, x-acs-accesskey-id) to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .local_address(config.source_address)
            .tcp_nodelay(true)
            .build()?;
        Ok(OnsMqttClient {
            http,
            config: Arc::new(config),
            credentials,
            user_agent: user_agent().into(),
        })
    }

    /// Waits until the run's first answer has set the signing clock (or the call that went
    /// first could not connect). A paced pipeline calls it after its first call, before taking
    /// the next grant.
    pub async fn clock_settled(&self) {
        self.config.clock.settled().await
    }

    pub fn source_address(&self) -> Option<IpAddr> {
        self.config.source_address
    }

    /// Sends one call and returns the body of a 2xx answer, signed with the key current now. A
    /// call refused for its timestamp is signed again and resent once when that answer
    /// corrected the clock: the gateway refused it before applying anything. A security token
    /// the service calls expired is renewed before the error is returned, marked
    /// [`ErrorClass::Renewed`]: the caller sends the call again through its pacing. A failed
    /// renewal is fatal, as a refused key is.
    async fn call(
        &self,
        action: Action,
        params: &[(&str, &str)],
    ) -> Result<bytes::Bytes, ApiError> {
        let key = self.credentials.key().await.map_err(credential_failure)?;
        let clock = &self.config.clock;
        clock.calibrated().await;
        let (now, offset) = clock.now();
        let answer = match self.attempt(&key, action, params, now).await {
            Err(e)
                if e.code.starts_with("InvalidTimeStamp")
                    && (clock.offset_ms() - offset).unsigned_abs()
                        > clock::TOLERANCE.as_millis() as u64 =>
            {
                tracing::debug!("{action}: resent with the corrected clock");
                self.attempt(&key, action, params, clock.now().0).await
            }
            other => other,
        };
        match answer {
            Err(mut e) if e.code == EXPIRED_TOKEN && self.credentials.renewable() => {
                self.credentials
                    .renew_after_expired(&key)
                    .await
                    .map_err(credential_failure)?;
                e.class = ErrorClass::Renewed;
                Err(e)
            }
            other => other,
        }
    }

    /// One request signed with `key`, timestamped `now`.
    async fn attempt(
        &self,
        key: &AccessKey,
        action: Action,
        params: &[(&str, &str)],
        now: jiff::Timestamp,
    ) -> Result<bytes::Bytes, ApiError> {
        let request = sign_request(
            &SigningContext {
                key,
                version: self.config.signature,
                endpoint: &self.config.endpoint,
                user_agent: &self.user_agent,
                timestamp: sign::timestamp(now),
                nonce: sign::new_nonce(),
            },
            action,
            params,
        );
        let method = if request.method == "GET" {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let mut builder = self.http.request(method, &request.url);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let started = Instant::now();
        let response = builder.send().await.map_err(|e| {
            self.config.clock.no_answer();
            let mut error = transport_error(e);
            // "dns error" or "connection refused" alone does not say where to: name the host.
            if error.code == "Transport.Connect" {
                error.message = format!(
                    "cannot connect to {}: {}",
                    self.config.endpoint.base, error.message
                );
            }
            error
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after_ms = header("x-acs-retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0);
        let header_request_id = header("x-acs-request-id");
        self.config.clock.observe(header("date").as_deref());
        if (300..400).contains(&status) {
            let location = header("location").map_or_else(
                || "nowhere (no Location)".to_owned(),
                |l| without_query(&l).to_owned(),
            );
            return Err(ApiError {
                class: ErrorClass::Fatal,
                status: Some(status),
                code: "Redirected".into(),
                message: format!(
                    "the endpoint redirected to {location}; the OpenAPI gateway never redirects, so it was not followed: check --endpoint"
                ),
                request_id: header_request_id,
                ambiguous: false,
            });
        }
        let body = read_capped(response).await?;
        tracing::trace!(
            action = action.name(),
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            request_id = header_request_id.as_deref().unwrap_or(""),
            "call"
        );
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        let code = parsed.code.unwrap_or_else(|| format!("HTTP{status}"));
        let message = parsed
            .message
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        let message = cap_message(redact(message, key));
        Err(ApiError::from_response(
            status,
            code,
            message,
            parsed.request_id.or(header_request_id),
            retry_after_ms,
        ))
    }

    /// Sends one call and decodes a 2xx body as its response type.
    pub async fn send<T: DeserializeOwned>(&self, request: &Request<T>) -> Result<T, ApiError> {
        let action = request.action();
        let body = self.call(action, &request.params()).await?;
        serde_json::from_slice(&body).map_err(|e| {
            // A 2xx we cannot read: the call was applied, its result is lost.
            let mut err = ApiError::transport(
                "Response.Malformed",
                format!("{action} answered 2xx with an unreadable body: {e}"),
                true,
            );
            err.status = Some(200);
            err
        })
    }
}

/// The code of a refused, expired STS token (onsmqtt-api.md §5).
const EXPIRED_TOKEN: &str = "InvalidSecurityToken.Expired";

/// Credentials that could not be had (a failed renewal): fatal, the run halts with the cause.
fn credential_failure(e: super::credentials::CredentialError) -> ApiError {
    ApiError {
        class: ErrorClass::Fatal,
        status: None,
        code: "Credentials.Unavailable".to_owned(),
        message: e.to_string(),
        request_id: None,
        ambiguous: false,
    }
}

/// The most of an answer's body that is read: OnsMqtt answers are a few hundred bytes; a larger
/// one is not the gateway's (20 devices of endless bodies made an 84 MB ledger).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The most of a server's `Message` that is kept (it reaches the ledger and the report).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Reads the body up to [`MAX_RESPONSE_BYTES`], refusing the rest.
async fn read_capped(mut response: reqwest::Response) -> Result<bytes::Bytes, ApiError> {
    let status = response.status().as_u16();
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large(status));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large(status));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

fn too_large(status: u16) -> ApiError {
    // Whatever the call did, its answer is lost: reconciled like any lost answer.
    let mut err = ApiError::transport(
        "Response.TooLarge",
        format!("the answer's body exceeds {MAX_RESPONSE_BYTES} bytes; it was not read"),
        true,
    );
    err.status = Some(status);
    err
}

/// A message cut to [`MAX_MESSAGE_BYTES`] on a character boundary.
fn cap_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// A URL without its query or fragment (a redirect may echo the signed query).
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Removes the STS token from a server message. The gateway's `SignatureDoesNotMatch` echoes the
/// V1 string-to-sign, which carries the token (encoded once or twice); no secret may reach a log,
/// an error or the ledger.
fn redact(message: String, key: &AccessKey) -> String {
    let Some(token) = key
        .security_token
        .as_ref()
        .map(|t| t.expose())
        .filter(|t| !t.is_empty())
    else {
        return message;
    };
    let once = sign::percent_encode(token);
    let twice = sign::percent_encode(&once);
    let mut out = message;
    for form in [twice.as_str(), once.as_str(), token] {
        out = out.replace(form, "***");
    }
    out
}

/// Transport failures. reqwest's messages can carry the URL, and a V1 URL carries the signature
/// and the STS token, so the URL is stripped before the message is kept.
fn transport_error(e: reqwest::Error) -> ApiError {
    let connect = e.is_connect();
    let code = if e.is_timeout() && !connect {
        "Transport.Timeout"
    } else if connect {
        "Transport.Connect"
    } else {
        "Transport.ConnectionLost"
    };
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    // Failing to connect means nothing was sent; anything later may have been applied.
    ApiError::transport(code, message, !connect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn server_messages_lose_the_token_in_every_encoding() {
        let mut key = AccessKey::new("id", "secret");
        key.security_token = Some(Secret::new("CAIS+tok/en="));
        let once = sign::percent_encode("CAIS+tok/en=");
        let twice = sign::percent_encode(&once);
        let message =
            format!("string to sign is:POST&%2F&SecurityToken%3D{twice}&raw=CAIS+tok/en= {once}");
        let clean = redact(message, &key);
        assert!(!clean.contains("tok"), "{clean}");
        assert_eq!(clean.matches("***").count(), 3);
    }
}
