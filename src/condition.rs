//! The condition language: Vamp's short codes, boolean operators and raw
//! HAProxy ACLs, parsed once into a tree and evaluated directly on each request.
//!
//! Everything that can be prepared is prepared at parse time: lower-casing, alias
//! expansion, header names, regexes, CIDRs. Evaluation allocates nothing; cookies are
//! parsed at most once per request, and only if a condition asks for one.

use std::cell::OnceCell;
use std::fmt;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use regex::Regex;

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

/// What conditions read of a request. Borrowed from the request; built per request
/// without allocation.
pub struct Request<'a> {
    /// Host with the port stripped (any case).
    pub host: &'a [u8],
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    pub client: Option<IpAddr>,
    cookies: OnceCell<Cookies<'a>>,
}

const MAX_COOKIES: usize = 16;

/// The request's cookies, parsed once: up to `MAX_COOKIES` kept in place, beyond that
/// looked up by scanning the header again.
struct Cookies<'a> {
    pairs: [(&'a str, &'a str); MAX_COOKIES],
    len: usize,
    overflow: bool,
}

fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = name.trim_ascii();
            let value = value.trim_ascii();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (!name.is_empty()).then_some((name, value))
        })
}

impl<'a> Request<'a> {
    pub fn new(
        host: &'a [u8],
        path: &'a str,
        method: &'a str,
        headers: &'a HeaderMap,
        client: Option<IpAddr>,
    ) -> Self {
        Request {
            host: crate::vhost::strip_port(host),
            path,
            method,
            headers,
            client,
            cookies: OnceCell::new(),
        }
    }

    /// The value of cookie `name`, if the request has it.
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        let jar = self.cookies.get_or_init(|| {
            let mut jar = Cookies {
                pairs: [("", ""); MAX_COOKIES],
                len: 0,
                overflow: false,
            };
            for pair in cookie_pairs(self.headers) {
                if jar.len == MAX_COOKIES {
                    jar.overflow = true;
                    break;
                }
                jar.pairs[jar.len] = pair;
                jar.len += 1;
            }
            jar
        });
        if let Some((_, v)) = jar.pairs[..jar.len].iter().find(|(n, _)| *n == name) {
            return Some(v);
        }
        if jar.overflow {
            return cookie_pairs(self.headers)
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v);
        }
        None
    }

    fn header_values(&self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers.get_all(name).iter().map(|v| v.as_bytes())
    }
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

    /// Whether evaluating needs the request's cookies.
    pub fn uses_cookies(&self) -> bool {
        match self {
            Expr::Const(_) => false,
            Expr::Not(e) => e.uses_cookies(),
            Expr::And(es) | Expr::Or(es) => es.iter().any(Expr::uses_cookies),
            Expr::Test(t) => matches!(t, Test::CookieExists(_) | Test::CookieContains(..)),
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

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    AndOp,
    OrOp,
    Bang,
    Eq,
    NotEq,
    /// A bare word.
    Word(String),
    /// A quoted value.
    Quoted(String),
    /// A raw ACL between `< >` or `{ }`: its text and the column it starts at.
    Raw(String, usize),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    column: usize,
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        column,
        message: message.into(),
    })
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let col = |i: usize| i + 1;
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        let start = i;
        let two = chars.get(i + 1).map(|(_, c)| *c);
        let simple = match (c, two) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => Some((Tok::LParen, 1)),
            (')', _) => Some((Tok::RParen, 1)),
            ('&', Some('&')) => Some((Tok::AndOp, 2)),
            ('|', Some('|')) => Some((Tok::OrOp, 2)),
            ('=', Some('=')) => Some((Tok::Eq, 2)),
            ('!', Some('=')) => Some((Tok::NotEq, 2)),
            ('=', _) => Some((Tok::Eq, 1)),
            ('!', _) => Some((Tok::Bang, 1)),
            _ => None,
        };
        if let Some((tok, len)) = simple {
            out.push(Token {
                tok,
                column: col(start),
            });
            i += len;
            continue;
        }
        match c {
            '\'' | '"' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return err(col(start), "unterminated quoted value"),
                        Some((_, '\\')) if chars.get(i + 1).is_some() => {
                            value.push(chars[i + 1].1);
                            i += 2;
                        }
                        Some((_, q)) if *q == c => {
                            i += 1;
                            break;
                        }
                        Some((_, other)) => {
                            value.push(*other);
                            i += 1;
                        }
                    }
                }
                out.push(Token {
                    tok: Tok::Quoted(value),
                    column: col(start),
                });
            }
            '<' | '{' => {
                let close = if c == '<' { '>' } else { '}' };
                let end = chars[i + 1..]
                    .iter()
                    .position(|(_, x)| *x == close)
                    .map(|p| p + i + 1);
                let Some(end) = end else {
                    return err(
                        col(start),
                        format!("unterminated raw ACL: missing '{close}'"),
                    );
                };
                let raw: String = chars[i + 1..end].iter().map(|(_, c)| *c).collect();
                out.push(Token {
                    tok: Tok::Raw(raw, col(start + 1)),
                    column: col(start),
                });
                i = end + 1;
            }
            '>' | '}' | '&' | '|' => return err(col(start), format!("unexpected '{c}'")),
            _ => {
                let mut word = String::new();
                while let Some((_, c)) = chars.get(i) {
                    if c.is_whitespace() || "()=!<>{}'\"&|".contains(*c) {
                        break;
                    }
                    word.push(*c);
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Word(word),
                    column: col(start),
                });
            }
        }
    }
    Ok(out)
}

