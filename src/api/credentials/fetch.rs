//! Fetching temporary credentials, as the official `alibabacloud-credentials` providers do:
//! STS `AssumeRole` (signed V1 RPC GET, product Sts 2015-04-01) and `AssumeRoleWithOIDC`
//! (unsigned: the OIDC token is the proof), the ECS instance metadata service (IMDSv2 token
//! first, IMDSv1 unless disabled), and a credentials URI.
//!
//! A [`Recipe`] says what to fetch; the [`Fetcher`] holds the HTTP clients. Errors carry the
//! service's `Code` and `Message` with every secret this fetch used removed; no token, secret
//! or URL with a token is ever logged or kept.

use std::path::PathBuf;
use std::time::Duration;

use super::{AccessKey, CredentialError};
use crate::api::endpoint::Endpoint;
use crate::api::sign;
use crate::secret::Secret;

/// The official STS version and the metadata service's address and paths
/// (alibabacloud_credentials/provider/ram_role_arn.py, ecs_ram_role.py).
pub const STS_VERSION: &str = "2015-04-01";
pub const ECS_METADATA_HOST: &str = "http://100.100.100.200";
const METADATA_TOKEN_PATH: &str = "/latest/api/token";
const METADATA_ROLE_PATH: &str = "/latest/meta-data/ram/security-credentials/";
/// `DEFAULT_METADATA_TOKEN_DURATION` of the official provider: 6 hours.
const METADATA_TOKEN_TTL_SECS: u32 = 21_600;

/// How to obtain a key.
#[derive(Debug, Clone)]
pub enum Recipe {
    /// A key given as is (environment, AK and StsToken profiles): never renewed.
    Static(AccessKey),
    /// STS `AssumeRole`, signed with the key of `base` (fetched again at each renewal).
    AssumeRole {
        base: Box<Recipe>,
        role: RoleRequest,
    },
    /// STS `AssumeRoleWithOIDC` with the token read from `token_file` at each renewal.
    Oidc {
        role: RoleRequest,
        provider_arn: String,
        token_file: PathBuf,
    },
    /// The instance's RAM role from the metadata service.
    EcsRamRole {
        role_name: Option<String>,
        imds_v1_disabled: bool,
        metadata: String,
    },
    /// GET a JSON `{Code, AccessKeyId, AccessKeySecret, SecurityToken, Expiration}`.
    Uri { url: String },
}

/// What an `AssumeRole*` call asks for, and where it is sent.
#[derive(Debug, Clone)]
pub struct RoleRequest {
    pub role_arn: String,
    pub session_name: String,
    pub duration_secs: u32,
    pub policy: Option<String>,
    pub external_id: Option<String>,
    pub sts: Endpoint,
}

/// A fetched key and when it expires (`None`: never).
#[derive(Debug)]
pub struct Fetched {
    pub key: AccessKey,
    pub expiration: Option<jiff::Timestamp>,
}

/// The HTTP clients of the fetches: STS and URI with the official 5 s connect / 10 s read, the
/// metadata service with its 1 s / 1 s. `HTTP(S)_PROXY` is honoured on the way to STS and a
/// remote URI, as for the service; never to a loopback host or the metadata service, which are
/// on this machine or its link (a proxy would see the token in clear). No redirect is followed:
/// it would carry a signed query, or a token, elsewhere.
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    direct: reqwest::Client,
    metadata_http: reqwest::Client,
}

