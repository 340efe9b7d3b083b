//! HTTP/1 request framing, checked on the bytes of a connection as they arrive and
//! before Pingora's parser sees them.
//!
//! This module owns the strict reading of a client's byte stream: where each request
//! head starts and ends, whether it is within the limits (head bytes, header count,
//! target length), whether its request-target is origin-form-safe, and how its body is
//! framed (`Content-Length`, chunked with strictly CRLF-terminated chunk lines), so that
//! the next request starts exactly where a strict front proxy would start it. It is a
//! pure state machine, one byte at a time except for body data, which it skips over;
//! `guard` feeds it from the socket. Anything it cannot read unambiguously is refused:
//! weir never forwards a request that a stricter or looser parser would split
//! differently.

pub mod chunk;
pub mod pace;

use chunk::{is_field_byte, is_tchar, Broken, Chunked};

/// Most interim (1xx) responses an instance may send before its final one, on either
/// leg; past it the response is refused (502).
pub const MAX_INTERIM: usize = 8;

/// One Content-Length field value (`5`, or a list `5, 5`) read against the value seen
/// so far: only digits, and every value the same (RFC 9110 §8.6). Rust's integer
/// parsing would take `+5`, which a stricter parser behind or before weir would not.
pub fn content_length(value: &[u8], seen: Option<u64>) -> Result<u64, &'static str> {
    let mut length = seen;
    for item in value.split(|b| *b == b',') {
        let digits = item.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err("invalid Content-Length");
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length");
        }
        length = Some(n);
    }
    length.ok_or("invalid Content-Length")
}

/// Bounds on a request head (per listener, from `limits:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole head: request line, header lines and the empty line.
    pub header_bytes: usize,
    pub headers: usize,
    pub uri_bytes: usize,
    /// How long the body may take (`timeouts.client_body`, `limits.min_body_rate`).
    pub body: pace::BodyPace,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes: 32 << 10,
            headers: 100,
            uri_bytes: 8 << 10,
            body: pace::BodyPace::default(),
        }
    }
}

impl Limits {
    /// A request head that did not come as HTTP/1 bytes (an HTTP/2 stream's, later an
    /// HTTP/3 one's) held to the same limits as one that did: its target's length, its
    /// field count, and its size as HTTP/1 would write it (request line, one
    /// `name: value` line per field, the empty line), so that a listener's limits mean
    /// the same on every protocol.
    pub fn check_head(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        fields: &http::HeaderMap,
    ) -> Result<(), Refusal> {
        let target = uri.path_and_query().map_or(0, |p| p.as_str().len());
        if target > self.uri_bytes {
            return Err(Refusal::UriTooLong);
        }
        if fields.len() > self.headers {
            return Err(Refusal::TooLarge("too many header fields"));
        }
        // "METHOD TARGET HTTP/1.1\r\n" ... "\r\n"
        let lines: usize = fields
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if method.as_str().len() + target + 12 + 2 + lines > self.header_bytes {
            return Err(Refusal::TooLarge("request header too large"));
        }
        Ok(())
    }
}

/// Why a request is refused, and with what status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400, with the reason.
    Bad(&'static str),
    /// 414.
    UriTooLong,
    /// 431, with the reason.
    TooLarge(&'static str),
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Bad(_) => 400,
            Refusal::UriTooLong => 414,
            Refusal::TooLarge(_) => 431,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Bad(why) | Refusal::TooLarge(why) => why,
            Refusal::UriTooLong => "request-target too long",
        }
    }
}

/// Longest method token (the longest registered method is 17 bytes).
const MAX_METHOD: usize = 32;
/// Header names kept to recognise the framing headers; longer names are other headers.
const NAME_KEEP: usize = 20;

/// Where in a request head the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Empty lines before a request line (tolerated, RFC 9112 §2.2).
    Lead,
    Method,
    Target,
    Version,
    /// The start of a header line, or the empty line ending the head.
    LineStart,
    Name,
    Value,
}

/// A framing header being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    ContentLength,
    TransferEncoding,
    Upgrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests: no byte of the next one yet.
    Idle,
    Head(Head),
    Fixed(u64),
    /// A chunked body, read by the one chunk reader.
    Chunked,
    /// An upgrade request is complete; what follows depends on the
    /// response (see `Scanner::response`).
    AwaitResponse,
    /// The connection was switched to another protocol: bytes pass unread.
    Tunnel,
}

