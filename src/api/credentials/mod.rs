//! Where the AccessKey for the OpenAPI calls comes from: the official default chain of the
//! `alibabacloud-credentials` libraries (shared/reference/onsmqtt-api.md §8,
//! alibabacloud_credentials/provider/default.py), in its order and with its variable names and
//! file fields, and the renewal of temporary credentials during a run ([`provider`]).
//!
//! The chain: the environment (`ALIBABA_CLOUD_ACCESS_KEY_ID`/`_SECRET`/`_SECURITY_TOKEN`); an
//! OIDC role from the environment (`ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`,
//! `ALIBABA_CLOUD_OIDC_TOKEN_FILE`); a profile of the aliyun CLI's `~/.aliyun/config.json`; a
//! section of `~/.alibabacloud/credentials.ini` (`ALIBABA_CLOUD_CREDENTIALS_FILE`); the ECS
//! instance's RAM role from the metadata service; a credentials URI
//! (`ALIBABA_CLOUD_CREDENTIALS_URI`). `--profile` names a profile and skips the environment.
//! [`files`] reads the two files, [`fetch`] talks to STS, the metadata service and the URI.
//! No flag ever carries a secret, and no secret is ever logged.

pub mod fetch;
mod files;
pub mod provider;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::endpoint::Endpoint;
use crate::secret::Secret;
use fetch::{Fetcher, Recipe, RoleRequest};
pub use provider::CredentialProvider;

pub const ENV_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
pub const ENV_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";
pub const ENV_PROFILE: &str = "ALIBABA_CLOUD_PROFILE";
pub const ENV_ROLE_ARN: &str = "ALIBABA_CLOUD_ROLE_ARN";
pub const ENV_ROLE_SESSION_NAME: &str = "ALIBABA_CLOUD_ROLE_SESSION_NAME";
pub const ENV_OIDC_PROVIDER_ARN: &str = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN";
pub const ENV_OIDC_TOKEN_FILE: &str = "ALIBABA_CLOUD_OIDC_TOKEN_FILE";
pub const ENV_CLI_PROFILE_DISABLED: &str = "ALIBABA_CLOUD_CLI_PROFILE_DISABLED";
pub const ENV_CREDENTIALS_FILE: &str = "ALIBABA_CLOUD_CREDENTIALS_FILE";
pub const ENV_ECS_METADATA: &str = "ALIBABA_CLOUD_ECS_METADATA";
pub const ENV_ECS_METADATA_DISABLED: &str = "ALIBABA_CLOUD_ECS_METADATA_DISABLED";
pub const ENV_IMDSV1_DISABLED: &str = "ALIBABA_CLOUD_IMDSV1_DISABLED";
pub const ENV_CREDENTIALS_URI: &str = "ALIBABA_CLOUD_CREDENTIALS_URI";
pub const ENV_STS_REGION: &str = "ALIBABA_CLOUD_STS_REGION";
pub const ENV_VPC_ENDPOINT_ENABLED: &str = "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED";
/// Not read by the Python library but by the Go one and the aliyun CLI: the STS host (or URL).
pub const ENV_STS_ENDPOINT: &str = "ALIBABA_CLOUD_STS_ENDPOINT";
/// Ours, for tests: where the ECS metadata service is (the official libraries fix
/// 100.100.100.200). Documented in the README as a test override.
pub const ENV_ECS_METADATA_ENDPOINT: &str = "MQTT_PROVISION_ECS_METADATA_ENDPOINT";

/// The official default session duration (`DEFAULT_DURATION_SECONDS`) and its lower bound.
const DEFAULT_DURATION_SECS: u32 = 3600;
const MIN_DURATION_SECS: u32 = 900;

/// An AccessKey pair, with an STS token when it is temporary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub secret: Secret,
    pub security_token: Option<Secret>,
}

impl AccessKey {
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        AccessKey {
            id: id.into(),
            secret: Secret::new(secret.into()),
            security_token: None,
        }
    }
}

