//! Session-ticket keys a fleet shares (`tls.ticket_keys_file`), so that a client resumes
//! its TLS session on any edge: the key file's format and the ticketer that uses it.
//!
//! The file holds one key a line, base64 of 48 random bytes (`openssl rand -base64
//! 48`): 16 bytes name the key, 32 are its AES-256-GCM key. The first key seals new
//! tickets; every key opens them, so rotation is: add a new key on top everywhere,
//! later drop the last. Without the file, a listener keeps rustls' own keys, made at
//! start and rotated every 6 hours.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// Keys one file may hold.
pub const MAX_KEYS: usize = 16;
const NAME_LEN: usize = 16;
const KEY_BYTES: usize = NAME_LEN + 32;
/// How long a client may keep a ticket (the hint sent with it).
const LIFETIME_SECS: u32 = 6 * 3600;

struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

/// The keys of one `ticket_keys_file`, first to seal, all to open.
pub struct TicketKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKeys({} key(s))", self.keys.len())
    }
}

/// Parses a key file: base64 lines of 48 bytes; blank lines and `#` comments skipped.
pub fn parse(text: &[u8]) -> Result<TicketKeys, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| format!("line {}: not base64: {e}", i + 1))?;
        if bytes.len() != KEY_BYTES {
            return Err(format!(
                "line {}: {} bytes, a key is {KEY_BYTES} (openssl rand -base64 48)",
                i + 1,
                bytes.len()
            ));
        }
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&bytes[..NAME_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, &bytes[NAME_LEN..])
            .map_err(|_| format!("line {}: not an AES-256 key", i + 1))?;
        keys.push(Key {
            name,
            aead: LessSafeKey::new(key),
        });
        if keys.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
    }
    if keys.is_empty() {
        return Err("no key (one a line: openssl rand -base64 48)".into());
    }
    Ok(TicketKeys { keys })
}

impl TicketKeys {
    /// `name ‖ nonce ‖ sealed(plain)` under the first key, the name as associated data.
    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens a ticket sealed by any of the keys; `None` for anything else.
    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.keys.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(key.name), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// A listener's ticketer: the shared keys when a file gives them, else rustls' own.
/// Keys change with a reload; tickets under a key still in the file keep opening.
pub struct Ticketer {
    shared: ArcSwapOption<TicketKeys>,
    own: Arc<dyn ProducesTickets>,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("shared", &self.shared.load().is_some())
            .finish()
    }
}

impl Ticketer {
    pub fn new(own: Arc<dyn ProducesTickets>) -> Ticketer {
        Ticketer {
            shared: ArcSwapOption::empty(),
            own,
        }
    }

    /// Uses `keys` from now on (none: rustls' own keys).
    pub fn set(&self, keys: Option<Arc<TicketKeys>>) {
        self.shared.store(keys);
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        match &*self.shared.load() {
            Some(_) => LIFETIME_SECS,
            None => self.own.lifetime(),
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        match &*self.shared.load() {
            Some(keys) => keys.seal(plain),
            None => self.own.encrypt(plain),
        }
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        match &*self.shared.load() {
            // Tickets from before the file was set still open with the own keys.
            Some(keys) => keys.open(cipher).or_else(|| self.own.decrypt(cipher)),
            None => self.own.decrypt(cipher),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([seed; KEY_BYTES])
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = parse(key(1).as_bytes()).unwrap();
        let sealed_old = old.seal(b"session").unwrap();
        let rotated = parse(format!("# rotated\n{}\n\n{}\n", key(2), key(1)).as_bytes()).unwrap();
        assert_eq!(rotated.open(&sealed_old).as_deref(), Some(&b"session"[..]));
        let sealed_new = rotated.seal(b"other").unwrap();
        assert_eq!(&sealed_new[..NAME_LEN], &[2u8; NAME_LEN]);
        assert_eq!(
            old.open(&sealed_new),
            None,
            "a node without the new key cannot open"
        );
        let mut tampered = sealed_new.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(rotated.open(&tampered), None);
        assert_eq!(rotated.open(b"short"), None);
    }

    #[test]
    fn bad_files_are_refused() {
        for (text, want) in [
            ("".to_string(), "no key"),
            ("not base64!\n".to_string(), "line 1: not base64"),
            ("AAAA\n".to_string(), "3 bytes"),
            (
                (0..17).map(|i| key(i) + "\n").collect::<String>(),
                "more than 16",
            ),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn ticketer_falls_back_to_its_own_keys() {
        let own = rustls::crypto::ring::Ticketer::new().unwrap();
        let t = Ticketer::new(own);
        let before = t.encrypt(b"a").unwrap();
        t.set(Some(Arc::new(parse(key(3).as_bytes()).unwrap())));
        let after = t.encrypt(b"b").unwrap();
        assert_eq!(t.decrypt(&before).as_deref(), Some(&b"a"[..]));
        assert_eq!(t.decrypt(&after).as_deref(), Some(&b"b"[..]));
        t.set(None);
        assert_eq!(t.decrypt(&after), None);
    }
}
