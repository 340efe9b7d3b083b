//! The admin listener: `GET /healthz`, `GET /readyz`, `GET /metrics`, and Vamp's
//! gateway API under `/api/v1/gateways`.
//!
//! Reads show each gateway as loaded, with every route's configured and effective
//! weight and every instance's health and in-flight count (JSON, or YAML with
//! `Accept: application/x-yaml`); with `admin.read_token_file` set they need a token.
//! Writes (`POST`, `PUT`, `PATCH`, `DELETE`) are `write`'s.

// Handlers return the error response itself as `Err`; its size does not matter on the
// admin path, and it keeps every early return one `?`.
#![allow(clippy::result_large_err)]

mod form;
mod write;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::config::GatewayConfig;
use crate::reload::Reloader;
use crate::snapshot::{Gateway, Target};

/// Largest request body the API reads.
const MAX_BODY: usize = 1 << 20;
const API: &str = "/api/v1/gateways";
/// `weir reload` asks here.
const RELOAD: &str = "/api/v1/reload";

pub struct Admin {
    pub reloader: Arc<Reloader>,
    /// Serialises writes: each validates against the files as the previous one left them.
    writes: Arc<Mutex<()>>,
}

impl Admin {
    pub fn new(reloader: Arc<Reloader>) -> Admin {
        Admin {
            reloader,
            writes: Arc::default(),
        }
    }
}

/// What a request under `/api/` needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// `ETag: "REVISION"`: the store revision of a gateway, for `If-Match` on a write.
fn set_etag(reply: &mut Response<Vec<u8>>, revision: i64) {
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{revision}\"")) {
        reply.headers_mut().insert(http::header::ETAG, v);
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Vec<u8>> {
    bytes(
        status,
        "text/plain; charset=utf-8",
        body.into().into_bytes(),
    )
}

fn bytes(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn message(status: StatusCode, msg: impl Into<String>) -> Response<Vec<u8>> {
    let body = serde_json::json!({ "message": msg.into() }).to_string();
    bytes(status, "application/json", body.into_bytes())
}

/// A value as JSON, or as YAML when the client asked for it.
fn document<T: Serialize>(status: StatusCode, value: &T, yaml: bool) -> Response<Vec<u8>> {
    let rendered = if yaml {
        serde_yaml::to_string(value).map(|s| ("application/x-yaml", s.into_bytes()))
    } else {
        serde_json::to_vec_pretty(value)
            .map(|v| ("application/json", v))
            .map_err(serde::ser::Error::custom)
    };
    match rendered {
        Ok((ct, body)) => bytes(status, ct, body),
        Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Serialize)]
struct InstanceView<'a> {
    instance: &'a str,
    health: &'static str,
    in_flight: usize,
}

#[derive(Serialize)]
struct RouteView<'a> {
    route: &'a str,
    /// As configured (routes without a weight share the remainder).
    weight: String,
    /// The share of weighted traffic it gets now, 0..1, health taken into account.
    effective_weight: f64,
    target: &'static str,
    instances: Vec<InstanceView<'a>>,
}

#[derive(Serialize)]
struct GatewayView<'a> {
    name: &'a str,
    source: String,
    /// The gateway as loaded.
    config: &'a GatewayConfig,
    routes: Vec<RouteView<'a>>,
}

fn view(g: &Gateway) -> GatewayView<'_> {
    let routes = g
        .routes
        .iter()
        .zip(g.weight_ratios())
        .map(|(r, ratio)| {
            let (target, instances) = match &r.target {
                Target::Pool(p) => (
                    "instances",
                    p.instances
                        .iter()
                        .map(|u| InstanceView {
                            instance: &u.name,
                            health: if u.resolved {
                                u.health.state().as_str()
                            } else {
                                "unresolved"
                            },
                            in_flight: u.health.inflight.load(Ordering::Relaxed),
                        })
                        .collect(),
                ),
                Target::External(_) => ("external", Vec::new()),
                Target::Respond(_) => ("respond", Vec::new()),
                Target::Chain(_) => ("gateway", Vec::new()),
            };
            RouteView {
                route: &r.key,
                weight: crate::config::Percent(r.weight).to_string(),
                effective_weight: ratio,
                target,
                instances,
            }
        })
        .collect();
    GatewayView {
        name: &g.name,
        source: g.source.display().to_string(),
        config: &g.config,
        routes,
    }
}

/// A token file's token: its trimmed content, never empty.
fn read_token(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err("it is empty".into());
    }
    Ok(token.to_string())
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(message(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB"));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(message(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {e}"),
                ))
            }
        }
    }
}

