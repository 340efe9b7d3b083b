//! Any text given to the condition or rewrite parser gives a tree or an error, never a
//! panic; any parsed condition evaluates on a request without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../src/condition/mod.rs"]
mod condition;
#[allow(dead_code)]
#[path = "../../../src/rewrite.rs"]
mod rewrite;
#[allow(dead_code)]
#[path = "../../../src/vhost.rs"]
mod vhost;
#[path = "../../../src/suggest.rs"]
mod suggest;
#[allow(dead_code)]
#[path = "../../../src/request.rs"]
mod request;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", http::HeaderValue::from_static("Mozilla/5.0 Firefox/120.0"));
    headers.insert("cookie", http::HeaderValue::from_static("vamp=1; beta=yes"));
    headers.insert("x-a", http::HeaderValue::from_static("Alpha"));
    let req = condition::Request::new(b"a.test:80", "/v1/x", "GET", &headers, "10.0.0.1".parse().ok());
    if let Ok(expr) = condition::parse(text) {
        let _ = expr.eval(&req);
        let _ = condition::lint(text);
    }
    if let Ok(rw) = rewrite::compile(text) {
        let _ = rw.apply(&req, "/v1/x", Some("q=1"));
    }
});
