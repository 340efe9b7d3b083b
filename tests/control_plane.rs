//! The control plane through the real binary: bounded config input (alias bombs in files
//! and API bodies), includes (symlink loops, overlapping globs), the watcher's choice of
//! files, the gateway API on gateways (shared files, relative `-c`, PATCH, audit, read
//! token), hosts that do not resolve, and `weir check` agreeing with `run`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "s3cret";

fn main_config(port: u16, admin: u16, extra_admin: &str, gateways: &str) -> String {
    format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\"{extra_admin} }}
include: [gateways.d/*.yaml]
gateways:
  - name: main
    virtual_hosts: [main.test]
    routes: {{ r: {{ respond: {{ status: 200, body: main }} }} }}
{gateways}"
    )
}

/// weir on a main config that includes `gateways.d/*.yaml` and takes API writes with
/// TOKEN, in a directory holding `files`: the process and that directory.
fn api_edge(port: u16, admin: u16, files: &[(&str, &str)]) -> (Weir, std::path::PathBuf) {
    let mut all = vec![("token", TOKEN)];
    all.extend_from_slice(files);
    let dir = config_dir(&all);
    let root = dir.path().to_path_buf();
    std::fs::write(
        root.join("weir.yaml"),
        main_config(port, admin, ", token_file: token", ""),
    )
    .unwrap();
    (
        Weir::start_in(dir, root.join("weir.yaml"), &[port, admin]),
        root,
    )
}

fn respond_gateway(name: &str, body: &str) -> String {
    format!(
        "name: {name}\nvirtual_hosts: [{name}.test]\nroutes: {{ r: {{ respond: {{ status: 200, body: {body} }} }} }}\n"
    )
}

fn reloads(admin: u16) -> (f64, f64) {
    let m = scrape(admin);
    let v = |r: &str| {
        m.get(&format!("weir_config_reloads_total{{result=\"{r}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    (v("ok"), v("error"))
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// One route with `instances` instances, aliased `copies` times: about 400 KB of YAML
/// that would expand to tens of millions of instances.
fn alias_bomb(name: &str, instances: usize, copies: usize) -> String {
    let mut y = format!("name: {name}\nvirtual_hosts: [{name}.test]\nx-anchor: &r\n  instances: [");
    for i in 0..instances {
        y.push_str(&format!("\"127.0.0.{}:{}\",", 1 + i % 200, 1024 + i));
    }
    y.push_str("]\nroutes:\n");
    for i in 0..copies {
        y.push_str(&format!("  r{i}: *r\n"));
    }
    y
}

#[test]
fn alias_bomb_in_a_file_and_in_the_api_is_refused_and_weir_serves_on() {
    let (port, admin) = (free_port(), free_port());
    let dir = config_dir(&[("gateways.d/.keep", ""), ("token", TOKEN)]);
    let root = dir.path().to_path_buf();
    std::fs::write(
        root.join("weir.yaml"),
        main_config(port, admin, ", token_file: token", ""),
    )
    .unwrap();
    let weir = Weir::start_in(dir, root.join("weir.yaml"), &[port, admin]);
    let bomb = alias_bomb("bomb", 20_000, 999);
    assert!(bomb.len() < 600_000, "{}", bomb.len());

    let started = Instant::now();
    std::fs::write(root.join("gateways.d/bomb.yaml"), &bomb).unwrap();
    assert!(
        within(Duration::from_secs(10), || reloads(admin).1 >= 1.0),
        "{}",
        weir.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(weir.log().contains("YAML aliases expand"), "{}", weir.log());
    assert_eq!(get(port, "main.test", "/").body, "main");

    // While a broken file is on disk the API refuses to write beside it (409); without
    // it, the bomb as a request body is refused as a bad body.
    let r = api(
        admin,
        "POST",
        "/api/v1/gateways",
        Some(TOKEN),
        &respond_gateway("ok", "ok"),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    std::fs::remove_file(root.join("gateways.d/bomb.yaml")).unwrap();
    let r = api(
        admin,
        "POST",
        "/api/v1/gateways",
        Some(TOKEN),
        &alias_bomb("bomb2", 20_000, 999),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("YAML aliases expand"), "{}", r.body);
    assert_eq!(get(port, "main.test", "/").body, "main");
    let peak = peak_rss_bytes(weir.pid());
    assert!(peak < 1 << 30, "peak RSS {peak} bytes");
}

#[test]
fn check_finishes_on_symlink_loops_and_reads_overlapping_globs_once() {
    use std::os::unix::fs::symlink;
    let port = free_port();
    let dir = config_dir(&[
        (
            "weir.yaml",
            &format!(
                "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}\ninclude: [gateways.d/*.yaml, 'gateways.d/**/*.yaml']\n"
            ),
        ),
        ("gateways.d/a.yaml", &respond_gateway("a", "a")),
        ("gateways.d/x/b.yaml", &respond_gateway("b", "b")),
        ("gateways.d/y/.keep", ""),
    ]);
    let root = dir.path();
    symlink("../y", root.join("gateways.d/x/to-y")).unwrap();
    symlink("../x", root.join("gateways.d/y/to-x")).unwrap();
    symlink("..", root.join("gateways.d/y/up")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "-c", path_str(&root.join("weir.yaml"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = within(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !finished {
        let _ = child.kill();
    }
    assert!(finished, "weir check did not finish");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 file(s)") && stdout.contains("2 gateway(s)"),
        "{stdout}"
    );
}

#[test]
fn a_log_written_next_to_the_config_causes_no_reload_and_edits_still_apply() {
    let (port, admin) = (free_port(), free_port());
    let dir = config_dir(&[("gateways.d/g.yaml", &respond_gateway("g", "one"))]);
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("weir.yaml"), main_config(port, admin, "", "")).unwrap();
    let weir = Weir::start_in(dir, root.join("weir.yaml"), &[port, admin]);
    assert_eq!(get(port, "g.test", "/").body, "one");

    // A writer appends to a log in the config directory and in gateways.d every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let open = |p: &str| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(root.join(p))
                    .unwrap()
            };
            let (mut a, mut b) = (open("app.log"), open("gateways.d/notes.txt"));
            for i in 0..200 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = writeln!(a, "line {i}");
                let _ = writeln!(b, "line {i}");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reloads(admin), (0.0, 0.0), "{}", weir.log());

    // A real edit applies within a second, whatever is written nearby.
    let started = Instant::now();
    std::fs::write(root.join("gateways.d/g.yaml"), respond_gateway("g", "two")).unwrap();
    let applied = took_within(Duration::from_secs(3), || {
        get(port, "g.test", "/").body == "two"
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let took = applied.unwrap_or_else(|| panic!("edit not applied: {}", weir.log()));
    assert!(
        took < Duration::from_secs(1),
        "took {took:?} ({:?})",
        started.elapsed()
    );
    assert_eq!(reloads(admin), (1.0, 0.0), "{}", weir.log());
}

#[test]
fn api_acts_on_gateways_not_files() {
    let (port, admin) = (free_port(), free_port());
    let multi_text = format!(
        "{}---\n{}",
        respond_gateway("m1", "one"),
        respond_gateway("m2", "two")
    );
    let (_weir, root) = api_edge(port, admin, &[("gateways.d/multi.yaml", &multi_text)]);
    let multi = root.join("gateways.d/multi.yaml");
    let before = std::fs::read_to_string(&multi).unwrap();

    // A file name is not a gateway name.
    let r = api(admin, "DELETE", "/api/v1/gateways/multi", Some(TOKEN), "");
    assert_eq!(r.status, 404, "{}", r.body);
    // A gateway that shares its file, or lives in the main file: 409 naming the file.
    for (method, name, body) in [
        ("DELETE", "m1", String::new()),
        ("PUT", "m2", respond_gateway("m2", "changed")),
        (
            "PATCH",
            "m1",
            "{\"virtual_hosts\": [\"x.test\"]}".to_string(),
        ),
    ] {
        let r = api(
            admin,
            method,
            &format!("/api/v1/gateways/{name}"),
            Some(TOKEN),
            &body,
        );
        assert_eq!(r.status, 409, "{method} {name}: {}", r.body);
        // Named relative to the config directory, not by the machine's layout.
        assert!(r.body.contains("gateways.d/multi.yaml"), "{}", r.body);
        assert!(!r.body.contains(&root.display().to_string()), "{}", r.body);
    }
    let r = api(admin, "DELETE", "/api/v1/gateways/main", Some(TOKEN), "");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("weir.yaml"), "{}", r.body);
    assert!(!r.body.contains(&root.display().to_string()), "{}", r.body);
    // A name that is not a valid name is refused for what it is, before it names a file.
    for bad in ["../evil", ".hidden", "a/b", ""] {
        let r = api(
            admin,
            "POST",
            "/api/v1/gateways",
            Some(TOKEN),
            &respond_gateway(bad, "x"),
        );
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert!(
            r.body.contains("invalid gateway name")
                && r.body.contains("^[A-Za-z0-9][A-Za-z0-9._:-]*$"),
            "{bad:?}: {}",
            r.body
        );
    }
    assert!(!root.join("evil.yaml").exists() && !root.join("gateways.d/.hidden.yaml").exists());
    // Nothing was lost.
    assert_eq!(std::fs::read_to_string(&multi).unwrap(), before);
    assert_eq!(get(port, "m1.test", "/").body, "one");
    assert_eq!(get(port, "m2.test", "/").body, "two");
}