/// Where the key was found, for the run's opening log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Environment,
    OidcEnvironment,
    CliProfile {
        path: PathBuf,
        profile: String,
        mode: String,
    },
    CredentialsFile {
        path: PathBuf,
        section: String,
    },
    EcsMetadata,
    CredentialsUri,
    /// A rehearsal's built-in simulator.
    Rehearsal,
    /// A key handed to the client as is (tests, the library's own callers).
    Given,
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Environment => write!(f, "the environment ({ENV_ID})"),
            CredentialSource::OidcEnvironment => {
                write!(f, "the OIDC role of the environment ({ENV_ROLE_ARN})")
            }
            CredentialSource::CliProfile {
                path,
                profile,
                mode,
            } => {
                let mode = if mode.is_empty() { "AK" } else { mode };
                write!(f, "profile '{profile}' (mode {mode}) of {}", path.display())
            }
            CredentialSource::CredentialsFile { path, section } => {
                write!(f, "section [{section}] of {}", path.display())
            }
            CredentialSource::EcsMetadata => {
                write!(f, "the ECS instance's RAM role (metadata service)")
            }
            CredentialSource::CredentialsUri => {
                write!(f, "the credentials URI ({ENV_CREDENTIALS_URI})")
            }
            CredentialSource::Rehearsal => write!(f, "the rehearsal's built-in simulator"),
            CredentialSource::Given => write!(f, "a key given to the client"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no Alibaba Cloud credentials: set {ENV_ID} and {ENV_SECRET} (and {ENV_TOKEN} for STS), \
         or configure a profile in {0} with `aliyun configure` (other sources: README, \"Credentials\")"
    )]
    Missing(String),
    #[error("{set} is set but {missing} is not: set both, or unset {set} to use a CLI profile")]
    HalfSet {
        set: &'static str,
        missing: &'static str,
    },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("profile '{profile}' not found in {path}")]
    NoSuchProfile { path: String, profile: String },
    #[error(
        "profile '{profile}' in {path} uses mode '{mode}', which this tool cannot use; \
         use one of {supported}, or export {ENV_ID}/{ENV_SECRET}"
    )]
    UnsupportedMode {
        path: String,
        profile: String,
        mode: String,
        supported: &'static str,
    },
    #[error("profile '{profile}' in {path} lacks {field}")]
    Incomplete {
        path: String,
        profile: String,
        field: &'static str,
    },
    #[error("{place}: {reason}")]
    Invalid { place: String, reason: String },
    #[error("cannot get credentials from {source_name}: {reason}")]
    Unavailable { source_name: String, reason: String },
    #[error("no source of the credential chain gave credentials: {}", .0.join("; "))]
    Exhausted(Vec<String>),
    #[error(
        "the security token from {0} expired and cannot be renewed (a fixed token): \
         get a new one, or use a source that renews (README, \"Credentials\")"
    )]
    NotRenewable(String),
}

impl CredentialError {
    /// Whether the error came from asking a source (STS, metadata, URI) rather than from the
    /// configuration: such a run halts (exit 3), a configuration error is a usage error.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            CredentialError::Unavailable { .. }
                | CredentialError::Exhausted(_)
                | CredentialError::NotRenewable(_)
        )
    }
}

/// What the chain reads: the environment (injected so tests do not touch the process's) and
/// the home directory.
struct Settings<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    home: Option<&'a Path>,
}

