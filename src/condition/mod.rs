//! The condition language: Vamp's short codes, boolean operators and raw
//! HAProxy ACLs, parsed once into a tree and evaluated directly on each request.
//!
//! Everything that can be prepared is prepared at parse time: lower-casing, alias
//! expansion, header names, regexes, CIDRs. Evaluation allocates nothing; cookies are
//! parsed at most once per request, and only if a condition asks for one.

use std::fmt;

use http::HeaderName;
use ipnet::IpNet;
use regex::Regex;

mod parse;

pub use parse::{lint, parse};

pub use crate::request::Request;

/// A parse error, with the 1-based column it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Expr {
    Const(bool),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Test(Test),
}

/// One leaf test.
#[derive(Debug, Clone)]
pub enum Test {
    /// Host (port stripped) equals, case-insensitively; value lower-cased.
    HostIs(String),
    /// User-Agent contains every one of these (case-sensitive; aliases expanded).
    UserAgent(Vec<Needle>),
    CookieExists(String),
    CookieContains(String, Needle),
    HeaderExists(HeaderName),
    HeaderContains(HeaderName, Needle),
    PathIs(String),
    PathPrefix(String),
    MethodIs(String),
    Source(Vec<IpNet>),
    /// The verified client certificate's subject (RFC 4514) equals this.
    ClientCertIs(String),
    /// The verified client certificate's subject contains this.
    ClientCertContains(Needle),
    Acl(Acl),
}

/// A raw HAProxy ACL: `FETCH [-i] [-m METHOD] [VALUE ...]`; values are alternatives.
#[derive(Debug, Clone)]
pub struct Acl {
    fetch: Fetch,
    matcher: Matcher,
    ignore_case: bool,
    /// Values as written (lower-cased with `-i`).
    values: Vec<String>,
    /// The same values as substring searchers, for `sub`.
    needles: Vec<Needle>,
    regexes: Vec<Regex>,
    nets: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fetch {
    Path,
    Header(HeaderName),
    Method,
    Src,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matcher {
    Found,
    Str,
    Beg,
    End,
    Sub,
    Reg,
    Ip,
}

/// A substring to search for. Kept small (headers are short): candidates are found
/// with SIMD `memchr` on the first byte, then compared.
#[derive(Clone)]
pub struct Needle {
    text: Box<[u8]>,
}

impl fmt::Debug for Needle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.text))
    }
}

impl Needle {
    pub fn new(text: &str) -> Needle {
        Needle {
            text: text.as_bytes().into(),
        }
    }

    #[inline]
    pub fn found_in(&self, hay: &[u8]) -> bool {
        let Some((&first, rest)) = self.text.split_first() else {
            return true;
        };
        memchr::memchr_iter(first, hay).any(|i| hay[i + 1..].starts_with(rest))
    }

    /// Case-insensitive search; the needle was lower-cased when built.
    fn found_in_ignore_case(&self, hay: &[u8]) -> bool {
        let n = &self.text;
        n.is_empty() || hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    }
}

impl Expr {
    /// Evaluates the condition on a request.
    pub fn eval(&self, r: &Request) -> bool {
        match self {
            Expr::Const(b) => *b,
            Expr::Not(e) => !e.eval(r),
            Expr::And(es) => es.iter().all(|e| e.eval(r)),
            Expr::Or(es) => es.iter().any(|e| e.eval(r)),
            Expr::Test(t) => t.eval(r),
        }
    }
}

impl Test {
    fn eval(&self, r: &Request) -> bool {
        match self {
            Test::HostIs(v) => {
                let h = r.host.strip_suffix(b".").unwrap_or(r.host);
                h.eq_ignore_ascii_case(v.as_bytes())
            }
            Test::UserAgent(parts) => r
                .header_values(&http::header::USER_AGENT)
                .any(|ua| parts.iter().all(|p| p.found_in(ua))),
            Test::CookieExists(n) => r.cookie(n).is_some(),
            Test::CookieContains(n, v) => r.cookie(n).is_some_and(|c| v.found_in(c.as_bytes())),
            Test::HeaderExists(n) => r.headers.contains_key(n),
            Test::HeaderContains(n, v) => r.header_values(n).any(|h| v.found_in(h)),
            Test::PathIs(p) => r.path == p,
            Test::PathPrefix(p) => r.path.starts_with(p.as_str()),
            Test::MethodIs(m) => r.method.eq_ignore_ascii_case(m),
            Test::Source(nets) => r
                .client
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Test::ClientCertIs(v) => r.client_cert == Some(v.as_str()),
            Test::ClientCertContains(v) => r.client_cert.is_some_and(|s| v.found_in(s.as_bytes())),
            Test::Acl(acl) => acl.eval(r),
        }
    }
}

