//! A small real HTTP/1.1 client: raw requests, keep-alive, parsed responses.

use std::collections::HashMap;
use std::io::BufReader;
use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header lines as they came, in order, names lower-cased (a repeated header is
    /// seen as often as it was sent).
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body as it came (for binary bodies).
    pub bytes: Vec<u8>,
}

impl Response {
    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A TCP connection to 127.0.0.1:port from a given loopback source address.
pub fn tcp_from(source: &str, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&src.into()).expect("bind source address");
    let dst: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&dst.into()).expect("connect to weir");
    socket.into()
}

/// A keep-alive HTTP/1.1 client connection to 127.0.0.1:port.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to weir");
        Client::from_stream(stream)
    }

    /// Connects from a given loopback source address (e.g. 127.0.0.7).
    pub fn connect_from(source: &str, port: u16) -> Client {
        Client::from_stream(tcp_from(source, port))
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Sends a GET and reads the response.
    pub fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", host, path, headers)
    }

    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes());
        self.read_response(method == "HEAD")
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send request");
    }

    pub fn read_response(&mut self, head: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("read header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut body = Vec::new();
        if !head {
            let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if let Some(len) = get("content-length") {
                body.resize(len.parse().unwrap(), 0);
                self.reader.read_exact(&mut body).expect("read body");
            } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                body = self.read_chunked();
            } else {
                self.reader
                    .read_to_end(&mut body)
                    .expect("read body to close");
            }
        }
        Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            bytes: body,
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }

    pub fn into_reader(self) -> BufReader<TcpStream> {
        self.reader
    }

    pub fn close(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

/// One GET on a fresh connection.
pub fn get(port: u16, host: &str, path: &str) -> Response {
    Client::connect(port).get(host, path, &[])
}

/// Counts response bodies over `n` GETs on one keep-alive connection.
pub fn tally(port: u16, host: &str, n: usize) -> HashMap<String, usize> {
    let mut client = Client::connect(port);
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = client.get(host, "/", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        *counts.entry(r.body).or_insert(0) += 1;
    }
    counts
}

// ---- certificates, made with the `openssl` command ---------------------------

/// Reads what comes back on `s` until the peer closes (or the socket's read timeout
/// passes); the text, and whether it was closed.
pub fn read_to_close(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}
