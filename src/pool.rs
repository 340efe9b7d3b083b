//! Idle upstream connections of one instance for weir's own HTTP/1 path (`h1`), kept
//! for the next request: a lock-free
//! queue per instance, made on first use (an instance never proxied to holds nothing).
//! A connection is taken for one request and given back after its response, so a
//! kept-alive client connection reuses whatever idle connection its next instance has.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use tokio::net::TcpStream;

/// Idle connections kept per instance; more are closed.
const PER_INSTANCE: usize = 64;

/// The idle connections of one instance.
#[derive(Default)]
pub struct Idle(OnceLock<Box<ArrayQueue<Parked>>>);

struct Parked {
    stream: TcpStream,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.get().map_or(0, |q| q.len());
        write!(f, "Idle({n})")
    }
}

impl Idle {
    /// An idle connection that is still open, has nothing to read, and was idle less
    /// than `max_idle`. Every one is checked, however fresh: an instance may have
    /// closed it, or written bytes after its last response that would otherwise be
    /// read as the next client's response. One that the instance closes after the
    /// check is tried once more on a new connection when the request allows it.
    pub fn take(&self, max_idle: Duration) -> Option<TcpStream> {
        let queue = self.0.get()?;
        while let Some(p) = queue.pop() {
            let idle = p.since.elapsed();
            if idle >= max_idle {
                continue;
            }
            if is_open(&p.stream) {
                return Some(p.stream);
            }
        }
        None
    }

    /// Keeps `stream` for a next request (closed when the queue is full).
    pub fn give(&self, stream: TcpStream) {
        let queue = self
            .0
            .get_or_init(|| Box::new(ArrayQueue::new(PER_INSTANCE)));
        let _ = queue.push(Parked {
            stream,
            since: Instant::now(),
        });
    }

    /// Closes connections idle longer than `max_idle`.
    pub fn sweep(&self, max_idle: Duration) {
        let Some(queue) = self.0.get() else {
            return;
        };
        for _ in 0..queue.len() {
            match queue.pop() {
                Some(p) if p.since.elapsed() < max_idle => {
                    let _ = queue.push(p);
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

/// An idle connection with nothing to read is open; one that reads end of stream, an
/// error, or bytes nobody asked for is not.
fn is_open(stream: &TcpStream) -> bool {
    let mut one = [0u8; 1];
    matches!(stream.try_read(&mut one), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
