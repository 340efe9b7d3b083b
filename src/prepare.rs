//! What a snapshot build needs from outside the config files, gathered before the pure
//! build: DNS answers for the host names the config uses, and the self-signed
//! certificates `tls.self_signed` asks for. Both are cached for the life of the process
//! ([`Caches`]): a reload does not look up a known name again or make a new key, and a
//! name that does not resolve does not stop anything: its instances stay down until a
//! background refresh finds it (like HAProxy's `init-addr none`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use crate::config::units::split_host_port;
use crate::config::Config;
use crate::tls;

/// Self-signed certificates by the names they were made for.
pub type SelfSigned = HashMap<Vec<String>, Result<Arc<tls::Loaded>, String>>;

/// A build's inputs besides the loaded files.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// Addresses of each DNS name the config uses; empty when it does not resolve.
    pub dns: HashMap<String, Vec<IpAddr>>,
    /// Certificates for each `tls.self_signed` list of names.
    pub self_signed: SelfSigned,
}

impl Inputs {
    /// The addresses of `host` (an IP literal, or a name looked up before the build);
    /// `None` when the name did not resolve.
    pub fn addresses(&self, host: &str) -> Option<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(vec![ip]);
        }
        self.dns.get(host).filter(|a| !a.is_empty()).cloned()
    }
}

/// The DNS names a config uses: instance hosts and external `[host:port]` targets.
pub fn dns_names(config: &Config) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for g in &config.gateways {
        for (key, route) in &g.routes {
            for i in &route.instances {
                names.insert(i.0.host.clone());
            }
            let mirrored = route.mirror.as_ref().map(|m| m.route.as_str());
            for inner in [Some(key.as_str()), mirrored]
                .into_iter()
                .flatten()
                .filter_map(|k| k.strip_prefix('[').and_then(|k| k.strip_suffix(']')))
            {
                if let Ok((host, _)) = split_host_port(inner) {
                    names.insert(host);
                }
            }
        }
    }
    names.retain(|n| n.parse::<IpAddr>().is_err());
    names
}

/// Looks a name up (blocking); no address is an empty list.
pub fn lookup(name: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default();
    ips.sort();
    ips.dedup();
    ips
}

/// Lookups and generated certificates kept across builds.
#[derive(Debug)]
pub struct Caches {
    dns: Mutex<HashMap<String, Vec<IpAddr>>>,
    self_signed: Mutex<SelfSigned>,
    /// How names are looked up ([`lookup`]; tests put in a resolver of their own).
    resolver: fn(&str) -> Vec<IpAddr>,
}

impl Default for Caches {
    fn default() -> Caches {
        Caches {
            dns: Mutex::default(),
            self_signed: Mutex::default(),
            resolver: lookup,
        }
    }
}

impl Caches {
    /// The inputs for building `config`: names not seen before are looked up now (a
    /// failure is remembered as no address, and retried by [`Caches::refresh_dns`]);
    /// names the config no longer uses are forgotten.
    pub fn prepare(&self, config: &Config) -> Inputs {
        let names = dns_names(config);
        let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        dns.retain(|n, _| names.contains(n));
        for name in &names {
            if !dns.contains_key(name) {
                let found = (self.resolver)(name);
                if found.is_empty() {
                    log::warn!("{name:?} does not resolve; its instances stay down until it does");
                }
                dns.insert(name.clone(), found);
            }
        }
        let mut certs = self.self_signed.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted = BTreeSet::new();
        for tls in config.listeners.values().filter_map(|l| l.tls.as_ref()) {
            if !tls.self_signed.is_empty() {
                wanted.insert(tls.self_signed.clone());
            }
        }
        certs.retain(|n, _| wanted.contains(n));
        for names in wanted {
            certs
                .entry(names.clone())
                .or_insert_with(|| tls::self_signed(&names));
        }
        Inputs {
            dns: dns.clone(),
            self_signed: certs.clone(),
        }
    }

    /// Looks every known name up again. A name that fails now keeps its last addresses;
    /// one that resolves for the first time joins. Returns whether anything changed.
    pub fn refresh_dns(&self) -> bool {
        let names: Vec<String> = self
            .dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        // Looked up without the lock: a lookup may take seconds.
        let answers: Vec<(String, Vec<IpAddr>)> = names
            .into_iter()
            .map(|n| {
                let found = (self.resolver)(&n);
                (n, found)
            })
            .collect();
        let mut dns = self.dns.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (name, found) in answers {
            let Some(known) = dns.get_mut(&name) else {
                continue;
            };
            if !found.is_empty() && *known != found {
                if known.is_empty() {
                    log::info!("{name:?} resolves now: {found:?}");
                }
                *known = found;
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let config: Config = serde_yaml::from_str(
            "gateways:\n- name: g\n  routes:\n    a: { instances: [\"127.0.0.1:1\", \"localhost:2\", \"nowhere.invalid:3\"] }\n    \"[ext.invalid:80]\": {}\n",
        )
        .unwrap();
        let names: Vec<String> = dns_names(&config).into_iter().collect();
        assert_eq!(names, ["ext.invalid", "localhost", "nowhere.invalid"]);
        let caches = Caches::default();
        let inputs = caches.prepare(&config);
        assert!(inputs.addresses("localhost").is_some());
        assert_eq!(inputs.addresses("nowhere.invalid"), None);
        assert_eq!(inputs.addresses("10.0.0.1").unwrap().len(), 1);
        assert_eq!(inputs.dns.values().filter(|a| a.is_empty()).count(), 2);
        // A refresh that finds nothing new changes nothing.
        assert!(!caches.refresh_dns());
    }

    #[test]
    fn a_name_that_resolves_later_joins_on_refresh() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static UP: AtomicBool = AtomicBool::new(false);
        fn flaky(name: &str) -> Vec<IpAddr> {
            match (name, UP.load(Ordering::Relaxed)) {
                ("late.test", true) => vec![IpAddr::from([127, 0, 0, 9])],
                _ => Vec::new(),
            }
        }
        let caches = Caches {
            resolver: flaky,
            ..Caches::default()
        };
        let yaml = "listeners: { http: { bind: \"127.0.0.1:1\" } }\ngateways:\n- name: g\n  virtual_hosts: [g.test]\n  routes: { r: { instances: [\"late.test:80\", \"127.0.0.1:81\"] } }\n";
        let loaded =
            crate::config::load::load_from_str(std::path::Path::new("t.yaml"), yaml).unwrap();
        let resolved = |inputs: &Inputs| {
            let s = crate::snapshot::build(&loaded, inputs).unwrap();
            let crate::snapshot::Target::Pool(p) = &s.gateways[0].routes[0].target else {
                panic!("a pool");
            };
            let u = &p.instances[0];
            (u.resolved, u.peer._address.to_string())
        };
        assert!(!resolved(&caches.prepare(&loaded.config)).0);
        assert!(!caches.refresh_dns(), "still nothing");
        UP.store(true, Ordering::Relaxed);
        assert!(caches.refresh_dns(), "the name resolves now: rebuild");
        assert_eq!(
            resolved(&caches.prepare(&loaded.config)),
            (true, "127.0.0.9:80".to_string())
        );
        // A later failure keeps the last good addresses.
        UP.store(false, Ordering::Relaxed);
        assert!(!caches.refresh_dns());
        assert!(resolved(&caches.prepare(&loaded.config)).0);
    }
}
