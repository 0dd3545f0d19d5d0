//! The commands that read a ledger: `status` and `export`.

use anyhow::{Context as _, anyhow};

use crate::cli::StatusArgs;
use crate::exit::{ExitCode, Failure};
use crate::ledger::Ledger;
use crate::plan::{ExportPlan, ExportSelection};
use crate::report::export;
use crate::report::status::LedgerStatus;

pub async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    let ledger = Ledger::open_existing(&args.ledger.ledger)
        .await
        .map_err(Failure::from)?;
    let status = LedgerStatus::load(&ledger).await.map_err(Failure::from)?;
    if args.json {
        let text =
            serde_json::to_string_pretty(&status).map_err(|e| Failure::halted(anyhow!(e)))?;
        println!("{text}");
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::Success)
}

pub async fn export(plan: ExportPlan) -> Result<ExitCode, Failure> {
    let ledger = Ledger::open_existing(&plan.ledger)
        .await
        .map_err(Failure::from)?;
    let out = plan.out.as_deref();
    let name = plan.operation.name();
    let written = match &plan.selection {
        ExportSelection::Failures => export::export_failures(&ledger, name, out, plan.json).await,
        ExportSelection::Credentials { states } => {
            let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            export::export_credentials(&ledger, name, &states, out, plan.json).await
        }
    }
    .with_context(|| match out {
        Some(path) => format!("writing {}", path.display()),
        None => "writing to standard output".to_owned(),
    })
    .map_err(Failure::halted)?;
    if let Some(path) = out {
        eprintln!("wrote {written} rows to {}", path.display());
    }
    Ok(ExitCode::Success)
}
