//! One request on weir's own HTTP/1 path, once it is taken: its head (and body) to the
//! upstream connection, the response head back with weir's changes (Date, Connection,
//! HSTS), the body relayed as it arrives and framed as the instance framed it. A
//! connection reset before any response byte is tried again as Pingora's proxy would
//! (once more on a new connection when a kept-alive one was stale, then on another
//! instance as the route's `retries` allow); other failures answer 502 or 504 and close.

use std::io;
use std::time::Duration;

use http::HeaderValue;
use pingora::protocols::http::v2::server::HttpSession;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::response::{client_head, parse_head, session_head, Body, Framing, Head, Parsed};
use super::{connect, read_some, write_all, Conn, Outcome, Plan};
use crate::framing::MAX_INTERIM;
use crate::guard::Guarded;
use crate::request::Request;
use crate::retry::Failure;
use crate::snapshot::{Snapshot, Target};
use crate::upstream::{InFlight, Tried, Upstream};

/// How long an instance may take to answer before weir checks whether the client is
/// still there.
const WATCH_AFTER: Duration = Duration::from_millis(20);

/// Why an exchange failed before a response reached the client.
enum Fail {
    /// Closed or reset before a byte of the response came: may be tried again.
    Reset(io::Error),
    Timeout,
    /// A response weir cannot relay, or another I/O failure.
    Bad(&'static str),
    /// The client went away; nothing to answer.
    Client,
}

impl Fail {
    /// The status the client is answered with, and the upstream error kind counted;
    /// None when the client left (nothing to answer).
    fn answer(&self) -> Option<(u16, &'static str)> {
        match self {
            Fail::Client => None,
            Fail::Timeout => Some((504, "timeout")),
            Fail::Reset(_) => Some((502, "closed")),
            Fail::Bad(_) => Some((502, "other")),
        }
    }
}

/// How opening an upstream connection went.
pub(super) enum Opened {
    Up,
    /// The route has no instance left to try: Pingora's proxy routes the request
    /// again (nothing of it was read yet).
    Elsewhere,
    /// Connecting failed and the route retries no more: 502.
    Failed,
}

pub(super) struct Exchange<'s> {
    snapshot: &'s Snapshot,
    plan: Plan<'s>,
    upstream: &'s Upstream,
    up: Option<TcpStream>,
    reused: bool,
    tried: Tried,
    retries_left: u32,
    inflight: Option<InFlight>,
    status: u16,
    /// The instance's status, when its response went to the client.
    upstream_status: Option<u16>,
    sent: usize,
    read: u64,
}

