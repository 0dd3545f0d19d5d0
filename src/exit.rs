//! The exit codes, named once: their numbers, their meanings (which `--help` and the README's
//! table print), and [`Failure`], the error a command returns with the code it maps to.
//!
//! Every error type that reaches the command edge answers its own exit code in one `match`
//! (`exit_code()` on the type, as nextest's `process_exit_code`); nothing else spells a number.

use std::fmt;

use crate::ledger::LedgerError;

/// What a run of the tool tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExitCode {
    /// Every valid target reached its goal, or the command succeeded.
    Success,
    /// Finished, but some rows are invalid or failed, or some targets are still pending.
    Incomplete,
    /// Usage, configuration or input error: nothing was sent.
    Usage,
    /// Halted: quota full, credentials or permissions refused, every source address blocked,
    /// or the ledger could not be written. Fix the cause, then rerun the same command.
    Halted,
    /// Interrupted by Ctrl-C or SIGTERM: rerun the same command to resume.
    Interrupted,
}

impl ExitCode {
    pub const ALL: [ExitCode; 5] = [
        ExitCode::Success,
        ExitCode::Incomplete,
        ExitCode::Usage,
        ExitCode::Halted,
        ExitCode::Interrupted,
    ];

    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Incomplete => 1,
            ExitCode::Usage => 2,
            ExitCode::Halted => 3,
            // 128 + SIGINT, the shell's convention for a process ended by Ctrl-C.
            ExitCode::Interrupted => 130,
        }
    }

    /// One line of meaning, as `--help` and the README show it.
    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Success => "every valid target reached its goal (or the command succeeded)",
            ExitCode::Incomplete => {
                "finished, but some rows are invalid or failed, or targets are still pending (see `status`, `export --failures`)"
            }
            ExitCode::Usage => "usage, configuration or input error: nothing was sent",
            ExitCode::Halted => {
                "halted: credential quota full, credentials/permission/instance refused, every source address blocked, the service unreachable past `--outage-patience`, the ledger's database unreachable past `--ledger-patience`, or the ledger could not be written; rerun the same command after fixing it"
            }
            ExitCode::Interrupted => {
                "interrupted (Ctrl-C, SIGTERM): rerun the same command to resume"
            }
        }
    }
}

impl From<ExitCode> for i32 {
    fn from(code: ExitCode) -> i32 {
        code.code()
    }
}

/// The `Exit codes:` section of `--help`, built from the table above.
pub fn help() -> String {
    let mut out = String::from("Exit codes:");
    for code in ExitCode::ALL {
        out.push_str(&format!("\n  {:<4} {}", code.code(), code.meaning()));
    }
    out
}

/// A failed command: what to print and which exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub error: anyhow::Error,
}

impl Failure {
    /// A usage, configuration or input error (nothing was sent).
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: ExitCode::Usage,
            error: error.into(),
        }
    }

    /// The command had to stop after it began its work.
    pub fn halted(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: ExitCode::Halted,
            error: error.into(),
        }
    }
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Failure {
        Failure {
            code: e.exit_code(),
            error: e.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_code_once_with_its_meaning() {
        let help = help();
        for code in ExitCode::ALL {
            let line = format!("{:<4} {}", code.code(), code.meaning());
            assert_eq!(help.matches(&line).count(), 1, "{help}");
        }
        let numbers: Vec<i32> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 130]);
    }

    #[test]
    fn the_readme_table_matches_the_codes() {
        let readme = include_str!("../README.md");
        for code in ExitCode::ALL {
            let row = format!("| {} | {} |", code.code(), code.meaning());
            assert!(readme.contains(&row), "README lacks the row `{row}`");
        }
    }
}
