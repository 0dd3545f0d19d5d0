//! The two files of the chain: the aliyun CLI's `~/.aliyun/config.json` (its profile modes) and
//! the credentials file `~/.alibabacloud/credentials.ini` (its section types), each turned into
//! a [`Recipe`] with the official library's field names
//! (alibabacloud_credentials/provider/cli_profile.py, profile.py). Reading only: no file is
//! written, no network is touched, no secret is printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::fetch::{Recipe, RoleRequest};
use super::{CredentialError, Settings};
use crate::secret::Secret;

/// The modes this tool can use, for the error that names an unsupported one.
pub const SUPPORTED_MODES: &str = "AK, StsToken, RamRoleArn, EcsRamRole, OIDC, ChainableRamRoleArn";
pub const SUPPORTED_TYPES: &str = "access_key, ram_role_arn, oidc_role_arn, ecs_ram_role";

#[derive(serde::Deserialize)]
pub(super) struct CliConfig {
    #[serde(default)]
    pub current: String,
    #[serde(default)]
    pub profiles: Vec<CliProfile>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub(super) struct CliProfile {
    pub name: String,
    pub mode: String,
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub sts_token: Secret,
    pub region_id: String,
    pub ram_role_arn: String,
    pub ram_session_name: String,
    pub role_session_name: String,
    pub expired_seconds: Option<u32>,
    pub policy: String,
    pub external_id: String,
    pub sts_region: String,
    pub enable_vpc: Option<bool>,
    pub ram_role_name: String,
    pub oidc_provider_arn: String,
    pub oidc_token_file: String,
    pub source_profile: String,
}

/// `~/.aliyun/config.json`, parsed; `None` if there is no such file.
pub(super) fn read_cli_config(path: &Path) -> Result<Option<CliConfig>, CredentialError> {
    if !path.is_file() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CredentialError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CredentialError::Unreadable {
            path: shown,
            reason: format!("not valid JSON: {e}"),
        })
}

/// Chained profiles deeper than this are a loop (`source_profile` naming itself, or a ring).
const MAX_CHAIN: usize = 8;

/// The recipe of profile `name` of the CLI config.
pub(super) fn cli_recipe(
    config: &CliConfig,
    path: &Path,
    name: &str,
    settings: &Settings<'_>,
) -> Result<Recipe, CredentialError> {
    cli_recipe_at(config, path, name, settings, 0)
}

fn cli_recipe_at(
    config: &CliConfig,
    path: &Path,
    name: &str,
    settings: &Settings<'_>,
    depth: usize,
) -> Result<Recipe, CredentialError> {
    let shown = path.display().to_string();
    let profile = config
        .profiles
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| CredentialError::NoSuchProfile {
            path: shown.clone(),
            profile: name.to_owned(),
        })?;
    let incomplete = |field: &'static str| CredentialError::Incomplete {
        path: shown.clone(),
        profile: name.to_owned(),
        field,
    };
    let static_key = || -> Result<super::AccessKey, CredentialError> {
        if profile.access_key_id.is_empty() {
            return Err(incomplete("access_key_id"));
        }
        if profile.access_key_secret.is_empty() {
            return Err(incomplete("access_key_secret"));
        }
        Ok(super::AccessKey {
            id: profile.access_key_id.clone(),
            secret: profile.access_key_secret.clone(),
            security_token: None,
        })
    };
    let role = |session: &str| -> Result<RoleRequest, CredentialError> {
        if profile.ram_role_arn.is_empty() {
            return Err(incomplete("ram_role_arn"));
        }
        settings.role_request(
            &profile.ram_role_arn,
            session,
            // The aliyun CLI writes 0 for "not set".
            profile.expired_seconds.filter(|&s| s != 0),
            &profile.policy,
            &profile.external_id,
            &profile.sts_region,
            profile.enable_vpc,
            &format!("profile '{name}' in {shown}"),
        )
    };
    match profile.mode.as_str() {
        "AK" | "" => Ok(Recipe::Static(static_key()?)),
        "StsToken" => {
            if profile.sts_token.is_empty() {
                return Err(incomplete("sts_token"));
            }
            let mut key = static_key()?;
            key.security_token = Some(profile.sts_token.clone());
            Ok(Recipe::Static(key))
        }
        "RamRoleArn" => Ok(Recipe::AssumeRole {
            base: Box::new(Recipe::Static(static_key()?)),
            role: role(&profile.ram_session_name)?,
        }),
        "ChainableRamRoleArn" => {
            if profile.source_profile.is_empty() {
                return Err(incomplete("source_profile"));
            }
            if depth >= MAX_CHAIN {
                return Err(CredentialError::Invalid {
                    place: format!("profile '{name}' in {shown}"),
                    reason: format!("source_profile chains more than {MAX_CHAIN} deep (a loop?)"),
                });
            }
            let base = cli_recipe_at(config, path, &profile.source_profile, settings, depth + 1)?;
            Ok(Recipe::AssumeRole {
                base: Box::new(base),
                role: role(&profile.ram_session_name)?,
            })
        }
        "EcsRamRole" => Ok(settings.ecs_recipe(Some(&profile.ram_role_name))),
        "OIDC" => {
            if profile.oidc_provider_arn.is_empty() {
                return Err(incomplete("oidc_provider_arn"));
            }
            if profile.oidc_token_file.is_empty() {
                return Err(incomplete("oidc_token_file"));
            }
            Ok(Recipe::Oidc {
                role: role(if profile.role_session_name.is_empty() {
                    &profile.ram_session_name
                } else {
                    &profile.role_session_name
                })?,
                provider_arn: profile.oidc_provider_arn.clone(),
                token_file: PathBuf::from(&profile.oidc_token_file),
            })
        }
        other => Err(CredentialError::UnsupportedMode {
            path: shown,
            profile: name.to_owned(),
            mode: other.to_owned(),
            supported: SUPPORTED_MODES,
        }),
    }
}

