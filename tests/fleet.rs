//! A fleet of weirs on one config store: a real `etcd` (Debian's etcd-server) on
//! loopback with a temporary data directory, three real weir processes, `etcdctl` as
//! the operator's client. Convergence of changes on every node, an invalid document
//! refused everywhere while the rest serves, etcd stopped and restarted under load,
//! starting from the last good copy while etcd is down (and refusing to without one),
//! compare-and-swap on concurrent API writes, sticky cookies and hashing that agree
//! across nodes, `weir check --etcd`, `weir config push` and `pull`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "fleet-token";
const PREFIX: &str = "/weir/test";

/// One etcd member on loopback.
struct Etcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client: u16,
    peer: u16,
    /// Clients speak TLS and show a certificate (the test CA's, in `data`).
    tls: bool,
    /// `root`'s password once authentication is on.
    password: Option<String>,
}

impl Etcd {
    fn start() -> Etcd {
        Etcd::start_with(false)
    }

    fn start_with(tls: bool) -> Etcd {
        let data = tempfile::tempdir().unwrap();
        if tls {
            ca(data.path());
            signed(
                data.path(),
                "ca",
                "server",
                "etcd",
                "subjectAltName=IP:127.0.0.1\n",
                2,
                true,
            );
            signed(
                data.path(),
                "ca",
                "client",
                "weir",
                "extendedKeyUsage=clientAuth\n",
                3,
                true,
            );
        }
        let mut e = Etcd {
            child: None,
            data,
            client: free_port(),
            peer: free_port(),
            tls,
            password: None,
        };
        e.run();
        e
    }

    fn file(&self, name: &str) -> String {
        path_str(&self.data.path().join(name)).to_string()
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    fn run(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.data.path().join("etcd.log")).unwrap();
        let mut cmd = Command::new("etcd");
        if self.tls {
            cmd.args([
                "--cert-file",
                &self.file("server.pem"),
                "--key-file",
                &self.file("server.key"),
            ])
            .args([
                "--trusted-ca-file",
                &self.file("ca.pem"),
                "--client-cert-auth",
            ]);
        }
        let child = cmd
            .args(["--name", "t", "--data-dir"])
            .arg(self.data.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) is installed");
        self.child = Some(child);
        let ready = within(Duration::from_secs(20), || {
            self.ctl(&["endpoint", "health"]).status.success()
        });
        assert!(ready, "etcd did not start: {}", self.log());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("etcdctl");
        if self.tls {
            cmd.args([
                "--cacert",
                &self.file("ca.pem"),
                "--cert",
                &self.file("client.pem"),
            ])
            .args(["--key", &self.file("client.key")]);
        }
        if let Some(p) = &self.password {
            cmd.arg(format!("--user=root:{p}"));
        }
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(["--dial-timeout", "1s", "--command-timeout", "3s"])
            .args(args)
            .output()
            .expect("etcdctl (Debian's etcd-client) is installed")
    }

    /// Turns authentication on with user `root`.
    fn enable_auth(&mut self, password: &str) {
        for args in [
            vec!["user", "add", "--new-user-password", password, "root"],
            vec!["auth", "enable"],
        ] {
            let out = self.ctl(&args);
            assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        }
        self.password = Some(password.to_string());
    }

    fn put(&self, key: &str, value: &str) {
        let out = self.ctl(&["put", "--", key, value]);
        assert!(out.status.success(), "etcdctl put: {out:?}");
    }

    fn put_gateway(&self, name: &str, text: &str) {
        self.put(&format!("{PREFIX}/gateways/{name}"), text);
    }

