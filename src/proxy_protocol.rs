//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) on listeners
//! with `proxy_protocol: true`: the L4 balancer in front opens each connection with a
//! header naming the client, and weir takes that address as the connection's peer, so
//! forwarding headers, `source` conditions, `source_ip` balancing and the access log
//! all see the client, not the balancer. Parsing is the `ppp` crate's.
//!
//! The header is required: a connection without a valid one is closed. A v2 `LOCAL`
//! header (the balancer's own health check) or v1 `UNKNOWN` keeps the real peer.

use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

/// Longest header accepted: v1 is at most 107 bytes; v2 is 16 plus addresses (216 at
/// most for unix sockets) plus TLVs, which balancers keep small.
const MAX_HEADER: usize = 1024;
/// The longest v1 header, its CRLF included.
const V1_MAX: usize = 107;

/// What a header said about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A proxied connection from this address.
    Addr(SocketAddr),
    /// The balancer speaking for itself (v2 `LOCAL`, v1 `UNKNOWN`, or a non-IP family).
    Local,
}

/// Parses a header at the start of `buf`: `Ok(None)` while more bytes are needed, else
/// the client and the header's length.
pub fn parse(buf: &[u8]) -> Result<Option<(Client, usize)>, String> {
    // A v1 header is one line: wait for all of it (ppp takes some cuts, such as one
    // right after a space, for errors).
    let v1 = buf.starts_with(b"PROXY") || b"PROXY".starts_with(buf);
    if v1 && !buf.contains(&b'\n') && buf.len() < V1_MAX {
        return Ok(None);
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if v1 {
            Err("bad PROXY v1 header: incomplete line".to_string())
        } else if buf.len() >= MAX_HEADER {
            Err(format!("no PROXY header in the first {MAX_HEADER} bytes"))
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Client::Addr(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Client::Addr(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => Client::Local,
            };
            Ok(Some((client, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => Client::Local,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Client::Addr(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Client::Addr(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => Client::Local,
            };
            Ok(Some((client, h.len())))
        }
        HeaderResult::V1(Err(e)) => Err(format!("bad PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("bad PROXY v2 header: {e}")),
    }
}

/// Reads the header off `stream`, putting back whatever followed it.
pub async fn read(stream: &mut pingora::protocols::l4::stream::Stream) -> Result<Client, String> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut filled = 0;
    loop {
        let n = stream
            .read(&mut buf[filled..])
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        if n == 0 {
            return Err("closed before a complete PROXY header".to_string());
        }
        filled += n;
        if let Some((client, len)) = parse(&buf[..filled])? {
            stream.rewind(&buf[len..filled]);
            return Ok(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], trailing: &[u8]) -> Vec<u8> {
        let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend((addresses.len() as u16).to_be_bytes());
        b.extend(addresses);
        b.extend(trailing);
        b
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h).unwrap(),
            Some((Client::Addr("192.0.2.7:5555".parse().unwrap()), 40))
        );
        let h = b"PROXY TCP6 2001:db8::1 ::1 4000 80\r\n";
        assert_eq!(
            parse(h).unwrap(),
            Some((Client::Addr("[2001:db8::1]:4000".parse().unwrap()), h.len()))
        );
        let h = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(h).unwrap(), Some((Client::Local, h.len())));
    }

    #[test]
    fn v2_proxy_and_local() {
        let addrs = [192, 0, 2, 9, 127, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
        let h = v2(1, 0x11, &addrs, b"rest");
        assert_eq!(
            parse(&h).unwrap(),
            Some((Client::Addr("192.0.2.9:8080".parse().unwrap()), h.len() - 4))
        );
        let h = v2(0, 0x00, &[], b"");
        assert_eq!(parse(&h).unwrap(), Some((Client::Local, 16)));
    }

    #[test]
    fn partial_headers_wait_and_garbage_fails() {
        let full = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n";
        for cut in 1..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let h = v2(1, 0x11, &[192, 0, 2, 9, 127, 0, 0, 1, 0, 80, 0, 80], b"");
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&[b'P'; MAX_HEADER]).is_err());
    }

    /// Mutated valid headers and random bytes: an answer every time, never a panic,
    /// and a header length within the input.
    #[test]
    fn arbitrary_input_never_panics() {
        fastrand::seed(11);
        let seeds: [Vec<u8>; 3] = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 4000 80\r\n".to_vec(),
            v2(1, 0x21, &[0; 36], b""),
        ];
        for i in 0..20_000 {
            let mut input = if i % 4 == 0 {
                (0..fastrand::usize(0..200))
                    .map(|_| fastrand::u8(..))
                    .collect()
            } else {
                seeds[i % 3].clone()
            };
            for _ in 0..fastrand::usize(0..4) {
                if input.is_empty() {
                    break;
                }
                let at = fastrand::usize(..input.len());
                match fastrand::u8(0..3) {
                    0 => input[at] = fastrand::u8(..),
                    1 => input.truncate(at),
                    _ => input.insert(at, fastrand::u8(..)),
                }
            }
            if let Ok(Some((_, len))) = parse(&input) {
                assert!(len <= input.len(), "{input:?}");
            }
        }
    }
}
