//! A raw-socket upstream that records every byte that reaches it, for tests of what a
//! refused request must never deliver.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How a raw upstream answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// `200 ok` for every request head it sees.
    Ok,
    /// Never a byte back.
    Silent,
    /// `101 Switching Protocols`, whatever was asked.
    SwitchProtocols,
    /// Reads a request head, then resets the connection without a byte back.
    Reset,
}

/// A raw upstream on 127.0.0.1.
pub struct RawUpstream {
    pub port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl RawUpstream {
    pub fn start(answer: Answer) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (b, c) = (bytes.clone(), conns.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                // A kept clone would hold a reset connection open.
                if !matches!(answer, Answer::Reset) {
                    if let Ok(clone) = conn.try_clone() {
                        c.lock().unwrap().push(clone);
                    }
                }
                let b = b.clone();
                thread::spawn(move || serve(conn, &b, answer));
            }
        });
        RawUpstream { port, bytes, conns }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything received so far, on all connections, as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn serve(mut conn: TcpStream, record: &Mutex<Vec<u8>>, answer: Answer) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 16384];
    // Heads seen on this connection, to answer each once.
    let mut mine = Vec::new();
    let mut answered = 0;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        mine.extend_from_slice(&buf[..n]);
        let heads = mine.windows(4).filter(|w| w == b"\r\n\r\n").count();
        while answered < heads {
            answered += 1;
            let reply: &[u8] = match answer {
                Answer::Ok => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                Answer::Silent => continue,
                Answer::Reset => {
                    // SO_LINGER 0: close sends RST, as a crashed process's socket does.
                    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                    return;
                }
                Answer::SwitchProtocols => {
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: evil\r\nconnection: upgrade\r\n\r\n"
                }
            };
            if conn.write_all(reply).is_err() {
                return;
            }
        }
    }
}
