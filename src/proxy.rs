//! The `ProxyHttp` implementation: Pingora's request phases mapped onto one snapshot.
//!
//! `request_filter` loads the current snapshot once, routes the request (or answers it:
//! 404, 421, 503, `respond:` routes), and keeps the decision in the context;
//! `upstream_peer` picks the instance; `fail_to_connect` retries another instance;
//! `upstream_request_filter` sets the forwarding headers.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;

use crate::forward::{self, Forwarding};
use crate::snapshot::{Refusal, RequestView, Selected, Snapshot, Target, Upstream};

/// The proxy service; one per process, shared by every listener.
pub struct Weir {
    pub current: Arc<ArcSwap<Snapshot>>,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    snapshot: Option<Arc<Snapshot>>,
    selected: Option<Selected>,
    /// Bit i: instance (or resolved address) i was tried and failed to connect.
    tried: u64,
    last: Option<usize>,
    retries_left: u32,
    local_port: u16,
    pub instance: Option<Arc<str>>,
}

impl Ctx {
    pub fn gateway_and_route(&self) -> Option<(&str, &str)> {
        let s = self.snapshot.as_ref()?;
        let sel = self.selected?;
        let g = &s.gateways[sel.gateway];
        Some((&g.name, &g.routes[sel.route].key))
    }
}

fn refusal_response(r: Refusal) -> (u16, &'static [u8]) {
    match r {
        Refusal::UnknownHost => (404, b"no gateway for this host\n"),
        Refusal::Misdirected => (421, b"this host is not served on this listener\n"),
        Refusal::NoRoute => (503, b"no route available\n"),
    }
}

/// The Host a request is for: the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host(req: &RequestHeader) -> &[u8] {
    match req.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req
            .headers
            .get(http::header::HOST)
            .map(|v| v.as_bytes())
            .unwrap_or(b""),
    }
}

fn local_port(session: &Session) -> u16 {
    session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Weir {
    async fn refuse(&self, session: &mut Session, r: Refusal) -> Result<bool> {
        let (status, body) = refusal_response(r);
        session
            .respond_error_with_body(status, Bytes::from_static(body))
            .await?;
        Ok(true)
    }

    fn pick(&self, ctx: &Ctx) -> Option<Upstream> {
        let snapshot = ctx.snapshot.as_ref()?;
        match &snapshot.route(ctx.selected?).target {
            Target::Pool(pool) => pool.pick(ctx.tried).cloned(),
            Target::External(ext) => ext.pick(ctx.tried),
            Target::Respond(_) | Target::Chain(_) => None,
        }
    }

    /// How many upstream candidates the selected route has.
    fn candidates(&self, ctx: &Ctx) -> usize {
        let (Some(snapshot), Some(sel)) = (&ctx.snapshot, ctx.selected) else {
            return 0;
        };
        match &snapshot.route(sel).target {
            Target::Pool(pool) => pool.instances.len(),
            Target::External(ext) => ext.peers.load().len(),
            _ => 0,
        }
    }
}

#[async_trait]
impl ProxyHttp for Weir {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = self.current.load_full();
        let port = local_port(session);
        let defaults = &snapshot.defaults;
        session.set_keepalive(Some(defaults.idle_timeout.as_secs().max(1)));
        session.set_read_timeout(Some(defaults.request_header_timeout));
        ctx.retries_left = defaults.retries;
        ctx.local_port = port;
        let Some(entry) = snapshot.entry(port) else {
            return self.refuse(session, Refusal::UnknownHost).await;
        };
        let req = session.req_header();
        if req.version == http::Version::HTTP_11 && request_host(req).is_empty() {
            // RFC 9112 §3.2: an HTTP/1.1 request without Host is a client error.
            session
                .respond_error_with_body(400, Bytes::from_static(b"missing Host header\n"))
                .await?;
            return Ok(true);
        }
        let view = RequestView {
            host: request_host(session.req_header()),
        };
        let selected = match snapshot.select(entry, &view) {
            Ok(s) => s,
            Err(r) => return self.refuse(session, r).await,
        };
        if let Target::Respond(respond) = &snapshot.route(selected).target {
            let header = Box::new(respond.header.clone());
            let body = respond.body.clone();
            ctx.snapshot = Some(snapshot);
            ctx.selected = Some(selected);
            let head_only = session.req_header().method == http::Method::HEAD;
            session.write_response_header(header, head_only).await?;
            if !head_only {
                session.write_response_body(Some(body), true).await?;
            }
            return Ok(true);
        }
        ctx.snapshot = Some(snapshot);
        ctx.selected = Some(selected);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(upstream) = self.pick(ctx) else {
            return Error::e_explain(HTTPStatus(503), "no upstream instance available");
        };
        ctx.last = Some(upstream.index);
        ctx.instance = Some(upstream.name.clone());
        Ok(Box::new(upstream.peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(i) = ctx.last.filter(|i| *i < 64) {
            ctx.tried |= 1 << i;
        }
        let untried = self.candidates(ctx) > ctx.tried.count_ones() as usize;
        if ctx.retries_left > 0 && untried {
            ctx.retries_left -= 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // A client that hangs up mid-request is routine at an edge, not an error to log.
        error.esource() == &ErrorSource::Downstream && error.etype() == &ConnectionClosed
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = match (client, &ctx.snapshot) {
            (Some(ip), Some(s)) => s.defaults.is_trusted(ip),
            _ => false,
        };
        // The downstream request still holds the original Host.
        let host = request_host(session.req_header());
        let host = (!host.is_empty()).then_some(host);
        let fwd = Forwarding {
            client,
            trusted,
            proto: "http",
            host,
            port: ctx.local_port,
        };
        forward::apply(upstream_request, &fwd)
    }
}
