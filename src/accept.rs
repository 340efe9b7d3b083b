//! Accepted connections, before HTTP: each is counted in `weir_connections_active`
//! while it is open; on a `proxy_protocol` listener its PROXY header is read and the
//! client it names becomes the peer; on a TLS listener it is put through weir's TLS
//! handshake; then the HTTP proxy takes it, HTTP/1 connections with `request_header`
//! for their first request. A TCP gateway's port goes to `tcp` instead.
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
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::ALPN;
use pingora::protocols::{GetSocketDigest, Peek, SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;

use crate::accesslog::AccessLog;
use crate::proxy_protocol;
use crate::snapshot::{Entry, Snapshot};
use crate::tls::{RecordSni, TlsEndpoint};

/// One address weir listens on.
pub struct Port {
    pub bind: SocketAddr,
    /// Set on TLS listeners.
    pub tls: Option<Arc<TlsEndpoint>>,
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
    async fn proxy_header(&self, tcp: &mut TcpStream, deadline: Duration) -> Option<()> {
        let read = tokio::time::timeout(deadline, proxy_protocol::read(tcp)).await;
        let client = match read {
            Ok(Ok(client)) => client,
            Ok(Err(why)) => {
                log::debug!("{}: {why}", peer_of(tcp));
                return None;
            }
            Err(_) => {
                log::debug!("{}: no PROXY header within {deadline:?}", peer_of(tcp));
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
        Some(())
    }

    /// The TLS handshake, within the request-header timeout. A failure is counted and
    /// logged at debug level: scanners and port probes make plenty of them.
    async fn handshake(
        &self,
        tls: &TlsEndpoint,
        mut tcp: TcpStream,
        deadline: Duration,
    ) -> Option<Stream> {
        let peer = tcp.get_socket_digest().and_then(|d| d.peer_addr().cloned());
        let acceptor = tls.acceptor();
        let attempt = async {
            // A client that closes before sending a byte is a port probe (load
            // balancers' TCP checks), not a failed handshake.
            tcp.try_peek(&mut [0u8; 1]).await.map_err(Failure::Left)?;
            handshake_with_callback(&acceptor, tcp, &RecordSni)
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

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Accept<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let port = self.port_of(&stream);
        let snapshot = self.current.load_full();
        let entry = port.and_then(|p| snapshot.entry(p.bind.port()));
        let _open = port.and_then(|p| self.open(&snapshot, p.bind.port()));
        let proxied = match entry {
            Some(Entry::Dedicated(g)) if snapshot.gateways[g].tcp => {
                let records = crate::tcp::Records {
                    metrics: self.metrics,
                    access_log: self.access_log.as_deref(),
                };
                crate::tcp::serve(snapshot, g, stream, records).await;
                return None;
            }
            Some(Entry::Shared(l)) => snapshot.listeners[l].proxy_protocol,
            _ => false,
        };
        // A client has `request_header` for its PROXY header, and again for its TLS
        // handshake.
        let deadline = snapshot.defaults.request_header_timeout;
        drop(snapshot);
        let tls = port.and_then(|p| p.tls.as_deref());
        let mut stream = if tls.is_some() || proxied {
            let Ok(tcp) = stream.into_any().downcast::<TcpStream>() else {
                log::error!("not a TCP connection");
                return None;
            };
            let mut tcp = *tcp;
            if proxied {
                self.proxy_header(&mut tcp, deadline).await?;
            }
            match tls {
                Some(tls) => self.handshake(tls, tcp, deadline).await?,
                None => Box::new(tcp),
            }
        } else {
            stream
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2: Pingora's own connection handling, stream by stream.
            while let Some(reused) = self.app.process_new(stream, shutdown).await {
                stream = reused;
            }
            return None;
        }
        self.serve_http1(stream, deadline, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Accept<A> {
    /// Serves an HTTP/1 connection request by request, as Pingora's `ServerApp` for
    /// HTTP apps does, except that the first request's headers must come within
    /// `request_header` (Pingora waits 60 s); from the second request on, the proxy
    /// sets the idle and header timeouts itself.
    async fn serve_http1(
        self: &Arc<Self>,
        stream: Stream,
        first: Duration,
        shutdown: &ShutdownWatch,
    ) {
        let mut session = ServerSession::new_http1(stream);
        let keepalive = if *shutdown.borrow() {
            None
        } else {
            // Whole seconds: Pingora's unit here.
            Some(first.as_secs_f64().ceil().max(1.0) as u64)
        };
        session.set_keepalive(keepalive);
        let mut next = self.app.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = next.map(ReusedHttpStream::consume) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            next = self.app.process_new_http(session, shutdown).await;
        }
    }
}
