//! The `ProxyHttp` implementation: Pingora's request phases mapped onto one snapshot.
//!
//! `request_filter` loads the current snapshot once, routes the request (or answers it:
//! 400, 404, 421, 503, `respond:` routes), and keeps the decision in the context;
//! `upstream_peer` picks the instance (within the route's deadline); `fail_to_connect`
//! marks the instance down (passive health) and retries another instance, or another
//! route when the chosen one has none left; `error_while_proxy` and
//! `upstream_response_filter` retry resets, timeouts and statuses as the route's
//! `retries` allow; `upstream_request_filter` applies header rules and sets the
//! forwarding headers. `view` reads the request, `steps` holds the work between phases.

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

mod steps;
pub(crate) mod view;

use crate::accesslog::AccessLog;
use crate::answer;
use crate::auth::Verdict;
use crate::forward::{self, Forwarding};
use crate::health::InstanceHealth;
use crate::metrics;
use crate::retry::Failure;
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
    /// The route's `timeouts.request` ends here.
    deadline: Option<Instant>,
    /// `upstream_response_filter` refused a response to try another instance.
    status_retry: bool,
    /// Interim (1xx) responses the instance sent so far.
    interim: usize,

    /// Compresses the response body (`compression:`).
    encoder: Option<crate::compress::Encoder>,
    /// The copy of this request for the route's mirror, while it is filled.
    mirror: Option<crate::mirror::Copy>,
    /// The request's span (`tracing:`), in its trace context.
    trace: Option<opentelemetry::Context>,
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