    fn get(&self, key: &str) -> String {
        let out = self.ctl(&["get", "--print-value-only", key]);
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gateway that answers `body` for `NAME.test`.
fn respond(name: &str, body: &str) -> String {
    format!(
        "name: {name}\nvirtual_hosts: [{name}.test]\nroutes: {{ r: {{ respond: {{ status: 200, body: \"{body}\" }} }} }}\n"
    )
}

/// One node's local file: its listener, admin API and the store.
fn node_config(port: u16, admin: u16, etcd: &str, state: &Path, local: &str) -> String {
    format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\", token_file: token }}
config_source:
  etcd:
    endpoints: [\"{etcd}\"]
    prefix: {PREFIX}
    connect_timeout: 1s
    request_timeout: 2s
state_dir: {}
gateways:
  - name: local
    virtual_hosts: [local.test]
    routes: {{ r: {{ respond: {{ status: 200, body: local }} }} }}
{local}",
        state.display()
    )
}

struct Node {
    weir: Weir,
    port: u16,
    admin: u16,
    state: PathBuf,
}

impl Node {
    fn start(etcd: &Etcd) -> Node {
        Node::start_with(etcd, None)
    }

    /// A node whose state directory is `state` (a fresh one when none).
    fn start_with(etcd: &Etcd, state: Option<PathBuf>) -> Node {
        let (port, admin) = (free_port(), free_port());
        let dir = config_dir(&[("token", TOKEN)]);
        let state = state.unwrap_or_else(|| dir.path().join("state"));
        let config = dir.path().join("weir.yaml");
        std::fs::write(
            &config,
            node_config(port, admin, &etcd.endpoint(), &state, ""),
        )
        .unwrap();
        let weir = Weir::start_in(dir, config, &[port, admin]);
        Node {
            weir,
            port,
            admin,
            state,
        }
    }

    fn body(&self, host: &str) -> String {
        let r = get(self.port, host, "/");
        if r.status == 200 {
            r.body
        } else {
            format!("status {}", r.status)
        }
    }

    fn readyz(&self) -> String {
        get(self.admin, "localhost", "/readyz").body
    }

    fn metric(&self, name: &str) -> f64 {
        scrape(self.admin).get(name).copied().unwrap_or(0.0)
    }
}

/// Waits until every node answers `want` for `host`; how long it took.
fn converge(nodes: &[&Node], host: &str, want: &str) -> Duration {
    let started = Instant::now();
    let ok = within(Duration::from_secs(10), || {
        nodes.iter().all(|n| n.body(host) == want)
    });
    let seen: Vec<String> = nodes.iter().map(|n| n.body(host)).collect();
    assert!(ok, "{host} did not become {want:?} on every node: {seen:?}");
    started.elapsed()
}

fn fleet() -> (Etcd, Vec<Node>) {
    let etcd = Etcd::start();
    etcd.put_gateway("web", &respond("web", "v0"));
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&etcd)).collect();
    (etcd, nodes)
}

#[test]
fn changes_converge_on_every_node_and_invalid_documents_are_refused_everywhere() {
    let (etcd, nodes) = fleet();
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, "web.test", "v0");
    assert_eq!(nodes[0].body("local.test"), "local");

    let mut times = Vec::new();
    for i in 1..=20 {
        let body = format!("v{i}");
        etcd.put_gateway("web", &respond("web", &body));
        times.push(converge(&all, "web.test", &body));
    }
    times.sort();
    let p99 = times[times.len() - 1];
    eprintln!(
        "convergence on 3 nodes over 20 changes: median {:?}, p99 {:?}",
        times[times.len() / 2],
        p99
    );

    // Every node reports the store revision it serves: the same on all.
    let revisions = || -> Vec<f64> {
        nodes
            .iter()
            .map(|n| n.metric("weir_config_store_revision"))
            .collect()
    };
    let same = within(Duration::from_secs(5), || {
        let r = revisions();
        r.iter().all(|x| *x > 20.0 && *x == r[0])
    });
    assert!(same, "{:?}", revisions());

    // A new gateway and a deleted one.
    etcd.put_gateway("api", &respond("api", "api"));
    converge(&all, "api.test", "api");
    let out = etcd.ctl(&["del", &format!("{PREFIX}/gateways/api")]);
    assert!(out.status.success());
    converge(&all, "api.test", "status 404");

    // Invalid documents: a syntax error in a gateway in service, a route with no target,
    // a gateway that takes a virtual host another holds, a name the local file holds.
    let refused_before: Vec<f64> = nodes
        .iter()
        .map(|n| n.metric("weir_config_store_rejected_total"))
        .collect();
    etcd.put_gateway("web", "name: web\nroutes: [\n");
    etcd.put_gateway(
        "bad",
        "name: bad\nvirtual_hosts: [bad.test]\nroutes: { r: {} }\n",
    );
    etcd.put_gateway(
        "thief",
        &respond("thief", "x").replace("[thief.test]", "[web.test]"),
    );
    etcd.put_gateway("local", &respond("local", "from the store"));
    etcd.put_gateway("fine", &respond("fine", "fine"));
    converge(&all, "fine.test", "fine");
    for n in &nodes {
        assert_eq!(n.body("web.test"), "v20", "the version in service stays");
        assert_eq!(n.body("bad.test"), "status 404");
        assert_eq!(n.body("local.test"), "local");
    }
    for (n, before) in nodes.iter().zip(refused_before) {
        let after = n.metric("weir_config_store_rejected_total");
        assert!(after >= before + 4.0, "{before} -> {after}");
        let log = n.weir.log();
        assert!(
            log.contains(&format!("etcd:{PREFIX}/gateways/web:2:")),
            "the error names the document and line: {log}"
        );
        assert!(log.contains("duplicate gateway name"), "{log}");
    }
    // Refusals are reported once, not again with each unrelated change.
    let counted = nodes[0].metric("weir_config_store_rejected_total");
    etcd.put_gateway("fine2", &respond("fine2", "fine2"));
    converge(&all, "fine2.test", "fine2");
    assert_eq!(nodes[0].metric("weir_config_store_rejected_total"), counted);
    assert_eq!(nodes[0].body("web.test"), "v20");

    // A node that starts now, with no copy of its own, serves every valid document and
    // refuses the invalid ones. It has no version of web to keep, so there the thief's
    // claim on web.test stands (until web is mended, below).
    let late = Node::start(&etcd);
    assert_eq!(late.body("fine.test"), "fine");
    assert_eq!(late.body("web.test"), "x");
    assert_eq!(late.body("local.test"), "local");
    assert_eq!(late.body("bad.test"), "status 404");
    // The thief removed and the document mended: served everywhere.
    let out = etcd.ctl(&["del", &format!("{PREFIX}/gateways/thief")]);
    assert!(out.status.success());
    etcd.put_gateway("web", &respond("web", "mended"));
    let mut with_late = all.clone();
    with_late.push(&late);
    converge(&with_late, "web.test", "mended");
    assert!(
        nodes[0].readyz().contains("config store: etcd up"),
        "{}",
        nodes[0].readyz()
    );
}

