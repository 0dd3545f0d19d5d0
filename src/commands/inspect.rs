//! The commands that read a ledger: `status`, `export` and `show`; and its maintenance
//! (`ledger seal`, `ledger purge`).

use anyhow::anyhow;

use crate::cli::{LedgerArgs, SealArgs, ShowArgs, StatusArgs};
use crate::exit::{ExitCode, Failure};
use crate::ledger::{Ledger, Sealer};
use crate::plan::{ExportPlan, ExportSelection};
use crate::report::export;
use crate::report::history::History;
use crate::report::status::LedgerStatus;
use crate::target::{CertificateId, Target};

pub async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    let ledger = Ledger::open_read_only(&args.ledger.ledger)
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
    ledger.close().await;
    Ok(ExitCode::Success)
}

pub async fn export(plan: ExportPlan) -> Result<ExitCode, Failure> {
    let ledger = Ledger::open_for_export(&plan.ledger)
        .await
        .map_err(Failure::from)?;
    let out = plan.out.as_deref();
    if let Some(path) = out
        && ledger.owns_file(path)
    {
        return Err(Failure::usage(anyhow!(
            "--out {} is the ledger {} itself (or one of its files); writing there would destroy every secret in it: choose another file",
            path.display(),
            ledger.path()
        )));
    }
    if let Some(path) = out
        && let Some(reason) = crate::ledger::Replacement::refusal(path)
    {
        return Err(Failure::usage(anyhow!("--out {} {reason}", path.display())));
    }
    let identity = plan.identity.as_deref();
    let names = |states: &[crate::ledger::ItemState]| -> Vec<&'static str> {
        states.iter().map(|s| s.as_str()).collect()
    };
    let written = match &plan.selection {
        ExportSelection::Current { states } => {
            export::export_current(&ledger, &names(states), out, plan.format, identity).await
        }
        ExportSelection::Operation { operation, states } => {
            let name = operation.name();
            export::export_credentials(&ledger, name, &names(states), out, plan.format, identity)
                .await
        }
        ExportSelection::Failures { operation, states } => {
            let name = operation.name();
            export::export_failures(&ledger, name, &names(states), out, plan.format).await
        }
    };
    let written = match written {
        Ok(n) => n,
        // A sealed ledger without (or with the wrong) identity: nothing was written.
        Err(e) => match e.downcast::<crate::ledger::LedgerError>() {
            Ok(ledger_error) => return Err(Failure::from(ledger_error)),
            Err(e) => {
                let kind = e.chain().find_map(io_kind);
                // `export | head`: the reader has what it wanted; a closed pipe is not a halt.
                if out.is_none() && kind == Some(std::io::ErrorKind::BrokenPipe) {
                    return Ok(ExitCode::Success);
                }
                // A destination that cannot be a file (no such directory, a directory, no
                // permission) is the command line's mistake, not a halt.
                let usage = matches!(
                    kind,
                    Some(
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::IsADirectory
                            | std::io::ErrorKind::NotADirectory
                    )
                );
                let e = e.context(match out {
                    Some(path) => format!("writing {}", path.display()),
                    None => "writing to standard output".to_owned(),
                });
                return Err(if usage {
                    Failure::usage(e)
                } else {
                    Failure::halted(e)
                });
            }
        },
    };
    if let Some(path) = out {
        eprintln!("wrote {written} rows to {}", path.display());
    }
    if ledger.is_read_only() {
        eprintln!(
            "note: ledger {} is read-only for you: the export is not recorded, so the secrets these credentials replaced stay in it",
            ledger.path()
        );
    }
    ledger.close().await;
    Ok(ExitCode::Success)
}

pub async fn show(args: ShowArgs) -> Result<ExitCode, Failure> {
    let target = match (&args.client_id, &args.device_sn, &args.ca_sn) {
        (Some(id), _, _) => Target::Device(
            crate::client_id::ClientId::parse(id)
                .map_err(|e| Failure::usage(anyhow!("{id:?} is not a ClientId: {e}")))?,
        ),
        (None, Some(sn), Some(ca)) => {
            Target::Certificate(CertificateId::new(sn, ca).map_err(|e| Failure::usage(anyhow!(e)))?)
        }
        _ => {
            return Err(Failure::usage(anyhow!(
                "give a CLIENT_ID, or --device-sn and --ca-sn"
            )));
        }
    };
    let ledger = Ledger::open_read_only(&args.ledger.ledger)
        .await
        .map_err(Failure::from)?;
    let history = History::load(&ledger, &target)
        .await
        .map_err(Failure::from)?;
    if history.events.is_empty() && history.now.is_none() {
        return Err(Failure::usage(anyhow!(
            "{} has no history in ledger {}",
            history.target,
            ledger.path()
        )));
    }
    if args.json {
        let text =
            serde_json::to_string_pretty(&history).map_err(|e| Failure::halted(anyhow!(e)))?;
        println!("{text}");
    } else {
        print!("{}", history.render());
    }
    ledger.close().await;
    Ok(ExitCode::Success)
}

pub async fn seal(args: SealArgs) -> Result<ExitCode, Failure> {
    let sealer = Sealer::parse(&args.encrypt_to).map_err(|e| Failure::usage(anyhow!(e)))?;
    let mut ledger = Ledger::open_maintenance(&args.ledger.ledger)
        .await
        .map_err(Failure::from)?;
    let sealed = ledger.seal_in_place(sealer).await.map_err(Failure::from)?;
    eprintln!(
        "sealed {sealed} secrets in {}; every secret stored from now on is sealed too",
        ledger.path()
    );
    ledger.close().await;
    Ok(ExitCode::Success)
}

pub async fn purge(args: LedgerArgs) -> Result<ExitCode, Failure> {
    let ledger = Ledger::open_maintenance(&args.ledger)
        .await
        .map_err(Failure::from)?;
    let cleared = ledger.purge().await.map_err(Failure::from)?;
    eprintln!(
        "cleared {cleared} secrets that no device holds now from {}",
        ledger.path()
    );
    ledger.close().await;
    Ok(ExitCode::Success)
}

/// The kind of the I/O failure behind an export's error, looking through the CSV and JSON
/// writers' own errors (which the row writer wraps as `io::Error::other`).
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        if io.kind() != std::io::ErrorKind::Other {
            return Some(io.kind());
        }
        return io.get_ref().and_then(|inner| io_kind(inner));
    }
    if let Some(csv) = e.downcast_ref::<csv::Error>()
        && let csv::ErrorKind::Io(io) = csv.kind()
    {
        return Some(io.kind());
    }
    if let Some(json) = e.downcast_ref::<serde_json::Error>() {
        return json.io_error_kind();
    }
    None
}