/// The scanner for one connection.
#[derive(Debug, Clone)]
pub struct Scanner {
    limits: Limits,
    state: State,
    /// Bytes fed so far.
    pos: u64,
    /// Offset of the first byte of a request head not yet complete.
    head_start: Option<u64>,
    /// A CR was read where a line may end: an LF must follow.
    cr: bool,
    head_bytes: usize,
    headers: usize,
    uri_bytes: usize,
    method: [u8; 8],
    method_len: usize,
    version: [u8; 8],
    version_len: usize,
    name: [u8; NAME_KEEP],
    name_len: usize,
    field: Field,
    /// The Content-Length read so far, and the value being read.
    content_length: Option<u64>,
    cl_value: Option<u64>,
    cl_space: bool,
    /// Transfer-Encoding seen; whether its last coding so far is `chunked`.
    te: bool,
    te_token: [u8; 8],
    te_token_len: usize,
    te_last_chunked: bool,
    te_space: bool,
    upgrade: bool,
    chunk: Chunked,
    /// A complete head asked for a protocol switch (Upgrade).
    switching: bool,
    /// Where the current request's body started.
    body_start: u64,
}

impl Scanner {
    pub fn new(limits: Limits) -> Scanner {
        Scanner {
            limits,
            state: State::Idle,
            pos: 0,
            head_start: None,
            cr: false,
            head_bytes: 0,
            headers: 0,
            uri_bytes: 0,
            method: [0; 8],
            method_len: 0,
            version: [0; 8],
            version_len: 0,
            name: [0; NAME_KEEP],
            name_len: 0,
            field: Field::Other,
            content_length: None,
            cl_value: None,
            cl_space: false,
            te: false,
            te_token: [0; 8],
            te_token_len: 0,
            te_last_chunked: false,
            te_space: false,
            upgrade: false,
            chunk: Chunked::new(0),
            switching: false,
            body_start: 0,
        }
    }

    /// Bytes of the current request's body read so far, while one is being read.
    pub fn body_read(&self) -> Option<u64> {
        matches!(self.state, State::Fixed(_) | State::Chunked).then(|| self.pos - self.body_start)
    }

    /// Offset (in bytes fed) where a request head that is not yet complete starts.
    pub fn head_start(&self) -> Option<u64> {
        self.head_start
    }

    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// An upgrade request is complete and its response not yet seen: the
    /// bytes after it cannot be read until the response says what they are.
    pub fn awaiting_response(&self) -> bool {
        self.state == State::AwaitResponse
    }

    /// Between requests, with no byte of the next one.
    pub fn idle(&self) -> bool {
        self.state == State::Idle
    }

    /// The status of the response to an upgrade request: a switch turns the
    /// connection into a tunnel; anything else leaves it HTTP/1.
    pub fn response(&mut self, status: u16) {
        if self.state != State::AwaitResponse || ((100..200).contains(&status) && status != 101) {
            return;
        }
        self.state = if status == 101 {
            State::Tunnel
        } else {
            State::Idle
        };
    }

