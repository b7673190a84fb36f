//! The `thinkgate` binary: parses the command line and runs one job.

use clap::Parser;
use std::process::ExitCode;
use thinkgate::cli::{Cli, Command};

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
            Command::Serve(args) => thinkgate::run::serve(*args).await,
            Command::Sim(args) => thinkgate_sim::cli::run(*args).await,
            Command::Load(args) => thinkgate_loadgen::cli::run(*args).await,
            Command::Demo(args) => thinkgate::demo::run(*args).await,
            Command::PreStop(args) => thinkgate::cli::pre_stop(args).await,
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
