//! The upstream toolkit: engines' base URLs, the clients that reach them
//! (the lean HTTP/1.1 client for inference requests, hyper's pooled one for
//! the rest), and sending with retries ([`send`]).

pub mod h1;
pub mod send;
pub mod watched;

use crate::error::ConfigError;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics::SharedString;
use std::sync::Arc;
use std::time::Duration;

/// One upstream engine.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the base URL (usually empty).
    pub prefix: Arc<str>,
    /// Label and record value: the base URL as configured.
    pub name: SharedString,
}

impl Upstream {
    /// The upstream URI for a request's path and query.
    pub fn uri_for(&self, pq: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
        let full = if self.prefix.is_empty() {
            pq.to_string()
        } else {
            format!("{}{}", self.prefix, pq)
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(full)
            .build()
    }
}

/// Parse `http://host:port[/prefix]`. A trailing `/v1` is dropped, as the
/// `openai` client's `base_url` is written (`http://vllm:8000/v1`): clients'
/// paths carry `/v1` themselves, and the engine would otherwise get
/// `/v1/v1/chat/completions`. Any other prefix is kept (an engine served
/// under a path).
pub fn parse_base(url: &str) -> Result<Upstream, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("upstream {url:?}: {why}"));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| bad("needs a scheme (http://)"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(bad("the scheme must be http:// or https://"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| bad("needs a host"))?;
    let path = uri.path().trim_end_matches('/');
    let prefix = path.strip_suffix("/v1").unwrap_or(path);
    let name = url.trim_end_matches('/');
    let name = name.strip_suffix("/v1").unwrap_or(name);
    Ok(Upstream {
        scheme,
        authority,
        prefix: prefix.into(),
        name: SharedString::from(Arc::<str>::from(name)),
    })
}

/// A successful response whose body is an event stream (what the managed
/// path can read on event boundaries).
pub fn is_event_stream<B>(resp: &http::Response<B>) -> bool {
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    resp.status().is_success()
        && thinkgate_asu::BodyKind::from_content_type(ct) == thinkgate_asu::BodyKind::Sse
}

pub type UpstreamBody =
    http_body_util::Either<http_body_util::Full<bytes::Bytes>, hyper::body::Incoming>;
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// The pooled keep-alive client (HTTP/1.1 to engines, as vLLM, SGLang and
/// llama.cpp serve it), over TLS to `https://` engines.
pub fn client(
    connect_timeout: Duration,
    max_idle_per_host: usize,
    tls: &rustls::ClientConfig,
) -> UpstreamClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(connect_timeout));
    conn.set_keepalive(Some(Duration::from_secs(60)));
    conn.enforce_http(false);
    // (the connector sets ALPN itself from the versions it enables)
    let mut tls = tls.clone();
    tls.alpn_protocols.clear();
    let conn = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .build(conn)
}

/// Errors of a response body from either client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from an upstream: read straight off the socket by the
/// lean client (inference requests), or hyper's (everything else).
pub enum UpBody {
    Hyper(hyper::body::Incoming),
    Raw(h1::RawBody),
}

impl http_body::Body for UpBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Hyper(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            UpBody::Raw(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Hyper(b) => b.is_end_stream(),
            UpBody::Raw(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpBody::Hyper(b) => b.size_hint(),
            UpBody::Raw(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_v1_is_dropped_as_the_openai_client_writes_it() {
        for url in [
            "http://vllm:8000/v1",
            "http://vllm:8000/v1/",
            "http://vllm:8000",
        ] {
            let u = parse_base(url).unwrap();
            assert_eq!(&*u.prefix, "", "{url}");
            assert_eq!(&*u.name, "http://vllm:8000", "{url}");
            let pq = PathAndQuery::from_static("/v1/chat/completions");
            assert_eq!(
                u.uri_for(Some(&pq)).unwrap(),
                "http://vllm:8000/v1/chat/completions"
            );
        }
        // another prefix is the engine's path: kept
        let u = parse_base("http://gw:80/engine-a").unwrap();
        assert_eq!(&*u.prefix, "/engine-a");
        assert_eq!(
            parse_base("https://vllm:8000/v1").unwrap().scheme,
            Scheme::HTTPS
        );
        assert!(parse_base("ftp://vllm:8000").is_err());
    }
}