impl Acl {
    fn eval(&self, r: &Request) -> bool {
        match &self.fetch {
            Fetch::Path => self.match_sample(r.path.as_bytes()),
            Fetch::Method => self.match_sample(r.method.as_bytes()),
            Fetch::Header(name) => {
                if self.matcher == Matcher::Found {
                    return r.headers.contains_key(name);
                }
                r.header_values(name).any(|v| self.match_sample(v))
            }
            Fetch::Src => r
                .client
                .is_some_and(|ip| self.nets.iter().any(|n| n.contains(&ip))),
        }
    }

    fn match_sample(&self, sample: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self.matcher {
            Matcher::Found => true,
            Matcher::Str => self.values.iter().any(|v| eq(sample, v.as_bytes())),
            Matcher::Beg => self
                .values
                .iter()
                .any(|v| sample.len() >= v.len() && eq(&sample[..v.len()], v.as_bytes())),
            Matcher::End => self.values.iter().any(|v| {
                sample.len() >= v.len() && eq(&sample[sample.len() - v.len()..], v.as_bytes())
            }),
            Matcher::Sub => self.needles.iter().any(|n| {
                if self.ignore_case {
                    n.found_in_ignore_case(sample)
                } else {
                    n.found_in(sample)
                }
            }),
            Matcher::Reg => match std::str::from_utf8(sample) {
                Ok(s) => self.regexes.iter().any(|re| re.is_match(s)),
                Err(_) => false,
            },
            Matcher::Ip => false,
        }
    }
}

