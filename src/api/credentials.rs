//! Where the AccessKey for the OpenAPI calls comes from, in the ecosystem's order
//! (shared/reference/onsmqtt-api.md §8): the `ALIBABA_CLOUD_*` environment variables, else a
//! profile of the aliyun CLI's `~/.aliyun/config.json`. No flag ever carries a secret.

use std::path::{Path, PathBuf};

use crate::secret::Secret;

pub const ENV_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
pub const ENV_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";
pub const ENV_PROFILE: &str = "ALIBABA_CLOUD_PROFILE";

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
    CliProfile { path: PathBuf, profile: String },
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Environment => write!(f, "the environment ({ENV_ID})"),
            CredentialSource::CliProfile { path, profile } => {
                write!(f, "profile '{profile}' of {}", path.display())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no Alibaba Cloud credentials: set {ENV_ID} and {ENV_SECRET} (and {ENV_TOKEN} for STS), \
         or configure a profile in {0} with `aliyun configure`"
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
         use mode AK or StsToken, or export {ENV_ID}/{ENV_SECRET}"
    )]
    UnsupportedMode {
        path: String,
        profile: String,
        mode: String,
    },
    #[error("profile '{profile}' in {path} lacks {field}")]
    Incomplete {
        path: String,
        profile: String,
        field: &'static str,
    },
}

#[derive(serde::Deserialize)]
struct CliConfig {
    #[serde(default)]
    current: String,
    #[serde(default)]
    profiles: Vec<CliProfile>,
}

#[derive(serde::Deserialize)]
struct CliProfile {
    name: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    access_key_id: String,
    #[serde(default)]
    access_key_secret: Secret,
    #[serde(default)]
    sts_token: Secret,
    #[serde(default)]
    region_id: String,
}

