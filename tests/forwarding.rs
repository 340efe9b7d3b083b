//! Forwarding through the real binary: forwarding headers from trusted and untrusted peers.

mod common;

use common::*;

fn start(leg: Leg, trusted: &str) -> (Weir, Upstream, u16) {
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
    (Weir::start_on(leg, &yaml, &[port]), up, port)
}

const SPOOFED: &[(&str, &str)] = &[
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "spoofed.test"),
    ("X-Forwarded-Port", "443"),
];

#[test]
fn untrusted_peer_values_are_replaced() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, up, port) = start(leg, "10.0.0.0/8");
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
}

#[test]
fn trusted_peer_values_are_kept_and_client_appended() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, up, port) = start(leg, "127.0.0.1/32");
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
}

#[test]
fn request_ids_are_unique_and_hop_by_hop_headers_dropped() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, up, port) = start(leg, "10.0.0.0/8");
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
}

/// A PROXY protocol v2 header (`command` 1 = PROXY, 0 = LOCAL) for an IPv4 client.
fn proxy_v2(command: u8, client: [u8; 4], client_port: u16, port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x20 | command, 0x11, 0, 12]);
    h.extend(client);
    h.extend([127, 0, 0, 1]);
    h.extend(client_port.to_be_bytes());
    h.extend(port.to_be_bytes());
    h
}

/// Listeners with `proxy_protocol: true` take the client from the balancer's PROXY
/// header (v1 or v2, before TLS too): forwarding headers and `source` conditions see
/// it. A LOCAL header keeps the real peer; a connection without a header is closed.
#[test]
fn proxy_protocol_header_names_the_client() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    leaf(dir.path(), "g", "g.test", &["g.test"], false);
    let (lb, lb_tls, plain) = (free_port(), free_port(), free_port());
    let up = Upstream::start("up");
    let yaml = format!(
        "listeners:
  lb: {{ bind: \"127.0.0.1:{lb}\", proxy_protocol: true }}
  lbtls:
    bind: \"127.0.0.1:{lb_tls}\"
    proxy_protocol: true
    tls: {{ certificates: [ {{ cert: g.pem, key: g.key }} ], default_certificate: 0 }}
  plain: {{ bind: \"127.0.0.1:{plain}\" }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      vip: {{ weight: 0%, condition: \"source in 127.9.9.0/24\", respond: {{ status: 200, body: vip }} }}
      r: {{ weight: 100%, instances: [\"{}\"] }}
",
        up.addr()
    );
    std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
    let _weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        dir.path().join("weir.yaml"),
        &[],
        &[lb, lb_tls, plain],
    );

    // v1; the connection keeps its client for every request on it.
    let mut c = Client::connect(lb);
    c.send_raw(format!("PROXY TCP4 127.9.9.9 127.0.0.1 5555 {lb}\r\n").as_bytes());
    assert_eq!(c.get("g.test", "/", &[]).body, "vip");
    assert_eq!(c.get("g.test", "/again", &[]).body, "vip");
    let mut c = Client::connect(lb);
    c.send_raw(format!("PROXY TCP4 127.9.8.8 127.0.0.1 5555 {lb}\r\n").as_bytes());
    assert_eq!(c.get("g.test", "/", &[]).body, "up");
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.9.8.8"));

    // v2, sent with the request in one write.
    let mut c = Client::connect(lb);
    let mut bytes = proxy_v2(1, [127, 9, 8, 7], 4444, lb);
    bytes.extend(b"GET / HTTP/1.1\r\nHost: g.test\r\n\r\n");
    c.send_raw(&bytes);
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.9.8.7"));
    // v2 LOCAL: the balancer's own check, from the real peer.
    let mut c = Client::connect(lb);
    c.send_raw(&proxy_v2(0, [127, 9, 9, 9], 4444, lb));
    assert_eq!(c.get("g.test", "/", &[]).body, "up");
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.1"));

    // No header: closed without an answer.
    let mut c = Client::connect(lb);
    c.send_raw(b"GET / HTTP/1.1\r\nHost: g.test\r\n\r\n");
    let mut rest = Vec::new();
    use std::io::Read;
    let _ = c.into_reader().read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));

    // Before TLS (curl's v1 header names its own address).
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "--haproxy-protocol", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .args(["--resolve", &format!("g.test:{lb_tls}:127.0.0.1")])
        .arg(format!("https://g.test:{lb_tls}/tls"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "up");
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));

    // Listeners without the option are unaffected.
    assert_eq!(get(plain, "g.test", "/").body, "up");
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.1"));
}

/// The response carries one Date and one Connection, weir's, whatever the instance
/// sent, on both legs (read as raw header lines: a duplicate would show).
#[test]
fn hop_by_hop_response_headers_are_weirs_and_not_doubled() {
    for leg in Leg::BOTH {
        let (_weir, up, port) = start(leg, "10.0.0.0/8");
        up.reply.set_headers(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-two", "a"),
            ("x-two", "b"),
        ]);
        let mut c = Client::connect(port);
        for _ in 0..2 {
            let r = c.get("g.test", "/", &[]);
            assert_eq!(r.status, 200, "{leg:?}");
            assert_eq!(r.all("date").count(), 1, "{leg:?}: {:?}", r.headers);
            assert_eq!(r.all("connection").count(), 1, "{leg:?}: {:?}", r.headers);
            assert_eq!(r.all("x-two").collect::<Vec<_>>(), ["a", "b"], "{leg:?}");
            assert_eq!(r.header("keep-alive"), None, "{leg:?}: {:?}", r.headers);
        }
    }
}
