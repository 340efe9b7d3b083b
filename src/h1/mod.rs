//! weir's own HTTP/1 proxying for the common request: HTTP/1.1 from the client, a
//! route of plain-HTTP/1 instances, nothing to do beyond routing, balancing, the
//! forwarding headers and HSTS. Such a request is read from the guard's buffer,
//! routed with the same snapshot calls as the Pingora path, written to an idle
//! upstream connection of its instance (`pool`), and its response relayed back as
//! it comes, all inside the client connection's task: no per-request task, channel,
//! boxed future or header map copy, which is most of what a request costs in Pingora's
//! proxy.
//!
//! Everything else goes to Pingora's proxy (`proxy`), unchanged: requests that need a
//! feature this path does not do (header rules, rewrites, auth, rate limits, mirrors,
//! compression, sticky cookies, status or timeout retries, tracing, access logs),
//! HTTP/1.0, upgrades, `Expect`, chunked request bodies, weir's own answers (routing
//! refusals, redirects, ACME challenges), and a first connect to an instance that
//! fails (Pingora then tries it again, marks it down, retries and answers as usual).
//! That decision is taken before a byte of the request is consumed, so handing over
//! is free. `WEIR_H1_DIRECT=0` turns this path off.
//!
//! HTTP/2 streams without a body on such a gateway are taken, routed and served here
//! too (`stream`), inside their connection's task (`http2`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::guard::Guarded;
use crate::request::Request;
use crate::snapshot::{Entry, Route, Selected, Snapshot, StickyWrites, Target};
use crate::upstream::{Tried, Upstream};

mod relay;
mod response;
pub mod stream;

/// Most request header lines this path reads; a request with more goes to Pingora.
const MAX_HEADERS: usize = 64;

/// Whether this path is on (`WEIR_H1_DIRECT=0` turns it off).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("WEIR_H1_DIRECT").map_or(true, |v| v != "0"))
}

/// What a client connection is, read once when it opens.
pub struct Conn {
    pub local_port: u16,
    /// The listener's request limits, taken when the connection opened (as the guard
    /// takes them for HTTP/1): HTTP/2 streams are held to them without a lookup.
    pub limits: crate::framing::Limits,
    pub tls: bool,
    pub client: Option<IpAddr>,
    /// A verified client certificate: its requests go to Pingora (headers, conditions).
    pub client_cert: bool,
    /// Record per-request metrics.
    pub metrics: bool,
    /// Write access log lines, with the connection's TLS version and SNI name.
    pub log: Option<std::sync::Arc<crate::accesslog::AccessLog>>,
    pub tls_version: Option<Box<str>>,
    pub sni: Option<Box<str>>,
}

/// What an access log line says of a request, copied from its head (only with a log).
struct Logged {
    method: String,
    host: String,
    path: String,
    request_id: String,
}

/// How a request went.
pub enum Outcome {
    /// Served; the connection may carry another request.
    Next,
    /// Served or failed; close the connection.
    Close,
    /// Not taken: nothing of it was read; Pingora's proxy serves it.
    Pingora,
}

/// A request this path takes: where it goes and what its head said.
struct Plan<'s> {
    head_len: usize,
    /// The request head as it goes upstream.
    out: Vec<u8>,
    /// Content-Length of the request body (0: none).
    body: u64,
    head_method: bool,
    idempotent: bool,
    /// The client asked to close after this response.
    close: bool,
    selected: Selected,
    route: &'s Route,
    upstream: &'s Upstream,
    log: Option<Box<Logged>>,
}

/// Serves the request whose head is at the front of `guarded`'s buffer, or leaves it
/// untouched for Pingora.
pub async fn serve(snapshot: &Snapshot, guarded: &mut Guarded, conn: &Conn) -> Outcome {
    let started = (conn.metrics || conn.log.is_some()).then(Instant::now);
    let plan = match plan(snapshot, guarded.buffered(), conn) {
        Some(Taken::Proxy(plan)) => plan,
        Some(Taken::TooLarge(len)) => {
            guarded.consume(len);
            let answer = crate::answer::plain_bytes(413, b"request body too large\n");
            let _ = guarded.write_all(&answer).await;
            let _ = guarded.flush().await;
            return Outcome::Close;
        }
        None => return Outcome::Pingora,
    };
    let head_len = plan.head_len;
    let mut exchange = relay::Exchange::new(snapshot, plan);
    let outcome = match exchange.open(false).await {
        relay::Opened::Up => {
            guarded.consume(head_len);
            exchange.run(guarded, conn).await
        }
        // Every instance of the route failed to connect (each now marked down): Pingora's
        // proxy routes the request again, to another route, as its own path would.
        relay::Opened::Elsewhere => return Outcome::Pingora,
        relay::Opened::Failed => {
            guarded.consume(head_len);
            exchange.connect_failed(guarded).await
        }
    };
    if let Some(started) = started {
        exchange.record(conn, started.elapsed());
    }
    outcome
}

