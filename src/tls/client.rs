//! The TLS side of reaching `https://` engines: which CAs are trusted and
//! which certificate the gateway shows (mutual TLS), built once at startup
//! so a bad file stops the gateway before it listens.

use super::UpstreamTlsConfig;
use crate::error::ConfigError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The crypto the gateway uses on both sides.
pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates of a PEM file.
pub(super) fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |e: String| ConfigError::Invalid(format!("{what} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub(super) fn key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ConfigError::Invalid(format!("{what} {}: {e}", path.display())))
}

/// The client side: the system's roots (what a `https://` engine with a
/// public certificate needs), the CAs of `ca_file`, and the client
/// certificate when one is set. ALPN offers HTTP/1.1, what the engines
/// serve and both of the gateway's upstream clients speak. The files are
/// read here; the system's trust store only at the first handshake with an
/// `https://` engine (a gateway in front of `http://` engines never reads
/// it: a few hundred files where `SSL_CERT_DIR` points).
pub fn config(cfg: &UpstreamTlsConfig) -> Result<Arc<ClientConfig>, ConfigError> {
    let extra = match &cfg.ca_file {
        Some(path) => certs(path, "upstream_tls.ca_file")?,
        None => Vec::new(),
    };
    let provider = provider();
    let roots = Arc::new(LazyRoots {
        extra,
        provider: Arc::clone(&provider),
        built: OnceLock::new(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(roots);
    let mut c = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key_file)) => builder
            .with_client_auth_cert(
                certs(cert, "upstream_tls.cert_file")?,
                key(key_file, "upstream_tls.key_file")?,
            )
            .map_err(|e| ConfigError::Invalid(format!("upstream_tls client certificate: {e}")))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(ConfigError::Invalid(
                "upstream_tls: cert_file and key_file go together".into(),
            ))
        }
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// rustls's own WebPKI verifier over the system's roots and `ca_file`,
/// built at the first handshake that needs it. Nothing is checked less:
/// every call goes to that verifier, or to rustls's signature checks.
#[derive(Debug)]
struct LazyRoots {
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    built: OnceLock<Option<Arc<WebPkiServerVerifier>>>,
}

impl LazyRoots {
    fn verifier(&self) -> Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.built
            .get_or_init(|| {
                let mut roots = RootCertStore::empty();
                // A machine without a CA bundle (a distroless image) has
                // none: then only `ca_file` is trusted, and a public
                // certificate fails as `unknown_ca`, which names the fix.
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                roots.add_parsable_certificates(self.extra.iter().cloned());
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&self.provider),
                )
                .build()
                .ok()
            })
            .as_ref()
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
