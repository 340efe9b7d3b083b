//! The config file as written: typed serde structs, unknown keys rejected.
//!
//! This module owns the schema and the reading of files (`load`). Nothing here judges
//! whether the values make sense together; that is `snapshot::build`'s job.

pub mod load;
pub mod shape;
pub mod source;
pub mod tls;
pub mod units;

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use source::{ConfigSource, EtcdSource, EtcdTls};
pub use tls::{
    AcmeChallenge, AcmeConfig, CertificateConfig, ClientAuthConfig, ClientAuthMode, TlsConfig,
    TlsVersion,
};
pub use units::{
    Balance, ByteRate, ByteSize, ConfigDuration, Instance, InstanceSpec, Percent, PortKind,
    PortSpec,
};

/// The main config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listeners: IndexMap<String, ListenerConfig>,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<std::sync::Arc<GatewayConfig>>,
    #[serde(default)]
    pub access_log: Option<String>,
    /// Bounds on the config itself (read before the rest is trusted).
    #[serde(default)]
    pub limits: ConfigLimits,
    /// Spans exported over OTLP/HTTP.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Where gateways come from besides the files: a fleet's shared store.
    #[serde(default)]
    pub config_source: Option<ConfigSource>,
    /// weir's own state on this machine: the last good copy of the config store and
    /// the certificates it holds. Default `/var/lib/weir`.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// The control socket of `weir run --master`, which `weir upgrade` and `weir
    /// status` ask (relative to this file). Default `/run/weir/control.sock`.
    #[serde(default)]
    pub control_socket: Option<String>,
}

/// Top-level `tracing:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    pub otlp_endpoint: String,
    /// Share of new traces recorded (a client's own sampling decision is followed).
    #[serde(default = "default_sample")]
    pub sample: Percent,
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sample() -> Percent {
    Percent(1_000)
}

fn default_service_name() -> String {
    "weir".into()
}

/// Top-level `limits:`: how much config weir reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLimits {
    /// All config files together (the main file and every include).
    #[serde(default = "default_config_bytes")]
    pub config_bytes: ByteSize,
}

/// The default bound on all config files together, and the most the main file may hold.
pub const DEFAULT_CONFIG_BYTES: u64 = 64 << 20;

fn default_config_bytes() -> ByteSize {
    ByteSize(DEFAULT_CONFIG_BYTES)
}

impl Default for ConfigLimits {
    fn default() -> Self {
        ConfigLimits {
            config_bytes: default_config_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: String,
    #[serde(default)]
    pub redirect_https: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Overrides `defaults.limits`, key by key.
    #[serde(default)]
    pub limits: HttpLimits,
}

/// `limits:` under `defaults` or a listener: bounds on clients' connections and
/// request heads. Unset keys take the default's value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    #[serde(default)]
    pub max_request_header_bytes: Option<ByteSize>,
    #[serde(default)]
    pub max_headers: Option<u32>,
    #[serde(default)]
    pub max_uri_bytes: Option<ByteSize>,
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_connections_per_client: Option<u32>,
    /// The lowest average rate of a request body once it is older than
    /// `timeouts.client_body`.
    #[serde(default)]
    pub min_body_rate: Option<ByteRate>,
}

/// `rate_limit:` on a gateway or route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests: u64,
    pub per: ConfigDuration,
    #[serde(default)]
    pub burst: u64,
    #[serde(default = "default_rate_by")]
    pub by: String,
}

fn default_rate_by() -> String {
    "client_ip".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_bind")]
    pub bind: String,
    #[serde(default)]
    pub token_file: Option<String>,
    /// When set, reads under `/api/` need this token (or the write token).
    #[serde(default)]
    pub read_token_file: Option<String>,
}

fn default_admin_bind() -> String {
    "127.0.0.1:9900".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: HttpLimits,
    #[serde(default)]
    pub shutdown: Shutdown,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            timeouts: Timeouts::default(),
            retries: default_retries(),
            trusted_proxies: Vec::new(),
            limits: HttpLimits::default(),
            shutdown: Shutdown::default(),
        }
    }
}

/// `defaults.shutdown`: how a stop (SIGTERM) ends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// `/readyz` fails and listeners keep accepting for this long.
    #[serde(default = "secs::<5>")]
    pub drain: ConfigDuration,
    /// Then accepting stops and in-flight requests get up to this long.
    #[serde(default = "secs::<30>")]
    pub grace: ConfigDuration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain: secs::<5>(),
            grace: secs::<30>(),
        }
    }
}

fn default_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "secs::<5>")]
    pub connect: ConfigDuration,
    #[serde(default = "secs::<5>")]
    pub request_header: ConfigDuration,
    #[serde(default = "secs::<50>")]
    pub upstream_read: ConfigDuration,
    #[serde(default = "secs::<60>")]
    pub idle: ConfigDuration,
    /// Longest wait for the next bytes of a request body.
    #[serde(default = "secs::<30>")]
    pub client_body: ConfigDuration,
}

