//! The per-request routing decision on large snapshots: listener entry by port, vhost
//! lookup, route choice (conditions, strength, weights; following chains), instance
//! choice. Snapshots: 1,000 gateways with one vhost each (half exact, half wildcard),
//! either 10 weighted routes of 3 instances each, or 20 conditional routes (header,
//! cookie, user-agent and raw ACL conditions) and a default route.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use weir::config::load::load_from_str;
use weir::prepare::Inputs;
use weir::request::Request;
use weir::snapshot::{build, Snapshot, StickyWrites, Target};

const GATEWAYS: usize = 1000;

fn vhost(g: usize) -> String {
    if g.is_multiple_of(2) {
        format!("gw{g}.example.com")
    } else {
        format!("\"*.gw{g}.example.org\"")
    }
}

fn host(g: usize) -> Vec<u8> {
    if g.is_multiple_of(2) {
        format!("GW{g}.example.com:8080").into_bytes()
    } else {
        format!("www.gw{g}.example.org").into_bytes()
    }
}

fn weighted_config() -> String {
    let mut y = String::from("listeners: { http: { bind: \"127.0.0.1:8080\" } }\ngateways:\n");
    for g in 0..GATEWAYS {
        y.push_str(&format!(
            "  - name: gw{g}\n    virtual_hosts: [{}]\n    routes:\n",
            vhost(g)
        ));
        for r in 0..10 {
            let port = 10000 + r * 3;
            y.push_str(&format!(
                "      r{r}: {{ weight: 10%, instances: [\"127.0.0.1:{}\", \"127.0.0.1:{}\", {{ host: 127.0.0.1, port: {}, weight: 2 }}] }}\n",
                port,
                port + 1,
                port + 2
            ));
        }
    }
    y
}

/// 20 conditional routes per gateway, of four kinds; none matches the bench request,
/// so every condition is evaluated. `conditional` says which gateways get them (the
/// others get the 10 weighted routes).
fn conditional_config(conditional: impl Fn(usize) -> bool) -> String {
    let mut y = String::from("listeners: { http: { bind: \"127.0.0.1:8080\" } }\ngateways:\n");
    for g in 0..GATEWAYS {
        if !conditional(g) {
            y.push_str(&format!(
                "  - name: gw{g}\n    virtual_hosts: [{}]\n    routes:\n{}",
                vhost(g),
                (0..10)
                    .map(|r| format!(
                        "      r{r}: {{ weight: 10%, instances: [\"127.0.0.1:{}\"] }}\n",
                        10000 + r
                    ))
                    .collect::<String>()
            ));
            continue;
        }
        y.push_str(&format!(
            "  - name: gw{g}\n    virtual_hosts: [{}]\n    routes:\n",
            vhost(g)
        ));
        y.push_str("      default: { weight: 100%, instances: [\"127.0.0.1:10000\", \"127.0.0.1:10001\"] }\n");
        for r in 0..20 {
            let cond = match r % 4 {
                0 => format!("header X-Tenant has t{r} and not has cookie opt-out"),
                1 => format!("cookie beta contains v{r} or misses header x-canary"),
                2 => format!("user-agent == Firefox and has header X-Beta{r}"),
                _ => format!("< hdr_sub(x-group) g{r} > || {{ path_beg /v{r}/ }}"),
            };
            y.push_str(&format!(
                "      c{r}: {{ weight: 0%, condition: \"{cond}\", condition_strength: 50%, instances: [\"127.0.0.1:{}\"] }}\n",
                11000 + r
            ));
        }
    }
    y
}

fn snapshot(yaml: &str) -> Snapshot {
    let loaded = load_from_str(Path::new("bench.yaml"), yaml).expect("bench config loads");
    build(&loaded, &Inputs::default()).expect("bench config builds")
}

fn decide(s: &Snapshot, host: &[u8], headers: &HeaderMap) -> Option<u16> {
    let entry = s.entry(8080)?;
    let view = Request::new(host, "/v99/items", "GET", headers, None);
    let mut writes = StickyWrites::default();
    let selected = s.select(entry, host, &view, &mut writes).ok()?;

    match &s.route(selected).target {
        Target::Pool(pool) => pool
            .pick(Default::default(), &view)
            .map(|u| u.peer._address.as_inet().map_or(0, |a| a.port())),
        _ => None,
    }
}

fn bench(c: &mut Criterion) {
    let hosts: Vec<Vec<u8>> = (0..GATEWAYS).map(host).collect();
    let mut headers = HeaderMap::new();
    headers.insert(
        "user-agent",
        HeaderValue::from_static("Mozilla/5.0 (X11) Gecko/20100101 Firefox/120.0"),
    );
    headers.insert(
        "cookie",
        HeaderValue::from_static("session=abc; beta=v0; theme=dark"),
    );
    headers.insert("x-canary", HeaderValue::from_static("1"));
    headers.insert("x-group", HeaderValue::from_static("g0 g1 g2"));

    let weighted = snapshot(&weighted_config());
    assert!(hosts
        .iter()
        .all(|h| decide(&weighted, h, &headers).is_some()));
    let mut i = 0;
    c.bench_function("route_decision_1000_vhosts_10_routes", |b| {
        b.iter(|| {
            i = (i + 1) % hosts.len();
            black_box(decide(&weighted, black_box(&hosts[i]), &headers))
        })
    });
    c.bench_function("route_decision_unknown_host", |b| {
        b.iter(|| {
            black_box(decide(
                &weighted,
                black_box(b"nobody.example.net"),
                &headers,
            ))
        })
    });

    // The case: one gateway with 20 conditional routes among 1,000 vhosts.
    let one = snapshot(&conditional_config(|g| g == 500));
    assert!(decide(&one, &hosts[500], &headers).is_some());
    c.bench_function(
        "route_decision_20_conditional_routes_among_1000_vhosts",
        |b| b.iter(|| black_box(decide(&one, black_box(&hosts[500]), &headers))),
    );
    // Harsher: every gateway has 20 conditions and requests rotate over all of them, so
    // the conditions are rarely in CPU cache.
    let all = snapshot(&conditional_config(|_| true));
    assert!(hosts.iter().all(|h| decide(&all, h, &headers).is_some()));
    c.bench_function(
        "route_decision_rotating_1000_gateways_20_conditional_routes",
        |b| {
            b.iter(|| {
                i = (i + 1) % hosts.len();
                black_box(decide(&all, black_box(&hosts[i]), &headers))
            })
        },
    );

    let loaded = load_from_str(Path::new("bench.yaml"), &weighted_config()).unwrap();
    c.bench_function("snapshot_build_1000_gateways_10000_routes", |b| {
        b.iter(|| black_box(build(&loaded, &Inputs::default()).unwrap().gateways.len()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