impl Settings<'_> {
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    /// `true` in any case, as the official libraries compare `.lower() == 'true'`.
    fn flag(&self, name: &str) -> bool {
        self.var(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// Where STS is: `ALIBABA_CLOUD_STS_ENDPOINT`, else `sts[-vpc].<region>.aliyuncs.com` with
    /// the profile's `sts_region` or `ALIBABA_CLOUD_STS_REGION`, else `sts.aliyuncs.com`
    /// (ram_role_arn.py); `-vpc` when the profile's `enable_vpc` or
    /// `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED` says so.
    fn sts_endpoint(
        &self,
        region: &str,
        enable_vpc: Option<bool>,
        place: &str,
    ) -> Result<Endpoint, CredentialError> {
        let raw = match self.var(ENV_STS_ENDPOINT) {
            Some(endpoint) => endpoint,
            None => {
                let vpc = enable_vpc.unwrap_or_else(|| self.flag(ENV_VPC_ENDPOINT_ENABLED));
                let prefix = if vpc { "sts-vpc" } else { "sts" };
                let region = Some(region.to_owned())
                    .filter(|r| !r.is_empty())
                    .or_else(|| self.var(ENV_STS_REGION));
                match region {
                    Some(r) => format!("{prefix}.{r}.aliyuncs.com"),
                    None => "sts.aliyuncs.com".to_owned(),
                }
            }
        };
        Endpoint::parse(&raw).map_err(|e| CredentialError::Invalid {
            place: format!("{place}: the STS endpoint"),
            reason: e.to_string(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn role_request(
        &self,
        role_arn: &str,
        session: &str,
        duration: Option<u32>,
        policy: &str,
        external_id: &str,
        sts_region: &str,
        enable_vpc: Option<bool>,
        place: &str,
    ) -> Result<RoleRequest, CredentialError> {
        let duration_secs = duration.unwrap_or(DEFAULT_DURATION_SECS);
        if duration_secs < MIN_DURATION_SECS {
            return Err(CredentialError::Invalid {
                place: place.to_owned(),
                reason: format!(
                    "the session duration {duration_secs} s is below STS's minimum of {MIN_DURATION_SECS} s"
                ),
            });
        }
        let session_name = Some(session.to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| self.var(ENV_ROLE_SESSION_NAME))
            .unwrap_or_else(|| format!("mqtt-provision-{}", jiff::Timestamp::now().as_second()));
        let some = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Ok(RoleRequest {
            role_arn: role_arn.to_owned(),
            session_name,
            duration_secs,
            policy: some(policy),
            external_id: some(external_id),
            sts: self.sts_endpoint(sts_region, enable_vpc, place)?,
        })
    }

    /// The ECS RAM role recipe: the role named (or `ALIBABA_CLOUD_ECS_METADATA`, or asked of
    /// the service), IMDSv1 fallback unless `ALIBABA_CLOUD_IMDSV1_DISABLED`.
    fn ecs_recipe(&self, role_name: Option<&str>) -> Recipe {
        Recipe::EcsRamRole {
            role_name: role_name
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .or_else(|| self.var(ENV_ECS_METADATA)),
            imds_v1_disabled: self.flag(ENV_IMDSV1_DISABLED),
            metadata: self
                .var(ENV_ECS_METADATA_ENDPOINT)
                .map(|e| e.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| fetch::ECS_METADATA_HOST.to_owned()),
        }
    }

    fn cli_config_path(&self) -> Option<PathBuf> {
        self.home.map(|h| h.join(".aliyun").join("config.json"))
    }

    fn credentials_file_path(&self) -> Option<PathBuf> {
        self.var(ENV_CREDENTIALS_FILE)
            .map(PathBuf::from)
            .or_else(|| {
                self.home
                    .map(|h| h.join(".alibabacloud").join("credentials.ini"))
            })
    }
}

/// One source the chain will ask, in order.
struct Candidate {
    recipe: Recipe,
    source: CredentialSource,
    /// The ECS probe the chain makes on its own, not a source the user configured: its failure
    /// alone means "no credentials".
    implicit: bool,
}

/// Which sources apply, in the chain's order. Configuration errors of a source that is present
/// stop here; sources that are simply absent are skipped.
fn candidates(
    profile_flag: Option<&str>,
    settings: &Settings<'_>,
) -> Result<Vec<Candidate>, CredentialError> {
    let mut out = Vec::new();
    if profile_flag.is_none() {
        match (settings.var(ENV_ID), settings.var(ENV_SECRET)) {
            (Some(id), Some(secret)) => {
                let key = AccessKey {
                    id,
                    secret: Secret::new(secret),
                    security_token: settings.var(ENV_TOKEN).map(Secret::new),
                };
                out.push(Candidate {
                    recipe: Recipe::Static(key),
                    source: CredentialSource::Environment,
                    implicit: false,
                });
                return Ok(out);
            }
            // One half of the pair alone is a mistake, not a request for the next source.
            (Some(_), None) => {
                return Err(CredentialError::HalfSet {
                    set: ENV_ID,
                    missing: ENV_SECRET,
                });
            }
            (None, Some(_)) => {
                return Err(CredentialError::HalfSet {
                    set: ENV_SECRET,
                    missing: ENV_ID,
                });
            }
            (None, None) => {}
        }
        if let (Some(role_arn), Some(provider_arn), Some(token_file)) = (
            settings.var(ENV_ROLE_ARN),
            settings.var(ENV_OIDC_PROVIDER_ARN),
            settings.var(ENV_OIDC_TOKEN_FILE),
        ) {
            let role = settings.role_request(
                &role_arn,
                "",
                None,
                "",
                "",
                "",
                None,
                "the OIDC role of the environment",
            )?;
            out.push(Candidate {
                recipe: Recipe::Oidc {
                    role,
                    provider_arn,
                    token_file: PathBuf::from(token_file),
                },
                source: CredentialSource::OidcEnvironment,
                implicit: false,
            });
        }
    }
    let named = profile_flag
        .map(str::to_owned)
        .or_else(|| settings.var(ENV_PROFILE));
    let mut found_named = false;
    let cli_path = settings.cli_config_path();
    if !settings.flag(ENV_CLI_PROFILE_DISABLED)
        && let Some(path) = &cli_path
        && let Some(config) = files::read_cli_config(path)?
    {
        let name = named.clone().unwrap_or_else(|| {
            if config.current.is_empty() {
                "default".into()
            } else {
                config.current.clone()
            }
        });
        if let Some(profile) = config.profiles.iter().find(|p| p.name == name) {
            found_named = true;
            out.push(Candidate {
                recipe: files::cli_recipe(&config, path, &name, settings)?,
                source: CredentialSource::CliProfile {
                    path: path.clone(),
                    profile: name.clone(),
                    mode: profile.mode.clone(),
                },
                implicit: false,
            });
        }
    }
    let ini_path = settings.credentials_file_path();
    if let Some(path) = &ini_path
        && path.is_file()
    {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let sections = files::parse_ini(&text);
        let name = named.clone().unwrap_or_else(|| "default".into());
        if let Some(section) = sections.get(&name) {
            found_named = true;
            out.push(Candidate {
                recipe: files::ini_recipe(section, path, &name, settings)?,
                source: CredentialSource::CredentialsFile {
                    path: path.clone(),
                    section: name,
                },
                implicit: false,
            });
        }
    }
    if let Some(name) = &named
        && !found_named
    {
        // A profile asked for by name that no file has is a mistake, not a request for the
        // metadata service.
        let cli_read = cli_path
            .as_ref()
            .filter(|_| !settings.flag(ENV_CLI_PROFILE_DISABLED));
        let existing: Vec<String> = [cli_read, ini_path.as_ref()]
            .into_iter()
            .flatten()
            .filter(|p| p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(CredentialError::NoSuchProfile {
                path: existing.join(" or "),
                profile: name.clone(),
            });
        }
        if profile_flag.is_some() {
            return Err(CredentialError::Missing(cli_path.map_or_else(
                || "~/.aliyun/config.json".to_owned(),
                |p| p.display().to_string(),
            )));
        }
    }
    if profile_flag.is_some() {
        return Ok(out);
    }
    if !settings.flag(ENV_ECS_METADATA_DISABLED) {
        // Configured when a role is named; otherwise the chain only probes.
        let implicit = settings.var(ENV_ECS_METADATA).is_none();
        out.push(Candidate {
            recipe: settings.ecs_recipe(None),
            source: CredentialSource::EcsMetadata,
            implicit,
        });
    }
    if let Some(url) = settings.var(ENV_CREDENTIALS_URI) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CredentialError::Invalid {
                place: ENV_CREDENTIALS_URI.to_owned(),
                reason: "must be an http:// or https:// URL".into(),
            });
        }
        out.push(Candidate {
            recipe: Recipe::Uri { url },
            source: CredentialSource::CredentialsUri,
            implicit: false,
        });
    }
    Ok(out)
}

/// Resolves the credentials: the first source of the chain that gives a key, fetched once
/// (temporary ones are then renewed by the provider). `env` reads a variable; `home` holds
/// `.aliyun/config.json` and `.alibabacloud/credentials.ini`.
pub async fn resolve(
    profile_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Arc<CredentialProvider>, CredentialError> {
    let settings = Settings { env, home };
    let candidates = candidates(profile_flag, &settings)?;
    let shown_cli = settings.cli_config_path().map_or_else(
        || "~/.aliyun/config.json".to_owned(),
        |p| p.display().to_string(),
    );
    let mut failures = Vec::new();
    let mut only_probes = true;
    let fetcher = Fetcher::new()?;
    for candidate in candidates {
        match CredentialProvider::start(candidate.recipe, candidate.source, fetcher.clone()).await {
            Ok(provider) => return Ok(provider),
            Err(e) => {
                tracing::debug!("credential chain: {e}");
                only_probes &= candidate.implicit;
                failures.push(e);
            }
        }
    }
    if only_probes {
        return Err(CredentialError::Missing(shown_cli));
    }
    if failures.len() == 1 {
        return Err(failures.remove(0));
    }
    Err(CredentialError::Exhausted(
        failures.iter().map(ToString::to_string).collect(),
    ))
}

/// The region of the CLI profile the credentials would come from (its `region_id`), as the
/// aliyun CLI uses it: `None` when there is no such profile or it names no region. Reads no
/// secret into anything but the parsed profile, which is dropped here.
pub fn profile_region(
    profile_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Option<String> {
    let settings = Settings { env, home };
    // With the key in the environment (and no --profile) the profile is not the source.
    if profile_flag.is_none()
        && settings.var(ENV_ID).is_some()
        && settings.var(ENV_SECRET).is_some()
    {
        return None;
    }
    let config = files::read_cli_config(&settings.cli_config_path()?).ok()??;
    let name = profile_flag
        .map(str::to_owned)
        .or_else(|| settings.var(ENV_PROFILE))
        .unwrap_or_else(|| {
            if config.current.is_empty() {
                "default".into()
            } else {
                config.current.clone()
            }
        });
    let profile = config.profiles.into_iter().find(|p| p.name == name)?;
    Some(profile.region_id).filter(|r| !r.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An environment with the metadata service switched off unless the test sets it, so no
    /// test waits on 100.100.100.200.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry(ENV_ECS_METADATA_DISABLED.into())
            .or_insert_with(|| "true".into());
        move |k| map.get(k).cloned()
    }

    fn home_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aliyun")).unwrap();
        std::fs::write(dir.path().join(".aliyun/config.json"), config).unwrap();
        dir
    }

    async fn chain(
        flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        home: &Path,
    ) -> Result<(Arc<AccessKey>, CredentialSource), CredentialError> {
        let provider = resolve(flag, env, Some(home)).await?;
        let key = provider.key().await?;
        Ok((key, provider.source().clone()))
    }

    const CONFIG: &str = r#"{"current":"ak","profiles":[
        {"name":"ak","mode":"AK","access_key_id":"AKID","access_key_secret":"AKSECRET"},
        {"name":"sts","mode":"StsToken","access_key_id":"STSID","access_key_secret":"S","sts_token":"TOK"},
        {"name":"sso","mode":"CloudSSO","access_key_id":"x","access_key_secret":"y"},
        {"name":"role","mode":"RamRoleArn","access_key_id":"x","access_key_secret":"y"}]}"#;

    #[tokio::test]
    async fn environment_comes_first() {
        let home = home_with(CONFIG);
        let env = env_of(&[(ENV_ID, "id"), (ENV_SECRET, "sec"), (ENV_TOKEN, "tok")]);
        let (key, src) = chain(None, &env, home.path()).await.unwrap();
        assert_eq!(src, CredentialSource::Environment);
        assert_eq!((key.id.as_str(), key.secret.expose()), ("id", "sec"));
        assert_eq!(key.security_token.as_ref().unwrap().expose(), "tok");
    }

    #[tokio::test]
    async fn profile_by_flag_env_or_current() {
        let home = home_with(CONFIG);
        let (key, _) = chain(None, &env_of(&[]), home.path()).await.unwrap();
        assert_eq!(key.id, "AKID");
        let (key, _) = chain(None, &env_of(&[(ENV_PROFILE, "sts")]), home.path())
            .await
            .unwrap();
        assert_eq!(
            (
                key.id.as_str(),
                key.security_token.as_ref().unwrap().expose()
            ),
            ("STSID", "TOK")
        );
        let (key, _) = chain(Some("sts"), &env_of(&[]), home.path()).await.unwrap();
        assert_eq!(key.id, "STSID");
    }

    #[tokio::test]
    async fn errors_name_the_mode_the_profile_and_the_variables() {
        let home = home_with(CONFIG);
        let err = chain(Some("sso"), &env_of(&[]), home.path())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("'CloudSSO'") && text.contains("RamRoleArn"),
            "{text}"
        );
        assert!(!err.is_refusal());
        let err = chain(Some("role"), &env_of(&[]), home.path())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("lacks ram_role_arn"), "{err}");
        let err = chain(Some("nope"), &env_of(&[]), home.path())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("'nope' not found"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = chain(None, &env_of(&[]), empty.path()).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(ENV_ID) && msg.contains(ENV_SECRET) && msg.contains("config.json"));
        assert!(!format!("{err:?}").contains("AKSECRET"));
    }

    #[tokio::test]
    async fn half_a_key_in_the_environment_says_which_half_is_missing() {
        let home = home_with(CONFIG);
        let err = chain(None, &env_of(&[(ENV_ID, "id")]), home.path())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("{ENV_ID} is set but {ENV_SECRET} is not")),
            "{text}"
        );
        let err = chain(None, &env_of(&[(ENV_SECRET, "s")]), home.path())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{ENV_SECRET} is set but {ENV_ID} is not")),
            "{err}"
        );
        // --profile names the source: the environment's half is not looked at.
        let (key, _) = chain(Some("ak"), &env_of(&[(ENV_ID, "id")]), home.path())
            .await
            .unwrap();
        assert_eq!(key.id, "AKID");
    }

    #[tokio::test]
    async fn the_source_reads_as_words_and_the_profile_gives_its_region() {
        let home = home_with(
            r#"{"current":"sh","profiles":[
            {"name":"sh","mode":"AK","access_key_id":"A","access_key_secret":"S","region_id":"cn-shanghai"},
            {"name":"none","mode":"AK","access_key_id":"A","access_key_secret":"S"}]}"#,
        );
        let (_, source) = chain(None, &env_of(&[]), home.path()).await.unwrap();
        let text = source.to_string();
        assert!(text.starts_with("profile 'sh' (mode AK) of "), "{text}");
        assert!(!text.contains('{'), "{text}");
        assert_eq!(
            profile_region(None, &env_of(&[]), Some(home.path())).as_deref(),
            Some("cn-shanghai")
        );
        assert_eq!(
            profile_region(Some("none"), &env_of(&[]), Some(home.path())),
            None
        );
        // A key from the environment: the profile is not the source, nor its region.
        let env = env_of(&[(ENV_ID, "i"), (ENV_SECRET, "s")]);
        assert_eq!(profile_region(None, &env, Some(home.path())), None);
    }

    #[tokio::test]
    async fn the_cli_profile_precedes_the_credentials_file_which_follows_the_profile_name() {
        let home = home_with(CONFIG);
        std::fs::create_dir(home.path().join(".alibabacloud")).unwrap();
        std::fs::write(
            home.path().join(".alibabacloud/credentials.ini"),
            "[default]\ntype = access_key\naccess_key_id = INIID\naccess_key_secret = INISECRET\n\
             [project]\ntype = access_key # comment\naccess_key_id = PROJ\naccess_key_secret = P\n\
             [weird]\ntype = rsa_key_pair\n",
        )
        .unwrap();
        let (key, _) = chain(None, &env_of(&[]), home.path()).await.unwrap();
        assert_eq!(key.id, "AKID", "config.json's current profile comes first");
        let off = env_of(&[(ENV_CLI_PROFILE_DISABLED, "TRUE")]);
        let (key, source) = chain(None, &off, home.path()).await.unwrap();
        assert_eq!(key.id, "INIID");
        assert!(
            source.to_string().starts_with("section [default] of "),
            "{source}"
        );
        let (key, _) = chain(None, &env_of(&[(ENV_PROFILE, "project")]), home.path())
            .await
            .unwrap();
        assert_eq!(
            key.id, "PROJ",
            "a name config.json lacks is looked up in the file"
        );
        let err = chain(Some("weird"), &env_of(&[]), home.path())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("'rsa_key_pair'"), "{err}");
        // ALIBABA_CLOUD_CREDENTIALS_FILE moves the file.
        let elsewhere = home.path().join("elsewhere.ini");
        std::fs::write(
            &elsewhere,
            "[default]\ntype=access_key\naccess_key_id=MOVED\naccess_key_secret=M\n",
        )
        .unwrap();
        let env = env_of(&[
            (ENV_CLI_PROFILE_DISABLED, "true"),
            (ENV_CREDENTIALS_FILE, elsewhere.to_str().unwrap()),
        ]);
        let (key, _) = chain(None, &env, home.path()).await.unwrap();
        assert_eq!(key.id, "MOVED");
    }

    #[test]
    fn the_sts_endpoint_follows_region_vpc_and_the_override() {
        let place = "test";
        let at = |pairs: &[(&str, &str)], region: &str, vpc: Option<bool>| {
            let env = env_of(pairs);
            let settings = Settings {
                env: &env,
                home: None,
            };
            settings
                .sts_endpoint(region, vpc, place)
                .unwrap()
                .host_header
        };
        assert_eq!(at(&[], "", None), "sts.aliyuncs.com");
        assert_eq!(
            at(&[(ENV_STS_REGION, "cn-beijing")], "", None),
            "sts.cn-beijing.aliyuncs.com"
        );
        assert_eq!(
            at(
                &[
                    (ENV_STS_REGION, "cn-beijing"),
                    (ENV_VPC_ENDPOINT_ENABLED, "true")
                ],
                "",
                None
            ),
            "sts-vpc.cn-beijing.aliyuncs.com"
        );
        assert_eq!(
            at(&[(ENV_STS_REGION, "cn-beijing")], "cn-hangzhou", Some(true)),
            "sts-vpc.cn-hangzhou.aliyuncs.com",
            "the profile's sts_region and enable_vpc win over the environment"
        );
        assert_eq!(
            at(&[(ENV_STS_ENDPOINT, "127.0.0.1:9")], "cn-hangzhou", None),
            "127.0.0.1:9"
        );
    }
}
