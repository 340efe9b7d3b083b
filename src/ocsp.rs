//! OCSP stapling: for each certificate of a listener with `ocsp_stapling: true` that
//! names an OCSP responder (its Authority Information Access) and comes with its
//! issuer, weir asks the responder for the certificate's status, checks the answer
//! and hands it to clients in the handshake.
//!
//! - [`Source`] is what a certificate needs for that (responder URL, the request, the
//!   issuer), made when a snapshot is built.
//! - [`Stapler`] is live state, owned by the reloader: one background thread keeps
//!   each certificate's [`Staple`] fresh. A certificate that stays the same across
//!   reloads (same DER) keeps its staple and schedule.
//! - An answer is stapled only if it is a successful basic response for this
//!   certificate, says `good`, is current (`thisUpdate` ≤ now < `nextUpdate`), and is
//!   signed by the issuer or by a responder certificate the issuer signed for OCSP.
//!   It is refreshed halfway to its `nextUpdate`; a failed fetch is retried with
//!   back-off (2 s doubling to 1 h) while the old answer serves until it expires.
//! - Handshakes never wait for a responder: they staple what is there, or nothing.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest,
};

/// The largest OCSP answer read (real ones are a few KiB).
const MAX_RESPONSE_BYTES: u64 = 64 << 10;
/// A fetch gives up after this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off after failures: 2 s, doubling, at most an hour.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// An answer without `nextUpdate` is asked again after an hour and kept a day at most.
const NO_NEXT_UPDATE_REFRESH: Duration = Duration::from_secs(3600);
const NO_NEXT_UPDATE_LIFE: Duration = Duration::from_secs(86_400);
/// Clock skew tolerated on `thisUpdate`.
const SKEW: Duration = Duration::from_secs(300);

const ID_PKIX_OCSP: &str = "1.3.6.1.5.5.7.48.1";
const ID_PKIX_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const ID_KP_OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");

/// What asking about one certificate takes.
#[derive(Debug)]
pub struct Source {
    /// The responder (`http://` only: OCSP is served over plain HTTP).
    pub url: String,
    request: Vec<u8>,
    cert_id: CertId,
    issuer_key: SubjectPublicKeyInfoOwned,
    issuer_name: Vec<u8>,
    /// The leaf's DER: a certificate that stays the same keeps its staple.
    leaf: Vec<u8>,
}

fn sha1(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

impl Source {
    /// The OCSP source of a certificate chain (leaf first, then its issuer), or why it
    /// has none.
    pub fn of(chain: &[CertificateDer<'_>]) -> Result<Source, String> {
        let (Some(leaf_der), Some(issuer_der)) = (chain.first(), chain.get(1)) else {
            return Err("its file holds no issuer certificate after it".into());
        };
        let url = responder_url(leaf_der)?;
        let leaf = Certificate::from_der(leaf_der).map_err(|e| format!("not X.509: {e}"))?;
        let issuer =
            Certificate::from_der(issuer_der).map_err(|e| format!("issuer not X.509: {e}"))?;
        let issuer_name = issuer
            .tbs_certificate
            .subject
            .to_der()
            .map_err(|e| e.to_string())?;
        let issuer_key = issuer.tbs_certificate.subject_public_key_info.clone();
        let octets = |v: Vec<u8>| OctetString::new(v).map_err(|e| e.to_string());
        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: ID_SHA1,
                parameters: Some(der::asn1::Null.into()),
            },
            issuer_name_hash: octets(sha1(&issuer_name))?,
            issuer_key_hash: octets(sha1(issuer_key.subject_public_key.raw_bytes()))?,
            serial_number: leaf.tbs_certificate.serial_number.clone(),
        };
        let request = OcspRequest {
            tbs_request: TbsRequest {
                version: Default::default(),
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                request_extensions: None,
            },
            optional_signature: None,
        }
        .to_der()
        .map_err(|e| e.to_string())?;
        Ok(Source {
            url,
            request,
            cert_id,
            issuer_key,
            issuer_name,
            leaf: leaf_der.to_vec(),
        })
    }
}

/// The certificate's OCSP responder, from its Authority Information Access.
fn responder_url(der: &[u8]) -> Result<String, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not X.509: {e}"))?;
    for ext in cert.extensions() {
        let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() else {
            continue;
        };
        for desc in &aia.accessdescs {
            if desc.access_method.to_id_string() != ID_PKIX_OCSP {
                continue;
            }
            if let GeneralName::URI(uri) = desc.access_location {
                if uri.starts_with("http://") {
                    return Ok(uri.to_string());
                }
                return Err(format!("OCSP responder {uri:?} is not http://"));
            }
        }
    }
    Err("it names no OCSP responder".into())
}

