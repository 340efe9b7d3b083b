//! Response compression (`compression:` on a gateway or route): gzip, brotli or zstd,
//! chosen from what the client accepts in the operator's order of preference, for the
//! content types and sizes configured. Pingora's encoders do the work; this module owns
//! the decision and the header changes (off by default).
//!
//! Not compressed: responses to HEAD or HTTP/1.0, statuses 1xx/204/206/304, bodies that
//! already have a `Content-Encoding` or a `Content-Range`, `Cache-Control: no-transform`,
//! types not listed, `text/event-stream` (compressors hold data back), and bodies whose
//! `Content-Length` is under `min_bytes`.

use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY,
};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::compression::{Algorithm, Encode};

use crate::config::CompressionConfig;

/// Levels for on-the-fly compression: fast, and most of the gain.
const GZIP_LEVEL: u32 = 6;
const BROTLI_LEVEL: u32 = 4;
const ZSTD_LEVEL: u32 = 3;
/// Brotli's window (log2 bytes): 4 MiB, as most servers use.
const BROTLI_WINDOW: u32 = 22;

/// A stream encoder for one response body.
pub type Encoder = Box<dyn Encode + Send + Sync>;

#[derive(Debug)]
pub struct Compression {
    /// In the operator's order of preference.
    algorithms: Vec<Algorithm>,
    min_bytes: u64,
    /// `text/*` is kept as `text/`; others are exact types.
    types: Vec<String>,
}

impl Compression {
    pub fn compile(c: &CompressionConfig) -> Result<Compression, String> {
        let mut algorithms = Vec::new();
        for name in &c.algorithms {
            let a = match name.as_str() {
                "gzip" => Algorithm::Gzip,
                "br" => Algorithm::Brotli,
                "zstd" => Algorithm::Zstd,
                other => {
                    return Err(format!(
                        "compression.algorithms: {other:?} is not gzip, br or zstd"
                    ))
                }
            };
            if !algorithms.contains(&a) {
                algorithms.push(a);
            }
        }
        if algorithms.is_empty() {
            return Err("compression.algorithms is empty".into());
        }
        let mut types = Vec::new();
        for t in &c.types {
            let t = t.trim().to_ascii_lowercase();
            let valid = match t.strip_suffix("/*") {
                Some(major) => !major.is_empty() && !major.contains(['/', '*']),
                None => t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty() && !b.is_empty() && !t.contains(['*', ';', ' '])
                }),
            };
            if !valid {
                return Err(format!(
                    "compression.types: {t:?} is not a media type such as text/* or application/json"
                ));
            }
            types.push(t.strip_suffix('*').map(str::to_string).unwrap_or(t));
        }
        Ok(Compression {
            algorithms,
            min_bytes: c.min_bytes.0,
            types,
        })
    }

    /// The encoding for this response, if it is to be compressed.
    pub fn choose(&self, req: &RequestHeader, resp: &ResponseHeader) -> Option<Algorithm> {
        if req.method == http::Method::HEAD || req.version < http::Version::HTTP_11 {
            return None;
        }
        let status = resp.status.as_u16();
        if status < 200 || matches!(status, 204 | 206 | 304) {
            return None;
        }
        let h = &resp.headers;
        let identity = h
            .get(CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if !identity || h.contains_key(CONTENT_RANGE) || no_transform(h.get(CACHE_CONTROL)) {
            return None;
        }
        let length = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if length.is_some_and(|n| n < self.min_bytes) || !self.listed(h.get(CONTENT_TYPE)) {
            return None;
        }
        self.preferred(req.headers.get(ACCEPT_ENCODING))
    }

    fn listed(&self, content_type: Option<&HeaderValue>) -> bool {
        let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // Events are read as they come; a compressor would hold them back.
        if media == "text/event-stream" {
            return false;
        }
        self.types.iter().any(|t| {
            if t.ends_with('/') {
                media.starts_with(t.as_str())
            } else {
                media == *t
            }
        })
    }

    /// The client's highest-weighted encoding among ours; ties go to the operator's
    /// order. `*` stands for any encoding not named; `q=0` refuses one.
    fn preferred(&self, accept: Option<&HeaderValue>) -> Option<Algorithm> {
        let text = accept?.to_str().ok()?;
        let mut best: Option<(u32, Algorithm)> = None;
        for &a in &self.algorithms {
            let q = weight_of(text, a.as_str());
            if q > 0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, a));
            }
        }
        best.map(|(_, a)| a)
    }
}

