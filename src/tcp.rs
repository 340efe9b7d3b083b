//! TCP gateways (`port: N/tcp`): an L4 proxy on the gateway's dedicated port.
//! Each connection takes a route by weight (routes with no healthy instance left out)
//! and an instance by the route's balance (`least_conn` by default, `source_ip`,
//! `round_robin`, `random`); a refused connect marks the instance down and the next one
//! is tried, up to `defaults.retries` more. Bytes are then copied both ways, half-closes
//! passed on, until both sides finish or nothing moves for `defaults.timeouts.idle`.
//!
//! Per connection: `weir_requests_total` counts it (`2xx` once connected, `5xx` when no
//! instance could be reached), `weir_request_duration_seconds` its lifetime, and the
//! byte counters what went each way; the access log has a line with method `TCP`.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::accesslog::{AccessLog, Entry};
use crate::request::Request;
use crate::snapshot::{Gateway, Route, Snapshot, Target};
use crate::upstream::{InFlight, Tried, Upstream};

/// Where a connection's outcome is recorded.
pub struct Records<'a> {
    pub metrics: bool,
    pub access_log: Option<&'a AccessLog>,
}

/// Proxies one client connection through gateway `g` of `snapshot`.
pub async fn serve(snapshot: Arc<Snapshot>, g: usize, mut client: Stream, records: Records<'_>) {
    let started = Instant::now();
    let peer = client
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
    let gateway = &snapshot.gateways[g];
    if let Some(access) = &gateway.access {
        if !access.admits(peer.map(|p| p.ip())) {
            log::debug!("gateway {:?}: {peer:?} not admitted", gateway.name);
            return;
        }
    }
    let Some(r) = gateway.schedule.load().pick() else {
        log::warn!(
            "gateway {:?}: no route available for {peer:?}",
            gateway.name
        );
        return;
    };
    let route = &gateway.routes[r];
    let Some((mut upstream, instance)) = connect(&snapshot, g, route, peer.map(|p| p.ip())).await
    else {
        let outcome = Outcome {
            status: 503,
            instance: None,
            sent: 0,
            received: 0,
        };
        return record(&records, gateway, route, peer, started, outcome);
    };
    let counted = InFlight::new(&instance);
    let idle = snapshot.defaults.idle_timeout;
    let (received, sent) = splice(&mut client, &mut upstream, idle).await;
    drop(counted);
    let outcome = Outcome {
        status: 200,
        instance: Some(&instance.name),
        sent,
        received,
    };
    record(&records, gateway, route, peer, started, outcome);
}

/// How a connection went.
struct Outcome<'a> {
    /// 200: an instance was reached; 503: none could be.
    status: u16,
    instance: Option<&'a str>,
    sent: u64,
    received: u64,
}

fn record(
    records: &Records,
    gateway: &Gateway,
    route: &Route,
    peer: Option<SocketAddr>,
    started: Instant,
    outcome: Outcome,
) {
    let elapsed = started.elapsed();
    let (sent, received) = (outcome.sent as usize, outcome.received as usize);
    if records.metrics {
        route
            .metrics
            .record(outcome.status, elapsed, sent, received);
    }
    if let Some(log) = records.access_log {
        log.log(&Entry {
            gateway: Some(&gateway.name),
            route: Some(&route.key),
            instance: outcome.instance,
            ..Entry::tcp(peer.map(|p| p.ip()), outcome.status, sent, elapsed)
        });
    }
}

/// Connects to an instance of `route`, trying others on failure.
async fn connect(
    snapshot: &Snapshot,
    g: usize,
    route: &Route,
    client: Option<IpAddr>,
) -> Option<(TcpStream, Upstream)> {
    let gateway = &snapshot.gateways[g];
    let defaults = &snapshot.defaults;
    let input = Request::l4(client);
    let mut tried = Tried::default();
    for _ in 0..=defaults.retries {
        let upstream = match &route.target {
            Target::Pool(p) => p.pick(tried, &input)?.clone(),
            Target::External(e) => e.pick(tried)?,
            _ => return None,
        };
        tried.add(upstream.index);
        let addr: SocketAddr = *upstream.peer._address.as_inet()?;
        let kind =
            match tokio::time::timeout(defaults.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    upstream.health.mark_ok_passive();
                    let _ = stream.set_nodelay(true);
                    return Some((stream, upstream));
                }
                Ok(Err(e)) => {
                    log::debug!("gateway {:?}: connect to {addr}: {e}", gateway.name);
                    "connect"
                }
                Err(_) => "connect_timeout",
            };
        snapshot.connect_failed(&gateway.name, route, &upstream, kind);
    }
    None
}

/// Copies both ways until both directions end, or until no byte moved either way for
/// `idle`. Returns the bytes (client → upstream, upstream → client).
async fn splice(client: &mut Stream, upstream: &mut TcpStream, idle: Duration) -> (u64, u64) {
    let epoch = Instant::now();
    // Shared by both directions and the watch below, all in this one task.
    let last = AtomicU64::new(0);
    let mut a = Watched {
        inner: client,
        epoch,
        last: &last,
        bytes: 0,
    };
    let mut b = Watched {
        inner: upstream,
        epoch,
        last: &last,
        bytes: 0,
    };
    {
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::pin!(copy);
        loop {
            let quiet_since = epoch + Duration::from_millis(last.load(Ordering::Relaxed));
            tokio::select! {
                result = &mut copy => {
                    if let Err(e) = result {
                        log::debug!("tcp connection ended: {e}");
                    }
                    break;
                }
                _ = tokio::time::sleep_until((quiet_since + idle).into()) => {
                    let now = epoch.elapsed().as_millis() as u64;
                    if now.saturating_sub(last.load(Ordering::Relaxed)) >= idle.as_millis() as u64 {
                        log::debug!("tcp connection idle for {idle:?}: closed");
                        break;
                    }
                }
            }
        }
    }
    (a.bytes, b.bytes)
}

/// A stream that notes when it last read anything, and how much it read.
struct Watched<'a, S> {
    inner: S,
    epoch: Instant,
    last: &'a AtomicU64,
    bytes: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.bytes += read;
            let now = self.epoch.elapsed().as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
