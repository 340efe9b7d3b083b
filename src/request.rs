//! The one view of a request that routing reads: host, path, method, headers, client
//! address, and a cookie jar parsed at most once, lazily. Conditions, rewrites, sticky
//! cookies, balancing and the snapshot's routing decision all read this; a TCP
//! connection is a view with no HTTP part ([`Request::l4`]).

use std::cell::OnceCell;
use std::net::IpAddr;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName};

/// What routing reads of a request: conditions, rewrites, sticky cookies, balancing.
/// Borrowed from the request; built per request without allocation.
pub struct Request<'a> {
    /// Host with the port stripped (any case).
    pub host: &'a [u8],
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    pub client: Option<IpAddr>,
    /// The subject of the connection's verified client certificate (RFC 4514).
    pub client_cert: Option<&'a str>,
    cookies: OnceCell<Cookies<'a>>,
}

const MAX_COOKIES: usize = 16;

/// The request's cookies, parsed once: up to `MAX_COOKIES` kept in place, beyond that
/// looked up by scanning the header again.
struct Cookies<'a> {
    pairs: [(&'a str, &'a str); MAX_COOKIES],
    len: usize,
    overflow: bool,
}

fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = name.trim_ascii();
            let value = value.trim_ascii();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (!name.is_empty()).then_some((name, value))
        })
}

impl<'a> Request<'a> {
    pub fn new(
        host: &'a [u8],
        path: &'a str,
        method: &'a str,
        headers: &'a HeaderMap,
        client: Option<IpAddr>,
    ) -> Self {
        Request {
            host: crate::vhost::strip_port(host),
            path,
            method,
            headers,
            client,
            client_cert: None,
            cookies: OnceCell::new(),
        }
    }

    /// A connection with no HTTP part (a TCP gateway's): only the client address.
    pub fn l4(client: Option<IpAddr>) -> Request<'static> {
        static NO_HEADERS: OnceLock<HeaderMap> = OnceLock::new();
        Request {
            host: b"",
            path: "",
            method: "",
            headers: NO_HEADERS.get_or_init(HeaderMap::new),
            client,
            client_cert: None,
            cookies: OnceCell::new(),
        }
    }

    /// The value of cookie `name`, if the request has it (quotes around the value
    /// removed). One jar for every reader, so a condition and a hash see one value.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        let jar = self.cookies.get_or_init(|| {
            let mut jar = Cookies {
                pairs: [("", ""); MAX_COOKIES],
                len: 0,
                overflow: false,
            };
            for pair in cookie_pairs(self.headers) {
                if jar.len == MAX_COOKIES {
                    jar.overflow = true;
                    break;
                }
                jar.pairs[jar.len] = pair;
                jar.len += 1;
            }
            jar
        });
        if let Some((_, v)) = jar.pairs[..jar.len].iter().find(|(n, _)| *n == name) {
            return Some(v);
        }
        if jar.overflow {
            return cookie_pairs(self.headers)
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v);
        }
        None
    }

    pub(crate) fn header_values(&self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers.get_all(name).iter().map(|v| v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_jar_with_quotes_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; sid=\"x y\"; b".parse().unwrap());
        let r = Request::new(b"h.test:80", "/p", "GET", &headers, None);
        assert_eq!(r.host, b"h.test");
        assert_eq!(r.cookie("sid"), Some("x y"));
        assert_eq!(r.cookie("a"), Some("1"));
        assert_eq!(r.cookie("b"), Some(""));
        assert_eq!(r.cookie("c"), None);
        let l4 = Request::l4("10.0.0.1".parse().ok());
        assert_eq!(l4.cookie("a"), None);
        assert!(l4.headers.is_empty() && l4.path.is_empty());
    }
}
