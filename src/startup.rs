//! Settings that take effect only when the process starts: the addresses it binds (and
//! which of them speak TLS), the admin listener, the access log, the HTTP/2 idle
//! timeout (Pingora reads it once), and the config store and state directory. A reload that changes one of them applies the rest
//! and reports these as needing a restart (or `weir -u`), in `/readyz` and the log.

use std::net::SocketAddr;
use std::time::Duration;

/// One bound address and what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub addr: SocketAddr,
    /// `listener "https"` or `gateway "g" port`.
    pub what: String,
    pub tls: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Startup {
    pub binds: Vec<Bind>,
    pub admin: Option<SocketAddr>,
    /// `stdout`, or the resolved path of the access log.
    pub access_log: Option<String>,
    pub h2_idle_timeout: Duration,
    pub config_source: Option<crate::config::ConfigSource>,
    pub state_dir: Option<String>,
}

impl Startup {
    /// What `next` changes that only a restart applies, one phrase each.
    pub fn changes(&self, next: &Startup) -> Vec<String> {
        let mut out = Vec::new();
        for b in &next.binds {
            match self.binds.iter().find(|o| o.addr == b.addr) {
                None => out.push(format!("{} wants {}, which is not bound", b.what, b.addr)),
                Some(o) if o.tls != b.tls => {
                    let now = if b.tls { "TLS" } else { "plain" };
                    out.push(format!("{} on {} turns {now}", b.what, b.addr));
                }
                Some(_) => {}
            }
        }
        for o in &self.binds {
            if !next.binds.iter().any(|b| b.addr == o.addr) {
                out.push(format!("{} on {} is no longer configured", o.what, o.addr));
            }
        }
        let show = |a: &Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
        if self.admin != next.admin {
            out.push(format!(
                "admin.bind changes from {} to {}",
                show(&self.admin),
                show(&next.admin)
            ));
        }
        if self.access_log != next.access_log {
            let show = |a: &Option<String>| a.clone().unwrap_or_else(|| "none".into());
            out.push(format!(
                "access_log changes from {} to {}",
                show(&self.access_log),
                show(&next.access_log)
            ));
        }
        if self.config_source != next.config_source {
            out.push("config_source changes".into());
        }
        if self.state_dir != next.state_dir {
            out.push("state_dir changes".into());
        }
        if self.h2_idle_timeout != next.h2_idle_timeout {
            out.push(
                "defaults.timeouts.idle applies to HTTP/2 client connections only after a restart"
                    .into(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(port: u16, tls: bool) -> Bind {
        Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            what: format!("listener \"l{port}\""),
            tls,
        }
    }

    #[test]
    fn every_start_time_change_is_named() {
        let a = Startup {
            binds: vec![bind(1, false), bind(2, true)],
            admin: Some("127.0.0.1:9900".parse().unwrap()),
            access_log: None,
            h2_idle_timeout: Duration::from_secs(60),
            config_source: None,
            state_dir: None,
        };
        assert!(a.changes(&a.clone()).is_empty());
        let b = Startup {
            binds: vec![bind(1, true), bind(3, false)],
            admin: Some("127.0.0.1:9901".parse().unwrap()),
            access_log: Some("stdout".into()),
            h2_idle_timeout: Duration::from_secs(5),
            config_source: None,
            state_dir: Some("/var/lib/weir".into()),
        };
        let c = a.changes(&b).join("; ");
        for want in [
            "on 127.0.0.1:1 turns TLS",
            "wants 127.0.0.1:3, which is not bound",
            "on 127.0.0.1:2 is no longer configured",
            "admin.bind changes from 127.0.0.1:9900 to 127.0.0.1:9901",
            "access_log changes from none to stdout",
            "defaults.timeouts.idle",
            "state_dir changes",
        ] {
            assert!(c.contains(want), "missing {want}: {c}");
        }
    }
}
