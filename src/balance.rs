//! Balancing inside a route: which instance of a pool takes a request.
//! `round_robin` (smooth, honouring instance weights), `random` (weighted),
//! `least_conn` (fewest requests in flight per unit of weight), `source_ip` and
//! `hash(header|cookie|path)` (consistent hashing on a Ketama ring: removing an
//! instance moves only its own keys). Every algorithm skips instances that are down
//! or already failed for this request; hashing walks the ring to the next one.

use std::net::IpAddr;

use http::HeaderName;
use pingora_ketama::{Bucket, Continuum};

use crate::config::Balance;
use crate::request::Request;
use crate::schedule::Schedule;
use crate::upstream::{Tried, Upstream};

/// How far a hash lookup walks the ring looking for a usable instance.
const RING_WALK: usize = 4096;

/// What a hash key is taken from.
#[derive(Debug, Clone)]
pub enum HashKey {
    SourceIp,
    Header(HeaderName),
    Cookie(String),
    Path,
}

pub enum Picker {
    RoundRobin,
    Random { cumulative: Vec<u32> },
    LeastConn,
    Hash { key: HashKey, ring: Continuum },
}

impl std::fmt::Debug for Picker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Picker::RoundRobin => "round_robin",
            Picker::Random { .. } => "random",
            Picker::LeastConn => "least_conn",
            Picker::Hash { .. } => "hash",
        })
    }
}

impl Picker {
    /// Compiles an algorithm for instances (with their weights).
    pub fn new(balance: &Balance, instances: &[Upstream]) -> Picker {
        let ring = || {
            let buckets: Vec<Bucket> = instances
                .iter()
                .filter(|u| u.weight > 0)
                .filter_map(|u| u.peer._address.as_inet().map(|a| Bucket::new(*a, u.weight)))
                .collect();
            Continuum::new(&buckets)
        };
        match balance {
            Balance::RoundRobin => Picker::RoundRobin,
            Balance::Random => Picker::Random {
                cumulative: instances
                    .iter()
                    .scan(0u32, |sum, u| {
                        *sum += u.weight;
                        Some(*sum)
                    })
                    .collect(),
            },
            Balance::LeastConn => Picker::LeastConn,
            Balance::SourceIp => Picker::Hash {
                key: HashKey::SourceIp,
                ring: ring(),
            },
            Balance::HashPath => Picker::Hash {
                key: HashKey::Path,
                ring: ring(),
            },
            Balance::HashHeader(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Picker::Hash {
                    key: HashKey::Header(name),
                    ring: ring(),
                },
                Err(_) => Picker::RoundRobin,
            },
            Balance::HashCookie(c) => Picker::Hash {
                key: HashKey::Cookie(c.clone()),
                ring: ring(),
            },
        }
    }

    /// The next usable instance: available and not in `tried` (bit i = instance i).
    pub fn pick<'p>(
        &self,
        instances: &'p [Upstream],
        schedule: &Schedule,
        tried: Tried,
        input: &Request,
    ) -> Option<&'p Upstream> {
        let usable = |i: usize| !tried.contains(i) && instances[i].health.available();
        let chosen = match self {
            Picker::RoundRobin => None,
            Picker::Random { cumulative } => random(cumulative, &usable),
            Picker::LeastConn => least_conn(instances, schedule, &usable),
            Picker::Hash { key, ring } => hashed(key, ring, instances, input, &usable),
        };
        if let Some(i) = chosen {
            return Some(&instances[i]);
        }
        // Round-robin, and the fallback of the others (no key, every candidate unusable).
        schedule.pick_usable(usable).map(|i| &instances[i])
    }
}

fn random(cumulative: &[u32], usable: &impl Fn(usize) -> bool) -> Option<usize> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    for _ in 0..cumulative.len() * 2 {
        let r = fastrand::u32(0..total);
        let i = cumulative.partition_point(|c| *c <= r);
        if usable(i) {
            return Some(i);
        }
    }
    None
}

fn least_conn(
    instances: &[Upstream],
    schedule: &Schedule,
    usable: &impl Fn(usize) -> bool,
) -> Option<usize> {
    // Start the scan at a rotating point, so that ties spread instead of piling on one.
    let start = schedule.pick().unwrap_or(0);
    let n = instances.len();
    let mut best: Option<(usize, u64, u64)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        let w = instances[i].weight as u64;
        if w == 0 || !usable(i) {
            continue;
        }
        let load = instances[i]
            .health
            .inflight
            .load(std::sync::atomic::Ordering::Relaxed) as u64;
        // load/w < best_load/best_w, without division.
        if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
            best = Some((i, load, w));
        }
    }
    best.map(|(i, _, _)| i)
}

