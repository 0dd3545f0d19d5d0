//! The single-call commands: `ca register-code`, `ca verification-cert` and `cert list`. A few
//! calls each, no ledger; throttles and transient errors are retried with the one retry policy
//! ([`crate::retry`]), anything else halts the command (exit 3).

use std::path::PathBuf;

use anyhow::anyhow;

use crate::access::Access;
use crate::api::request;
use crate::cli::{ListArgs, SingleCallArgs, VerificationCertArgs};
use crate::exit::{ExitCode, Failure};
use crate::ledger::Replacement;
use crate::plan;
use crate::report::certificates::CertificateCsv;
use crate::retry;
use crate::run::RunContext;

/// Failures a single call may retry before the command gives up.
const MAX_ATTEMPTS: u32 = 6;

async fn register_code_of(access: &Access, instance_id: &str) -> Result<String, Failure> {
    let call = request::get_register_code(instance_id);
    retry::single("GetRegisterCode", MAX_ATTEMPTS, || {
        access.client().send(&call)
    })
    .await
    .map(|r| r.register_code)
    .map_err(|e| Failure::halted(anyhow!("GetRegisterCode: {e}")))
}

pub async fn register_code(
    args: SingleCallArgs,
    context: &RunContext,
) -> Result<ExitCode, Failure> {
    let plan = plan::single_call(&args)?;
    let access = Access::connect(&plan, context).await?;
    let code = register_code_of(&access, &plan.instance_id).await?;
    println!("{code}");
    access.close().await;
    Ok(ExitCode::Success)
}

pub async fn verification_cert(
    args: VerificationCertArgs,
    context: &RunContext,
) -> Result<ExitCode, Failure> {
    let plan = plan::single_call(&args.call)?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| Failure::usage(anyhow!("{}: {e}", p.display())))
    };
    let (ca_cert, ca_key) = (read(&args.ca_cert)?, read(&args.ca_key)?);
    if let Some(reason) = Replacement::refusal(&args.out) {
        return Err(Failure::usage(anyhow!(
            "--out {} {reason}",
            args.out.display()
        )));
    }
    // Check the CA files before spending a call.
    crate::ca::check_ca(&ca_cert, &ca_key).map_err(|e| Failure::usage(anyhow!("{e}")))?;
    let access = Access::connect(&plan, context).await?;
    let code = register_code_of(&access, &plan.instance_id).await?;
    let pem = crate::ca::verification_certificate(&ca_cert, &ca_key, &code)
        .map_err(|e| Failure::usage(anyhow!("{e}")))?;
    Replacement::write_whole(&args.out, pem.as_bytes())
        .map_err(|e| Failure::halted(anyhow!("writing {}: {e}", args.out.display())))?;
    println!(
        "wrote {} (CN = registration code {code}); upload it with the CA certificate in the console",
        args.out.display()
    );
    access.close().await;
    Ok(ExitCode::Success)
}

pub async fn cert_list(args: ListArgs, context: &RunContext) -> Result<ExitCode, Failure> {
    let plan = plan::single_call(&args.call)?;
    let to_stdout = args.out.as_os_str() == "-";
    if !to_stdout && let Some(reason) = Replacement::refusal(&args.out) {
        return Err(Failure::usage(anyhow!(
            "--out {} {reason}",
            args.out.display()
        )));
    }
    let access = Access::connect(&plan, context).await?;
    // A file appears only once whole, fresh and 0600 (never an existing file, never a link's
    // target).
    let (replacement, out): (_, Box<dyn std::io::Write>) = if to_stdout {
        (None, Box::new(std::io::stdout().lock()))
    } else {
        let replacement = Replacement::create(&args.out)
            .and_then(|r| r.file().try_clone().map(|f| (r, f)))
            .map_err(|e| Failure::halted(anyhow!("{}: {e}", args.out.display())))?;
        (
            Some(replacement.0),
            Box::new(std::io::BufWriter::new(replacement.1)),
        )
    };
    let io = |e: csv::Error| Failure::halted(anyhow!("writing {}: {e}", args.out.display()));
    let mut csv = CertificateCsv::new(out).map_err(io)?;
    let mut page = 1u32;
    loop {
        let call = request::list_device_certificate(&plan.instance_id, page, 100);
        let data = retry::single("ListDeviceCertificate", MAX_ATTEMPTS, || {
            access.client().send(&call)
        })
        .await
        .map_err(|e| Failure::halted(anyhow!("ListDeviceCertificate: {e}")))?
        .data;
        for c in &data.device_certificate_vos {
            csv.write(c).map_err(io)?;
        }
        if data.device_certificate_vos.is_empty() || csv.written() as i64 >= data.total {
            break;
        }
        page += 1;
    }
    let written = csv.written();
    csv.finish().map_err(|e| Failure::halted(anyhow!(e)))?;
    if let Some(replacement) = replacement {
        replacement
            .commit()
            .map_err(|e| Failure::halted(anyhow!("writing {}: {e}", args.out.display())))?;
    }
    if !to_stdout {
        eprintln!("wrote {written} certificates to {}", args.out.display());
    }
    access.close().await;
    Ok(ExitCode::Success)
}
