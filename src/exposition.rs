//! Metric exposition: the Prometheus text for `/metrics`, with the gauges that describe
//! the current state (instance health, effective weights, certificate expiry, unresolved
//! instances) set from the snapshot at scrape time; and the cleanup of series that a
//! reload removed.

use std::collections::HashSet;

use prometheus::{Encoder, TextEncoder};

use crate::metrics::{metrics, ERROR_KINDS, MIRROR_RESULTS, RETRY_REASONS};
use crate::snapshot::{Snapshot, Target};

/// Every (gateway, route) of a snapshot, borrowed.
fn route_labels(s: &Snapshot) -> HashSet<(&str, &str)> {
    s.gateways
        .iter()
        .flat_map(|g| g.routes.iter().map(move |r| (&*g.name, &*r.key)))
        .collect()
}

/// Every (gateway, route, instance) of a snapshot, borrowed.
fn instance_labels(s: &Snapshot) -> HashSet<(&str, &str, &str)> {
    let mut out = HashSet::new();
    for g in &s.gateways {
        for r in &g.routes {
            if let Target::Pool(p) = &r.target {
                for u in &p.instances {
                    out.insert((&*g.name, &*r.key, &*u.name));
                }
            }
        }
    }
    out
}

/// Deletes the series of routes and instances that `old` had and `new` does not.
pub fn forget_removed(old: &Snapshot, new: &Snapshot) {
    let m = metrics();
    let keep = route_labels(new);
    for (g, r) in route_labels(old).difference(&keep) {
        for c in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let _ = m.requests.remove_label_values(&[g, r, c]);
        }
        let _ = m.duration.remove_label_values(&[g, r]);
        let _ = m.bytes_sent.remove_label_values(&[g, r]);
        let _ = m.bytes_received.remove_label_values(&[g, r]);
        let _ = m.rate_limited.remove_label_values(&[g, r]);
        let _ = m.retries_over_budget.remove_label_values(&[g, r]);
        for reason in RETRY_REASONS {
            let _ = m.retries.remove_label_values(&[g, r, reason]);
        }
        for result in MIRROR_RESULTS {
            let _ = m.mirrored.remove_label_values(&[g, r, result]);
        }
    }
    let keep = instance_labels(new);
    for (g, r, i) in instance_labels(old).difference(&keep) {
        for kind in ERROR_KINDS {
            let _ = m.upstream_errors.remove_label_values(&[g, r, i, kind]);
        }
        let _ = m.ejections.remove_label_values(&[g, r, i]);
    }
}

/// The Prometheus text exposition, with state gauges set from `snapshot`.
pub fn render(snapshot: &Snapshot) -> Vec<u8> {
    let m = metrics();
    m.instance_healthy.reset();
    m.route_weight.reset();
    let mut unresolved = 0;
    for g in &snapshot.gateways {
        for (r, ratio) in g.routes.iter().zip(g.weight_ratios()) {
            m.route_weight
                .with_label_values(&[&g.name, &r.key])
                .set(ratio);
            if let Target::Pool(p) = &r.target {
                for u in &p.instances {
                    unresolved += i64::from(!u.resolved);
                    m.instance_healthy
                        .with_label_values(&[&g.name, &r.key, &u.name])
                        .set(u.health.available() as i64);
                }
            }
        }
    }
    m.unresolved.set(unresolved);
    m.cert_expiry.reset();
    for l in &snapshot.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certs) {
            let name = c.names.first().map_or("", String::as_str);
            m.cert_expiry
                .with_label_values(&[&l.name, name, c.key_type])
                .set(c.not_after as f64);
        }
    }
    for (listener, issued) in crate::acme::all_certs() {
        for (name, c) in issued.load().iter() {
            m.cert_expiry
                .with_label_values(&[&listener, name, c.key_type])
                .set(c.not_after as f64);
        }
    }
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        log::error!("encoding metrics: {e}");
    }
    out
}
