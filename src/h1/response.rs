//! What an instance answered: its response head read (bounded) and how its body is
//! framed, the head rewritten for the client (HTTP/1 bytes, or a Pingora response
//! head for HTTP/2), and the body's progress as it is relayed.

use http::HeaderValue;
use pingora::http::ResponseHeader;

use crate::framing::chunk::{Broken, Chunked};

/// Most response header lines read; a response with more is answered 502.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest response head.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
/// Most trailer bytes after a chunked response body.
const MAX_TRAILERS: usize = 16 << 10;

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes: the client connection closes after it too.
    Close,
}

/// A response head, read and rewritten for the client.
pub(super) struct Head {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The instance keeps the connection open after this response.
    pub reusable: bool,
}

/// The response body's progress.
pub(super) struct Body {
    pub framing: Framing,
    left: u64,
    chunked: Chunked,
    pub done: bool,
}

impl Body {
    pub(super) fn new(framing: Framing) -> Body {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Body {
            framing,
            left,
            chunked: Chunked::new(MAX_TRAILERS),
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// How many bytes of `chunk` belong to the body.
    pub(super) fn take(&mut self, chunk: &[u8]) -> Result<usize, Broken> {
        if self.done {
            return Ok(0);
        }
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::Length(_) => {
                let take = self.left.min(chunk.len() as u64);
                self.left -= take;
                self.done = self.left == 0;
                Ok(take as usize)
            }
            Framing::Chunked => match self.chunked.feed(chunk)? {
                Some(n) => {
                    self.done = true;
                    Ok(n)
                }
                None => Ok(chunk.len()),
            },
            Framing::Close => Ok(chunk.len()),
        }
    }
}

impl Body {
    /// `take`, with the body's data (chunked framing removed) appended to `data`.
    pub(super) fn take_data(&mut self, chunk: &[u8], data: &mut Vec<u8>) -> Result<usize, Broken> {
        if self.framing != Framing::Chunked || self.done {
            let n = self.take(chunk)?;
            data.extend_from_slice(&chunk[..n]);
            return Ok(n);
        }
        match self
            .chunked
            .feed_data(chunk, |d| data.extend_from_slice(d))?
        {
            Some(n) => {
                self.done = true;
                Ok(n)
            }
            None => Ok(chunk.len()),
        }
    }
}

/// The response head for a client of Pingora's HTTP/2 server: the instance's status
/// and header lines less the connection-specific ones, plus HSTS when the gateway sets it.
pub(super) fn session_head(
    head: &[u8],
    hsts: Option<&HeaderValue>,
) -> pingora::Result<Box<ResponseHeader>> {
    // Every value a slice of one copy of the head (the session clones the header once
    // more to send it), and no header-case map (HTTP/2 names are lower case).
    let shared = bytes::Bytes::copy_from_slice(head);
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    // Parsed once already: this cannot fail.
    let _ = resp.parse(&shared);
    let size = Some(resp.headers.len() + 1);
    let mut out = ResponseHeader::build_no_case(resp.code.unwrap_or(502), size)?;
    let invalid = |what| pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, what);
    for h in resp.headers.iter() {
        // The instance's hop-by-hop lines, and HTTP/1's framing, which HTTP/2 has not.
        let dropped = crate::forward::RESPONSE_HOP_BY_HOP
            .iter()
            .chain(&["transfer-encoding", "upgrade", "te", "trailer"])
            .any(|n| h.name.eq_ignore_ascii_case(n))
            || (hsts.is_some() && h.name.eq_ignore_ascii_case("strict-transport-security"));
        if dropped {
            continue;
        }
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| invalid("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(shared.slice_ref(h.value))
            .map_err(|_| invalid("bad header value"))?;
        out.append_header(name, value)?;
    }
    if let Some(v) = hsts {
        out.insert_header(http::header::STRICT_TRANSPORT_SECURITY, v.clone())?;
    }
    Ok(Box::new(out))
}

pub(super) enum Parsed {
    Partial,
    /// An interim (1xx) response of this many bytes.
    Interim(usize),
    Final(Head),
}

/// Reads a response head at the front of `buf`.
pub(super) fn parse_head(buf: &[u8], head_request: bool) -> Result<Parsed, &'static str> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_RESPONSE_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {
            return Ok(Parsed::Partial)
        }
        Ok(_) => return Err("response head too large"),
        Err(_) => return Err("invalid response head"),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err("upstream switched protocols unasked");
    }
    if (100..200).contains(&status) {
        return Ok(Parsed::Interim(len));
    }
    let mut close = resp.version != Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(crate::framing::content_length(h.value, length)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if chunked.is_some() && length.is_some() {
        return Err("response framed by both Content-Length and chunked");
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    Ok(Parsed::Final(Head {
        len,
        status,
        framing,
        reusable: !close && framing != Framing::Close,
    }))
}

/// The response head for the client: the instance's, with weir's Date and Connection,
/// less its hop-by-hop lines, plus HSTS over TLS when the gateway sets it.
pub(super) fn client_head(
    head: &[u8],
    keep_alive: bool,
    hsts: Option<&HeaderValue>,
    out: &mut Vec<u8>,
) {
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    // Parsed once already: this cannot fail.
    let _ = resp.parse(head);
    let status = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    let reason = resp.reason.filter(|r| !r.is_empty()).or_else(|| {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
    });
    out.extend_from_slice(reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let dropped = crate::forward::RESPONSE_HOP_BY_HOP
            .iter()
            .chain(&["date"])
            .any(|n| name.eq_ignore_ascii_case(n))
            || (hsts.is_some() && name.eq_ignore_ascii_case("strict-transport-security"));
        if !dropped {
            super::line(out, name.as_bytes(), h.value);
        }
    }
    let date = pingora::protocols::http::date::get_cached_date();
    super::line(out, b"date", date.as_bytes());
    let connection: &[u8] = if keep_alive { b"keep-alive" } else { b"close" };
    super::line(out, b"connection", connection);
    if let Some(v) = hsts {
        super::line(out, b"strict-transport-security", v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A status code's three digits.
fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, head_request: bool) -> Head {
        match parse_head(text.as_bytes(), head_request) {
            Ok(Parsed::Final(h)) => h,
            _ => panic!("not a final head: {text}"),
        }
    }

    #[test]
    fn framing_follows_the_response() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(
            (h.framing, h.reusable, h.len),
            (Framing::Length(5), true, 38)
        );
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!h.reusable);
        let h = head("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.reusable), (Framing::Close, false));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let h = head(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn refuses_what_it_cannot_relay() {
        for text in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTX 200\r\n\r\n",
        ] {
            assert!(parse_head(text.as_bytes(), false).is_err(), "{text}");
        }
        let interim = parse_head(
            b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1",
            false,
        );
        assert!(matches!(interim, Ok(Parsed::Interim(37))));
    }

    #[test]
    fn the_client_head_has_weirs_date_and_connection() {
        let mut out = Vec::new();
        let upstream =
            b"HTTP/1.1 200 OK\r\nDate: old\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\
                         Strict-Transport-Security: max-age=1\r\nX-A: b\r\n\r\n";
        let hsts = HeaderValue::from_static("max-age=9");
        client_head(upstream, false, Some(&hsts), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nX-A: b\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with("connection: close\r\nstrict-transport-security: max-age=9\r\n\r\n"));
        assert!(!text.contains("old") && !text.contains("Keep-Alive") && !text.contains("=1"));
    }

    #[test]
    fn the_stream_head_drops_connection_headers_and_keeps_values() {
        let text = "HTTP/1.1 201 Created\r\nX-Empty:\r\nConnection: close\r\n\
                    Transfer-Encoding: chunked\r\nStrict-Transport-Security: max-age=1\r\n\
                    X-A: b c\r\n\r\n";
        let hsts = HeaderValue::from_static("max-age=60");
        let out = session_head(text.as_bytes(), Some(&hsts)).unwrap();
        assert_eq!(out.status, 201);
        assert_eq!(out.headers.get("x-empty").unwrap(), "");
        assert_eq!(out.headers.get("x-a").unwrap(), "b c");
        assert_eq!(
            out.headers.get("strict-transport-security").unwrap(),
            "max-age=60"
        );
        assert!(out.headers.get("connection").is_none());
        assert!(out.headers.get("transfer-encoding").is_none());
        assert_eq!(out.headers.len(), 3);
    }

    #[test]
    fn bodies_end_where_their_framing_says() {
        let mut b = Body::new(Framing::Length(3));
        assert_eq!(b.take(b"ab").unwrap(), 2);
        assert_eq!(b.take(b"cde").unwrap(), 1);
        assert!(b.done);
        let mut b = Body::new(Framing::Chunked);
        assert_eq!(b.take(b"1\r\na\r\n0\r\n\r\nX").unwrap(), 11);
        assert!(b.done);
        assert!(Body::new(Framing::Empty).done);
    }
}
