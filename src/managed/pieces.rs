//! Bytes of an event stream cut after each event, so a leg can act at the
//! event that reaches a budget (what follows it waits: see `Leg::unread`).

use bytes::Bytes;

/// `data` cut after each blank line that ends an SSE event (`\n\n` or
/// `\n\r\n`); the last piece is the rest. Other line endings only make the
/// pieces coarser, never wrong: the observer frames the bytes either way.
pub(super) fn events(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = &data[start..];
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\n', &rest[from..]).map(|i| i + from) {
            let end = if rest.get(i + 1) == Some(&b'\n') {
                Some(i + 2)
            } else if rest.get(i + 1..i + 3) == Some(b"\r\n") {
                Some(i + 3)
            } else {
                None
            };
            if let Some(e) = end {
                let piece = data.slice(start..start + e);
                start += e;
                return Some(piece);
            }
            from = i + 1;
        }
        done = true;
        (start < data.len()).then(|| data.slice(start..))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_after_each_event() {
        let d = Bytes::from_static(b"data: a\n\ndata: b\r\n\r\n: ping\n\ndata: par");
        let p: Vec<Bytes> = events(&d).collect();
        assert_eq!(
            p,
            [
                &b"data: a\n\n"[..],
                b"data: b\r\n\r\n",
                b": ping\n\n",
                b"data: par"
            ]
        );
        assert_eq!(p.concat(), d.to_vec());
        assert_eq!(events(&Bytes::new()).count(), 0);
    }
}
