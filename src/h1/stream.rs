//! HTTP/2 streams on weir's own path: Pingora's HTTP/2 server reads the stream and
//! `proxy` routes it as usual; when the gateway is plain (`Gateway::plain`) and the
//! request has no body, its exchange with the instance is this module's (`relay`, the
//! idle connections of `pool`) instead of Pingora's upstream proxy, and the response
//! goes back through the session. Decided before anything is sent: otherwise Pingora's
//! proxy goes on with the request untouched.

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::relay::{Exchange, Opened};
use super::Plan;
use crate::client_cert::ClientCert;
use crate::forward::Forwarding;
use crate::request::Request;
use crate::snapshot::{Selected, Snapshot, Target};
use crate::upstream::Tried;

/// What a stream's connection is.
pub struct StreamConn<'a> {
    pub client: Option<IpAddr>,
    pub local_port: u16,
    pub tls: bool,
    pub client_cert: Option<&'a ClientCert>,
}

/// A stream this module served.
pub struct Served {
    pub instance: Arc<str>,
    pub upstream_status: Option<u16>,
}

/// A stream this module takes: its request as it goes upstream, and where.
pub struct Prepared<'s>(Plan<'s>);

/// Takes a stream routed to `selected` (its body known to be empty), or `None` to
/// leave it to Pingora's proxy. Nothing is sent yet.
pub fn prepare<'s>(
    req: &RequestHeader,
    view: &Request<'_>,
    snapshot: &'s Snapshot,
    selected: Selected,
    conn: StreamConn<'_>,
) -> Option<Prepared<'s>> {
    if !super::enabled() || !snapshot.gateways[selected.gateway].plain {
        return None;
    }
    let route = snapshot.route(selected);
    let Target::Pool(pool) = &route.target else {
        return None;
    };
    let upstream = pool.pick(Tried::default(), view)?;
    super::address(upstream)?;
    let trusted = conn
        .client
        .is_some_and(|ip| snapshot.defaults.is_trusted(ip));
    // (The retry budget had this request's deposit when `proxy` routed it.)
    let out = request_bytes(req, &conn, trusted).ok()?;
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
        log: None,
    }))
}

/// Serves a prepared stream; `None` when its instances could not be reached and the
/// route has none left: Pingora's proxy then routes it again.
pub async fn run(
    session: &mut Session,
    snapshot: &Snapshot,
    prepared: Prepared<'_>,
    tls: bool,
) -> Option<pingora::Result<Served>> {
    let selected = prepared.0.selected;
    let mut exchange = Exchange::new(snapshot, prepared.0);
    match exchange.open(false).await {
        Opened::Up => {}
        Opened::Elsewhere => return None,
        Opened::Failed => {
            crate::answer::error(session, 502).await;
            return Some(Ok(exchange.served()));
        }
    }
    let hsts = tls.then(|| snapshot.hsts(selected)).flatten();
    let result = exchange.run_session(session, hsts).await;
    Some(result.map(|_| exchange.served()))
}

/// The request as it goes to an HTTP/1 instance: origin-form target, `Host` from the
/// authority, hop-by-hop headers removed, the forwarding headers set (`forward`).
fn request_bytes(
    req: &RequestHeader,
    conn: &StreamConn,
    trusted: bool,
) -> pingora::Result<Vec<u8>> {
    let mut req = req.clone();
    for name in super::HOP_BY_HOP {
        req.remove_header(name);
    }
    let authority = req.uri.authority().map(|a| a.as_str().to_string());
    if let (Some(a), false) = (&authority, req.headers.contains_key(http::header::HOST)) {
        req.insert_header(http::header::HOST, a.as_str())?;
    }
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec());
    let fwd = Forwarding {
        client: conn.client,
        trusted,
        proto: if conn.tls { "https" } else { "http" },
        host: host.as_deref().filter(|h| !h.is_empty()),
        port: conn.local_port,
    };
    crate::forward::apply(&mut req, &fwd)?;
    crate::client_cert::forward(&mut req, conn.client_cert)?;
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(256 + 64 * req.headers.len());
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        super::line(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}