/// A checked answer: its bytes and how long it holds.
#[derive(Debug)]
pub struct Checked {
    pub this_update: SystemTime,
    pub next_update: Option<SystemTime>,
}

/// Checks an OCSP answer for `source`'s certificate at time `now`.
pub fn check(answer: &[u8], source: &Source, now: SystemTime) -> Result<Checked, String> {
    let response = OcspResponse::from_der(answer).map_err(|e| format!("not OCSP: {e}"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(format!("responder says {:?}", response.response_status));
    }
    let bytes = response
        .response_bytes
        .ok_or("a successful answer without a response")?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(format!(
            "response type {} is not basic",
            bytes.response_type
        ));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("not a basic OCSP response: {e}"))?;
    verify_signer(&basic, source)?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| same_cert(&r.cert_id, &source.cert_id))
        .ok_or("no answer for this certificate")?;
    match single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(_) => return Err("the certificate is revoked".into()),
        CertStatus::Unknown(_) => return Err("the responder does not know it".into()),
    }
    let time = |t: &x509_ocsp::OcspGeneralizedTime| SystemTime::UNIX_EPOCH + t.0.to_unix_duration();
    let this_update = time(&single.this_update);
    let next_update = single.next_update.as_ref().map(time);
    if this_update > now + SKEW {
        return Err("thisUpdate is in the future".into());
    }
    if next_update.is_some_and(|n| n <= now) {
        return Err("the answer is out of date (nextUpdate has passed)".into());
    }
    Ok(Checked {
        this_update,
        next_update,
    })
}

/// The same certificate: serial and issuer hashes (the hash the responder chose).
fn same_cert(a: &CertId, ours: &CertId) -> bool {
    a.serial_number == ours.serial_number
        && a.hash_algorithm.oid == ours.hash_algorithm.oid
        && a.issuer_name_hash == ours.issuer_name_hash
        && a.issuer_key_hash == ours.issuer_key_hash
}

/// The answer must be signed by the issuer, or by a certificate the issuer signed with
/// the OCSP-signing purpose that came with the answer.
fn verify_signer(basic: &BasicOcspResponse, source: &Source) -> Result<(), String> {
    let signed = basic
        .tbs_response_data
        .to_der()
        .map_err(|e| e.to_string())?;
    let signature = basic.signature.raw_bytes();
    let alg = &basic.signature_algorithm.oid;
    if verify(&source.issuer_key, alg, &signed, signature).is_ok() {
        return Ok(());
    }
    for cert in basic.certs.iter().flatten() {
        let tbs = &cert.tbs_certificate;
        let issued_by_ours = tbs.issuer.to_der().is_ok_and(|n| n == source.issuer_name);
        let tbs_der = tbs.to_der().map_err(|e| e.to_string())?;
        if issued_by_ours
            && verify(
                &source.issuer_key,
                &cert.signature_algorithm.oid,
                &tbs_der,
                cert.signature.raw_bytes(),
            )
            .is_ok()
            && ocsp_signing(cert)
            && verify(&tbs.subject_public_key_info, alg, &signed, signature).is_ok()
        {
            return Ok(());
        }
    }
    Err("not signed by the issuer or a responder it authorised".into())
}

fn ocsp_signing(cert: &Certificate) -> bool {
    let Some(exts) = &cert.tbs_certificate.extensions else {
        return false;
    };
    exts.iter()
        .filter(|e| e.extn_id == ID_CE_EXT_KEY_USAGE)
        .filter_map(|e| {
            x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok()
        })
        .any(|eku| eku.0.contains(&ID_KP_OCSP_SIGNING))
}

/// Verifies `signature` over `data` by `key` with the algorithm `alg` names.
fn verify(
    key: &SubjectPublicKeyInfoOwned,
    alg: &ObjectIdentifier,
    data: &[u8],
    signature: &[u8],
) -> Result<(), ()> {
    use ring::signature as s;
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    let p384 = curve.as_deref() == Some("1.3.132.0.34");
    let algorithm: &dyn s::VerificationAlgorithm = match alg.to_string().as_str() {
        "1.2.840.113549.1.1.5" => &s::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        "1.2.840.113549.1.1.11" => &s::RSA_PKCS1_2048_8192_SHA256,
        "1.2.840.113549.1.1.12" => &s::RSA_PKCS1_2048_8192_SHA384,
        "1.2.840.113549.1.1.13" => &s::RSA_PKCS1_2048_8192_SHA512,
        "1.2.840.10045.4.3.2" if p384 => &s::ECDSA_P384_SHA256_ASN1,
        "1.2.840.10045.4.3.2" => &s::ECDSA_P256_SHA256_ASN1,
        "1.2.840.10045.4.3.3" if p384 => &s::ECDSA_P384_SHA384_ASN1,
        "1.2.840.10045.4.3.3" => &s::ECDSA_P256_SHA384_ASN1,
        "1.3.101.112" => &s::ED25519,
        _ => return Err(()),
    };
    let key_bytes = key.subject_public_key.raw_bytes();
    s::UnparsedPublicKey::new(algorithm, key_bytes)
        .verify(data, signature)
        .map_err(|_| ())
}

