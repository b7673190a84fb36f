//! A lean HTTP/1.1 client for inference requests (bodies the gateway holds
//! whole), so a streamed response is read straight off the upstream socket.
//!
//! Why not hyper's client here: its response body hands over one HTTP chunk
//! per poll through a channel of depth one, so a burst of SSE events from
//! the engine becomes one task switch and one `writev` to the client per
//! event (the profile in `docs/performance.md`: 54% of the gateway's CPU in
//! `writev`). This body instead decodes everything one `read` returned and
//! passes it on as one frame: bursts cost one write, and an idle stream
//! still forwards each event the moment it arrives.
//!
//! Scope: `http://` and `https://` upstreams (rustls, ALPN `http/1.1`), a
//! request with a known body length, keep-alive
//! with a small idle pool per upstream, responses framed by
//! `Transfer-Encoding: chunked`, `Content-Length`, or the end of the
//! connection (HTTP/1.0). Everything else (other endpoints, request bodies
//! that stream) goes through hyper's client.

use bytes::{Buf, BytesMut};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use std::collections::HashMap;

mod body;

pub use crate::tls::stream::ClientStream as Conn;
use crate::tls::TlsFailure;
#[doc(hidden)]
pub use body::decode_for_fuzzing;
pub use body::RawBody;
use body::{Chunked, Framing};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Largest chunk-size line (with extensions) accepted.
pub(super) const MAX_SIZE_LINE: usize = 4 << 10;
/// Read buffer reserve per read of a response head.
const READ_SIZE: usize = 4 << 10;
/// Largest read of a response body (a buffer on the stack; the body keeps
/// only the bytes that came, see `body.rs`).
pub(super) const MAX_READ: usize = 32 << 10;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("TLS handshake failed ({kind}): {1}", kind = .0.as_str())]
    Tls(TlsFailure, String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the response head")]
    ClosedBeforeHead,
    #[error("connection closed mid-body")]
    ClosedMidBody,
    #[error("bad response: {0}")]
    Parse(String),
}

impl H1Error {
    /// Nothing reached the upstream (the connection never opened).
    pub fn is_connect(&self) -> bool {
        match self {
            H1Error::Connect(_) | H1Error::ConnectTimeout(_) | H1Error::Tls(..) => true,
            // TLS 1.3 ends a client's handshake before the server has
            // checked its certificate: an engine that refuses it says so
            // with an alert on the first read. Its server never saw the
            // request.
            H1Error::Io(_) => self.tls() == Some(TlsFailure::Refused),
            _ => false,
        }
    }

    /// Why TLS failed, when it did.
    pub fn tls(&self) -> Option<TlsFailure> {
        match self {
            H1Error::Tls(t, _) => Some(*t),
            H1Error::Io(e) => TlsFailure::find(e),
            _ => None,
        }
    }
}

/// Idle keep-alive connections per upstream (scheme and authority).
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
    max_idle: usize,
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

/// Where a request goes: the authority, and whether over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub authority: &'a http::uri::Authority,
    pub tls: bool,
}

impl Target<'_> {
    /// The pool's key: plain and TLS connections to one authority differ.
    fn key(&self) -> String {
        if self.tls {
            format!("https://{}", self.authority)
        } else {
            self.authority.to_string()
        }
    }
}