impl Fetcher {
    pub fn new() -> Result<Self, CredentialError> {
        let build = |connect: u64, read: u64, proxies: bool| {
            let mut builder = reqwest::Client::builder();
            if !proxies {
                builder = builder.no_proxy();
            }
            builder
                .connect_timeout(Duration::from_millis(connect))
                .read_timeout(Duration::from_millis(read))
                .timeout(Duration::from_millis(connect + read))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| CredentialError::Unavailable {
                    source_name: "the credential fetcher".into(),
                    reason: e.to_string(),
                })
        };
        Ok(Fetcher {
            http: build(5_000, 10_000, true)?,
            direct: build(5_000, 10_000, false)?,
            metadata_http: build(1_000, 1_000, false)?,
        })
    }

    /// The client for `url`: without proxies to a loopback host.
    fn client_for(&self, url: &str) -> &reqwest::Client {
        let loopback = reqwest::Url::parse(url).ok().is_some_and(|u| {
            let host = u.host_str().unwrap_or("");
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if loopback { &self.direct } else { &self.http }
    }

    /// Fetches once. A key that arrives already expired is refused: the source is broken.
    pub async fn fetch(&self, recipe: &Recipe) -> Result<Fetched, CredentialError> {
        let fetched = match recipe {
            Recipe::Static(key) => {
                return Ok(Fetched {
                    key: key.clone(),
                    expiration: None,
                });
            }
            Recipe::AssumeRole { base, role } => {
                let base = Box::pin(self.fetch(base)).await?;
                self.assume_role(&base.key, role).await?
            }
            Recipe::Oidc {
                role,
                provider_arn,
                token_file,
            } => {
                self.assume_role_with_oidc(role, provider_arn, token_file)
                    .await?
            }
            Recipe::EcsRamRole {
                role_name,
                imds_v1_disabled,
                metadata,
            } => {
                self.ecs_ram_role(metadata, role_name.as_deref(), *imds_v1_disabled)
                    .await?
            }
            Recipe::Uri { url } => self.uri(url).await?,
        };
        if let Some(expiration) = fetched.expiration
            && expiration <= jiff::Timestamp::now()
        {
            return Err(CredentialError::Unavailable {
                source_name: recipe.name(),
                reason: format!("it gave credentials that expired at {expiration}"),
            });
        }
        Ok(fetched)
    }

    async fn assume_role(
        &self,
        base: &AccessKey,
        role: &RoleRequest,
    ) -> Result<Fetched, CredentialError> {
        let duration = role.duration_secs.to_string();
        let timestamp = sign::timestamp(jiff::Timestamp::now());
        let nonce = sign::new_nonce();
        let mut query: Vec<(&str, &str)> = vec![
            ("Action", "AssumeRole"),
            ("Format", "JSON"),
            ("Version", STS_VERSION),
            ("DurationSeconds", &duration),
            ("RoleArn", &role.role_arn),
            ("RoleSessionName", &role.session_name),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", &timestamp),
            ("SignatureNonce", &nonce),
            ("AccessKeyId", &base.id),
        ];
        if let Some(policy) = &role.policy {
            query.push(("Policy", policy));
        }
        if let Some(external_id) = &role.external_id {
            query.push(("ExternalId", external_id));
        }
        if let Some(token) = &base.security_token {
            query.push(("SecurityToken", token.expose()));
        }
        let signature = sign::v1_signature(
            base.secret.expose(),
            &sign::v1_string_to_sign("GET", query.iter().copied()),
        );
        query.push(("Signature", &signature));
        let url = format!(
            "{}?{}",
            role.sts.base,
            sign::canonical_query(query.iter().copied())
        );
        let what = format!("STS AssumeRole ({}) at {}", role.role_arn, role.sts.base);
        let secrets = [Some(&base.secret), base.security_token.as_ref()];
        let body = self.get_sts(&url, &role.sts, &what, &secrets).await?;
        sts_credentials(&body, &what)
    }

    async fn assume_role_with_oidc(
        &self,
        role: &RoleRequest,
        provider_arn: &str,
        token_file: &std::path::Path,
    ) -> Result<Fetched, CredentialError> {
        let what = format!(
            "STS AssumeRoleWithOIDC ({}) at {}",
            role.role_arn, role.sts.base
        );
        let token = Secret::new(
            std::fs::read_to_string(token_file)
                .map_err(|e| CredentialError::Unavailable {
                    source_name: what.clone(),
                    reason: format!("cannot read the OIDC token {}: {e}", token_file.display()),
                })?
                .trim()
                .to_owned(),
        );
        let duration = role.duration_secs.to_string();
        let timestamp = sign::timestamp(jiff::Timestamp::now());
        let mut query: Vec<(&str, &str)> = vec![
            ("Action", "AssumeRoleWithOIDC"),
            ("Format", "JSON"),
            ("Version", STS_VERSION),
            ("DurationSeconds", &duration),
            ("RoleArn", &role.role_arn),
            ("OIDCProviderArn", provider_arn),
            ("OIDCToken", token.expose()),
            ("RoleSessionName", &role.session_name),
            ("Timestamp", &timestamp),
        ];
        if let Some(policy) = &role.policy {
            query.push(("Policy", policy));
        }
        let url = format!(
            "{}?{}",
            role.sts.base,
            sign::canonical_query(query.iter().copied())
        );
        let body = self
            .get_sts(&url, &role.sts, &what, &[Some(&token)])
            .await?;
        sts_credentials(&body, &what)
    }

    /// One STS GET; a non-2xx answer becomes an error with its `Code` and `Message`.
    async fn get_sts(
        &self,
        url: &str,
        sts: &Endpoint,
        what: &str,
        secrets: &[Option<&Secret>],
    ) -> Result<Vec<u8>, CredentialError> {
        let response = self
            .client_for(url)
            .get(url)
            .header("host", &sts.host_header)
            .header("user-agent", crate::api::client::user_agent())
            .send()
            .await
            .map_err(|e| unavailable(what, transport(e), secrets))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(what, transport(e), secrets))?;
        if status != 200 {
            #[derive(serde::Deserialize, Default)]
            struct ErrorBody {
                #[serde(rename = "Code")]
                code: Option<String>,
                #[serde(rename = "Message")]
                message: Option<String>,
            }
            let parsed: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            let reason = format!(
                "{} (HTTP {status}): {}",
                parsed.code.unwrap_or_else(|| format!("HTTP{status}")),
                parsed.message.unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                })
            );
            return Err(unavailable(what, reason, secrets));
        }
        Ok(body.to_vec())
    }

    async fn ecs_ram_role(
        &self,
        metadata: &str,
        role_name: Option<&str>,
        imds_v1_disabled: bool,
    ) -> Result<Fetched, CredentialError> {
        let what = format!("the ECS instance metadata service at {metadata}");
        // IMDSv2 first: a session token from PUT; without one, IMDSv1 unless disabled.
        let token = match self
            .metadata_http
            .put(format!("{metadata}{METADATA_TOKEN_PATH}"))
            .header(
                "X-aliyun-ecs-metadata-token-ttl-seconds",
                METADATA_TOKEN_TTL_SECS.to_string(),
            )
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => match r.text().await {
                Ok(t) if !t.trim().is_empty() => Some(Secret::new(t.trim())),
                _ => None,
            },
            Ok(r) => {
                if imds_v1_disabled {
                    return Err(unavailable(
                        &what,
                        format!(
                            "no IMDSv2 token (HTTP {}) and IMDSv1 is disabled",
                            r.status().as_u16()
                        ),
                        &[],
                    ));
                }
                None
            }
            // Nothing answers there (not an ECS instance): IMDSv1 would only wait again.
            Err(e) if e.is_connect() || e.is_timeout() => {
                return Err(unavailable(&what, transport(e), &[]));
            }
            Err(e) => {
                if imds_v1_disabled {
                    return Err(unavailable(
                        &what,
                        format!("no IMDSv2 token ({}) and IMDSv1 is disabled", transport(e)),
                        &[],
                    ));
                }
                None
            }
        };
        let role = match role_name {
            Some(name) => name.to_owned(),
            None => self
                .metadata_get(metadata, METADATA_ROLE_PATH, token.as_ref(), &what)
                .await?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_graphic() && c != '/') {
            return Err(unavailable(
                &what,
                "the instance has no usable RAM role".into(),
                &[],
            ));
        }
        let path = format!("{METADATA_ROLE_PATH}{role}");
        let body = self
            .metadata_get(metadata, &path, token.as_ref(), &what)
            .await?;
        flat_credentials(body.as_bytes(), &what)
    }

    /// One metadata GET, with the IMDSv2 token when there is one.
    async fn metadata_get(
        &self,
        metadata: &str,
        path: &str,
        token: Option<&Secret>,
        what: &str,
    ) -> Result<String, CredentialError> {
        let mut request = self.metadata_http.get(format!("{metadata}{path}"));
        if let Some(token) = token {
            request = request.header("X-aliyun-ecs-metadata-token", token.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(what, transport(e), &[token]))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| unavailable(what, transport(e), &[token]))?;
        if status != 200 {
            return Err(unavailable(
                what,
                format!("HTTP {status} for {path}"),
                &[token],
            ));
        }
        Ok(text)
    }

    async fn uri(&self, url: &str) -> Result<Fetched, CredentialError> {
        let what = format!("the credentials URI {}", shown_url(url));
        let response = self
            .client_for(url)
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(&what, transport(e), &[]))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(&what, transport(e), &[]))?;
        if status != 200 {
            return Err(unavailable(&what, format!("HTTP {status}"), &[]));
        }
        flat_credentials(&body, &what)
    }
}