impl<'s> Exchange<'s> {
    pub(super) fn new(snapshot: &'s Snapshot, plan: Plan<'s>) -> Exchange<'s> {
        Exchange {
            snapshot,
            upstream: plan.upstream,
            retries_left: plan.route.retry.attempts,
            plan,
            up: None,
            reused: false,
            tried: Tried::default(),
            inflight: None,
            status: 0,
            upstream_status: None,
            sent: 0,
            read: 0,
        }
    }

    /// Counts the request in its route's metrics and writes its access log line.
    pub(super) fn record(&self, conn: &Conn, elapsed: Duration) {
        if self.status == 0 {
            return;
        }
        if conn.metrics {
            let m = &self.plan.route.metrics;
            m.record(self.status, elapsed, self.sent, self.read as usize);
        }
        if let (Some(log), Some(l)) = (&conn.log, &self.plan.log) {
            let g = &self.snapshot.gateways[self.plan.selected.gateway];
            let entry = crate::accesslog::Entry {
                method: &l.method,
                host: &l.host,
                path: &l.path,
                gateway: Some(&g.name),
                route: Some(&self.plan.route.key),
                instance: Some(&self.upstream.name),
                upstream_status: self.upstream_status,
                request_id: Some(&l.request_id),
                tls_version: conn.tls_version.as_deref(),
                sni: conn.sni.as_deref(),
                ..crate::accesslog::Entry::new(conn.client, self.status, self.sent, elapsed)
            };
            log.log(&entry);
        }
    }

    /// An upstream connection: an idle one of the instance (unless `fresh`), or a new
    /// one; a failed connect marks the instance down (as Pingora's path does) and moves
    /// to another instance as the route's retries allow.
    pub(super) async fn open(&mut self, mut fresh: bool) -> Opened {
        let max_idle = self.snapshot.defaults.idle_timeout;
        loop {
            let u = self.upstream;
            self.inflight = Some(InFlight::new(u));
            if !fresh {
                if let Some(stream) = u.health.idle.take(max_idle) {
                    self.up = Some(stream);
                    self.reused = true;
                    return Opened::Up;
                }
            }
            fresh = false;
            let e = match connect(u).await {
                Ok(stream) => {
                    u.health.mark_ok_passive();
                    self.up = Some(stream);
                    self.reused = false;
                    return Opened::Up;
                }
                Err(e) => e,
            };
            let kind = match e.kind() {
                io::ErrorKind::TimedOut => "connect_timeout",
                _ => "connect",
            };
            log::debug!("connect to {} failed ({kind}): {e}", u.name);
            let gateway = &self.snapshot.gateways[self.plan.selected.gateway].name;
            self.snapshot
                .connect_failed(gateway, self.plan.route, u, kind);
            self.inflight = None;
            self.tried.add(u.index);
            if !self.may_retry(Failure::Connect) {
                return Opened::Failed;
            }
            match self.next_instance() {
                Some(next) => self.upstream = next,
                None => return Opened::Elsewhere,
            }
        }
    }

    /// Whether the route tries again after `failure` (counted, paid from its budget).
    fn may_retry(&mut self, failure: Failure) -> bool {
        let route = self.plan.route;
        if self.retries_left == 0 || !route.retry.covers_kind(failure, self.plan.idempotent) {
            return false;
        }
        let another = match &route.target {
            Target::Pool(p) => p.another(Some(self.upstream.index), self.tried),
            _ => false,
        };
        // A connect failure may still move the request to another route.
        if !another && failure != Failure::Connect {
            return false;
        }
        let gateway = &self.snapshot.gateways[self.plan.selected.gateway].name;
        let paid = route.retry.budget().withdraw();
        crate::metrics::retry(gateway, &route.key, paid.then_some(failure.reason()));
        if paid {
            self.retries_left -= 1;
        }
        paid
    }

    /// The route's next instance not yet tried.
    fn next_instance(&self) -> Option<&'s Upstream> {
        let Target::Pool(pool) = &self.plan.route.target else {
            return None;
        };
        let view = Request::new(b"", "", "", empty_headers(), None);
        pool.pick(self.tried, &view)
            .filter(|u| super::address(u).is_some())
    }

    /// Answers a request whose instances could not be reached: 502, then close.
    pub(super) async fn connect_failed(&mut self, guarded: &mut Guarded) -> Outcome {
        self.status = 502;
        answer(guarded, 502).await
    }

    pub(super) async fn run(&mut self, guarded: &mut Guarded, conn: &Conn) -> Outcome {
        let mut buf = Vec::with_capacity(16 << 10);
        let head = match self
            .exchange(Some(&mut *guarded), conn.metrics, &mut buf)
            .await
        {
            Ok(head) => head,
            Err(fail) => return self.failed(guarded, fail).await,
        };
        self.relay(guarded, conn, buf, head).await
    }

    /// Sends the request and reads the response head into `buf`, trying again on a
    /// reset as the route allows.
    async fn exchange(
        &mut self,
        mut client: Option<&mut Guarded>,
        metrics: bool,
        buf: &mut Vec<u8>,
    ) -> Result<Head, Fail> {
        let mut body = true;
        loop {
            let sent = self
                .send(client.as_deref_mut(), std::mem::take(&mut body))
                .await;
            let result = match sent {
                Ok(()) => {
                    self.response_head(client.as_deref_mut(), metrics, buf)
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Err(Fail::Reset(e)) if self.plan.body == 0 && self.plan.idempotent => {
                    self.up = None;
                    if !self.again(e).await {
                        return Err(Fail::Bad("upstream closed the connection"));
                    }
                    buf.clear();
                }
                other => return other,
            }
        }
    }

    /// After a reset: a new connection to the same instance when the failed one was a
    /// kept-alive one (it may have been closed while idle), else another instance if
    /// the route retries resets. False: give up.
    async fn again(&mut self, why: io::Error) -> bool {
        log::debug!("{}: {why}", self.upstream.name);
        if !std::mem::take(&mut self.reused) {
            self.tried.add(self.upstream.index);
            if !self.may_retry(Failure::Reset) {
                return false;
            }
            match self.next_instance() {
                Some(next) => self.upstream = next,
                None => return false,
            }
        }
        matches!(self.open(true).await, Opened::Up)
    }

    /// The exchange for an HTTP/2 stream (`stream`): the response goes back on the
    /// stream, its body as data (chunked framing removed). Errors after the response
    /// began are the client's (downstream) or the instance's.
    pub(super) async fn run_session(
        &mut self,
        session: &mut HttpSession,
        hsts: Option<&HeaderValue>,
    ) -> pingora::Result<()> {
        let mut buf = Vec::with_capacity(16 << 10);
        let waiting = self.exchange(None, false, &mut buf);
        // A client that resets the stream meanwhile ends the exchange.
        let exchanged = tokio::select! {
            biased;
            exchanged = waiting => exchanged,
            closed = session.read_body_or_idle(true) => {
                let e = closed.err().unwrap_or_else(|| {
                    pingora::Error::explain(pingora::ErrorType::H2Error, "client closed the stream")
                });
                return Err(e.into_down());
            }
        };
        let head = match exchanged {
            Ok(head) => head,
            Err(fail) => {
                let status = self.count_failure(fail);
                if status != 0 {
                    self.answer_stream(session, status).await;
                }
                return Ok(());
            }
        };
        let Some(mut up) = self.up.take() else {
            return Ok(());
        };
        let mut body = Body::new(head.framing);
        let header = session_head(&buf[..head.len], hsts)?;
        let read_timeout = self.upstream.peer.options.read_timeout;
        let (mut rest, mut data) = (head.len, Vec::new());
        let mut header = Some(header);
        // No body at all: the head ends the stream.
        let empty = body.done;
        loop {
            let chunk = &buf[rest..];
            data.clear();
            let take = match body.take_data(chunk, &mut data) {
                Ok(take) => take,
                Err(broken) => {
                    self.upstream_error("other");
                    if header.is_some() {
                        // Nothing went to the client yet: 502 rather than a cut body.
                        log::debug!("{}: {}", self.upstream.name, broken.reason());
                        self.status = 502;
                        self.answer_stream(session, 502).await;
                        return Ok(());
                    }
                    return pingora::Error::e_explain(
                        pingora::ErrorType::InvalidHTTPHeader,
                        broken.reason(),
                    );
                }
            };
            if let Some(header) = header.take() {
                self.status = head.status;
                self.upstream_status = Some(head.status);
                session
                    .write_response_header(header, empty)
                    .map_err(|e| e.into_down())?;
            }
            let extra = take < chunk.len();
            self.sent += data.len();
            if !data.is_empty() || (body.done && !empty) {
                let piece = bytes::Bytes::copy_from_slice(&data);
                session.write_body(piece, body.done).await?;
            }
            if body.done || extra {
                if body.done && !extra && head.reusable {
                    self.upstream.health.idle.give(up);
                }
                return Ok(());
            }
            buf.clear();
            rest = 0;
            match read_some(&mut up, &mut buf, read_timeout).await {
                Ok(0) if body.framing == Framing::Close => body.done = true,
                Ok(0) | Err(_) => {
                    return pingora::Error::e_explain(
                        pingora::ErrorType::ConnectionClosed,
                        "upstream closed mid-body",
                    )
                }
                Ok(_) => {}
            }
        }
    }

    /// Answers a stream whose exchange failed before any response (`answer`'s text).
    pub(super) async fn answer_stream(&mut self, session: &mut HttpSession, status: u16) {
        self.status = status;
        if let Err(e) = crate::answer::error_on_stream(session, status).await {
            log::debug!("could not send the error response: {e}");
        }
    }

    /// Counts an upstream error of this kind for the instance tried last.
    pub(super) fn upstream_error(&self, kind: &str) {
        let gateway = &self.snapshot.gateways[self.plan.selected.gateway].name;
        crate::metrics::upstream_error(gateway, &self.plan.route.key, &self.upstream.name, kind);
    }

    /// The status a failure is answered with; counted as an upstream error.
    fn count_failure(&mut self, fail: Fail) -> u16 {
        if let Fail::Bad(why) = &fail {
            log::debug!("{}: {why}", self.upstream.name);
        }
        let Some((status, kind)) = fail.answer() else {
            return 0;
        };
        self.upstream_error(kind);
        self.status = status;
        status
    }

    /// Writes the request head and, the first time, its body.
    async fn send(&mut self, guarded: Option<&mut Guarded>, body: bool) -> Result<(), Fail> {
        let write_timeout = self.upstream.peer.options.write_timeout;
        let up = self.up.as_mut().ok_or(Fail::Bad("no connection"))?;
        let guarded = match guarded {
            Some(g) if body && self.plan.body > 0 => g,
            _ => {
                return write_all(up, &self.plan.out, write_timeout)
                    .await
                    .map_err(upstream_fail)
            }
        };
        // The body's first bytes, already read, go with the head.
        let mut out = std::mem::take(&mut self.plan.out);
        let ready = guarded.buffered();
        let take = (self.plan.body as usize).min(ready.len());
        out.extend_from_slice(&ready[..take]);
        guarded.consume(take);
        self.read = take as u64;
        write_all(up, &out, write_timeout)
            .await
            .map_err(upstream_fail)?;
        while self.read < self.plan.body {
            out.clear();
            // The guard holds the body to its pace (408 past it): no timer here.
            let n = read_some(guarded, &mut out, None)
                .await
                .map_err(|_| Fail::Client)?;
            if n == 0 {
                return Err(Fail::Client);
            }
            let n = (n as u64).min(self.plan.body - self.read) as usize;
            self.read += n as u64;
            write_all(up, &out[..n], write_timeout)
                .await
                .map_err(upstream_fail)?;
        }
        Ok(())
    }

    /// Reads the final response head (interim 1xx responses are dropped). A client
    /// that leaves meanwhile ends the exchange (counted as an abort).
    async fn response_head(
        &mut self,
        mut client: Option<&mut Guarded>,
        metrics: bool,
        buf: &mut Vec<u8>,
    ) -> Result<Head, Fail> {
        let read_timeout = self.upstream.peer.options.read_timeout;
        let up = self.up.as_mut().ok_or(Fail::Bad("no connection"))?;
        let mut interim = 0;
        let mut watching = client.as_ref().is_some_and(|g| g.buffered().is_empty());
        loop {
            if !buf.is_empty() {
                match parse_head(buf, self.plan.head_method).map_err(Fail::Bad)? {
                    Parsed::Final(head) => return Ok(head),
                    Parsed::Interim(n) if interim < MAX_INTERIM => {
                        interim += 1;
                        buf.drain(..n);
                        continue;
                    }
                    Parsed::Interim(_) => return Err(Fail::Bad("too many interim responses")),
                    Parsed::Partial => {}
                }
            }
            let first = buf.is_empty() && interim == 0;
            let read = read_some(up, buf, read_timeout);
            let got = match client.as_deref_mut().filter(|_| watching) {
                Some(guarded) => tokio::select! {
                    biased;
                    got = read => got,
                    left = client_left(guarded) => {
                        if left {
                            if metrics {
                                crate::metrics::metrics().client_aborts.inc();
                            }
                            return Err(Fail::Client);
                        }
                        // The client sent more (a pipelined request): it stays.
                        watching = false;
                        continue;
                    }
                },
                None => read.await,
            };
            match got {
                Ok(0) if first => return Err(Fail::Reset(io::ErrorKind::UnexpectedEof.into())),
                Ok(0) => return Err(Fail::Bad("upstream closed mid-response")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Fail::Timeout),
                Err(e) if first => return Err(Fail::Reset(e)),
                Err(_) => return Err(Fail::Bad("upstream read failed")),
            }
        }
    }

    /// Answers a failure that reached the client before any response (502 or 504).
    async fn failed(&mut self, guarded: &mut Guarded, fail: Fail) -> Outcome {
        match self.count_failure(fail) {
            0 => Outcome::Close,
            status => answer(guarded, status).await,
        }
    }

    /// Writes the response head and relays the body; gives the upstream connection
    /// back to its instance's pool when the exchange ended cleanly.
    async fn relay(
        &mut self,
        guarded: &mut Guarded,
        conn: &Conn,
        mut buf: Vec<u8>,
        head: Head,
    ) -> Outcome {
        let Some(mut up) = self.up.take() else {
            return Outcome::Close;
        };
        self.status = head.status;
        self.upstream_status = Some(head.status);
        let keep_client = !self.plan.close && head.framing != Framing::Close;
        let hsts = match conn.tls {
            true => self.snapshot.hsts(self.plan.selected),
            false => None,
        };
        let mut out = std::mem::take(&mut self.plan.out);
        out.clear();
        client_head(&buf[..head.len], keep_client, hsts, &mut out);
        let mut body = Body::new(head.framing);
        let mut rest = head.len;
        let read_timeout = self.upstream.peer.options.read_timeout;
        // Nothing reached the client yet: a broken body can still be answered 502.
        let mut untouched = true;
        loop {
            let chunk = &buf[rest..];
            let take = match body.take(chunk) {
                Ok(take) => take,
                Err(broken) if untouched => {
                    return self.failed(guarded, Fail::Bad(broken.reason())).await;
                }
                Err(broken) => {
                    log::debug!("{}: {}", self.upstream.name, broken.reason());
                    self.upstream_error("other");
                    let _ = guarded.flush().await;
                    return Outcome::Close;
                }
            };
            out.extend_from_slice(&chunk[..take]);
            self.sent += take;
            let extra = take < chunk.len();
            if body.done || extra {
                let written = self.client_write(guarded, conn, &out).await;
                if body.done && !extra && head.reusable && written.is_next() {
                    self.upstream.health.idle.give(up);
                }
                // Bytes past the framing end the upstream connection, not the client's.
                return if keep_client && body.done {
                    written
                } else {
                    Outcome::Close
                };
            }
            if !out.is_empty() {
                untouched = false;
                if !self.client_write(guarded, conn, &out).await.is_next() {
                    return Outcome::Close;
                }
                out.clear();
            }
            buf.clear();
            rest = 0;
            match read_some(&mut up, &mut buf, read_timeout).await {
                Ok(0) if body.framing == Framing::Close => body.done = true,
                Ok(0) | Err(_) => {
                    // Truncated: the client sees the connection close.
                    let _ = guarded.flush().await;
                    return Outcome::Close;
                }
                Ok(_) => {}
            }
        }
    }

    /// Writes `bytes` to the client and flushes: `Next` when it went, else `Close`
    /// (counted as a client abort).
    async fn client_write(&self, guarded: &mut Guarded, conn: &Conn, bytes: &[u8]) -> Outcome {
        let written = match guarded.write_all(bytes).await {
            Ok(()) => guarded.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => Outcome::Next,
            Err(e) => {
                log::debug!("client: {e}");
                if conn.metrics {
                    crate::metrics::metrics().client_aborts.inc();
                }
                Outcome::Close
            }
        }
    }
}

