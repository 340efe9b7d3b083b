//! The access log: one JSON object per line, to stdout or a file, written off
//! the request path. Requests hand their line to a bounded channel; a writer thread
//! drains it in batches every 20 ms, one write a batch. When the channel is full the line is dropped and counted, never
//! waited for. `SIGUSR1` reopens the file (for logrotate).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

/// Lines that may wait for the writer.
const QUEUE: usize = 65_536;

/// One access log line.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub ts: String,
    pub client: Option<String>,
    pub method: &'a str,
    pub host: &'a str,
    /// The path (and query) as the client sent it, before any rewrite.
    pub path: &'a str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration_ms: f64,
    pub gateway: Option<&'a str>,
    pub route: Option<&'a str>,
    pub instance: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub request_id: Option<&'a str>,
    pub tls_version: Option<&'a str>,
    pub sni: Option<&'a str>,
}

impl<'a> Entry<'a> {
    /// A line for one HTTP request, from its header as the client sent it (the path
    /// before any rewrite); the routing fields start empty.
    pub fn http(
        req: &'a RequestHeader,
        host: &'a [u8],
        client: Option<IpAddr>,
        status: u16,
        bytes_sent: usize,
        elapsed: Duration,
    ) -> Entry<'a> {
        Entry {
            method: req.method.as_str(),
            host: std::str::from_utf8(host).unwrap_or(""),
            path: req
                .uri
                .path_and_query()
                .map_or(req.uri.path(), |pq| pq.as_str()),
            ..Entry::new(client, status, bytes_sent, elapsed)
        }
    }

    /// A line for one TCP connection (`"method": "TCP"`, no host or path).
    pub fn tcp(
        client: Option<IpAddr>,
        status: u16,
        bytes_sent: usize,
        elapsed: Duration,
    ) -> Entry<'a> {
        Entry {
            method: "TCP",
            ..Entry::new(client, status, bytes_sent, elapsed)
        }
    }

    pub fn new(
        client: Option<IpAddr>,
        status: u16,
        bytes_sent: usize,
        elapsed: Duration,
    ) -> Entry<'a> {
        Entry {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            client: client.map(|ip| ip.to_string()),
            method: "",
            host: "",
            path: "",
            status,
            bytes_sent,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            gateway: None,
            route: None,
            instance: None,
            upstream_status: None,
            request_id: None,
            tls_version: None,
            sni: None,
        }
    }
}

pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: AtomicU64,
    /// Taken by the writer service when it starts (after `-d` has forked).
    rx: Mutex<Option<Receiver<String>>>,
    target: String,
}

impl AccessLog {
    /// An access log to `target`: `stdout` or a file path (opened for append at once,
    /// so that a bad path fails at start).
    pub fn new(target: &str) -> io::Result<Arc<AccessLog>> {
        if target != "stdout" {
            open(target)?;
        }
        let (tx, rx) = sync_channel(QUEUE);
        Ok(Arc::new(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            rx: Mutex::new(Some(rx)),
            target: target.to_string(),
        }))
    }

    /// Queues one line; drops it (and counts) rather than wait.
    pub fn log(&self, entry: &Entry) {
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        if self.tx.try_send(line).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!("access log queue full: dropping lines rather than slowing requests");
        }
    }
}

fn open(path: &str) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn sink(target: &str) -> io::Result<Box<dyn Write + Send>> {
    Ok(if target == "stdout" {
        Box::new(BufWriter::new(io::stdout()))
    } else {
        Box::new(BufWriter::new(open(target)?))
    })
}

/// How long the writer sleeps between batches. Polling, not blocking on the channel:
/// a blocked receiver would make every request's send wake a thread (a futex call and a
/// context switch per line); a sleeping one is never woken.
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

fn write_loop(target: String, rx: Receiver<String>, reopen: Arc<AtomicBool>) {
    let mut out = match sink(&target) {
        Ok(o) => o,
        Err(e) => return log::error!("access log {target}: {e}"),
    };
    loop {
        std::thread::sleep(BATCH_INTERVAL);
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match sink(&target) {
                Ok(o) => out = o,
                Err(e) => {
                    log::error!("access log {target}: reopen failed, keeping the old file: {e}")
                }
            }
        }
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}

/// Starts the writer thread inside Pingora's runtime (after daemonizing).
pub struct Writer {
    pub log: Arc<AccessLog>,
}

#[async_trait]
impl BackgroundService for Writer {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(rx) = self.log.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let reopen = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, reopen.clone()) {
            log::warn!("access log: cannot handle SIGUSR1: {e}");
        }
        let target = self.log.target.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_loop(target, rx, reopen))
        {
            log::error!("access log: cannot start the writer: {e}");
        }
    }
}
