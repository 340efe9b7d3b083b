//! Gateway API writes: `POST` (create), `PUT` (replace), `PATCH` (JSON merge patch)
//! and `DELETE`, on gateways, never on files.
//!
//! A write acts on the gateway's own file: the one it lives in when that file holds it
//! alone (a new gateway gets `gateways.d/{name}.yaml` beside the main config, however
//! `-c` was spelled). A gateway in the main file or sharing its file with others is not
//! rewritten (409, naming the file): the operator's file is never lost. Each write loads
//! the config once, changes it in memory, builds it once (off the async thread), writes
//! the file atomically and swaps the snapshot in; a write that does not validate leaves
//! disk and service as they were. Every write is logged to the `weir::audit` target
//! with the peer, the gateway and what changed.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};
use pingora::protocols::http::ServerSession;
use serde_json::Value;

use super::{document, form, message, read_body, view, Admin};
use crate::config::load::{load, parse_gateway_file, Loaded};
use crate::config::shape::{self, Kind, Totals};
use crate::config::GatewayConfig;
use crate::diag::{Diagnostic, Diagnostics};
use crate::reload::{record, Reloader};
use crate::store::etcd::{self, Written};
use crate::store::{Change, Doc, Fleet, Settings};

/// Where the API keeps the gateways it creates, beside the main config.
const GATEWAYS_DIR: &str = "gateways.d";
/// Changed fields listed in one audit line.
const AUDIT_FIELDS: usize = 20;

type Reply = Response<Vec<u8>>;

/// One write.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Create,
    Replace(String),
    Patch(String),
    Delete(String),
}

impl Op {
    fn verb(&self) -> &'static str {
        match self {
            Op::Create => "POST",
            Op::Replace(_) => "PUT",
            Op::Patch(_) => "PATCH",
            Op::Delete(_) => "DELETE",
        }
    }
}

impl Admin {
    /// Reads the body, then does the write on a blocking thread (loading and building
    /// are CPU and file work), one write at a time.
    pub(super) async fn write(&self, session: &mut ServerSession, op: Op) -> Reply {
        let if_match = match if_match(session) {
            Ok(r) => r,
            Err(r) => return r,
        };
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let peer = session
            .client_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let reloader = self.reloader.clone();
        let writes = self.writes.clone();
        let done = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = writes.lock().unwrap_or_else(|e| e.into_inner());
            match &reloader.fleet {
                Some(fleet) => perform_in_store(&reloader, fleet, &op, &body, &peer, if_match),
                None => perform(&reloader, &op, &body, &peer),
            }
        })
        .await;
        match done {
            Ok(reply) => reply.unwrap_or_else(|r| r),
            Err(e) => message(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("write failed: {e}"),
            ),
        }
    }
}

/// The file a write goes to, the gateway's new text (none: removed), and what changed.
struct Plan {
    name: String,
    file: PathBuf,
    text: Option<String>,
    change: String,
}

impl Plan {
    /// `current` replaced by `next` in `file`, whose new text is `text`.
    fn replacing(
        current: &GatewayConfig,
        next: GatewayConfig,
        file: PathBuf,
        text: String,
    ) -> Plan {
        Plan {
            change: changes(current, &next),
            text: Some(text),
            name: next.name,
            file,
        }
    }
}

/// A file as the operator wrote it: its text, and its one document's values.
struct AsWritten<'a> {
    text: &'a str,
    doc: serde_yaml::Value,
}

