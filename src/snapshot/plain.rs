//! Which requests weir's own path (`h1`, `http2`) may serve: the gate over a route's
//! and a gateway's policy. Each check names every field of its type (none left to
//! `..`), so a new policy field does not compile until someone decides whether weir's
//! path serves it; nothing new is skipped there silently.

use super::{GatewayParts, Route, Sticky, Target};

impl Route {
    /// Whether the route needs nothing of a request beyond routing, balancing over its
    /// own instances and the forwarding headers: weir's own HTTP/1 path (`h1`) serves
    /// such a route's requests; any other goes through Pingora's proxy.
    ///
    /// Every field is named here, none left to `..`: a new policy field fails to
    /// compile until someone decides whether weir's own path serves it (and so can
    /// never be skipped there silently).
    pub fn is_plain(&self) -> bool {
        let Route {
            // Routing itself, done the same way on both paths.
            key: _,
            weight: _,
            condition: _,
            strength: _,
            sticky_id: _,
            metrics: _,
            // The body limit is checked on both paths (413).
            max_body: _,
            target,
            rewrites,
            set_cookie,
            rate,
            request_headers,
            response_headers,
            retry,
            deadline,
            outlier,
            auth,
            compression,
            mirror,
        } = self;
        matches!(target, Target::Pool(_))
            && rewrites.is_empty()
            && set_cookie.is_none()
            && rate.is_none()
            && request_headers.is_none()
            && response_headers.is_none()
            && retry.before_response_only()
            && deadline.is_none()
            && outlier.is_none()
            && auth.is_none()
            && compression.is_none()
            && mirror.is_none()
    }
}

impl GatewayParts {
    /// Whether the gateway's own policy leaves its requests to weir's own path. Every
    /// field is named, none left to `..` (see `Route::is_plain`).
    pub(super) fn is_plain(&self) -> bool {
        let GatewayParts {
            // Served the same way on both paths: HSTS is written by both, allow/deny
            // and a required client certificate are checked when routing, and a
            // connection with a certificate goes to Pingora's path.
            hsts: _,
            access: _,
            client_cert: _,
            config: _,
            name: _,
            source: _,
            listener_mask: _,
            port: _,
            // TCP gateways never reach either HTTP path.
            tcp: _,
            sticky,
            rate,
        } = self;
        rate.is_none() && *sticky == Sticky::None
    }
}
