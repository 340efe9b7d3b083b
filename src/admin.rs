//! The admin listener (SPEC §6): `GET /healthz`, `GET /readyz`, `GET /metrics`, and
//! Vamp's gateway API under `/api/v1/gateways`.
//!
//! Reads show each gateway as loaded, with every route's configured and effective
//! weight and every instance's health and in-flight count (JSON, or YAML with
//! `Accept: application/x-yaml`). Writes (`POST`, `PUT`, `DELETE`) need
//! `admin.token_file` and `Authorization: Bearer <token>`; a body is validated with the
//! whole config exactly as a file edit would be, persisted atomically to
//! `gateways.d/{name}.yaml` beside the main config, and applied through the same reload
//! as every other change.

// Handlers return the error response itself as `Err`; its size does not matter on the
// admin path, and it keeps every early return one `?`.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::config::load::{self, parse_gateway_file};
use crate::config::GatewayConfig;
use crate::diag::Diagnostics;
use crate::health::HealthRegistry;
use crate::reload::Reloader;
use crate::snapshot::{build, Gateway, Snapshot, Target};

/// Largest request body the API reads.
const MAX_BODY: usize = 1 << 20;
const API: &str = "/api/v1/gateways";

pub struct Admin {
    pub reloader: Arc<Reloader>,
    /// Serialises writes: each validates against the files as the previous one left them.
    writes: Mutex<()>,
}

impl Admin {
    pub fn new(reloader: Arc<Reloader>) -> Admin {
        Admin {
            reloader,
            writes: Mutex::new(()),
        }
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
                            health: u.health.state().as_str(),
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
    fn readyz(&self) -> Response<Vec<u8>> {
        let status = &self.reloader.status;
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
        match restart {
            Some(m) => text(StatusCode::OK, format!("ready; {m}\n")),
            None => text(StatusCode::OK, "ready\n"),
        }
    }

    /// 403 without a configured token, 401 without the right one.
    fn authorize(
        &self,
        session: &ServerSession,
        snapshot: &Snapshot,
    ) -> Result<(), Response<Vec<u8>>> {
        let Some(file) = &snapshot.admin_token_file else {
            return Err(message(
                StatusCode::FORBIDDEN,
                "writes are disabled: set admin.token_file",
            ));
        };
        let token = std::fs::read_to_string(file).map_err(|e| {
            message(
                StatusCode::FORBIDDEN,
                format!("writes are disabled: cannot read admin.token_file: {e}"),
            )
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(message(
                StatusCode::FORBIDDEN,
                "writes are disabled: admin.token_file is empty",
            ));
        }
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
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
                Some(i) => document(StatusCode::OK, &view(&snapshot.gateways[i]), yaml),
                None => message(StatusCode::NOT_FOUND, format!("no gateway {name:?}")),
            },
        }
    }

    /// POST (name from the body), PUT (name in the path), DELETE.
    async fn write(
        &self,
        session: &mut ServerSession,
        method: &Method,
        name: Option<String>,
    ) -> Response<Vec<u8>> {
        let snapshot = self.reloader.current.load_full();
        if let Err(denied) = self.authorize(session, &snapshot) {
            return denied;
        }
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let _one_at_a_time = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let result = if *method == Method::DELETE {
            match name {
                Some(n) => self.delete(&n),
                None => Err(message(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "DELETE needs a gateway name",
                )),
            }
        } else {
            self.put(&body, name.as_deref(), *method == Method::POST)
        };
        result.unwrap_or_else(|r| r)
    }

    /// Where the API keeps a gateway, and whether the config includes that file.
    fn gateway_file(&self, name: &str) -> Result<PathBuf, Response<Vec<u8>>> {
        let loaded = load::load(&self.reloader.path).map_err(|d| {
            message(
                StatusCode::CONFLICT,
                format!("the config on disk does not load: {d}"),
            )
        })?;
        let file = loaded
            .base_dir
            .join("gateways.d")
            .join(format!("{name}.yaml"));
        let included = loaded.config.include.iter().any(|p| {
            glob::Pattern::new(&loaded.base_dir.join(p).to_string_lossy())
                .is_ok_and(|pat| pat.matches_path(&file))
        });
        if !included {
            return Err(message(
                StatusCode::CONFLICT,
                "the main config does not include gateways.d/*.yaml, where the API keeps gateways",
            ));
        }
        Ok(file)
    }