/// Resolves the key. `env` reads a variable (injected so tests do not touch the process
/// environment); `home` is the directory holding `.aliyun/config.json`.
pub fn resolve(
    profile_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<(AccessKey, CredentialSource), CredentialError> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if profile_flag.is_none()
        && let (Some(id), Some(secret)) = (var(ENV_ID), var(ENV_SECRET))
    {
        let key = AccessKey {
            id,
            secret: Secret::new(secret),
            security_token: var(ENV_TOKEN).map(Secret::new),
        };
        return Ok((key, CredentialSource::Environment));
    }
    // One half of the pair alone is a mistake, not a request for the profile (as the official
    // chain's environment source says too).
    if profile_flag.is_none() {
        match (var(ENV_ID), var(ENV_SECRET)) {
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
            _ => {}
        }
    }
    let (path, shown, profile) = cli_profile(profile_flag, env, home)?;
    let wanted = profile.name.clone();
    let incomplete = |field| CredentialError::Incomplete {
        path: shown.clone(),
        profile: wanted.clone(),
        field,
    };
    let token = match profile.mode.as_str() {
        "AK" | "" => None,
        "StsToken" if profile.sts_token.is_empty() => return Err(incomplete("sts_token")),
        "StsToken" => Some(profile.sts_token),
        other => {
            return Err(CredentialError::UnsupportedMode {
                path: shown,
                profile: wanted,
                mode: other.to_owned(),
            });
        }
    };
    if profile.access_key_id.is_empty() {
        return Err(incomplete("access_key_id"));
    }
    if profile.access_key_secret.is_empty() {
        return Err(incomplete("access_key_secret"));
    }
    let key = AccessKey {
        id: profile.access_key_id,
        secret: profile.access_key_secret,
        security_token: token,
    };
    Ok((
        key,
        CredentialSource::CliProfile {
            path,
            profile: wanted,
        },
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
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    // With the key in the environment (and no --profile) the profile is not the source.
    if profile_flag.is_none() && var(ENV_ID).is_some() && var(ENV_SECRET).is_some() {
        return None;
    }
    let (_, _, profile) = cli_profile(profile_flag, env, home).ok()?;
    Some(profile.region_id).filter(|r| !r.trim().is_empty())
}

/// The selected profile of `~/.aliyun/config.json`: `--profile`, else ALIBABA_CLOUD_PROFILE,
/// else the file's `current`, else `default`; with the file's path and how messages show it.
fn cli_profile(
    profile_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<(PathBuf, String, CliProfile), CredentialError> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let path = home.map(|h| h.join(".aliyun").join("config.json"));
    let shown = path.as_ref().map_or_else(
        || "~/.aliyun/config.json".to_owned(),
        |p| p.display().to_string(),
    );
    let Some(path) = path.filter(|p| p.exists()) else {
        return Err(CredentialError::Missing(shown));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| CredentialError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let config: CliConfig =
        serde_json::from_str(&text).map_err(|e| CredentialError::Unreadable {
            path: shown.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
    let wanted = profile_flag
        .map(str::to_owned)
        .or_else(|| var(ENV_PROFILE))
        .unwrap_or_else(|| {
            if config.current.is_empty() {
                "default".into()
            } else {
                config.current.clone()
            }
        });
    let profile = config
        .profiles
        .into_iter()
        .find(|p| p.name == wanted)
        .ok_or_else(|| CredentialError::NoSuchProfile {
            path: shown.clone(),
            profile: wanted.clone(),
        })?;
    Ok((path, shown, profile))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn home_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aliyun")).unwrap();
        std::fs::write(dir.path().join(".aliyun/config.json"), config).unwrap();
        dir
    }

    const CONFIG: &str = r#"{"current":"ak","profiles":[
        {"name":"ak","mode":"AK","access_key_id":"AKID","access_key_secret":"AKSECRET"},
        {"name":"sts","mode":"StsToken","access_key_id":"STSID","access_key_secret":"S","sts_token":"TOK"},
        {"name":"role","mode":"RamRoleArn","access_key_id":"x","access_key_secret":"y"}]}"#;

    #[test]
    fn environment_comes_first() {
        let home = home_with(CONFIG);
        let env = env_of(&[(ENV_ID, "id"), (ENV_SECRET, "sec"), (ENV_TOKEN, "tok")]);
        let (key, src) = resolve(None, &env, Some(home.path())).unwrap();
        assert_eq!(src, CredentialSource::Environment);
        assert_eq!((key.id.as_str(), key.secret.expose()), ("id", "sec"));
        assert_eq!(key.security_token.unwrap().expose(), "tok");
    }

    #[test]
    fn profile_by_flag_env_or_current() {
        let home = home_with(CONFIG);
        let (key, _) = resolve(None, &env_of(&[]), Some(home.path())).unwrap();
        assert_eq!(key.id, "AKID");
        let (key, _) = resolve(None, &env_of(&[(ENV_PROFILE, "sts")]), Some(home.path())).unwrap();
        assert_eq!(
            (key.id.as_str(), key.security_token.unwrap().expose()),
            ("STSID", "TOK")
        );
        let (key, _) = resolve(Some("sts"), &env_of(&[]), Some(home.path())).unwrap();
        assert_eq!(key.id, "STSID");
    }

    #[test]
    fn errors_name_the_mode_the_profile_and_the_variables() {
        let home = home_with(CONFIG);
        let err = resolve(Some("role"), &env_of(&[]), Some(home.path())).unwrap_err();
        assert!(err.to_string().contains("'RamRoleArn'"), "{err}");
        let err = resolve(Some("nope"), &env_of(&[]), Some(home.path())).unwrap_err();
        assert!(err.to_string().contains("'nope' not found"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = resolve(None, &env_of(&[]), Some(empty.path())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(ENV_ID) && msg.contains(ENV_SECRET) && msg.contains("config.json"));
        assert!(!format!("{err:?}").contains("AKSECRET"));
    }

    #[test]
    fn half_a_key_in_the_environment_says_which_half_is_missing() {
        let home = home_with(CONFIG);
        let err = resolve(None, &env_of(&[(ENV_ID, "id")]), Some(home.path())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("{ENV_ID} is set but {ENV_SECRET} is not")),
            "{text}"
        );
        let err = resolve(None, &env_of(&[(ENV_SECRET, "s")]), Some(home.path())).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{ENV_SECRET} is set but {ENV_ID} is not")),
            "{err}"
        );
        // --profile names the source: the environment's half is not looked at.
        let (key, _) = resolve(Some("ak"), &env_of(&[(ENV_ID, "id")]), Some(home.path())).unwrap();
        assert_eq!(key.id, "AKID");
    }

    #[test]
    fn the_source_reads_as_words_and_the_profile_gives_its_region() {
        let home = home_with(
            r#"{"current":"sh","profiles":[
            {"name":"sh","mode":"AK","access_key_id":"A","access_key_secret":"S","region_id":"cn-shanghai"},
            {"name":"none","mode":"AK","access_key_id":"A","access_key_secret":"S"}]}"#,
        );
        let (_, source) = resolve(None, &env_of(&[]), Some(home.path())).unwrap();
        let text = source.to_string();
        assert!(text.starts_with("profile 'sh' of "), "{text}");
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
}