/// When to ask again after a good answer: halfway to its `nextUpdate` (at least
/// 10 s from now), or in an hour without one.
pub fn refresh_in(c: &Checked, now: SystemTime) -> Duration {
    match c.next_update {
        Some(next) => {
            let left = next.duration_since(now).unwrap_or_default();
            (left / 2).max(Duration::from_secs(10))
        }
        None => NO_NEXT_UPDATE_REFRESH,
    }
}

/// Back-off after `failures` failed fetches in a row.
pub fn retry_in(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(MAX_RETRY)
}

/// One certificate's staple: the certified key with the current answer, if any.
pub struct Staple {
    base: Arc<CertifiedKey>,
    current: ArcSwapOption<CertifiedKey>,
    source: Arc<Source>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Staple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staple")
            .field("url", &self.source.url)
            .field("stapled", &self.current.load().is_some())
            .finish()
    }
}

struct State {
    due: Instant,
    failures: u32,
    /// When the stapled answer stops being valid.
    expires: Option<Instant>,
}

impl Staple {
    /// The key to hand a handshake: with the current answer when there is one.
    pub fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    fn due(&self) -> Instant {
        self.state
            .lock()
            .map_or_else(|e| e.into_inner().due, |s| s.due)
    }

    /// Asks the responder and keeps a good answer; schedules the next ask.
    fn refresh(&self, agent: &ureq::Agent) {
        let result = fetch(agent, &self.source)
            .and_then(|a| Ok((check(&a, &self.source, SystemTime::now())?, a)));
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok((checked, answer)) => {
                let wall = SystemTime::now();
                let life = match checked.next_update {
                    Some(n) => n.duration_since(wall).unwrap_or_default(),
                    None => NO_NEXT_UPDATE_LIFE.saturating_sub(
                        wall.duration_since(checked.this_update).unwrap_or_default(),
                    ),
                };
                let mut key = (*self.base).clone();
                key.ocsp = Some(answer);
                self.current.store(Some(Arc::new(key)));
                state.failures = 0;
                state.expires = Some(now + life);
                state.due = now + refresh_in(&checked, wall);
                crate::metrics::ocsp(true);
            }
            Err(e) => {
                state.failures += 1;
                let wait = retry_in(state.failures);
                state.due = now + wait;
                log::warn!(
                    "ocsp: {}: {e}; asking again in {}s",
                    self.source.url,
                    wait.as_secs()
                );
                crate::metrics::ocsp(false);
            }
        }
    }

    /// Drops an answer that has expired (a responder down for that long).
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.expires {
            Some(at) if at <= now => {
                self.current.store(None);
                state.expires = None;
                log::warn!("ocsp: {}: the stapled answer expired", self.source.url);
                None
            }
            other => other,
        }
    }
}

fn fetch(agent: &ureq::Agent, source: &Source) -> Result<Vec<u8>, String> {
    let mut answer = agent
        .post(&source.url)
        .header("content-type", "application/ocsp-request")
        .send(&source.request[..])
        .map_err(|e| format!("fetch failed: {e}"))?;
    if answer.status() != 200 {
        return Err(format!("responder answered HTTP {}", answer.status()));
    }
    answer
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| format!("reading the answer: {e}"))
}

/// Keeps the staples of every stapled certificate fresh, on one background thread.
pub struct Stapler {
    /// By the certificate's DER; entries die with the last snapshot that uses them.
    entries: Mutex<HashMap<Vec<u8>, Weak<Staple>>>,
    wake: Mutex<Option<Sender<()>>>,
}

impl Default for Stapler {
    fn default() -> Self {
        Stapler {
            entries: Mutex::default(),
            wake: Mutex::new(None),
        }
    }
}

