//! A streaming pre-pass over a config file's YAML, before it is deserialized: one pass
//! over the parser's events, in memory proportional to nesting depth, that measures
//! what the file would become and refuses it before anything large is built.
//!
//! - **Alias expansion.** An alias repeats its anchor's whole subtree, so a few hundred
//!   bytes of `*a` can stand for gigabytes once deserialized (a "billion laughs"
//!   document). Each anchor's expanded size is remembered as it closes; an alias adds
//!   that size. A file that expands far beyond its text is refused.
//! - **Size.** Nodes (scalars, sequences, mappings) over all files are bounded: the
//!   deserializer holds every event of a document at once, so the node count bounds its
//!   memory whatever the byte size.
//! - **Counts.** Gateways, routes and instances are counted by where they stand (items
//!   of `gateways:` in the main file, or the documents of an included file; the keys of
//!   a gateway's `routes:`; the items of a route's `instances:`).
//!
//! The exact checks still run on the parsed config; this pass exists so that what they
//! check is never built at an attacker's size. A document this pass cannot read is left
//! to the real parser, which reports the error with its position.

use std::path::Path;

use saphyr_parser::{Event, Parser};

use crate::config::load::{MAX_GATEWAYS, MAX_INSTANCES, MAX_ROUTES};
use crate::diag::Diagnostic;

/// Nodes all config files together may hold (expanded). A node costs a few hundred bytes
/// while its document is deserialized.
pub const MAX_NODES: u64 = 4_000_000;
/// A file without anchors up to this size is not walked: it cannot expand, and it holds
/// at most one node per byte, which is counted instead.
const UNWALKED_BYTES: u64 = 1 << 20;
/// A file may expand to this many nodes per byte of its text (plus a floor) before its
/// aliases are called a bomb.
const NODES_PER_BYTE: u64 = 4;
const NODES_FLOOR: u64 = 100_000;

/// What a file holds: the main config, or gateways (an included file, an API body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Main,
    Gateways,
}

/// Running totals over the files of one config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub nodes: u64,
    pub gateways: u64,
    pub routes: u64,
    pub instances: u64,
}

enum Frame {
    /// A mapping: the key being read or last read, and whether a key comes next.
    Map {
        key: Option<String>,
        expecting_key: bool,
        start: u64,
        anchor: usize,
    },
    Seq {
        start: u64,
        anchor: usize,
    },
}

impl Frame {
    fn key_is(&self, want: &str) -> bool {
        matches!(self, Frame::Map { key: Some(k), .. } if k == want)
    }
}

/// What a node stands for, by where it is.
#[derive(PartialEq)]
enum Role {
    Gateway,
    Route,
    Instance,
    Other,
}

/// The role of a node about to open at the top of `stack` (`opens_map`: a mapping).
fn role(stack: &[Frame], kind: Kind, opens_map: bool) -> Role {
    let g = match (kind, stack.first()) {
        (Kind::Main, Some(f)) if f.key_is("gateways") => match stack.get(1) {
            Some(Frame::Seq { .. }) => 2,
            _ => return Role::Other,
        },
        (Kind::Main, _) => return Role::Other,
        (Kind::Gateways, Some(Frame::Seq { .. })) => 1,
        (Kind::Gateways, _) => 0,
    };
    let depth = stack.len();
    let is_map = |i: usize| matches!(stack.get(i), Some(Frame::Map { .. }));
    if depth == g {
        // A file's root is a gateway when it is a mapping (a list holds gateways).
        return if g > 0 || opens_map {
            Role::Gateway
        } else {
            Role::Other
        };
    }
    let in_routes = stack.get(g).is_some_and(|f| f.key_is("routes")) && is_map(g + 1);
    if depth == g + 2 && in_routes {
        return Role::Route;
    }
    let in_instances = in_routes
        && stack.get(g + 2).is_some_and(|f| f.key_is("instances"))
        && matches!(stack.get(g + 3), Some(Frame::Seq { .. }));
    if depth == g + 4 && in_instances {
        return Role::Instance;
    }
    Role::Other
}

/// Measures `text` (read from `file`) into `totals`; refuses it when it expands far
/// beyond its size or takes a total over its bound. A small file without anchors is
/// counted by its size (an upper bound on its nodes) instead of walked: the walk costs
/// about as much as the parse itself.
pub fn measure(file: &Path, text: &str, kind: Kind, totals: &mut Totals) -> Result<(), Diagnostic> {
    let len = text.len() as u64;
    if len <= UNWALKED_BYTES && totals.nodes + len <= MAX_NODES && !text.contains('&') {
        totals.nodes += len;
        return Ok(());
    }
    scan(file, text, kind, totals)
}

