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
//! Scope: `http://` upstreams, a request with a known body length, keep-alive
//! with a small idle pool per upstream, responses framed by
//! `Transfer-Encoding: chunked`, `Content-Length`, or the end of the
//! connection (HTTP/1.0). Everything else (other endpoints, request bodies
//! that stream) goes through hyper's client.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Largest chunk-size line (with extensions) accepted.
const MAX_SIZE_LINE: usize = 4 << 10;
/// Read buffer reserve per read: heads and first reads start small (an open
/// stream idles between tokens, and 10,000 of them must fit in little
/// memory); a read that fills the space doubles it, up to `MAX_READ`.
const READ_SIZE: usize = 4 << 10;
const MAX_READ: usize = 64 << 10;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out after {0:?}")]
    ConnectTimeout(Duration),
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
        matches!(self, H1Error::Connect(_) | H1Error::ConnectTimeout(_))
    }
}

/// Idle keep-alive connections per upstream authority.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
    max_idle: usize,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            connect_timeout,
        })
    }

    /// An idle connection that is still clean: one the server closed, or
    /// that holds bytes no request asked for (a server that sent more than
    /// it framed), is dropped, so they can never be read as the next
    /// request's response.
    fn take(&self, authority: &str) -> Option<TcpStream> {
        loop {
            let io = self.idle.lock().ok()?.get_mut(authority)?.pop()?;
            if is_clean(&io) {
                return Some(io);
            }
        }
    }

    fn put(&self, authority: &str, io: TcpStream) {
        if let Ok(mut idle) = self.idle.lock() {
            let v = idle.entry(authority.to_string()).or_default();
            if v.len() < self.max_idle {
                v.push(io);
            }
        }
    }

    async fn connect(&self, authority: &str) -> Result<TcpStream, H1Error> {
        let io = tokio::time::timeout(self.connect_timeout, TcpStream::connect(authority))
            .await
            .map_err(|_| H1Error::ConnectTimeout(self.connect_timeout))?
            .map_err(H1Error::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(io)
    }
}

