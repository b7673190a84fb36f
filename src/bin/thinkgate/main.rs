//! The `thinkgate` binary: parses the command line and runs one job. The
//! gateway is the `thinkgate` library; the simulated engine, the load
//! generator and the demo come with the `tools` feature (on by default; a
//! gateway-only build turns it off: `--no-default-features`).

mod cli;
#[cfg(feature = "tools")]
mod demo;
mod run;

use crate::cli::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THINKGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // colours only for a person at a terminal, never in log files
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("thinkgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => run::serve(*args).await,
            #[cfg(feature = "tools")]
            Command::Sim(args) => thinkgate_sim::cli::run(*args).await,
            #[cfg(feature = "tools")]
            Command::Load(args) => thinkgate_loadgen::cli::run(*args).await,
            #[cfg(feature = "tools")]
            Command::Demo(args) => demo::run(*args).await,
            Command::PreStop(args) => crate::cli::pre_stop(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("thinkgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
