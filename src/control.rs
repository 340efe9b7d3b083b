//! The command line's side of a running weir: `weir reload` and `weir healthcheck` ask
//! its admin listener (found from the config's `admin:`, or `--admin`); `weir upgrade`
//! and `weir status` ask the master's control socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A reload reads files and may resolve names: it gets longer than a probe.
const RELOAD_WAIT: Duration = Duration::from_secs(60);
const PROBE_WAIT: Duration = Duration::from_secs(5);
/// The most of an answer read.
const MAX_ANSWER: u64 = 1 << 20;
/// The most of the main config file read to find `admin:`.
const MAX_CONFIG: u64 = 64 << 20;

/// Where the admin listener is, and the token to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTarget {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// Finds the admin listener from `admin:` in the main config file. It reads only that
/// key, leniently, so that it works when the rest of the file is what a reload would
/// refuse.
/// The master's control socket for `config`: `given` (`--control-socket`), else the
/// file's `control_socket:` (relative to the file), else the default. A file that cannot
/// be read or parsed now names none: the default is asked, as a master started from it
/// would have used.
pub fn control_of(config: &Path, given: Option<PathBuf>) -> PathBuf {
    if let Some(path) = given {
        return path;
    }
    let text = std::fs::File::open(config).and_then(|f| {
        let mut s = String::new();
        f.take(MAX_CONFIG).read_to_string(&mut s).map(|_| s)
    });
    let named = text
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
        .and_then(|doc| doc.get("control_socket")?.as_str().map(PathBuf::from));
    match named {
        Some(path) => config.parent().unwrap_or(Path::new(".")).join(path),
        None => crate::master::default_control(),
    }
}

pub fn admin_of(config: &Path, given: Option<SocketAddr>) -> Result<AdminTarget, String> {
    let shown = config.display();
    let text = std::fs::File::open(config).and_then(|f| {
        let mut s = String::new();
        f.take(MAX_CONFIG).read_to_string(&mut s).map(|_| s)
    });
    // Given an address, the file is read for a token only.
    let text = match (text, given) {
        (Ok(t), _) => t,
        (Err(_), Some(_)) => String::new(),
        (Err(e), None) => return Err(format!("{shown}: {e}")),
    };
    // A file that is not YAML now is what a reload would refuse (the running weir says
    // where): its top-level `admin:` block is read alone.
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)
        .or_else(|_| serde_yaml::from_str(&admin_block(&text)))
        .unwrap_or(serde_yaml::Value::Null);
    let admin = doc.get("admin");
    let token = admin
        .and_then(|a| a.get("token_file"))
        .and_then(|t| t.as_str())
        .and_then(|file| {
            let path = config.parent().unwrap_or(Path::new(".")).join(file);
            std::fs::read_to_string(path).ok()
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let addr = match given {
        Some(a) => a,
        None => {
            let Some(admin) = admin else {
                return Err(format!(
                    "{shown} has no admin listener (admin.bind): give --admin ADDR, or send SIGHUP"
                ));
            };
            let bind = admin
                .get("bind")
                .and_then(|b| b.as_str())
                .unwrap_or("127.0.0.1:9900");
            let addr: SocketAddr = bind
                .parse()
                .map_err(|_| format!("{shown}: admin.bind {bind:?} is not an address"))?;
            local_of(addr)
        }
    };
    Ok(AdminTarget { addr, token })
}

/// The lines of the top-level `admin:` key, from a file that may not parse.
fn admin_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let top = !line.starts_with([' ', '\t', '#']) && !line.trim().is_empty();
        if top {
            inside = line.starts_with("admin:");
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A wildcard bind is reached on loopback.
fn local_of(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    }
}

/// One request to the admin listener; the status and the body.
fn ask_admin(
    target: &AdminTarget,
    method: &str,
    path: &str,
    wait: Duration,
) -> Result<(u16, String), String> {
    let addr = target.addr;
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_WAIT)
        .map_err(|e| format!("cannot reach weir's admin listener at {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(wait))
        .and_then(|_| stream.set_write_timeout(Some(PROBE_WAIT)))
        .map_err(|e| e.to_string())?;
    let auth = target
        .token
        .as_ref()
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer from {addr} within {wait:?}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    Ok((status, body.to_string()))
}

/// The `message` of a JSON answer, or the body as it is.
fn message_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string())
}

/// `weir reload`: the outcome, or why the running weir refused the files.
pub fn reload(target: &AdminTarget) -> Result<String, String> {
    let (status, body) = ask_admin(target, "POST", "/api/v1/reload", RELOAD_WAIT)?;
    let message = message_of(&body);
    match status {
        200 => Ok(message),
        _ => Err(message),
    }
}

/// `weir healthcheck`: whether `/readyz` answers 200.
pub fn healthcheck(target: &AdminTarget) -> Result<String, String> {
    let (status, body) = ask_admin(target, "GET", "/readyz", PROBE_WAIT)?;
    match status {
        200 => Ok(body.trim().to_string()),
        _ => Err(format!("{status}: {}", body.trim())),
    }
}

/// `weir upgrade` / `weir status`: one command to the master's control socket; its
/// answer.
pub fn ask_master(control: &Path, command: &str, wait: Duration) -> Result<String, String> {
    let stream = UnixStream::connect(control).map_err(|e| {
        format!(
            "cannot reach the weir master at {} ({e}); is weir running with --master?",
            control.display()
        )
    })?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| e.to_string())?;
    writeln!(&stream, "{command}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from the master within {wait:?}: {e}"))?;
    let line = line.trim().to_string();
    match line.strip_prefix("ok: ") {
        Some(ok) => Ok(ok.to_string()),
        None => Err(line.strip_prefix("error: ").unwrap_or(&line).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(yaml: &str, token: Option<&str>) -> Result<AdminTarget, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("weir.yaml");
        std::fs::write(&config, yaml).unwrap();
        if let Some(t) = token {
            std::fs::write(dir.path().join("token"), format!("{t}\n")).unwrap();
        }
        admin_of(&config, None)
    }

    #[test]
    fn finds_the_admin_listener_in_a_file_a_reload_would_refuse() {
        let t = target(
            "admin: { bind: \"0.0.0.0:9911\", token_file: token }\ngateways: [ {name: 3 ",
            Some("s3cret"),
        );
        // Not YAML as a whole: its admin block still says where.
        assert_eq!(t.unwrap().addr, "127.0.0.1:9911".parse().unwrap());
        assert!(target("gateways: []\n", None)
            .unwrap_err()
            .contains("no admin listener"));
        let t = target(
            "admin: { bind: \"0.0.0.0:9911\", token_file: token }\ngateways: [ { nam: 3 } ]\n",
            Some("s3cret"),
        )
        .unwrap();
        assert_eq!(t.addr, "127.0.0.1:9911".parse().unwrap());
        assert_eq!(t.token.as_deref(), Some("s3cret"));
        let t = target("admin: {}\n", None).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9900".parse().unwrap());
        assert!(target("admin: { bind: nowhere }\n", None)
            .unwrap_err()
            .contains("not an address"));
    }

    #[test]
    fn json_messages_are_unwrapped() {
        assert_eq!(message_of("{\"message\": \"reloaded\"}"), "reloaded");
        assert_eq!(message_of("ready\n"), "ready");
    }
}
