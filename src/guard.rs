//! The HTTP/1 connection guard: a stream between the socket (or TLS) and Pingora's
//! HTTP/1 parser that lets through only bytes `framing` has read and accepted.
//!
//! It owns three things per connection: the whole-head deadline (`request_header`,
//! from accept for the first request and from the first byte for later ones, like
//! HAProxy's `timeout http-request`), holding back a request head until it is complete
//! (so Pingora never parses, and never forwards, part of a request weir refuses), and
//! answering a refused request itself (400, 408, 414 or 431, then close). Complete
//! heads that arrive in one read, the common case, pass through without a copy.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::framing::pace::{BodyPace, Pacing};
use crate::framing::{Limits, Refusal, Scanner};

/// Held bytes' buffer capacity kept between requests; a larger one is freed.
const KEEP_CAPACITY: usize = 8 << 10;

/// An HTTP/1 client connection, guarded.
pub struct Guarded {
    inner: Stream,
    scan: Scanner,
    /// Bytes of a request head still incomplete, scanned, not yet handed on.
    held: Vec<u8>,
    /// Bytes scanned and accepted, to hand on before reading more.
    ready: Vec<u8>,
    ready_pos: usize,
    /// When the request head being read must be complete.
    deadline: Option<Instant>,
    head_timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A refused request, to answer once the bytes before it are read.
    pending: Option<Refusal>,
    /// A refusal being written to the client.
    refusing: Option<(Vec<u8>, usize)>,
    /// Refused: reads see the end of the stream, writes fail.
    closed: bool,
    /// Something was written since the current request head started.
    responded: bool,
    /// The start of the current response's status line, as written.
    status: ([u8; 12], usize),
    /// The current request's final response status, once written.
    answered: Option<u16>,
    /// A read parked until the response to an upgrade request is seen.
    parked: Option<Waker>,
    /// The listener label refusals are counted under, when metrics are on.
    report: Option<Arc<str>>,
    /// The pace a request body must keep, and the current body's progress.
    pace: BodyPace,
    pacing: Option<Pacing>,
    /// The read under way only checks that the client is still there.
    probing: bool,
}

impl Guarded {
    /// Guards `inner`, whose first request head must be complete within
    /// `head_timeout` of `accepted`.
    pub fn new(
        inner: Stream,
        limits: Limits,
        head_timeout: Duration,
        accepted: Instant,
        report: Option<Arc<str>>,
    ) -> Guarded {
        Guarded {
            inner,
            scan: Scanner::new(limits),
            pace: limits.body,
            pacing: None,
            probing: false,
            held: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            deadline: Some(accepted + head_timeout),
            head_timeout,
            sleep: None,
            pending: None,
            refusing: None,
            closed: false,
            responded: false,
            status: ([0; 12], 0),
            answered: None,
            parked: None,
            report,
        }
    }

    /// Starts answering `status` and closing.
    fn refuse(&mut self, status: u16, reason: &str) {
        if let Some(listener) = &self.report {
            crate::metrics::request_refused(listener, status);
        }
        log::debug!("refused a request: {status} ({reason})");
        if self.responded {
            // A response is already on its way: all that can be done is to close.
            self.closed = true;
            return;
        }
        let phrase = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Bad Request");
        let text = format!(
            "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reason}\n",
            reason.len() + 1
        );
        self.refusing = Some((text.into_bytes(), 0));
    }

