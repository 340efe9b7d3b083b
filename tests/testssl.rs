//! testssl.sh against a real weir TLS listener: no SSLv2/3, no TLS 1.0/1.1, no cipher
//! without forward secrecy, and none of its known vulnerabilities found. If testssl
//! cannot run, the test fails: `.ci/run` installs it (Debian's `testssl.sh`).

mod common;

use std::process::Command;

use common::*;

#[test]
fn testssl_finds_nothing_weak() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    ca(dir.path());
    leaf(dir.path(), "edge", "edge.test", &["edge.test"], false);
    let https = free_port();
    let yaml = format!(
        "listeners:
  https: {{ bind: \"127.0.0.1:{https}\", tls: {{ certificates: [ {{ cert: {}, key: {} }} ], default_certificate: 0 }} }}
gateways:
  - name: g
    virtual_hosts: [edge.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
",
        d("edge.pem"),
        d("edge.key")
    );
    let _weir = Weir::start(&yaml, &[https]);
    let json = d("testssl.json");
    let run = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--protocols",
            "--std",
            "--fs",
            "--vulnerable",
            "--jsonfile",
            &json,
        ])
        .arg(format!("127.0.0.1:{https}"))
        .output()
        .expect("testssl must be installed (apt-get install testssl.sh)");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no results ({e}): {}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl JSON");
    assert!(
        findings.len() > 20,
        "too few findings to mean anything: {text}"
    );
    let get = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("testssl reported no {id}: {text}"))
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let f = get(old);
        assert!(
            f["finding"].as_str().unwrap_or("").contains("not offered"),
            "{old}: {f}"
        );
    }
    for new in ["TLS1_2", "TLS1_3"] {
        assert!(
            get(new)["finding"]
                .as_str()
                .unwrap_or("")
                .starts_with("offered"),
            "{new}"
        );
    }
    for weak in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
    ] {
        assert!(
            get(weak)["finding"]
                .as_str()
                .unwrap_or("")
                .contains("not offered"),
            "{weak}"
        );
    }
    // The vulnerability checks ran (their absence would make the verdict below vacuous).
    for vuln in [
        "heartbleed",
        "CCS",
        "ticketbleed",
        "ROBOT",
        "secure_renego",
        "CRIME_TLS",
        "BREACH",
        "POODLE_SSL",
        "SWEET32",
        "FREAK",
        "DROWN",
        "LOGJAM",
        "BEAST",
        "LUCKY13",
        "RC4",
    ] {
        get(vuln);
    }
    assert!(
        get("PFS")["finding"]
            .as_str()
            .unwrap_or("")
            .contains("offered"),
        "forward secrecy"
    );
    // Anything testssl rates LOW or worse is a failure (it rates scan errors WARN/FATAL).
    let bad: Vec<&serde_json::Value> = findings
        .iter()
        .filter(|f| {
            let sev = f["severity"].as_str().unwrap_or("");
            ["LOW", "MEDIUM", "HIGH", "CRITICAL", "FATAL"].contains(&sev)
        })
        .collect();
    assert!(bad.is_empty(), "testssl found: {bad:#?}");
}