/// The `q` (in thousandths) `accept` gives `name`, or `*`'s when it does not name it.
fn weight_of(accept: &str, name: &str) -> u32 {
    let mut star = 0;
    for item in accept.split(',').take(64) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .map_or(1000, parse_q);
        if coding.eq_ignore_ascii_case(name) {
            return q;
        }
        if coding == "*" {
            star = q;
        }
    }
    star
}

/// `0`, `0.5`, `1.000` → thousandths; anything else counts as 0.
fn parse_q(text: &str) -> u32 {
    let text = text.trim();
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let whole: u32 = match whole {
        "0" => 0,
        "1" => 1000,
        _ => return 0,
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let mut f: u32 = frac.parse().unwrap_or(0);
    for _ in frac.len()..3 {
        f *= 10;
    }
    (whole + f).min(1000)
}

fn no_transform(cache_control: Option<&HeaderValue>) -> bool {
    cache_control.is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    })
}

/// Rewrites the response head for a body compressed with `a`, and gives its encoder.
pub fn start(resp: &mut ResponseHeader, a: Algorithm) -> Option<Encoder> {
    let encoder: Encoder = match a {
        Algorithm::Gzip => a.compressor(GZIP_LEVEL)?,
        Algorithm::Brotli => Box::new(Brotli::default()),
        _ => a.compressor(ZSTD_LEVEL)?,
    };
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    // The compressed length is not known before the end: the body goes chunked.
    let _ = resp.insert_header(TRANSFER_ENCODING, "chunked");
    let _ = resp.insert_header(CONTENT_ENCODING, a.as_str());
    let varies = resp.headers.get_all(VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            t.trim_ascii().eq_ignore_ascii_case(b"accept-encoding") || t.trim_ascii() == b"*"
        })
    });
    if !varies {
        let _ = resp.append_header(VARY, "Accept-Encoding");
    }
    // RFC 9110 §8.8.1: another representation has another (weak) validator.
    if let Some(etag) = resp.headers.get(ETAG).map(|e| e.as_bytes().to_vec()) {
        if etag.starts_with(b"\"") {
            let weak = [b"W/".as_slice(), &etag].concat();
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                let _ = resp.insert_header(ETAG, v);
            }
        } else if !etag.starts_with(b"W/") {
            resp.remove_header(&ETAG);
        }
    }
    Some(encoder)
}

/// A brotli stream ended properly at the end of the body (Pingora's brotli encoder
/// flushes but never writes the final block, which strict decoders refuse).
struct Brotli {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
}

impl Default for Brotli {
    fn default() -> Self {
        Brotli {
            writer: Some(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_LEVEL,
                BROTLI_WINDOW,
            )),
            total_in: 0,
            total_out: 0,
        }
    }
}

