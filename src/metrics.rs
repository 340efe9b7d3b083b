//! Prometheus metrics, in one registry for the process.
//!
//! This module owns the metric definitions and the handles the data path records
//! through; it knows nothing of snapshots. Per-route handles are bound when a snapshot
//! is applied and kept in it, so recording a request is a few atomic adds: no label
//! lookup, no allocation, no lock. Exposition (state gauges set from a snapshot at
//! scrape time, series of removed routes deleted) is `exposition`'s.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Kinds of upstream error counted in `weir_upstream_errors_total`.
pub const ERROR_KINDS: [&str; 6] = [
    "connect",
    "connect_timeout",
    "tls",
    "timeout",
    "closed",
    "other",
];

/// Reasons counted in `weir_retries_total` (as `retry::Failure::reason` names them).
pub const RETRY_REASONS: [&str; 4] = ["connect", "reset", "timeout", "status"];

/// Edge-sized latency buckets: 0.5 ms to 30 s.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

pub struct Metrics {
    pub registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) duration: HistogramVec,
    pub(crate) upstream_errors: IntCounterVec,
    pub(crate) bytes_sent: IntCounterVec,
    pub(crate) bytes_received: IntCounterVec,
    pub(crate) instance_healthy: IntGaugeVec,
    pub(crate) route_weight: GaugeVec,
    pub connections_active: IntGaugeVec,
    pub tls_handshake_errors: IntCounterVec,
    pub(crate) requests_refused: IntCounterVec,
    http2_errors: IntCounterVec,
    pub(crate) connections_refused: IntCounterVec,
    pub(crate) rate_limited: IntCounterVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) retries_over_budget: IntCounterVec,
    pub(crate) ejections: IntCounterVec,
    pub(crate) mirrored: IntCounterVec,
    pub(crate) client_aborts: IntCounter,
    pub(crate) cert_expiry: GaugeVec,
    pub(crate) reloads: IntCounterVec,
    pub(crate) last_reload: Gauge,
    pub(crate) ocsp: IntCounterVec,
    pub(crate) acme_orders: IntCounterVec,
    pub(crate) unresolved: IntGauge,
    pub(crate) store_up: IntGauge,
    pub(crate) store_revision: IntGauge,
    pub(crate) store_rejected: IntCounter,
}

