//! Helpers shared by the integration tests: an in-process simulator and clients pointed at it.
#![allow(dead_code)]

pub mod ledgers;
pub mod postgres;

use ledgers::LedgerArg;

use std::net::IpAddr;
use std::time::Duration;

use mqtt_provision::api::{AccessKey, ClientConfig, Endpoint, OnsMqttClient, SignatureVersion};
use mqtt_provision::sim::{self, SimConfig, SimHandle};

pub async fn simulator(config: SimConfig) -> SimHandle {
    sim::start(config).await.expect("simulator starts")
}

pub fn client_for(
    sim: &SimHandle,
    version: SignatureVersion,
    source: Option<IpAddr>,
) -> OnsMqttClient {
    client_with_key(sim, sim.keys[0].clone(), version, source)
}

pub fn client_with_key(
    sim: &SimHandle,
    key: AccessKey,
    version: SignatureVersion,
    source: Option<IpAddr>,
) -> OnsMqttClient {
    let mut config = ClientConfig::new(Endpoint::parse(&sim.endpoint()).unwrap());
    config.signature = version;
    config.source_address = source;
    config.read_timeout = Duration::from_millis(800);
    config.connect_timeout = Duration::from_millis(800);
    OnsMqttClient::new(config, key).unwrap()
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mqtt_provision::cli::Cli;
use mqtt_provision::run::{self, RunContext};
use tokio_util::sync::CancellationToken;

/// A context whose environment holds the simulator's first key.
pub fn context_for(sim: &SimHandle) -> RunContext {
    let key = sim.keys[0].clone();
    RunContext {
        env: Box::new(move |k| match k {
            "ALIBABA_CLOUD_ACCESS_KEY_ID" => Some(key.id.clone()),
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET" => Some(key.secret.expose().to_owned()),
            _ => None,
        }),
        home: None,
        stderr_is_terminal: false,
        stdin_is_terminal: false,
        interrupt: CancellationToken::new(),
        command_line: "mqtt-provision register (test)".into(),
    }
}

/// Runs one command in-process; returns its exit code.
pub async fn run_cli(args: &[&str], context: &RunContext) -> i32 {
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once("mqtt-provision").chain(args.iter().copied()),
    )
    .expect("test arguments parse");
    match run::execute(cli, context).await {
        Ok(code) => code.code(),
        Err(f) => {
            eprintln!("command failed: {:#}", f.error);
            f.code.code()
        }
    }
}

/// A CSV of `n` valid devices.
pub fn devices_csv(dir: &Path, name: &str, n: usize) -> PathBuf {
    let mut s = String::from("client_id\n");
    for i in 0..n {
        s.push_str(&format!("GID_test@@@{name}-{i:06}\n"));
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, s).unwrap();
    path
}

/// ClientId → (key id, secret) from a CSV with a header naming those columns.
pub fn credentials_from_csv(
    text: &str,
    id_col: &str,
    key_col: &str,
    secret_col: &str,
) -> HashMap<String, (String, String)> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (c, k, s) = (col(id_col), col(key_col), col(secret_col));
    r.records()
        .map(|rec| rec.unwrap())
        .map(|rec| (rec[c].to_owned(), (rec[k].to_owned(), rec[s].to_owned())))
        .collect()
}

/// The ledger's credentials, through `export`.
pub async fn ledger_credentials(
    ledger: &(impl LedgerArg + ?Sized),
    context: &RunContext,
) -> HashMap<String, (String, String)> {
    let out = ledger.beside("export.csv");
    assert_eq!(
        run_cli(
            &[
                "export",
                "--ledger",
                &ledger.ledger_arg(),
                "--out",
                out.to_str().unwrap()
            ],
            context
        )
        .await,
        0
    );
    credentials_from_csv(
        &std::fs::read_to_string(&out).unwrap(),
        "client_id",
        "device_access_key_id",
        "device_access_key_secret",
    )
}

pub fn simulator_credentials(sim: &SimHandle) -> HashMap<String, (String, String)> {
    credentials_from_csv(
        &sim.credentials_csv(),
        "client_id",
        "device_access_key_id",
        "device_access_key_secret",
    )
}

/// One bulk command line of a test (`register`, `fetch`, `cert inactivate` …): its CSV,
/// ledger, instance and endpoint.
pub struct Run {
    command: &'static [&'static str],
    csv: String,
    ledger: String,
    instance: String,
    endpoint: String,
}

impl Run {
    pub fn new(
        command: &'static [&'static str],
        csv: &std::path::Path,
        ledger: &(impl LedgerArg + ?Sized),
        sim: &SimHandle,
    ) -> Run {
        Run {
            command,
            csv: csv.to_str().unwrap().to_owned(),
            ledger: ledger.ledger_arg(),
            instance: sim.instance_id.clone(),
            endpoint: sim.endpoint(),
        }
    }

    pub fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = self.command.to_vec();
        v.extend([
            self.csv.as_str(),
            "--ledger",
            &self.ledger,
            "--instance-id",
            &self.instance,
            "--endpoint",
            &self.endpoint,
            "--quiet",
        ]);
        v.extend_from_slice(extra);
        v
    }

    /// Runs it with `extra` flags; the exit code.
    pub async fn exit(&self, extra: &[&str], ctx: &mqtt_provision::run::RunContext) -> i32 {
        run_cli(&self.args(extra), ctx).await
    }
}
