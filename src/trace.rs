//! Distributed tracing (top-level `tracing:`): W3C `traceparent`/`tracestate` taken from
//! the client (or a new trace started), one server span per request with weir's span
//! as the parent of the upstream request, and spans exported over OTLP/HTTP (protobuf)
//! to a collector.
//!
//! This module owns the settings (checked at build), the OpenTelemetry pipeline (built
//! by the apply step when the settings change, shut down with the last snapshot that
//! holds it) and what a request does with it. The export runs on the SDK's own thread
//! through a bounded queue (spans beyond it are dropped, never waited for), with a
//! blocking HTTP client whose every call is bounded in time: a slow or dead collector
//! costs requests nothing.

use std::fmt;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use pingora::http::RequestHeader;

use crate::config::TracingConfig;

/// Spans waiting for export; more are dropped.
const QUEUE: usize = 4096;
const BATCH: usize = 512;
/// How long one export may take, connect to answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// `tracing:` as checked at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `http://host:port/v1/traces`.
    pub endpoint: String,
    /// Share of new traces sampled, 0.0–1.0 (a client's sampled flag is followed).
    pub ratio: f64,
    pub service_name: String,
}

impl Settings {
    pub fn check(c: &TracingConfig) -> Result<Settings, String> {
        let endpoint = c.otlp_endpoint.trim();
        let Some(rest) = endpoint.strip_prefix("http://") else {
            return Err(format!(
                "tracing.otlp_endpoint {endpoint:?}: expected http://HOST:PORT (an OTLP/HTTP collector; https is not supported, run a local collector)"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.parse::<http::uri::Authority>().is_err() {
            return Err(format!("tracing.otlp_endpoint {endpoint:?}: no host:port"));
        }
        // A bare address gets the standard path.
        let endpoint = if rest.contains('/') {
            format!("http://{rest}")
        } else {
            format!("http://{rest}/v1/traces")
        };
        if c.service_name.is_empty() || c.service_name.len() > 256 {
            return Err("tracing.service_name must be 1 to 256 characters".into());
        }
        Ok(Settings {
            endpoint,
            ratio: f64::from(c.sample.basis_points().min(crate::config::units::FULL)) / 10_000.0,
            service_name: c.service_name.clone(),
        })
    }
}

/// The running pipeline for one set of settings.
pub struct Tracer {
    pub settings: Settings,
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Sends what is queued, within the export timeout, on a thread of its own: the
        // last holder may be a request on a proxy thread.
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("weir-trace-stop".into())
            .spawn(move || provider.shutdown_with_timeout(EXPORT_TIMEOUT));
    }
}

impl Tracer {
    pub fn start(settings: Settings) -> Result<Tracer, String> {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client::new())
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("tracing: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE)
            .with_max_export_batch_size(BATCH)
            .with_scheduled_delay(Duration::from_millis(500))
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("weir");
        Ok(Tracer {
            settings,
            provider,
            tracer,
        })
    }

    /// Starts the server span of a request, child of the client's `traceparent` if it
    /// sent a valid one.
    pub fn begin(&self, req: &RequestHeader, start: SystemTime) -> Context {
        let parent = TraceContextPropagator::new().extract(&Headers(req));
        let span = self
            .tracer
            .span_builder(req.method.as_str().to_string())
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }
}

/// Writes `traceparent` (and `tracestate`) naming the request's span on the request to
/// the upstream.
pub fn inject(cx: &Context, upstream: &mut RequestHeader) {
    TraceContextPropagator::new().inject_context(cx, &mut HeadersMut(upstream));
}

/// What a finished request adds to its span, then ends it.
pub struct Finish<'a> {
    pub gateway: Option<&'a str>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
}

pub fn finish(cx: &Context, f: Finish) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    let mut attrs = vec![
        KeyValue::new("url.path", f.path.to_string()),
        KeyValue::new("http.response.status_code", i64::from(f.status)),
    ];
    for (k, v) in [
        ("weir.gateway", f.gateway),
        ("weir.route", f.route),
        ("weir.upstream", f.upstream),
    ] {
        if let Some(v) = v {
            attrs.push(KeyValue::new(k, v.to_string()));
        }
    }
    if let Some(s) = f.upstream_status {
        attrs.push(KeyValue::new("weir.upstream_status", i64::from(s)));
    }
    span.set_attributes(attrs);
    if f.status >= 500 {
        span.set_status(opentelemetry::trace::Status::error(format!(
            "status {}",
            f.status
        )));
    }
    span.end();
}

struct Headers<'a>(&'a RequestHeader);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.headers.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut RequestHeader);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let _ = self.0.insert_header(key.to_string(), value);
    }
}

/// The exporter's HTTP client: blocking (the SDK exports on its own thread), plain
/// HTTP, bounded in time and in the answer it reads.
#[derive(Debug)]
struct Client(ureq::Agent);

impl Client {
    fn new() -> Client {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(EXPORT_TIMEOUT))
            .http_status_as_error(false)
            .build();
        Client(ureq::Agent::new_with_config(config))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut answer = self
            .0
            .run(http::Request::from_parts(parts, body.to_vec()))?;
        let status = answer.status();
        let body = answer
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_to_vec()
            .unwrap_or_default();
        Ok(http::Response::builder()
            .status(status)
            .body(bytes::Bytes::from(body))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> TracingConfig {
        serde_yaml::from_str(yaml).expect("parses")
    }

    #[test]
    fn settings_are_checked() {
        let s = Settings::check(&config(
            "{ otlp_endpoint: \"http://127.0.0.1:4318\", sample: 10% }",
        ))
        .expect("valid");
        assert_eq!(s.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert!((s.ratio - 0.1).abs() < 1e-9);
        assert_eq!(s.service_name, "weir");
        let own =
            Settings::check(&config("{ otlp_endpoint: \"http://c:4318/custom\" }")).expect("valid");
        assert_eq!(own.endpoint, "http://c:4318/custom");
        for (yaml, want) in [
            (
                "{ otlp_endpoint: \"https://c:4318\" }",
                "https is not supported",
            ),
            ("{ otlp_endpoint: \"c:4318\" }", "expected http://"),
            ("{ otlp_endpoint: \"http://\" }", "no host:port"),
            (
                "{ otlp_endpoint: \"http://c:4318\", service_name: \"\" }",
                "service_name",
            ),
        ] {
            let e = Settings::check(&config(yaml)).expect_err(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
