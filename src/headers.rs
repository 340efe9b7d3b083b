//! Header rules (`request_headers`, `response_headers` on a gateway or route): set, add
//! and remove headers, with values from templates such as `%[hdr(NAME)]` or `%[src]`.
//!
//! This module owns the rules' compilation (once per snapshot: names parsed, templates
//! split into parts, fixed values made into `HeaderValue`s) and their application to one
//! request or response. A route's rules are its gateway's followed by its own; within
//! each block: `remove`, then `set`, then `add`. Framing and hop-by-hop headers cannot
//! be touched: a rule naming one is a load error.

use std::io::Write as _;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::HeaderRulesConfig;

/// Headers no rule may set or remove: they frame the message or belong to one hop.
const PROTECTED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The variables a template may name.
const VARIABLES: &[&str] = &[
    "hdr(NAME)",
    "src",
    "path",
    "query",
    "request_id",
    "ssl_sni",
    "ssl_version",
];

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    /// All values of a request header, joined with `, ` (empty when absent).
    Header(HeaderName),
    Src,
    Path,
    Query,
    RequestId,
    SslSni,
    SslVersion,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Fixed(HeaderValue),
    Template(Box<[Part]>),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Remove(HeaderName),
    Set(HeaderName, Value),
    Add(HeaderName, Value),
}

/// One direction's compiled rules for a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    ops: Box<[Op]>,
    uses_request_id: bool,
}

/// What templates read: the client's request as it arrived, and the connection.
pub struct Vars<'a> {
    pub req: &'a RequestHeader,
    pub client: Option<IpAddr>,
    pub request_id: Option<&'a str>,
    pub sni: Option<&'a str>,
    pub tls_version: Option<&'a str>,
}