impl<'a> AsWritten<'a> {
    /// `file` as loaded, when it is one YAML document holding one gateway.
    fn of(loaded: &'a Loaded, file: &Path) -> Option<AsWritten<'a>> {
        let text = &loaded.files.iter().find(|f| f.path == file)?.text;
        let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
        form::gateway_of(&doc)?;
        Some(AsWritten { text, doc })
    }

    /// The file's text with its gateway's values become `gateway`.
    fn becoming(&self, gateway: serde_yaml::Value, given: Option<&str>) -> Result<String, Reply> {
        let after = form::with_gateway(&self.doc, gateway);
        form::text_for(Some((self.text, &self.doc)), &after, given).map_err(internal)
    }
}

/// A request body's gateway as values, and its text when it is YAML (a JSON body is
/// written as YAML).
fn body_form(body: &[u8]) -> Option<(serde_yaml::Value, Option<&str>)> {
    let text = std::str::from_utf8(body).ok()?;
    let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let yaml = !text.trim_start().starts_with('{');
    Some((value, yaml.then_some(text)))
}

/// The new text of a gateway written from a request body, in its own form.
fn body_text(body: &[u8], before: Option<&AsWritten>, g: &GatewayConfig) -> Result<String, Reply> {
    match (body_form(body), before) {
        (Some((value, given)), Some(w)) => w.becoming(value, given),
        (Some((value, given)), None) => form::text_for(None, &value, given).map_err(internal),
        (None, _) => to_yaml(g),
    }
}

fn internal(e: impl std::fmt::Display) -> Reply {
    message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `If-Match: "REVISION"`: the store revision a write expects the gateway at.
fn if_match(session: &ServerSession) -> Result<Option<i64>, Reply> {
    let Some(v) = session.req_header().headers.get(http::header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|r| *r >= 0)
        .map(Some)
        .ok_or_else(|| {
            message(
                StatusCode::BAD_REQUEST,
                "If-Match must be a gateway's ETag, a store revision such as \"12\"",
            )
        })
}

/// A write with `config_source: etcd`: validated against the config in service, written
/// to the store with a compare-and-swap on the key's revision (the `If-Match` one, else
/// the one this weir last saw), then applied here; the other weirs take it from their
/// watch.
fn perform_in_store(
    reloader: &Reloader,
    fleet: &Fleet,
    op: &Op,
    body: &[u8],
    peer: &str,
    if_match: Option<i64>,
) -> Result<Reply, Reply> {
    let started = Instant::now();
    let settings = &fleet.settings;
    let loaded = reloader.applied();
    let plan = plan(&loaded, op, body, Some(settings))?;
    let next = loaded
        .with_file(&plan.file, plan.text.as_deref())
        .map_err(|d| message(StatusCode::BAD_REQUEST, d.to_string()))?;
    reloader
        .validate(&next)
        .map_err(|d| message(StatusCode::BAD_REQUEST, d.to_string()))?;
    let expected = if_match.unwrap_or_else(|| fleet.stored_revision(&plan.name));
    let text = plan.text.as_deref();
    let written = etcd::block_on(async {
        let client = etcd::connect(settings).await?;
        etcd::write(&client, settings, &plan.name, text, expected).await
    })
    .and_then(|r| r)
    .map_err(|e| {
        message(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("config store: {e}"),
        )
    })?;
    let revision = match written {
        Written::Done(r) => r,
        Written::Lost(now) => {
            return Err(message(
                StatusCode::CONFLICT,
                format!(
                    "gateway {:?} is at store revision {now}, not {expected}: someone else changed it; read it again and retry",
                    plan.name
                ),
            ))
        }
    };
    let change = Change {
        name: plan.name.clone(),
        doc: plan.text.as_deref().map(|t| Doc {
            text: t.into(),
            revision,
        }),
    };
    let result = reloader.store_changed(&[change], revision, false);
    record(&result, "admin API", started);
    audit(peer, op, &plan, &format!(" at revision {revision}"));
    let snapshot = reloader.current.load();
    let mut reply = match snapshot.gateway_by_name(&plan.name) {
        Some(i) if text.is_some() => {
            document(StatusCode::ACCEPTED, &view(&snapshot.gateways[i]), false)
        }
        _ => message(
            StatusCode::ACCEPTED,
            format!("gateway {:?} deleted", plan.name),
        ),
    };
    if text.is_some() {
        super::set_etag(&mut reply, revision);
    }
    Ok(reply)
}

fn perform(reloader: &Reloader, op: &Op, body: &[u8], peer: &str) -> Result<Reply, Reply> {
    let started = Instant::now();
    let dir = reloader.path.parent().unwrap_or(Path::new("."));
    let loaded = load(&reloader.path).map_err(|d| {
        message(
            StatusCode::CONFLICT,
            format!(
                "the config on disk does not load, fix it first: {}",
                d.relative_to(dir)
            ),
        )
    })?;
    let plan = plan(&loaded, op, body, None)?;
    let next = loaded
        .with_file(&plan.file, plan.text.as_deref())
        .map_err(|d| message(StatusCode::BAD_REQUEST, d.relative_to(dir).to_string()))?;
    // The file is written after the build succeeded and before the swap: a write that
    // fails leaves the running config as it was.
    let failed_write = RefCell::new(None);
    let result = reloader.apply_loaded(next, |_| {
        persist(&plan.file, plan.text.as_deref()).map_err(|e| {
            *failed_write.borrow_mut() = Some(e.clone());
            Diagnostics::from(Diagnostic::new(&plan.file, e))
        })
    });
    record(&result, "admin API", started);
    if let Err(d) = result {
        return Err(match failed_write.into_inner() {
            Some(e) => message(StatusCode::INTERNAL_SERVER_ERROR, e),
            None => message(StatusCode::BAD_REQUEST, d.relative_to(dir).to_string()),
        });
    }
    audit(peer, op, &plan, "");
    let snapshot = reloader.current.load();
    Ok(match snapshot.gateway_by_name(&plan.name) {
        Some(i) => document(StatusCode::ACCEPTED, &view(&snapshot.gateways[i]), false),
        None => message(
            StatusCode::ACCEPTED,
            format!("gateway {:?} deleted", plan.name),
        ),
    })
}

/// The `weir::audit` line of a write: who, what, where (`at`: e.g. the store revision).
fn audit(peer: &str, op: &Op, plan: &Plan, at: &str) {
    log::info!(
        target: "weir::audit",
        "{peer} {} gateway {:?} in {}{at}: {}",
        op.verb(),
        plan.name,
        plan.file.display(),
        plan.change
    );
}

/// What a write changes; `store`: gateways live in the config store.
fn plan(loaded: &Loaded, op: &Op, body: &[u8], store: Option<&Settings>) -> Result<Plan, Reply> {
    match op {
        Op::Create => {
            let g = parse_body(body)?;
            if !crate::config::units::valid_name(&g.name) {
                // It would name a file or a store key: refused before anything else.
                return Err(message(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid gateway name {:?}: must match {}",
                        g.name,
                        crate::config::units::NAME_PATTERN
                    ),
                ));
            }
            if loaded.config.gateways.iter().any(|o| o.name == g.name) {
                return Err(message(
                    StatusCode::CONFLICT,
                    format!("gateway {:?} exists: PUT or PATCH to change it", g.name),
                ));
            }
            let text = body_text(body, None, &g)?;
            if let Some(settings) = store {
                return Ok(Plan {
                    text: Some(text),
                    file: settings.doc_path(&g.name),
                    name: g.name,
                    change: "created".into(),
                });
            }
            let file = loaded
                .base_dir
                .join(GATEWAYS_DIR)
                .join(format!("{}.yaml", g.name));
            if !loaded.is_included(&file) {
                return Err(message(
                    StatusCode::CONFLICT,
                    format!("the main config does not include {GATEWAYS_DIR}/*.yaml, where the API keeps gateways"),
                ));
            }
            if file.exists() {
                return Err(message(
                    StatusCode::CONFLICT,
                    format!(
                        "{} exists and holds other gateways: edit that file",
                        shown(loaded, &file)
                    ),
                ));
            }
            Ok(Plan {
                text: Some(text),
                name: g.name,
                file,
                change: "created".into(),
            })
        }
        Op::Replace(name) => {
            let (current, file) = own_file(loaded, name, store)?;
            let g = parse_body(body)?;
            if g.name != *name {
                return Err(message(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the name in the path ({name:?}) differs from the body's ({:?})",
                        g.name
                    ),
                ));
            }
            let text = body_text(body, AsWritten::of(loaded, &file).as_ref(), &g)?;
            Ok(Plan::replacing(current, g, file, text))
        }
        Op::Patch(name) => {
            let (current, file) = own_file(loaded, name, store)?;
            let patch: Value = serde_json::from_slice(body).map_err(|e| {
                message(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                )
            })?;
            // Patched as the operator wrote it (short forms, no defaults), when the
            // file is one plain document; else in weir's own form.
            let written = AsWritten::of(loaded, &file);
            let mut doc = match written.as_ref().and_then(|w| form::gateway_of(&w.doc)) {
                Some(as_written) => serde_json::to_value(as_written).map_err(internal)?,
                None => serde_json::to_value(current).map_err(internal)?,
            };
            merge_patch(&mut doc, &patch);
            let g: GatewayConfig = serde_json::from_value(doc.clone()).map_err(|e| {
                message(StatusCode::BAD_REQUEST, format!("the patched gateway: {e}"))
            })?;
            if g.name != *name {
                return Err(message(
                    StatusCode::BAD_REQUEST,
                    "a patch cannot rename a gateway",
                ));
            }
            let text = match &written {
                Some(w) => w.becoming(serde_yaml::to_value(&doc).map_err(internal)?, None)?,
                None => to_yaml(&g)?,
            };
            Ok(Plan::replacing(current, g, file, text))
        }
        Op::Delete(name) => {
            let (_, file) = own_file(loaded, name, store)?;
            Ok(Plan {
                name: name.clone(),
                file,
                text: None,
                change: "deleted".into(),
            })
        }
    }
}

