//! The `ProxyHttp` implementation: Pingora's request phases mapped onto one snapshot.
//!
//! `request_filter` loads the current snapshot once, routes the request (or answers it:
//! 400, 404, 421, 503, `respond:` routes), and keeps the decision in the context;
//! `upstream_peer` picks the instance; `fail_to_connect` marks the instance down
//! (passive health) and retries another instance, or another route when the chosen one
//! has none left; `upstream_request_filter` sets the forwarding headers.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;

use std::time::Instant;

use crate::accesslog::{self, AccessLog};
use crate::answer;
use crate::condition::Request;
use crate::forward::{self, Forwarding};
use crate::headers::{self, Headers as _};
use crate::health::InstanceHealth;
use crate::metrics;
use crate::rewrite;
use crate::snapshot::{Entry, Refusal, Selected, Snapshot, StickyWrites, Target};
use crate::upstream::{InFlight, Tried, Upstream};

/// The proxy service; one per process, shared by every listener.
pub struct Weir {
    pub current: Arc<ArcSwap<Snapshot>>,
    pub access_log: Option<Arc<AccessLog>>,
    /// Record per-request metrics (only when an admin listener can serve them).
    pub metrics: bool,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    /// The `X-Request-Id` sent upstream.
    request_id: Option<String>,
    upstream_status: Option<u16>,
    snapshot: Option<Arc<Snapshot>>,
    entry: Option<Entry>,
    selected: Option<Selected>,
    /// Instances (or resolved addresses) of the selected route that failed to connect.
    tried: Tried,
    /// Index of the instance last handed to Pingora.
    last: Option<usize>,
    retries_left: u32,
    local_port: u16,
    /// A failed connect moved the request onto a `respond:` route.
    respond_instead: bool,
    /// Counts the request on the instance last picked, until it is done with it.
    inflight: Option<InFlight>,
    /// Sticky cookies to set on the response.
    writes: StickyWrites,
    /// The request came over TLS.
    tls: bool,
    /// Request body bytes read so far.
    body_read: u64,
    pub instance: Option<Arc<str>>,
}

impl Ctx {
    pub fn gateway_and_route(&self) -> Option<(&str, &str)> {
        let s = self.snapshot.as_ref()?;
        let sel = self.selected?;
        let g = &s.gateways[sel.gateway];
        Some((&g.name, &g.routes[sel.route].key))
    }

    /// The selected route's `max_body_bytes` (0 = unlimited).
    fn max_body(&self) -> u64 {
        match (&self.snapshot, self.selected) {
            (Some(s), Some(sel)) => s.route(sel).max_body,
            _ => 0,
        }
    }

    fn target(&self) -> Option<&Target> {
        Some(&self.route()?.target)
    }

    fn route(&self) -> Option<&crate::snapshot::Route> {
        Some(self.snapshot.as_ref()?.route(self.selected?))
    }

    /// The health of the instance last handed to Pingora, with whether its route has
    /// an active check.
    fn last_health(&self) -> Option<(&InstanceHealth, bool)> {
        let u = self.last_upstream()?;
        let has_check = matches!(self.target(), Some(Target::Pool(p)) if p.check.is_some());
        Some((&u.health, has_check))
    }

    fn last_upstream(&self) -> Option<&Upstream> {
        match self.target()? {
            Target::Pool(p) => p.instances.get(self.last?),
            _ => None,
        }
    }
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// What conditions read of the request.
fn request_view<'a>(req: &'a RequestHeader, client: Option<std::net::IpAddr>) -> Request<'a> {
    Request::new(
        request_host(req),
        req.uri.path(),
        req.method.as_str(),
        &req.headers,
        client,
    )
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

/// The request's Content-Length. The guard has let through only identical repeated
/// values (as lines, or as a comma list), so the first one stands for all.
fn declared_length(req: &RequestHeader) -> Option<u64> {
    let first = req.headers.get(http::header::CONTENT_LENGTH)?;
    let text = first.to_str().ok()?;
    text.split(',').next()?.trim().parse().ok()
}

/// Identical repeated Content-Length values go upstream as one.
fn one_content_length(req: &mut RequestHeader) -> Result<()> {
    let mut values = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let (Some(first), second) = (values.next(), values.next()) else {
        return Ok(());
    };
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return Ok(());
    }
    match declared_length(req) {
        Some(n) => req.insert_header(http::header::CONTENT_LENGTH, n),
        None => Error::e_explain(HTTPStatus(400), "invalid Content-Length"),
    }
}

/// The TLS version and SNI name of the connection, if it is TLS.
fn tls_names(session: &Session) -> (Option<&str>, Option<&str>) {
    let tls = session.digest().and_then(|d| d.ssl_digest.as_deref());
    (
        tls.map(|d| &*d.version),
        tls.and_then(|d| d.extension.get::<crate::tls::Sni>())
            .map(|s| s.0.as_str()),
    )
}

