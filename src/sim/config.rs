//! Everything the simulator can be told: the `simulate` flags (clap) that tests and rehearsals
//! also build with `Default`, the rehearsal defaults, and the parsing of latency specs, keys and
//! rates. It only describes a simulator; it never starts one or holds its state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::DupMode;
use crate::api::credentials::AccessKey;
use crate::secret::Secret;

/// The documented key pair of a rehearsal (`register --simulate`, `simulate` without
/// `--access-key`). It opens nothing but the simulator.
pub const DEFAULT_ACCESS_KEY_ID: &str = "LTAI5tSimulatorRehearsal";
pub const DEFAULT_ACCESS_KEY_SECRET: &str = "simulator-rehearsal-secret";
/// The instance a rehearsal provisions.
pub const DEFAULT_INSTANCE_ID: &str = "post-cn-rehearsal01";

/// How long each response takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    None,
    Fixed(Duration),
    Uniform(Duration, Duration),
    /// Median and sigma of the underlying normal.
    LogNormal {
        median: Duration,
        sigma: f64,
    },
}

impl std::str::FromStr for Latency {
    type Err = String;

    /// `0`, `fixed:MS`, `uniform:MIN_MS:MAX_MS`, `lognormal:MEDIAN_MS:SIGMA`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let ms = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| Duration::from_secs_f64(x / 1000.0))
                .ok_or(format!("'{v}' is not a number of milliseconds"))
        };
        match parts.as_slice() {
            ["0"] | ["none"] => Ok(Latency::None),
            ["fixed", v] => Ok(Latency::Fixed(ms(v)?)),
            ["uniform", a, b] => {
                let (a, b) = (ms(a)?, ms(b)?);
                if a > b {
                    return Err("uniform: MIN must not exceed MAX".into());
                }
                Ok(Latency::Uniform(a, b))
            }
            ["lognormal", m, s] => {
                let sigma = s
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or(format!("'{s}' is not a sigma"))?;
                Ok(Latency::LogNormal {
                    median: ms(m)?,
                    sigma,
                })
            }
            _ => Err(format!(
                "'{s}': use 0, fixed:MS, uniform:MIN:MAX or lognormal:MEDIAN_MS:SIGMA"
            )),
        }
    }
}

fn parse_key(s: &str) -> Result<AccessKey, String> {
    let mut it = s.splitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some(id), Some(secret), token) if !id.is_empty() && !secret.is_empty() => Ok(AccessKey {
            id: id.to_owned(),
            secret: Secret::new(secret),
            security_token: token.filter(|t| !t.is_empty()).map(Secret::new),
        }),
        _ => Err("use ID:SECRET or ID:SECRET:STS_TOKEN".into()),
    }
}

fn parse_ttl(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && *t > 0.0 && *t <= 86_400.0)
        .ok_or(format!(
            "'{s}' is not a lifetime in seconds (0 < s <= 86400)"
        ))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or(format!("'{s}' is not a rate between 0 and 1"))
}

fn parse_capacity(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or(format!(
            "'{s}' is not a positive number of calls per second"
        ))
}