#[test]
fn etcd_down_under_load_loses_no_request_and_a_node_starts_from_its_copy() {
    let (mut etcd, nodes) = fleet();
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, "web.test", "v0");
    assert_eq!(nodes[0].metric("weir_config_store_up"), 1.0);

    // Load on every node while etcd goes away and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let loaders: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (port, stop, sent, failed) = (n.port, stop.clone(), sent.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let r = c.get("web.test", "/", &[]);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if r.status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    etcd.stop();
    let down = within(Duration::from_secs(15), || {
        nodes
            .iter()
            .all(|n| n.metric("weir_config_store_up") == 0.0)
    });
    assert!(down, "every node notices: {}", nodes[0].weir.log());
    let ready = get(nodes[0].admin, "localhost", "/readyz");
    assert_eq!(ready.status, 200, "serving is what matters: {}", ready.body);
    assert!(ready.body.contains("etcd unreachable"), "{}", ready.body);

    // A node that starts now starts from the copy in its state directory; one with no
    // copy refuses to start, saying why.
    let state = nodes[1].state.clone();
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&state).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    let late = Node::start_with(&etcd, Some(copy.path().to_path_buf()));
    assert_eq!(late.body("web.test"), "v0");
    assert!(
        late.weir.log().contains("starting from the last good copy"),
        "{}",
        late.weir.log()
    );
    let (port, admin) = (free_port(), free_port());
    let dir = config_dir(&[("token", TOKEN)]);
    let config = dir.path().join("weir.yaml");
    let empty = dir.path().join("empty-state");
    std::fs::write(
        &config,
        node_config(port, admin, &etcd.endpoint(), &empty, ""),
    )
    .unwrap();
    let out = weir_cmd(&["run", "-c", path_str(&config)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no last good copy") && err.contains("cannot start"),
        "{err}"
    );

    // etcd comes back: every node (and the late one) reconnects and catches up.
    etcd.run();
    etcd.put_gateway("web", &respond("web", "after"));
    let mut with_late = all.clone();
    with_late.push(&late);
    converge(&with_late, "web.test", "after");
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("requests during the etcd outage: {sent} sent, {failed} failed");
    assert!(sent > 100, "{sent}");
    assert_eq!(failed, 0);
    assert!(within(Duration::from_secs(10), || nodes[0]
        .metric("weir_config_store_up")
        == 1.0));
}