/// The gateway named `name` and its file, when that file is the gateway's alone.
fn own_file<'a>(
    loaded: &'a Loaded,
    name: &str,
    store: Option<&Settings>,
) -> Result<(&'a GatewayConfig, PathBuf), Reply> {
    let Some(g) = loaded.config.gateways.iter().find(|g| g.name == name) else {
        return Err(message(
            StatusCode::NOT_FOUND,
            format!("no gateway {name:?} (POST creates one)"),
        ));
    };
    if let Some(settings) = store {
        // One gateway per key: a stored gateway is always alone in its document.
        return match settings.doc_name(&g.source) {
            Some(_) => Ok((g, g.source.clone())),
            None => Err(message(
                StatusCode::CONFLICT,
                format!(
                    "gateway {name:?} is defined in {} on this machine; the API writes the gateways in the config store only: edit that file",
                    shown(loaded, &g.source)
                ),
            )),
        };
    }
    if g.source == loaded.main {
        return Err(message(
            StatusCode::CONFLICT,
            format!(
                "gateway {name:?} is defined in the main config file {}: edit that file",
                shown(loaded, &loaded.main)
            ),
        ));
    }
    // The loader reads each file once, under one path: equal paths are the same file.
    let others = loaded
        .config
        .gateways
        .iter()
        .filter(|o| o.name != name && o.source == g.source)
        .count();
    if others > 0 {
        return Err(message(
            StatusCode::CONFLICT,
            format!(
                "gateway {name:?} shares {} with {others} other gateway(s): edit that file",
                shown(loaded, &g.source)
            ),
        ));
    }
    Ok((g, g.source.clone()))
}

