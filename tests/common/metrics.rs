//! Prometheus text parsing, scraping the admin listener, and admin API requests.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};

use super::*;

/// Prometheus text → (series with labels → value). Checks every line parses.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), value);
    }
    out
}

pub fn scrape(admin: u16) -> HashMap<String, f64> {
    let r = get(admin, "localhost", "/metrics");
    assert_eq!(r.status, 200);
    parse_metrics(&r.body)
}

/// One admin API request, with an optional bearer token.
pub fn api(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let mut c = Client::connect(port);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.send_raw(req.as_bytes());
    c.read_response(method == "HEAD")
}

/// How many configs weir has refused (`weir_config_reloads_total{result="error"}`).
pub fn refused_reloads(admin: u16) -> f64 {
    scrape(admin)
        .get("weir_config_reloads_total{result=\"error\"}")
        .copied()
        .unwrap_or(0.0)
}

/// Waits until weir has refused a config more than `before`: what runs after this saw
/// the refusal happen, and still serves the config it had.
pub fn wait_refused_reload(admin: u16, before: f64) {
    assert!(
        super::within(std::time::Duration::from_secs(10), || refused_reloads(admin) > before),
        "weir never refused the config (weir_config_reloads_total{{result=\"error\"}} stayed {before})"
    );
}