#[test]
fn api_writes_with_a_relative_config_path_patch_a_weight_and_audit() {
    let (port, admin) = (free_port(), free_port());
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let dir = config_dir(&[
        ("token", TOKEN),
        ("read-token", "r34d"),
        ("gateways.d/.keep", ""),
    ]);
    let root = dir.path().to_path_buf();
    std::fs::write(
        root.join("weir.yaml"),
        main_config(
            port,
            admin,
            ", token_file: token, read_token_file: read-token",
            "",
        ),
    )
    .unwrap();
    // Started from the config's own directory as `-c weir.yaml`.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("weir.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "-c", "weir.yaml"])
        .current_dir(&root)
        .env("WEIR_THREADS", "2")
        .env("RUST_LOG", "warn,weir=info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = {
        assert!(within(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
        }));
        let _ = child.try_wait();
        Kill(child)
    };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let canary = format!(
        "{{\"name\": \"shop\", \"virtual_hosts\": [\"shop.test\"], \"routes\": {{\"stable\": {{\"weight\": \"100%\", \"instances\": [\"{}\"]}}, \"canary\": {{\"weight\": \"0%\", \"instances\": [\"{}\"]}}}}}}",
        a.addr(),
        b.addr()
    );
    let r = api(admin, "POST", "/api/v1/gateways", Some(TOKEN), &canary);
    assert_eq!(r.status, 202, "{} {}", r.body, read_log());
    assert!(root.join("gateways.d/shop.yaml").exists());
    let r = api(admin, "PUT", "/api/v1/gateways/shop", Some(TOKEN), &canary);
    assert_eq!(r.status, 202, "{} {}", r.body, read_log());
    assert_eq!(tally(port, "shop.test", 20).get("a"), Some(&20));

    // The everyday canary step: one small request.
    let r = api(
        admin,
        "PATCH",
        "/api/v1/gateways/shop",
        Some(TOKEN),
        "{\"routes\": {\"stable\": {\"weight\": \"50%\"}, \"canary\": {\"weight\": \"50%\"}}}",
    );
    assert_eq!(r.status, 202, "{} {}", r.body, read_log());
    let seen = tally(port, "shop.test", 40);
    assert_eq!(
        (seen.get("a"), seen.get("b")),
        (Some(&20), Some(&20)),
        "{seen:?}"
    );
    let file = std::fs::read_to_string(root.join("gateways.d/shop.yaml")).unwrap();
    assert!(file.contains("50%"), "{file}");
    // Route order survives the patch.
    assert!(
        file.find("stable").unwrap() < file.find("canary").unwrap(),
        "{file}"
    );
    // A patch that does not validate changes nothing.
    let r = api(
        admin,
        "PATCH",
        "/api/v1/gateways/shop",
        Some(TOKEN),
        "{\"routes\": {\"canary\": {\"weight\": \"60%\"}}}",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("110%"), "{}", r.body);
    assert_eq!(
        std::fs::read_to_string(root.join("gateways.d/shop.yaml")).unwrap(),
        file
    );
    // One audit line per write, with the peer and what changed.
    let log_text = read_log();
    let audit: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("weir::audit"))
        .collect();
    assert_eq!(audit.len(), 3, "{log_text}");
    assert!(
        audit[0].contains("127.0.0.1:") && audit[0].contains("POST gateway \"shop\""),
        "{}",
        audit[0]
    );
    assert!(
        audit[2].contains("PATCH") && audit[2].contains("routes.canary.weight: \"0%\" -> \"50%\""),
        "{}",
        audit[2]
    );

    // Reads need a token once read_token_file is set; metrics stay open.
    assert_eq!(get(admin, "admin", "/api/v1/gateways").status, 401);
    assert_eq!(
        api(admin, "GET", "/api/v1/gateways/shop", Some("r34d"), "").status,
        200
    );
    assert_eq!(
        api(admin, "GET", "/api/v1/gateways", Some(TOKEN), "").status,
        200
    );
    assert_eq!(
        api(admin, "GET", "/api/v1/gateways", Some("nope"), "").status,
        401
    );
    assert_eq!(get(admin, "admin", "/metrics").status, 200);
}

