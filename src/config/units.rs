//! Scalar value types of the config file and their text forms: durations (`250ms`),
//! percentages (`"50%"`), gateway ports (`9070/http`), balance algorithms and instances.
//!
//! Each type deserializes through its own visitor so that a wrong value is reported by
//! serde_yaml with the file position of that value.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Splits `16KiB` into 16 and `KiB`; `None` unless it starts with a whole number.
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit))
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (value, unit) = number_and_unit(text)
        .ok_or_else(|| format!("invalid duration {text:?}: expected e.g. 250ms, 5s, 2m"))?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        "d" => value.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unit must be ms, s, m, h or d"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// A duration written as text in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 250ms, 5s or 2m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Parses a size: `512`, `16KiB`, `8MiB`, `1GiB` (a whole number and a binary unit).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (value, unit) = number_and_unit(text)
        .ok_or_else(|| format!("invalid size {text:?}: expected e.g. 512, 16KiB, 8MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unit must be KiB, MiB or GiB"
            ))
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// What a gateway's or listener's name may be: it names files, store keys and metric
/// labels, so no path separators and nothing that starts with a dot.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._:-]*$";

/// Whether `name` matches `NAME_PATTERN`.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// A size in bytes, written `512`, `16KiB` or `8MiB` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 512, 16KiB or 8MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A rate in bytes per second, written `1KiB/s` or `512/s` in the config (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteRate(pub u64);

/// `SIZE/s`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let size = text
        .strip_suffix("/s")
        .ok_or_else(|| format!("invalid rate {text:?}: expected e.g. 1KiB/s or 512/s"))?;
    parse_size(size)
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteRate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate such as 1KiB/s or 512/s")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match v {
                    0 => Ok(ByteRate(0)),
                    _ => Err(E::custom("a rate needs a unit: e.g. 1KiB/s (0 for none)")),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_rate(v).map(ByteRate).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A percentage in hundredths of a percent (basis points): `"12.5%"` is 1250.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Percent(pub u32);

/// 100% in basis points.
pub const FULL: u32 = 10_000;

impl Percent {
    pub fn basis_points(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 100;
        let frac = self.0 % 100;
        if frac == 0 {
            write!(f, "{whole}%")
        } else if frac.is_multiple_of(10) {
            write!(f, "{whole}.{}%", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

/// Parses `"50%"`, `"12.5%"`, `"33.33%"`: 0 to 100, at most two decimals.
pub fn parse_percent(text: &str) -> Result<Percent, String> {
    let bad = || format!("invalid percentage {text:?}: expected e.g. \"50%\" or \"12.5%\"");
    let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if number.contains('.') && frac.is_empty() {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let frac: u32 = match frac.len() {
        0 => 0,
        1 => frac.parse::<u32>().map_err(|_| bad())? * 10,
        _ => frac.parse().map_err(|_| bad())?,
    };
    let bp = whole * 100 + frac;
    if bp > FULL {
        return Err(format!("percentage {text:?} is over 100%"));
    }
    Ok(Percent(bp))
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage string such as \"50%\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_percent(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The protocol of a gateway's dedicated port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Http,
    Tcp,
}

/// A gateway's dedicated port: `9070`, `9070/http` or `9070/tcp` (Vamp's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub port: u16,
    pub kind: PortKind,
}

pub fn parse_port(text: &str) -> Result<PortSpec, String> {
    let (number, kind) = match text.split_once('/') {
        Some((n, "http")) => (n, PortKind::Http),
        Some((n, "tcp")) => (n, PortKind::Tcp),
        Some((_, other)) => {
            return Err(format!(
                "invalid port {text:?}: protocol {other:?} must be http or tcp"
            ))
        }
        None => (text, PortKind::Http),
    };
    match number.parse::<u16>() {
        Ok(port) if port > 0 => Ok(PortSpec { port, kind }),
        _ => Err(format!(
            "invalid port {text:?}: expected N, N/http or N/tcp with N in 1..65535"
        )),
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port: N, N/http or N/tcp")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                parse_port(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                parse_port(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_port(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// How a route spreads requests over its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Random,
    LeastConn,
    SourceIp,
    HashHeader(String),
    HashCookie(String),
    HashPath,
}

pub fn parse_balance(text: &str) -> Result<Balance, String> {
    let t = text.trim();
    let simple = match t {
        "round_robin" => Some(Balance::RoundRobin),
        "random" => Some(Balance::Random),
        "least_conn" => Some(Balance::LeastConn),
        "source_ip" => Some(Balance::SourceIp),
        _ => None,
    };
    if let Some(b) = simple {
        return Ok(b);
    }
    let bad = || {
        format!(
            "invalid balance {text:?}: expected round_robin, random, least_conn, source_ip, \
             hash(header NAME), hash(cookie NAME) or hash(path)"
        )
    };
    let inner = t
        .strip_prefix("hash(")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(bad)?
        .trim();
    let mut words = inner.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("path"), None, None) => Ok(Balance::HashPath),
        (Some("header"), Some(name), None) => Ok(Balance::HashHeader(name.to_ascii_lowercase())),
        (Some("cookie"), Some(name), None) => Ok(Balance::HashCookie(name.to_string())),
        _ => Err(bad()),
    }
}

impl<'de> Deserialize<'de> for Balance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Balance;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a balance algorithm such as round_robin")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_balance(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// One upstream instance of a route: `"host:port"` or a map.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub host: String,
    pub port: u16,
    #[serde(default = "default_instance_weight")]
    pub weight: u32,
    #[serde(default)]
    pub h2: bool,
    /// TLS to this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// An instance's `tls:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The name sent and verified; the instance's host by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default = "verify_by_default")]
    pub verify: bool,
    /// CA certificates (PEM) the upstream's certificate must chain to; the system's
    /// roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<ClientCert>,
}

/// A client certificate and key (PEM) weir presents to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCert {
    pub cert: String,
    pub key: String,
}

fn verify_by_default() -> bool {
    true
}

fn default_instance_weight() -> u32 {
    1
}

/// Splits `host:port`, `[v6]:port` into host and port.
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid address {text:?}: expected host:port");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !text.starts_with('[') {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

impl<'de> Deserialize<'de> for Instance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Instance;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an instance: \"host:port\" or {host, port, weight}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let (host, port) = split_host_port(v).map_err(E::custom)?;
                Ok(Instance(InstanceSpec {
                    name: None,
                    host,
                    port,
                    weight: 1,
                    h2: false,
                    tls: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                InstanceSpec::deserialize(de::value::MapAccessDeserializer::new(map)).map(Instance)
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Wrapper so that an instance may be written as a string or as a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance(pub InstanceSpec);

// Serialized back in the forms they are written in, for the admin API.

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let text = if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        s.serialize_str(&text)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = match self.kind {
            PortKind::Http => "http",
            PortKind::Tcp => "tcp",
        };
        s.serialize_str(&format!("{}/{kind}", self.port))
    }
}

impl Serialize for Balance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = match self {
            Balance::RoundRobin => "round_robin".to_string(),
            Balance::Random => "random".to_string(),
            Balance::LeastConn => "least_conn".to_string(),
            Balance::SourceIp => "source_ip".to_string(),
            Balance::HashHeader(h) => format!("hash(header {h})"),
            Balance::HashCookie(c) => format!("hash(cookie {c})"),
            Balance::HashPath => "hash(path)".to_string(),
        };
        s.serialize_str(&text)
    }
}

