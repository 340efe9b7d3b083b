//! What the proxy reads of a request and its connection: host, client, lengths, TLS
//! names, and the values header rules fill in; and the headers weir adds to responses.

use super::Ctx;
use crate::client_cert::ClientCert;
use crate::condition::Request;
use crate::forward;
use crate::headers::{self, Headers as _};
use pingora::http::RequestHeader;
use pingora::prelude::*;

pub(super) fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// What routing reads of the session's request and connection.
pub(super) fn request_view(session: &Session) -> Request<'_> {
    let mut view = view_of(session.req_header(), client_ip(session));
    view.client_cert = client_cert(session).map(|c| &*c.subject);
    view
}

/// What routing reads of a request head alone.
pub(super) fn view_of(req: &RequestHeader, client: Option<std::net::IpAddr>) -> Request<'_> {
    Request::new(
        request_host(req),
        req.uri.path(),
        req.method.as_str(),
        &req.headers,
        client,
    )
}

/// The Host a request is for: the URI authority (HTTP/2, absolute-form) or `Host`.
pub(crate) fn request_host(req: &RequestHeader) -> &[u8] {
    match req.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req
            .headers
            .get(http::header::HOST)
            .map_or(b"", |v| v.as_bytes()),
    }
}

/// The request's Content-Length. The guard has let through only identical repeated
/// values (as lines, or as a comma list), so the first one stands for all.
pub(super) fn declared_length(req: &RequestHeader) -> Option<u64> {
    let first = req.headers.get(http::header::CONTENT_LENGTH)?;
    let text = first.to_str().ok()?;
    text.split(',').next()?.trim().parse().ok()
}

/// Identical repeated Content-Length values go upstream as one.
pub(super) fn one_content_length(req: &mut RequestHeader) -> Result<()> {
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

/// What the handshake said of the client, if the connection is TLS.
fn tls_peer(session: &Session) -> Option<&crate::tls::Peer> {
    let tls = session.digest()?.ssl_digest.as_deref()?;
    tls.extension.get::<crate::tls::Peer>()
}

/// The TLS version and SNI name of the connection, if it is TLS.
pub(super) fn tls_names(session: &Session) -> (Option<&str>, Option<&str>) {
    let tls = session.digest().and_then(|d| d.ssl_digest.as_deref());
    (
        tls.map(|d| &*d.version),
        tls_peer(session).and_then(|p| p.sni.as_deref()),
    )
}

/// The connection's verified client certificate, if it has one.
pub(super) fn client_cert(session: &Session) -> Option<&ClientCert> {
    tls_peer(session)?.client_cert.as_ref()
}

/// What header rules' templates read, for this request.
pub(super) fn template_vars<'a>(
    session: &'a Session,
    request_id: Option<&'a str>,
) -> headers::Vars<'a> {
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
pub(super) fn gateway_headers(
    session: &Session,
    ctx: &Ctx,
    response: &mut pingora::http::ResponseHeader,
) {
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

pub(super) fn local_port(session: &Session) -> u16 {
    session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port())
        .unwrap_or(0)
}
