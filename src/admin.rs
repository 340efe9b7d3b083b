//! The admin listener (SPEC §6): `GET /healthz` (the process is up) and `GET /readyz`
//! (the config is loaded and every listener accepts connections). The gateway API and
//! `/metrics` come with the observability work; until then they answer 404.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::reload::Status;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;

pub struct Admin {
    pub status: Arc<Status>,
    pub current: Arc<ArcSwap<Snapshot>>,
}

fn text(status: StatusCode, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.into_bytes())
        .unwrap_or_default()
}

impl Admin {
    fn readyz(&self) -> Response<Vec<u8>> {
        if !self.status.ready.load(Ordering::Relaxed) {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: listeners not bound yet\n".into(),
            );
        }
        let restart = self
            .status
            .restart_needed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match restart {
            Some(m) => text(StatusCode::OK, format!("ready; {m}\n")),
            None => text(StatusCode::OK, "ready\n".into()),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
        }
        match req.uri.path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.readyz(),
            "/metrics" => {
                let body = crate::metrics::render(&self.current.load());
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}