// ---- parser ------------------------------------------------------------------

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end_column: usize,
}

fn is_kw(tok: &Tok, kw: &str) -> bool {
    matches!(tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

/// Parses a condition.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    if text.trim().is_empty() {
        return err(1, "empty condition");
    }
    if looks_like_bare_acl(text) {
        return parse_acl(text, 1).map(|a| Expr::Test(Test::Acl(a)));
    }
    let tokens = lex(text)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        end_column: text.chars().count() + 1,
    };
    let e = p.or()?;
    if let Some(t) = p.peek() {
        return err(t.column, format!("unexpected {}", describe(&t.tok)));
    }
    Ok(e)
}

/// A condition that parses but reads as something its author likely did not mean:
/// `path prefx /api` is the raw ACL "path is `prefx` or `/api`", where `path prefix
/// /api` was surely meant. Returns the explanation, with the suggestion.
pub fn lint(text: &str) -> Option<String> {
    if !looks_like_bare_acl(text) {
        return None;
    }
    let mut words = text.split_whitespace();
    let (fetch, second) = (words.next()?, words.next()?);
    let rest: Vec<&str> = words.collect();
    if rest.is_empty() {
        return None;
    }
    let operators = ["prefix", "contains", "misses", "has", "is", "not"];
    let op = crate::suggest::closest(&second.to_ascii_lowercase(), &operators)?;
    Some(format!(
        "`{second}` looks like a misspelt `{op}`: as written this is a raw ACL matching the {fetch}s {}; did you mean `{fetch} {op} {}`?",
        std::iter::once(second)
            .chain(rest.iter().copied())
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(", "),
        rest.join(" ")
    ))
}

