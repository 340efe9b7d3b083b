//! End-to-end traffic policy through the real `weir` binary (SPEC "Traffic policy"):
//! header rules, basic auth, per-route timeouts and retries, outlier ejection,
//! compression, mirroring.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn header_rules_set_add_and_remove_on_requests_and_responses() {
    let port = free_port();
    let up = Upstream::start("up");
    up.reply
        .set_headers(&[("server", "upstream/1.0"), ("x-internal", "secret")]);
    let yaml = |env: &str| {
        format!(
            "{}gateways:
  - name: g
    virtual_hosts: [h.test]
    request_headers: {{ set: {{ x-env: {env} }}, remove: [x-debug] }}
    response_headers: {{ set: {{ cache-control: no-store }}, remove: [server] }}
    routes:
      api:
        condition: path_beg /api
        instances: [\"{}\"]
        request_headers:
          set: {{ x-who: '%[hdr(x-user)]@%[src]', x-where: '%[path]?%[query]', x-id: 'id=%[request_id]' }}
          add: {{ x-tag: two }}
        response_headers: {{ remove: [x-internal], set: {{ x-served-by: 'weir for %[hdr(x-user)]' }} }}
      static:
        weight: 100%
        respond: {{ status: 200, body: ok }}
",
            http_listener(port),
            up.addr()
        )
    };
    let weir = Weir::start(&yaml("prod"), &[port]);
    let mut c = Client::connect(port);
    let r = c.get(
        "h.test",
        "/api/x?a=1",
        &[("x-user", "alice"), ("x-debug", "1"), ("x-tag", "one")],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-who"), Some("alice@127.0.0.1"));
    assert_eq!(seen.header("x-where"), Some("/api/x?a=1"));
    let id = seen.header("x-request-id").expect("a request id");
    assert_eq!(seen.header("x-id"), Some(format!("id={id}").as_str()));
    let tags: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-tag")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["one", "two"]);
    // Forwarding headers are weir's, after the rules.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-internal"), None);
    assert_eq!(r.header("x-served-by"), Some("weir for alice"));

    // A respond route gets the gateway's response rules too.
    let r = c.get("h.test", "/", &[]);
    assert_eq!(r.body, "ok");
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Rules change live; a rule on a framing header is refused and the old rules stay.
    std::fs::write(&weir.config, yaml("staging")).unwrap();
    assert!(within(Duration::from_secs(10), || {
        get(port, "h.test", "/api/y");
        up.last().header("x-env") == Some("staging")
    }));
    let bad = yaml("staging").replace("x-env: staging", "content-length: '3'");
    std::fs::write(&weir.config, &bad).unwrap();
    let out = weir_cmd(&["check", "-c", path_str(&weir.config)]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("gateway \"g\"")
            && text.contains("request_headers.set: \"content-length\" cannot be set or removed"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    get(port, "h.test", "/api/z");
    assert_eq!(up.last().header("x-env"), Some("staging"));
    assert_eq!(up.last().header("content-length"), None);
}
