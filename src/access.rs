//! Who may use a gateway: its `allow` and `deny` lists of client addresses, checked
//! before a route is chosen.

use std::net::IpAddr;

use ipnet::IpNet;

/// A gateway's `allow` and `deny` lists of client addresses.
#[derive(Debug, Default)]
pub struct Access {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl Access {
    /// Whether `client` may use the gateway: not denied, and allowed when there is an
    /// allow list. A client of unknown address is admitted only without an allow list.
    pub fn admits(&self, client: Option<IpAddr>) -> bool {
        match client {
            Some(ip) => {
                !self.deny.iter().any(|n| n.contains(&ip))
                    && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
            }
            None => self.allow.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lists() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let allow = Access {
            allow: vec![net("10.0.0.0/8")],
            deny: vec![net("10.9.0.0/16")],
        };
        assert!(allow.admits(ip("10.1.2.3")));
        assert!(!allow.admits(ip("10.9.2.3")), "deny comes first");
        assert!(!allow.admits(ip("192.0.2.1")));
        assert!(
            !allow.admits(None),
            "an unknown client is not on an allow list"
        );
        let deny = Access {
            allow: vec![],
            deny: vec![net("::1/128")],
        };
        assert!(!deny.admits(ip("::1")));
        assert!(deny.admits(ip("127.0.0.1")));
        assert!(deny.admits(None));
    }
}
