//! Answers weir writes itself, with no upstream: refusals from routing (404, 421,
//! 503), `respond:` routes, 429 from rate limits, and the status an error maps to.
//!
//! This module owns the status codes and bodies of those answers; `proxy` decides
//! when to give them.

use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::http::v2::server::HttpSession;

use crate::snapshot::{Refusal, Respond};

/// Routing's refusal as a status and body.
fn refusal_response(r: Refusal) -> (u16, &'static [u8]) {
    match r {
        Refusal::UnknownHost => (404, b"no gateway for this host\n"),
        Refusal::Misdirected => (421, b"this host is not served on this listener\n"),
        Refusal::NoRoute => (503, b"no route available\n"),
        Refusal::Forbidden => (403, b"forbidden\n"),
        Refusal::NoClientCert => (403, b"a valid client certificate is required\n"),
    }
}

/// Answers a request routing refused.
pub async fn refuse(session: &mut Session, r: Refusal) -> Result<bool> {
    let (status, body) = refusal_response(r);
    plain(session, status, body).await?;
    Ok(true)
}

/// An answer weir writes itself, in place of Pingora's error responses: a short text,
/// not to be cached, and without Pingora's `Server: Pingora` (no `Server` header at
/// all: an edge need not say what it runs). The connection closes after it, as after
/// any error Pingora answers.
pub async fn plain(session: &mut Session, code: u16, body: &'static [u8]) -> Result<()> {
    text(session, code, Bytes::from_static(body)).await
}

/// A plain-text answer from weir, not cached.
pub async fn text(session: &mut Session, code: u16, body: Bytes) -> Result<()> {
    let resp = text_head(code, body.len())?;
    session.write_error_response(resp, body).await
}

fn text_head(code: u16, len: usize) -> Result<pingora::http::ResponseHeader> {
    let mut resp = pingora::http::ResponseHeader::build(code, Some(4))?;
    if len > 0 {
        resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    }
    resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    resp.insert_header(http::header::CACHE_CONTROL, "private, no-store")?;
    Ok(resp)
}

/// `error`'s answer on an HTTP/2 stream weir serves itself (`http2`); the stream ends
/// with it.
pub async fn error_on_stream(session: &mut HttpSession, code: u16) -> Result<()> {
    let body = error_body(code);
    let resp = text_head(code, body.len())?;
    session.write_response_header(Box::new(resp), false)?;
    session.write_body(Bytes::from_static(body), true).await
}

/// The answer to a failed request, as bytes for a connection weir writes to itself
/// (`h1`): what `error` sends, and the connection closes after it.
pub fn error_bytes(code: u16) -> Vec<u8> {
    plain_bytes(code, error_body(code))
}

/// `plain`'s answer as bytes (`h1`): the connection closes after it.
pub fn plain_bytes(code: u16, body: &[u8]) -> Vec<u8> {
    let phrase = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let date = pingora::protocols::http::date::get_cached_date();
    let mut out = format!(
        "HTTP/1.1 {code} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: private, no-store\r\ndate: ",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// 401 with the basic auth challenge.
pub async fn unauthorized(session: &mut Session, challenge: &http::HeaderValue) -> Result<bool> {
    let body: &'static [u8] = b"authentication required\n";
    let mut resp = pingora::http::ResponseHeader::build(401, Some(5))?;
    resp.insert_header(http::header::WWW_AUTHENTICATE, challenge.clone())?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "private, no-store")?;
    session
        .write_error_response(resp, Bytes::from_static(body))
        .await?;
    Ok(true)
}

/// Writes a `respond:` route's answer; returns its status.
/// `edit` adds what the gateway puts on every response (HSTS, header rules).
pub async fn respond(
    session: &mut Session,
    respond: &Respond,
    edit: impl FnOnce(&Session, &mut pingora::http::ResponseHeader),
) -> Result<u16> {
    let head_only = session.req_header().method == http::Method::HEAD;
    let mut header = Box::new(respond.header.clone());
    edit(session, &mut header);
    session.write_response_header(header, head_only).await?;
    if !head_only {
        session
            .write_response_body(Some(respond.body.clone()), true)
            .await?;
    }
    Ok(respond.header.status.as_u16())
}

/// 429, with when to come back.
pub async fn too_many(session: &mut Session, wait: std::time::Duration) -> Result<bool> {
    let body = Bytes::from_static(b"too many requests\n");
    let mut resp = pingora::http::ResponseHeader::build(429, Some(3))?;
    resp.insert_header(
        http::header::RETRY_AFTER,
        crate::ratelimit::retry_after(wait),
    )?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// The status a failed request is answered with (0: the client is gone, nothing to
/// send).
pub fn error_status(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream if e.etype() == &ReadTimedout => 504,
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// The body of the answer to a failed request.
fn error_body(code: u16) -> &'static [u8] {
    match code {
        502 => b"upstream unavailable\n",
        503 => b"no upstream available\n",
        504 => b"upstream timed out\n",
        _ => b"",
    }
}

/// Answers a failed request with `code`, as well as the connection still allows.
pub async fn error(session: &mut Session, code: u16) {
    if let Err(e) = plain(session, code, error_body(code)).await {
        log::debug!("could not send the error response: {e}");
    }
}