/// What this path does with a request it takes.
enum Taken<'s> {
    Proxy(Plan<'s>),
    /// Its declared body is over the route's `max_body_bytes`: 413 (head this long).
    TooLarge(usize),
}

/// Reads the request head and routes it; `None` leaves the request to Pingora.
fn plan<'s>(snapshot: &'s Snapshot, bytes: &[u8], conn: &Conn) -> Option<Taken<'s>> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut lines);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let (method, path) = (req.method?, req.path?);
    if req.version != Some(1) || method == "CONNECT" || !path.starts_with('/') {
        return None;
    }
    let head = Head::read(req.headers)?;
    let host = head.host;
    let entry = plain_entry(snapshot, conn, path, host)?;
    let map = head.map(req.headers);
    let view = Request::new(host, path_only(path), method, &map, conn.client);
    let (selected, route) = select(snapshot, entry, host, &view)?;
    if route.max_body > 0 && head.length > route.max_body {
        return Some(Taken::TooLarge(head_len));
    }
    let upstream = instance(route, &view)?;
    let trusted = conn
        .client
        .is_some_and(|ip| snapshot.defaults.is_trusted(ip));
    let mut out = Vec::with_capacity(head_len + 256);
    let lines = req.headers.iter().map(|h| (h.name, h.value));
    let id = write_request(&mut out, method, path, lines, &head, trusted, conn);
    let log = conn.log.as_ref().map(|_| {
        let id = id.as_ref().map_or(head.request_id, |id| &id[..]);
        Logged::new(method, host, path, id)
    });
    Some(Taken::Proxy(Plan {
        head_len,
        out,
        body: head.length,
        head_method: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        close: head.close,
        selected,
        route,
        upstream,
        log,
    }))
}

/// The listener entry of a request this path may take, checked before routing so that
/// a request left to Pingora is routed once, there (weights and strengths advance once
/// per request): no tracing, no client certificate, not stopping, no ACME challenge,
/// no redirect, and a plain gateway for `host`.
fn plain_entry(snapshot: &Snapshot, conn: &Conn, path: &str, host: &[u8]) -> Option<Entry> {
    if snapshot.tracer.is_some() || conn.client_cert || crate::lifecycle::draining() {
        return None;
    }
    if crate::challenge::challenges().http_answer(path).is_some() {
        return None;
    }
    let entry = snapshot.entry(conn.local_port)?;
    if snapshot.redirect_of(entry).is_some() {
        return None;
    }
    let gateway = snapshot.gateway_for(entry, host).ok()?;
    snapshot.gateways[gateway].plain.then_some(entry)
}

/// Routes the request (a plain gateway's: no cookie to set, nothing pinned). Refusals
/// go to Pingora, which refuses them the same way (a refusal advances no schedule).
fn select<'s>(
    snapshot: &'s Snapshot,
    entry: Entry,
    host: &[u8],
    view: &Request,
) -> Option<(Selected, &'s Route)> {
    let mut writes = StickyWrites::default();
    let selected = snapshot.select(entry, host, view, &mut writes).ok()?;
    let route = snapshot.route(selected);
    let plain = writes.iter().next().is_none() && route.is_plain() && selected.pinned.is_none();
    plain.then_some((selected, route))
}

/// The route's instance for the request, which pays its deposit into the route's
/// retry budget.
fn instance<'s>(route: &'s Route, view: &Request) -> Option<&'s Upstream> {
    let Target::Pool(pool) = &route.target else {
        return None;
    };
    let upstream = pool.pick(Tried::default(), view)?;
    address(upstream)?;
    route.retry.budget().deposit();
    Some(upstream)
}

