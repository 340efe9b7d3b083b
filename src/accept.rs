//! Accepted connections, before HTTP: each is counted in `weir_connections_active`
//! while it is open; on a `proxy_protocol` listener its PROXY header is read and the
//! client it names becomes the peer; on a TLS listener it is put through weir's TLS
//! handshake; then HTTP/1 connections go through weir's session loop (`h1` first,
//! else the HTTP proxy), with `request_header` for their first request, and HTTP/2
//! connections to `http2`. A TCP gateway's port goes to `tcp` instead.
//!
//! weir terminates TLS here rather than in Pingora's TLS listener so that it owns the
//! rustls `ServerConfig`: `min_version`, ALPN, session tickets with rotating
//! keys, a handshake deadline, and counting failed handshakes, none of which Pingora's
//! listener settings reach. Every listener is a plain TCP listener to Pingora; this
//! app sits between it and the proxy, as Pingora's docs for `http_proxy` suggest.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::ALPN;
use pingora::protocols::{GetSocketDigest, Peek, SocketDigest, Ssl, Stream};
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;

use crate::accesslog::AccessLog;
use crate::connlimit::{ClientCounts, ClientPlace, ListenerCount, ListenerPlace, Refused};
use crate::guard::Guarded;
use crate::lifecycle::{Open, LINGER};
use crate::proxy_protocol;
use crate::snapshot::{ClientLimits, Entry, Snapshot};
use crate::tls::{RecordPeer, TlsEndpoint};

/// One address weir listens on.
pub struct Port {
    pub bind: SocketAddr,
    /// Set on TLS listeners.
    pub tls: Option<Arc<TlsEndpoint>>,
    /// Its open connections, for `max_connections`.
    pub open: Arc<ListenerCount>,
}

impl Port {
    fn serves(&self, local: SocketAddr) -> bool {
        self.bind.port() == local.port()
            && (self.bind.ip().is_unspecified() || self.bind.ip() == local.ip())
    }
}

/// The connection layer around the HTTP app `A`.
pub struct Accept<A> {
    app: Arc<A>,
    ports: Vec<Port>,
    current: Arc<ArcSwap<Snapshot>>,
    /// Count connections (only when an admin listener can serve the metrics).
    metrics: bool,
    /// For TCP gateways' lines.
    access_log: Option<Arc<AccessLog>>,
    /// Open connections by client, for `max_connections_per_client`.
    clients: Arc<ClientCounts>,
}

impl<A> Accept<A> {
    pub fn new(
        app: A,
        ports: Vec<Port>,
        current: Arc<ArcSwap<Snapshot>>,
        metrics: bool,
        access_log: Option<Arc<AccessLog>>,
    ) -> Accept<A> {
        Accept {
            app: Arc::new(app),
            ports,
            current,
            metrics,
            access_log,
            clients: Arc::default(),
        }
    }