// ---- lexer -------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http::HeaderValue;
    use std::net::IpAddr;

    struct Req {
        host: &'static str,
        path: &'static str,
        method: &'static str,
        headers: HeaderMap,
        client: Option<IpAddr>,
    }

    fn req(ua: &str) -> Req {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::USER_AGENT, HeaderValue::from_str(ua).unwrap());
        Req {
            host: "localhost:8080",
            path: "/v1/items",
            method: "GET",
            headers,
            client: "10.1.2.3".parse().ok(),
        }
    }

    impl Req {
        fn with(mut self, name: &'static str, value: &str) -> Self {
            self.headers
                .append(name, HeaderValue::from_str(value).unwrap());
            self
        }
        fn eval(&self, cond: &str) -> bool {
            let e = parse(cond).unwrap_or_else(|e| panic!("{cond:?}: {e}"));
            e.eval(&Request::new(
                self.host.as_bytes(),
                self.path,
                self.method,
                &self.headers,
                self.client,
            ))
        }
    }

    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
    const SAFARI: &str = "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15";

    #[test]
    fn vamp_parser_examples() {
        let ff = req(FIREFOX)
            .with("cookie", "vamp=12345; other=1")
            .with("vamp", "x12345y");
        let chrome = req(CHROME);
        for (cond, on_ff, on_chrome) in [
            ("User-Agent==Firefox", true, false),
            ("user.agent != Firefox", false, true),
            ("User-Agent is Firefox", true, false),
            ("User-Agent not Firefox", false, true),
            ("host has localhost", true, true),
            ("! host is localhost", false, false),
            ("has cookie vamp", true, false),
            ("contains cookie vamp", true, false),
            ("misses header vamp", false, true),
            ("cookie vamp contains 12345", true, false),
            ("header vamp misses 12345", false, true),
            (
                "(User-Agent = Chrome OR User-Agent = Firefox) AND has cookie vamp",
                true,
                false,
            ),
        ] {
            assert_eq!(ff.eval(cond), on_ff, "{cond} on firefox");
            assert_eq!(chrome.eval(cond), on_chrome, "{cond} on chrome");
        }
    }

    #[test]
    fn spec_short_codes_and_aliases() {
        let r = req(SAFARI).with("x-beta", "yes");
        assert!(r.eval("user-agent == Safari"));
        assert!(
            !req(CHROME).eval("useragent == safari"),
            "Chrome says Safari but not Version"
        );
        assert!(req("Mozilla/4.0 (compatible; MSIE 8.0)").eval("user-agent == ie"));
        assert!(req("Mozilla/5.0 Edge/18").eval("user-agent = EDGE"));
        assert!(r.eval("host == LOCALHOST"));
        assert!(r.eval("host = localhost && !host != localhost"));
        assert!(r.eval("has header X-Beta"));
        assert!(r.eval("header x-beta has ye"));
        assert!(r.eval("path == /v1/items"));
        assert!(r.eval("path prefix /v1"));
        assert!(!r.eval("path prefix /v2"));
        assert!(r.eval("method == get"));
        assert!(r.eval("source in 10.0.0.0/8"));
        assert!(!r.eval("source in 192.168.0.0/16"));
        assert!(r.eval("true") && !r.eval("false"));
        assert!(r.eval("user-agent == 'Version/17'"));
        assert!(r.eval("user-agent == \"AppleWebKit/605\""));
        assert!(r.eval("NOT false AND True"));
    }

    #[test]
    fn precedence_and_binds_tighter() {
        let r = req(FIREFOX);
        // true or (false and false) = true; (true or false) and false = false
        assert!(r.eval("true or false and false"));
        assert!(!r.eval("(true or false) and false"));
        assert!(r.eval("false and false or true"));
        assert!(!r.eval("not true or false"));
        assert!(r.eval("! false && ! false"));
        assert!(r.eval("true || false && false"));
    }

    #[test]
    fn misspelt_operators_are_linted() {
        let hint = lint("path prefx /api").unwrap();
        assert!(hint.contains("did you mean `path prefix /api`"), "{hint}");
        assert!(hint.contains("`prefx`, `/api`"), "{hint}");
        assert!(lint("method contans GET").is_some());
        assert_eq!(lint("path prefix /api"), None);
        assert_eq!(lint("path /a /b"), None);
        assert_eq!(lint("path_beg /v1"), None);
        assert_eq!(lint("user-agent == Firefox"), None);
        // A regular expression given to the exact-match `path` ACL never matches as one.
        let hint = lint("path ~ ^/small").unwrap();
        assert!(hint.contains("did you mean `path_reg ^/small`"), "{hint}");
        assert!(lint("path ^/api/.*$").is_some());
        assert_eq!(lint("path_reg ^/small"), None);
    }

    #[test]
    fn raw_acls() {
        let r = req(FIREFOX).with("x-ver", "Beta-2");
        assert!(r.eval("< path_beg /v1 >"));
        assert!(r.eval("{ path_end items }"));
        assert!(
            r.eval("path_beg /v1"),
            "a whole condition may omit the brackets"
        );
        assert!(r.eval("path /v1/items"));
        assert!(!r.eval("path /v1"));
        assert!(
            !r.eval("< path_sub /ITEMS -i >"),
            "flags come before values"
        );
        assert!(r.eval("< path_sub -i /ITEMS >"));
        assert!(r.eval("< path_reg ^/v[0-9]+/ >"));
        assert!(r.eval("< hdr(x-ver) Beta-2 >"));
        assert!(r.eval("< hdr(X-Ver) -i beta-2 >"));
        assert!(r.eval("< hdr_beg(x-ver) Beta >"));
        assert!(r.eval("< hdr_sub(user-agent) Firefox >"));
        assert!(r.eval("< hdr_reg(x-ver) ^B.*2$ >"));
        assert!(r.eval("< hdr(x-ver) -m found >"));
        assert!(!r.eval("< hdr(x-missing) -m found >"));
        assert!(r.eval("< hdr(x-ver) -m beg Be >"));
        assert!(r.eval("< method GET POST >"));
        assert!(r.eval("method GET"));
        assert!(r.eval("< src 10.0.0.0/8 >"));
        assert!(r.eval("src 10.1.2.3"));
        assert!(r.eval("< path_beg /v2 /v1 >"), "values are alternatives");
        assert!(r.eval("has cookie x or < path_beg /v1 >"));
    }

    #[test]
    fn cookies_parsed_lazily_and_with_many() {
        let mut r = req(FIREFOX);
        let many: Vec<String> = (0..40).map(|i| format!("c{i}=v{i}")).collect();
        r = r.with("cookie", &many.join("; "));
        assert!(r.eval("has cookie c0"));
        assert!(r.eval("cookie c39 has v39"), "beyond the in-place jar");
        assert!(!r.eval("has cookie c40"));
    }

    #[test]
    fn client_cert_subject() {
        let headers = HeaderMap::new();
        let eval = |cond: &str, subject: Option<&str>| {
            let mut r = Request::new(b"h", "/", "GET", &headers, None);
            r.client_cert = subject;
            parse(cond)
                .unwrap_or_else(|e| panic!("{cond}: {e}"))
                .eval(&r)
        };
        let alice = Some("CN=alice,O=Example");
        assert!(eval("ccs == 'CN=alice,O=Example'", alice));
        assert!(eval("client-cert-subject is \"CN=alice,O=Example\"", alice));
        assert!(!eval("ccs == 'CN=alice'", alice), "== is the whole subject");
        assert!(eval("ccs contains 'O=Example'", alice));
        assert!(eval("CCS has alice", alice));
        assert!(!eval("ccs misses 'CN=alice'", alice));
        assert!(eval("ccs != 'CN=bob'", alice));
        let e = parse("ccs == CN=alice").unwrap_err();
        assert!(e.message.contains("quote"), "{e}");
        // No certificate: nothing matches, negations do.
        assert!(!eval("ccs contains CN", None));
        assert!(eval("ccs misses CN", None));
        assert!(eval("not ccs == x", None));
        assert!(parse("ccs ~ x")
            .unwrap_err()
            .message
            .contains("expected an operator"));
        assert!(parse("ccs ==")
            .unwrap_err()
            .message
            .contains("certificate subject"));
    }

    fn error_column(cond: &str) -> (usize, String) {
        let e = parse(cond).expect_err(cond);
        (e.column, e.message)
    }

    #[test]
    fn errors_point_at_the_column() {
        assert_eq!(error_column("user-agent ==").0, 14);
        assert_eq!(error_column("host ~ x").0, 6);
        assert_eq!(error_column("bogus == 1").0, 1);
        assert_eq!(error_column("(true").0, 6, "where the ')' is missing");
        assert_eq!(error_column("true false").0, 6);
        assert_eq!(error_column("has biscuit x").0, 5);
        assert_eq!(error_column("< path_reg ( >").0, 12);
        assert_eq!(error_column("< nope x >").0, 3);
        assert_eq!(error_column("'open").0, 1);
        assert_eq!(error_column("source in nowhere").0, 11);
        assert_eq!(error_column("true and").0, 9);
        assert!(error_column("").1.contains("empty"));
        assert!(error_column("< hdr(x) -m found y >").1.contains("no value"));
    }

    /// A random condition, as text and as a reference tree.
    #[derive(Debug)]
    enum Ref {
        Leaf(&'static str, bool),
        Not(Box<Ref>),
        And(Box<Ref>, Box<Ref>),
        Or(Box<Ref>, Box<Ref>),
    }

    const LEAVES: &[(&str, bool)] = &[
        ("true", true),
        ("false", false),
        ("host == localhost", true),
        ("host != localhost", false),
        ("user-agent == Firefox", true),
        ("User-Agent not Firefox", false),
        ("has cookie vamp", true),
        ("misses cookie vamp", false),
        ("cookie vamp has 123", true),
        ("header x-a misses q", true),
        ("< path_beg /v1 >", true),
        ("{ hdr(x-a) -m found }", true),
        ("< src 192.168.0.0/16 >", false),
        ("method == POST", false),
    ];

    fn gen(depth: u32) -> Ref {
        if depth == 0 || fastrand::u8(0..4) == 0 {
            let (t, v) = LEAVES[fastrand::usize(0..LEAVES.len())];
            return Ref::Leaf(t, v);
        }
        match fastrand::u8(0..3) {
            0 => Ref::Not(Box::new(gen(depth - 1))),
            1 => Ref::And(Box::new(gen(depth - 1)), Box::new(gen(depth - 1))),
            _ => Ref::Or(Box::new(gen(depth - 1)), Box::new(gen(depth - 1))),
        }
    }

    /// Prints with only the parentheses precedence needs, and random operator spellings.
    fn print(r: &Ref, parent: u8) -> String {
        let (text, prec) = match r {
            Ref::Leaf(t, _) => (t.to_string(), 3),
            Ref::Not(e) => (
                format!(
                    "{}{}",
                    ["not ", "! ", "NOT ", "!"][fastrand::usize(0..4)],
                    print(e, 2)
                ),
                2,
            ),
            Ref::And(a, b) => (
                format!(
                    "{} {} {}",
                    print(a, 1),
                    ["and", "&&", "AND"][fastrand::usize(0..3)],
                    print(b, 1)
                ),
                1,
            ),
            Ref::Or(a, b) => (
                format!(
                    "{} {} {}",
                    print(a, 0),
                    ["or", "||", "Or"][fastrand::usize(0..3)],
                    print(b, 0)
                ),
                0,
            ),
        };
        if prec < parent || (prec == parent && parent < 3 && fastrand::bool()) {
            format!("({text})")
        } else {
            text
        }
    }

    fn reference(r: &Ref) -> bool {
        match r {
            Ref::Leaf(_, v) => *v,
            Ref::Not(e) => !reference(e),
            Ref::And(a, b) => reference(a) && reference(b),
            Ref::Or(a, b) => reference(a) || reference(b),
        }
    }

    #[test]
    fn evaluator_agrees_with_reference_on_random_expressions() {
        fastrand::seed(7);
        let r = req(FIREFOX).with("cookie", "vamp=123").with("x-a", "1");
        for _ in 0..3000 {
            let tree = gen(5);
            let text = print(&tree, 0);
            assert_eq!(r.eval(&text), reference(&tree), "{text}");
        }
    }
}