#[test]
fn api_writes_go_through_the_store_with_compare_and_swap() {
    let (etcd, nodes) = fleet();
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, "web.test", "v0");

    // Created on node 0, served by all.
    let r = api(
        nodes[0].admin,
        "POST",
        "/api/v1/gateways",
        Some(TOKEN),
        &respond("shop", "s1"),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    converge(&all, "shop.test", "s1");
    assert!(etcd.get(&format!("{PREFIX}/gateways/shop")).contains("s1"));

    // Two writes from the same revision on two nodes: one wins, the other is told.
    let etag = api(
        nodes[1].admin,
        "GET",
        "/api/v1/gateways/shop",
        Some(TOKEN),
        "",
    )
    .header("etag")
    .expect("an ETag in store mode")
    .to_string();
    let write = |admin: u16, body: &str| {
        let mut c = Client::connect(admin);
        let req = format!(
            "PUT /api/v1/gateways/shop HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nIf-Match: {etag}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.send_raw(req.as_bytes());
        c.read_response(false).status
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| write(nodes[1].admin, &respond("shop", "from-1")));
        let b = s.spawn(|| write(nodes[2].admin, &respond("shop", "from-2")));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(statuses, [202, 409], "exactly one write wins");
    let winner = if a == 202 { "from-1" } else { "from-2" };
    converge(&all, "shop.test", winner);

    // Without If-Match, a write compares against what the node saw: after converging,
    // it succeeds; PATCH and DELETE go to the store too.
    let r = api(
        nodes[2].admin,
        "PATCH",
        "/api/v1/gateways/shop",
        Some(TOKEN),
        r#"{"routes": {"r": {"respond": {"status": 200, "body": "patched"}}}}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    converge(&all, "shop.test", "patched");
    // An invalid write is refused before it reaches the store.
    let r = api(
        nodes[0].admin,
        "PUT",
        "/api/v1/gateways/shop",
        Some(TOKEN),
        "name: shop\nroutes: { r: {} }\n",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(etcd
        .get(&format!("{PREFIX}/gateways/shop"))
        .contains("patched"));
    // A gateway of the local file is not the API's to change in store mode.
    let r = api(
        nodes[0].admin,
        "DELETE",
        "/api/v1/gateways/local",
        Some(TOKEN),
        "",
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = api(
        nodes[1].admin,
        "DELETE",
        "/api/v1/gateways/shop",
        Some(TOKEN),
        "",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    converge(&all, "shop.test", "status 404");
    assert_eq!(etcd.get(&format!("{PREFIX}/gateways/shop")), "");
}

#[test]
fn sticky_cookies_and_hashing_agree_across_nodes() {
    let etcd = Etcd::start();
    let ups: Vec<Upstream> = (0..4).map(|i| Upstream::start(&format!("i{i}"))).collect();
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr())).collect();
    etcd.put_gateway(
        "sticky",
        &format!(
            "name: sticky\nvirtual_hosts: [sticky.test]\nsticky: instance\nroutes: {{ r: {{ instances: [{}] }} }}\n",
            list.join(", ")
        ),
    );
    etcd.put_gateway(
        "hashed",
        &format!(
            "name: hashed\nvirtual_hosts: [hashed.test]\nroutes: {{ r: {{ balance: hash(path), instances: [{}] }} }}\n",
            list.join(", ")
        ),
    );
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&etcd)).collect();
    for _ in 0..8 {
        let first = get(nodes[0].port, "sticky.test", "/");
        assert_eq!(first.status, 200);
        let cookie = first
            .header("set-cookie")
            .expect("a sticky cookie")
            .split(';')
            .next()
            .unwrap()
            .to_string();
        for n in &nodes[1..] {
            let r = Client::connect(n.port).get("sticky.test", "/", &[("Cookie", &cookie)]);
            assert_eq!(r.body, first.body, "node A's cookie holds on another node");
        }
    }
    for i in 0..20 {
        let path = format!("/item/{i}");
        let bodies: Vec<String> = nodes
            .iter()
            .map(|n| Client::connect(n.port).get("hashed.test", &path, &[]).body)
            .collect();
        assert!(bodies.iter().all(|b| *b == bodies[0]), "{path}: {bodies:?}");
    }
}

#[test]
fn check_push_and_pull() {
    let etcd = Etcd::start();
    let (port, admin) = (free_port(), free_port());
    let dir = config_dir(&[
        ("token", TOKEN),
        ("in/a.yaml", &respond("a", "a")),
        (
            "in/b.json",
            r#"{"name": "b", "virtual_hosts": ["b.test"], "routes": {"r": {"respond": {"status": 200, "body": "b"}}}}"#,
        ),
    ]);
    let config = dir.path().join("weir.yaml");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        node_config(port, admin, &etcd.endpoint(), &state, ""),
    )
    .unwrap();
    let c = path_str(&config);
    let run = |args: &[&str]| {
        let out = weir_cmd(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let input = dir.path().join("in");
    let (ok, text) = run(&["config", "push", path_str(&input), "-c", c]);
    assert!(ok, "{text}");
    assert!(text.contains("pushed 2 gateway(s)"), "{text}");
    let (ok, text) = run(&["config", "push", path_str(&input), "-c", c]);
    assert!(
        ok && text.contains("pushed 0 gateway(s), deleted 0, 2 unchanged"),
        "{text}"
    );
    let (ok, text) = run(&["check", "--etcd", "-c", c]);
    assert!(ok, "{text}");
    assert!(
        text.contains("2 gateway(s) in etcd under /weir/test/"),
        "{text}"
    );

    // An invalid file: refused whole, nothing written.
    std::fs::write(
        input.join("c.yaml"),
        "name: c\nvirtual_hosts: [a.test]\nroutes: { r: { respond: { status: 200 } } }\n",
    )
    .unwrap();
    let (ok, text) = run(&["config", "push", path_str(&input), "-c", c]);
    assert!(
        !ok && text.contains("nothing written") && text.contains("already used"),
        "{text}"
    );
    assert_eq!(etcd.get(&format!("{PREFIX}/gateways/c")), "");
    std::fs::remove_file(input.join("c.yaml")).unwrap();

    // What is stored but broken fails `check --etcd`, naming the key and line.
    etcd.put_gateway("broken", "name: broken\nroutes: [\n");
    let (ok, text) = run(&["check", "--etcd", "-c", c]);
    assert!(
        !ok && text.contains("etcd:/weir/test/gateways/broken:2:"),
        "{text}"
    );
    // Push with --prune makes the store hold exactly the directory.
    let (ok, text) = run(&["config", "push", "--prune", path_str(&input), "-c", c]);
    assert!(ok && text.contains("deleted 1"), "{text}");

    let out = dir.path().join("out");
    let (ok, text) = run(&["config", "pull", path_str(&out), "-c", c]);
    assert!(ok && text.contains("pulled 2 gateway(s)"), "{text}");
    assert_eq!(
        std::fs::read_to_string(out.join("a.yaml")).unwrap(),
        respond("a", "a")
    );
    assert!(std::fs::read_to_string(out.join("b.yaml"))
        .unwrap()
        .contains("\"b.test\""));

    // Certificates under PREFIX/certs/ land in the state directory, private.
    let pem = std::fs::read_to_string(dir.path().join("token")).unwrap();
    etcd.put(&format!("{PREFIX}/certs/site.pem"), &pem);
    let node = Node::start_with(&etcd, Some(state.clone()));
    let cert = state.join("certs/site.pem");
    assert!(within(Duration::from_secs(10), || cert.exists()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(node.body("a.test"), "a");
    let _ = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
}

/// A node serving TLS with the certificate the store holds (written to its state
/// directory) and the session-ticket keys `keys`.
fn tls_node(etcd: &Etcd, keys: &str) -> (Weir, u16) {
    let (https, admin) = (free_port(), free_port());
    let dir = config_dir(&[("token", TOKEN), ("tickets", keys)]);
    let state = dir.path().join("state");
    let yaml = format!(
        "listeners:
  https:
    bind: \"127.0.0.1:{https}\"
    tls:
      certificates: [{{ cert: {s}/certs/a.pem, key: {s}/certs/a.key }}]
      ticket_keys_file: tickets
admin: {{ bind: \"127.0.0.1:{admin}\" }}
config_source: {{ etcd: {{ endpoints: [\"{}\"], prefix: {PREFIX} }} }}
state_dir: {s}
",
        etcd.endpoint(),
        s = state.display()
    );
    let config = dir.path().join("weir.yaml");
    std::fs::write(&config, yaml).unwrap();
    (Weir::start_in(dir, config, &[https, admin]), https)
}

fn ticket_key() -> String {
    let out = Command::new("openssl")
        .args(["rand", "-base64", "48"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn certificates_from_the_store_and_sessions_resume_on_any_node() {
    let etcd = Etcd::start();
    let certs = tempfile::tempdir().unwrap();
    self_signed(certs.path(), "a", "a.test");
    for f in ["a.pem", "a.key"] {
        let text = std::fs::read_to_string(certs.path().join(f)).unwrap();
        etcd.put(&format!("{PREFIX}/certs/{f}"), &text);
    }
    etcd.put_gateway("a", &respond("a", "a"));
    let shared = format!("{}{}", ticket_key(), ticket_key());
    let (node_a, a) = tls_node(&etcd, &shared);
    let (node_b, b) = tls_node(&etcd, &shared);
    let (_node_c, c) = tls_node(&etcd, &ticket_key());
    let cert = node_a.dir.path().join("state/certs/a.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
        0o600
    );

    for (name, extra) in [("tls13", &["-tls1_3"]), ("tls12", &["-tls1_2"])] {
        let file = certs.path().join(name);
        let first = session(a, &file, true, extra);
        assert!(first.contains("HTTP/1.1 200"), "{name}: {first}");
        assert!(
            session_line(&first).starts_with("New, TLSv1."),
            "{name}: {first}"
        );
        let on_b = session(b, &file, false, extra);
        assert!(
            session_line(&on_b).starts_with("Reused, TLSv1."),
            "{name}: a ticket from node A resumes on node B: {on_b}"
        );
        assert!(on_b.contains("HTTP/1.1 200"), "{name}: {on_b}");
        let on_c = session(c, &file, false, extra);
        assert!(
            session_line(&on_c).starts_with("New, TLSv1."),
            "{name}: not on a node with other keys: {on_c}"
        );
    }

    // Rotation: node B gets a new first key and keeps the old ones: A's tickets still
    // resume there; B's new tickets are sealed under a key A lacks.
    let rotated = format!("{}{shared}", ticket_key());
    std::fs::write(node_b.dir.path().join("tickets"), &rotated).unwrap();
    assert!(within(Duration::from_secs(10), || node_b
        .log()
        .contains("config reloaded")));
    let file = certs.path().join("rotated");
    let _ = session(a, &file, true, &["-tls1_2"]);
    let on_b = session(b, &file, false, &["-tls1_2"]);
    assert!(session_line(&on_b).starts_with("Reused"), "{on_b}");
    let from_b = certs.path().join("from-b");
    let _ = session(b, &from_b, true, &["-tls1_2"]);
    let on_a = session(a, &from_b, false, &["-tls1_2"]);
    assert!(session_line(&on_a).starts_with("New"), "{on_a}");
}

#[test]
fn etcd_over_mutual_tls_with_a_user_and_password() {
    let mut etcd = Etcd::start_with(true);
    etcd.enable_auth("pw-of-root");
    etcd.put_gateway("web", &respond("web", "secure"));
    let (port, admin) = (free_port(), free_port());
    let tls = format!(
        "    tls: {{ ca: {}, cert: {}, key: {} }}\n    username: root\n    password_file: password\n",
        etcd.file("ca.pem"),
        etcd.file("client.pem"),
        etcd.file("client.key")
    );
    let write = |password: &str| {
        let dir = config_dir(&[("token", TOKEN), ("password", password)]);
        let state = dir.path().join("state");
        let yaml = node_config(port, admin, &etcd.endpoint(), &state, "").replace(
            "    connect_timeout: 1s\n",
            &format!("{tls}    connect_timeout: 1s\n"),
        );
        let config = dir.path().join("weir.yaml");
        std::fs::write(&config, yaml).unwrap();
        (dir, config)
    };
    // A wrong password: refused, and with no copy to start from, weir says why.
    let (_wrong, config) = write("not-it\n");
    let out = weir_cmd(&["run", "-c", path_str(&config)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot start"),
        "{err}"
    );
    let (dir, config) = write("pw-of-root\n");
    let weir = Weir::start_in(dir, config, &[port, admin]);
    assert_eq!(get(port, "web.test", "/").body, "secure", "{}", weir.log());
    etcd.put_gateway("web", &respond("web", "changed"));
    assert!(within(Duration::from_secs(10), || get(
        port, "web.test", "/"
    )
    .body
        == "changed"));
    let r = api(
        admin,
        "PUT",
        "/api/v1/gateways/web",
        Some(TOKEN),
        &respond("web", "by-api"),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(etcd
        .get(&format!("{PREFIX}/gateways/web"))
        .contains("by-api"));
}
