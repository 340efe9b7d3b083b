//! Path rewrites: `path: NEW if COND`, split at the last ` if `. NEW is a
//! template of literal text and `%[path]`, `%[query]`, `%[hdr(NAME)]`,
//! `%[path,regsub(RE,REPL[,FLAGS])]` (HAProxy's forms: `\1` in REPL is a group, flag
//! `g` replaces every match, `i` ignores case). The query string is kept unless NEW sets
//! one. Templates and conditions are compiled when the snapshot is built.

use http::HeaderName;
use regex::Regex;

use crate::condition::{self, Expr, Request};

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Path,
    Query,
    Header(HeaderName),
    PathRegsub {
        re: Regex,
        replacement: String,
        all: bool,
    },
}

/// One compiled `rewrites:` entry.
#[derive(Debug, Clone)]
pub struct Rewrite {
    parts: Vec<Part>,
    condition: Expr,
}

/// Compiles `NEW if COND` (or just `NEW`, applied always).
pub fn compile(text: &str) -> Result<Rewrite, String> {
    let (template, condition) = match text.rfind(" if ") {
        Some(i) => {
            let cond_text = &text[i + 4..];
            let cond = condition::parse(cond_text)
                .map_err(|e| format!("rewrite {text:?}: condition {cond_text:?}: {e}"))?;
            (&text[..i], cond)
        }
        None => (text, Expr::Const(true)),
    };
    let template = template.trim();
    if template.is_empty() {
        return Err(format!("rewrite {text:?}: empty path"));
    }
    let parts = parse_template(template).map_err(|e| format!("rewrite {text:?}: {e}"))?;
    if !matches!(parts.first(), Some(Part::Path | Part::PathRegsub { .. }))
        && !matches!(parts.first(), Some(Part::Lit(l)) if l.starts_with('/'))
    {
        return Err(format!(
            "rewrite {text:?}: the new path must start with / or %[path]"
        ));
    }
    Ok(Rewrite { parts, condition })
}