use view::*;

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
            deadline: None,
            status_retry: false,
            interim: 0,
            encoder: None,
            mirror: None,
            trace: None,
            instance: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // One reference count taken per request, kept in `ctx` for the later phases.
        let snapshot: &Snapshot = ctx.snapshot.insert(self.current.load_full());
        if let Some(t) = &snapshot.tracer {
            ctx.trace = Some(t.begin(session.req_header(), std::time::SystemTime::now()));
        }
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
        // The guard holds HTTP/1 heads and bodies to their deadlines (408 past them);
        // Pingora's own read timeout only backs it up.
        let backstop = defaults
            .request_header_timeout
            .max(defaults.limits.framing.body.idle);
        session.set_read_timeout(Some(backstop + std::time::Duration::from_secs(1)));
        ctx.local_port = port;
        if let Some(refused) = self.refuse_over_limits(session, snapshot, port).await {
            return refused;
        }
        let Some(entry) = snapshot.entry(port) else {
            return answer::refuse(session, Refusal::UnknownHost).await;
        };
        // What the connection is, not what the listener is now configured to be (a
        // reload cannot switch a bound listener between TLS and plain).
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // An ACME HTTP-01 validation of a certificate weir is ordering, on any listener.
        let path = session.req_header().uri.path();
        if let Some(answer) = crate::challenge::challenges().http_answer(path) {
            answer::text(session, 200, Bytes::from(answer)).await?;
            return Ok(true);
        }
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
        let view = request_view(session);
        let selected = snapshot.select(entry, request_host(req), &view, &mut ctx.writes);
        let selected = match selected {
            Ok(s) => s,
            Err(r) => return answer::refuse(session, r).await,
        };
        ctx.entry = Some(entry);
        ctx.selected = Some(selected);
        let route = snapshot.route(selected);
        ctx.retries_left = route.retry.attempts;
        route.retry.budget().deposit();
        ctx.deadline = route.deadline.map(|d| ctx.start + d);
        if let Some(wait) = snapshot.rate_limited(selected, &view) {
            return self.too_many(session, ctx, wait).await;
        }
        if let Some(auth) = ctx.route().and_then(|r| r.auth.clone()) {
            let given = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION);
            match auth.check(given).await {
                Verdict::Allowed => {}
                Verdict::Denied => return answer::unauthorized(session, &auth.challenge).await,
                Verdict::Busy => {
                    answer::plain(session, 503, b"authentication is busy, try again\n").await?;
                    return Ok(true);
                }
            }
        }
        if let Some(m) = ctx.route().and_then(|r| r.mirror.as_ref()) {
            if m.take() {
                ctx.mirror = Some(crate::mirror::Copy::new(session.req_header(), m.max_body));
            }
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
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.is_http2() {
            let n = body.as_ref().map_or(0, |b| b.len() as u64);
            Self::pace_stream(session, n, end_of_stream);
        }
        if let Some(b) = body {
            if let Some(copy) = &mut ctx.mirror {
                copy.add(b);
            }
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
        let mut peer = upstream.peer;
        if let Some(deadline) = ctx.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Error::e_explain(HTTPStatus(504), "timeouts.request passed");
            }
            // No try may outlast the request's deadline.
            let o = &mut peer.options;
            for t in [
                &mut o.connection_timeout,
                &mut o.read_timeout,
                &mut o.write_timeout,
            ] {
                *t = Some(t.map_or(left, |t| t.min(left)));
            }
        }
        Ok(Box::new(peer))
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
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = match e.etype() {
            ConnectTimedout => "connect_timeout",
            TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => "tls",
            _ => "connect",
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
        let method = session.req_header().method.clone();
        let retry = ctx.retries_left > 0 && Self::may_retry(ctx, Failure::Connect, &method);
        if retry {
            ctx.retries_left -= 1;
        }
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            // Decided and paid for in upstream_response_filter.
            Self::retry_elsewhere(ctx);
            e.set_retry(true);
            return e;
        }
        // Only a try of which the client has seen nothing, and whose body weir still
        // holds whole, can be made again.
        let untouched = ctx.upstream_status.is_none()
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated();
        let method = session.req_header().method.clone();
        let failure = Failure::of(&e);
        if failure.is_some() {
            Self::outcome(ctx, true);
        }
        if let (Some(failure), true) = (failure, untouched) {
            if ctx.retries_left > 0 && Self::may_retry(ctx, failure, &method) {
                Self::retry_elsewhere(ctx);
                e.set_retry(true);
                return e;
            }
        }
        // Pingora's rule: an idempotent request that failed on a reused connection (a
        // keep-alive race) is tried once more.
        if untouched && method.is_idempotent() {
            e.retry.decide_reuse(client_reused);
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
        if response.status != http::StatusCode::SWITCHING_PROTOCOLS {
            // Pingora writes its own Connection; the instance's other hop-by-hop
            // headers end here too.
            for name in &crate::forward::RESPONSE_HOP_BY_HOP[1..] {
                response.remove_header(*name);
            }
        }
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
        if let Some(c) = ctx
            .selected
            .and_then(|sel| snapshot.route(sel).compression.as_ref())
        {
            if let Some(a) = c.choose(session.req_header(), response) {
                ctx.encoder = crate::compress::start(response, a);
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
        if status == 101 && !session.is_upgrade_req() {
            // A switch nobody asked for would turn the connection into a raw tunnel.
            return Error::e_explain(HTTPStatus(502), "upstream switched protocols unasked");
        }
        if (100..200).contains(&status) {
            ctx.interim += 1;
            if ctx.interim > crate::framing::MAX_INTERIM {
                return Error::e_explain(HTTPStatus(502), "too many interim responses");
            }
            return Ok(());
        }
        Self::outcome(ctx, status >= 500);
        if ctx.retries_left > 0
            && ctx.route().is_some_and(|r| r.retry.retries_status(status))
            && !session.as_ref().retry_buffer_truncated()
            && Self::may_retry(ctx, Failure::Status(status), &session.req_header().method)
        {
            // Nothing of this response has gone to the client: drop it, try elsewhere.
            ctx.status_retry = true;
            return Error::e_explain(HTTPStatus(status), "retried on another instance");
        }
        ctx.upstream_status = Some(status);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(encoder) = &mut ctx.encoder {
            let out = encoder.encode(body.as_deref().unwrap_or(&[]), end_of_stream)?;
            // An empty chunk would end a chunked body early.
            *body = (!out.is_empty()).then_some(out);
        }
        Ok(None)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            return Error::e_explain(HTTPStatus(504), "timeouts.request passed");
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.inflight = None;
        if let (Some(copy), Some(snapshot), Some(sel)) =
            (ctx.mirror.take(), &ctx.snapshot, ctx.selected)
        {
            // Only a request weir read whole is copied.
            if session.as_mut().is_body_done() {
                let g = &snapshot.gateways[sel.gateway];
                let peer = Self::mirror_peer(snapshot, sel, &copy);
                crate::mirror::send(peer, &g.name, &g.routes[sel.route].key, copy);
            }
        }
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
        if let Some(cx) = ctx.trace.take() {
            let (gateway, route) = ctx.gateway_and_route().unzip();
            let finish = crate::trace::Finish {
                gateway,
                route,
                upstream: ctx.instance.as_deref(),
                path: session.req_header().uri.path(),
                status,
                upstream_status: ctx.upstream_status,
            };
            crate::trace::finish(&cx, finish);
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // Retries are counted (weir_retries_total); one warning each would flood the
        // log while an instance fails.
        log::debug!("retrying: {error}");
        true
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
        self.rewrite(session, upstream_request, ctx)?;
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
        crate::client_cert::forward(upstream_request, client_cert(session))?;
        if let Some(cx) = &ctx.trace {
            crate::trace::inject(cx, upstream_request);
        }
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