/// A file as an API answer names it: relative to the config directory (a client of
/// the API need not learn the machine's layout), or as it is when outside it.
fn shown(loaded: &Loaded, path: &Path) -> String {
    path.strip_prefix(&loaded.base_dir)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A body holding exactly one gateway (YAML or JSON), bounded like a file.
fn parse_body(body: &[u8]) -> Result<GatewayConfig, Reply> {
    let text = std::str::from_utf8(body)
        .map_err(|_| message(StatusCode::BAD_REQUEST, "the body is not UTF-8"))?;
    let source = Path::new("request body");
    shape::measure(source, text, Kind::Gateways, &mut Totals::default())
        .map_err(|d| message(StatusCode::BAD_REQUEST, d.to_string()))?;
    let mut errors = Diagnostics::default();
    let mut parsed = parse_gateway_file(source, text, &mut errors);
    if !errors.is_empty() {
        return Err(message(StatusCode::BAD_REQUEST, errors.to_string()));
    }
    match (parsed.pop(), parsed.is_empty()) {
        (Some(g), true) => Ok(Arc::unwrap_or_clone(g)),
        _ => Err(message(
            StatusCode::BAD_REQUEST,
            "the body must hold exactly one gateway",
        )),
    }
}

fn to_yaml(g: &GatewayConfig) -> Result<String, Reply> {
    serde_yaml::to_string(g).map_err(|e| message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Writes a temp file beside `path` and renames it over (readers see all or nothing),
/// or removes `path`.
fn persist(path: &Path, content: Option<&str>) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let Some(content) = content else {
        return std::fs::remove_file(path).map_err(fail);
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("gateway".into(), |n| n.to_string_lossy())
    ));
    std::fs::write(&tmp, content).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes, anything else
/// replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in fields {
            if value.is_null() {
                map.shift_remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// What differs between two versions of a gateway, as `path: old -> new` items.
fn changes(old: &GatewayConfig, new: &GatewayConfig) -> String {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return "replaced".into();
    };
    let mut out = Vec::new();
    diff(&a, &b, &mut String::new(), &mut out);
    if out.is_empty() {
        return "no change".into();
    }
    let more = out.len().saturating_sub(AUDIT_FIELDS);
    out.truncate(AUDIT_FIELDS);
    let mut text = out.join(", ");
    if more > 0 {
        text.push_str(&format!(" (+{more} more)"));
    }
    text
}

fn diff(a: &Value, b: &Value, path: &mut String, out: &mut Vec<String>) {
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            let none = Value::Null;
            diff(
                x.get(key).unwrap_or(&none),
                y.get(key).unwrap_or(&none),
                path,
                out,
            );
            path.truncate(len);
        }
    } else if a != b {
        out.push(format!("{path}: {a} -> {b}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "routes": {"x": 1, "y": 2}});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "routes": {"y": 3, "w": 4}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "routes": {"x": 1, "y": 3, "w": 4}})
        );
        // Route order is kept (routes are evaluated in order).
        let keys: Vec<&String> = doc["routes"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["x", "y", "w"]);
        let mut scalar = json!({"a": 1});
        merge_patch(&mut scalar, &json!([1, 2]));
        assert_eq!(scalar, json!([1, 2]));
    }

    #[test]
    fn changes_name_the_fields() {
        let parse = |t: &str| serde_yaml::from_str::<GatewayConfig>(t).unwrap();
        let a = parse("name: g\nroutes:\n  a: { weight: 90%, respond: {status: 200} }\n  b: { weight: 10%, respond: {status: 200} }\n");
        let b = parse("name: g\nroutes:\n  a: { weight: 80%, respond: {status: 200} }\n  b: { weight: 20%, respond: {status: 200} }\n");
        assert_eq!(
            changes(&a, &b),
            "routes.a.weight: \"90%\" -> \"80%\", routes.b.weight: \"10%\" -> \"20%\""
        );
        assert_eq!(changes(&a, &a), "no change");
    }
}
