//! The bulk commands: validate and ingest the input, confirm if destructive, then run the
//! operation over the ledger's pending targets with progress, and print the summary. With
//! `--json`, stdout carries the [`crate::events`] and the human text goes to stderr.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::events::{Event, Events, Pace};
use crate::exit::{ExitCode, Failure};
use crate::ingest;
use crate::ledger::{ItemState, Ledger, LedgerError, LedgerLocation};
use crate::pipeline::{self, Halt};
use crate::plan::BulkPlan;
use crate::progress::{self, Counters};
use crate::report::{self, OperationStatus};
use crate::run::RunContext;

/// How long the counts after a run may take when the ledger's database went away under it.
const UNREACHABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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

    // A dry run changes nothing on disk: with no ledger yet, it plans in a throwaway one, so no
    // ledger is created and bound to an instance that may be mistyped.
    let scratch = if plan.dry_run && !plan.ledger.exists() {
        Some(tempfile::tempdir().map_err(|e| Failure::halted(anyhow!(e)))?)
    } else {
        None
    };
    let location = match &scratch {
        Some(dir) => LedgerLocation::from(dir.path().join("plan.sqlite")),
        None => plan.ledger.clone(),
    };
    let shown_ledger = plan.ledger.display();
    let mut ledger = Ledger::open(&location, &plan.access.instance_id)
        .await
        .map_err(Failure::from)?;
    ledger
        .require_origin(plan.access.simulate)
        .await
        .map_err(Failure::from)?;
    ledger
        .require_recipients(plan.seal_to.clone())
        .await
        .map_err(Failure::from)?;
    let ledger = Arc::new(ledger);
    let retried = ledger
        .retry_failed(operation.name())
        .await
        .map_err(Failure::from)?;
    let counts = ingest::ingest(&ledger, operation.name(), &fresh, &plan.input).await?;
    let events = Events { enabled: plan.json };
    if plan.again && !plan.dry_run {
        let again = ingest::again(&ledger, operation.name(), &plan.files, &plan.input).await?;
        events.say(&format!(
            "--again: {again} target(s) finished in an earlier run will be sent anew\n"
        ));
    }
    let unchanged = plan.files.len() - fresh.len();
    if unchanged > 0 {
        events.say(&format!(
            "{unchanged} file(s) already ingested unchanged: not read again\n"
        ));
    }
    events.say(&format!(
        "ingested {} rows from {} file(s): {} new targets, {} already in the ledger or repeated, {} invalid{}\n",
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
    ));
    let before = OperationStatus::load(&ledger, operation.name())
        .await
        .map_err(Failure::from)?;
    let pending = before.count(ItemState::Pending);
    // What will be sent, file by file: pending targets of files not on this command line are
    // sent too (an earlier run's unfinished work), and the user should know.
    let by_file = ledger
        .pending_by_file(operation.name())
        .await
        .map_err(Failure::from)?;
    let named: Vec<String> = plan.files.iter().map(|f| f.display().to_string()).collect();
    let others: Vec<&(String, i64)> = by_file.iter().filter(|(f, _)| !named.contains(f)).collect();
    if !others.is_empty() {
        let list: Vec<String> = others
            .iter()
            .map(|(f, n)| format!("{n} from {}", crate::terminal::escape(f)))
            .collect();
        events.say(&format!(
            "also pending in this ledger from other files, and sent by this run: {}\n",
            list.join(", ")
        ));
    }
    // After a destructive run is confirmed, so every `start` is followed by a `summary`.
    let start = || {
        events.emit(&Event::Start {
            operation: operation.name(),
            instance_id: ledger.instance_id(),
            ledger: &shown_ledger,
            targets: pending,
            dry_run: plan.dry_run,
            pace: Pace {
                calls_per_second: plan.pace.target_rate(plan.sources()),
                account_qps: plan.pace.account_qps,
                ip_qps: plan.pace.ip_qps,
                headroom: plan.pace.headroom,
                concurrency: plan.concurrency,
                sources: plan.sources(),
            },
        })
    };
    let Some(access) = access else {
        start();
        let endpoint = if plan.access.simulate {
            "the built-in simulator (a rehearsal)".to_owned()
        } else {
            crate::access::cloud_endpoint(&plan.access, context)?.base
        };
        events.say(&report::plan::render(
            operation,
            &before,
            &plan.pace,
            plan.sources(),
            &endpoint,
            &by_file,
        ));
        let code = if before.count(ItemState::Invalid) > 0 {
            ExitCode::Incomplete
        } else {
            ExitCode::Success
        };
        events.emit(&Event::Summary {
            operation: operation.name(),
            instance_id: ledger.instance_id(),
            ledger: &shown_ledger,
            counts: &before.counts,
            errors: &before.errors,
            elapsed_seconds: 0.0,
            calls: 0,
            calls_per_second: 0.0,
            throttled: 0,
            exit_code: code.code(),
            resume: None,
        });
        close(ledger).await;
        return Ok(code);
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
        confirm_destructive(&what, yes, context, events)?;
    }
    start();

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
    let progress_events = events.enabled.then(|| {
        tokio::spawn(progress::every(
            plan.progress_interval,
            counters.clone(),
            progress_done.clone(),
            move |snapshot| events.emit(&Event::Progress(snapshot)),
        ))
    });
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
    if let Some(task) = progress_events {
        let _ = task.await;
    }

    // A database that went away under the run gets a moment to answer, not the pool's wait.
    let load = OperationStatus::load(&ledger, operation.name());
    let loaded = match outcome.halt {
        Some(Halt::LedgerUnreachable(_)) => tokio::time::timeout(UNREACHABLE_WAIT, load)
            .await
            .unwrap_or_else(|_| {
                Err(LedgerError::Unreachable {
                    path: ledger.path().to_owned(),
                    message: format!("no answer within {UNREACHABLE_WAIT:?}"),
                })
            }),
        _ => load.await,
    };
    let after = match loaded {
        Ok(after) => after,
        // The ledger went away under the run (its database unreachable): say why the run
        // halted and how to resume; the counts and the run's end cannot be read or recorded.
        Err(e) if e.is_unreachable() && outcome.halt.is_some() => {
            let halt = outcome.halt.as_ref().expect("checked");
            let code = report::halt_code(halt);
            let resume = context.command_line.as_str();
            events.say(&format!(
                "{} (the ledger's counts could not be read):\n{}",
                operation.name(),
                report::halted(halt, resume)
            ));
            events.emit(&Event::Halt {
                halt: &report::halt_report(halt),
                exit_code: code.code(),
                resume,
            });
            tracing::warn!("the ledger's counts could not be read after the run: {e}");
            access.close().await;
            close(ledger).await;
            return Ok(code);
        }
        Err(e) => return Err(Failure::from(e)),
    };
    let code = report::exit_code(outcome.halt.as_ref(), &after);
    let summary = report::summary(&ledger, operation, &after, &outcome, &context.command_line);
    if pending == 0 && outcome.calls == 0 && outcome.halt.is_none() {
        let done = ledger
            .last_done(operation.name())
            .await
            .map_err(Failure::from)?;
        events.say(&report::nothing_sent(operation, done));
    }
    events.say(&summary);
    let resume = context.command_line.as_str();
    if let Some(halt) = &outcome.halt {
        events.emit(&Event::Halt {
            halt: &report::halt_report(halt),
            exit_code: code.code(),
            resume,
        });
    }
    let secs = outcome.elapsed.as_secs_f64();
    events.emit(&Event::Summary {
        operation: operation.name(),
        instance_id: ledger.instance_id(),
        ledger: ledger.path(),
        counts: &after.counts,
        errors: &after.errors,
        elapsed_seconds: secs,
        calls: outcome.calls,
        calls_per_second: if secs > 0.0 {
            outcome.calls as f64 / secs
        } else {
            0.0
        },
        throttled: outcome.throttled,
        exit_code: code.code(),
        // Rerunning resumes pending targets and retries failed ones.
        resume: (code != ExitCode::Success).then_some(resume),
    });
    if let Err(e) = ledger.finish_run(run_id, code.code(), &summary).await {
        tracing::warn!("could not record the run's end: {e}");
    }
    access.close().await;
    close(ledger).await;
    Ok(code)
}

/// A clean exit checkpoints the ledger: its file alone then holds the whole run (a copy of it
/// is a backup). The pipeline's tasks have ended, so the ledger has no other owner left.
async fn close(ledger: Arc<Ledger>) {
    match Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.close().await,
        Err(_) => tracing::warn!("the ledger is still shared at exit: not checkpointed"),
    }
}

/// Asks before a destructive run: `--yes`, or a typed "yes" on a terminal; otherwise refuses.
fn confirm_destructive(
    what: &str,
    yes: bool,
    context: &RunContext,
    events: Events,
) -> Result<(), Failure> {
    events.say(&format!("{what}\n"));
    if yes {
        return Ok(());
    }
    if !context.stdin_is_terminal {
        return Err(Failure::usage(anyhow!(
            "refusing a destructive operation without confirmation: rerun with --yes"
        )));
    }
    events.say("Type 'yes' to continue: ");
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
