//! Traffic mirroring (a route's `mirror:`): a share of the route's requests is copied,
//! headers and a body up to `max_body_bytes`, to another route of the gateway or to a
//! `[host:port]`, after the client has its response. Fire and forget: the mirror's
//! answer is read and dropped, and neither its latency nor its failures reach the
//! client. At most [`MAX_IN_FLIGHT`] copies are out at once; more are dropped and
//! counted (`weir_mirror_requests_total{result="dropped"}`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::external::External;

/// Copies out at once, over all routes.
pub const MAX_IN_FLIGHT: usize = 256;
/// The longest a copy may take, connect to last byte of the mirror's answer.
const DEADLINE: Duration = Duration::from_secs(30);
/// Bytes of a mirror's answer read before it is dropped.
const MAX_ANSWER: usize = 1 << 20;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Where copies go.
#[derive(Debug)]
pub enum MirrorTarget {
    /// A route of the same gateway, by index.
    Route(usize),
    External(Arc<External>),
}

#[derive(Debug)]
pub struct Mirror {
    pub target: MirrorTarget,
    /// Basis points of requests copied.
    share: u32,
    pub max_body: u64,
    /// Requests seen, for an exact share without randomness.
    seen: AtomicU64,
}

/// One request's copy, filled while its body streams by.
pub struct Copy {
    header: RequestHeader,
    body: Vec<u8>,
    /// The route's `max_body_bytes`.
    max: u64,
    /// The body outgrew `max_body_bytes`: the copy is not sent.
    over: bool,
}

impl Mirror {
    pub fn new(target: MirrorTarget, share: u32, max_body: u64) -> Mirror {
        Mirror {
            target,
            share,
            max_body,
            seen: AtomicU64::new(0),
        }
    }

    /// Whether this request is one of the share to copy: request n is when
    /// `n × share` crosses a multiple of 100%.
    pub fn take(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let full = u64::from(crate::config::units::FULL);
        let share = u64::from(self.share);
        (n + 1) * share / full != n * share / full
    }
}

impl Copy {
    pub fn new(header: &RequestHeader, max: u64) -> Copy {
        Copy {
            header: header.clone(),
            body: Vec::new(),
            max,
            over: false,
        }
    }

    /// The copied request head (what balancers read to pick the mirror's instance).
    pub fn header(&self) -> &RequestHeader {
        &self.header
    }

    /// Adds a piece of the request body, up to `max_body_bytes`.
    pub fn add(&mut self, chunk: &[u8]) {
        if self.over || (self.body.len() + chunk.len()) as u64 > self.max {
            self.over = true;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }
}

fn connector() -> &'static Connector {
    static C: OnceLock<Connector> = OnceLock::new();
    C.get_or_init(|| Connector::new(None))
}

/// Sends the copy to `peer` in the background (after the client's response), counted
/// for `gateway` and `route`.
pub fn send(peer: Option<HttpPeer>, gateway: &Arc<str>, route: &Arc<str>, copy: Copy) {
    let count = |result: &str| crate::metrics::mirrored(gateway, route, result);
    if copy.over {
        return count("skipped");
    }
    let Some(peer) = peer else {
        return count("failed");
    };
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        return count("dropped");
    }
    let (gname, rkey) = (gateway.clone(), route.clone());
    tokio::spawn(async move {
        let sent = tokio::time::timeout(DEADLINE, exchange(&peer, copy)).await;
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        let result = match sent {
            Ok(Ok(())) => "sent",
            Ok(Err(e)) => {
                log::debug!("mirror to {peer} failed: {e}");
                "failed"
            }
            Err(_) => "failed",
        };
        crate::metrics::mirrored(&gname, &rkey, result);
    });
}

/// One request to the mirror and its answer, read and dropped.
async fn exchange(peer: &HttpPeer, copy: Copy) -> pingora::Result<()> {
    let Copy {
        mut header, body, ..
    } = copy;
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        header.remove_header(h);
    }
    header.set_version(http::Version::HTTP_11);
    // So that the mirror (and its logs) can tell copies from live traffic.
    header.insert_header("x-weir-mirror", "1")?;
    // An HTTP/2 request names its host in the URI; HTTP/1 wants `Host` and a path.
    if let Some(authority) = header.uri.authority().map(|a| a.as_str().to_string()) {
        if !header.headers.contains_key(http::header::HOST) {
            header.insert_header(http::header::HOST, authority)?;
        }
        let pq = header.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = pq.parse::<http::Uri>() {
            header.set_uri(uri);
        }
    }
    if body.is_empty() {
        header.remove_header(&http::header::CONTENT_LENGTH);
    } else {
        header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    }
    let (mut session, _reused) = connector().get_http_session(peer).await?;
    session.write_request_header(Box::new(header)).await?;
    if !body.is_empty() {
        session.write_request_body(Bytes::from(body), true).await?;
    }
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let mut read = 0;
    while let Some(chunk) = session.read_response_body().await? {
        read += chunk.len();
        if read > MAX_ANSWER {
            session.shutdown().await;
            return Ok(());
        }
    }
    if session.response_done() {
        connector()
            .release_http_session(session, peer, peer.options.idle_timeout)
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_exact() {
        let m = Mirror::new(MirrorTarget::Route(0), 1_000, 0);
        assert_eq!((0..200).filter(|_| m.take()).count(), 20);
        let all = Mirror::new(MirrorTarget::Route(0), 10_000, 0);
        assert!((0..50).all(|_| all.take()));
        let none = Mirror::new(MirrorTarget::Route(0), 0, 0);
        assert!(!(0..50).any(|_| none.take()));
    }

    #[test]
    fn bodies_over_the_limit_are_not_copied() {
        let req = RequestHeader::build("POST", b"/", None).expect("req");
        let mut c = Copy::new(&req, 16);
        c.add(b"0123456789");
        assert!(!c.over && c.body.len() == 10);
        c.add(b"0123456789");
        assert!(c.over && c.body.is_empty());
        c.add(b"1");
        assert!(c.over);
    }
}
