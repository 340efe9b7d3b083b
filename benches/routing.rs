//! The per-request routing decision on a large snapshot: listener entry by port, vhost
//! lookup, route by weight (following chains), instance by weighted round-robin.
//! Snapshot: 1,000 gateways with one vhost each (half exact, half wildcard-matched),
//! 10 routes per gateway, 3 instances per route.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use weir::config::load::load_from_str;
use weir::health::HealthRegistry;
use weir::snapshot::{build, RequestView, Snapshot, Target};

const GATEWAYS: usize = 1000;
const ROUTES: usize = 10;

fn config() -> String {
    let mut y = String::from("listeners: { http: { bind: \"127.0.0.1:8080\" } }\ngateways:\n");
    for g in 0..GATEWAYS {
        let vhost = if g % 2 == 0 {
            format!("gw{g}.example.com")
        } else {
            format!("\"*.gw{g}.example.org\"")
        };
        y.push_str(&format!(
            "  - name: gw{g}\n    virtual_hosts: [{vhost}]\n    routes:\n"
        ));
        for r in 0..ROUTES {
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

fn snapshot() -> Snapshot {
    let loaded = load_from_str(Path::new("bench.yaml"), &config()).expect("bench config loads");
    build(&loaded, &HealthRegistry::default()).expect("bench config builds")
}

fn decide(s: &Snapshot, host: &[u8]) -> Option<u16> {
    let entry = s.entry(8080)?;
    let selected = s.select(entry, &RequestView { host }).ok()?;
    match &s.route(selected).target {
        Target::Pool(pool) => pool
            .pick(0)
            .map(|u| u.peer._address.as_inet().map_or(0, |a| a.port())),
        _ => None,
    }
}

fn bench(c: &mut Criterion) {
    let s = snapshot();
    let hosts: Vec<Vec<u8>> = (0..GATEWAYS)
        .map(|g| {
            if g % 2 == 0 {
                format!("GW{g}.example.com:8080").into_bytes()
            } else {
                format!("www.gw{g}.example.org").into_bytes()
            }
        })
        .collect();
    assert!(hosts.iter().all(|h| decide(&s, h).is_some()));
    let mut i = 0;
    c.bench_function("route_decision_1000_vhosts_10_routes", |b| {
        b.iter(|| {
            i = (i + 1) % hosts.len();
            black_box(decide(&s, black_box(&hosts[i])))
        })
    });
    c.bench_function("route_decision_unknown_host", |b| {
        b.iter(|| black_box(decide(&s, black_box(b"nobody.example.net"))))
    });
    c.bench_function("snapshot_build_1000_gateways_10000_routes", |b| {
        let loaded = load_from_str(Path::new("bench.yaml"), &config()).unwrap();
        b.iter(|| {
            black_box(
                build(&loaded, &HealthRegistry::default())
                    .unwrap()
                    .gateways
                    .len(),
            )
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
