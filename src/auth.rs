//! HTTP basic auth (`basic_auth:` on a gateway or route): users and bcrypt hashes from
//! an htpasswd file, checked before a request goes upstream; `401` with a
//! `WWW-Authenticate` challenge otherwise.
//!
//! bcrypt is slow on purpose (tens of milliseconds), so this module owns two bounds:
//! a password that verified once is remembered per user (as its SHA-256) and later
//! requests compare digests only; and at most [`CONCURRENT_VERIFIES`] bcrypt checks run
//! at once, on blocking threads, each waiting at most [`VERIFY_WAIT`] for its turn, so
//! that a flood of wrong passwords costs bounded CPU and never stalls the proxy's
//! threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use http::HeaderValue;

/// bcrypt checks running at once (the process's share of the machine).
const CONCURRENT_VERIFIES: usize = 2;
/// How long a request waits for a bcrypt check before it is answered 503.
const VERIFY_WAIT: Duration = Duration::from_secs(5);
/// Users one file may hold.
const MAX_USERS: usize = 10_000;
/// Longest `Authorization` value looked at (base64 of user:password).
const MAX_CREDENTIALS: usize = 1024;

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Too many checks waiting: try later (503).
    Busy,
}

#[derive(Debug)]
struct User {
    hash: Arc<str>,
    /// SHA-256 of the last password that matched `hash`.
    good: ArcSwapOption<[u8; 32]>,
}

#[derive(Debug)]
pub struct BasicAuth {
    users: HashMap<String, User>,
    /// A hash checked (and its answer ignored) when the user is unknown, so that
    /// unknown and known users take as long: the file's first.
    decoy: Arc<str>,
    /// `Basic realm="…", charset="UTF-8"`.
    pub challenge: HeaderValue,
}

impl BasicAuth {
    /// Parses an htpasswd file: `user:hash` lines, `#` comments; bcrypt hashes only.
    pub fn parse(text: &[u8], realm: &str) -> Result<BasicAuth, String> {
        let text = std::str::from_utf8(text).map_err(|_| "is not UTF-8 text".to_string())?;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected user:hash", n + 1));
            };
            if !is_bcrypt(hash) {
                return Err(format!(
                    "line {}: user {user:?}: only bcrypt hashes are taken (htpasswd -B)",
                    n + 1
                ));
            }
            if users.len() == MAX_USERS {
                return Err(format!("more than {MAX_USERS} users"));
            }
            users.insert(
                user.to_string(),
                User {
                    hash: hash.into(),
                    good: ArcSwapOption::empty(),
                },
            );
        }
        let Some(decoy) = users.values().next().map(|u: &User| u.hash.clone()) else {
            return Err("has no users".into());
        };
        if realm.contains(['"', '\\']) || HeaderValue::from_str(realm).is_err() {
            return Err(format!(
                "realm {realm:?} cannot hold quotes, backslashes or control characters"
            ));
        }
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                .map_err(|e| e.to_string())?;
        Ok(BasicAuth {
            users,
            decoy,
            challenge,
        })
    }

    /// Checks a request's `Authorization` header.
    pub async fn check(&self, authorization: Option<&HeaderValue>) -> Verdict {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return Verdict::Denied;
        };
        let digest = sha256(password.as_bytes());
        let (hash, good) = match self.users.get(&user) {
            Some(u) => {
                if u.good.load().as_deref() == Some(&digest) {
                    return Verdict::Allowed;
                }
                (u.hash.clone(), Some(&u.good))
            }
            None => (self.decoy.clone(), None),
        };
        match verify(password, hash).await {
            Some(true) => match good {
                Some(slot) => {
                    slot.store(Some(Arc::new(digest)));
                    Verdict::Allowed
                }
                None => Verdict::Denied,
            },
            Some(false) => Verdict::Denied,
            None => Verdict::Busy,
        }
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a cost of 04-31, `$`, and 53 characters of bcrypt's
/// base64 (salt and digest).
fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
    b.len() == 60
        && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
        && cost.is_some_and(|c| (4..=31).contains(&c))
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

/// `Basic base64(user:password)` → (user, password).
fn credentials(v: &HeaderValue) -> Option<(String, String)> {
    let v = v.as_bytes();
    if v.len() > MAX_CREDENTIALS || v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v[6..].trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// One bcrypt check on a blocking thread, in turn; `None` if the turn did not come.
async fn verify(password: String, hash: Arc<str>) -> Option<bool> {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_VERIFIES);
    let _turn = tokio::time::timeout(VERIFY_WAIT, TURNS.acquire())
        .await
        .ok()?
        .ok()?;
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> HeaderValue {
        let b64 = base64::engine::general_purpose::STANDARD.encode(user_pass);
        HeaderValue::from_str(&format!("Basic {b64}")).expect("header")
    }

    #[tokio::test]
    async fn bcrypt_users_are_checked_and_remembered() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let auth = BasicAuth::parse(format!("# users\nalice:{hash}\n").as_bytes(), "shop")
            .expect("parses");
        assert_eq!(
            auth.challenge.to_str().expect("text"),
            "Basic realm=\"shop\", charset=\"UTF-8\""
        );
        assert_eq!(
            auth.check(Some(&basic("alice:s3cret"))).await,
            Verdict::Allowed
        );
        // Remembered: the second check needs no bcrypt.
        assert!(auth.users["alice"].good.load().is_some());
        assert_eq!(
            auth.check(Some(&basic("alice:s3cret"))).await,
            Verdict::Allowed
        );
        assert_eq!(
            auth.check(Some(&basic("alice:wrong"))).await,
            Verdict::Denied
        );
        assert_eq!(
            auth.check(Some(&basic("bob:s3cret"))).await,
            Verdict::Denied
        );
        assert_eq!(auth.check(None).await, Verdict::Denied);
        let bearer = HeaderValue::from_static("Bearer abc");
        assert_eq!(auth.check(Some(&bearer)).await, Verdict::Denied);
        let junk = HeaderValue::from_static("Basic !!!");
        assert_eq!(auth.check(Some(&junk)).await, Verdict::Denied);
        // Credentials over the bound are not decoded, even right ones.
        let long = "x".repeat(MAX_CREDENTIALS);
        let text = format!("long:{}", bcrypt::hash(&long, 4).expect("hash"));
        let auth = BasicAuth::parse(text.as_bytes(), "r").expect("parses");
        assert_eq!(
            auth.check(Some(&basic(&format!("long:{}", &long[..600]))))
                .await,
            Verdict::Allowed
        );
        assert_eq!(
            auth.check(Some(&basic(&format!("long:{long}")))).await,
            Verdict::Denied
        );
    }

    #[test]
    fn bad_files_are_named() {
        for (text, want) in [
            ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "only bcrypt"),
            ("alice:$apr1$abc$def", "only bcrypt"),
            ("alice:$2y$10$short", "only bcrypt"),
            ("no colon here", "line 1: expected user:hash"),
            ("# nobody\n", "has no users"),
        ] {
            let e = BasicAuth::parse(text.as_bytes(), "r").expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
        let hash = bcrypt::hash("x", 4).expect("hash");
        let e = BasicAuth::parse(format!("a:{hash}").as_bytes(), "a\"b").expect_err("realm");
        assert!(e.contains("realm"), "{e}");
    }
}
