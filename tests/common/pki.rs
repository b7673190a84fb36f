//! Certificates made in the tests (rcgen): a CA of a test's own, the leaves
//! it signs, and clients and servers that use them.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

pub type TlsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A CA of the test's own, and what it signs.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(&self.key).unwrap()
    }
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("tg-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { ca, dir }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A leaf for `names` (host names or IP addresses), valid `days` from
    /// `from_days` days from now, written as `file`.pem / `file`.key.
    pub fn leaf(&self, file: &str, names: &[&str], from_days: i64, days: i64) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, file);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(from_days);
        p.not_after = now + time::Duration::days(from_days + days);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    /// A client configuration trusting this CA only, with ALPN `alpn`,
    /// showing `cert` when one is given.
    pub fn client(&self, alpn: &[&[u8]], cert: Option<&Leaf>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut c = match cert {
            Some(l) => b.with_client_auth_cert(l.chain(), l.private_key()).unwrap(),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        c
    }

    /// The certificate the server at `addr` shows now, for `localhost`
    /// (its DER: another serial and name are other bytes).
    pub async fn peer_cert(&self, addr: std::net::SocketAddr) -> Vec<u8> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = tokio_rustls::TlsConnector::from(Arc::new(self.client(&[b"http/1.1"], None)));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = conn.connect(name, tcp).await.unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// An HTTP/1.1 (or h2) client over TLS that trusts this CA, showing
    /// `cert` when one is given.
    pub fn https_client(&self, h2: bool, cert: Option<&Leaf>) -> TlsClient {
        // (the connector sets ALPN from the version enabled)
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.client(&[], cert))
            .https_only();
        let conn = if h2 {
            b.enable_http2().build()
        } else {
            b.enable_http1().build()
        };
        let mut cb = Client::builder(TokioExecutor::new());
        cb.http2_only(h2);
        cb.build(conn)
    }
}

/// A server configuration showing `leaf`, requiring a client certificate
/// signed by `client_ca` when one is given.
pub fn server_config(leaf: &Leaf, client_ca: Option<&Pki>) -> rustls::ServerConfig {
    let (chain, key) = (leaf.chain(), leaf.private_key());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(pki) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca.der().clone()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    b.with_single_cert(chain, key).unwrap()
}
