//! Sticky sessions: which route (and instance) a client is kept on, in a
//! cookie per gateway. Values are opaque and deterministic: a keyed hash of the
//! gateway, route and instance names, so that the same config on another weir host, or
//! after a reload, reads the same cookie. Set-Cookie values are built with the snapshot.

use http::HeaderValue;

/// Keys the identity hash, so that values do not simply hash the names.
const KEY: &[u8] = b"weir-sticky-v1";

/// A stable 64-bit identity (FNV-1a over the key and the parts).
pub fn id(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(KEY);
    for p in parts {
        feed(p.as_bytes());
        feed(&[0]);
    }
    h
}

/// The cookie name for a gateway: `weir_` and the name with characters a cookie name
/// cannot hold replaced by `_`.
pub fn cookie_name(gateway: &str) -> String {
    let clean: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("weir_{clean}")
}

/// The cookie value: the route's id, and the instance's for instance stickiness.
pub fn value(route: u64, instance: Option<u64>) -> String {
    match instance {
        Some(i) => format!("{route:016x}{i:016x}"),
        None => format!("{route:016x}"),
    }
}

/// Reads a cookie value back into (route id, instance id).
pub fn decode(value: &str) -> Option<(u64, Option<u64>)> {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    match value.len() {
        16 => Some((hex(value)?, None)),
        32 => Some((hex(&value[..16])?, Some(hex(&value[16..])?))),
        _ => None,
    }
}

/// `Set-Cookie` header values: over plain HTTP, and with `Secure` over TLS.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub plain: HeaderValue,
    pub secure: HeaderValue,
}

impl SetCookie {
    pub fn new(name: &str, value: &str) -> Option<SetCookie> {
        let base = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        Some(SetCookie {
            plain: HeaderValue::from_str(&base).ok()?,
            secure: HeaderValue::from_str(&format!("{base}; Secure")).ok()?,
        })
    }

    pub fn get(&self, tls: bool) -> &HeaderValue {
        if tls {
            &self.secure
        } else {
            &self.plain
        }
    }
}

/// Gateways along the routing path whose sticky cookie must be (re)written, with the
/// route chosen there. Fixed size: routing allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct StickyWrites {
    hops: [(u16, u16); 4],
    len: u8,
}

impl StickyWrites {
    pub(crate) fn push(&mut self, gateway: usize, route: usize) {
        if (self.len as usize) < self.hops.len() {
            self.hops[self.len as usize] = (gateway as u16, route as u16);
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.hops[..self.len as usize]
            .iter()
            .map(|(g, r)| (*g as usize, *r as usize))
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_opaque_round_trip() {
        let r = id(&["shop", "shop:1.1"]);
        assert_eq!(r, id(&["shop", "shop:1.1"]), "deterministic");
        assert_ne!(r, id(&["shop", "shop:1.0"]));
        assert_ne!(id(&["ab", "c"]), id(&["a", "bc"]), "parts are delimited");
        let i = id(&["shop", "shop:1.1", "127.0.0.1:80"]);
        assert_eq!(decode(&value(r, None)), Some((r, None)));
        assert_eq!(decode(&value(r, Some(i))), Some((r, Some(i))));
        assert_eq!(decode("zz"), None);
        assert_eq!(decode("g000000000000000"), None);
        assert!(!value(r, None).contains("shop"));
    }

    #[test]
    fn names_and_headers() {
        assert_eq!(cookie_name("sava:1.0/x"), "weir_sava_1.0_x");
        let c = SetCookie::new("weir_g", "00ff").unwrap();
        assert_eq!(c.get(false), "weir_g=00ff; Path=/; HttpOnly; SameSite=Lax");
        assert_eq!(
            c.get(true),
            "weir_g=00ff; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
    }
}