impl Outcome {
    fn is_next(&self) -> bool {
        matches!(self, Outcome::Next)
    }
}

/// Answers a failed request with `status` (`answer::error`'s text); the connection
/// closes after it.
async fn answer(guarded: &mut Guarded, status: u16) -> Outcome {
    let _ = guarded.write_all(&crate::answer::error_bytes(status)).await;
    let _ = guarded.flush().await;
    Outcome::Close
}

/// Whether the client left (true) or sent more (false), checked only once the instance
/// has been slow for `WATCH_AFTER`: a prompt response costs no read of the client.
async fn client_left(guarded: &mut Guarded) -> bool {
    tokio::time::sleep(WATCH_AFTER).await;
    !guarded.still_there().await
}

fn upstream_fail(e: io::Error) -> Fail {
    match e.kind() {
        io::ErrorKind::TimedOut => Fail::Timeout,
        _ => Fail::Reset(e),
    }
}

fn empty_headers() -> &'static http::HeaderMap {
    static EMPTY: std::sync::OnceLock<http::HeaderMap> = std::sync::OnceLock::new();
    EMPTY.get_or_init(http::HeaderMap::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_status_and_kind() {
        assert_eq!(Fail::Timeout.answer(), Some((504, "timeout")));
        let reset = Fail::Reset(io::ErrorKind::ConnectionReset.into());
        assert_eq!(reset.answer(), Some((502, "closed")));
        assert_eq!(
            Fail::Bad("invalid response head").answer(),
            Some((502, "other"))
        );
        assert_eq!(Fail::Client.answer(), None);
    }

    #[test]
    fn a_write_that_times_out_is_a_timeout_and_any_other_a_reset() {
        let timed_out = upstream_fail(io::ErrorKind::TimedOut.into());
        assert!(matches!(timed_out, Fail::Timeout));
        let broken = upstream_fail(io::ErrorKind::BrokenPipe.into());
        assert!(matches!(broken, Fail::Reset(_)));
        // A reset before any byte of the response may be tried again; a timeout not.
        assert_eq!(broken.answer(), Some((502, "closed")));
    }

    #[test]
    fn only_a_served_exchange_keeps_the_connection() {
        assert!(Outcome::Next.is_next());
        assert!(!Outcome::Close.is_next());
        assert!(!Outcome::Pingora.is_next());
    }
}
