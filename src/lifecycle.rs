//! How a serving process ends: drain, grace, retire.
//!
//! A stop (SIGTERM) has two phases, from `defaults.shutdown`. During `drain` the
//! process is draining: `/readyz` fails so that load balancers move away, listeners still
//! accept, and every response closes its connection. Then accepting stops (Pingora's
//! shutdown watch) and connections get up to `grace` to finish; the process exits as soon
//! as none is left. A worker retired by an upgrade (SIGWINCH) skips `drain`: the new
//! worker accepts on the same sockets already. SIGINT stops at once; SIGQUIT is Pingora's
//! own hand-over for `weir run -u`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::reload::Status;
use crate::sdnotify::notify;
use crate::snapshot::Snapshot;

static DRAINING: AtomicBool = AtomicBool::new(false);
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// How long a kept-alive connection that is idle when accepting stops may still start
/// one more request (answered with `Connection: close`). Closing it at once would fail
/// a request already on its way; a busy client sends within a round trip.
pub const LINGER: Duration = Duration::from_secs(1);

/// Whether this process is on its way out: responses close their connections.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

fn start_draining() {
    DRAINING.store(true, Ordering::Relaxed);
}

/// One open client connection, counted until dropped, so that a stopping process exits
/// as soon as its last connection ends.
pub struct Open(());

impl Open {
    pub fn new() -> Open {
        OPEN.fetch_add(1, Ordering::Relaxed);
        Open(())
    }
}

impl Default for Open {
    fn default() -> Self {
        Open::new()
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The signals that end a serving process, as Pingora's shutdown types.
pub struct Signals {
    pub current: Arc<ArcSwap<Snapshot>>,
    pub status: Arc<Status>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut winch)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::window_change()),
        ) else {
            log::error!("cannot handle stop signals; stopping");
            return ShutdownSignal::FastShutdown;
        };
        let drain = tokio::select! {
            _ = term.recv() => self.current.load().defaults.drain,
            _ = winch.recv() => {
                log::info!("retiring: a new worker serves; finishing what is in flight");
                self.stopping();
                return ShutdownSignal::GracefulTerminate;
            }
            _ = quit.recv() => {
                self.stopping();
                return ShutdownSignal::GracefulUpgrade;
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping now");
                notify("STOPPING=1");
                return ShutdownSignal::FastShutdown;
            }
        };
        self.stopping();
        if drain.is_zero() {
            log::info!("stopping");
        } else {
            log::info!("stopping: draining for {drain:?} (/readyz fails, listeners accept)");
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = term.recv() => log::info!("SIGTERM again: ending the drain now"),
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}

impl Signals {
    fn stopping(&self) {
        start_draining();
        self.status.ready.store(false, Ordering::Relaxed);
        notify("STOPPING=1");
    }
}

/// Once accepting has stopped, ends the process when its last connection closes, or
/// when `grace` is over, whichever comes first. (Pingora would wait out its whole grace
/// period even with nothing left to do.)
pub struct Finisher {
    pub current: Arc<ArcSwap<Snapshot>>,
}

/// How often a stopping process looks at its open connections.
const POLL: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for Finisher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        start_draining();
        let grace = self.current.load().defaults.grace;
        let end = tokio::time::Instant::now() + grace;
        log::info!("accepting stopped; up to {grace:?} for what is in flight");
        loop {
            let open = OPEN.load(Ordering::Relaxed);
            if open == 0 {
                log::info!("stopped: no connection left");
                break;
            }
            if tokio::time::Instant::now() >= end {
                log::warn!("stopped: grace over with {open} connection(s) still open");
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        // The access log writer flushes every 20 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::process::exit(0);
    }
}
