//! Live reconfiguration through the real binary: file watcher, SIGHUP, new
//! include files, symlink-swapped directories, invalid edits, and no failed request
//! while reloads happen.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn split_config(port: u16, a: &Upstream, b: &Upstream, wa: u32, wb: u32) -> String {
    format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      a: {{ weight: {wa}%, instances: [\"{}\"] }}
      b: {{ weight: {wb}%, instances: [\"{}\"] }}
",
        a.addr(),
        b.addr()
    )
}

/// Writes a file the way editors do: a temp file renamed over the original.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn weight_change_applies_live_and_invalid_edit_is_rejected() {
    let port = free_port();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let weir = Weir::start(&split_config(port, &a, &b, 100, 0), &[port]);
    let mut client = Client::connect(port);
    assert_eq!(client.get("g.test", "/", &[]).body, "a");

    // Rewrite in place (truncate and write), as `echo > file` does.
    std::fs::write(&weir.config, split_config(port, &a, &b, 0, 100)).unwrap();
    let took = took_within(Duration::from_secs(2), || {
        client.get("g.test", "/", &[]).body == "b"
    });
    assert!(
        took.is_some(),
        "new weights not live within 2 s: {}",
        weir.log()
    );
    // The keep-alive connection opened before the reload was served throughout.
    assert_eq!(tally(port, "g.test", 20).get("b"), Some(&20));

    // A broken edit: the running split stays, the error names file and line.
    std::fs::write(&weir.config, "listeners: {\n  http: [\n").unwrap();
    let logged = took_within(Duration::from_secs(3), || {
        weir.log().contains("config reload rejected")
    });
    assert!(logged.is_some(), "{}", weir.log());
    let log = weir.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reload rejected"))
        .unwrap();
    assert!(line.contains("weir.yaml:"), "no file:line in {line}");
    assert_eq!(tally(port, "g.test", 20).get("b"), Some(&20));

    // A semantic error (weights over 100%) is rejected the same way.
    std::fs::write(&weir.config, split_config(port, &a, &b, 60, 60)).unwrap();
    took_within(Duration::from_secs(3), || weir.log().contains("found 120%")).expect("reported");
    assert_eq!(tally(port, "g.test", 20).get("b"), Some(&20));
}

#[test]
fn sighup_forces_a_reload_and_does_not_kill() {
    let port = free_port();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let mut weir = Weir::start(&split_config(port, &a, &b, 100, 0), &[port]);
    // Let the reload service install its handler.
    took_within(Duration::from_secs(5), || weir.log().contains("ready:")).expect("ready");
    signal(weir.pid(), "HUP");
    let reloaded = took_within(Duration::from_secs(3), || {
        weir.log().contains("config reloaded (SIGHUP)")
    });
    assert!(reloaded.is_some(), "{}", weir.log());
    assert!(weir.is_running());
    assert_eq!(get(port, "g.test", "/").body, "a");
}

#[test]
fn new_include_file_adds_a_vhost_live() {
    let port = free_port();
    let up = Upstream::start("new");
    let dir = config_dir(&[
        (
            "weir.yaml",
            &format!(
                "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
include: [gateways.d/*.yaml]
gateways:
  - name: base
    virtual_hosts: [base.test]
    routes: {{ r: {{ respond: {{ status: 200, body: base }} }} }}
"
            ),
        ),
        ("gateways.d/README", "gateway files go here\n"),
    ]);
    let config = dir.path().join("weir.yaml");
    let gw_dir = dir.path().join("gateways.d");
    let weir = Weir::start_in(dir, config, &[port]);
    assert_eq!(get(port, "new.test", "/").status, 404);
    replace_file(
        &gw_dir.join("new.yaml"),
        &format!(
            "name: new\nvirtual_hosts: [new.test]\nroutes: {{ r: {{ instances: [\"{}\"] }} }}\n",
            up.addr()
        ),
    );
    let live = took_within(Duration::from_secs(2), || {
        get(port, "new.test", "/").body == "new"
    });
    assert!(live.is_some(), "{}", weir.log());
    assert_eq!(get(port, "base.test", "/").body, "base");
    // Removing the file removes the vhost.
    std::fs::remove_file(gw_dir.join("new.yaml")).unwrap();
    let gone = took_within(Duration::from_secs(2), || {
        get(port, "new.test", "/").status == 404
    });
    assert!(gone.is_some(), "{}", weir.log());
}

#[test]
fn symlink_swapped_config_directory_reloads() {
    use std::os::unix::fs::symlink;
    let port = free_port();
    let body = |b: &str| {
        format!(
            "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: {b} }} }} }}
"
        )
    };
    // The layout Kubernetes gives a mounted ConfigMap.
    let dir = config_dir(&[
        ("..v1/weir.yaml", &body("v1")),
        ("..v2/weir.yaml", &body("v2")),
    ]);
    let root = dir.path().to_path_buf();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/weir.yaml", root.join("weir.yaml")).unwrap();
    let weir = Weir::start_in(dir, root.join("weir.yaml"), &[port]);
    assert_eq!(get(port, "g.test", "/").body, "v1");
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    let swapped = took_within(Duration::from_secs(2), || {
        get(port, "g.test", "/").body == "v2"
    });
    assert!(swapped.is_some(), "{}", weir.log());
}

#[test]
fn no_failed_request_during_fifty_reloads() {
    let port = free_port();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let weir = Weir::start(&split_config(port, &a, &b, 50, 50), &[port]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut client = Client::connect(port);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    // Client 1 opens a new connection every 10 requests.
                    if i == 1 && n.is_multiple_of(10) {
                        client = Client::connect(port);
                    }
                    n += 1;
                    let r = client.get("g.test", "/", &[]);
                    if r.status == 200 && (r.body == "a" || r.body == "b") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let reloads_before = weir.log().matches("config reloaded").count();
    for i in 0..50u32 {
        let wa = (i * 7) % 101;
        std::fs::write(&weir.config, split_config(port, &a, &b, wa, 100 - wa)).unwrap();
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let reloads = weir.log().matches("config reloaded").count() - reloads_before;
    assert!(
        reloads >= 45,
        "only {reloads} reloads applied: {}",
        weir.log()
    );
    assert!(
        ok.load(Ordering::Relaxed) > 500,
        "too few requests to mean anything"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} failed",
        failed.load(Ordering::Relaxed)
    );
}

#[test]
fn admin_readyz_and_healthz() {
    let (port, admin) = (free_port(), free_port());
    let weir = Weir::start(
        &format!(
            "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways: [ {{ name: g, virtual_hosts: [g.test], routes: {{ r: {{ respond: {{ status: 200 }} }} }} }} ]
"
        ),
        &[port, admin],
    );
    assert_eq!(get(admin, "localhost", "/healthz").status, 200);
    let ready = took_within(Duration::from_secs(5), || {
        get(admin, "localhost", "/readyz").status == 200
    });
    assert!(ready.is_some(), "{}", weir.log());
    assert_eq!(get(admin, "localhost", "/readyz").body, "ready\n");
    // A listener change cannot apply live: readyz says so, the rest keeps serving.
    let other = free_port();
    std::fs::write(
        &weir.config,
        format!(
            "listeners: {{ http: {{ bind: \"127.0.0.1:{other}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways: [ {{ name: g, virtual_hosts: [g.test], routes: {{ r: {{ respond: {{ status: 200 }} }} }} }} ]
"
        ),
    )
    .unwrap();
    let noted = took_within(Duration::from_secs(3), || {
        get(admin, "localhost", "/readyz")
            .body
            .contains("need a restart")
    });
    assert!(noted.is_some(), "{}", weir.log());
    // Until then, the bound port keeps serving the listener of that name.
    assert_eq!(get(port, "g.test", "/").status, 200);
}

/// An include directory that does not exist at start is watched for: made later (and
/// nested), removed, and made again, its files apply as any other change, and a bad
/// file in it is refused where the refusal shows.
#[test]
fn an_include_directory_made_after_start_is_watched() {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(
        root.join("weir.yaml"),
        format!(
            "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
include: [gateways.d/*.yaml, deep/er/*.yaml]
gateways:
  - name: main
    virtual_hosts: [main.test]
    routes: {{ r: {{ respond: {{ status: 200, body: main }} }} }}
"
        ),
    )
    .unwrap();
    let _weir = Weir::start_in(dir, root.join("weir.yaml"), &[port, admin]);
    let gateway = |name: &str| {
        format!("name: {name}\nvirtual_hosts: [{name}.test]\nroutes: {{ r: {{ respond: {{ status: 200, body: {name} }} }} }}\n")
    };
    let serves = |host: &str, body: &str| {
        within(Duration::from_secs(10), || {
            let r = get(port, host, "/");
            r.status == 200 && r.body == body
        })
    };
    assert_eq!(get(port, "new.test", "/").status, 404);
    let d = root.join("gateways.d");
    for round in 0..2 {
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("new.yaml"), gateway("new")).unwrap();
        assert!(
            serves("new.test", "new"),
            "round {round}: the new directory's gateway"
        );
        std::fs::remove_dir_all(&d).unwrap();
        assert!(
            within(Duration::from_secs(10), || get(port, "new.test", "/")
                .status
                == 404),
            "round {round}: the removed directory's gateway is gone"
        );
    }
    // Two levels made at once.
    std::fs::create_dir_all(root.join("deep/er")).unwrap();
    std::fs::write(root.join("deep/er/deep.yaml"), gateway("deep")).unwrap();
    assert!(serves("deep.test", "deep"));
    // A file weir must refuse, in a directory made after start: refused, counted.
    let refused = refused_reloads(admin);
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("bad.yaml"), "name: bad\nroutes: [\n").unwrap();
    wait_refused_reload(admin, refused);
    assert_eq!(get(port, "main.test", "/").body, "main");
    assert_eq!(get(port, "deep.test", "/").body, "deep");
}