/// A whole condition written as one HAProxy ACL without brackets (`path_beg /v1`).
fn looks_like_bare_acl(text: &str) -> bool {
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("").to_ascii_lowercase();
    let second = words.next().unwrap_or("");
    let fetch_only = ["path_beg", "path_end", "path_sub", "path_reg", "src"];
    if fetch_only.contains(&first.as_str())
        || ["hdr(", "hdr_beg(", "hdr_sub(", "hdr_reg("]
            .iter()
            .any(|p| first.starts_with(p))
    {
        return true;
    }
    // `path /x` and `method GET` are ACLs; `path == /x`, `method == GET` are short codes.
    let short_code_op = [
        "==", "=", "!=", "is", "not", "has", "contains", "misses", "prefix",
    ]
    .iter()
    .any(|op| {
        second.eq_ignore_ascii_case(op) || second.starts_with('=') || second.starts_with("!=")
    });
    (first == "path" || first == "method") && !second.is_empty() && !short_code_op
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::AndOp => "'&&'".into(),
        Tok::OrOp => "'||'".into(),
        Tok::Bang => "'!'".into(),
        Tok::Eq => "'=='".into(),
        Tok::NotEq => "'!='".into(),
        Tok::Word(w) => format!("{w:?}"),
        Tok::Quoted(v) => format!("quoted value {v:?}"),
        Tok::Raw(..) => "raw ACL".into(),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end_column, |t| t.column)
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.and()?];
        while let Some(t) = self.peek() {
            if t.tok == Tok::OrOp || is_kw(&t.tok, "or") {
                self.pos += 1;
                terms.push(self.and()?);
            } else {
                break;
            }
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(Expr::Const(false))
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut terms = vec![self.unary()?];
        while let Some(t) = self.peek() {
            if t.tok == Tok::AndOp || is_kw(&t.tok, "and") {
                self.pos += 1;
                terms.push(self.unary()?);
            } else {
                break;
            }
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(Expr::Const(true))
        } else {
            Expr::And(terms)
        })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(t) if t.tok == Tok::Bang || is_kw(&t.tok, "not") => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let column = self.column();
        let Some(t) = self.next() else {
            return err(column, "expected a condition");
        };
        match t.tok {
            Tok::LParen => {
                let e = self.or()?;
                match self.next() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => Ok(e),
                    _ => err(self.column_of_prev(), "expected ')'"),
                }
            }
            Tok::Raw(text, col) => parse_acl(&text, col).map(|a| Expr::Test(Test::Acl(a))),
            Tok::Word(w) => self.word(&w, t.column),
            other => err(
                t.column,
                format!("expected a condition, found {}", describe(&other)),
            ),
        }
    }

    fn column_of_prev(&self) -> usize {
        self.tokens
            .get(self.pos.saturating_sub(1))
            .map_or(self.end_column, |t| t.column)
    }

    /// A value: a bare word or a quoted string.
    fn value(&mut self, what: &str) -> Result<String, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Token {
                tok: Tok::Word(w), ..
            })
            | Some(Token {
                tok: Tok::Quoted(w),
                ..
            }) => Ok(w),
            _ => err(column, format!("expected {what}")),
        }
    }

    /// An operator after a subject: true for positive, false for negative.
    fn operator(&mut self, positive: &[&str], negative: &[&str]) -> Result<bool, ParseError> {
        let column = self.column();
        match self.next().map(|t| t.tok) {
            Some(Tok::Eq) => Ok(true),
            Some(Tok::NotEq) => Ok(false),
            Some(Tok::Word(w)) if positive.iter().any(|k| w.eq_ignore_ascii_case(k)) => Ok(true),
            Some(Tok::Word(w)) if negative.iter().any(|k| w.eq_ignore_ascii_case(k)) => Ok(false),
            _ => err(
                column,
                format!(
                    "expected an operator: ==, !=, {}",
                    positive
                        .iter()
                        .chain(negative)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }

    fn word(&mut self, w: &str, column: usize) -> Result<Expr, ParseError> {
        let lower = w.to_ascii_lowercase();
        const POS: &[&str] = &["is", "has", "contains"];
        const NEG: &[&str] = &["not", "misses"];
        let negate = |positive: bool, e: Expr| if positive { e } else { Expr::Not(Box::new(e)) };
        match lower.as_str() {
            "true" => Ok(Expr::Const(true)),
            "false" => Ok(Expr::Const(false)),
            "has" | "contains" | "misses" => {
                let positive = lower != "misses";
                let kind_col = self.column();
                let kind = self.value("cookie or header")?.to_ascii_lowercase();
                let name = self.value("a name")?;
                let test = match kind.as_str() {
                    "cookie" => Test::CookieExists(name),
                    "header" => Test::HeaderExists(header_name(&name, kind_col)?),
                    _ => return err(kind_col, format!("expected cookie or header after {w:?}")),
                };
                Ok(negate(positive, Expr::Test(test)))
            }
            "cookie" | "header" => {
                let name_col = self.column();
                let name = self.value("a name")?;
                let positive = self.operator(&["has", "contains"], &["misses"])?;
                let value = self.value("a value")?;
                let test = if lower == "cookie" {
                    Test::CookieContains(name, Needle::new(&value))
                } else {
                    Test::HeaderContains(header_name(&name, name_col)?, Needle::new(&value))
                };
                Ok(negate(positive, Expr::Test(test)))
            }
            "host" => {
                let positive = self.operator(POS, NEG)?;
                let v = self.value("a host")?;
                Ok(negate(positive, Expr::Test(Test::HostIs(v.to_ascii_lowercase()))))
            }
            "user-agent" | "user.agent" | "useragent" => {
                let positive = self.operator(POS, NEG)?;
                let v = self.value("a user agent")?;
                Ok(negate(positive, Expr::Test(Test::UserAgent(user_agent_alias(&v)))))
            }
            "path" => {
                let op_col = self.column();
                if self.peek().is_some_and(|t| is_kw(&t.tok, "prefix")) {
                    self.pos += 1;
                    let v = self.value("a path prefix")?;
                    return Ok(Expr::Test(Test::PathPrefix(v)));
                }
                let positive = self.operator(&["is"], &["not"]).map_err(|_| ParseError {
                    column: op_col,
                    message: "expected ==, != or prefix after path".into(),
                })?;
                let v = self.value("a path")?;
                Ok(negate(positive, Expr::Test(Test::PathIs(v))))
            }
            "method" => {
                let positive = self.operator(&["is"], &["not"])?;
                let v = self.value("a method")?;
                Ok(negate(positive, Expr::Test(Test::MethodIs(v.to_ascii_uppercase()))))
            }
            "source" => {
                let in_col = self.column();
                if !self.peek().is_some_and(|t| is_kw(&t.tok, "in")) {
                    return err(in_col, "expected 'in' after source");
                }
                self.pos += 1;
                let v_col = self.column();
                let v = self.value("a CIDR")?;
                let net = parse_net(&v).ok_or_else(|| ParseError {
                    column: v_col,
                    message: format!("invalid CIDR {v:?}"),
                })?;
                Ok(Expr::Test(Test::Source(vec![net])))
            }
            _ => err(column, format!(
                "unknown condition {w:?}: expected host, user-agent, cookie, header, path, method, source, has, misses, true, false, or a raw ACL in < >"
            )),
        }
    }
}

fn header_name(name: &str, column: usize) -> Result<HeaderName, ParseError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| ParseError {
        column,
        message: format!("invalid header name {name:?}"),
    })
}

