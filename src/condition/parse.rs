//! The condition parser: a lexer, a recursive-descent parser for Vamp's short codes and
//! boolean operators, raw HAProxy ACLs, and a lint for conditions that parse but look
//! misspelt. Everything that can be prepared is prepared here, once per config.

use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;
use regex::Regex;

use super::{Acl, Expr, Fetch, Matcher, Needle, ParseError, Test};

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
    if fetch.eq_ignore_ascii_case("path") {
        let values = std::iter::once(second).chain(rest.iter().copied());
        if let Some(re) = values
            .into_iter()
            .find(|v| v.starts_with('^') || v.ends_with('$'))
        {
            let re = re.to_string();
            return Some(format!(
                "`{re}` looks like a regular expression, but the raw ACL `path` compares whole paths exactly; did you mean `path_reg {re}`?"
            ));
        }
    }
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
            "client-cert-subject" | "ccs" => self.client_cert(),
            _ => err(column, format!(
                "unknown condition {w:?}: expected host, user-agent, cookie, header, path, method, source, client-cert-subject (ccs), has, misses, true, false, or a raw ACL in < >"
            )),
        }
    }
}

impl Parser {
    /// `ccs == V`, `ccs != V` (whole subject), `ccs contains V`, `ccs misses V`.
    fn client_cert(&mut self) -> Result<Expr, ParseError> {
        let column = self.column();
        let (positive, exact) = match self.next().map(|t| t.tok) {
            Some(Tok::Eq) => (true, true),
            Some(Tok::NotEq) => (false, true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("is") => (true, true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not") => (false, true),
            Some(Tok::Word(w))
                if w.eq_ignore_ascii_case("contains") || w.eq_ignore_ascii_case("has") =>
            {
                (true, false)
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("misses") => (false, false),
            _ => {
                return err(
                    column,
                    "expected an operator: ==, !=, is, not, contains, has, misses",
                )
            }
        };
        let v = self.value("a certificate subject")?;
        if let Some(t) = self.peek().filter(|t| t.tok == Tok::Eq) {
            return err(
                t.column,
                "quote the subject: it contains '=' (ccs == 'CN=alice,O=Example')",
            );
        }
        let test = if exact {
            Test::ClientCertIs(v)
        } else {
            Test::ClientCertContains(Needle::new(&v))
        };
        let e = Expr::Test(test);
        Ok(if positive { e } else { Expr::Not(Box::new(e)) })
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