impl Encode for Brotli {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<bytes::Bytes> {
        use pingora::{Error, ErrorType::InternalError};
        use std::io::Write as _;
        let Some(w) = self.writer.as_mut() else {
            return Error::e_explain(InternalError, "brotli stream already ended");
        };
        self.total_in += input.len();
        if let Err(e) = w.write_all(input) {
            return Error::e_explain(InternalError, format!("brotli: {e}"));
        }
        let out = match (end, self.writer.take()) {
            (true, Some(w)) => w.into_inner(),
            (_, Some(mut w)) => {
                let out = std::mem::take(w.get_mut());
                self.writer = Some(w);
                out
            }
            (_, None) => Vec::new(),
        };
        self.total_out += out.len();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        (
            "br",
            self.total_in,
            self.total_out,
            std::time::Duration::ZERO,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compression(yaml: &str) -> Compression {
        Compression::compile(&serde_yaml::from_str(yaml).expect("parses")).expect("compiles")
    }

    fn pair(accept: &str, headers: &[(&str, &str)]) -> (RequestHeader, ResponseHeader) {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.insert_header("accept-encoding", accept).expect("h");
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        for (k, v) in headers {
            resp.insert_header(k.to_string(), *v).expect("h");
        }
        (req, resp)
    }

    #[test]
    fn chooses_by_client_weight_then_operator_order() {
        let c = compression(
            "{ algorithms: [zstd, br, gzip], min_bytes: 100, types: [text/*, application/json] }",
        );
        let html = [
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "5000"),
        ];
        let pick = |accept: &str| {
            let (req, resp) = pair(accept, &html);
            c.choose(&req, &resp).map(|a| a.as_str())
        };
        assert_eq!(pick("gzip, deflate, br, zstd"), Some("zstd"));
        assert_eq!(pick("gzip, br"), Some("br"));
        assert_eq!(pick("gzip;q=1.0, br;q=0.5"), Some("gzip"));
        assert_eq!(pick("br;q=0, gzip;q=0.001"), Some("gzip"));
        assert_eq!(pick("*"), Some("zstd"));
        assert_eq!(pick("*;q=0.5, zstd;q=0"), Some("br"));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick(""), None);
    }

    #[test]
    fn leaves_alone_what_must_not_change() {
        let c = compression(
            "{ algorithms: [gzip], min_bytes: 1KiB, types: [text/*, application/json] }",
        );
        let no = |headers: &[(&str, &str)]| {
            let (req, resp) = pair("gzip", headers);
            c.choose(&req, &resp).is_none()
        };
        assert!(!no(&[("content-type", "application/json")]));
        assert!(no(&[
            ("content-type", "application/json"),
            ("content-length", "1023")
        ]));
        assert!(no(&[("content-type", "image/png")]));
        assert!(no(&[("content-type", "text/event-stream")]));
        assert!(no(&[]));
        assert!(no(&[
            ("content-type", "text/plain"),
            ("content-encoding", "br")
        ]));
        assert!(no(&[
            ("content-type", "text/plain"),
            ("cache-control", "public, no-transform")
        ]));
        assert!(no(&[
            ("content-type", "text/plain"),
            ("content-range", "bytes 0-1/2")
        ]));
        let (mut req, resp) = pair("gzip", &[("content-type", "text/plain")]);
        req.set_method(http::Method::HEAD);
        assert!(c.choose(&req, &resp).is_none());
    }

    #[test]
    fn headers_change_for_the_new_body() {
        let (_, mut resp) = pair(
            "gzip",
            &[
                ("content-length", "10"),
                ("etag", "\"abc\""),
                ("accept-ranges", "bytes"),
            ],
        );
        let mut enc = start(&mut resp, Algorithm::Gzip).expect("encoder");
        let h = &resp.headers;
        assert!(h.get("content-length").is_none() && h.get("accept-ranges").is_none());
        assert_eq!(h["content-encoding"], "gzip");
        assert_eq!(h["vary"], "Accept-Encoding");
        assert_eq!(h["etag"], "W/\"abc\"");
        let out = enc.encode(b"hello hello hello", true).expect("encodes");
        assert_eq!(&out[..2], &[0x1f, 0x8b], "a gzip stream");
    }

    #[test]
    fn bad_settings_are_named() {
        for (yaml, want) in [
            (
                "{ algorithms: [deflate] }",
                "\"deflate\" is not gzip, br or zstd",
            ),
            ("{ algorithms: [] }", "is empty"),
            ("{ types: [text] }", "\"text\" is not a media type"),
            ("{ types: [\"*/*\"] }", "is not a media type"),
        ] {
            let e =
                Compression::compile(&serde_yaml::from_str(yaml).expect("parses")).expect_err(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