    fn port_of(&self, stream: &Stream) -> Option<&Port> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())?;
        self.ports.iter().find(|p| p.serves(local))
    }

    /// Counts the connection open until the guard drops.
    fn open(&self, snapshot: &Snapshot, port: u16) -> Option<OpenConnection> {
        if !self.metrics {
            return None;
        }
        let label = snapshot.port_label(port);
        let gauge = crate::metrics::metrics()
            .connections_active
            .with_label_values(&[&label]);
        gauge.inc();
        Some(OpenConnection(gauge))
    }

    /// Reads the PROXY header, within the request-header timeout, and makes the client
    /// it names the connection's peer. Without a valid header the connection closes.
    async fn proxy_header(&self, stream: Stream, deadline: Duration) -> Option<Stream> {
        let mut tcp = tcp_of(stream)?;
        let read = tokio::time::timeout(deadline, proxy_protocol::read(&mut tcp)).await;
        let client = match read {
            Ok(Ok(client)) => client,
            Ok(Err(why)) => {
                log::debug!("{}: {why}", peer_of(&tcp));
                return None;
            }
            Err(_) => {
                log::debug!("{}: no PROXY header within {deadline:?}", peer_of(&tcp));
                return None;
            }
        };
        if let proxy_protocol::Client::Addr(client) = client {
            let old = tcp.get_socket_digest();
            let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
            let _ = digest.peer_addr.set(Some(client.into()));
            if let Some(local) = old.as_ref().and_then(|d| d.local_addr().cloned()) {
                let _ = digest.local_addr.set(Some(local));
            }
            tcp.set_socket_digest(digest);
        }
        Some(tcp)
    }

    /// The TLS handshake, within the request-header timeout. A failure is counted and
    /// logged at debug level: scanners and port probes make plenty of them.
    async fn handshake(
        &self,
        tls: &TlsEndpoint,
        stream: Stream,
        deadline: Duration,
    ) -> Option<Stream> {
        let mut tcp = *tcp_of(stream)?;
        let peer = tcp.get_socket_digest().and_then(|d| d.peer_addr().cloned());
        let acceptor = tls.acceptor();
        let attempt = async {
            // A client that closes before sending a byte is a port probe (load
            // balancers' TCP checks), not a failed handshake.
            tcp.try_peek(&mut [0u8; 1]).await.map_err(Failure::Left)?;
            handshake_with_callback(&acceptor, tcp, &RecordPeer)
                .await
                .map_err(Failure::Tls)
        };
        let why = match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(tls_stream)) => return Some(Box::new(tls_stream)),
            Ok(Err(Failure::Left(e))) => {
                log::trace!(
                    "listener {:?}: client left before a handshake: {e}",
                    tls.name
                );
                return None;
            }
            Ok(Err(Failure::Tls(e))) => e.to_string(),
            Err(_) => format!("no handshake within {deadline:?}"),
        };
        tls.failed();
        match peer {
            Some(peer) => log::debug!("listener {:?}: TLS handshake from {peer}: {why}", tls.name),
            None => log::debug!("listener {:?}: TLS handshake: {why}", tls.name),
        }
        None
    }
}

/// Waits for a client's first byte, until `deadline`; false when none came in time or
/// the client left (the connection then closes quietly).
async fn first_byte(stream: &mut Stream, deadline: tokio::time::Instant) -> bool {
    let mut one = [0u8; 1];
    matches!(
        tokio::time::timeout_at(deadline, stream.try_peek(&mut one)).await,
        Ok(Ok(_))
    )
}

/// Waits for `ready` (a connection's next bytes); once accepting has stopped, for at
/// most `LINGER` more, so that a request already on its way is still served.
async fn unless_stopped(
    ready: impl std::future::Future<Output = bool>,
    shutdown: &ShutdownWatch,
) -> bool {
    tokio::pin!(ready);
    let mut stopping = shutdown.clone();
    if !*stopping.borrow() {
        tokio::select! {
            came = &mut ready => return came,
            _ = stopping.changed() => {}
        }
    }
    tokio::time::timeout(LINGER, ready).await.unwrap_or(false)
}

/// The TCP connection under `stream` (a PROXY header and a TLS handshake read it
/// directly).
fn tcp_of(stream: Stream) -> Option<Box<TcpStream>> {
    downcast(stream, "not a TCP connection")
}

/// The guard under a kept-alive HTTP/1 connection Pingora hands back.
fn guarded_of(stream: Stream) -> Option<Box<Guarded>> {
    downcast(stream, "an HTTP/1 connection without its guard")
}

fn downcast<T: 'static>(stream: Stream, otherwise: &str) -> Option<Box<T>> {
    let found = stream.into_any().downcast::<T>().ok();
    if found.is_none() {
        log::error!("{otherwise}");
    }
    found
}

/// The connection's peer address, for logs.
fn peer_of(tcp: &TcpStream) -> String {
    tcp.get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "client".to_string())
}

/// Why a handshake did not happen.
enum Failure {
    /// The client closed or reset the connection before sending anything.
    Left(std::io::Error),
    Tls(Box<pingora::Error>),
}

/// An open client connection, in `weir_connections_active`.
struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a connection is for, read from the snapshot at accept.
struct Arrival {
    label: Option<Arc<str>>,
    limits: ClientLimits,
    proxied: bool,
    deadline: Duration,
}

impl Arrival {
    fn new(snapshot: &Snapshot, port: Option<&Port>, metrics: bool) -> Arrival {
        let label = port
            .filter(|_| metrics)
            .map(|p| Arc::from(snapshot.port_label(p.bind.port())));
        Arrival {
            label,
            limits: snapshot.defaults.limits,
            proxied: false,
            deadline: snapshot.defaults.request_header_timeout,
        }
    }

