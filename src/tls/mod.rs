//! TLS on both sides of the gateway, with rustls (ring's primitives, no
//! OpenSSL): `https://` engines ([`client`]) and an https listener
//! ([`listener`]), and the one place that names why a handshake failed.

pub mod client;
pub mod listener;
pub mod stream;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[upstream_tls]`: how the gateway checks `https://` engines and proves
/// itself to them. Health probes and metric scrapes use the same settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of CA certificates trusted for engines, besides the
    /// system's roots (a private CA that signed the engines' certificates).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for engines that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// `[tls]`: the proxy listener over TLS (HTTP/1.1 and h2 by ALPN).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Serve the admin listener over TLS too, with the same certificate.
    pub admin: bool,
    /// How often the two files are checked for a new certificate, s (0:
    /// only on SIGHUP). A new certificate serves new handshakes; open
    /// connections keep theirs.
    pub reload_interval_secs: u64,
}

impl Default for ListenerTlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            admin: false,
            reload_interval_secs: 10,
        }
    }
}

impl ListenerTlsConfig {
    /// The listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// Why a TLS handshake failed: the label (`kind` of
/// `thinkgate_tls_errors_total`) and, here, the words of the 502's message.
pub use crate::metrics::TlsFailure;

impl TlsFailure {
    /// What a user reads in the error body.
    pub fn explain(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => {
                "its certificate is not signed by a CA the gateway trusts (add the CA with --upstream-ca)"
            }
            TlsFailure::NameMismatch => "its certificate does not name the host in its URL",
            TlsFailure::Expired => "its certificate has expired or is not valid yet",
            TlsFailure::BadCertificate => "its certificate was not accepted",
            TlsFailure::Refused => {
                "it refused the handshake (it may require a client certificate: --upstream-cert, --upstream-key)"
            }
            TlsFailure::Handshake => "it does not speak TLS there, or shares no version or cipher",
        }
    }

    /// The failure a rustls error reports.
    pub fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => TlsFailure::UnknownCa,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => TlsFailure::Expired,
                _ => TlsFailure::BadCertificate,
            },
            rustls::Error::AlertReceived(_) => TlsFailure::Refused,
            rustls::Error::NoCertificatesPresented => TlsFailure::BadCertificate,
            _ => TlsFailure::Handshake,
        }
    }

    /// The failure somewhere in `e`'s chain of sources, if TLS failed.
    /// (An `io::Error` hides the error it wraps from `source()`: it is
    /// looked into.)
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<rustls::Error>() {
                return Some(TlsFailure::of(t));
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(inner) = io.get_ref() {
                    if let Some(t) = TlsFailure::find(inner) {
                        return Some(t);
                    }
                }
            }
            cur = e.source();
        }
        None
    }
}

/// An error and its sources, in one line.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_error_inside_an_io_error_is_found() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(TlsFailure::find(&e), Some(TlsFailure::UnknownCa));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(TlsFailure::find(&plain), None);
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert_eq!(TlsFailure::of(&alert), TlsFailure::Refused);
    }
}
