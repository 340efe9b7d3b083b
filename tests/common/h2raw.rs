//! A raw HTTP/2 client over a real TLS connection (`openssl s_client`), for tests that
//! send what no well-behaved client would: frames written by the test, frames read back
//! as they came.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

/// Frame types.
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame: 9-byte header, then the payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A request head in HPACK, without Huffman or the dynamic table: `:method` (GET or
/// POST from the static table), `:scheme https`, `:path /`, `:authority` and any extra
/// fields as literals never indexed.
pub fn hpack_request(method: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![if method == "POST" { 0x83 } else { 0x82 }, 0x87, 0x84];
    literal_indexed_name(&mut out, 1, authority.as_bytes());
    for (name, value) in extra {
        out.push(0x10);
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
    }
    out
}

fn literal_indexed_name(out: &mut Vec<u8>, index: u8, value: &[u8]) {
    // Literal without indexing, name from the static table (index < 15).
    out.push(index);
    string(out, value);
}

/// An HPACK string literal (no Huffman), its length as a 7-bit prefixed integer.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// One frame as it came back.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A raw HTTP/2 connection to `SNI` on 127.0.0.1:port.
pub struct H2Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    got: Arc<Mutex<Vec<u8>>>,
}

impl H2Raw {
    /// Connects (ALPN h2), sends the preface and an empty SETTINGS frame. The client
    /// gives up on its own after 60 s.
    pub fn connect(port: u16, sni: &str) -> H2Raw {
        let mut child = Command::new("timeout")
            .args([
                "60",
                "openssl",
                "s_client",
                "-quiet",
                "-nocommands",
                "-alpn",
                "h2",
            ])
            .args(["-servername", sni, "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        let mut stdout = child.stdout.take().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    return;
                }
                g.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut raw = H2Raw {
            child,
            stdin: None,
            got,
        };
        raw.stdin = raw.child.stdin.take();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
        raw.send(&hello);
        raw
    }

    /// Writes `bytes`; false once the connection is gone.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        let Some(stdin) = &mut self.stdin else {
            return false;
        };
        stdin.write_all(bytes).is_ok() && stdin.flush().is_ok()
    }

    /// The frames received so far (a partial last one left out).
    pub fn frames(&self) -> Vec<Frame> {
        let got = self.got.lock().unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while got.len() >= at + 9 {
            let len = (got[at] as usize) << 16 | (got[at + 1] as usize) << 8 | got[at + 2] as usize;
            if got.len() < at + 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]])
                & 0x7fff_ffff;
            out.push(Frame {
                kind: got[at + 3],
                flags: got[at + 4],
                stream,
                payload: got[at + 9..at + 9 + len].to_vec(),
            });
            at += 9 + len;
        }
        out
    }

    /// Whether `stream` has ended: reset, or its last frame carried END_STREAM.
    pub fn stream_ended(&self, stream: u32) -> bool {
        self.frames().iter().any(|f| {
            f.stream == stream
                && (f.kind == RST_STREAM
                    || (f.kind == HEADERS || f.kind == DATA) && f.flags & END_STREAM != 0)
        })
    }

    /// Whether the server closed the connection (the client then exits).
    pub fn closed(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for H2Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
