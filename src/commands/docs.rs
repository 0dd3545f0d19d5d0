//! `completions` and `man`: shell completion scripts (clap_complete) and the man page
//! (clap_mangen), both generated from the clap definitions of [`crate::cli`], so they can never
//! drift from `--help`. They write to stdout and read nothing else.

use anyhow::anyhow;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit::{ExitCode, Failure};

pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode, Failure> {
    let mut command = Cli::command();
    clap_complete::generate(
        shell,
        &mut command,
        "mqtt-provision",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::Success)
}

pub fn man() -> Result<ExitCode, Failure> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| Failure::usage(anyhow!("cannot write the man page: {e}")))?;
    Ok(ExitCode::Success)
}