    /// Reads `bytes`, the next ones on the connection. An error means the connection
    /// must answer it and close; the scanner must not be fed again.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Fixed(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.pos += take;
                    if take == left {
                        self.body_done();
                    } else {
                        self.state = State::Fixed(left - take);
                    }
                }
                State::Chunked => {
                    let rest = &bytes[i..];
                    let Some(n) = self.chunk.feed(rest).map_err(refusal)? else {
                        self.pos += rest.len() as u64;
                        return Ok(());
                    };
                    i += n;
                    self.pos += n as u64;
                    self.body_done();
                }
                State::Tunnel => {
                    self.pos += (bytes.len() - i) as u64;
                    return Ok(());
                }
                State::AwaitResponse => {
                    // The caller holds reads back until the response; bytes here are
                    // a client that did not wait: refuse rather than guess.
                    return Err(Refusal::Bad("bytes after an upgrade request"));
                }
                _ => {
                    self.byte(bytes[i])?;
                    self.pos += 1;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    fn byte(&mut self, b: u8) -> Result<(), Refusal> {
        match self.state {
            State::Idle => {
                self.start_head();
                self.head_byte(b)
            }
            State::Head(_) => self.head_byte(b),
            State::Fixed(_) | State::Chunked | State::Tunnel | State::AwaitResponse => Ok(()),
        }
    }

    fn start_head(&mut self) {
        self.head_start = Some(self.pos);
        self.state = State::Head(Head::Lead);
        self.cr = false;
        self.head_bytes = 0;
        self.headers = 0;
        self.uri_bytes = 0;
        self.method_len = 0;
        self.version_len = 0;
        self.content_length = None;
        self.te = false;
        self.te_last_chunked = false;
        self.upgrade = false;
        self.switching = false;
    }

    fn head_byte(&mut self, b: u8) -> Result<(), Refusal> {
        let State::Head(at) = self.state else {
            return Ok(());
        };
        self.head_bytes += 1;
        if at == Head::Target && b != b' ' {
            // Checked first: an over-long target is a 414 even when it also makes the
            // head too large.
            self.uri_bytes += 1;
            if self.uri_bytes > self.limits.uri_bytes {
                return Err(Refusal::UriTooLong);
            }
        }
        if self.head_bytes > self.limits.header_bytes {
            return Err(Refusal::TooLarge("request header too large"));
        }
        if self.cr {
            if b != b'\n' {
                return Err(Refusal::Bad("CR not followed by LF"));
            }
            self.cr = false;
            return self.line_end(at);
        }
        match at {
            Head::Lead => match b {
                b'\r' => self.cr = true,
                b'\n' => {}
                _ => {
                    self.state = State::Head(Head::Method);
                    return self.head_byte_again(b);
                }
            },
            Head::Method => match b {
                b' ' if self.method_len > 0 => self.state = State::Head(Head::Target),
                _ if is_tchar(b) && self.method_len < MAX_METHOD => {
                    if self.method_len < self.method.len() {
                        self.method[self.method_len] = b;
                    }
                    self.method_len += 1;
                }
                _ if is_tchar(b) => return Err(Refusal::Bad("method too long")),
                _ => return Err(Refusal::Bad("invalid request line")),
            },
            Head::Target => match b {
                b' ' if self.uri_bytes > 0 => self.state = State::Head(Head::Version),
                b'!'..=b'~' => {}
                _ => return Err(Refusal::Bad("invalid character in the request-target")),
            },
            Head::Version => match b {
                b'\r' => self.cr = true,
                b'\n' => return self.line_end(at),
                _ if self.version_len < self.version.len() => {
                    self.version[self.version_len] = b;
                    self.version_len += 1;
                }
                _ => return Err(Refusal::Bad("invalid HTTP version")),
            },
            Head::LineStart => match b {
                b'\r' => self.cr = true,
                b'\n' => return self.line_end(at),
                _ if is_tchar(b) => {
                    self.name_len = 0;
                    self.push_name(b);
                    self.state = State::Head(Head::Name);
                }
                b' ' | b'\t' => return Err(Refusal::Bad("obsolete line folding")),
                _ => return Err(Refusal::Bad("invalid header name")),
            },
            Head::Name => match b {
                b':' => self.start_value(),
                _ if is_tchar(b) => self.push_name(b),
                _ => return Err(Refusal::Bad("invalid header name")),
            },
            Head::Value => match b {
                b'\r' => self.cr = true,
                b'\n' => return self.line_end(at),
                _ if is_field_byte(b) => self.value_byte(b)?,
                _ => return Err(Refusal::Bad("invalid character in a header value")),
            },
        }
        Ok(())
    }

    /// The first byte of a request line, once the empty lines before it are past.
    fn head_byte_again(&mut self, b: u8) -> Result<(), Refusal> {
        self.head_bytes -= 1;
        self.head_byte(b)
    }

    fn push_name(&mut self, b: u8) {
        if self.name_len < NAME_KEEP {
            self.name[self.name_len] = b.to_ascii_lowercase();
        }
        self.name_len += 1;
    }

    fn start_value(&mut self) {
        let name = &self.name[..self.name_len.min(NAME_KEEP)];
        self.field = match name {
            _ if self.name_len > NAME_KEEP => Field::Other,
            b"content-length" => {
                self.cl_value = None;
                self.cl_space = false;
                Field::ContentLength
            }
            b"transfer-encoding" => {
                self.te = true;
                self.te_token_len = 0;
                self.te_space = false;
                Field::TransferEncoding
            }
            b"upgrade" => Field::Upgrade,
            _ => Field::Other,
        };
        self.state = State::Head(Head::Value);
    }

    fn value_byte(&mut self, b: u8) -> Result<(), Refusal> {
        match self.field {
            Field::Other => {}
            Field::Upgrade => {
                if b != b' ' && b != b'\t' {
                    self.upgrade = true;
                }
            }
            Field::ContentLength => match b {
                b'0'..=b'9' => {
                    if self.cl_space {
                        return Err(Refusal::Bad("invalid Content-Length"));
                    }
                    let digit = u64::from(b - b'0');
                    let v = self
                        .cl_value
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(digit))
                        .ok_or(Refusal::Bad("Content-Length too large"))?;
                    self.cl_value = Some(v);
                }
                b' ' | b'\t' => self.cl_space = self.cl_value.is_some(),
                b',' => self.content_length_value()?,
                _ => return Err(Refusal::Bad("invalid Content-Length")),
            },
            Field::TransferEncoding => match b {
                b',' => {
                    self.te_last_chunked = false;
                    self.te_token_len = 0;
                    self.te_space = false;
                }
                b' ' | b'\t' => self.te_space = self.te_token_len > 0,
                _ if is_tchar(b) && !self.te_space => {
                    if self.te_token_len < self.te_token.len() {
                        self.te_token[self.te_token_len] = b.to_ascii_lowercase();
                    }
                    self.te_token_len += 1;
                    self.te_last_chunked =
                        self.te_token_len == 7 && &self.te_token[..7] == b"chunked";
                }
                // Parameters, or anything else: not a bare `chunked`.
                _ => return Err(Refusal::Bad("unsupported Transfer-Encoding")),
            },
        }
        Ok(())
    }

    /// One value of a Content-Length list: every value must agree (RFC 9110 §8.6).
    fn content_length_value(&mut self) -> Result<(), Refusal> {
        let Some(v) = self.cl_value.take() else {
            return Err(Refusal::Bad("invalid Content-Length"));
        };
        self.cl_space = false;
        match self.content_length {
            Some(old) if old != v => Err(Refusal::Bad("conflicting Content-Length")),
            _ => {
                self.content_length = Some(v);
                Ok(())
            }
        }
    }

    fn line_end(&mut self, at: Head) -> Result<(), Refusal> {
        match at {
            Head::Lead => Ok(()),
            Head::Method | Head::Target => Err(Refusal::Bad("invalid request line")),
            Head::Version => {
                let v = &self.version[..self.version_len];
                if v != b"HTTP/1.1" && v != b"HTTP/1.0" {
                    return Err(Refusal::Bad("invalid HTTP version"));
                }
                self.state = State::Head(Head::LineStart);
                Ok(())
            }
            Head::Name => Err(Refusal::Bad("header line without a colon")),
            Head::Value => {
                if self.field == Field::ContentLength {
                    self.content_length_value()?;
                }
                if self.field == Field::TransferEncoding && self.te_token_len == 0 {
                    self.te_last_chunked = false;
                }
                self.headers += 1;
                if self.headers > self.limits.headers {
                    return Err(Refusal::TooLarge("too many header fields"));
                }
                self.state = State::Head(Head::LineStart);
                Ok(())
            }
            Head::LineStart => self.head_done(),
        }
    }

    fn head_done(&mut self) -> Result<(), Refusal> {
        self.head_start = None;
        // Called on the head's last byte, before `pos` counts it.
        self.body_start = self.pos + 1;
        let http10 = &self.version[..self.version_len] == b"HTTP/1.0";
        // CONNECT is no switch here: weir is no forward proxy and refuses it (405).
        self.switching = self.upgrade && !http10;
        if self.te {
            if http10 {
                return Err(Refusal::Bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if !self.te_last_chunked {
                return Err(Refusal::Bad("unsupported Transfer-Encoding"));
            }
            self.chunk_start();
            return Ok(());
        }
        match self.content_length {
            Some(n) if n > 0 => self.state = State::Fixed(n),
            _ => self.body_done(),
        }
        Ok(())
    }

    fn body_done(&mut self) {
        self.state = if self.switching {
            State::AwaitResponse
        } else {
            State::Idle
        };
    }

    fn chunk_start(&mut self) {
        self.state = State::Chunked;
        // Trailers share the head's budget.
        let left = self.limits.header_bytes.saturating_sub(self.head_bytes);
        self.chunk = Chunked::new(left);
    }
}

/// A broken chunked body's answer: 400, or 431 for trailers over the budget.
fn refusal(broken: Broken) -> Refusal {
    match broken {
        Broken::Bad(why) => Refusal::Bad(why),
        Broken::TooLarge(why) => Refusal::TooLarge(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8]) -> (Scanner, Result<(), Refusal>) {
        let mut s = Scanner::new(Limits::default());
        let r = s.feed(bytes);
        (s, r)
    }

    /// Feeds one byte at a time: the result must not depend on how reads split.
    fn scan_bytewise(bytes: &[u8]) -> (Scanner, Result<(), Refusal>) {
        let mut s = Scanner::new(Limits::default());
        for b in bytes {
            if let Err(e) = s.feed(std::slice::from_ref(b)) {
                return (s, Err(e));
            }
        }
        (s, Ok(()))
    }

    fn ok_idle(bytes: &[u8]) {
        for (s, r) in [scan(bytes), scan_bytewise(bytes)] {
            assert_eq!(r, Ok(()), "{:?}", String::from_utf8_lossy(bytes));
            assert!(
                s.idle(),
                "{:?}: {:?}",
                String::from_utf8_lossy(bytes),
                s.state
            );
            assert_eq!(s.head_start(), None);
        }
    }

    fn refused(bytes: &[u8]) -> u16 {
        let (_, a) = scan(bytes);
        let (_, b) = scan_bytewise(bytes);
        assert_eq!(a, b, "{:?}", String::from_utf8_lossy(bytes));
        a.expect_err("refused").status()
    }

    #[test]
    fn counts_the_body_read_so_far() {
        let mut s = Scanner::new(Limits::default());
        let head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        s.feed(head).unwrap();
        assert_eq!(s.body_read(), Some(3));
        s.feed(b"defg").unwrap();
        assert_eq!(s.body_read(), Some(7));
        s.feed(b"hij").unwrap();
        assert_eq!(s.body_read(), None);
        s.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab")
            .unwrap();
        assert_eq!(s.body_read(), Some(5));
    }

    #[test]
    fn reads_plain_requests_and_their_bodies() {
        ok_idle(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        ok_idle(b"\r\nGET /x?y=1 HTTP/1.0\nHost: a\n\n");
        ok_idle(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n");
        ok_idle(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc");
        ok_idle(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        );
        ok_idle(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n0\r\n\r\n");
    }

    #[test]
    fn a_head_in_progress_is_held_from_its_first_byte() {
        let mut s = Scanner::new(Limits::default());
        s.feed(b"GET / HTTP/1.1\r\n\r\nGET /b HT").unwrap();
        assert_eq!(s.head_start(), Some(18));
        s.feed(b"TP/1.1\r\n\r\n").unwrap();
        assert_eq!(s.head_start(), None);
        assert_eq!(s.position(), 37);
    }

    #[test]
    fn limits_give_431_and_414() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(40 << 10));
        assert_eq!(refused(big.as_bytes()), 431);
        let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            refused(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            431
        );
        let few: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
        ok_idle(format!("GET / HTTP/1.1\r\n{few}\r\n").as_bytes());
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(8 << 10));
        assert_eq!(refused(long.as_bytes()), 414);
        ok_idle(format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat((8 << 10) - 1)).as_bytes());
    }

    #[test]
    fn refuses_targets_that_are_not_one_clean_token() {
        for bad in [
            &b"GET /a b HTTP/1.1\r\n\r\n"[..],
            b"GET  /x HTTP/1.1\r\n\r\n",
            b"GET /a\tb HTTP/1.1\r\n\r\n",
            b"GET /a\x01 HTTP/1.1\r\n\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(refused(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn refuses_malformed_header_lines() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked;x=1\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
        ] {
            assert_eq!(refused(bad), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunk_lines_end_only_in_crlf() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for body in [
            &b"5;a=b\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a=\rb\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"x\r\n",
            b";\r\n",
            b"11111111111111111\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX-T: 1\n\r\n",
        ] {
            let mut req = head.clone();
            req.extend_from_slice(body);
            assert_eq!(refused(&req), 400, "{:?}", String::from_utf8_lossy(body));
        }
        // The smuggling shape: a hidden request after a bare LF is never reached.
        let mut s = Scanner::new(Limits::default());
        s.feed(&head).unwrap();
        assert!(s.feed(b"5;a=b\nhello").is_err());
    }

    #[test]
    fn te_wins_over_content_length() {
        ok_idle(
            b"POST / HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
    }

    #[test]
    fn upgrades_wait_for_the_response() {
        let (mut s, r) =
            scan(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n");
        assert_eq!(r, Ok(()));
        assert!(s.awaiting_response());
        s.response(100);
        assert!(s.awaiting_response());
        s.response(101);
        s.feed(b"\x00\xff anything at all\r\n\n").unwrap();
        assert!(!s.idle());
        let (mut s, _) = scan(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        s.response(404);
        assert!(s.idle());
        assert_eq!(
            refused(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            400
        );
        // HTTP/1.0 has no upgrades.
        ok_idle(b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n");
        // CONNECT is an ordinary request to the scanner (the proxy refuses it).
        ok_idle(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n");
    }

    #[test]
    fn never_panics_on_any_split() {
        let req = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for cut in 0..req.len() {
            let mut s = Scanner::new(Limits::default());
            s.feed(&req[..cut]).unwrap();
            s.feed(&req[cut..]).unwrap();
            assert!(s.idle());
        }
    }
}