/// Everything the simulator can be told. The same struct serves `mqtt-provision simulate` (as
/// flags) and the in-process simulator of tests and rehearsals (built with `Default`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on (loopback by default; port 0 picks a free one and prints it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// An accepted AccessKey, ID:SECRET or ID:SECRET:STS_TOKEN (repeatable). Without it, the
    /// documented rehearsal pair is accepted.
    #[arg(long = "access-key", value_name = "ID:SECRET[:TOKEN]", value_parser = parse_key)]
    pub access_keys: Vec<AccessKey>,
    /// An instance that exists (repeatable; default: the rehearsal instance).
    #[arg(long = "instance-id", alias = "instance", value_name = "ID")]
    pub instances: Vec<String>,
    /// What a repeated RegisterDeviceCredential does.
    #[arg(long, value_enum, default_value_t = DupMode::Exist)]
    pub dup_mode: DupMode,
    /// Credentials per instance before DeviceCredentialNumExceed.
    #[arg(long)]
    pub quota: Option<usize>,
    /// Admitted calls of each API per account in any sliding second (documented: 500).
    #[arg(long, default_value_t = 500)]
    pub account_qps: usize,
    /// Calls of all APIs together per source IP in any sliding second before the IP is blocked
    /// (documented: 300).
    #[arg(long, default_value_t = 300)]
    pub ip_qps: usize,
    /// How long a blocked IP stays blocked.
    #[arg(long, default_value_t = 60.0)]
    pub ip_block_secs: f64,
    /// An overload model: past this many calls/s arriving (all APIs and addresses, any sliding
    /// second), each admitted call is refused with 500 SystemOverFlow with the share the rate
    /// exceeds it by (1 − capacity / rate), so the service serves about this many whatever is
    /// offered. Unlike --fault-system-overflow, the refusals follow the offered rate.
    #[arg(long, value_name = "CALLS_PER_SEC", value_parser = parse_capacity)]
    pub capacity_qps: Option<f64>,
    /// Send `x-acs-retry-after: N` with every throttled answer.
    #[arg(long)]
    pub retry_after_ms: Option<u64>,
    /// Rate of 500 InternalError answers (not applied).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_internal_error: f64,
    /// Rate of 500 SystemOverFlow answers (not applied).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_system_overflow: f64,
    /// Rate of 503 ServiceUnavailable answers (not applied).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_unavailable: f64,
    /// Rate of connections dropped before the call is applied.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_drop_before: f64,
    /// Rate of connections dropped after the call is applied (the response is lost).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_drop_after: f64,
    /// Rate of calls applied but answered only after --slow-ms.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_slow: f64,
    /// Delay of a slow answer (beyond the client's 10 s read timeout by default).
    #[arg(long, default_value_t = 15_000)]
    pub slow_ms: u64,
    /// Latency of every answer: 0, fixed:MS, uniform:MIN:MAX, lognormal:MEDIAN_MS:SIGMA.
    #[arg(long, default_value = "0")]
    pub latency: Latency,
    /// Lifetime in seconds of every temporary key issued (STS AssumeRole/AssumeRoleWithOIDC,
    /// the metadata service, the credentials URI), whatever DurationSeconds asks; then the key
    /// is refused with InvalidSecurityToken.Expired. Default: DurationSeconds, else an hour.
    #[arg(long, value_name = "SECONDS", value_parser = parse_ttl)]
    pub sts_ttl: Option<f64>,
    /// The metadata service issues no IMDSv2 token (answers 404 to the PUT), as an older
    /// instance does: clients must fall back to IMDSv1.
    #[arg(long)]
    pub metadata_v1_only: bool,
    /// Seed of faults, latency and credential values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the registry in this journal file across restarts.
    #[arg(long, alias = "state", value_name = "FILE")]
    pub journal: Option<PathBuf>,
    /// Seed device certificates from a CSV with columns device_sn, ca_sn [, device_name, status].
    #[arg(long)]
    pub device_certs: Option<PathBuf>,
    /// Write the stats JSON here on SIGINT/SIGTERM.
    #[arg(long)]
    pub stats_out: Option<PathBuf>,
    /// Write the registry as CSV here on SIGINT/SIGTERM.
    #[arg(long)]
    pub dump_credentials: Option<PathBuf>,
    /// Close a connection that has not sent a whole request header for this long, waiting
    /// between two requests included (seconds): half-open and idle connections do not pile up.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = positive_secs)]
    pub header_timeout: Duration,
    /// Connections served at once; further ones wait to be accepted until one closes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// A positive, finite number of seconds.
fn positive_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.001)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or(format!(
            "'{s}' is not a number of seconds of at least 0.001"
        ))
}

impl Default for SimConfig {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: SimConfig,
        }
        let mut config = <Wrapper as clap::Parser>::parse_from(["simulate"]).config;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}

impl SimConfig {
    /// The keys it accepts: the configured ones, else the rehearsal pair.
    pub fn keys(&self) -> Vec<AccessKey> {
        if self.access_keys.is_empty() {
            vec![AccessKey::new(
                DEFAULT_ACCESS_KEY_ID,
                DEFAULT_ACCESS_KEY_SECRET,
            )]
        } else {
            self.access_keys.clone()
        }
    }

    pub fn instance_ids(&self) -> Vec<String> {
        if self.instances.is_empty() {
            vec![DEFAULT_INSTANCE_ID.to_owned()]
        } else {
            self.instances.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_specs_parse() {
        assert_eq!("0".parse::<Latency>(), Ok(Latency::None));
        assert_eq!(
            "fixed:5".parse::<Latency>(),
            Ok(Latency::Fixed(Duration::from_millis(5)))
        );
        assert!(
            matches!("lognormal:80:0.5".parse::<Latency>(), Ok(Latency::LogNormal { sigma, .. }) if sigma == 0.5)
        );
        assert!("uniform:5:1".parse::<Latency>().is_err());
        assert!("gauss:1".parse::<Latency>().is_err());
    }

    #[test]
    fn defaults_are_the_documented_limits() {
        let c = SimConfig::default();
        assert_eq!((c.account_qps, c.ip_qps, c.ip_block_secs), (500, 300, 60.0));
        assert_eq!(c.keys()[0].id, DEFAULT_ACCESS_KEY_ID);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(
            (c.header_timeout, c.max_connections),
            (Duration::from_secs(30), 1024)
        );
        for bad in ["0", "-1", "nan", "inf", "1e300"] {
            assert!(positive_secs(bad).is_err(), "{bad}");
        }
    }
}
