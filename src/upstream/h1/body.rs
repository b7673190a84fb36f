//! The response body of the lean client: everything one `read` returned,
//! decoded (chunked, length or close framing) and passed on as one frame.

use super::{H1Error, Pool, MAX_READ, MAX_SIZE_LINE};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Chunked {
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
pub(super) enum Framing {
    Chunked(Chunked),
    Length(u64),
    Close,
}

/// A response body read off the connection (see the module docs). Dropping
/// it before the end drops the connection, which the engine sees as the
/// client leaving (vLLM and SGLang abort the request).
pub struct RawBody {
    io: Option<super::Conn>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    /// Where a clean connection goes back (none for a detached body).
    pool: Option<Arc<Pool>>,
    authority: String,
    done: bool,
    /// Data went out since the last `Pending`: an error found now waits one
    /// turn, so the server flushes that data before it cuts the response.
    fresh_data: bool,
    deferred: Option<H1Error>,
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
    /// The body of a response whose head was read off `io`; `buf` holds
    /// what was read past the head.
    pub(super) fn new(
        io: super::Conn,
        buf: BytesMut,
        framing: Framing,
        keep_alive: bool,
        pool: &Arc<Pool>,
        authority: &str,
    ) -> Self {
        RawBody {
            io: Some(io),
            // what came with the head, without the head's read buffer
            buf: if buf.is_empty() {
                BytesMut::new()
            } else {
                BytesMut::from(&buf[..])
            },
            framing,
            keep_alive,
            pool: Some(Arc::clone(pool)),
            authority: authority.to_string(),
            done: false,
            fresh_data: false,
            deferred: None,
        }
    }

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
            // Read on the stack and keep only the bytes that came: a stream
            // idles between tokens, and an idle stream holds no read buffer
            // here (10,000 open streams must fit in little memory).
            let mut space = [std::mem::MaybeUninit::<u8>::uninit(); MAX_READ];
            let mut read = tokio::io::ReadBuf::uninit(&mut space);
            match tokio::io::AsyncRead::poll_read(Pin::new(io), cx, &mut read) {
                Poll::Pending => {
                    if this.buf.is_empty() {
                        // drops this body's share of the last read's bytes
                        this.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    this.io = None;
                    return Poll::Ready(Some(Err(H1Error::Io(e))));
                }
                Poll::Ready(Ok(())) => match read.filled() {
                    [] => eof = true,
                    got if this.buf.is_empty() => this.buf = BytesMut::from(got),
                    got => this.buf.extend_from_slice(got),
                },
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
            pool: None,
            authority: String::new(),
            done: false,
            fresh_data: false,
            deferred: None,
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
                if let Some(pool) = &self.pool {
                    pool.put(&self.authority, io);
                }
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
}