    /// Writes the refusal, then reports the end of the stream.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, written)) = &mut self.refusing {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    break;
                }
                *written += n;
            }
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        }
        self.refusing = None;
        self.closed = true;
        Poll::Ready(Ok(()))
    }

    /// Whether the head deadline has passed (registering a wake-up for it if not).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        let sleep = match &mut self.sleep {
            Some(s) => {
                if s.deadline() != deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx).is_ready()
    }

    /// The deadline passed: 408 if the client sent part of a head or a body too slowly,
    /// else a quiet close.
    fn timed_out(&mut self) {
        self.deadline = None;
        if self.pacing.take().is_some() {
            self.refuse(408, "request body not received in time");
        } else if self.scan.head_start().is_some() {
            self.refuse(408, "request header not received in time");
        } else {
            self.closed = true;
        }
    }

    /// After a read: the body being read keeps its pace, and its deadline is the one
    /// the guard waits on (`timeouts.client_body`, `limits.min_body_rate`).
    fn pace_body(&mut self) {
        match self.scan.body_read() {
            Some(read) => {
                let now = std::time::Instant::now();
                let p = self.pacing.get_or_insert_with(|| Pacing::start(now));
                p.advance(read.saturating_sub(p.bytes()), now);
                self.deadline = Some(Instant::from_std(p.deadline(self.pace)));
            }
            None => {
                if self.pacing.take().is_some() {
                    // The body ended: the next head gets its own deadline.
                    self.deadline = None;
                }
            }
        }
    }

    /// Hands on accepted bytes from `ready`.
    fn take_ready(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.ready.len() - self.ready_pos);
        buf.put_slice(&self.ready[self.ready_pos..self.ready_pos + n]);
        self.ready_pos += n;
        if self.ready_pos == self.ready.len() {
            self.ready.clear();
            self.ready_pos = 0;
            if self.ready.capacity() > KEEP_CAPACITY {
                self.ready = Vec::new();
            }
        }
    }

    /// After `new` (at stream offset `start`) was scanned and accepted: what of it goes
    /// on now, in `buf` (its first `keep` bytes) or via `ready`, and what is held.
    fn sort(&mut self, buf: &mut ReadBuf<'_>, before: usize, start: u64) -> Option<()> {
        let n = buf.filled().len() - before;
        let head = self.scan.head_start();
        if head.is_some() && self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.head_timeout);
        } else if head.is_none() && self.pacing.is_none() {
            self.deadline = None;
        }
        // Offset in `new` where a held (incomplete) head starts.
        let split = match head {
            Some(h) if h >= start => (h - start) as usize,
            Some(_) => 0,
            None => n,
        };
        let new = &buf.filled()[before..];
        if self.held.is_empty() {
            if split < n {
                self.held.extend_from_slice(&new[split..]);
                buf.set_filled(before + split);
            }
            return (split > 0).then_some(());
        }
        if head.is_some_and(|h| h < start) {
            // The held head is still incomplete.
            self.held.extend_from_slice(new);
            buf.set_filled(before);
            return None;
        }
        // The held head completed in `new`: it goes on with what follows it.
        self.ready.extend_from_slice(&self.held);
        self.ready.extend_from_slice(&new[..split]);
        self.held.clear();
        self.held.extend_from_slice(&new[split..]);
        if self.held.capacity() > KEEP_CAPACITY && self.held.is_empty() {
            self.held = Vec::new();
        }
        buf.set_filled(before);
        self.take_ready(buf);
        Some(())
    }

    /// Waits until there is something to hand on: bytes of the next request (read and
    /// kept, so no read is wasted), a refusal to answer, or the end of the stream
    /// (false).
    pub async fn readable(&mut self) -> bool {
        self.wait_readable(false).await
    }

    /// `readable`, asked while a response is still being written (is the client still
    /// there?): a refused request queued behind the current one is not answered yet,
    /// and counts as nothing to read.
    pub async fn still_there(&mut self) -> bool {
        self.wait_readable(true).await
    }

    async fn wait_readable(&mut self, probe: bool) -> bool {
        std::future::poll_fn(|cx| {
            if self.ready_pos < self.ready.len() || (self.pending.is_some() && !probe) {
                return Poll::Ready(true);
            }
            self.probing = probe;
            let mut chunk = [0u8; 2048];
            let mut buf = ReadBuf::new(&mut chunk);
            let polled = Pin::new(&mut *self).poll_read(cx, &mut buf);
            self.probing = false;
            match polled {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    // The end of the stream, or a refusal written and done.
                    Poll::Ready(false)
                }
                Poll::Ready(Ok(())) => {
                    // What the read gave goes first, before anything still in `ready`.
                    let rest = self.ready.split_off(self.ready_pos);
                    self.ready.clear();
                    self.ready.extend_from_slice(buf.filled());
                    self.ready.extend_from_slice(&rest);
                    self.ready_pos = 0;
                    Poll::Ready(true)
                }
            }
        })
        .await
    }

    /// Accepted bytes read and not yet handed on: after `readable`, the next request's
    /// complete head (the guard releases only complete heads) and what followed it.
    /// Empty when a refusal is due instead.
    pub fn buffered(&self) -> &[u8] {
        if self.pending.is_some() || self.refusing.is_some() || self.closed {
            return &[];
        }
        &self.ready[self.ready_pos..]
    }

    /// Hands on the first `n` bytes of `buffered` to whoever read them there.
    pub fn consume(&mut self, n: usize) {
        self.ready_pos = (self.ready_pos + n).min(self.ready.len());
        if self.ready_pos == self.ready.len() {
            self.ready.clear();
            self.ready_pos = 0;
        }
    }

    /// Notes the status of the response being written: an upgrade request's bytes
    /// after it are read only once it is known.
    fn watch_response(&mut self, bytes: &[u8]) {
        let (acc, len) = &mut self.status;
        let take = (acc.len() - *len).min(bytes.len());
        acc[*len..*len + take].copy_from_slice(&bytes[..take]);
        *len += take;
        if *len < acc.len() {
            return;
        }
        let status = std::str::from_utf8(&acc[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        *len = 0;
        // An interim response (100 Continue): the final status line comes after it.
        if !(100..200).contains(&status) || status == 101 {
            self.answered = Some(status);
            self.settle_upgrade();
        }
    }

    /// An upgrade request whose response is known becomes a tunnel or goes on as HTTP/1.
    fn settle_upgrade(&mut self) {
        let Some(status) = self.answered else {
            return;
        };
        if self.scan.awaiting_response() {
            self.scan.response(status);
            if let Some(w) = self.parked.take() {
                w.wake();
            }
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        self.responded = true;
        if self.answered.is_none() {
            self.watch_response(bytes);
        }
    }

    /// A new request starts: nothing is written for it yet.
    fn new_request(&mut self) {
        self.responded = false;
        self.answered = None;
        self.status.1 = 0;
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.refusing.is_some() {
                return this.poll_refusal(cx);
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            if this.ready_pos < this.ready.len() {
                this.take_ready(buf);
                return Poll::Ready(Ok(()));
            }
            if this.pending.is_some() && (this.probing || buf.remaining() <= 1) {
                // The response to the request before the refused one is still being
                // written, and whoever writes it only probes whether the client is
                // there (Pingora's probe reads one byte; weir's leg says `probing`):
                // the refusal waits for the read of the next request.
                return Poll::Pending;
            }
            if let Some(r) = this.pending.take() {
                // The exchange before the refused request is over (Pingora reads the
                // next request only then).
                this.new_request();
                this.refuse(r.status(), r.reason());
                continue;
            }
            if this.scan.awaiting_response() {
                this.parked = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let before = buf.filled().len();
            let start = this.scan.position();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => {
                    if this.poll_deadline(cx) {
                        this.timed_out();
                        continue;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if buf.filled().len() == before {
                // The end of the stream; a held partial head is dropped with it.
                return Poll::Ready(Ok(()));
            }
            if this.scan.idle() {
                this.new_request();
            }
            if let Err(r) = this.scan.feed(&buf.filled()[before..]) {
                // What came before the refused request's head (a head held from
                // earlier reads first) still goes on; the refusal follows it.
                let keep = match this.scan.head_start() {
                    Some(h) if h > start => (h - start) as usize,
                    _ => 0,
                };
                this.deadline = None;
                if keep > 0 {
                    this.pending = Some(r);
                    if this.held.is_empty() {
                        buf.set_filled(before + keep);
                    } else {
                        this.ready.extend_from_slice(&this.held);
                        this.ready
                            .extend_from_slice(&buf.filled()[before..before + keep]);
                        this.held.clear();
                        buf.set_filled(before);
                        this.take_ready(buf);
                    }
                    return Poll::Ready(Ok(()));
                }
                buf.set_filled(before);
                this.held.clear();
                this.refuse(r.status(), r.reason());
                continue;
            }
            this.pace_body();
            // An upgrade answered before its request was all read.
            this.settle_upgrade();
            if this.sort(buf, before, start).is_some() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed || this.refusing.is_some() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed || this.refusing.is_some() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            let take = left.min(b.len());
            if take > 0 {
                this.wrote(&b[..take]);
            }
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, _buf: &mut [u8]) -> io::Result<bool> {
        // Peeking past the guard would read bytes it has not checked.
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::pace::BodyPace;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A guarded server side and the raw client side of one loopback connection.
    async fn guarded(limits: Limits) -> (Guarded, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let inner: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(
            server.unwrap().0,
        ));
        let g = Guarded::new(inner, limits, Duration::from_secs(5), Instant::now(), None);
        (g, client.unwrap())
    }

    async fn read_some(g: &mut Guarded, size: usize) -> Vec<u8> {
        let mut buf = vec![0u8; size];
        let n = g.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    }

    /// What the client side reads until weir closes.
    async fn answer(client: &mut TcpStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    const GOOD: &[u8] = b"GET /a HTTP/1.1\r\nHost: g\r\n\r\n";

    #[tokio::test]
    async fn a_complete_head_passes_whole() {
        let (mut g, mut client) = guarded(Limits::default()).await;
        client.write_all(GOOD).await.unwrap();
        assert_eq!(read_some(&mut g, 4096).await, GOOD);
    }

    #[tokio::test]
    async fn a_head_split_over_reads_is_held_until_complete() {
        let (mut g, mut client) = guarded(Limits::default()).await;
        client.write_all(&GOOD[..5]).await.unwrap();
        let reading = tokio::spawn(async move {
            let got = read_some(&mut g, 4096).await;
            (g, got)
        });
        tokio::task::yield_now().await;
        client.write_all(&GOOD[5..]).await.unwrap();
        let (_g, got) = reading.await.unwrap();
        assert_eq!(got, GOOD, "nothing of the head before all of it");
    }

    #[tokio::test]
    async fn a_refused_head_is_answered_and_never_handed_on() {
        let (mut g, mut client) = guarded(Limits::default()).await;
        client
            .write_all(b"GET /a\x01 HTTP/1.1\r\nHost: g\r\n\r\n")
            .await
            .unwrap();
        assert!(
            read_some(&mut g, 4096).await.is_empty(),
            "the end of the stream"
        );
        drop(g);
        let text = answer(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("connection: close"), "{text}");
    }

    #[tokio::test]
    async fn a_refusal_behind_a_good_request_waits_for_the_next_read() {
        let (mut g, mut client) = guarded(Limits::default()).await;
        let bad: &[u8] = b"GET /b\x01 HTTP/1.1\r\nHost: g\r\n\r\n";
        client.write_all(&[GOOD, bad].concat()).await.unwrap();
        assert_eq!(read_some(&mut g, 4096).await, GOOD);
        // A one-byte probe (is the client there?) while the first is answered: nothing.
        let mut one = [0u8; 1];
        let probe = tokio::time::timeout(Duration::from_millis(50), g.read(&mut one)).await;
        assert!(probe.is_err(), "the probe got {probe:?}");
        assert!(g.still_there().now_or_never().is_none());
        g.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        // The read of the next request: the refusal, after the first answer.
        assert!(read_some(&mut g, 4096).await.is_empty());
        drop(g);
        let text = answer(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("\r\n\r\nHTTP/1.1 400 "), "{text}");
    }

    #[tokio::test]
    async fn a_stalled_body_gets_408() {
        let limits = Limits {
            body: BodyPace {
                idle: Duration::from_millis(100),
                min_rate: 0,
            },
            ..Limits::default()
        };
        let (mut g, mut client) = guarded(limits).await;
        let head: &[u8] = b"POST /up HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\n\r\nab";
        client.write_all(head).await.unwrap();
        assert_eq!(read_some(&mut g, 4096).await, head);
        // Nothing more comes: the next read ends once the body's deadline passes.
        assert!(read_some(&mut g, 4096).await.is_empty());
        drop(g);
        let text = answer(&mut client).await;
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    }
}
