//! Access for a command: the cloud (the plan's endpoint, the AccessKey from the credential
//! chain) or, for a rehearsal, an in-process simulator; then one client per source address.
//!
//! It builds connections and nothing else: it never sends a call, never touches a ledger, and
//! never logs a secret (only the AccessKey's id).

use std::time::Duration;

use anyhow::anyhow;

use std::sync::Arc;

use crate::api::clock::ServiceClock;
use crate::api::credentials::{self, AccessKey, CredentialProvider, CredentialSource};
use crate::api::endpoint::DEFAULT_REGION;
use crate::api::{ClientConfig, Endpoint, OnsMqttClient};
use crate::exit::Failure;
use crate::plan::AccessPlan;
use crate::run::RunContext;
use crate::sim::{self, Latency, SimConfig};

/// The clients of a command, and the simulator they talk to under `--simulate` (stopped by
/// [`Access::close`]).
pub struct Access {
    pub clients: Vec<OnsMqttClient>,
    simulator: Option<sim::SimHandle>,
}

impl Access {
    pub async fn connect(plan: &AccessPlan, context: &RunContext) -> Result<Access, Failure> {
        let (simulator, endpoint, key) = if plan.simulate {
            let (handle, endpoint, key) = rehearsal(plan).await?;
            let credentials = CredentialProvider::fixed(key, CredentialSource::Rehearsal);
            (Some(handle), endpoint, credentials)
        } else {
            let endpoint = cloud_endpoint(plan, context)?;
            tracing::info!("endpoint {}", endpoint.base);
            (None, endpoint, cloud_credentials(plan, context).await?)
        };
        let mut config = ClientConfig::new(endpoint);
        config.signature = plan.signature;
        config.connect_timeout = plan.connect_timeout;
        config.read_timeout = plan.read_timeout;
        config.clock = std::sync::Arc::new(ServiceClock::with_local_error(plan.clock_error_ms));
        let clients = plan
            .source_addresses
            .iter()
            .map(|&source| {
                let mut c = config.clone();
                c.source_address = source;
                OnsMqttClient::with_credentials(c, key.clone())
                    .map_err(|e| Failure::usage(anyhow!("cannot build the HTTP client: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Access { clients, simulator })
    }

    /// The first client, for the single-call commands.
    pub fn client(&self) -> &OnsMqttClient {
        &self.clients[0]
    }

    /// Stops the in-process simulator, if there is one.
    pub async fn close(self) {
        if let Some(sim) = self.simulator {
            sim.stop().await;
        }
    }
}

/// The endpoint of real calls: `--endpoint`, else `--region`, else the region of the CLI profile
/// the key comes from (as the aliyun CLI does), else the default region.
pub fn cloud_endpoint(plan: &AccessPlan, context: &RunContext) -> Result<Endpoint, Failure> {
    if let Some(endpoint) = &plan.endpoint {
        return Ok(endpoint.clone());
    }
    let region = credentials::profile_region(
        plan.profile.as_deref(),
        &*context.env,
        context.home.as_deref(),
    )
    .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    Endpoint::for_region(&region)
        .map_err(|e| Failure::usage(anyhow!("the CLI profile's region_id: {e}")))
}

/// The credentials for real calls, from the credential chain. A configuration error is a usage
/// error (nothing was sent); a source that refused (STS, the metadata service, the URI) halts.
async fn cloud_credentials(
    plan: &AccessPlan,
    context: &RunContext,
) -> Result<Arc<CredentialProvider>, Failure> {
    let credentials = credentials::resolve(
        plan.profile.as_deref(),
        &*context.env,
        context.home.as_deref(),
    )
    .await
    .map_err(|e| {
        if e.is_refusal() {
            Failure::halted(e)
        } else {
            Failure::usage(e)
        }
    })?;
    tracing::info!(
        "credentials from {}, access key id {}{}",
        credentials.source(),
        credentials.access_key_id(),
        if credentials.renewable() {
            " (temporary: renewed before they expire)"
        } else {
            ""
        }
    );
    Ok(credentials)
}

/// An in-process simulator for the plan's instance, with a realistic latency, and its key.
async fn rehearsal(plan: &AccessPlan) -> Result<(sim::SimHandle, Endpoint, AccessKey), Failure> {
    let instance_id = &plan.instance_id;
    let config = SimConfig {
        instances: vec![instance_id.to_owned()],
        journal: plan.rehearsal.journal.clone(),
        device_certs: plan.rehearsal.certificates.clone(),
        latency: Latency::LogNormal {
            median: Duration::from_millis(80),
            sigma: 0.5,
        },
        ..SimConfig::default()
    };
    let handle = sim::start(config)
        .await
        .map_err(|e| Failure::usage(anyhow!("cannot start the built-in simulator: {e}")))?;
    tracing::info!(
        "rehearsal: built-in simulator at {} (instance {instance_id}); no cloud account is used",
        handle.endpoint()
    );
    let endpoint = Endpoint::parse(&handle.endpoint()).map_err(Failure::usage)?;
    let key = handle.keys[0].clone();
    Ok((handle, endpoint, key))
}