#[test]
fn an_unresolvable_host_does_not_stop_start_and_check_warns() {
    let (port, admin) = (free_port(), free_port());
    let up = Upstream::start("up");
    let yaml = format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r: {{ instances: [\"{}\", \"nowhere.invalid:80\"] }}
",
        up.addr()
    );
    let dir = config_dir(&[("weir.yaml", &yaml)]);
    let cfg = dir.path().join("weir.yaml");
    let out = weir_cmd(&["check", "-c", path_str(&cfg)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("nowhere.invalid"),
        "{stderr}"
    );
    let out = weir_cmd(&["check", "--strict", "-c", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(1));

    let weir = Weir::start_in(dir, cfg, &[port, admin]);
    // Every request goes to the instance that resolved.
    assert_eq!(
        tally(port, "g.test", 10).get("up"),
        Some(&10),
        "{}",
        weir.log()
    );
    let m = scrape(admin);
    assert_eq!(m.get("weir_instances_unresolved"), Some(&1.0));
    assert_eq!(
        m.get(r#"weir_instance_healthy{gateway="g",route="r",upstream="nowhere.invalid:80"}"#),
        Some(&0.0),
        "{m:?}"
    );
    let view = get(admin, "admin", "/api/v1/gateways/g").body;
    assert!(view.contains("\"unresolved\""), "{view}");
}

#[test]
fn check_refuses_what_run_refuses() {
    let port = free_port();
    let listener = format!("listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}\n");
    let gw = "gateways:\n  - name: g\n    virtual_hosts: [g.test]\n    routes: { r: { respond: { status: 200 } } }\n";
    for (extra, want) in [
        ("access_log: /nonexistent-dir/access.log\n", "access.log"),
        (
            "admin: { bind: \"127.0.0.1:1\", token_file: missing-token }\n",
            "admin.token_file",
        ),
        (
            "admin: { bind: \"127.0.0.1:1\", read_token_file: missing }\n",
            "admin.read_token_file",
        ),
    ] {
        let dir = config_dir(&[("weir.yaml", &format!("{listener}{extra}{gw}"))]);
        let cfg = dir.path().join("weir.yaml");
        let check = weir_cmd(&["check", "-c", path_str(&cfg)]);
        let stderr = String::from_utf8_lossy(&check.stderr).to_string();
        assert_eq!(check.status.code(), Some(1), "{extra}: {stderr}");
        assert!(stderr.contains(want), "{stderr}");
        let run = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "-c", path_str(&cfg)])
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1), "run accepted {extra}");
        assert!(String::from_utf8_lossy(&run.stderr).contains(want));
    }
    // An admin listener open beyond loopback without a token: a warning, not an error.
    let dir = config_dir(&[(
        "weir.yaml",
        &format!(
            "{listener}admin: {{ bind: \"0.0.0.0:{}\" }}\n{gw}",
            free_port()
        ),
    )]);
    let check = weir_cmd(&["check", "-c", path_str(&dir.path().join("weir.yaml"))]);
    assert_eq!(check.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&check.stderr).contains("not loopback-only"));
}

