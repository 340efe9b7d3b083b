//! HTTP/2 abuse against weir's own HTTP/2 connection loop (src/http2), through the real
//! binary with raw frames over TLS: rapid reset, a CONTINUATION flood, SETTINGS and PING
//! floods, a huge HPACK header, a client that grants no window. Each is bounded: the
//! connection is closed (GOAWAY) or its cost stays small, it is counted, and the
//! process keeps serving other clients meanwhile.

mod common;

use std::time::Duration;

use common::*;

fn yaml(tls: u16, admin: u16, up: &str) -> String {
    format!(
        "listeners:
  https: {{ bind: \"127.0.0.1:{tls}\", tls: {{ self_signed: [g.test], default_certificate: 0 }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults: {{ timeouts: {{ idle: 3s }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{up}\"] }} }}
"
    )
}

struct Edge {
    weir: Weir,
    up: Upstream,
    tls: u16,
    admin: u16,
}

fn start() -> Edge {
    let up = Upstream::start("up");
    let (tls, admin) = (free_port(), free_port());
    let weir = Weir::start(&yaml(tls, admin, &up.addr()), &[tls, admin]);
    Edge {
        weir,
        up,
        tls,
        admin,
    }
}

impl Edge {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.weir.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn errors(&self, reason: &str) -> f64 {
        let key =
            format!("weir_http2_connection_errors_total{{listener=\"https\",reason=\"{reason}\"}}");
        scrape(self.admin).get(&key).copied().unwrap_or(0.0)
    }

    /// Another client, on its own connection, gets its answer.
    fn serves_others(&self) {
        let mut c = H2Raw::connect(self.tls, "g.test");
        let get = hpack_request("GET", "g.test", &[]);
        c.send(&h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &get));
        assert!(within(Duration::from_secs(8), || c.stream_ended(1)));
        let ok = c
            .frames()
            .iter()
            .any(|f| f.kind == HEADERS && f.stream == 1 && f.payload.first() == Some(&0x88));
        assert!(ok, "no 200 for another client: {:?}", c.frames());
    }
}

/// The GOAWAY the server sent, as (last stream, error code), once the connection closed.
fn goaway(c: &mut H2Raw) -> Option<(u32, u32)> {
    assert!(
        within(Duration::from_secs(8), || c.closed()),
        "the connection stayed open"
    );
    let g = c.frames().into_iter().find(|f| f.kind == GOAWAY)?;
    let word = |at: usize| u32::from_be_bytes(g.payload[at..at + 4].try_into().unwrap());
    Some((word(0) & 0x7fff_ffff, word(4)))
}

const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[test]
fn rapid_reset_is_cut_off_with_goaway_and_counted() {
    let edge = start();
    let mut c = H2Raw::connect(edge.tls, "g.test");
    let mut out = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        out.extend(h2_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &hpack_request("GET", "g.test", &[]),
        ));
        out.extend(h2_frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    c.send(&out);
    let (_, code) = goaway(&mut c).expect("a GOAWAY");
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert_eq!(edge.errors("protocol"), 1.0);
    // Far fewer than the 2000 streams opened reached the instance.
    assert!(
        edge.up.count() < 200,
        "{} requests went upstream",
        edge.up.count()
    );
    edge.serves_others();
}

#[test]
fn a_continuation_flood_is_cut_off_with_goaway_and_counted() {
    let edge = start();
    let mut c = H2Raw::connect(edge.tls, "g.test");
    // A header block that never ends: CONTINUATION frames without END_HEADERS.
    let mut out = h2_frame(HEADERS, 0, 1, &hpack_request("GET", "g.test", &[]));
    let piece = hpack_request("GET", "g.test", &[("x-a", &"a".repeat(1000))]);
    for _ in 0..2000 {
        out.extend(h2_frame(CONTINUATION, 0, 1, &piece[3..]));
    }
    c.send(&out);
    let (_, code) = goaway(&mut c).expect("a GOAWAY");
    assert_eq!(code, PROTOCOL_ERROR);
    assert_eq!(edge.errors("protocol"), 1.0);
    assert_eq!(edge.up.count(), 0);
    edge.serves_others();
}

#[test]
fn a_header_block_over_the_limit_never_reaches_the_instance() {
    let edge = start();
    let mut c = H2Raw::connect(edge.tls, "g.test");
    let block = hpack_request("GET", "g.test", &[("x-big", &"a".repeat(200_000))]);
    let mut out = h2_frame(HEADERS, 0, 1, &block[..16000]);
    for (i, piece) in block[16000..].chunks(16000).enumerate() {
        let last = 16000 * (i + 2) >= block.len();
        let flags = if last { END_HEADERS | END_STREAM } else { 0 };
        out.extend(h2_frame(CONTINUATION, flags, 1, piece));
    }
    c.send(&out);
    assert!(within(Duration::from_secs(8), || c.closed() || c.stream_ended(1)));
    assert_eq!(edge.up.count(), 0);
    edge.serves_others();
}

/// SETTINGS and PING frames each cost one small answer: a flood of them costs little
/// memory, and the process serves others meanwhile.
#[test]
fn settings_and_ping_floods_cost_little() {
    let edge = start();
    edge.serves_others();
    let before = edge.rss_kib();
    for kind in [SETTINGS, PING] {
        let mut c = H2Raw::connect(edge.tls, "g.test");
        let payload: &[u8] = if kind == PING { &[0; 8] } else { &[] };
        let flood: Vec<u8> = (0..20_000)
            .flat_map(|_| h2_frame(kind, 0, 0, payload))
            .collect();
        c.send(&flood);
        edge.serves_others();
        // Every one was answered (an ACK each) before the idle timeout closed it.
        assert!(within(Duration::from_secs(8), || c.closed()), "kind {kind}");
        let acks = c
            .frames()
            .iter()
            .filter(|f| f.kind == kind && f.flags & 1 == 1)
            .count();
        assert!(acks >= 19_000, "kind {kind}: {acks} acks");
    }
    let grown = edge.rss_kib().saturating_sub(before);
    assert!(grown < 16 << 10, "RSS grew {grown} KiB");
}

/// A client that grants no flow-control window: the stream is cut after the idle
/// timeout, and its upstream connection freed.
#[test]
fn a_zero_window_stream_is_cut_after_the_idle_timeout() {
    let edge = start();
    edge.up.reply.set_body(&vec![b'z'; 64 << 10]);
    let mut c = H2Raw::connect(edge.tls, "g.test");
    // SETTINGS_INITIAL_WINDOW_SIZE = 0.
    c.send(&h2_frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    c.send(&h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &hpack_request("GET", "g.test", &[]),
    ));
    assert!(within(Duration::from_secs(3), || edge.up.count() == 1));
    assert!(
        within(Duration::from_secs(10), || c.stream_ended(1) || c.closed()),
        "a stream with no window is still open"
    );
    assert!(!c
        .frames()
        .iter()
        .any(|f| f.kind == DATA && !f.payload.is_empty()));
    edge.serves_others();
}
