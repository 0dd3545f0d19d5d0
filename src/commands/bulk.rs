//! The bulk commands: validate and ingest the input, confirm if destructive, then run the
//! operation over the ledger's pending targets with progress, and print the summary.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::exit::{ExitCode, Failure};
use crate::ingest;
use crate::ledger::{ItemState, Ledger};
use crate::pipeline;
use crate::plan::BulkPlan;
use crate::progress::{self, Counters};
use crate::report::{self, OperationStatus};
use crate::run::RunContext;

pub async fn run(plan: BulkPlan, context: &RunContext) -> Result<ExitCode, Failure> {
    let operation = plan.operation;
    let fresh =
        ingest::fresh_files(&plan.ledger, operation.name(), &plan.files, &plan.input).await?;

    // Everything that can be refused is checked before the ledger is touched.
    let access = if plan.dry_run {
        None
    } else {
        Some(Access::connect(&plan.access, context).await?)
    };

    let ledger = Arc::new(
        Ledger::open(&plan.ledger, &plan.access.instance_id)
            .await
            .map_err(Failure::from)?,
    );
    let retried = ledger
        .retry_failed(operation.name())
        .await
        .map_err(Failure::from)?;
    let counts = ingest::ingest(&ledger, operation.name(), &fresh, &plan.input).await?;
    let unchanged = plan.files.len() - fresh.len();
    if unchanged > 0 {
        println!("{unchanged} file(s) already ingested unchanged: not read again");
    }
    println!(
        "ingested {} rows from {} file(s): {} new targets, {} already in the ledger or repeated, {} invalid{}",
        counts.rows,
        fresh.len(),
        counts.new_targets,
        counts.duplicates,
        counts.invalid,
        if retried > 0 {
            format!("; {retried} failed targets will be retried")
        } else {
            String::new()
        }
    );
    let before = OperationStatus::load(&ledger, operation.name())
        .await
        .map_err(Failure::from)?;
    let pending = before.count(ItemState::Pending);
    let Some(access) = access else {
        print!(
            "{}",
            report::plan::render(operation, &before, &plan.pace, plan.sources())
        );
        return Ok(if before.count(ItemState::Invalid) > 0 {
            ExitCode::Incomplete
        } else {
            ExitCode::Success
        });
    };
    if let Some(yes) = plan.confirm
        && pending > 0
    {
        let what = format!(
            "{} will call {} for {pending} target(s) on instance {}. This cannot be undone; clients already connected stay connected until they disconnect.",
            operation.name(),
            operation.main_action(),
            plan.access.instance_id
        );
        confirm_destructive(&what, yes, context)?;
    }

    let run_id = ledger
        .begin_run(operation.name(), &context.command_line)
        .await
        .map_err(Failure::from)?;
    let counters = Arc::new(Counters::default());
    counters
        .total
        .store(pending.max(0) as u64, Ordering::Relaxed);
    let progress_done = CancellationToken::new();
    let reporter = tokio::spawn(progress::report(
        plan.progress,
        counters.clone(),
        progress_done.clone(),
    ));
    let outcome = pipeline::run(
        plan.run_plan(),
        ledger.clone(),
        access.clients.clone(),
        counters,
        context.interrupt.clone(),
    )
    .await
    .map_err(Failure::from)?;
    progress_done.cancel();
    let _ = reporter.await;

    let after = OperationStatus::load(&ledger, operation.name())
        .await
        .map_err(Failure::from)?;
    let code = report::exit_code(outcome.halt.as_ref(), &after);
    let summary = report::summary(&ledger, operation, &after, &outcome, &context.command_line);
    print!("{summary}");
    if let Err(e) = ledger.finish_run(run_id, code.code(), &summary).await {
        tracing::warn!("could not record the run's end: {e}");
    }
    access.close().await;
    Ok(code)
}

/// Asks before a destructive run: `--yes`, or a typed "yes" on a terminal; otherwise refuses.
fn confirm_destructive(what: &str, yes: bool, context: &RunContext) -> Result<(), Failure> {
    println!("{what}");
    if yes {
        return Ok(());
    }
    if !context.stdin_is_terminal {
        return Err(Failure::usage(anyhow!(
            "refusing a destructive operation without confirmation: rerun with --yes"
        )));
    }
    print!("Type 'yes' to continue: ");
    std::io::Write::flush(&mut std::io::stdout()).map_err(|e| Failure::usage(anyhow!(e)))?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::usage(anyhow!(e)))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure::usage(anyhow!("not confirmed: nothing was sent")))
    }
}