/// The sections of an INI file: `[name]` then `key = value` (or `key: value`) lines; `#` and
/// `;` start a comment line, and a value loses everything from a `#` on (as the official
/// library strips it). Keys are lower-cased, as Python's configparser does.
pub(super) fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_owned();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some(section) = &current else { continue };
        let Some((key, value)) = line.split_once(['=', ':']) else {
            continue;
        };
        let value = value.split('#').next().unwrap_or("").trim();
        sections
            .entry(section.clone())
            .or_default()
            .insert(key.trim().to_ascii_lowercase(), value.to_owned());
    }
    sections
}

/// The recipe of `section` of the credentials file at `path` (already read as `text`).
pub(super) fn ini_recipe(
    section: &HashMap<String, String>,
    path: &Path,
    name: &str,
    settings: &Settings<'_>,
) -> Result<Recipe, CredentialError> {
    let shown = path.display().to_string();
    let field = |k: &str| section.get(k).map(String::as_str).unwrap_or("");
    let incomplete = |field: &'static str| CredentialError::Incomplete {
        path: shown.clone(),
        profile: name.to_owned(),
        field,
    };
    let static_key = || -> Result<super::AccessKey, CredentialError> {
        if field("access_key_id").is_empty() {
            return Err(incomplete("access_key_id"));
        }
        if field("access_key_secret").is_empty() {
            return Err(incomplete("access_key_secret"));
        }
        Ok(super::AccessKey::new(
            field("access_key_id"),
            field("access_key_secret"),
        ))
    };
    let role = || -> Result<RoleRequest, CredentialError> {
        if field("role_arn").is_empty() {
            return Err(incomplete("role_arn"));
        }
        settings.role_request(
            field("role_arn"),
            field("role_session_name"),
            None,
            field("policy"),
            "",
            "",
            None,
            &format!("section [{name}] of {shown}"),
        )
    };
    match field("type") {
        "access_key" => Ok(Recipe::Static(static_key()?)),
        "ram_role_arn" => Ok(Recipe::AssumeRole {
            base: Box::new(Recipe::Static(static_key()?)),
            role: role()?,
        }),
        "oidc_role_arn" => {
            if field("oidc_provider_arn").is_empty() {
                return Err(incomplete("oidc_provider_arn"));
            }
            if field("oidc_token_file_path").is_empty() {
                return Err(incomplete("oidc_token_file_path"));
            }
            Ok(Recipe::Oidc {
                role: role()?,
                provider_arn: field("oidc_provider_arn").to_owned(),
                token_file: PathBuf::from(field("oidc_token_file_path")),
            })
        }
        "ecs_ram_role" => Ok(settings.ecs_recipe(Some(field("role_name")))),
        other => Err(CredentialError::UnsupportedMode {
            path: shown,
            profile: name.to_owned(),
            mode: other.to_owned(),
            supported: SUPPORTED_TYPES,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_keys_and_comments_read_as_configparser_reads_them() {
        let ini = parse_ini(
            "# top\n[default]\ntype = access_key   # the kind\nAccess_Key_Id=id\naccess_key_secret: s\n\
             ; comment\n[other]\nnot a pair\ntype=ecs_ram_role\n",
        );
        let d = &ini["default"];
        assert_eq!(d["type"], "access_key");
        assert_eq!(d["access_key_id"], "id");
        assert_eq!(d["access_key_secret"], "s");
        assert_eq!(ini["other"]["type"], "ecs_ram_role");
        assert_eq!(ini["other"].len(), 1);
        assert!(parse_ini("key=outside a section\n[x").is_empty());
    }
}
