//! Loopback ports for tests: free ones below the ephemeral range, and dead ones.

use std::net::TcpListener;
use std::sync::atomic::Ordering;

/// A port that was free a moment ago. Taken below Linux's ephemeral range (32768+),
/// so that no client socket of a concurrent test can be sitting on it, and handed out
/// once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() * 7919 % 12_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (base + n) % 12_000) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// A `listeners:` block with one plain listener, `http`, on 127.0.0.1:port.
pub fn http_listener(port: u16) -> String {
    format!("listeners:\n  http: {{ bind: \"127.0.0.1:{port}\" }}\n")
}

/// A port with nothing listening on it (connections are refused).
pub fn dead_port() -> u16 {
    free_port()
}
