//! An OCSP responder for tests: HTTP on loopback, each answer made by `openssl ocsp`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// An OCSP responder: HTTP on loopback, answers made by `openssl ocsp`.
pub struct Responder {
    pub port: u16,
    pub asked: Arc<AtomicUsize>,
    pub up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Responder {
    /// Answers for certificates `issuer` (`.pem` in `dir`) issued, from `dir/index.txt`
    /// (an openssl CA index), signed by `signer` (`.pem`, `.key`). With `vouch`, every
    /// serial asked about is first written to the index as valid.
    pub fn start(dir: &Path, issuer: &str, signer: &str, vouch: bool) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (asked, up, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, u, s) = (asked.clone(), up.clone(), stop.clone());
        let dir = dir.to_path_buf();
        let (issuer, signer) = (issuer.to_string(), signer.to_string());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        a.fetch_add(1, Ordering::Relaxed);
                        if u.load(Ordering::Relaxed) {
                            answer(conn, &dir, &issuer, &signer, vouch);
                        }
                        // Down: the connection is closed unanswered.
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Responder {
            port,
            asked,
            up,
            stop,
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one POSTed OCSP request and answers it with what `openssl ocsp` says.
fn answer(conn: std::net::TcpStream, dir: &Path, issuer: &str, signer: &str, vouch: bool) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let n = std::process::id() as u64 ^ fastrand();
    let (req, resp) = (
        dir.join(format!("req{n}.der")),
        dir.join(format!("resp{n}.der")),
    );
    std::fs::write(&req, &body).unwrap();
    let d = |f: &str| dir.join(f);
    if vouch {
        vouch_for(&req, &d("index.txt"));
    }
    let status = Command::new("openssl")
        .args(["ocsp", "-index"])
        .arg(d("index.txt"))
        .arg("-CA")
        .arg(d(&format!("{issuer}.pem")))
        .arg("-rsigner")
        .arg(d(&format!("{signer}.pem")))
        .arg("-rkey")
        .arg(d(&format!("{signer}.key")))
        .arg("-reqin")
        .arg(&req)
        .arg("-respout")
        .arg(&resp)
        .args(["-ndays", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl ocsp");
    let der = if status.success() {
        std::fs::read(&resp).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut conn = reader.into_inner();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/ocsp-response\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        der.len()
    );
    let _ = conn.write_all(&der);
}

fn fastrand() -> u64 {
    use std::time::SystemTime;
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Adds the serial a request asks about to `index` as valid.
fn vouch_for(req: &Path, index: &Path) {
    let out = Command::new("openssl")
        .args(["ocsp", "-req_text", "-reqin"])
        .arg(req)
        .output()
        .expect("run openssl ocsp -req_text");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(serial) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial Number:"))
    else {
        return;
    };
    let line = format!(
        "V\t351231000000Z\t\t{}\tunknown\t/CN=vouched\n",
        serial.trim()
    );
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(index)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
}
