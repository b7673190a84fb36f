//! Which HTTP version a client connection speaks, decided before hyper reads
//! a byte of it.
//!
//! Why not hyper-util's auto-detection: it reads the first 24 bytes (the
//! length of the HTTP/2 preface) into a buffer of its own and replays them
//! to hyper as one short read. hyper's first read of an HTTP/1.1 head then
//! stops at 24 bytes, the next one reserves 8 KiB more, and the read buffer
//! doubles to 16 KiB, which the connection then holds for its whole life
//! (half of an open stream's memory). Peeking decides without consuming, so
//! hyper reads the head in one read into its 8 KiB buffer.

use crate::tls::stream::{ServerStream, Stream};
use std::time::Duration;

/// What a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaks {
    Http1,
    Http2,
    /// TLS without ALPN: left to hyper-util's detection.
    Unknown,
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait for the rest of a preface that came in part. Only a
/// client that sends its first bytes one segment at a time waits (an
/// HTTP/1.1 head differs from the preface by its second byte at the
/// latest); the listener's header timeout bounds the wait.
const PART_WAIT: Duration = Duration::from_millis(5);

impl Speaks {
    /// TLS says it by ALPN; plain TCP by a peek at the first bytes, which
    /// stay in the socket for hyper to read. A connection closed or failing
    /// before its first byte is handed to HTTP/1.1, which reports it.
    pub(crate) async fn of(io: &ServerStream) -> Speaks {
        let tcp = match io {
            Stream::Tls(s) => {
                return match s.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Speaks::Http2,
                    Some(_) => Speaks::Http1,
                    None => Speaks::Unknown,
                }
            }
            Stream::Plain(tcp) => tcp,
        };
        let mut buf = [0u8; PREFACE.len()];
        loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(n) => n,
                Err(_) => return Speaks::Http1,
            };
            if n == 0 || buf[..n] != PREFACE[..n] {
                return Speaks::Http1;
            }
            if n == PREFACE.len() {
                return Speaks::Http2;
            }
            // a peek returns at once while any byte waits: pause instead
            // of spinning until the rest of the preface comes
            tokio::time::sleep(PART_WAIT).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn speaks_after(parts: &[&[u8]]) -> Speaks {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        c.set_nodelay(true).unwrap();
        let (s, _) = l.accept().await.unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for p in parts {
                c.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        });
        let io = Stream::Plain(s);
        let got = Speaks::of(&io).await;
        let _c = writer.await.unwrap();
        // nothing was consumed: every byte is still there for hyper
        if let Stream::Plain(s) = &io {
            let mut b = [0u8; 64];
            let n = s.peek(&mut b).await.unwrap();
            assert!(n > 0);
        }
        got
    }

    #[tokio::test]
    async fn a_head_is_http1_and_the_preface_http2_even_in_pieces() {
        assert_eq!(
            speaks_after(&[b"POST /v1/chat/completions HTTP/1.1\r\n"]).await,
            Speaks::Http1
        );
        assert_eq!(speaks_after(&[PREFACE]).await, Speaks::Http2);
        assert_eq!(
            speaks_after(&[b"PR", b"I * HTTP/2", b".0\r\n\r\nSM\r\n\r\n"]).await,
            Speaks::Http2
        );
        // "PRI" as an HTTP/1.1 method parts from the preface at its space
        assert_eq!(
            speaks_after(&[b"P", b"RI /x HTTP/1.1\r\n"]).await,
            Speaks::Http1
        );
    }
}