    fn refused(&self, why: Refused) {
        if let Some(label) = &self.label {
            crate::metrics::connection_refused(label, why.label());
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Accept<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = tokio::time::Instant::now();
        let _alive = Open::new();
        let port = self.port_of(&stream);
        let snapshot = self.current.load_full();
        let entry = port.and_then(|p| snapshot.entry(p.bind.port()));
        let _open = port.and_then(|p| self.open(&snapshot, p.bind.port()));
        let arrival = match entry {
            Some(Entry::Dedicated(g)) if snapshot.gateways[g].tcp => {
                let records = crate::tcp::Records {
                    metrics: self.metrics,
                    access_log: self.access_log.as_deref(),
                };
                // Boxed, as the handshake below: each is as large as it is rare, and an
                // idle connection's future should carry neither.
                Box::pin(crate::tcp::serve(snapshot, g, stream, records)).await;
                return None;
            }
            Some(Entry::Shared(l)) => Arrival {
                limits: snapshot.listeners[l].limits,
                proxied: snapshot.listeners[l].proxy_protocol,
                ..Arrival::new(&snapshot, port, self.metrics)
            },
            _ => Arrival::new(&snapshot, port, self.metrics),
        };
        drop(snapshot);
        let _listener = self.listener_place(port, &arrival).await?;
        let mut stream = stream;
        if arrival.proxied {
            stream = Box::pin(self.proxy_header(stream, arrival.deadline)).await?;
        }
        // Counted by the client the PROXY header names, if any.
        let _client = self.client_place(&stream, &arrival)?;
        if let Some(tls) = port.and_then(|p| p.tls.as_deref()) {
            // A client has `request_header` for its PROXY header, and again for its TLS
            // handshake.
            stream = Box::pin(self.handshake(tls, stream, arrival.deadline)).await?;
        }
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // Every HTTP/2 connection is weir's (its bounds hold on both legs); its
            // streams go to Pingora's proxy unless weir's own leg takes them.
            let conn = self.conn(&*stream);
            let serving = crate::http2::serve(&self.app, stream, conn, &self.current, shutdown);
            Box::pin(serving).await;
            return None;
        }
        // Pingora's session, its request future and its header buffer are made only
        // once the client sends a byte: an idle connection costs little more than its
        // socket. (TLS streams cannot peek: they go on at once.)
        let first = first_byte(&mut stream, accepted + arrival.deadline);
        if !unless_stopped(first, shutdown).await {
            return None;
        }
        Box::pin(self.serve_http1(stream, &arrival, accepted, shutdown)).await;
        None
    }

    /// Pingora's HTTP app would drop, at once, every connection waiting for a request
    /// head; a head already on its way would be lost. Connections here end between
    /// requests instead (`unless_stopped`), and `lifecycle::Finisher` ends the process.
    async fn cleanup(&self) {}
}