/// Registers a collector; every name is registered once, at start, from constants.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: prometheus::Result<C>,
) -> C {
    let c = c.expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let duration = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "weir_request_duration_seconds",
                    "Request duration, from the request header to the end of the response.",
                )
                .buckets(BUCKETS.to_vec()),
                &["gateway", "route"],
            ),
        );
        let instance_healthy = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "weir_instance_healthy",
                    "1 when the instance takes traffic (up or not yet checked), 0 when down.",
                ),
                &["gateway", "route", "upstream"],
            ),
        );
        let route_weight = register(
            &r,
            GaugeVec::new(
            Opts::new(
                "weir_route_weight_ratio",
                "The route's effective share of weighted traffic, 0..1, health taken into account.",
            ),
            &["gateway", "route"],
        ),
        );
        let connections_active = register(
            &r,
            IntGaugeVec::new(
                Opts::new("weir_connections_active", "Open client connections."),
                &["listener"],
            ),
        );
        let cert_expiry = register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "weir_tls_certificate_expiry_timestamp_seconds",
                    "Unix time at which each served certificate expires (an extension).",
                ),
                &["listener", "name", "key"],
            ),
        );
        let last_reload = register(
            &r,
            Gauge::new(
                "weir_config_last_reload_timestamp_seconds",
                "Unix time of the last successful config load.",
            ),
        );
        let unresolved = register(
            &r,
            IntGauge::new(
                "weir_instances_unresolved",
                "Instances whose host name does not resolve (down until it does; an extension).",
            ),
        );
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "weir_build_info",
                    "1, labelled with the running weir's version.",
                ),
                &["version"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            log::warn!("process metrics: {e}");
        }
        Metrics {
            unresolved,
            store_up: register(
                &r,
                IntGauge::new(
                    "weir_config_store_up",
                    "1 while the config store (etcd) is connected and watched, else 0.",
                ),
            ),
            store_revision: register(
                &r,
                IntGauge::new(
                    "weir_config_store_revision",
                    "The config store revision the config in service reflects.",
                ),
            ),
            store_rejected: register(
                &r,
                IntCounter::new(
                    "weir_config_store_rejected_total",
                    "Gateway documents from the config store refused (the version in service kept).",
                ),
            ),
            requests: counter(
                &r,
                "weir_requests_total",
                "Requests answered, by status class.",
                &["gateway", "route", "code"],
            ),
            duration,
            upstream_errors: counter(
                &r,
                "weir_upstream_errors_total",
                "Failed upstream connections and exchanges.",
                &["gateway", "route", "upstream", "kind"],
            ),
            bytes_sent: counter(
                &r,
                "weir_bytes_sent_total",
                "Response body bytes sent to clients.",
                &["gateway", "route"],
            ),
            bytes_received: counter(
                &r,
                "weir_bytes_received_total",
                "Request body bytes received from clients.",
                &["gateway", "route"],
            ),
            instance_healthy,
            route_weight,
            connections_active,
            tls_handshake_errors: counter(
                &r,
                "weir_tls_handshake_errors_total",
                "Failed TLS handshakes.",
                &["listener"],
            ),
            http2_errors: counter(
                &r,
                "weir_http2_connection_errors_total",
                "HTTP/2 connections closed for what the client sent, by reason (protocol: a protocol error or a flood of resets or CONTINUATION frames, answered with GOAWAY; malformed: too many malformed streams).",
                &["listener", "reason"],
            ),
            requests_refused: counter(
                &r,
                "weir_requests_refused_total",
                "Requests answered with a 4xx before routing (bad framing, limits, slow heads).",
                &["listener", "code"],
            ),
            connections_refused: counter(
                &r,
                "weir_connections_refused_total",
                "Connections closed at accept: over max_connections_per_client or max_connections.",
                &["listener", "reason"],
            ),
            rate_limited: counter(
                &r,
                "weir_rate_limited_total",
                "Requests answered 429 by a rate limit.",
                &["gateway", "route"],
            ),
            retries: counter(
                &r,
                "weir_retries_total",
                "Tries sent again to another instance, by what failed.",
                &["gateway", "route", "reason"],
            ),
            retries_over_budget: counter(
                &r,
                "weir_retries_over_budget_total",
                "Retries not made because the route's retry budget was spent.",
                &["gateway", "route"],
            ),
            ejections: counter(
                &r,
                "weir_outlier_ejections_total",
                "Instances ejected by outlier detection.",
                &["gateway", "route", "upstream"],
            ),
            mirrored: counter(
                &r,
                "weir_mirror_requests_total",
                "Request copies for a route's mirror, by result (sent, failed, dropped, skipped).",
                &["gateway", "route", "result"],
            ),
            client_aborts: register(
                &r,
                IntCounter::new(
                    "weir_client_aborts_total",
                    "Requests the client abandoned (hang-ups, reset HTTP/2 streams) before the answer.",
                ),
            ),
            cert_expiry,
            reloads: counter(
                &r,
                "weir_config_reloads_total",
                "Config reloads, by result.",
                &["result"],
            ),
            last_reload,
            ocsp: counter(
                &r,
                "weir_ocsp_refreshes_total",
                "OCSP answers fetched for stapling, by result (ok: checked and stapled).",
                &["result"],
            ),
            acme_orders: counter(
                &r,
                "weir_acme_orders_total",
                "ACME certificate orders, by result (ok: a certificate was issued).",
                &["result"],
            ),
            registry: r,
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// One route's pre-resolved handles. A snapshot is built with them unbound (building
/// creates no series); the apply step binds them just before the snapshot goes live.
#[derive(Debug, Clone, Default)]
pub struct RouteMetrics {
    handles: Option<Box<Handles>>,
}

#[derive(Debug, Clone)]
struct Handles {
    /// By status class: 1xx .. 5xx.
    requests: [IntCounter; 5],
    duration: Histogram,
    bytes_sent: IntCounter,
    bytes_received: IntCounter,
}

impl RouteMetrics {
    /// Handles bound to no series: recording through them does nothing.
    pub fn unbound() -> RouteMetrics {
        RouteMetrics { handles: None }
    }

    /// Whether these handles record into series.
    pub fn is_bound(&self) -> bool {
        self.handles.is_some()
    }

    /// Handles for the series of one route (created at 0 if new).
    pub fn bind(gateway: &str, route: &str) -> RouteMetrics {
        let m = metrics();
        let class = |c: &str| m.requests.with_label_values(&[gateway, route, c]);
        RouteMetrics {
            handles: Some(Box::new(Handles {
                requests: [
                    class("1xx"),
                    class("2xx"),
                    class("3xx"),
                    class("4xx"),
                    class("5xx"),
                ],
                duration: m.duration.with_label_values(&[gateway, route]),
                bytes_sent: m.bytes_sent.with_label_values(&[gateway, route]),
                bytes_received: m.bytes_received.with_label_values(&[gateway, route]),
            })),
        }
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration, sent: usize, received: usize) {
        let Some(h) = &self.handles else {
            return;
        };
        let class = (status / 100).clamp(1, 5) as usize - 1;
        h.requests[class].inc();
        h.duration.observe(elapsed.as_secs_f64());
        h.bytes_sent.inc_by(sent as u64);
        h.bytes_received.inc_by(received as u64);
    }
}

/// Counts an upstream error (an error path: label lookup is fine here).
pub fn upstream_error(gateway: &str, route: &str, instance: &str, kind: &str) {
    metrics()
        .upstream_errors
        .with_label_values(&[gateway, route, instance, kind])
        .inc();
}

/// Counts a request refused before routing (an error path).
pub fn request_refused(listener: &str, status: u16) {
    metrics()
        .requests_refused
        .with_label_values(&[listener, &status.to_string()])
        .inc();
}

/// Counts an HTTP/2 connection closed for what its client sent (a refusal path).
pub fn http2_error(listener: &str, reason: &str) {
    metrics()
        .http2_errors
        .with_label_values(&[listener, reason])
        .inc();
}

/// Counts a request refused by a rate limit (a refusal path: label lookup is fine).
pub fn rate_limited(gateway: &str, route: &str) {
    metrics()
        .rate_limited
        .with_label_values(&[gateway, route])
        .inc();
}

/// Counts a retry (a failure path), or one the budget refused (`reason` None).
pub fn retry(gateway: &str, route: &str, reason: Option<&str>) {
    let m = metrics();
    match reason {
        Some(reason) => m.retries.with_label_values(&[gateway, route, reason]).inc(),
        None => m
            .retries_over_budget
            .with_label_values(&[gateway, route])
            .inc(),
    }
}

/// Counts an outlier ejection.
pub fn ejected(gateway: &str, route: &str, upstream: &str) {
    metrics()
        .ejections
        .with_label_values(&[gateway, route, upstream])
        .inc();
}

/// Counts a mirrored copy by what became of it.
pub fn mirrored(gateway: &str, route: &str, result: &str) {
    metrics()
        .mirrored
        .with_label_values(&[gateway, route, result])
        .inc();
}

/// Results counted in `weir_mirror_requests_total`.
pub const MIRROR_RESULTS: [&str; 4] = ["sent", "failed", "dropped", "skipped"];

/// Counts a connection closed at accept.
pub fn connection_refused(listener: &str, reason: &str) {
    metrics()
        .connections_refused
        .with_label_values(&[listener, reason])
        .inc();
}

/// Creates the series every scrape should show from the start, at 0.
pub fn start(listeners: &[String]) {
    let m = metrics();
    for l in listeners {
        m.connections_active.with_label_values(&[l]);
        m.tls_handshake_errors.with_label_values(&[l]);
        for reason in ["per_client", "limit"] {
            m.connections_refused.with_label_values(&[l, reason]);
        }
    }
    for result in ["ok", "error"] {
        m.reloads.with_label_values(&[result]);
    }
}

/// Records the time of the first successful load.
pub fn loaded(unix_time: u64) {
    metrics().last_reload.set(unix_time as f64);
}

/// Counts an OCSP answer fetched and kept (`ok`) or not (`error`).
pub fn ocsp(ok: bool) {
    metrics()
        .ocsp
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
}

/// Counts an ACME order that gave a certificate (`ok`) or not (`error`).
pub fn acme_order(ok: bool) {
    metrics()
        .acme_orders
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
}

/// Whether the config store is connected.
pub fn store_up(up: bool) {
    metrics().store_up.set(i64::from(up));
}

/// The store revision in service.
pub fn store_revision(revision: i64) {
    metrics().store_revision.set(revision);
}

/// Counts a store document refused.
pub fn store_rejected() {
    metrics().store_rejected.inc();
}

/// Counts a reload attempt.
pub fn reload(ok: bool, unix_time: u64) {
    let m = metrics();
    m.reloads
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
    if ok {
        m.last_reload.set(unix_time as f64);
    }
}
