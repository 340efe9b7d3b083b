//! Accepted connections, before HTTP: each is counted in `weir_connections_active`
//! while it is open and, on a TLS listener, put through weir's TLS handshake; then the
//! HTTP proxy takes it.
//!
//! weir terminates TLS here rather than in Pingora's TLS listener so that it owns the
//! rustls `ServerConfig` (SPEC §4): `min_version`, ALPN, session tickets with rotating
//! keys, a handshake deadline, and counting failed handshakes, none of which Pingora's
//! listener settings reach. Every listener is a plain TCP listener to Pingora; this
//! app sits between it and the proxy, as Pingora's docs for `http_proxy` suggest.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::{Peek, Stream};
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;

use crate::snapshot::Snapshot;
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
}

impl<A> Accept<A> {
    pub fn new(
        app: A,
        ports: Vec<Port>,
        current: Arc<ArcSwap<Snapshot>>,
        metrics: bool,
    ) -> Accept<A> {
        Accept {
            app: Arc::new(app),
            ports,
            current,
            metrics,
        }
    }

    fn port_of(&self, stream: &Stream) -> Option<&Port> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())?;
        self.ports.iter().find(|p| p.serves(local))
    }

    /// Counts the connection open until the guard drops.
    fn open(&self, port: &Port) -> Option<OpenConnection> {
        if !self.metrics {
            return None;
        }
        let label = self.current.load().port_label(port.bind.port());
        let gauge = crate::metrics::metrics()
            .connections_active
            .with_label_values(&[&label]);
        gauge.inc();
        Some(OpenConnection(gauge))
    }

    /// The TLS handshake, within the request-header timeout. A failure is counted and
    /// logged at debug level: scanners and port probes make plenty of them.
    async fn handshake(&self, tls: &TlsEndpoint, stream: Stream) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let Ok(tcp) = stream.into_any().downcast::<TcpStream>() else {
            log::error!("listener {:?}: not a TCP connection", tls.name);
            return None;
        };
        let mut tcp = *tcp;
        let acceptor = tls.acceptor();
        let deadline = self.current.load().defaults.request_header_timeout;
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
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Accept<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let port = self.port_of(&stream);
        let _open = port.and_then(|p| self.open(p));
        let mut stream = match port.and_then(|p| p.tls.as_deref()) {
            Some(tls) => self.handshake(tls, stream).await?,
            None => stream,
        };
        // The HTTP app keeps a connection until it closes; should it hand one back
        // for reuse, that is served here, past the handshake, not accepted anew.
        while let Some(reused) = self.app.process_new(stream, shutdown).await {
            stream = reused;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}
