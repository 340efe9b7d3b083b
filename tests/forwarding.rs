//! SPEC §2.8 through the real binary: forwarding headers from trusted and untrusted peers.

mod common;

use common::*;

fn start(trusted: &str) -> (Weir, Upstream, u16) {
    let port = free_port();
    let up = Upstream::start("up");
    let yaml = format!(
        "listeners:
  http: {{ bind: \"127.0.0.1:{port}\" }}
defaults: {{ trusted_proxies: [{trusted}] }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{}\"] }} }}
",
        up.addr()
    );
    (Weir::start(&yaml, &[port]), up, port)
}

const SPOOFED: &[(&str, &str)] = &[
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "spoofed.test"),
    ("X-Forwarded-Port", "443"),
];

#[test]
fn untrusted_peer_values_are_replaced() {
    let (_weir, up, port) = start("10.0.0.0/8");
    let r = Client::connect(port).get("g.test:8080", "/p", SPOOFED);
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("g.test:8080"));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(port.to_string().as_str())
    );
    let id = seen.header("x-request-id").expect("request id set");
    assert_eq!(id.len(), 32);
    assert_eq!(
        seen.header("host"),
        Some("g.test:8080"),
        "Host passes unchanged"
    );
}

#[test]
fn trusted_peer_values_are_kept_and_client_appended() {
    let (_weir, up, port) = start("127.0.0.1/32");
    let mut headers = SPOOFED.to_vec();
    headers.push(("X-Request-Id", "req-42"));
    Client::connect(port).get("g.test", "/", &headers);
    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("spoofed.test"));
    assert_eq!(seen.header("x-forwarded-port"), Some("443"));
    assert_eq!(seen.header("x-request-id"), Some("req-42"));
}

#[test]
fn request_ids_are_unique_and_hop_by_hop_headers_dropped() {
    let (_weir, up, port) = start("10.0.0.0/8");
    let mut c = Client::connect(port);
    for _ in 0..2 {
        c.get(
            "g.test",
            "/",
            &[
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
            ],
        );
    }
    let seen = up.seen();
    assert_ne!(
        seen[0].header("x-request-id"),
        seen[1].header("x-request-id")
    );
    for s in &seen {
        assert_eq!(
            s.header("x-secret"),
            None,
            "connection-nominated header forwarded"
        );
        assert_eq!(s.header("keep-alive"), None);
    }
}