impl Stapler {
    /// Gives each stapled certificate of a snapshot its staple: the one it had if the
    /// certificate is unchanged, else a new one, asked for at once.
    pub fn attach<'a>(
        self: &Arc<Self>,
        stapled: impl IntoIterator<Item = (&'a Slot, &'a Arc<CertifiedKey>, &'a Arc<Source>)>,
    ) {
        let mut added = false;
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.retain(|_, w| w.strong_count() > 0);
            for (slot, key, source) in stapled {
                let staple = match entries.get(&source.leaf).and_then(Weak::upgrade) {
                    Some(s) => s,
                    None => {
                        let s = Arc::new(Staple {
                            base: key.clone(),
                            current: ArcSwapOption::empty(),
                            source: source.clone(),
                            state: Mutex::new(State {
                                due: Instant::now(),
                                failures: 0,
                                expires: None,
                            }),
                        });
                        entries.insert(source.leaf.clone(), Arc::downgrade(&s));
                        added = true;
                        s
                    }
                };
                // Set once: a certificate is loaded for one snapshot.
                let _ = slot.set(staple);
            }
        }
        if added {
            self.wake();
        }
    }

    fn wake(self: &Arc<Self>) {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = wake.as_ref() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel();
        let me = Arc::downgrade(self);
        match std::thread::Builder::new()
            .name("weir-ocsp".into())
            .spawn(move || run(me, rx))
        {
            Ok(_) => *wake = Some(tx),
            Err(e) => log::error!("ocsp: cannot start the stapling thread: {e}"),
        }
    }

    fn live(&self) -> Vec<Arc<Staple>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.values().filter_map(Weak::upgrade).collect()
    }
}

/// The stapling thread: refreshes what is due, drops what expired, sleeps until the
/// next due time or until new certificates arrive.
fn run(stapler: Weak<Stapler>, wake: Receiver<()>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    loop {
        let Some(live) = stapler.upgrade().map(|s| s.live()) else {
            return;
        };
        let now = Instant::now();
        let mut next = now + MAX_RETRY;
        for staple in &live {
            if staple.due() <= now {
                staple.refresh(&agent);
            }
            next = next.min(staple.due());
            if let Some(at) = staple.expire(Instant::now()) {
                next = next.min(at);
            }
        }
        drop(live);
        let wait = next.saturating_duration_since(Instant::now());
        match wake.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Where a certificate's staple hangs (set by the stapler when the snapshot is
/// applied; `weir check` never sets it).
pub type Slot = OnceLock<Arc<Staple>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_halfway_and_back_off() {
        let now = SystemTime::now();
        let c = Checked {
            this_update: now,
            next_update: Some(now + Duration::from_secs(7200)),
        };
        assert_eq!(refresh_in(&c, now), Duration::from_secs(3600));
        let soon = Checked {
            this_update: now,
            next_update: Some(now + Duration::from_secs(4)),
        };
        assert_eq!(refresh_in(&soon, now), Duration::from_secs(10));
        let open = Checked {
            this_update: now,
            next_update: None,
        };
        assert_eq!(refresh_in(&open, now), NO_NEXT_UPDATE_REFRESH);
        assert_eq!(retry_in(1), Duration::from_secs(2));
        assert_eq!(retry_in(2), Duration::from_secs(4));
        assert_eq!(retry_in(5), Duration::from_secs(32));
        assert_eq!(retry_in(40), MAX_RETRY);
    }

    fn self_signed() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn certificates_without_a_responder_or_issuer_are_named() {
        let chain = vec![self_signed()];
        let e = Source::of(&chain).unwrap_err();
        assert!(e.contains("no issuer"), "{e}");
        let twice = [chain[0].clone(), chain[0].clone()];
        let e = Source::of(&twice).unwrap_err();
        assert!(e.contains("no OCSP responder"), "{e}");
    }

    #[test]
    fn garbage_answers_are_refused() {
        // A source made by hand from a self-signed certificate as its own issuer.
        let der = self_signed();
        let cert = Certificate::from_der(&der).unwrap();
        let source = Source {
            url: "http://127.0.0.1:1/".into(),
            request: vec![],
            cert_id: CertId {
                hash_algorithm: AlgorithmIdentifierOwned {
                    oid: ID_SHA1,
                    parameters: None,
                },
                issuer_name_hash: OctetString::new(vec![1]).unwrap(),
                issuer_key_hash: OctetString::new(vec![2]).unwrap(),
                serial_number: cert.tbs_certificate.serial_number.clone(),
            },
            issuer_key: cert.tbs_certificate.subject_public_key_info.clone(),
            issuer_name: vec![],
            leaf: der.to_vec(),
        };
        let now = SystemTime::now();
        assert!(check(b"", &source, now).unwrap_err().contains("not OCSP"));
        let try_later = OcspResponse::try_later().to_der().unwrap();
        assert!(check(&try_later, &source, now)
            .unwrap_err()
            .contains("TryLater"));
    }
}
