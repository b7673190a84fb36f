//! The https listener: HTTP/1.1 and h2 by ALPN, its certificate swapped in
//! place when its files change or on SIGHUP. A new certificate serves the
//! next handshake; open connections and their streams keep theirs, so a
//! renewal (cert-manager rewriting a mounted Secret) drops nothing.

use super::{client, ListenerTlsConfig, TlsFailure};
use crate::error::ConfigError;
use crate::metrics::{ReloadResult, TlsSide};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The certificate in use, and the files it came from.
#[derive(Debug)]
struct Current {
    key: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The files' modification times when last read.
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

impl Current {
    fn stamp(&self) -> Option<(SystemTime, SystemTime)> {
        let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&self.cert_file)?, m(&self.key_file)?))
    }

    fn read(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, ConfigError> {
        let chain = client::certs(cert_file, "tls.cert_file")?;
        let key = client::key(key_file, "tls.key_file")?;
        CertifiedKey::from_der(chain, key, &client::provider())
            .map_err(|e| ConfigError::Invalid(format!("tls: certificate and key: {e}")))
    }
}

/// The listener's TLS: accepts handshakes with the current certificate.
#[derive(Clone)]
pub struct Tls {
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl Tls {
    /// Read the certificate and key (an error stops the gateway before it
    /// listens). `None` when the listener is plain HTTP.
    pub fn new(
        cfg: &ListenerTlsConfig,
        handshake_timeout: Duration,
    ) -> Result<Option<Self>, ConfigError> {
        let (cert_file, key_file) = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => return Ok(None),
            _ => {
                return Err(ConfigError::Invalid(
                    "tls: cert_file and key_file go together".into(),
                ))
            }
        };
        let key = Current::read(&cert_file, &key_file)?;
        let current = Arc::new(Current {
            key: ArcSwap::from_pointee(key),
            cert_file,
            key_file,
            stamp: Mutex::new(None),
        });
        *current.stamp.lock().unwrap_or_else(|p| p.into_inner()) = current.stamp();
        let mut sc = ServerConfig::builder_with_provider(client::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Self {
            current,
            acceptor: TlsAcceptor::from(Arc::new(sc)),
            handshake_timeout,
        }))
    }

    /// The handshake on an accepted connection, bounded in time. A failure
    /// is counted by kind (a client that does not trust the certificate, a
    /// scanner speaking plain HTTP) and closes only that connection.
    pub async fn accept(&self, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                let kind = TlsFailure::find(&e).unwrap_or(TlsFailure::Handshake);
                crate::metrics::tls_error(TlsSide::Listener, kind);
                None
            }
            Err(_) => {
                crate::metrics::tls_error(TlsSide::Listener, TlsFailure::Handshake);
                None
            }
        }
    }

    /// Read the files again. `Ok(true)` when a new certificate is in use;
    /// a bad pair keeps the old one (and says why).
    pub fn reload(&self, force: bool) -> Result<bool, ConfigError> {
        let now = self.current.stamp();
        {
            let last = self.current.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if !force && now.is_some() && *last == now {
                return Ok(false);
            }
        }
        let key = Current::read(&self.current.cert_file, &self.current.key_file)?;
        self.current.key.store(Arc::new(key));
        *self.current.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(true)
    }

    /// Reload on SIGHUP, and when the files change (checked every
    /// `interval`; zero: SIGHUP only).
    pub fn watch(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = (!interval.is_zero()).then(|| tokio::time::interval(interval));
            loop {
                let forced = tokio::select! {
                    Some(()) = async { hup.as_mut()?.recv().await } => true,
                    _ = async { tick.as_mut()?.tick().await; Some(()) }, if tick.is_some() => false,
                    else => return,
                };
                let result = match tls.reload(forced) {
                    Ok(false) => continue,
                    Ok(true) => ReloadResult::Ok,
                    Err(e) => {
                        tracing::error!(error = %e, "tls: certificate not reloaded, the old one serves on");
                        ReloadResult::Error
                    }
                };
                if result == ReloadResult::Ok {
                    tracing::info!("tls: certificate reloaded");
                }
                crate::metrics::tls_reload(result);
            }
        })
    }
}