fn parse_net(v: &str) -> Option<IpNet> {
    v.parse::<IpNet>()
        .ok()
        .or_else(|| v.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Vamp's user-agent aliases (case-insensitive names); anything else is a substring.
fn user_agent_alias(v: &str) -> Vec<Needle> {
    let parts: &[&str] = match v.to_ascii_lowercase().as_str() {
        "chrome" => &["Chrome"],
        "firefox" => &["Firefox"],
        "edge" => &["Edge"],
        "ie" => &["MSIE"],
        "safari" => &["Safari", "Version"],
        _ => return vec![Needle::new(v)],
    };
    parts.iter().map(|s| Needle::new(s)).collect()
}

/// Parses a raw HAProxy ACL; `column` is where its text starts in the condition.
fn parse_acl(text: &str, column: usize) -> Result<Acl, ParseError> {
    // Columns of each word, for errors.
    let mut words: Vec<(usize, &str)> = Vec::new();
    let mut offset = 0;
    for w in text.split_whitespace() {
        let at = text[offset..].find(w).map_or(offset, |p| p + offset);
        words.push((column + text[..at].chars().count(), w));
        offset = at + w.len();
    }
    let Some(&(fcol, fetch_text)) = words.first() else {
        return err(column, "empty raw ACL");
    };
    let lower = fetch_text.to_ascii_lowercase();
    let header_arg = |prefix: &str| -> Result<Option<HeaderName>, ParseError> {
        match lower.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')) {
            Some(name) => header_name(name, fcol).map(Some),
            None => Ok(None),
        }
    };
    let (fetch, mut matcher) = if lower == "path" {
        (Fetch::Path, Matcher::Str)
    } else if lower == "path_beg" {
        (Fetch::Path, Matcher::Beg)
    } else if lower == "path_end" {
        (Fetch::Path, Matcher::End)
    } else if lower == "path_sub" {
        (Fetch::Path, Matcher::Sub)
    } else if lower == "path_reg" {
        (Fetch::Path, Matcher::Reg)
    } else if lower == "method" {
        (Fetch::Method, Matcher::Str)
    } else if lower == "src" {
        (Fetch::Src, Matcher::Ip)
    } else if let Some(h) = header_arg("hdr(")? {
        (Fetch::Header(h), Matcher::Str)
    } else if let Some(h) = header_arg("hdr_beg(")? {
        (Fetch::Header(h), Matcher::Beg)
    } else if let Some(h) = header_arg("hdr_sub(")? {
        (Fetch::Header(h), Matcher::Sub)
    } else if let Some(h) = header_arg("hdr_reg(")? {
        (Fetch::Header(h), Matcher::Reg)
    } else {
        return err(fcol, format!(
            "unknown ACL fetch {fetch_text:?}: expected path, path_beg, path_end, path_sub, path_reg, hdr(N), hdr_beg(N), hdr_sub(N), hdr_reg(N), method or src"
        ));
    };
    let mut ignore_case = false;
    let mut rest = words[1..].iter().peekable();
    let mut values = Vec::new();
    while let Some(&(col, w)) = rest.next() {
        match w {
            "-i" if values.is_empty() => ignore_case = true,
            "-m" if values.is_empty() => {
                let Some(&(mcol, m)) = rest.next() else {
                    return err(col, "expected a match method after -m");
                };
                matcher = match (m, &fetch) {
                    ("found", _) => Matcher::Found,
                    ("str", Fetch::Src)
                    | ("beg", Fetch::Src)
                    | ("end", Fetch::Src)
                    | ("sub", Fetch::Src)
                    | ("reg", Fetch::Src) => return err(mcol, "src matches IP addresses only"),
                    ("str", _) => Matcher::Str,
                    ("beg", _) => Matcher::Beg,
                    ("end", _) => Matcher::End,
                    ("sub", _) => Matcher::Sub,
                    ("reg", _) => Matcher::Reg,
                    _ => {
                        return err(
                            mcol,
                            format!(
                            "unknown match method {m:?}: expected found, str, beg, end, sub or reg"
                        ),
                        )
                    }
                };
            }
            "--" if values.is_empty() => {}
            _ => values.push((col, w)),
        }
    }
    if matcher == Matcher::Found {
        if let Some(&(col, _)) = values.first() {
            return err(col, "-m found takes no value");
        }
    } else if values.is_empty() {
        return err(column + text.chars().count(), "expected a value to match");
    }
    let mut acl = Acl {
        fetch,
        matcher,
        ignore_case,
        values: Vec::new(),
        needles: Vec::new(),
        regexes: Vec::new(),
        nets: Vec::new(),
    };
    for (col, v) in values {
        match matcher {
            Matcher::Reg => {
                let pattern = if ignore_case {
                    format!("(?i){v}")
                } else {
                    v.to_string()
                };
                let re = Regex::new(&pattern).map_err(|e| ParseError {
                    column: col,
                    message: format!("invalid regex {v:?}: {e}"),
                })?;
                acl.regexes.push(re);
            }
            Matcher::Ip => acl.nets.push(parse_net(v).ok_or_else(|| ParseError {
                column: col,
                message: format!("invalid address or CIDR {v:?}"),
            })?),
            _ => {
                let v = if ignore_case {
                    v.to_ascii_lowercase()
                } else {
                    v.to_string()
                };
                acl.needles.push(Needle::new(&v));
                acl.values.push(v);
            }
        }
    }
    Ok(acl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
        assert!(parse("has cookie a").unwrap().uses_cookies());
        assert!(!parse("has header a").unwrap().uses_cookies());
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