/// Walks `text`: see [`measure`].
pub fn scan(file: &Path, text: &str, kind: Kind, totals: &mut Totals) -> Result<(), Diagnostic> {
    let budget = NODES_FLOOR + NODES_PER_BYTE * text.len() as u64;
    let start_nodes = totals.nodes;
    let mut anchors: Vec<u64> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let refuse = |message: String| Err(Diagnostic::new(file, message));
    for event in Parser::new_from_str(text) {
        let Ok((event, _)) = event else {
            // Left to the real parser, which says where and why.
            return Ok(());
        };
        let (size, anchor, opens) = match &event {
            Event::Scalar(_, _, anchor, _) => (1, *anchor, None),
            Event::Alias(id) => (anchors.get(*id).copied().unwrap_or(1).max(1), 0, None),
            Event::SequenceStart(anchor, _) => (1, *anchor, Some(false)),
            Event::MappingStart(anchor, _) => (1, *anchor, Some(true)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (start, anchor) = match stack.pop() {
                    Some(Frame::Map { start, anchor, .. } | Frame::Seq { start, anchor }) => {
                        (start, anchor)
                    }
                    None => continue,
                };
                remember(&mut anchors, anchor, totals.nodes - start);
                value_done(&mut stack);
                continue;
            }
            Event::DocumentEnd => {
                stack.clear();
                continue;
            }
            _ => continue,
        };
        // A mapping key: remember it (scalar keys only) and read its value next.
        if let Some(Frame::Map {
            key,
            expecting_key: expecting @ true,
            ..
        }) = stack.last_mut()
        {
            *key = match &event {
                Event::Scalar(k, ..) if k.len() <= 64 => Some(k.to_string()),
                _ => None,
            };
            *expecting = false;
            totals.nodes += size;
            if let Some(is_map) = opens {
                push(&mut stack, is_map, totals.nodes - 1, anchor);
            }
            continue;
        }
        match role(&stack, kind, opens == Some(true)) {
            Role::Gateway => totals.gateways += 1,
            Role::Route => totals.routes += 1,
            Role::Instance => totals.instances += 1,
            Role::Other => {}
        }
        totals.nodes += size;
        match opens {
            Some(is_map) => push(&mut stack, is_map, totals.nodes - 1, anchor),
            None => {
                remember(&mut anchors, anchor, 1);
                value_done(&mut stack);
            }
        }
        let nodes = totals.nodes - start_nodes;
        if nodes > budget {
            return refuse(format!(
                "YAML aliases expand this file to more than {budget} nodes ({} bytes of text): refused",
                text.len()
            ));
        }
        let over = |what: &str, n: u64, max: u64| {
            (n > max).then(|| format!("too many {what}: more than {max} in all"))
        };
        if let Some(m) = over("gateways", totals.gateways, MAX_GATEWAYS as u64)
            .or_else(|| over("routes", totals.routes, MAX_ROUTES as u64))
            .or_else(|| over("instances", totals.instances, MAX_INSTANCES as u64))
            .or_else(|| over("YAML nodes (scalars, lists, maps)", totals.nodes, MAX_NODES))
        {
            return refuse(m);
        }
    }
    Ok(())
}

fn push(stack: &mut Vec<Frame>, is_map: bool, start: u64, anchor: usize) {
    stack.push(if is_map {
        Frame::Map {
            key: None,
            expecting_key: true,
            start,
            anchor,
        }
    } else {
        Frame::Seq { start, anchor }
    });
}

/// A value finished: its mapping expects the next key.
fn value_done(stack: &mut [Frame]) {
    if let Some(Frame::Map { expecting_key, .. }) = stack.last_mut() {
        *expecting_key = true;
    }
}

fn remember(anchors: &mut Vec<u64>, anchor: usize, size: u64) {
    if anchor == 0 {
        return;
    }
    if anchors.len() <= anchor {
        anchors.resize(anchor + 1, 1);
    }
    anchors[anchor] = size.max(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(text: &str, kind: Kind) -> Result<Totals, String> {
        let mut t = Totals::default();
        scan(Path::new("t.yaml"), text, kind, &mut t).map_err(|d| d.to_string())?;
        Ok(t)
    }

    #[test]
    fn counts_by_position() {
        let main = "listeners: { http: { bind: x } }\ngateways:\n  - name: a\n    routes:\n      r1: { instances: [\"1.1.1.1:1\", {host: h, port: 2}] }\n      r2: { respond: { status: 200 } }\n  - { name: b, routes: { x: { instances: [a] } } }\n";
        let t = totals(main, Kind::Main).unwrap();
        assert_eq!((t.gateways, t.routes, t.instances), (2, 3, 3));
        let list = "- name: a\n  routes: { r: { instances: [a, b] } }\n- name: b\n";
        let t = totals(list, Kind::Gateways).unwrap();
        assert_eq!((t.gateways, t.routes, t.instances), (2, 1, 2));
        let docs = "name: a\nroutes: { r: {}, s: {} }\n---\nname: b\n";
        let t = totals(docs, Kind::Gateways).unwrap();
        assert_eq!((t.gateways, t.routes, t.instances), (2, 2, 0));
    }

    #[test]
    fn ordinary_anchors_pass() {
        assert!(totals(
            "hc: &hc { protocol: http, path: /health }\nroutes:\n  a: { health_check: *hc }\n  b: { health_check: *hc }\n",
            Kind::Gateways
        )
        .is_ok());
    }

    #[test]
    fn alias_bomb_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (i, prev) in ["a", "b", "c", "d", "e", "f", "g"].iter().enumerate() {
            let name = (b'b' + i as u8) as char;
            text.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let e = totals(&text, Kind::Gateways).unwrap_err();
        assert!(e.contains("YAML aliases expand"), "{e}");
    }

    #[test]
    fn wide_alias_of_a_big_anchor_refused() {
        // One big route aliased many times: the shape that grew a process to 24 GB.
        let mut text = String::from("name: g\nx: &r\n  instances: [");
        for i in 0..5_000 {
            text.push_str(&format!("\"127.0.0.1:{}\", ", 1000 + i));
        }
        text.push_str("]\nroutes:\n");
        for i in 0..200 {
            text.push_str(&format!("  r{i}: *r\n"));
        }
        assert!(totals(&text, Kind::Gateways).is_err());
    }

    #[test]
    fn too_many_gateways_refused_before_parsing() {
        let mut text = String::from("gateways:\n");
        for i in 0..=MAX_GATEWAYS {
            text.push_str(&format!("- {{name: g{i}}}\n"));
        }
        let e = totals(&text, Kind::Main).unwrap_err();
        assert!(e.contains("too many gateways"), "{e}");
    }

    #[test]
    fn unreadable_yaml_is_left_to_the_parser() {
        assert!(totals("a: [\n", Kind::Gateways).is_ok());
    }
}