    fn put(
        &self,
        body: &[u8],
        path_name: Option<&str>,
        create: bool,
    ) -> Result<Response<Vec<u8>>, Response<Vec<u8>>> {
        let text = std::str::from_utf8(body)
            .map_err(|_| message(StatusCode::BAD_REQUEST, "the body is not UTF-8"))?;
        let mut errors = Diagnostics::default();
        let mut parsed = parse_gateway_file(Path::new("request body"), text, &mut errors);
        if !errors.is_empty() {
            return Err(message(StatusCode::BAD_REQUEST, errors.to_string()));
        }
        let gateway = match (parsed.pop(), parsed.is_empty()) {
            (Some(g), true) => g,
            _ => {
                return Err(message(
                    StatusCode::BAD_REQUEST,
                    "the body must hold exactly one gateway",
                ))
            }
        };
        if let Some(n) = path_name {
            if n != gateway.name {
                return Err(message(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the name in the path ({n:?}) differs from the body's ({:?})",
                        gateway.name
                    ),
                ));
            }
        }
        let file = self.gateway_file(&gateway.name)?;
        let exists = self
            .reloader
            .current
            .load()
            .gateway_by_name(&gateway.name)
            .is_some();
        if create && exists {
            return Err(message(
                StatusCode::CONFLICT,
                format!("gateway {:?} exists: PUT to change it", gateway.name),
            ));
        }
        let yaml = serde_yaml::to_string(&gateway)
            .map_err(|e| message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        self.validate_with(&file, Some(&yaml))?;
        write_atomically(&file, &yaml)?;
        self.apply()?;
        let snapshot = self.reloader.current.load();
        let i = snapshot.gateway_by_name(&gateway.name).ok_or_else(|| {
            message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "written, but not in the reloaded config",
            )
        })?;
        Ok(document(
            StatusCode::ACCEPTED,
            &view(&snapshot.gateways[i]),
            false,
        ))
    }

    fn delete(&self, name: &str) -> Result<Response<Vec<u8>>, Response<Vec<u8>>> {
        let file = self.gateway_file(name)?;
        if !file.exists() {
            let exists = self.reloader.current.load().gateway_by_name(name).is_some();
            return Err(if exists {
                message(
                    StatusCode::CONFLICT,
                    format!("gateway {name:?} is not in gateways.d: edit the file it is in"),
                )
            } else {
                message(StatusCode::NOT_FOUND, format!("no gateway {name:?}"))
            });
        }
        self.validate_with(&file, None)?;
        std::fs::remove_file(&file).map_err(|e| {
            message(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("removing {}: {e}", file.display()),
            )
        })?;
        self.apply()?;
        Ok(message(
            StatusCode::ACCEPTED,
            format!("gateway {name:?} deleted"),
        ))
    }

    /// Validates the whole config as it would be with `file` holding `content` (or
    /// gone), without touching the disk.
    fn validate_with(&self, file: &Path, content: Option<&str>) -> Result<(), Response<Vec<u8>>> {
        let mut loaded = load::load(&self.reloader.path).map_err(|d| {
            message(
                StatusCode::CONFLICT,
                format!("the config on disk does not load: {d}"),
            )
        })?;
        loaded.config.gateways.retain(|g| g.source != file);
        if let Some(text) = content {
            let mut errors = Diagnostics::default();
            let gateways = parse_gateway_file(file, text, &mut errors);
            if !errors.is_empty() {
                return Err(message(StatusCode::BAD_REQUEST, errors.to_string()));
            }
            loaded.config.gateways.extend(gateways);
        }
        build(&loaded, &HealthRegistry::default())
            .map(|_| ())
            .map_err(|d| message(StatusCode::BAD_REQUEST, d.to_string()))
    }

    fn apply(&self) -> Result<(), Response<Vec<u8>>> {
        self.reloader.reload_logged(true, "admin API");
        match self
            .reloader
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            Some(e) => Err(message(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("written, but the reload failed: {e}"),
            )),
            None => Ok(()),
        }
    }
}

/// Writes a temp file beside `path` and renames it over: readers see all or nothing.
fn write_atomically(path: &Path, content: &str) -> Result<(), Response<Vec<u8>>> {
    let fail = |e: std::io::Error| {
        message(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("writing {}: {e}", path.display()),
        )
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("gateway".into(), |n| n.to_string_lossy())
    ));
    std::fs::write(&tmp, content).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
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
                let body = crate::metrics::render(&self.reloader.current.load());
                bytes(StatusCode::OK, "text/plain; version=0.0.4", body)
            }
            API if read => self.get(None, yaml),
            API if method == Method::POST => self.write(session, &method, None).await,
            p if p.starts_with(API) && p[API.len()..].starts_with('/') => {
                let name = &p[API.len() + 1..];
                if name.is_empty() || name.contains('/') {
                    return message(StatusCode::NOT_FOUND, "not found");
                }
                match method {
                    Method::GET | Method::HEAD => self.get(Some(name), yaml),
                    Method::PUT | Method::DELETE => {
                        self.write(session, &method, Some(name.to_string())).await
                    }
                    _ => message(StatusCode::METHOD_NOT_ALLOWED, "use GET, PUT or DELETE"),
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