impl Recipe {
    /// The source in words, for errors.
    pub fn name(&self) -> String {
        match self {
            Recipe::Static(_) => "a static key".into(),
            Recipe::AssumeRole { role, .. } => format!("STS AssumeRole ({})", role.role_arn),
            Recipe::Oidc { role, .. } => format!("STS AssumeRoleWithOIDC ({})", role.role_arn),
            Recipe::EcsRamRole { metadata, .. } => {
                format!("the ECS instance metadata service at {metadata}")
            }
            Recipe::Uri { url } => format!("the credentials URI {}", shown_url(url)),
        }
    }
}

/// A URL without its query, which may carry a secret.
fn shown_url(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn transport(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// An error with every secret of the fetch removed, raw and percent-encoded (once, twice).
fn unavailable(what: &str, reason: String, secrets: &[Option<&Secret>]) -> CredentialError {
    let mut reason = reason;
    for secret in secrets.iter().flatten() {
        let raw = secret.expose();
        if raw.is_empty() {
            continue;
        }
        let once = sign::percent_encode(raw);
        let twice = sign::percent_encode(&once);
        for form in [twice.as_str(), once.as_str(), raw] {
            reason = reason.replace(form, "***");
        }
    }
    CredentialError::Unavailable {
        source_name: what.to_owned(),
        reason,
    }
}

#[derive(serde::Deserialize)]
struct Flat {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "AccessKeyId")]
    access_key_id: Option<String>,
    #[serde(rename = "AccessKeySecret")]
    access_key_secret: Option<Secret>,
    #[serde(rename = "SecurityToken")]
    security_token: Option<Secret>,
    #[serde(rename = "Expiration")]
    expiration: Option<String>,
}

