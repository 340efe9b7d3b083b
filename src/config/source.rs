//! Top-level `config_source:`: where gateways come from besides the files (a fleet's
//! shared store). Schema only; `store::Settings` checks it and reads its files.

use serde::Deserialize;

use super::ConfigDuration;

/// Top-level `config_source:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSource {
    pub etcd: EtcdSource,
}

/// `config_source.etcd`: an etcd v3 cluster holding the fleet's gateways.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSource {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Gateways live under `PREFIX/gateways/NAME`, certificates under `PREFIX/certs/NAME`.
    pub prefix: String,
    /// Client TLS to etcd.
    #[serde(default)]
    pub tls: Option<EtcdTls>,
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password of `username`.
    #[serde(default)]
    pub password_file: Option<String>,
    /// How long connecting to a member may take.
    #[serde(default = "default_etcd_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    /// How long one request (a read, a write) may take.
    #[serde(default = "default_etcd_request_timeout")]
    pub request_timeout: ConfigDuration,
}

/// `config_source.etcd.tls`: the CA etcd's certificate chains to, and this client's
/// certificate when etcd asks for one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

fn default_etcd_connect_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(2))
}

fn default_etcd_request_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(5))
}