impl Pool {
    pub fn new(
        connect_timeout: Duration,
        max_idle: usize,
        tls: Arc<rustls::ClientConfig>,
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            connect_timeout,
            tls,
        })
    }

    /// An idle connection that is still clean (see [`Conn::is_clean`]).
    fn take(&self, key: &str) -> Option<Conn> {
        loop {
            let mut io = self.idle.lock().ok()?.get_mut(key)?.pop()?;
            if io.is_clean() {
                return Some(io);
            }
        }
    }

    fn put(&self, key: &str, io: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            let v = idle.entry(key.to_string()).or_default();
            if v.len() < self.max_idle {
                v.push(io);
            }
        }
    }

    /// A new connection, its TLS handshake done: both within the connect
    /// timeout. The server name is the URL's host (SNI, and the name its
    /// certificate must carry).
    async fn connect(&self, to: Target<'_>) -> Result<Conn, H1Error> {
        let open = async {
            let io = TcpStream::connect(to.authority.as_str())
                .await
                .map_err(H1Error::Connect)?;
            let _ = io.set_nodelay(true);
            if !to.tls {
                return Ok(Conn::Plain(io));
            }
            let host = to
                .authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| H1Error::Tls(TlsFailure::NameMismatch, format!("{host:?}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
            match tls.connect(name, io).await {
                Ok(s) => Ok(Conn::Tls(Box::new(s))),
                Err(e) => Err(H1Error::Tls(
                    TlsFailure::find(&e).unwrap_or(TlsFailure::Handshake),
                    crate::tls::describe(&e),
                )),
            }
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| H1Error::ConnectTimeout(self.connect_timeout))?
    }
}

/// The request line, headers (hop-by-hop already removed by the caller) and
/// body.
fn encode(
    method: &Method,
    authority: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        if k == http::header::HOST
            || k == http::header::CONTENT_LENGTH
            || k == http::header::TRANSFER_ENCODING
        {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Send one request and read the response head. A reused connection that
/// turns out closed before any response byte is retried once on a new one
/// (the server closed it while idle; nothing was processed).
pub async fn request(
    pool: &Arc<Pool>,
    to: Target<'_>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<RawBody>, H1Error> {
    let wire = encode(method, to.authority.as_str(), path, headers, body);
    let key = to.key();
    let mut reused = pool.take(&key);
    loop {
        let was_reused = reused.is_some();
        let mut io = match reused.take() {
            Some(io) => io,
            None => pool.connect(to).await?,
        };
        match exchange(&mut io, &wire).await {
            Ok((head, buf)) => return finish(pool, &key, io, head, buf),
            Err(H1Error::ClosedBeforeHead | H1Error::Io(_)) if was_reused => continue,
            Err(e) if to.tls && e.tls().is_none() && closed(&e) => {
                // A new TLS connection closed right after its handshake,
                // before any answer: TLS 1.3 ends the client's side of the
                // handshake before the server checks the client's
                // certificate, and a server that refuses it (Python's ssl
                // under vLLM) closes without an alert.
                return Err(H1Error::Tls(
                    TlsFailure::Refused,
                    format!("the engine closed the connection right after the handshake, before answering ({e})"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The connection ended (closed or reset), as opposed to a bad answer.
fn closed(e: &H1Error) -> bool {
    match e {
        H1Error::ClosedBeforeHead => true,
        H1Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

async fn exchange(io: &mut Conn, wire: &[u8]) -> Result<(Head, BytesMut), H1Error> {
    io.write_all(wire).await?;
    io.flush().await?;
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        if let Some((head, n)) = parse_head(&buf)? {
            buf.advance(n);
            if head.status.is_informational() {
                continue; // 100 Continue and friends: the real head follows
            }
            return Ok((head, buf));
        }
        if buf.len() >= MAX_HEAD {
            return Err(H1Error::Parse("response head over 64 KiB".into()));
        }
        buf.reserve(READ_SIZE);
        let n = tokio::io::AsyncReadExt::read_buf(io, &mut buf).await?;
        if n == 0 {
            return Err(H1Error::ClosedBeforeHead);
        }
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, H1Error> {
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Parse(e.to_string())),
    };
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| H1Error::Parse("bad status".into()))?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| H1Error::Parse(e.to_string()))?;
        let value =
            http::HeaderValue::from_bytes(h.value).map_err(|e| H1Error::Parse(e.to_string()))?;
        headers.append(name, value);
    }
    Ok(Some((
        Head {
            status,
            version,
            headers,
        },
        n,
    )))
}

fn has_token(h: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn finish(
    pool: &Arc<Pool>,
    key: &str,
    io: Conn,
    head: Head,
    buf: BytesMut,
) -> Result<Response<RawBody>, H1Error> {
    let h = &head.headers;
    let lengths = h.get_all(http::header::CONTENT_LENGTH);
    let chunked = has_token(h, http::header::TRANSFER_ENCODING, "chunked");
    let framing =
        if head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunked::Size)
        } else if let Some(first) = lengths.iter().next() {
            // RFC 9112 §6.3: differing or invalid lengths are unrecoverable
            let n = first
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|_| lengths.iter().all(|v| v == first))
                .ok_or_else(|| H1Error::Parse("invalid or conflicting content-length".into()))?;
            Framing::Length(n)
        } else {
            Framing::Close
        };
    // both length and chunked: chunked wins, and the connection is not
    // trusted for another request (RFC 9112 §6.1)
    let keep_alive = match head.version {
        Version::HTTP_10 => has_token(h, http::header::CONNECTION, "keep-alive"),
        _ => !has_token(h, http::header::CONNECTION, "close"),
    } && !matches!(framing, Framing::Close)
        && (!chunked || lengths.iter().next().is_none());
    let body = RawBody::new(io, buf, framing, keep_alive, pool, key);
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding_sets_host_and_length() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "r1".parse().unwrap());
        h.insert("content-length", "999".parse().unwrap());
        let w = encode(
            &Method::POST,
            "10.0.0.1:8000",
            "/v1/chat/completions",
            &h,
            b"{}",
        );
        let s = String::from_utf8(w).unwrap();
        assert_eq!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 10.0.0.1:8000\r\nx-request-id: r1\r\ncontent-length: 2\r\n\r\n{}"
        );
    }
}