/// Where rules write: a request to the upstream or a response to the client.
pub trait Headers {
    fn set(&mut self, name: &HeaderName, value: HeaderValue);
    fn add(&mut self, name: &HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
}

/// Pingora's request and response heads share these methods but no trait.
macro_rules! headers_for {
    ($head:ty) => {
        impl Headers for $head {
            fn set(&mut self, name: &HeaderName, value: HeaderValue) {
                // Only a name over u16::MAX bytes fails, and names are bounded at load.
                let _ = self.insert_header(name.clone(), value);
            }
            fn add(&mut self, name: &HeaderName, value: HeaderValue) {
                let _ = self.append_header(name.clone(), value);
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}

headers_for!(RequestHeader);
headers_for!(ResponseHeader);

impl Rules {
    /// The gateway's block, then the route's; `None` when neither has a rule. Errors
    /// name the block (`which`, e.g. `request_headers`) and what is wrong.
    pub fn compile(
        which: &str,
        blocks: &[Option<&HeaderRulesConfig>],
        errors: &mut Vec<String>,
    ) -> Option<Box<Rules>> {
        let mut ops = Vec::new();
        for block in blocks.iter().flatten() {
            for name in &block.remove {
                if let Some(n) = header_name(which, "remove", name, errors) {
                    ops.push(Op::Remove(n));
                }
            }
            for (verb, map) in [("set", &block.set), ("add", &block.add)] {
                for (name, text) in map {
                    let n = header_name(which, verb, name, errors);
                    let v = match template(text) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            errors.push(format!("{which}.{verb}.{name}: {e}"));
                            None
                        }
                    };
                    if let (Some(n), Some(v)) = (n, v) {
                        ops.push(if verb == "set" {
                            Op::Set(n, v)
                        } else {
                            Op::Add(n, v)
                        });
                    }
                }
            }
        }
        if ops.is_empty() {
            return None;
        }
        let uses_request_id = ops.iter().any(|op| match op {
            Op::Set(_, Value::Template(parts)) | Op::Add(_, Value::Template(parts)) => {
                parts.contains(&Part::RequestId)
            }
            _ => false,
        });
        Some(Box::new(Rules {
            ops: ops.into(),
            uses_request_id,
        }))
    }

    /// Whether a template reads `%[request_id]` (so the id must be known first).
    pub fn uses_request_id(&self) -> bool {
        self.uses_request_id
    }

    pub fn apply(&self, target: &mut impl Headers, vars: &Vars) {
        for op in self.ops.iter() {
            match op {
                Op::Remove(n) => target.remove(n),
                Op::Set(n, v) => {
                    if let Some(v) = v.render(vars) {
                        target.set(n, v);
                    }
                }
                Op::Add(n, v) => {
                    if let Some(v) = v.render(vars) {
                        target.add(n, v);
                    }
                }
            }
        }
    }
}

impl Value {
    /// The value for one request; `None` if what a variable held cannot be a header
    /// value (the header is then left as it was).
    fn render(&self, vars: &Vars) -> Option<HeaderValue> {
        let parts = match self {
            Value::Fixed(v) => return Some(v.clone()),
            Value::Template(parts) => parts,
        };
        let mut out: Vec<u8> = Vec::with_capacity(64);
        for part in parts.iter() {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Header(n) => {
                    for (i, v) in vars.req.headers.get_all(n).iter().enumerate() {
                        if i > 0 {
                            out.extend_from_slice(b", ");
                        }
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Part::Src => {
                    if let Some(ip) = vars.client {
                        let _ = write!(out, "{ip}");
                    }
                }
                Part::Path => out.extend_from_slice(vars.req.uri.path().as_bytes()),
                Part::Query => out.extend_from_slice(vars.req.uri.query().unwrap_or("").as_bytes()),
                Part::RequestId => out.extend_from_slice(vars.request_id.unwrap_or("").as_bytes()),
                Part::SslSni => out.extend_from_slice(vars.sni.unwrap_or("").as_bytes()),
                Part::SslVersion => {
                    out.extend_from_slice(vars.tls_version.unwrap_or("").as_bytes())
                }
            }
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

fn header_name(
    which: &str,
    verb: &str,
    name: &str,
    errors: &mut Vec<String>,
) -> Option<HeaderName> {
    let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
        errors.push(format!("{which}.{verb}: {name:?} is not a header name"));
        return None;
    };
    if PROTECTED.contains(&n.as_str()) {
        errors.push(format!(
            "{which}.{verb}: {name:?} cannot be set or removed (framing and hop-by-hop headers are weir's)"
        ));
        return None;
    }
    Some(n)
}

/// Splits a value into literal text and `%[variable]`s. `%%` is a literal `%`.
fn template(text: &str) -> Result<Value, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            literal.push('%');
            rest = tail;
            continue;
        }
        let Some(inner) = after.strip_prefix('[') else {
            literal.push('%');
            rest = after;
            continue;
        };
        let Some(end) = inner.find(']') else {
            return Err(format!("{text:?}: \"%[\" without \"]\""));
        };
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(variable(&inner[..end])?);
        rest = &inner[end + 1..];
    }
    literal.push_str(rest);
    if HeaderValue::from_str(&literal).is_err()
        || parts
            .iter()
            .any(|p| matches!(p, Part::Literal(s) if HeaderValue::from_str(s).is_err()))
    {
        return Err(format!("{text:?} holds characters a header value cannot"));
    }
    if parts.is_empty() {
        return HeaderValue::from_str(&literal)
            .map(Value::Fixed)
            .map_err(|e| e.to_string());
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(Value::Template(parts.into()))
}

fn variable(name: &str) -> Result<Part, String> {
    let name = name.trim();
    if let Some(arg) = name.strip_prefix("hdr(").and_then(|s| s.strip_suffix(')')) {
        return HeaderName::from_bytes(arg.trim().as_bytes())
            .map(Part::Header)
            .map_err(|_| format!("%[hdr({arg})]: {arg:?} is not a header name"));
    }
    Ok(match name {
        "src" => Part::Src,
        "path" => Part::Path,
        "query" => Part::Query,
        "request_id" => Part::RequestId,
        "ssl_sni" => Part::SslSni,
        "ssl_version" => Part::SslVersion,
        other => {
            let hint = crate::suggest::closest(other, VARIABLES)
                .map(|c| format!(" (did you mean %[{c}]?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown variable %[{other}]{hint}; known: {}",
                VARIABLES.join(", ")
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(yaml: &str) -> HeaderRulesConfig {
        serde_yaml::from_str(yaml).expect("block parses")
    }

    fn compile(yaml: &str) -> Result<Box<Rules>, String> {
        let b = block(yaml);
        let mut errors = Vec::new();
        let rules = Rules::compile("request_headers", &[Some(&b)], &mut errors);
        if errors.is_empty() {
            rules.ok_or_else(|| "no rules".to_string())
        } else {
            Err(errors.join("; "))
        }
    }

    fn request() -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/a/b?x=1&y=2", None).expect("request");
        req.append_header("x-user", "alice").expect("header");
        req.append_header("x-user", "bob").expect("header");
        req.append_header("x-debug", "1").expect("header");
        req
    }

    #[test]
    fn templates_render_request_and_connection_values() {
        let rules = compile(
            "set: { x-who: '%[hdr(X-User)] from %[src]', x-where: '%[path]?%[query]', x-id: 'id=%[request_id]', x-tls: '%[ssl_version]/%[ssl_sni]', x-pct: '100%% %x' }\nremove: [x-debug]\nadd: { x-user: carol }",
        )
        .expect("compiles");
        assert!(rules.uses_request_id());
        let orig = request();
        let mut up = request();
        let vars = Vars {
            req: &orig,
            client: Some("127.0.0.9".parse().expect("ip")),
            request_id: Some("abc"),
            sni: Some("a.test"),
            tls_version: Some("TLSv1.3"),
        };
        rules.apply(&mut up, &vars);
        let get = |n: &str| {
            up.headers
                .get(n)
                .map(|v| v.to_str().expect("text").to_string())
        };
        assert_eq!(get("x-who").as_deref(), Some("alice, bob from 127.0.0.9"));
        assert_eq!(get("x-where").as_deref(), Some("/a/b?x=1&y=2"));
        assert_eq!(get("x-id").as_deref(), Some("id=abc"));
        assert_eq!(get("x-tls").as_deref(), Some("TLSv1.3/a.test"));
        assert_eq!(get("x-pct").as_deref(), Some("100% %x"));
        assert_eq!(get("x-debug"), None);
        assert_eq!(up.headers.get_all("x-user").iter().count(), 3);
    }

    #[test]
    fn route_rules_follow_the_gateways() {
        let g = block("set: { x-env: prod, x-a: g }");
        let r = block("set: { x-a: r }\nremove: [x-env]");
        let mut errors = Vec::new();
        let rules =
            Rules::compile("request_headers", &[Some(&g), Some(&r)], &mut errors).expect("rules");
        assert!(errors.is_empty());
        let orig = request();
        let mut up = request();
        let vars = Vars {
            req: &orig,
            client: None,
            request_id: None,
            sni: None,
            tls_version: None,
        };
        rules.apply(&mut up, &vars);
        assert_eq!(up.headers.get("x-a").map(|v| v.as_bytes()), Some(&b"r"[..]));
        assert!(up.headers.get("x-env").is_none());
        assert!(!rules.uses_request_id());
    }

    #[test]
    fn bad_rules_are_named() {
        for (yaml, want) in [
            (
                "set: { content-length: '5' }",
                "\"content-length\" cannot be set or removed",
            ),
            ("remove: [Transfer-Encoding]", "cannot be set or removed"),
            ("set: { host: x }", "\"host\" cannot"),
            ("add: { connection: close }", "cannot"),
            ("set: { 'bad name': x }", "is not a header name"),
            ("set: { x-a: '%[nope]' }", "unknown variable %[nope]"),
            ("set: { x-a: '%[scr]' }", "did you mean %[src]"),
            ("set: { x-a: '%[path' }", "without"),
            ("set: { x-a: '%[hdr(a b)]' }", "is not a header name"),
            (
                "set: { x-a: \"a\\nb\" }",
                "characters a header value cannot",
            ),
        ] {
            let e = compile(yaml).expect_err(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
        assert_eq!(compile("{}").expect_err("empty"), "no rules");
    }
}