/// `AssumeRole*` answers `{"Credentials": {...}}`.
fn sts_credentials(body: &[u8], what: &str) -> Result<Fetched, CredentialError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Credentials")]
        credentials: Option<Flat>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| unavailable(what, format!("unreadable answer: {e}"), &[]))?;
    let flat = answer
        .credentials
        .ok_or_else(|| unavailable(what, "the answer has no Credentials".into(), &[]))?;
    complete(flat, what, false)
}

/// The metadata service and credentials URIs answer `{"Code": "Success", ...}`.
fn flat_credentials(body: &[u8], what: &str) -> Result<Fetched, CredentialError> {
    let flat: Flat = serde_json::from_slice(body)
        .map_err(|e| unavailable(what, format!("unreadable answer: {e}"), &[]))?;
    complete(flat, what, true)
}

fn complete(flat: Flat, what: &str, needs_code: bool) -> Result<Fetched, CredentialError> {
    if needs_code && flat.code.as_deref() != Some("Success") {
        return Err(unavailable(
            what,
            format!(
                "the answer's Code is {:?}, not \"Success\"",
                flat.code.unwrap_or_default()
            ),
            &[],
        ));
    }
    let missing = |field: &str| unavailable(what, format!("the answer lacks {field}"), &[]);
    let id = flat
        .access_key_id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("AccessKeyId"))?;
    let secret = flat
        .access_key_secret
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("AccessKeySecret"))?;
    let token = flat
        .security_token
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("SecurityToken"))?;
    let expiration = flat.expiration.ok_or_else(|| missing("Expiration"))?;
    let expiration = jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%SZ", &expiration)
        .and_then(|t| t.to_datetime())
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
        .map(|z| z.timestamp())
        .map_err(|_| {
            unavailable(
                what,
                format!("Expiration '{expiration}' is not %Y-%m-%dT%H:%M:%SZ"),
                &[],
            )
        })?;
    Ok(Fetched {
        key: AccessKey {
            id,
            secret,
            security_token: Some(token),
        },
        expiration: Some(expiration),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_the_official_providers_read_them() {
        let ok = br#"{"Code":"Success","AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2030-01-01T00:00:00Z"}"#;
        let f = flat_credentials(ok, "uri").unwrap();
        assert_eq!(f.key.id, "STS.a");
        assert_eq!(f.expiration.unwrap().to_string(), "2030-01-01T00:00:00Z");
        let failed = br#"{"Code":"Failed","AccessKeyId":"a"}"#;
        assert!(
            flat_credentials(failed, "uri")
                .unwrap_err()
                .to_string()
                .contains("Failed")
        );
        let no_token = br#"{"Code":"Success","AccessKeyId":"a","AccessKeySecret":"s","Expiration":"2030-01-01T00:00:00Z"}"#;
        assert!(
            flat_credentials(no_token, "uri")
                .unwrap_err()
                .to_string()
                .contains("SecurityToken")
        );
        let sts = br#"{"RequestId":"r","Credentials":{"AccessKeyId":"STS.b","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2030-01-01T00:00:00Z"}}"#;
        assert_eq!(sts_credentials(sts, "sts").unwrap().key.id, "STS.b");
        for junk in [&b"not json"[..], b"[]", b"{\"Credentials\":7}", b""] {
            assert!(sts_credentials(junk, "sts").is_err());
            assert!(flat_credentials(junk, "uri").is_err());
        }
    }

    #[test]
    fn loopback_hosts_are_reached_without_a_proxy() {
        let f = Fetcher::new().unwrap();
        for local in [
            "http://127.0.0.1:9/credentials-uri",
            "http://localhost:8080/",
            "http://[::1]:1/",
        ] {
            assert!(std::ptr::eq(f.client_for(local), &f.direct), "{local}");
        }
        for remote in [
            "https://sts.aliyuncs.com/",
            "http://10.0.0.1/x",
            "not a url",
        ] {
            assert!(std::ptr::eq(f.client_for(remote), &f.http), "{remote}");
        }
    }

    #[test]
    fn errors_lose_every_secret_of_the_fetch_and_urls_their_query() {
        let token = Secret::new("CAIS+tok/en=");
        let once = sign::percent_encode("CAIS+tok/en=");
        let twice = sign::percent_encode(&once);
        let e = unavailable(
            "sts",
            format!("string to sign: {twice} {once} CAIS+tok/en="),
            &[Some(&token), None],
        );
        assert!(!e.to_string().contains("tok"), "{e}");
        assert_eq!(shown_url("http://h/p?token=x"), "http://h/p");
    }
}
