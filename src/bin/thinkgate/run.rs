//! `thinkgate serve`: start the gateway, print where it listens, drain on
//! SIGTERM/SIGINT.

use crate::cli::ServeArgs;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use thinkgate::server::Gateway;
use thinkgate::state::Shared;

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
    let reloader = tokio::spawn(watch_config(args, Arc::clone(&gw.shared)));
    shutdown_signal().await;
    reloader.abort();
    tracing::info!("shutting down: draining in-flight requests");
    gw.shutdown();
    gw.wait().await;
    Ok(())
}

/// Reload routing on SIGHUP and when the config file changes (polled every
/// second: mtime and size, which also catches Kubernetes ConfigMap swaps).
async fn watch_config(args: ServeArgs, shared: Arc<Shared>) {
    let stamp = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&args.config);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let why = tokio::select! {
            _ = hangup => "SIGHUP",
            _ = tick.tick() => {
                let now = stamp(&args.config);
                if now == last {
                    continue;
                }
                last = now;
                "config file changed"
            }
        };
        let result = args
            .config()
            .map_err(|e| e.to_string())
            .and_then(|c| shared.reload(&c).map_err(|e| e.to_string()));
        thinkgate::metrics::config_reload(result.is_ok());
        match result {
            Ok(()) => tracing::info!(trigger = why, "configuration reloaded"),
            Err(e) => {
                tracing::warn!(trigger = why, error = %e, "reload refused; keeping the running configuration")
            }
        }
    }
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