impl Admin {
    /// Reloads the files now and answers with the outcome: 200, or 400 with every error.
    /// It changes nothing the operator did not write, so it needs the write token only
    /// when one is configured.
    async fn reload(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if self.reloader.current.load().admin_token_file.is_some() {
            if let Err(denied) = self.authorize(session, Access::Write) {
                return denied;
            }
        }
        let reloader = self.reloader.clone();
        let outcome =
            tokio::task::spawn_blocking(move || reloader.reload_logged(true, "weir reload")).await;
        match outcome {
            Ok(Ok(crate::reload::Outcome::Applied { gateways, routes })) => message(
                StatusCode::OK,
                format!("reloaded: {gateways} gateway(s), {routes} route(s)"),
            ),
            Ok(Ok(crate::reload::Outcome::Unchanged)) => {
                message(StatusCode::OK, "reloaded: the files are unchanged")
            }
            Ok(Err(errors)) => message(
                StatusCode::BAD_REQUEST,
                format!("reload refused; the running config stays:\n{errors}"),
            ),
            Err(e) => message(StatusCode::INTERNAL_SERVER_ERROR, format!("reload: {e}")),
        }
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        let status = &self.reloader.status;
        if crate::lifecycle::draining() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: stopping\n");
        }
        if !status.ready.load(Ordering::Relaxed) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: listeners not bound yet\n",
            );
        }
        let restart = status
            .restart_needed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // The store being down does not make weir unready: it serves its last good config.
        let store = self
            .reloader
            .fleet
            .as_ref()
            .map(|f| format!("{}\n", f.status_line()))
            .unwrap_or_default();
        match restart {
            Some(m) => text(StatusCode::OK, format!("ready; {m}\n{store}")),
            None => text(StatusCode::OK, format!("ready\n{store}")),
        }
    }

    /// Writes: 403 without a configured write token, 401 without the right one.
    /// Reads: open unless `admin.read_token_file` is set; then 401 without the read or
    /// the write token.
    fn authorize(&self, session: &ServerSession, access: Access) -> Result<(), Response<Vec<u8>>> {
        let snapshot = self.reloader.current.load();
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .trim();
        let write_token = snapshot.admin_token_file.as_deref().map(read_token);
        if access == Access::Read {
            let Some(file) = &snapshot.admin_read_token_file else {
                return Ok(());
            };
            let tokens = [Some(read_token(file)), write_token];
            let ok = tokens
                .iter()
                .flatten()
                .flatten()
                .any(|t| constant_time_eq(given.as_bytes(), t.as_bytes()));
            return if ok {
                Ok(())
            } else {
                Err(message(
                    StatusCode::UNAUTHORIZED,
                    "reads need a bearer token (admin.read_token_file)",
                ))
            };
        }
        let token = match write_token {
            None => {
                return Err(message(
                    StatusCode::FORBIDDEN,
                    "writes are disabled: set admin.token_file",
                ))
            }
            Some(Err(e)) => {
                return Err(message(
                    StatusCode::FORBIDDEN,
                    format!("writes are disabled: admin.token_file: {e}"),
                ))
            }
            Some(Ok(t)) => t,
        };
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(message(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token",
            ))
        }
    }

    fn get(&self, name: Option<&str>, yaml: bool) -> Response<Vec<u8>> {
        let snapshot = self.reloader.current.load();
        match name {
            None => {
                let all: Vec<GatewayView> = snapshot.gateways.iter().map(view).collect();
                document(StatusCode::OK, &all, yaml)
            }
            Some(name) => match snapshot.gateway_by_name(name) {
                Some(i) => {
                    let mut reply = document(StatusCode::OK, &view(&snapshot.gateways[i]), yaml);
                    if let Some(fleet) = &self.reloader.fleet {
                        set_etag(&mut reply, fleet.stored_revision(name));
                    }
                    reply
                }
                None => message(StatusCode::NOT_FOUND, format!("no gateway {name:?}")),
            },
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let yaml = req
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/x-yaml") || a.contains("application/yaml"));
        let read = method == Method::GET || method == Method::HEAD;
        match path.as_str() {
            "/healthz" if read => text(StatusCode::OK, "ok\n"),
            "/readyz" if read => self.readyz(),
            "/metrics" if read => {
                let body = crate::exposition::render(&self.reloader.current.load());
                bytes(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            RELOAD if method == Method::POST => self.reload(session).await,
            RELOAD => message(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
            p if p == API || p.starts_with(API) && p[API.len()..].starts_with('/') => {
                let name = p.get(API.len() + 1..).filter(|n| !n.is_empty());
                if name.is_some_and(|n| n.contains('/')) {
                    return message(StatusCode::NOT_FOUND, "not found");
                }
                let access = if read { Access::Read } else { Access::Write };
                if let Err(denied) = self.authorize(session, access) {
                    return denied;
                }
                let name = name.map(str::to_string);
                match (&method, name) {
                    (&Method::GET | &Method::HEAD, name) => self.get(name.as_deref(), yaml),
                    (&Method::POST, None) => self.write(session, write::Op::Create).await,
                    (&Method::PUT, Some(n)) => self.write(session, write::Op::Replace(n)).await,
                    (&Method::PATCH, Some(n)) => self.write(session, write::Op::Patch(n)).await,
                    (&Method::DELETE, Some(n)) => self.write(session, write::Op::Delete(n)).await,
                    _ => message(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use GET or POST on the collection; GET, PUT, PATCH or DELETE on a gateway",
                    ),
                }
            }
            _ if !read && (path == "/healthz" || path == "/readyz" || path == "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