fn secs<const N: u64>() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(N))
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: secs::<5>(),
            request_header: secs::<5>(),
            upstream_read: secs::<50>(),
            idle: secs::<60>(),
            client_body: secs::<30>(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    #[default]
    None,
    Route,
    Instance,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub name: String,
    #[serde(default)]
    pub port: Option<PortSpec>,
    #[serde(default)]
    pub virtual_hosts: Vec<String>,
    #[serde(default)]
    pub listeners: Option<Vec<String>>,
    #[serde(default)]
    pub sticky: Sticky,
    #[serde(default)]
    pub hsts: Option<HstsConfig>,
    #[serde(default)]
    pub balance: Option<Balance>,
    /// Largest request body (0 = unlimited); routes may set their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Client addresses (CIDRs or IPs) admitted; any other gets 403. Empty: every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Client addresses refused with 403 (before `allow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// HTTP basic auth for the gateway's routes (a route may have its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Response compression for the gateway's routes (a route may have its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionConfig>,
    /// Header rules on the request to the upstream (routes add their own after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderRulesConfig>,
    /// Header rules on the response to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderRulesConfig>,
    /// `required`: requests without a verified client certificate get 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthMode>,
    #[serde(default)]
    pub routes: IndexMap<String, RouteConfig>,
    /// The file this gateway was read from; set by the loader, never by YAML.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    pub max_age: u64,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub weight: Option<Percent>,
    #[serde(default)]
    pub condition: Option<String>,
    #[serde(default)]
    pub condition_strength: Option<Percent>,
    #[serde(default)]
    pub rewrites: Vec<RewriteConfig>,
    #[serde(default)]
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    #[serde(default)]
    pub balance: Option<Balance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderRulesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderRulesConfig>,
    /// Overrides `defaults.timeouts` for this route, and adds a total deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<CompressionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
}

/// `mirror:`: a share of the route's requests copied to another route or address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// A route key of the same gateway, or `[host:port]`.
    pub route: String,
    /// `10%`, or `10` (SPEC writes the mirror's share as a plain number).
    #[serde(default = "full_percent", deserialize_with = "percent_or_number")]
    pub percent: Percent,
    /// Requests with longer bodies are not mirrored.
    #[serde(default = "default_mirror_body")]
    pub max_body_bytes: ByteSize,
}

fn percent_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u32),
        Text(Percent),
    }
    match Either::deserialize(d) {
        Ok(Either::Number(n)) if n <= 100 => Ok(Percent(n * 100)),
        Ok(Either::Number(n)) => Err(de::Error::custom(format!("{n} is more than 100 (percent)"))),
        Ok(Either::Text(p)) => Ok(p),
        Err(_) => Err(de::Error::custom(
            "expected a percentage such as 10 or \"12.5%\"",
        )),
    }
}

fn full_percent() -> Percent {
    Percent(units::FULL)
}

fn default_mirror_body() -> ByteSize {
    ByteSize(64 << 10)
}

/// `compression:`: which encodings, for which types, from which size.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_min_bytes")]
    pub min_bytes: ByteSize,
    #[serde(default = "default_compressible")]
    pub types: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    ["zstd", "br", "gzip"].map(String::from).to_vec()
}

fn default_min_bytes() -> ByteSize {
    ByteSize(1024)
}

fn default_compressible() -> Vec<String> {
    [
        "text/*",
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

/// `basic_auth:`: users and bcrypt hashes in an htpasswd file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub users_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// A route's `outlier:`: instances that keep failing are ejected for a while.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx responses (or resets and timeouts) in a row that eject an instance.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// The first ejection's length; each ejection soon after another is one longer.
    #[serde(default = "secs::<30>")]
    pub base_ejection: ConfigDuration,
    /// The most of a route's instances that may be ejected at once.
    #[serde(default = "default_max_ejected")]
    pub max_ejected: Percent,
}

fn default_consecutive_5xx() -> u32 {
    5
}

fn default_max_ejected() -> Percent {
    Percent(5_000)
}

/// A route's `timeouts:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConfigDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_read: Option<ConfigDuration>,
    /// The whole request, retries included, until its response has been read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<ConfigDuration>,
}

/// A route's `retries:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesConfig {
    /// Retries after the first try.
    pub attempts: u32,
    /// What is retried: `connect`, `reset`, `timeout`, `5xx` or a status 500-599.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    #[serde(default)]
    pub methods: RetryMethods,
    /// Retries allowed as a share of the route's requests.
    #[serde(default = "default_retry_budget")]
    pub budget: Percent,
}

fn default_retry_on() -> Vec<String> {
    vec!["connect".into(), "reset".into()]
}

/// The budget's default share.
pub const DEFAULT_RETRY_BUDGET: Percent = Percent(2_000);

fn default_retry_budget() -> Percent {
    DEFAULT_RETRY_BUDGET
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryMethods {
    /// GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    #[default]
    Idempotent,
    All,
}

/// `request_headers:` / `response_headers:`: header names to values (templates).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub set: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub add: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthProtocol {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub protocol: HealthProtocol,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub interval: Option<ConfigDuration>,
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub failures: Option<u32>,
    #[serde(default)]
    pub successes: Option<u32>,
    #[serde(default)]
    pub initial_delay: Option<ConfigDuration>,
    #[serde(default)]
    pub expect: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
}

/// What an included file holds: one gateway, or a list of them.
#[derive(Debug)]
pub struct GatewayDocument(pub Vec<GatewayConfig>);

impl<'de> Deserialize<'de> for GatewayDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = GatewayDocument;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a gateway (a map) or a list of gateways")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                GatewayConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|g| GatewayDocument(vec![g]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<GatewayConfig>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(GatewayDocument)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(GatewayDocument(Vec::new()))
            }
        }
        deserializer.deserialize_any(V)
    }
}
