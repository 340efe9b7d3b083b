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
/// error, or bytes nobody asked for is not. Asked of the socket itself (a peek that
/// does not wait), not of the runtime's readiness flags, which may not have caught up
/// with bytes that arrived a moment ago.
fn is_open(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut one = [0u8; 1];
    // SAFETY: a valid, open socket of `stream`, and a one-byte buffer that outlives
    // the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            one.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (weir's side, the instance's side).
    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (ours.unwrap(), theirs.unwrap().0)
    }

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_quiet_open_connection_is_taken_again() {
        let l = listener().await;
        let (ours, _theirs) = pair(&l).await;
        let port = ours.local_addr().unwrap().port();
        let idle = Idle::default();
        idle.give(ours);
        let back = idle.take(LONG).expect("kept");
        assert_eq!(back.local_addr().unwrap().port(), port);
        assert!(idle.take(LONG).is_none(), "taken once");
    }

    #[tokio::test]
    async fn bytes_nobody_asked_for_or_a_close_discard_it() {
        let l = listener().await;
        let idle = Idle::default();
        // The instance wrote after its response: those bytes are nobody's answer.
        let (ours, mut late) = pair(&l).await;
        idle.give(ours);
        late.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // The instance closed it while idle.
        let (ours, closed) = pair(&l).await;
        idle.give(ours);
        drop(closed);
        // Both are checked however fresh they are, and before the runtime has polled
        // for what arrived (loopback delivers at once).
        assert!(idle.take(LONG).is_none());
        // A quiet one given after them is still taken.
        let (ours, _quiet) = pair(&l).await;
        idle.give(ours);
        assert!(idle.take(LONG).is_some());
    }

    #[tokio::test]
    async fn too_old_connections_are_dropped_and_swept() {
        let l = listener().await;
        let idle = Idle::default();
        let (a, _ka) = pair(&l).await;
        let (b, _kb) = pair(&l).await;
        idle.give(a);
        idle.give(b);
        assert!(idle.take(Duration::ZERO).is_none(), "older than max_idle");
        let (c, _kc) = pair(&l).await;
        idle.give(c);
        idle.sweep(Duration::ZERO);
        assert!(idle.take(LONG).is_none(), "swept");
    }

    #[tokio::test]
    async fn at_most_per_instance_are_kept() {
        let l = listener().await;
        let idle = Idle::default();
        let mut theirs = Vec::new();
        for _ in 0..PER_INSTANCE + 3 {
            let (ours, t) = pair(&l).await;
            theirs.push(t);
            idle.give(ours);
        }
        let mut taken = 0;
        while idle.take(LONG).is_some() {
            taken += 1;
        }
        assert_eq!(taken, PER_INSTANCE);
    }
}
