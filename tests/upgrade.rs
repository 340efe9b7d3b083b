//! Pingora's socket hand-over through `weir -u`: a new process takes the listening socket
//! from the running one on SIGQUIT, and no client connection is refused meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config(port: u16, body: &str) -> String {
    format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: {body} }} }} }}
"
    )
}

#[test]
fn upgrade_hands_over_sockets_without_refusing_clients() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let sock = path_str(&sock).to_string();
    let old_cfg = dir.path().join("old.yaml");
    let new_cfg = dir.path().join("new.yaml");
    std::fs::write(&old_cfg, config(port, "old")).unwrap();
    std::fs::write(&new_cfg, config(port, "new")).unwrap();
    let env = [
        ("WEIR_UPGRADE_SOCK", sock.as_str()),
        ("WEIR_PID_FILE", "/dev/null"),
    ];
    let mut old = Weir::spawn(tempfile::tempdir().unwrap(), old_cfg, &env, &[port]);
    assert_eq!(get(port, "g.test", "/").body, "old");

    let mut upgrade_env = env.to_vec();
    upgrade_env.push(("-u", ""));
    // The new process waits for the sockets; it cannot be "ready" on its own port first.
    let mut new = Weir::spawn(tempfile::tempdir().unwrap(), new_cfg, &upgrade_env, &[]);
    std::thread::sleep(Duration::from_millis(500));
    signal(old.pid(), "QUIT");

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut seen_new, mut failures, mut sent) = (0, 0, 0);
    while Instant::now() < deadline && (old.is_running() || seen_new < 20) {
        sent += 1;
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => {
                let r = get(port, "g.test", "/");
                assert_eq!(r.status, 200);
                if r.body == "new" {
                    seen_new += 1;
                }
            }
            Err(_) => failures += 1,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        failures, 0,
        "{failures} of {sent} connections refused during the upgrade"
    );
    assert!(seen_new >= 20, "new process never answered: {}", new.log());
    assert!(
        old.wait_exit(Duration::from_secs(15)),
        "old process did not exit"
    );
    assert!(new.is_running());
    assert_eq!(get(port, "g.test", "/").body, "new");
}
