//! `simulate`: the simulator as a server until Ctrl-C or SIGTERM, then its stats and registry
//! written where asked.

use anyhow::{Context as _, anyhow};

use crate::exit::{ExitCode, Failure};
use crate::ledger::Replacement;
use crate::run::RunContext;
use crate::sim::{self, SimConfig};

pub async fn run(config: SimConfig, context: &RunContext) -> Result<ExitCode, Failure> {
    let stats_out = config.stats_out.clone();
    let dump = config.dump_credentials.clone();
    let handle = sim::start(config.clone()).await.map_err(|e| {
        Failure::usage(anyhow!(
            "cannot start the simulator on {}: {e}",
            config.listen
        ))
    })?;
    if !handle.addr.ip().is_loopback() {
        eprintln!(
            "warning: the simulator listens on {}, reachable from other machines: it speaks plain http and accepts whoever holds its keys (the rehearsal pair unless --access-key is given); /__sim/ stays loopback-only",
            handle.addr
        );
    }
    println!(
        "simulator listening on {} (instance {}, access key id {})",
        handle.endpoint(),
        handle.instance_id,
        handle.keys[0].id
    );
    context.interrupt.cancelled().await;
    if let Some(path) = stats_out {
        let json =
            serde_json::to_vec_pretty(&handle.stats()).map_err(|e| Failure::halted(anyhow!(e)))?;
        Replacement::write_whole(&path, &json)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(Failure::halted)?;
    }
    if let Some(path) = dump {
        Replacement::write_whole(&path, handle.credentials_csv().as_bytes())
            .with_context(|| format!("writing {}", path.display()))
            .map_err(Failure::halted)?;
    }
    handle.stop().await;
    Ok(ExitCode::Success)
}