impl Logged {
    fn new(method: &str, host: &[u8], path: &str, request_id: &[u8]) -> Box<Logged> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Box::new(Logged {
            method: method.to_string(),
            host: text(host),
            path: path.to_string(),
            request_id: text(request_id),
        })
    }
}

/// The path without its query, as routing reads it.
fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

fn address(u: &Upstream) -> Option<SocketAddr> {
    match &u.peer._address {
        pingora::protocols::l4::socket::SocketAddr::Inet(a) if !a.ip().is_unspecified() => Some(*a),
        _ => None,
    }
}

/// A new connection to `u`, within its connect timeout.
async fn connect(u: &Upstream) -> io::Result<TcpStream> {
    let addr = address(u).ok_or(io::ErrorKind::AddrNotAvailable)?;
    let attempt = TcpStream::connect(addr);
    let stream = match u.peer.options.connection_timeout {
        Some(t) => tokio::time::timeout(t, attempt)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??,
        None => attempt.await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What the request's header lines say that this path needs.
struct Head<'a> {
    host: &'a [u8],
    length: u64,
    close: bool,
    /// Which forwarding headers the client sent.
    has: [bool; 5],
    /// The client's `X-Request-Id`.
    request_id: &'a [u8],
}

/// Forwarding headers, in the order of `Head::has`.
const FORWARDING: [&str; 5] = [
    crate::forward::X_FORWARDED_FOR,
    crate::forward::X_FORWARDED_PROTO,
    crate::forward::X_FORWARDED_HOST,
    crate::forward::X_FORWARDED_PORT,
    crate::forward::X_REQUEST_ID,
];

/// Request headers that end at weir (RFC 9110 §7.6.1), as Pingora's upstream request
/// policy strips them.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Client-certificate headers: only weir may set them.
const CLIENT_CERT: [&str; 3] = [
    crate::client_cert::SUBJECT,
    crate::client_cert::SAN,
    crate::client_cert::FINGERPRINT,
];

impl<'a> Head<'a> {
    /// `None` for anything this path leaves to Pingora: no or several Host, a body
    /// not framed by one Content-Length, an upgrade, `Expect`, a `Connection` that
    /// names other headers.
    fn read(lines: &[httparse::Header<'a>]) -> Option<Head<'a>> {
        let mut head = Head {
            host: b"",
            length: 0,
            close: false,
            has: [false; 5],
            request_id: b"",
        };
        let mut hosts = 0;
        let mut lengths = 0;
        for h in lines {
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                hosts += 1;
                head.host = h.value;
            } else if name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                head.length = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                        return None;
                    }
                }
            } else if ["transfer-encoding", "upgrade", "expect", "http2-settings"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                return None;
            } else {
                head.note(name, h.value);
            }
        }
        (hosts == 1 && lengths <= 1).then_some(head)
    }

    /// What an HTTP/2 stream's headers say: its host (`:authority` or `Host`), which
    /// forwarding headers it has. It has no body and no connection options.
    fn of_stream(host: &'a [u8], headers: &'a HeaderMap) -> Head<'a> {
        let mut head = Head {
            host,
            length: 0,
            close: false,
            has: [false; 5],
            request_id: b"",
        };
        for (name, value) in headers {
            head.note(name.as_str(), value.as_bytes());
        }
        head
    }

    /// Notes a forwarding header the client sent.
    fn note(&mut self, name: &str, value: &'a [u8]) {
        if let Some(i) = FORWARDING.iter().position(|n| name.eq_ignore_ascii_case(n)) {
            self.has[i] = true;
            if i == 4 {
                self.request_id = value;
            }
        }
    }

    /// The header lines as a map, for routing's view of the request.
    fn map(&self, lines: &[httparse::Header]) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(lines.len());
        for h in lines {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                map.append(n, v);
            }
        }
        map
    }
}

