//! Rules across gateways and for TCP gateways: chains without loops and not too deep,
//! chains that stay within one kind, and what a TCP gateway cannot have.

use std::sync::Arc;

use super::{Builder, MAX_CHAIN_DEPTH};
use crate::config::{Balance, GatewayConfig, HealthProtocol, Sticky};
use crate::snapshot::{Gateway, Target};

impl Builder<'_> {
    /// Chains stay within one kind: HTTP gateways chain to HTTP gateways only, and TCP
    /// gateways do not chain.
    pub(super) fn check_tcp_chains(
        &mut self,
        configs: &[Arc<GatewayConfig>],
        gateways: &[Gateway],
    ) {
        for (gw, g) in configs.iter().zip(gateways) {
            for r in &g.routes {
                if let Target::Chain(next) = r.target {
                    if g.tcp || gateways[next].tcp {
                        let scope = format!("gateway {:?}: route {:?}", g.name, r.key);
                        self.error(gw, &scope, "a chain cannot start or end at a TCP gateway");
                    }
                }
            }
        }
    }

    /// What a TCP gateway cannot have: everything that reads HTTP.
    pub(super) fn check_tcp_gateway(&mut self, gw: &GatewayConfig, scope: &str) {
        let refuse = |b: &mut Self, what: &str| {
            b.error(
                gw,
                scope,
                format!("a TCP gateway (port N/tcp) cannot have {what}"),
            );
        };
        if !gw.virtual_hosts.is_empty() || gw.listeners.is_some() {
            refuse(self, "virtual_hosts or listeners (it has only its port)");
        }
        if gw.sticky != Sticky::None {
            refuse(self, "sticky (cookies are HTTP)");
        }
        if gw.hsts.is_some() {
            refuse(self, "hsts");
        }
        if gw.basic_auth.is_some() || gw.compression.is_some() {
            refuse(self, "basic_auth or compression (they are HTTP)");
        }
        if gw.client_auth.is_some() {
            refuse(self, "client_auth (a TCP gateway does not terminate TLS)");
        }
        if gw.request_headers.is_some() || gw.response_headers.is_some() {
            refuse(self, "header rules (request_headers, response_headers)");
        }
        let hashed = |b: &Option<Balance>| {
            matches!(
                b,
                Some(Balance::HashHeader(_) | Balance::HashCookie(_) | Balance::HashPath)
            )
        };
        if hashed(&gw.balance) {
            refuse(self, "balance hash(...) (use source_ip)");
        }
        for (key, r) in &gw.routes {
            let scope = format!("{scope}: route {key:?}");
            let mut refuse = |what: &str| {
                self.error(
                    gw,
                    &scope,
                    format!("a TCP gateway (port N/tcp) cannot have {what}"),
                );
            };
            if r.condition.is_some() || r.condition_strength.is_some() {
                refuse("conditions");
            }
            if !r.rewrites.is_empty() {
                refuse("rewrites");
            }
            if r.respond.is_some() {
                refuse("respond routes");
            }
            if r.request_headers.is_some() || r.response_headers.is_some() {
                refuse("header rules (request_headers, response_headers)");
            }
            if r.basic_auth.is_some() || r.compression.is_some() || r.mirror.is_some() {
                refuse("basic_auth, compression or mirror (they are HTTP)");
            }
            if r.timeouts.is_some() || r.retries.is_some() || r.outlier.is_some() {
                refuse("timeouts, retries or outlier (defaults.timeouts.connect applies)");
            }
            if hashed(&r.balance) {
                refuse("balance hash(...) (use source_ip)");
            }
            if r.instances.iter().any(|i| i.0.h2) {
                refuse("h2 instances");
            }
            if r.instances.iter().any(|i| i.0.tls.is_some()) {
                refuse("tls instances (it passes bytes through)");
            }
            if r.health_check
                .as_ref()
                .is_some_and(|c| c.protocol == HealthProtocol::Http)
            {
                refuse("HTTP health checks (use protocol: tcp)");
            }
        }
    }

    /// Refuses chain loops and over-deep chains, naming the cycle.
    pub(super) fn check_chains(&mut self, configs: &[Arc<GatewayConfig>], gateways: &[Gateway]) {
        if configs.len() != gateways.len() {
            return;
        }
        let edges: Vec<Vec<usize>> = gateways
            .iter()
            .map(|g| {
                g.routes
                    .iter()
                    .filter_map(|r| match r.target {
                        Target::Chain(n) => Some(n),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; gateways.len()];
        let mut reported = false;
        for start in 0..gateways.len() {
            let mut path = Vec::new();
            if let Some(cycle) = find_cycle(start, &edges, &mut state, &mut path) {
                if !reported {
                    let names: Vec<&str> = cycle.iter().map(|&i| &*gateways[i].name).collect();
                    let first = &configs[cycle[0]];
                    self.error(
                        first,
                        &format!("gateway {:?}", first.name),
                        format!("gateway chain loop: {}", names.join(" -> ")),
                    );
                    reported = true;
                }
            }
        }
        if reported {
            return;
        }
        for (i, g) in configs.iter().enumerate() {
            if chain_depth(i, &edges) > MAX_CHAIN_DEPTH {
                self.error(
                    g,
                    &format!("gateway {:?}", g.name),
                    format!("gateway chain deeper than {MAX_CHAIN_DEPTH}"),
                );
            }
        }
    }
}

fn find_cycle(
    node: usize,
    edges: &[Vec<usize>],
    state: &mut [u8],
    path: &mut Vec<usize>,
) -> Option<Vec<usize>> {
    match state[node] {
        2 => return None,
        1 => {
            let from = path.iter().position(|&n| n == node).unwrap_or(0);
            let mut cycle = path[from..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        _ => {}
    }
    state[node] = 1;
    path.push(node);
    for &next in &edges[node] {
        if let Some(c) = find_cycle(next, edges, state, path) {
            return Some(c);
        }
    }
    path.pop();
    state[node] = 2;
    None
}

/// Longest chain from `node` in an acyclic graph (1 = no chain).
fn chain_depth(node: usize, edges: &[Vec<usize>]) -> usize {
    1 + edges[node]
        .iter()
        .map(|&n| chain_depth(n, edges))
        .max()
        .unwrap_or(0)
}