/// No byte waiting and not closed: a non-blocking peek says "would block".
fn is_clean(io: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(io).peek(&mut probe),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
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
    authority: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<RawBody>, H1Error> {
    let wire = encode(method, authority, path, headers, body);
    let mut reused = pool.take(authority);
    loop {
        let was_reused = reused.is_some();
        let mut io = match reused.take() {
            Some(io) => io,
            None => pool.connect(authority).await?,
        };
        match exchange(&mut io, &wire).await {
            Ok((head, buf)) => return finish(pool, authority, io, head, buf),
            Err(H1Error::ClosedBeforeHead | H1Error::Io(_)) if was_reused => continue,
            Err(e) => return Err(e),
        }
    }
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

async fn exchange(io: &mut TcpStream, wire: &[u8]) -> Result<(Head, BytesMut), H1Error> {
    io.write_all(wire).await?;
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
    authority: &str,
    io: TcpStream,
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
    let body = RawBody {
        io: Some(io),
        buf,
        framing,
        keep_alive,
        pool: Arc::clone(pool),
        authority: authority.to_string(),
        done: false,
        fresh_data: false,
        deferred: None,
        read_size: READ_SIZE,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunked {
    /// Reading a chunk-size line.
    Size,
    /// Chunk data left.
    Data(u64),
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer lines until the empty one.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Chunked(Chunked),
    Length(u64),
    Close,
}

/// A response body read off the connection (see the module docs). Dropping
/// it before the end drops the connection, which the engine sees as the
/// client leaving (vLLM and SGLang abort the request).
pub struct RawBody {
    io: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
    authority: String,
    done: bool,
    /// Data went out since the last `Pending`: an error found now waits one
    /// turn, so the server flushes that data before it cuts the response.
    fresh_data: bool,
    deferred: Option<H1Error>,
    /// Bytes to reserve for the next read (grows on full reads).
    read_size: usize,
}

/// Decoded data gathered for one frame: the first piece as is, more pieces
/// appended.
#[derive(Default)]
struct Out {
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Out {
    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        match (&self.first, &mut self.more) {
            (None, _) => self.first = Some(b),
            (Some(_), Some(m)) => m.extend_from_slice(&b),
            (Some(f), None) => {
                let mut m = BytesMut::with_capacity(f.len() + b.len() + 512);
                m.extend_from_slice(f);
                m.extend_from_slice(&b);
                self.more = Some(m);
            }
        }
    }

    fn take(self) -> Option<Bytes> {
        match (self.first, self.more) {
            (_, Some(m)) => Some(m.freeze()),
            (f, None) => f,
        }
    }
}

impl RawBody {
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self;
        let mut eof = false;
        loop {
            if this.done {
                this.release();
                return Poll::Ready(None);
            }
            match this.decode(eof) {
                Err(e) => {
                    this.done = true;
                    this.io = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(data)) => {
                    if this.done {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.done => continue,
                Ok(None) if eof => {
                    this.done = true;
                    this.io = None;
                    return Poll::Ready(Some(Err(H1Error::ClosedMidBody)));
                }
                Ok(None) => {}
            }
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            this.buf.reserve(this.read_size);
            let room = this.buf.capacity() - this.buf.len();
            match tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    this.io = None;
                    return Poll::Ready(Some(Err(H1Error::Io(e))));
                }
                Poll::Ready(Ok(0)) => eof = true,
                Poll::Ready(Ok(n)) => {
                    if n >= room {
                        this.read_size = (this.read_size * 2).min(MAX_READ);
                    }
                }
            }
        }
    }

    /// Move up to `n` body bytes from the buffer to `out`: the bytes still
    /// owed, or `None` when the buffer is empty (wait for more).
    fn take_data(&mut self, n: u64, eof: bool, out: &mut Out) -> Result<Option<u64>, H1Error> {
        if self.buf.is_empty() {
            return if eof {
                Err(H1Error::ClosedMidBody)
            } else {
                Ok(None)
            };
        }
        let take = (n as usize).min(self.buf.len());
        out.push(self.buf.split_to(take).freeze());
        Ok(Some(n - take as u64))
    }

    /// A body over no connection (decoder tests and fuzzing).
    fn detached(framing: Framing) -> Self {
        Self {
            io: None,
            buf: BytesMut::new(),
            framing,
            keep_alive: false,
            pool: Pool::new(Duration::from_secs(1), 0),
            authority: String::new(),
            done: false,
            fresh_data: false,
            deferred: None,
            read_size: READ_SIZE,
        }
    }

    /// Decode what the buffer holds; sets `done` at the end of the body.
    fn decode(&mut self, eof: bool) -> Result<Option<Bytes>, H1Error> {
        let mut out = Out::default();
        loop {
            match self.framing {
                Framing::Length(0) => {
                    self.done = true;
                    break;
                }
                Framing::Length(n) => match self.take_data(n, eof, &mut out)? {
                    Some(left) => self.framing = Framing::Length(left),
                    None => break,
                },
                Framing::Close => {
                    if !self.buf.is_empty() {
                        out.push(self.buf.split().freeze());
                    }
                    if eof {
                        self.done = true;
                    }
                    break;
                }
                Framing::Chunked(state) => match state {
                    Chunked::Size | Chunked::Trailers => {
                        let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                            if self.buf.len() > MAX_SIZE_LINE {
                                return Err(H1Error::Parse("chunk-size line too long".into()));
                            }
                            if eof {
                                return Err(H1Error::ClosedMidBody);
                            }
                            break;
                        };
                        let line = self.buf.split_to(i + 2);
                        let line = &line[..i];
                        if state == Chunked::Trailers {
                            if line.is_empty() {
                                self.done = true;
                                break;
                            }
                            continue; // trailers are not forwarded
                        }
                        let hex = line.split(|b| *b == b';').next().unwrap_or(b"");
                        let hex = std::str::from_utf8(hex)
                            .map_err(|_| H1Error::Parse("chunk size".into()))?
                            .trim();
                        if hex.is_empty() || hex.len() > 15 {
                            return Err(H1Error::Parse(format!("chunk size {hex:?}")));
                        }
                        let n = u64::from_str_radix(hex, 16)
                            .map_err(|_| H1Error::Parse(format!("chunk size {hex:?}")))?;
                        self.framing = Framing::Chunked(if n == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(n)
                        });
                    }
                    Chunked::Data(n) => match self.take_data(n, eof, &mut out)? {
                        Some(0) => self.framing = Framing::Chunked(Chunked::DataEnd),
                        Some(left) => self.framing = Framing::Chunked(Chunked::Data(left)),
                        None => break,
                    },
                    Chunked::DataEnd => {
                        if self.buf.len() < 2 {
                            if eof {
                                return Err(H1Error::ClosedMidBody);
                            }
                            break;
                        }
                        if &self.buf[..2] != b"\r\n" {
                            return Err(H1Error::Parse("chunk data not followed by CRLF".into()));
                        }
                        self.buf.advance(2);
                        self.framing = Framing::Chunked(Chunked::Size);
                    }
                },
            }
        }
        Ok(out.take())
    }

    /// At the end of the body: a clean keep-alive connection goes back to
    /// the pool.
    fn release(&mut self) {
        if let Some(io) = self.io.take() {
            if self.keep_alive && self.buf.is_empty() {
                self.pool.put(&self.authority, io);
            }
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.deferred.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match this.poll_inner(cx) {
            Poll::Ready(Some(Err(e))) if this.fresh_data => {
                this.fresh_data = false;
                this.deferred = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Ok(f))) => {
                this.fresh_data = true;
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => {
                this.fresh_data = false;
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.deferred.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Decode `wire` as a chunked body delivered in two reads split at `cut`
/// (for the fuzz target): the data passed on, or the error.
#[doc(hidden)]
pub fn decode_for_fuzzing(wire: &[u8], cut: usize) -> Result<Vec<u8>, H1Error> {
    let mut b = RawBody::detached(Framing::Chunked(Chunked::Size));
    let mut out = Vec::new();
    let cut = cut.min(wire.len());
    for (piece, eof) in [(&wire[..cut], false), (&wire[cut..], true)] {
        b.buf.extend_from_slice(piece);
        if b.done {
            break;
        }
        if let Some(d) = b.decode(eof)? {
            out.extend_from_slice(&d);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `wire` in pieces at `cuts`; collect the decoded bytes.
    fn run(framing: Framing, wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), H1Error> {
        let mut b = RawBody::detached(framing);
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
            let c = c.min(wire.len()).max(prev);
            b.buf.extend_from_slice(&wire[prev..c]);
            prev = c;
            if let Some(d) = b.decode(false)? {
                out.extend_from_slice(&d);
            }
        }
        if !b.done {
            if let Some(d) = b.decode(true)? {
                out.extend_from_slice(&d);
            }
        }
        Ok((out, b.done))
    }

    fn chunked(parts: &[&[u8]]) -> Vec<u8> {
        let mut w = Vec::new();
        for p in parts {
            w.extend_from_slice(format!("{:x};ext=1\r\n", p.len()).as_bytes());
            w.extend_from_slice(p);
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
        w
    }

    #[test]
    fn chunked_lengths_and_close_decode() {
        let w = chunked(&[b"data: a\n\n", b"data: [DONE]\n\n"]);
        let (out, done) = run(Framing::Chunked(Chunked::Size), &w, &[]).unwrap();
        assert_eq!(out, b"data: a\n\ndata: [DONE]\n\n");
        assert!(done);
        let (out, done) = run(Framing::Length(5), b"hello", &[2]).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hello"[..], true));
        let (out, done) = run(Framing::Close, b"till the end", &[3]).unwrap();
        assert_eq!((out.as_slice(), done), (&b"till the end"[..], true));
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        let w = chunked(&[b"abc"]);
        assert!(matches!(
            run(Framing::Chunked(Chunked::Size), &w[..w.len() - 9], &[]),
            Err(H1Error::ClosedMidBody)
        ));
        assert!(matches!(
            run(Framing::Chunked(Chunked::Size), b"zz\r\nabc", &[]),
            Err(H1Error::Parse(_))
        ));
        assert!(matches!(
            run(Framing::Chunked(Chunked::Size), b"3\r\nabcXY", &[]),
            Err(H1Error::Parse(_))
        ));
        assert!(matches!(
            run(Framing::Length(10), b"short", &[]),
            Err(H1Error::ClosedMidBody)
        ));
        let long = vec![b'1'; MAX_SIZE_LINE + 10];
        assert!(run(Framing::Chunked(Chunked::Size), &long, &[]).is_err());
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            cuts in proptest::collection::vec(0usize..3000, 0..12),
        ) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let w = chunked(&refs);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (out, done) = run(Framing::Chunked(Chunked::Size), &w, &cuts).unwrap();
            prop_assert_eq!(out, parts.concat());
            prop_assert!(done);
        }
    }

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