/// The end of a `%[...]` expression that starts at `start` (just after `%[`).
fn expression_end(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in chars.iter().enumerate().skip(start) {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | '}' => depth -= 1,
            ']' if depth == 0 => return Some(i),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Splits `a,b,c` at commas outside brackets and parentheses.
fn split_args(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0i32;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            push(&mut out, c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                push(&mut out, c);
                continue;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        push(&mut out, c);
    }
    out
}

fn push(args: &mut [String], c: char) {
    if let Some(last) = args.last_mut() {
        last.push(c);
    }
}

/// HAProxy's `\1` groups become the regex crate's `${1}`; a literal `$` is escaped.
fn replacement(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let d = chars.next().unwrap_or('0');
                out.push_str(&format!("${{{d}}}"));
            }
            '\\' => out.push(chars.next().unwrap_or('\\')),
            '$' => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

fn parse_expression(expr: &str) -> Result<Part, String> {
    let e = expr.trim();
    match e {
        "path" => return Ok(Part::Path),
        "query" => return Ok(Part::Query),
        _ => {}
    }
    if let Some(name) = e.strip_prefix("hdr(").and_then(|r| r.strip_suffix(')')) {
        return HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map(Part::Header)
            .map_err(|_| format!("invalid header name {name:?}"));
    }
    if let Some(args) = e
        .strip_prefix("path,regsub(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let args = split_args(args);
        let (re, repl, flags) = match args.as_slice() {
            [re, repl] => (re, repl, ""),
            [re, repl, flags] => (re, repl, flags.as_str()),
            _ => return Err(format!("regsub takes (REGEX,REPLACEMENT[,FLAGS]): {e:?}")),
        };
        if let Some(bad) = flags.chars().find(|f| !"gi".contains(*f)) {
            return Err(format!("regsub: unknown flag {bad:?} (g and i are known)"));
        }
        let pattern = if flags.contains('i') {
            format!("(?i){re}")
        } else {
            re.clone()
        };
        let re = Regex::new(&pattern).map_err(|err| format!("invalid regex {re:?}: {err}"))?;
        return Ok(Part::PathRegsub {
            re,
            replacement: replacement(repl),
            all: flags.contains('g'),
        });
    }
    Err(format!(
        "unknown expression %[{e}]: expected path, query, hdr(NAME) or path,regsub(RE,REPL)"
    ))
}

fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let chars: Vec<char> = template.chars().collect();
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '%' && chars.get(i + 1) == Some(&'[') {
            let end = expression_end(&chars, i + 2)
                .ok_or_else(|| format!("unterminated %[ at column {}", i + 1))?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            let expr: String = chars[i + 2..end].iter().collect();
            parts.push(parse_expression(&expr)?);
            i = end + 1;
        } else {
            lit.push(chars[i]);
            i += 1;
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

impl Rewrite {
    /// The new path and query for a request whose path is `path` (and query `query`),
    /// or `None` when the condition does not match.
    pub fn apply(&self, req: &Request, path: &str, query: Option<&str>) -> Option<String> {
        if !self.condition.eval(req) {
            return None;
        }
        let mut out = String::with_capacity(path.len() + 16);
        for part in &self.parts {
            match part {
                Part::Lit(l) => out.push_str(l),
                Part::Path => out.push_str(path),
                Part::Query => out.push_str(query.unwrap_or("")),
                Part::Header(name) => {
                    if let Some(v) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                        out.push_str(v);
                    }
                }
                Part::PathRegsub {
                    re,
                    replacement,
                    all,
                } => {
                    if *all {
                        out.push_str(&re.replace_all(path, replacement.as_str()));
                    } else {
                        out.push_str(&re.replace(path, replacement.as_str()));
                    }
                }
            }
        }
        if !out.contains('?') {
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
        }
        Some(out)
    }
}

/// Runs a route's rewrites in order on a request: each sees the path (and query) the
/// ones before it produced, and the request as `req` otherwise shows it. Returns the new
/// path and query, or `None` when no rewrite applied.
pub fn apply_all(
    rewrites: &[Rewrite],
    req: &Request,
    path: &str,
    query: Option<&str>,
) -> Option<String> {
    let mut current: Option<String> = None;
    for rw in rewrites {
        let (path, query) = match &current {
            Some(pq) => pq
                .split_once('?')
                .map_or((pq.as_str(), None), |(p, q)| (p, Some(q))),
            None => (path, query),
        };
        let view = Request::new(req.host, path, req.method, req.headers, req.client);
        if let Some(next) = rw.apply(&view, path, query) {
            current = Some(next);
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn run(rule: &str, path: &str, query: Option<&str>) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        let r = compile(rule).unwrap_or_else(|e| panic!("{e}"));
        let req = Request::new(b"a.test", path, "GET", &headers, None);
        r.apply(&req, path, query)
    }

    #[test]
    fn spec_example_regsub_if_path_beg() {
        let rule = "%[path,regsub(^/v1,/api)] if path_beg /v1";
        assert_eq!(run(rule, "/v1/users", None).as_deref(), Some("/api/users"));
        assert_eq!(
            run(rule, "/v1/users", Some("a=1")).as_deref(),
            Some("/api/users?a=1")
        );
        assert_eq!(run(rule, "/v2/users", None), None);
    }

    #[test]
    fn templates() {
        assert_eq!(
            run("/x if path_beg /y", "/y/z", Some("q=1")).as_deref(),
            Some("/x?q=1")
        );
        assert_eq!(
            run("/new?fixed=1 if true", "/old", Some("q=1")).as_deref(),
            Some("/new?fixed=1")
        );
        assert_eq!(
            run("/t/%[hdr(X-Tenant)]%[path]", "/p", None).as_deref(),
            Some("/t/acme/p")
        );
        assert_eq!(
            run("%[path]?%[query]&v=2", "/p", Some("a=1")).as_deref(),
            Some("/p?a=1&v=2")
        );
        assert_eq!(
            run("%[path,regsub(^/u/([0-9]+)/x,/users/\\1)]", "/u/42/x", None).as_deref(),
            Some("/users/42")
        );
        assert_eq!(
            run("%[path,regsub(o,0,g)]", "/foo/bo", None).as_deref(),
            Some("/f00/b0")
        );
        assert_eq!(
            run("%[path,regsub(o,0)]", "/foo", None).as_deref(),
            Some("/f0o")
        );
        assert_eq!(
            run("%[path,regsub(^/A,/b,i)]", "/a/c", None).as_deref(),
            Some("/b/c")
        );
        assert_eq!(
            run("%[path,regsub([0-9]{2,3},N)]", "/x1234", None).as_deref(),
            Some("/xN4")
        );
        // The last " if " splits: a template may itself contain " if ".
        assert_eq!(
            run("/a if b if path_beg /", "/z", None).as_deref(),
            Some("/a if b")
        );
    }

    #[test]
    fn errors() {
        for (rule, want) in [
            ("%[nope] if true", "unknown expression"),
            ("%[path,regsub(a{2,1},x)]", "invalid regex"),
            ("/x if user-agent ==", "column"),
            ("x if true", "must start with /"),
            ("%[path", "unterminated"),
            ("%[path,regsub(a,b,z)]", "unknown flag"),
        ] {
            let e = compile(rule).expect_err(rule);
            assert!(e.contains(want), "{rule}: {e}");
        }
    }

    #[test]
    fn apply_all_runs_in_order_on_the_previous_result() {
        let rws = vec![
            compile("%[path,regsub(^/v1,/api)] if path_beg /v1").unwrap(),
            compile("/svc%[path]?x=1 if path_beg /api").unwrap(),
            compile("/never if path_beg /v1").unwrap(),
        ];
        let headers = http::HeaderMap::new();
        let req = Request::new(b"a.test", "/v1/items", "GET", &headers, None);
        assert_eq!(
            apply_all(&rws, &req, "/v1/items", Some("q=2")).as_deref(),
            Some("/svc/api/items?x=1")
        );
        let other = Request::new(b"a.test", "/other", "GET", &headers, None);
        assert_eq!(apply_all(&rws, &other, "/other", None), None);
    }
}