impl Serialize for Instance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("16KiB").unwrap(), 16 * 1024);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("8MB").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 sec").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn percents() {
        assert_eq!(parse_percent("50%").unwrap(), Percent(5000));
        assert_eq!(parse_percent("12.5%").unwrap(), Percent(1250));
        assert_eq!(parse_percent("33.33%").unwrap(), Percent(3333));
        assert_eq!(parse_percent("0%").unwrap(), Percent(0));
        assert_eq!(parse_percent("100%").unwrap(), Percent(FULL));
        for bad in [
            "50", "101%", "1.234%", "%", "a%", "5.%", ".5%", "-1%", "1000%",
        ] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
        assert_eq!(Percent(1250).to_string(), "12.5%");
        assert_eq!(Percent(3333).to_string(), "33.33%");
        assert_eq!(Percent(9000).to_string(), "90%");
    }

    #[test]
    fn ports() {
        assert_eq!(
            parse_port("9070/http").unwrap(),
            PortSpec {
                port: 9070,
                kind: PortKind::Http
            }
        );
        assert_eq!(parse_port("9070/tcp").unwrap().kind, PortKind::Tcp);
        assert_eq!(parse_port("80").unwrap().kind, PortKind::Http);
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").is_err());
        assert!(parse_port("80/udp").is_err());
    }

    #[test]
    fn balances() {
        assert_eq!(parse_balance("round_robin").unwrap(), Balance::RoundRobin);
        assert_eq!(
            parse_balance("hash(header X-User)").unwrap(),
            Balance::HashHeader("x-user".into())
        );
        assert_eq!(
            parse_balance("hash(cookie sid)").unwrap(),
            Balance::HashCookie("sid".into())
        );
        assert_eq!(parse_balance("hash(path)").unwrap(), Balance::HashPath);
        assert!(parse_balance("hash(query)").is_err());
        assert!(parse_balance("roundrobin").is_err());
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            split_host_port("127.0.0.1:80").unwrap(),
            ("127.0.0.1".into(), 80)
        );
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(
            split_host_port("backend.internal:8080").unwrap(),
            ("backend.internal".into(), 8080)
        );
        assert!(split_host_port("::1:80").is_err());
        assert!(split_host_port("host").is_err());
        assert!(split_host_port("host:0").is_err());
        assert!(split_host_port(":80").is_err());
    }
}
