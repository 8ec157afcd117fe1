//! What every example binary does the same way: parse its command line (one clear line on a bad
//! argument, never a panic or a Debug form), show warnings without `RUST_LOG`, and end with a
//! one-line error and a non-zero exit code.
//!
//! A directory module (no `main.rs`), so Cargo does not take it for an example of its own.
// Each example uses the part it needs.
#![allow(dead_code)]

use std::fmt::Display;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The exit code of a refused command line or a failed start (clap's own choice for usage
/// errors).
pub(crate) const USAGE: u8 = 2;

/// Parses the command line of example `name`. `--help` and `--version` print and exit 0; any
/// other error prints one line, `NAME: MESSAGE (see NAME --help)`, and exits with [`USAGE`].
pub(crate) fn parse<A: Parser>(name: &str) -> Result<A, ExitCode> {
    A::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid command line");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            eprintln!("{name}: {line} (see {name} --help)");
            ExitCode::from(USAGE)
        }
    })
}

/// Logs to stderr: `RUST_LOG` when set, else warnings and errors, so a switch of the quota
/// backend's failure policy or a lease lost mid-call shows without asking for it.
pub(crate) fn init_tracing() {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The whole `main` of example `name`: parses its arguments ([`parse`]), starts logging
/// ([`init_tracing`]), runs `run` with them and ends as [`exit`] does.
pub(crate) async fn main<A: Parser, F, E>(name: &str, run: impl FnOnce(A) -> F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let args = match parse(name) {
        Ok(args) => args,
        Err(code) => return code,
    };
    init_tracing();
    exit(name, run(args).await)
}

/// Ends example `name`: success, or its error on one line (`NAME: ERROR`, Display, never Debug)
/// and exit code 1.
pub(crate) fn exit(name: &str, result: Result<(), impl Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
