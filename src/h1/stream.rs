//! HTTP/2 streams on weir's own path: `http2` accepts the stream and offers it here.
//! When it is for a plain gateway (`Gateway::plain`) and has no body, it is routed
//! with the same snapshot calls as Pingora's path, its exchange with the instance is
//! this module's (`relay`, the idle connections of `pool`), and the response goes back
//! on the stream. Decided before anything is sent or any schedule advances: otherwise
//! the stream goes to Pingora's proxy untouched.

use std::time::Instant;

use pingora::http::RequestHeader;
use pingora::protocols::http::v2::server::HttpSession;
use pingora::ErrorSource;

use super::relay::{Exchange, Opened};
use super::{Conn, Head, Logged, Plan};
use crate::proxy::view::request_host;
use crate::request::Request;
use crate::snapshot::Snapshot;

/// A stream this module takes: its request as it goes upstream, and where.
pub struct Prepared<'s>(Plan<'s>);

/// Takes the stream if this path can serve it, or `None` to leave it to Pingora's
/// proxy. Routing happens here only for a stream that is taken: a stream left to
/// Pingora is routed once, there.
pub fn prepare<'s>(
    session: &HttpSession,
    snapshot: &'s Snapshot,
    conn: &Conn,
) -> Option<Prepared<'s>> {
    let req = session.req_header();
    if !super::enabled() || !session.is_body_empty() || req.method == http::Method::CONNECT {
        return None;
    }
    let host = request_host(req);
    if host.is_empty() {
        return None;
    }
    // Over the listener's head limits: Pingora's leg refuses it (431 or 414).
    if conn
        .limits
        .check_head(&req.method, &req.uri, &req.headers)
        .is_err()
    {
        return None;
    }
    let path = req.uri.path();
    let entry = super::plain_entry(snapshot, conn, path, host)?;
    let method = req.method.as_str();
    let view = Request::new(host, path, method, &req.headers, conn.client);
    let (selected, route) = super::select(snapshot, entry, host, &view)?;
    let upstream = super::instance(route, &view)?;
    let trusted = conn
        .client
        .is_some_and(|ip| snapshot.defaults.is_trusted(ip));
    let (out, log) = request_bytes(req, host, conn, trusted);
    Some(Prepared(Plan {
        head_len: 0,
        out,
        body: 0,
        head_method: req.method == http::Method::HEAD,
        idempotent: req.method.is_idempotent(),
        close: false,
        selected,
        route,
        upstream,
        log,
    }))
}

/// Serves a prepared stream, counts it in the route's metrics and writes its access
/// log line. False when its instances could not be reached and the route has none
/// left: nothing was sent, and Pingora's proxy routes it again.
pub async fn run(
    session: &mut HttpSession,
    snapshot: &Snapshot,
    prepared: Prepared<'_>,
    conn: &Conn,
) -> bool {
    let started = (conn.metrics || conn.log.is_some()).then(Instant::now);
    let selected = prepared.0.selected;
    let mut exchange = Exchange::new(snapshot, prepared.0);
    match exchange.open(false).await {
        Opened::Elsewhere => return false,
        Opened::Failed => exchange.answer_stream(session, 502).await,
        Opened::Up => {
            let hsts = conn.tls.then(|| snapshot.hsts(selected)).flatten();
            // A stalled client (no flow-control window) holds the stream no longer
            // than an idle connection may stay open.
            session.set_write_timeout(Some(snapshot.defaults.idle_timeout));
            if let Err(e) = exchange.run_session(session, hsts).await {
                exchange.count_stream_error(&e, conn.metrics);
            }
        }
    }
    if let Some(started) = started {
        exchange.record(conn, started.elapsed());
    }
    true
}

/// The request as it goes to an HTTP/1 instance (`write_request`, as for HTTP/1):
/// origin-form target, `Host` from the authority, hop-by-hop headers removed, the
/// forwarding headers set. With an access log, also what its line says.
fn request_bytes(
    req: &RequestHeader,
    host: &[u8],
    conn: &Conn,
    trusted: bool,
) -> (Vec<u8>, Option<Box<Logged>>) {
    let head = Head::of_stream(host, &req.headers);
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host_line = (!req.headers.contains_key(http::header::HOST)).then_some(("host", host));
    let lines = host_line
        .into_iter()
        .chain(req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let mut out = Vec::with_capacity(256 + 64 * req.headers.len());
    let method = req.method.as_str();
    let made = super::write_request(&mut out, method, target, lines, &head, trusted, conn);
    let log = conn.log.as_ref().map(|_| {
        let id = made.as_ref().map_or(head.request_id, |id| &id[..]);
        Logged::new(method, host, target, id)
    });
    (out, log)
}

impl Exchange<'_> {
    /// Counts a stream that failed after its response began: a client that reset it
    /// or went away is a client abort, an instance that failed mid-body an upstream
    /// error.
    fn count_stream_error(&self, e: &pingora::Error, metrics: bool) {
        log::debug!("HTTP/2 stream: {e}");
        if e.esource() == &ErrorSource::Downstream {
            if metrics {
                crate::metrics::metrics().client_aborts.inc();
            }
        } else {
            self.upstream_error("closed");
        }
    }
}
