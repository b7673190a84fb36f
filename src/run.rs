//! `thinkgate serve`: start the gateway, print where it listens, drain on
//! SIGTERM/SIGINT.

use crate::cli::ServeArgs;
use crate::server::Gateway;
use std::io::Write;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let gw = Gateway::start(cfg).await?;
    // One machine-readable line, so scripts and tests can bind port 0.
    println!(
        "thinkgate listening proxy={} admin={}",
        gw.proxy_addr, gw.admin_addr
    );
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    gw.shutdown();
    gw.wait().await;
    Ok(())
}

/// SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