impl<A: HttpServerApp + Send + Sync + 'static> Accept<A> {
    /// Waits, for up to the idle timeout, for a kept-alive connection's next request to
    /// start, so that what serves it is made only then (an idle connection between
    /// requests then costs about what a new one does). None: close it.
    async fn next_request(
        &self,
        mut guarded: Box<Guarded>,
        shutdown: &ShutdownWatch,
    ) -> Option<Box<Guarded>> {
        let idle = self.current.load().defaults.idle_timeout;
        let next = async {
            matches!(
                tokio::time::timeout(idle, guarded.readable()).await,
                Ok(true)
            )
        };
        unless_stopped(next, shutdown).await.then_some(guarded)
    }

    /// What weir's own paths (`h1`, `http2`) need to know of a connection; None when
    /// they are off (`WEIR_H1_DIRECT=0`).
    fn direct<S: GetSocketDigest + Ssl + ?Sized>(&self, stream: &S) -> Option<crate::h1::Conn> {
        crate::h1::enabled().then(|| self.conn(stream))
    }

    /// What a connection is, read once when it opens.
    fn conn<S: GetSocketDigest + Ssl + ?Sized>(&self, stream: &S) -> crate::h1::Conn {
        let digest = stream.get_socket_digest();
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        let local = digest.as_ref().and_then(|d| inet(d.local_addr()));
        let peer = digest.as_ref().and_then(|d| inet(d.peer_addr()));
        let tls = stream.get_ssl_digest();
        let tls_peer = tls
            .as_ref()
            .and_then(|d| d.extension.get::<crate::tls::Peer>());
        let log = self.access_log.clone();
        // Copied for the access log only.
        let logged = |s: Option<&str>| s.filter(|_| log.is_some()).map(Box::from);
        let local_port = local.map_or(0, |a| a.port());
        crate::h1::Conn {
            limits: self.current.load().limits_for(local_port).framing,
            local_port,
            tls: tls.is_some(),
            client: peer.map(|a| a.ip()),
            client_cert: tls_peer.is_some_and(|p| p.client_cert.is_some()),
            metrics: self.metrics,
            tls_version: logged(tls.as_ref().map(|d| &*d.version)),
            sni: logged(tls_peer.and_then(|p| p.sni.as_deref())),
            log,
        }
    }

    /// Waits for a place on a listener at `max_connections`, for as long as a client
    /// has to send its request head.
    async fn listener_place(
        &self,
        port: Option<&Port>,
        arrival: &Arrival,
    ) -> Option<Option<ListenerPlace>> {
        let port = port?;
        let limit = arrival.limits.max_connections;
        match port.open.enter(limit, arrival.deadline).await {
            Ok(place) => Some(place),
            Err(why) => {
                arrival.refused(why);
                log::debug!("{}: listener full for {:?}", port.bind, arrival.deadline);
                None
            }
        }
    }

    /// Counts the connection for its client, or refuses it when the client holds its
    /// `max_connections_per_client` already.
    fn client_place(&self, stream: &Stream, arrival: &Arrival) -> Option<Option<ClientPlace>> {
        let limit = arrival.limits.per_client;
        if limit == 0 {
            return Some(None);
        }
        let digest = stream.get_socket_digest();
        let Some(ip) = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        else {
            return Some(None);
        };
        match self.clients.enter(ip, limit) {
            Ok(place) => Some(place),
            Err(why) => {
                arrival.refused(why);
                log::debug!("{ip}: over max_connections_per_client ({limit})");
                None
            }
        }
    }

    /// Serves an HTTP/1 connection request by request, through the guard: it holds each
    /// request head to the limits and to `request_header` as a deadline for the whole
    /// head (from accept for the first request). Each request goes to weir's own
    /// HTTP/1 path (`h1`) when it can take it, else to Pingora's proxy, as Pingora's
    /// `ServerApp` for HTTP apps would run it; the proxy sets the idle timeout between
    /// requests.
    async fn serve_http1(
        self: &Arc<Self>,
        stream: Stream,
        arrival: &Arrival,
        accepted: tokio::time::Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<()> {
        let mut guarded = Box::new(Guarded::new(
            stream,
            arrival.limits.framing,
            arrival.deadline,
            accepted,
            arrival.label.clone(),
        ));
        let direct = self.direct(&*guarded);
        // Whole seconds: Pingora's unit here. The guard's deadline is the exact one.
        let keepalive = Some(arrival.deadline.as_secs_f64().ceil().max(1.0) as u64 + 1);
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            if let Some(conn) = &direct {
                if !guarded.readable().await {
                    return None;
                }
                let snapshot = self.current.load_full();
                match crate::h1::serve(&snapshot, &mut guarded, conn).await {
                    crate::h1::Outcome::Next => {
                        drop(snapshot);
                        guarded = self.next_request(guarded, shutdown).await?;
                        continue;
                    }
                    crate::h1::Outcome::Close => return None,
                    crate::h1::Outcome::Pingora => {}
                }
            }
            let mut session = ServerSession::new_http1(guarded);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None if *shutdown.borrow() => session.set_keepalive(None),
                None => session.set_keepalive(keepalive),
            }
            let next = self.app.process_new_http(session, shutdown).await;
            let (stream, reuse) = next?.consume();
            settings = reuse;
            guarded = self.next_request(guarded_of(stream)?, shutdown).await?;
        }
    }
}
