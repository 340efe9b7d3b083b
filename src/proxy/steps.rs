//! The proxy's steps between Pingora's phases: rewriting, redirects, weir's own
//! answers, picking an instance, retrying and rerouting.

use super::view::*;
use super::{Ctx, Weir};
use crate::accesslog::{self, AccessLog};
use crate::answer;
use crate::forward;
use crate::framing::pace::Progress;
use crate::metrics;
use crate::mirror::MirrorTarget;
use crate::retry::Failure;
use crate::rewrite;
use crate::snapshot::{Entry, Snapshot, Target};
use crate::upstream::{Tried, Upstream};
use pingora::http::RequestHeader;
use pingora::prelude::*;

impl Weir {
    /// An HTTP/2 request head over its listener's limits, answered 431 or 414 (HTTP/1
    /// heads are held to them by the guard before Pingora parses them).
    pub(super) async fn refuse_over_limits(
        &self,
        session: &mut Session,
        snapshot: &Snapshot,
        port: u16,
    ) -> Option<Result<bool>> {
        if !session.is_http2() {
            return None;
        }
        let req = session.req_header();
        let limits = snapshot.limits_for(port).framing;
        let refused = limits
            .check_head(&req.method, &req.uri, &req.headers)
            .err()?;
        if self.metrics {
            metrics::request_refused(&snapshot.port_label(port), refused.status());
        }
        log::debug!("refused an HTTP/2 request: {}", refused.reason());
        let body = bytes::Bytes::from(format!("{}\n", refused.reason()));
        let answered = answer::text(session, refused.status(), body).await;
        Some(answered.map(|()| true))
    }

    /// `n` more bytes of an HTTP/2 request body, reported to the connection task that
    /// holds the stream to its pace (HTTP/1 bodies are paced by the guard).
    pub(super) fn pace_stream(session: &Session, n: u64, end: bool) {
        let watched = session
            .req_header()
            .extensions
            .get::<std::sync::Arc<Progress>>();
        if let Some(progress) = watched {
            progress.advance(n, std::time::Instant::now());
            if end {
                progress.finish();
            }
        }
    }

    pub(super) fn write_access_log(
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
    pub(super) fn rewrite(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &Ctx,
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
        let view = request_view(session);
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
    pub(super) async fn redirect(
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
    pub(super) async fn too_many(
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
    pub(super) fn body_too_large(&self, session: &Session, ctx: &Ctx) -> bool {
        let max = ctx.max_body();
        max > 0 && declared_length(session.req_header()).is_some_and(|n| n > max)
    }

    /// Writes a `respond:` route's answer.
    pub(super) async fn respond(&self, session: &mut Session, ctx: &Ctx) -> Result<u16> {
        match ctx.target() {
            Some(Target::Respond(respond)) => {
                answer::respond(session, respond, |s, h| gateway_headers(s, ctx, h)).await
            }
            _ => Ok(0),
        }
    }

    pub(super) fn pick(session: &Session, ctx: &Ctx) -> Option<Upstream> {
        match ctx.target()? {
            Target::Pool(pool) => {
                let pinned = ctx.selected?.pinned.and_then(|i| pool.pinned(i, ctx.tried));
                let view = request_view(session);
                pinned.or_else(|| pool.pick(ctx.tried, &view)).cloned()
            }
            Target::External(ext) => ext.pick(ctx.tried),
            Target::Respond(_) | Target::Chain(_) => None,
        }
    }

    /// Whether the route retries this failure now: its policy covers it, another
    /// instance can take the request, and the budget pays (counted either way).
    pub(super) fn may_retry(ctx: &Ctx, failure: Failure, method: &http::Method) -> bool {
        let (Some(snapshot), Some(sel)) = (&ctx.snapshot, ctx.selected) else {
            return false;
        };
        let route = snapshot.route(sel);
        let another = match &route.target {
            Target::Pool(p) => p.another(ctx.last, ctx.tried),
            Target::External(e) => e.another(ctx.last, ctx.tried),
            Target::Respond(_) | Target::Chain(_) => false,
        };
        // A connect failure may still move the request to another route.
        let another = another || failure == Failure::Connect;
        if !another || !route.retry.covers(failure, method) {
            return false;
        }
        let gateway = &snapshot.gateways[sel.gateway].name;
        let paid = route.retry.budget().withdraw();
        metrics::retry(gateway, &route.key, paid.then_some(failure.reason()));
        paid
    }

    /// Tells the route's outlier detection how the instance last tried did; an
    /// ejection is logged, counted and taken out of the schedules.
    pub(super) fn outcome(ctx: &Ctx, failed: bool) {
        let (Some(snapshot), Some(sel)) = (&ctx.snapshot, ctx.selected) else {
            return;
        };
        let route = snapshot.route(sel);
        let (Some(outlier), Target::Pool(pool)) = (&route.outlier, &route.target) else {
            return;
        };
        let Some(u) = ctx.last.and_then(|i| pool.instances.get(i)) else {
            return;
        };
        if let Some(length) = outlier.record(&pool.instances, u, failed) {
            let gateway = &snapshot.gateways[sel.gateway].name;
            log::warn!(
                "gateway {gateway:?}, route {:?}: instance {} ejected for {:?}: it kept failing",
                route.key,
                u.name,
                length
            );
            metrics::ejected(gateway, &route.key, &u.name);
            snapshot.refresh_health();
        }
    }

    /// Where the selected route's mirror copy goes: an instance of the mirror route
    /// (by its balance) or an address of its `[host:port]`.
    pub(super) fn mirror_peer(
        snapshot: &Snapshot,
        sel: crate::snapshot::Selected,
        copy: &crate::mirror::Copy,
    ) -> Option<pingora::upstreams::peer::HttpPeer> {
        let g = &snapshot.gateways[sel.gateway];
        let mirror = g.routes[sel.route].mirror.as_ref()?;
        let external = match &mirror.target {
            MirrorTarget::External(e) => e,
            MirrorTarget::Route(i) => match &g.routes[*i].target {
                Target::External(e) => e,
                Target::Pool(p) => {
                    let view = view_of(copy.header(), None);
                    return p.pick(Tried::default(), &view).map(|u| u.peer.clone());
                }
                _ => return None,
            },
        };
        external.pick(Tried::default()).map(|u| u.peer)
    }

    /// The try failed after connecting: the next goes to another instance.
    pub(super) fn retry_elsewhere(ctx: &mut Ctx) {
        ctx.retries_left = ctx.retries_left.saturating_sub(1);
        ctx.inflight = None;
        ctx.upstream_status = None;
        if let Some(i) = ctx.last {
            ctx.tried.add(i);
        }
    }

    /// After a failed connect left the chosen route with no instance to try, routes the
    /// request again: the dead route is out of the schedule by now.
    pub(super) fn reroute(session: &Session, ctx: &mut Ctx) -> bool {
        let (Some(snapshot), Some(entry)) = (&ctx.snapshot, ctx.entry) else {
            return false;
        };
        let req = session.req_header();
        let view = request_view(session);
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