/// What header rules' templates read, for this request.
fn template_vars<'a>(session: &'a Session, request_id: Option<&'a str>) -> headers::Vars<'a> {
    let (tls_version, sni) = tls_names(session);
    let req = session.req_header();
    headers::Vars {
        req,
        client: client_ip(session),
        request_id: request_id.or_else(|| {
            req.headers
                .get(forward::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
        }),
        sni,
        tls_version,
    }
}

/// What weir adds to every response of a route: HSTS over TLS, then header rules
/// (rules first on upstream responses, so that weir's own headers stand).
fn gateway_headers(session: &Session, ctx: &Ctx, response: &mut pingora::http::ResponseHeader) {
    let (Some(snapshot), Some(sel)) = (&ctx.snapshot, ctx.selected) else {
        return;
    };
    if let Some(rules) = &snapshot.route(sel).response_headers {
        rules.apply(response, &template_vars(session, ctx.request_id.as_deref()));
    }
    if ctx.tls {
        if let Some(hsts) = snapshot.hsts(sel) {
            response.set(&http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
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
    fn write_access_log(
        &self,
        log: &AccessLog,
        session: &Session,
        ctx: &Ctx,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        let req = session.req_header();
        let (gateway, route) = ctx.gateway_and_route().unzip();
        let incoming_id = req
            .headers
            .get(forward::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        let (tls_version, sni) = tls_names(session);
        let entry = accesslog::Entry {
            gateway,
            route,
            instance: ctx.instance.as_deref(),
            upstream_status: ctx.upstream_status,
            request_id: ctx.request_id.as_deref().or(incoming_id),
            tls_version,
            sni,
            ..accesslog::Entry::http(
                req,
                request_host(req),
                client_ip(session),
                status,
                session.body_bytes_sent(),
                elapsed,
            )
        };
        log.log(&entry);
    }

    /// Applies the selected route's rewrites to the upstream request.
    fn rewrite(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &Ctx,
        client: Option<std::net::IpAddr>,
    ) -> Result<()> {
        let Some(snapshot) = &ctx.snapshot else {
            return Ok(());
        };
        let Some(sel) = ctx.selected else {
            return Ok(());
        };
        let rewrites = &snapshot.route(sel).rewrites;
        if rewrites.is_empty() {
            return Ok(());
        }
        let req = session.req_header();
        let view = request_view(req, client);
        if let Some(pq) = rewrite::apply_all(rewrites, &view, req.uri.path(), req.uri.query()) {
            match pq.parse::<http::Uri>() {
                Ok(uri) => upstream_request.set_uri(uri),
                Err(e) => {
                    return Error::e_explain(
                        HTTPStatus(500),
                        format!("rewrite gave an invalid path {pq:?}: {e}"),
                    )
                }
            }
        }
        Ok(())
    }

    /// `redirect_https`: a 308 to the same host and path on the TLS listener,
    /// for hosts that listener serves. ACME HTTP-01 challenges are left to the routes.
    async fn redirect(
        &self,
        session: &mut Session,
        snapshot: &Snapshot,
        to: usize,
        tls_port: u16,
    ) -> Result<bool> {
        let req = session.req_header();
        if req.uri.path().starts_with("/.well-known/acme-challenge/") {
            return Ok(false);
        }
        let host = request_host(req);
        // Only hosts the TLS listener serves are redirected.
        if snapshot.gateway_for(Entry::Shared(to), host).is_err() {
            return Ok(false);
        }
        let name = std::str::from_utf8(crate::vhost::strip_port(host)).unwrap_or("");
        let port = if tls_port == 443 {
            String::new()
        } else {
            format!(":{tls_port}")
        };
        let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("https://{name}{port}{pq}");
        let mut resp = pingora::http::ResponseHeader::build(308, Some(2))?;
        resp.insert_header(http::header::LOCATION, location)?;
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }

    /// 429, with when to come back, counted for the route.
    async fn too_many(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        wait: std::time::Duration,
    ) -> Result<bool> {
        if let (true, Some((g, r))) = (self.metrics, ctx.gateway_and_route()) {
            metrics::rate_limited(g, r);
        }
        answer::too_many(session, wait).await
    }

    /// The request says its body is longer than the route takes.
    fn body_too_large(&self, session: &Session, ctx: &Ctx) -> bool {
        let max = ctx.max_body();
        max > 0 && declared_length(session.req_header()).is_some_and(|n| n > max)
    }

    /// Writes a `respond:` route's answer.
    async fn respond(&self, session: &mut Session, ctx: &Ctx) -> Result<u16> {
        match ctx.target() {
            Some(Target::Respond(respond)) => {
                answer::respond(session, respond, |s, h| gateway_headers(s, ctx, h)).await
            }
            _ => Ok(0),
        }
    }

    fn pick(session: &Session, ctx: &Ctx) -> Option<Upstream> {
        match ctx.target()? {
            Target::Pool(pool) => {
                let pinned = ctx.selected?.pinned.and_then(|i| pool.pinned(i, ctx.tried));
                let view = request_view(session.req_header(), client_ip(session));
                pinned.or_else(|| pool.pick(ctx.tried, &view)).cloned()
            }
            Target::External(ext) => ext.pick(ctx.tried),
            Target::Respond(_) | Target::Chain(_) => None,
        }
    }

    /// After a failed connect left the chosen route with no instance to try, routes the
    /// request again: the dead route is out of the schedule by now.
    fn reroute(session: &Session, ctx: &mut Ctx) -> bool {
        let (Some(snapshot), Some(entry)) = (&ctx.snapshot, ctx.entry) else {
            return false;
        };
        let req = session.req_header();
        let view = request_view(req, client_ip(session));
        ctx.writes.clear();
        match snapshot.select(entry, request_host(req), &view, &mut ctx.writes) {
            Ok(s) if Some(s) != ctx.selected => {
                ctx.selected = Some(s);
                ctx.tried = Tried::default();
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl ProxyHttp for Weir {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: None,
            upstream_status: None,
            snapshot: None,
            entry: None,
            selected: None,
            tried: Tried::default(),
            last: None,
            retries_left: 0,
            local_port: 0,
            respond_instead: false,
            inflight: None,
            writes: StickyWrites::default(),
            tls: false,
            body_read: 0,
            instance: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // One reference count taken per request, kept in `ctx` for the later phases.
        let snapshot: &Snapshot = ctx.snapshot.insert(self.current.load_full());
        let port = local_port(session);
        let defaults = &snapshot.defaults;
        // The idle timeout, for connections that stay open: an HTTP/1.0 request without
        // keep-alive, or one framed by both Transfer-Encoding and Content-Length, closes
        // its connection after the response (Pingora has decided that already).
        // A stopping process closes each connection after its response.
        if crate::lifecycle::draining() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            session.set_keepalive(Some(defaults.idle_timeout.as_secs().max(1)));
        }
        session.set_read_timeout(Some(defaults.request_header_timeout));
        ctx.retries_left = defaults.retries;
        ctx.local_port = port;
        let Some(entry) = snapshot.entry(port) else {
            return answer::refuse(session, Refusal::UnknownHost).await;
        };
        // What the connection is, not what the listener is now configured to be (a
        // reload cannot switch a bound listener between TLS and plain).
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if let Some((to, tls_port)) = snapshot.redirect_of(entry) {
            let redirected = self.redirect(session, snapshot, to, tls_port).await;
            if !matches!(redirected, Ok(false)) {
                return redirected;
            }
        }
        let req = session.req_header();
        if req.method == http::Method::CONNECT {
            // weir is a reverse proxy: a tunnel through it is nothing it offers.
            answer::plain(session, 405, b"CONNECT is not served\n").await?;
            return Ok(true);
        }
        if req.version == http::Version::HTTP_11 && request_host(req).is_empty() {
            // RFC 9112 §3.2: an HTTP/1.1 request without Host is a client error.
            answer::plain(session, 400, b"missing Host header\n").await?;
            return Ok(true);
        }
        let view = request_view(req, client_ip(session));
        let selected = snapshot.select(entry, request_host(req), &view, &mut ctx.writes);
        let selected = match selected {
            Ok(s) => s,
            Err(r) => return answer::refuse(session, r).await,
        };
        ctx.entry = Some(entry);
        ctx.selected = Some(selected);
        if let Some(wait) = snapshot.rate_limited(selected, &view) {
            return self.too_many(session, ctx, wait).await;
        }
        if matches!(ctx.target(), Some(Target::Respond(_))) {
            self.respond(session, ctx).await?;
            return Ok(true);
        }
        if self.body_too_large(session, ctx) {
            answer::plain(session, 413, b"request body too large\n").await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_read += b.len() as u64;
            let max = ctx.max_body();
            if max > 0 && ctx.body_read > max {
                // A body without a length, or longer than it said: cut off here.
                return Error::e_explain(HTTPStatus(413), "request body over max_body_bytes");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut upstream = Self::pick(session, ctx);
        if upstream.is_none() && !ctx.tried.is_empty() && Self::reroute(session, ctx) {
            if matches!(ctx.target(), Some(Target::Respond(_))) {
                ctx.respond_instead = true;
                return Error::e_explain(HTTPStatus(503), "rerouted to a respond route");
            }
            upstream = Self::pick(session, ctx);
        }
        let Some(upstream) = upstream else {
            return Error::e_explain(HTTPStatus(503), "no upstream instance available");
        };
        ctx.inflight = Some(InFlight::new(&upstream));
        ctx.last = Some(upstream.index);
        ctx.instance = Some(upstream.name.clone());
        Ok(Box::new(upstream.peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some((health, _)) = ctx.last_health() {
            health.mark_ok_passive();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = if e.etype() == &ConnectTimedout {
            "connect_timeout"
        } else {
            "connect"
        };
        if let (Some(s), Some(sel)) = (&ctx.snapshot, ctx.selected) {
            let gateway = &s.gateways[sel.gateway].name;
            match ctx.last_upstream() {
                Some(u) => s.connect_failed(gateway, s.route(sel), u, kind),
                // An external target's addresses have no health to mark.
                None => metrics::upstream_error(
                    gateway,
                    &s.route(sel).key,
                    ctx.instance.as_deref().unwrap_or(""),
                    kind,
                ),
            }
        }
        log::debug!("connect to {peer} failed ({kind})");
        ctx.inflight = None;
        if let Some(i) = ctx.last {
            ctx.tried.add(i);
        }
        if ctx.retries_left > 0 {
            ctx.retries_left -= 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if ctx.respond_instead {
            if let Ok(code) = self.respond(session, ctx).await {
                return FailToProxy {
                    error_code: code,
                    can_reuse_downstream: true,
                };
            }
        }
        let code = answer::error_status(e);
        if code > 0 {
            answer::error(session, code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut pingora::http::ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        gateway_headers(session, ctx, response);
        let Some(snapshot) = &ctx.snapshot else {
            return Ok(());
        };
        let tls = ctx.tls;
        for (g, r) in ctx.writes.iter() {
            if let Some(c) = snapshot.route_cookie(g, r) {
                response.append_header(http::header::SET_COOKIE, c.get(tls).clone())?;
            }
        }
        // Instance stickiness: (re)write when the instance is not the one the cookie named.
        if let (Some(sel), Some(u)) = (ctx.selected, ctx.last_upstream()) {
            if sel.pinned != Some(u.index) {
                if let Some(c) = &u.set_cookie {
                    response.append_header(http::header::SET_COOKIE, c.get(tls).clone())?;
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if status == 101 && !session.is_upgrade_req() {
            // A switch nobody asked for would turn the connection into a raw tunnel.
            return Error::e_explain(HTTPStatus(502), "upstream switched protocols unasked");
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.inflight = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        if let Some(snapshot) = ctx.snapshot.as_ref().filter(|_| self.metrics) {
            let m = match ctx.selected {
                Some(sel) => &snapshot.route(sel).metrics,
                None => &snapshot.unrouted,
            };
            if status != 0 {
                m.record(
                    status,
                    elapsed,
                    session.body_bytes_sent(),
                    session.body_bytes_read(),
                );
            }
        }
        if let Some(e) = e.filter(|e| e.esource() == &ErrorSource::Upstream) {
            let kind = match e.etype() {
                // Counted per attempt in fail_to_connect.
                ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | BindError => {
                    None
                }
                ReadTimedout | WriteTimedout => Some("timeout"),
                ConnectionClosed => Some("closed"),
                _ => Some("other"),
            };
            if let (Some(kind), Some((g, r))) = (kind, ctx.gateway_and_route()) {
                metrics::upstream_error(g, r, ctx.instance.as_deref().unwrap_or(""), kind);
            }
        }
        if let Some(log) = &self.access_log {
            self.write_access_log(log, session, ctx, status, elapsed);
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // Clients that hang up, reset HTTP/2 streams or send garbage are routine at an
        // edge: counted, logged at debug level, never one error line each.
        if error.esource() != &ErrorSource::Downstream {
            return false;
        }
        if self.metrics {
            metrics::metrics().client_aborts.inc();
        }
        log::debug!("client: {error}");
        true
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = client_ip(session);
        self.rewrite(session, upstream_request, ctx, client)?;
        one_content_length(upstream_request)?;
        let route = ctx.route();
        let (request_rules, response_rules) = route.map_or((None, None), |r| {
            (r.request_headers.as_deref(), r.response_headers.as_deref())
        });
        if let Some(rules) = request_rules {
            // The id is copied only when a template reads it.
            let mut id = None;
            if rules.uses_request_id() {
                forward::ensure_request_id(upstream_request)?;
                id = upstream_request
                    .headers
                    .get(forward::X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
            }
            rules.apply(upstream_request, &template_vars(session, id.as_deref()));
        }
        let keep_id =
            self.access_log.is_some() || response_rules.is_some_and(|r| r.uses_request_id());
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
            proto: if ctx.tls { "https" } else { "http" },
            host,
            port: ctx.local_port,
        };
        forward::apply(upstream_request, &fwd)?;
        if keep_id {
            ctx.request_id = upstream_request
                .headers
                .get(forward::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        Ok(())
    }
}
