//! Virtual host table: the Host of a request to a gateway. Exact names beat
//! `*.` wildcards; a wildcard matches one or more labels, and the longest wildcard
//! suffix wins. Lookups are case-insensitive and allocate nothing.

use rustc_hash::FxHashMap;

/// Longest host name we look up (DNS limit); longer Hosts never match.
pub const MAX_HOST: usize = 253;

#[derive(Debug, Default, Clone)]
pub struct VhostTable {
    exact: FxHashMap<Box<str>, usize>,
    /// Keyed by the suffix after `*.`.
    wildcard: FxHashMap<Box<str>, usize>,
}

/// Checks a `virtual_hosts` entry and returns it lower-cased.
pub fn normalize_pattern(name: &str) -> Result<String, String> {
    let lower = name.trim().to_ascii_lowercase();
    let host = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.is_empty() || host.len() > MAX_HOST || !host.split('.').all(valid_label) {
        return Err(format!(
            "invalid virtual host {name:?}: expected a host name, optionally starting with \"*.\""
        ));
    }
    Ok(lower)
}

impl VhostTable {
    /// Adds a normalized pattern; returns the gateway already holding it, if any.
    pub fn insert(&mut self, pattern: &str, gateway: usize) -> Option<usize> {
        let (map, key) = match pattern.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, pattern),
        };
        if let Some(existing) = map.get(key) {
            return Some(*existing);
        }
        map.insert(key.into(), gateway);
        None
    }

    /// The gateway for a Host header value (port stripped here, any case).
    pub fn lookup(&self, host: &[u8]) -> Option<usize> {
        let host = strip_port(host);
        if host.is_empty() || host.len() > MAX_HOST {
            return None;
        }
        let mut buf = [0u8; MAX_HOST];
        let lowered = &mut buf[..host.len()];
        lowered.copy_from_slice(host);
        lowered.make_ascii_lowercase();
        let lowered = std::str::from_utf8(lowered).ok()?;
        let lowered = lowered.strip_suffix('.').unwrap_or(lowered);
        if let Some(g) = self.exact.get(lowered) {
            return Some(*g);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Longest suffix first: "a.b.example.org" tries "b.example.org", then "example.org"...
        let mut rest = lowered;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(g) = self.wildcard.get(rest) {
                return Some(*g);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`.
pub fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|b| *b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|b| *b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> VhostTable {
        let mut t = VhostTable::default();
        for (p, g) in [
            ("sava.example.com", 0),
            ("*.example.org", 1),
            ("api.example.org", 2),
            ("*.eu.example.org", 3),
        ] {
            assert_eq!(t.insert(&normalize_pattern(p).unwrap(), g), None);
        }
        t
    }

    #[test]
    fn exact_wildcard_case_port() {
        let t = table();
        assert_eq!(t.lookup(b"sava.example.com"), Some(0));
        assert_eq!(t.lookup(b"SAVA.Example.COM:8080"), Some(0));
        assert_eq!(t.lookup(b"sava.example.com."), Some(0));
        assert_eq!(t.lookup(b"www.example.org"), Some(1));
        assert_eq!(t.lookup(b"a.b.example.org"), Some(1), "one or more labels");
        assert_eq!(
            t.lookup(b"api.example.org"),
            Some(2),
            "exact beats wildcard"
        );
        assert_eq!(t.lookup(b"x.eu.example.org"), Some(3), "longest wildcard");
        assert_eq!(t.lookup(b"example.org"), None, "wildcard needs a label");
        assert_eq!(t.lookup(b"other.com"), None);
        assert_eq!(t.lookup(b""), None);
        assert_eq!(t.lookup(&[b'a'; 300]), None);
        assert_eq!(t.lookup(b"\xff\xfe"), None);
    }

    #[test]
    fn duplicates_and_patterns() {
        let mut t = table();
        assert_eq!(t.insert("sava.example.com", 9), Some(0));
        assert_eq!(t.insert("*.example.org", 9), Some(1));
        assert!(normalize_pattern("a..b").is_err());
        assert!(normalize_pattern("*").is_err());
        assert!(normalize_pattern("a.*.b").is_err());
        assert!(normalize_pattern("host:80").is_err());
        assert_eq!(normalize_pattern("Foo.COM").unwrap(), "foo.com");
    }

    #[test]
    fn ports_stripped() {
        assert_eq!(strip_port(b"a.com:80"), b"a.com");
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
        assert_eq!(strip_port(b"a.com"), b"a.com");
    }
}
