//! Forwarding headers: `X-Forwarded-For/-Proto/-Host/-Port` and
//! `X-Request-Id`. Values from a trusted proxy are kept (the client address appended to
//! `X-Forwarded-For`); from anyone else they are replaced. Hop-by-hop headers are left
//! to Pingora's standard upstream request policy (RFC 9110 §7.6.1).

use std::io::Write;
use std::net::IpAddr;

use pingora::http::RequestHeader;
use pingora::Result;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
pub const X_FORWARDED_PORT: &str = "x-forwarded-port";
pub const X_REQUEST_ID: &str = "x-request-id";

/// Response headers that describe the instance's connection to weir, not weir's to
/// the client (RFC 9110 §7.6.1): no leg relays them; weir writes its own `Connection`.
pub const RESPONSE_HOP_BY_HOP: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];

/// What the forwarding headers say about one request.
pub struct Forwarding<'a> {
    pub client: Option<IpAddr>,
    /// The peer is in `defaults.trusted_proxies`.
    pub trusted: bool,
    pub proto: &'static str,
    pub host: Option<&'a [u8]>,
    pub port: u16,
}

/// Sets the forwarding headers on the request sent upstream.
pub fn apply(req: &mut RequestHeader, f: &Forwarding) -> Result<()> {
    let mut buf = [0u8; 64];
    if let Some(ip) = f.client {
        let ip_text = format_into(&mut buf, format_args!("{ip}"));
        let earlier = f.trusted.then(|| joined(req, X_FORWARDED_FOR)).flatten();
        match earlier {
            Some(mut list) => {
                list.extend_from_slice(b", ");
                list.extend_from_slice(ip_text);
                req.insert_header(X_FORWARDED_FOR, list)?;
            }
            None => req.insert_header(X_FORWARDED_FOR, ip_text)?,
        }
    } else if !f.trusted {
        req.remove_header(X_FORWARDED_FOR);
    }
    set_unless_trusted(req, f.trusted, X_FORWARDED_PROTO, f.proto.as_bytes())?;
    match f.host {
        Some(host) => set_unless_trusted(req, f.trusted, X_FORWARDED_HOST, host)?,
        None if !f.trusted => {
            req.remove_header(X_FORWARDED_HOST);
        }
        None => {}
    }
    let port = format_into(&mut buf, format_args!("{}", f.port));
    set_unless_trusted(req, f.trusted, X_FORWARDED_PORT, port)?;
    ensure_request_id(req)
}

/// Gives the request an `X-Request-Id` unless it has one.
pub fn ensure_request_id(req: &mut RequestHeader) -> Result<()> {
    if req.headers.get(X_REQUEST_ID).is_none() {
        req.insert_header(X_REQUEST_ID, &request_id()[..])?;
    }
    Ok(())
}

fn set_unless_trusted(
    req: &mut RequestHeader,
    trusted: bool,
    name: &'static str,
    value: &[u8],
) -> Result<()> {
    if trusted && req.headers.get(name).is_some() {
        return Ok(());
    }
    req.insert_header(name, value)
}

/// All values of a header joined with `, ` (several `X-Forwarded-For` lines are one list).
fn joined(req: &RequestHeader, name: &str) -> Option<Vec<u8>> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

/// `args` written into `buf` (addresses and ports: no allocation).
pub(crate) fn format_into<'b>(buf: &'b mut [u8; 64], args: std::fmt::Arguments) -> &'b [u8] {
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 64 bytes hold any IP address or port; a failed write only truncates.
    let _ = cursor.write_fmt(args);
    let len = cursor.position() as usize;
    &buf[..len]
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pairs: &[(&'static str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in pairs {
            req.append_header(*k, *v).unwrap();
        }
        req
    }

    fn get<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
        req.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn fwd(trusted: bool) -> Forwarding<'static> {
        Forwarding {
            client: Some("10.1.2.3".parse().unwrap()),
            trusted,
            proto: "http",
            host: Some(b"a.test"),
            port: 8080,
        }
    }

    #[test]
    fn untrusted_values_replaced() {
        let mut req = header(&[
            (X_FORWARDED_FOR, "6.6.6.6"),
            (X_FORWARDED_PROTO, "https"),
            (X_FORWARDED_HOST, "evil"),
        ]);
        apply(&mut req, &fwd(false)).unwrap();
        assert_eq!(get(&req, X_FORWARDED_FOR), Some("10.1.2.3"));
        assert_eq!(get(&req, X_FORWARDED_PROTO), Some("http"));
        assert_eq!(get(&req, X_FORWARDED_HOST), Some("a.test"));
        assert_eq!(get(&req, X_FORWARDED_PORT), Some("8080"));
        assert_eq!(get(&req, X_REQUEST_ID).unwrap().len(), 32);
    }

    #[test]
    fn trusted_values_kept_and_appended() {
        let mut req = header(&[
            (X_FORWARDED_FOR, "1.1.1.1"),
            (X_FORWARDED_FOR, "2.2.2.2"),
            (X_FORWARDED_PROTO, "https"),
            (X_REQUEST_ID, "abc"),
        ]);
        apply(&mut req, &fwd(true)).unwrap();
        assert_eq!(
            get(&req, X_FORWARDED_FOR),
            Some("1.1.1.1, 2.2.2.2, 10.1.2.3")
        );
        assert_eq!(get(&req, X_FORWARDED_PROTO), Some("https"));
        assert_eq!(get(&req, X_FORWARDED_HOST), Some("a.test"));
        assert_eq!(get(&req, X_REQUEST_ID), Some("abc"));
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(request_id(), request_id());
    }
}