fn hash_key<'a>(key: &HashKey, input: &'a Request, buf: &'a mut [u8; 16]) -> Option<&'a [u8]> {
    match key {
        HashKey::SourceIp => match input.client? {
            IpAddr::V4(v4) => {
                buf[..4].copy_from_slice(&v4.octets());
                Some(&buf[..4])
            }
            IpAddr::V6(v6) => {
                *buf = v6.octets();
                Some(&buf[..])
            }
        },
        HashKey::Path => Some(input.path.as_bytes()),
        HashKey::Header(name) => input.headers.get(name).map(|v| v.as_bytes()),
        HashKey::Cookie(name) => input.cookie(name).map(str::as_bytes),
    }
}

fn hashed(
    key: &HashKey,
    ring: &Continuum,
    instances: &[Upstream],
    input: &Request,
    usable: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut buf = [0u8; 16];
    let key = hash_key(key, input, &mut buf)?;
    ring.node_iter(key).take(RING_WALK).find_map(|addr| {
        instances
            .iter()
            .position(|u| u.peer._address.as_inet() == Some(addr))
            .filter(|i| usable(*i))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use http::HeaderMap;
    use pingora::upstreams::peer::HttpPeer;

    use super::*;
    use crate::health::InstanceHealth;

    fn pool(weights: &[u32]) -> (Vec<Upstream>, Schedule) {
        let instances = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Upstream {
                name: format!("127.0.0.1:{}", 1000 + i).into(),
                index: i,
                weight: *w,
                peer: HttpPeer::new(format!("127.0.0.1:{}", 1000 + i), false, String::new()),
                health: Arc::new(InstanceHealth::default()),
                resolved: true,
                sticky_id: 0,
                set_cookie: None,
            })
            .collect();
        (instances, Schedule::new(weights))
    }

    fn counts(
        picker: &Picker,
        instances: &[Upstream],
        s: &Schedule,
        req: &Request,
        n: usize,
    ) -> Vec<usize> {
        let mut c = vec![0; instances.len()];
        for _ in 0..n {
            let u = picker.pick(instances, s, Tried::default(), req).unwrap();
            c[u.index] += 1;
        }
        c
    }

    #[test]
    fn round_robin_honours_weights_and_skips_tried_and_down() {
        let (instances, s) = pool(&[1, 2, 1]);
        let picker = Picker::new(&Balance::RoundRobin, &instances);
        let req = Request::l4(None);
        assert_eq!(
            counts(&picker, &instances, &s, &req, 400),
            vec![100, 200, 100]
        );
        let mut tried = Tried::default();
        tried.add(1);
        for _ in 0..10 {
            assert_ne!(picker.pick(&instances, &s, tried, &req).unwrap().index, 1);
        }
        instances[0].health.mark_down_passive(true);
        instances[2].health.mark_down_passive(true);
        assert_eq!(counts(&picker, &instances, &s, &req, 10), vec![0, 10, 0]);
        assert!(picker.pick(&instances, &s, tried, &req).is_none());
    }

    #[test]
    fn least_conn_takes_the_least_loaded_per_weight() {
        let (instances, s) = pool(&[1, 1, 2]);
        let picker = Picker::new(&Balance::LeastConn, &instances);
        let req = Request::l4(None);
        instances[0].health.inflight.store(3, Ordering::Relaxed);
        instances[1].health.inflight.store(1, Ordering::Relaxed);
        instances[2].health.inflight.store(4, Ordering::Relaxed);
        // 1/1 beats 3/1 and 4/2.
        assert_eq!(
            picker
                .pick(&instances, &s, Tried::default(), &req)
                .unwrap()
                .index,
            1
        );
    }

    #[test]
    fn hashing_is_stable_and_removal_moves_only_its_keys() {
        let (instances, s) = pool(&[1, 1, 1, 1]);
        let picker = Picker::new(&Balance::HashCookie("sid".into()), &instances);
        let pick = |sid: usize, instances: &[Upstream], picker: &Picker, s: &Schedule| {
            let mut headers = HeaderMap::new();
            headers.insert("cookie", format!("sid=\"user{sid}\"").parse().unwrap());
            let req = Request::new(b"h", "/", "GET", &headers, None);
            picker
                .pick(instances, s, Tried::default(), &req)
                .unwrap()
                .name
                .clone()
        };
        let before: Vec<_> = (0..200).map(|i| pick(i, &instances, &picker, &s)).collect();
        let again: Vec<_> = (0..200).map(|i| pick(i, &instances, &picker, &s)).collect();
        assert_eq!(before, again, "the same key goes to the same instance");
        let (fewer, s3) = pool(&[1, 1, 1]);
        let picker3 = Picker::new(&Balance::HashCookie("sid".into()), &fewer);
        let gone = &instances[3].name;
        for (i, was) in before.iter().enumerate() {
            if was != gone {
                assert_eq!(&pick(i, &fewer, &picker3, &s3), was, "key {i} moved");
            }
        }
    }

    #[test]
    fn random_never_picks_weight_zero() {
        let (instances, s) = pool(&[0, 3, 1]);
        let picker = Picker::new(&Balance::Random, &instances);
        let c = counts(&picker, &instances, &s, &Request::l4(None), 2000);
        assert_eq!(c[0], 0);
        assert!(c[1] > c[2] * 2, "{c:?}");
    }
}