/// The request head as it goes upstream: HTTP/1.1, the client's header lines less the
/// hop-by-hop ones, then the forwarding headers (`forward` has the rules). Returns the
/// request id it made, if the client sent none.
fn write_request<'l>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    lines: impl Iterator<Item = (&'l str, &'l [u8])>,
    head: &Head,
    trusted: bool,
    conn: &Conn,
) -> Option<[u8; 32]> {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // A trusted proxy's forwarding headers stay (its X-Forwarded-For is extended).
    let keep = |i: usize| trusted && head.has[i] && i != 0;
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    for (name, value) in lines {
        if HOP_BY_HOP
            .iter()
            .chain(&CLIENT_CERT)
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        if let Some(i) = FORWARDING.iter().position(|n| name.eq_ignore_ascii_case(n)) {
            if i == 0 && trusted {
                forwarded_for.push(value);
            }
            if i == 4 || keep(i) {
                line(out, name.as_bytes(), value);
            }
            continue;
        }
        line(out, name.as_bytes(), value);
    }
    let mut text = [0u8; 64];
    if let Some(ip) = conn.client {
        let ip = crate::forward::format_into(&mut text, format_args!("{ip}"));
        out.extend_from_slice(b"x-forwarded-for: ");
        for earlier in &forwarded_for {
            out.extend_from_slice(earlier);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip);
        out.extend_from_slice(b"\r\n");
    } else if trusted {
        for earlier in &forwarded_for {
            line(out, b"x-forwarded-for", earlier);
        }
    }
    if !keep(1) {
        let proto: &[u8] = if conn.tls { b"https" } else { b"http" };
        line(out, b"x-forwarded-proto", proto);
    }
    if !keep(2) {
        line(out, b"x-forwarded-host", head.host);
    }
    if !keep(3) {
        let port = crate::forward::format_into(&mut text, format_args!("{}", conn.local_port));
        line(out, b"x-forwarded-port", port);
    }
    let id = (!head.has[4]).then(crate::forward::request_id);
    if let Some(id) = &id {
        line(out, b"x-request-id", id);
    }
    out.extend_from_slice(b"\r\n");
    id
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads from `r` into `buf`'s spare capacity, within `limit`.
async fn read_some<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: Option<Duration>,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 << 10);
    }
    match limit {
        Some(t) => tokio::time::timeout(t, r.read_buf(buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?,
        None => r.read_buf(buf).await,
    }
}

/// Writes all of `bytes` to `w`, within `limit`.
async fn write_all<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: Option<Duration>,
) -> io::Result<()> {
    match limit {
        Some(t) => tokio::time::timeout(t, w.write_all(bytes))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?,
        None => w.write_all(bytes).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<u8>, usize) {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut lines);
        let n = match req.parse(text.as_bytes()).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        let head = Head::read(req.headers).expect("taken");
        let conn = Conn {
            limits: crate::framing::Limits::default(),
            local_port: 8080,
            tls: false,
            client: Some(IpAddr::from([127, 0, 0, 9])),
            client_cert: false,
            metrics: false,
            log: None,
            tls_version: None,
            sni: None,
        };
        let mut out = Vec::new();
        let (m, p) = (req.method.unwrap(), req.path.unwrap());
        let lines = req.headers.iter().map(|h| (h.name, h.value));
        write_request(&mut out, m, p, lines, &head, false, &conn);
        (out, n)
    }

    #[test]
    fn hop_by_hop_and_client_forwarding_headers_go() {
        let (out, n) = parse(
            "GET /a?b HTTP/1.1\r\nHost: x:1\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\
             TE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nX-Client-Cert-Subject: CN=evil\r\n\
             Foo: bar\r\n\r\nrest",
        );
        assert_eq!(n, 153);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /a?b HTTP/1.1\r\nHost: x:1\r\nFoo: bar\r\n"));
        assert!(text.contains("x-forwarded-for: 127.0.0.9\r\n"));
        assert!(!text.contains("6.6.6.6") && !text.contains("evil"));
        assert!(text.contains("x-forwarded-proto: http\r\nx-forwarded-host: x:1\r\n"));
        assert!(text.contains("x-forwarded-port: 8080\r\nx-request-id: "));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_client_request_id_is_kept() {
        let (out, _) = parse("GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\n\r\n");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("x-request-id").count(), 0);
        assert!(text.contains("X-Request-Id: abc\r\n"));
    }

    #[test]
    fn leaves_what_it_does_not_do_to_pingora() {
        for text in [
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x-secret\r\n\r\n",
        ] {
            let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut lines);
            req.parse(text.as_bytes()).unwrap();
            assert!(Head::read(req.headers).is_none(), "{text}");
        }
    }
}