#[test]
fn a_changed_admin_bind_is_reported_as_needing_a_restart() {
    let (port, admin, other) = (free_port(), free_port(), free_port());
    let dir = config_dir(&[("gateways.d/.keep", "")]);
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("weir.yaml"), main_config(port, admin, "", "")).unwrap();
    let weir = Weir::start_in(dir, root.join("weir.yaml"), &[port, admin]);
    let moved = main_config(port, admin, "", "")
        .replace(&format!("127.0.0.1:{admin}"), &format!("127.0.0.1:{other}"));
    std::fs::write(root.join("weir.yaml"), moved).unwrap();
    assert!(
        within(Duration::from_secs(3), || get(admin, "admin", "/readyz")
            .body
            .contains("admin.bind changes")),
        "{}",
        weir.log()
    );
}

#[test]
fn a_config_over_the_count_limits_is_refused_before_it_is_built() {
    let (port, admin) = (free_port(), free_port());
    let dir = config_dir(&[("gateways.d/.keep", "")]);
    let root = dir.path().to_path_buf();
    std::fs::write(root.join("weir.yaml"), main_config(port, admin, "", "")).unwrap();
    let weir = Weir::start_in(dir, root.join("weir.yaml"), &[port, admin]);
    // 200,000 small gateways (about 15 MB): far over the 10,000-gateway bound.
    let mut big = String::with_capacity(16 << 20);
    for i in 0..200_000 {
        big.push_str(&format!(
            "- {{ name: g{i}, virtual_hosts: [g{i}.test], routes: {{ r: {{ instances: [\"127.0.0.1:9\"] }} }} }}\n"
        ));
    }
    std::fs::write(root.join("gateways.d/big.yaml"), &big).unwrap();
    assert!(
        within(Duration::from_secs(10), || reloads(admin).1 >= 1.0),
        "{}",
        weir.log()
    );
    assert!(weir.log().contains("too many gateways"), "{}", weir.log());
    assert_eq!(get(port, "main.test", "/").body, "main");
    let peak = peak_rss_bytes(weir.pid());
    assert!(peak < 256 << 20, "peak RSS {peak} bytes");
    let out = weir_cmd(&["check", "-c", path_str(&root.join("weir.yaml"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("big.yaml: too many gateways"));
}

/// Lines of `after` that are not in `before`, and the reverse: a line diff, in order.
fn changed_lines(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let added = a
        .iter()
        .filter(|l| !b.contains(l))
        .map(|l| l.to_string())
        .collect();
    let removed = b
        .iter()
        .filter(|l| !a.contains(l))
        .map(|l| l.to_string())
        .collect();
    (added, removed)
}

/// API writes keep the operator's file as written: a one-weight PATCH is a one-line
/// diff (short instance forms, quoting, comments and key order kept, no defaults or
/// nulls added); a PUT writes the YAML it was sent; a POST of JSON writes YAML with the
/// body's keys only.
#[test]
fn api_writes_keep_the_operators_form() {
    let (port, admin) = (free_port(), free_port());
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let shop = format!(
        "# The shop: team A. Weights move through the API.\nname: shop\nvirtual_hosts: [shop.test]\nroutes:\n  stable:\n    weight: \"90%\"   # most traffic\n    instances: [\"{}\"]\n  canary: {{ weight: 10%, instances: [{}] }}\n",
        a.addr(),
        b.addr()
    );
    let (_weir, root) = api_edge(port, admin, &[("gateways.d/shop.yaml", &shop)]);
    let file = root.join("gateways.d/shop.yaml");
    let path = "/api/v1/gateways/shop";

    // Two weights moved: the two lines that hold them change, nothing else.
    let patch = r#"{"routes": {"stable": {"weight": "80%"}, "canary": {"weight": "20%"}}}"#;
    let r = api(admin, "PATCH", path, Some(TOKEN), patch);
    assert_eq!(r.status, 202, "{}", r.body);
    let after = std::fs::read_to_string(&file).unwrap();
    let (added, removed) = changed_lines(&shop, &after);
    let canary = format!("  canary: {{ weight: 20%, instances: [{}] }}", b.addr());
    let stable = "    weight: \"80%\"   # most traffic".to_string();
    assert_eq!(added, [stable, canary], "{after}");
    assert_eq!(removed.len(), 2, "{after}");
    // A change of shape (a new key) still adds nothing but what was asked.
    let patch = r#"{"routes": {"stable": {"condition": "hdr(x-beta) exists"}}}"#;
    let r = api(admin, "PATCH", path, Some(TOKEN), patch);
    assert_eq!(r.status, 202, "{}", r.body);
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(
        !after.contains("null") && !after.contains("rewrites") && !after.contains("h2:"),
        "{after}"
    );
    assert!(
        after.contains(&format!("- {}", a.addr())),
        "short instance forms kept: {after}"
    );
    assert!(
        after.find("name: shop").unwrap() < after.find("virtual_hosts").unwrap(),
        "{after}"
    );

    // PUT: the YAML sent is what the file holds.
    let put = format!(
        "name: shop   # replaced whole\nvirtual_hosts: [shop.test]\nroutes:\n  stable: {{ instances: [{}] }}\n",
        a.addr()
    );
    let r = api(admin, "PUT", path, Some(TOKEN), &put);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), put);
    assert!(within(Duration::from_secs(5), || get(
        port,
        "shop.test",
        "/"
    )
    .body
        == "a"));

    // POST of JSON: YAML, the body's keys in order, nothing added.
    let json = format!(
        r#"{{"name": "blog", "virtual_hosts": ["blog.test"], "routes": {{"r": {{"instances": ["{}"]}}}}}}"#,
        b.addr()
    );
    let r = api(admin, "POST", "/api/v1/gateways", Some(TOKEN), &json);
    assert_eq!(r.status, 202, "{}", r.body);
    let blog = std::fs::read_to_string(root.join("gateways.d/blog.yaml")).unwrap();
    assert_eq!(
        blog,
        format!(
            "name: blog\nvirtual_hosts:\n- blog.test\nroutes:\n  r:\n    instances:\n    - {}\n",
            b.addr()
        )
    );
    assert_eq!(get(port, "blog.test", "/").body, "b");
}
