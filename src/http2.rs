//! HTTP/2 connections, accepted by weir rather than by Pingora's HTTP app: the
//! handshake with Pingora's bounded settings, then each stream as it opens. A stream
//! `h1::stream` takes (a plain gateway, no request body) is served inside the
//! connection's own task, beside the connection's I/O: no task, proxy session or
//! cross-thread wake-up per stream, which is most of what an HTTP/2 request costs in
//! Pingora. Every other stream goes to Pingora's proxy in a task of its own, exactly
//! as Pingora's HTTP/2 server runs it.
//!
//! The connection keeps Pingora's bounds: its header-list and concurrent-stream
//! limits (the handshake's), a budget of malformed streams, the idle timeout while no
//! stream is open, and a GOAWAY when the process stops, after which the streams in
//! flight finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::framing::pace::{BodyPace, Progress};
use crate::h1::Conn;
use crate::snapshot::Snapshot;

/// Malformed streams (refused at acceptance) a connection may send before it is
/// closed; Pingora's own accept loop allows as many.
const MAX_MALFORMED: usize = 32;

/// Serves an HTTP/2 connection (its ALPN said `h2`) until it closes.
pub async fn serve<A>(
    app: &Arc<A>,
    stream: Stream,
    conn: Conn,
    current: &ArcSwap<Snapshot>,
    shutdown: &ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut h2 = match handshake(stream, app.h2_options()).await {
        Ok(h2) => h2,
        Err(e) => {
            log::debug!("HTTP/2 handshake: {e}");
            return;
        }
    };
    let idle = app.server_options().and_then(|o| o.h2_idle_timeout);
    let elsewhere = {
        let snapshot = current.load();
        Arc::new(Elsewhere {
            open: AtomicUsize::new(0),
            done: Notify::new(),
            pace: conn.limits.body,
            label: conn
                .metrics
                .then(|| Arc::from(snapshot.port_label(conn.local_port))),
        })
    };
    let mut streams = FuturesUnordered::new();
    let mut stopping = shutdown.clone();
    let mut watching = true;
    let mut closing = false;
    let mut malformed = 0;
    let quiet_for = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(quiet_for);
    let mut quiet = false;
    loop {
        let now_quiet = streams.is_empty() && elsewhere.open() == 0;
        if now_quiet && !quiet {
            if let Some(idle) = idle {
                quiet_for.as_mut().reset(tokio::time::Instant::now() + idle);
            }
        }
        quiet = now_quiet;
        if *stopping.borrow() && !closing {
            h2.graceful_shutdown();
            closing = true;
        }
        let accepted = tokio::select! {
            biased;
            changed = stopping.changed(), if watching && !closing => {
                watching = changed.is_ok();
                continue;
            }
            Some(back) = streams.next(), if !streams.is_empty() => {
                if let Some(session) = back {
                    elsewhere.hand_over(app, session, shutdown);
                }
                continue;
            }
            accepted = HttpSession::from_h2_conn(&mut h2, digest.clone()) => accepted,
            _ = elsewhere.done.notified(), if !quiet && streams.is_empty() => continue,
            // Idle with nothing in flight: close now (no GOAWAY a dead peer could stall).
            _ = &mut quiet_for, if quiet && idle.is_some() => return,
        };
        match accepted {
            Ok(Some(H2Accept::Session(session))) => {
                streams.push(serve_stream(session, current.load_full(), &conn));
            }
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed > MAX_MALFORMED {
                    log::debug!("HTTP/2: over {MAX_MALFORMED} malformed streams, closing");
                    elsewhere.count_error("malformed");
                    return;
                }
            }
            // Closed, cleanly or not (clients often just drop the connection).
            Ok(None) => break,
            Err(e) => {
                log::debug!("HTTP/2: {e}");
                if is_client_fault(&e) {
                    elsewhere.count_error("protocol");
                }
                break;
            }
        }
    }
    // Streams still open learn that the connection is gone (their client aborts are
    // counted) and give their upstream connections back.
    while streams.next().await.is_some() {}
}

/// Serves one stream if `h1::stream` takes it; otherwise gives it back, for Pingora.
async fn serve_stream(
    mut session: HttpSession,
    snapshot: Arc<Snapshot>,
    conn: &Conn,
) -> Option<HttpSession> {
    let Some(prepared) = crate::h1::stream::prepare(&session, &snapshot, conn) else {
        return Some(session);
    };
    // Its instances could not be reached: Pingora's proxy routes it again.
    let served = crate::h1::stream::run(&mut session, &snapshot, prepared, conn).await;
    (!served).then_some(session)
}

/// The connection's streams served by Pingora's proxy, each in its own task: counted,
/// so that the connection is idle only when none is open.
struct Elsewhere {
    open: AtomicUsize,
    done: Notify,
    /// The pace their request bodies must keep, and the listener they are counted on.
    pace: BodyPace,
    label: Option<Arc<str>>,
}

impl Elsewhere {
    fn count_error(&self, reason: &str) {
        if let Some(label) = &self.label {
            crate::metrics::http2_error(label, reason);
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Runs the stream through Pingora's proxy, as Pingora's HTTP/2 server does.
    fn hand_over<A>(
        self: &Arc<Self>,
        app: &Arc<A>,
        mut session: HttpSession,
        shutdown: &ShutdownWatch,
    ) where
        A: HttpServerApp + Send + Sync + 'static,
    {
        self.open.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(self.clone());
        let app = app.clone();
        let shutdown = shutdown.clone();
        // A body is read by Pingora's proxy, which reports each piece here; a stream
        // without one has no pace to keep (and costs no watch).
        let progress = (!session.is_body_empty()).then(|| {
            let progress = Arc::new(Progress::new(std::time::Instant::now()));
            session
                .req_header_mut()
                .extensions_mut()
                .insert(progress.clone());
            progress
        });
        let (pace, label) = (self.pace, self.label.clone());
        tokio::spawn(async move {
            let _counted = counted;
            let served = app.process_new_http(ServerSession::new_http2(session), &shutdown);
            let Some(progress) = progress else {
                served.await;
                return;
            };
            tokio::select! {
                _ = served => {}
                () = overdue(&progress, pace) => {
                    // Dropping the stream resets it (RST_STREAM) and ends its upstream
                    // request: a stalled or trickling body holds nothing longer.
                    log::debug!("HTTP/2: request body not received in time");
                    if let Some(label) = &label {
                        crate::metrics::request_refused(label, 408);
                    }
                }
            }
        });
    }
}

/// Whether the connection ended on an HTTP/2 error the server raised against what
/// the client sent (h2 answers such floods and protocol errors with GOAWAY), rather than
/// a client that just went away.
fn is_client_fault(e: &pingora::Error) -> bool {
    let h2 = e
        .root_cause()
        .downcast_ref::<h2::Error>()
        .filter(|h2| h2.is_go_away() && !h2.is_remote());
    h2.is_some_and(|h2| h2.reason() != Some(h2::Reason::NO_ERROR))
}

/// Resolves once a body is past its pace's deadline; never once it is all read.
async fn overdue(progress: &Progress, pace: BodyPace) {
    loop {
        let Some(pacing) = progress.pacing() else {
            return std::future::pending().await;
        };
        let deadline = pacing.deadline(pace);
        if std::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// One open stream of `Elsewhere`, until it drops.
struct Counted(Arc<Elsewhere>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_one();
        }
    }
}
