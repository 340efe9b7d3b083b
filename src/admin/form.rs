//! The operator's form of a gateway file, kept across API writes. Operators keep these
//! files in git: a one-weight `PATCH` must be a one-line diff, not the file rewritten in
//! weir's expanded form. A write works on the file as written (its YAML as values, short
//! instance forms and key order included, no defaults filled in), and writes back:
//!
//! - when only scalars changed (the common case: weights, a host, a path), the file's
//!   own text with just those scalars replaced in place (comments, quoting, flow or
//!   block style all kept), checked by reading it back;
//! - else the gateway as the client sent it (a YAML body as its text), or as YAML from
//!   its values (a JSON body), with the keys in their order and nothing added.

use saphyr_parser::{Event, Parser};
use serde_yaml::Value;

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The gateway inside a file's document: the document itself, or the one element of a
/// one-gateway list (the file forms the loader takes that hold one gateway).
pub fn gateway_of(doc: &Value) -> Option<&Value> {
    match doc {
        Value::Mapping(_) => Some(doc),
        Value::Sequence(items) if items.len() == 1 => items.first(),
        _ => None,
    }
}

/// `doc` with its gateway replaced by `gateway`, in the same form.
pub fn with_gateway(doc: &Value, gateway: Value) -> Value {
    match doc {
        Value::Sequence(_) => Value::Sequence(vec![gateway]),
        _ => gateway,
    }
}

/// The file's new text: `before` (the file as written, parsed as `before_doc`) with only
/// its changed scalars replaced when that is all that changed, else `given` (the
/// client's YAML text), else `after` as YAML.
pub fn text_for(
    before: Option<(&str, &Value)>,
    after: &Value,
    given: Option<&str>,
) -> Result<String, String> {
    if let Some((text, before_doc)) = before {
        if let Some(patched) = patch_scalars(text, before_doc, after) {
            return Ok(patched);
        }
    }
    if let Some(given) = given {
        let mut text = given.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        return Ok(text);
    }
    serde_yaml::to_string(after).map_err(|e| e.to_string())
}

/// `text` with each scalar that differs between `before` and `after` replaced in place;
/// None when anything but scalars changed, or the result does not read back as `after`.
fn patch_scalars(text: &str, before: &Value, after: &Value) -> Option<String> {
    let mut changed = Vec::new();
    scalar_changes(before, after, &mut Vec::new(), &mut changed)?;
    if changed.is_empty() {
        return Some(text.to_string());
    }
    let spans = scalar_spans(text)?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for (path, value) in changed {
        let (start, end) = spans
            .iter()
            .find(|(p, ..)| *p == path)
            .map(|(_, s, e)| (*s, *e))?;
        edits.push((start, end, render(&text[start..end], &value)?));
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = text.to_string();
    for (start, end, new) in edits {
        out.replace_range(start..end, &new);
    }
    // What is written must be what was meant.
    let back: Value = serde_yaml::from_str(&out).ok()?;
    (back == *after).then_some(out)
}

/// The paths where `a` and `b` hold different scalars; None when they differ in shape
/// (a key added or removed, a list grown, a scalar become a map).
fn scalar_changes(
    a: &Value,
    b: &Value,
    path: &mut Vec<Step>,
    out: &mut Vec<(Vec<Step>, Value)>,
) -> Option<()> {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            if x.len() != y.len() {
                return None;
            }
            for (k, va) in x {
                let key = k.as_str()?;
                let vb = y.get(k)?;
                path.push(Step::Key(key.to_string()));
                scalar_changes(va, vb, path, out)?;
                path.pop();
            }
            Some(())
        }
        (Value::Sequence(x), Value::Sequence(y)) => {
            if x.len() != y.len() {
                return None;
            }
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                path.push(Step::Index(i));
                scalar_changes(va, vb, path, out)?;
                path.pop();
            }
            Some(())
        }
        (Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_), _)
        | (_, Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_)) => None,
        _ if a == b => Some(()),
        _ => {
            out.push((path.clone(), b.clone()));
            Some(())
        }
    }
}

/// Where in the container on top of the walk the next node goes.
enum Frame {
    /// A mapping: the key just read, if the next node is its value.
    Map(Option<String>),
    Seq(usize),
}

/// Every scalar value in `text` with its path and byte span; None for text the parser
/// refuses or that uses aliases (their spans are not where the value is).
fn scalar_spans(text: &str) -> Option<Vec<(Vec<Step>, usize, usize)>> {
    let bytes = byte_offsets(text);
    let mut spans = Vec::new();
    let mut path: Vec<Step> = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.ok()?;
        match event {
            Event::Alias(_) => return None,
            Event::Scalar(value, ..) => {
                let Some(at) = place(&mut frames, &mut path, Some(&value)) else {
                    continue;
                };
                let (start, end) = (bytes(span.start.index())?, bytes(span.end.index())?);
                spans.push((at, start, token_end(text, start, end)?));
                path.pop();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let opens_map = matches!(event, Event::MappingStart(..));
                if !frames.is_empty() {
                    place(&mut frames, &mut path, None)?;
                }
                frames.push(if opens_map {
                    Frame::Map(None)
                } else {
                    Frame::Seq(0)
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                frames.pop();
                if !frames.is_empty() {
                    path.pop();
                }
            }
            _ => {}
        }
    }
    Some(spans)
}

/// Places the next node in the container on top: pushes its step onto `path` and
/// returns the path when it is a value; None when it is a mapping's key (a scalar
/// `key` is remembered for the value after it).
fn place(frames: &mut [Frame], path: &mut Vec<Step>, key: Option<&str>) -> Option<Vec<Step>> {
    match frames.last_mut()? {
        Frame::Map(pending @ None) => {
            *pending = Some(key?.to_string());
            None
        }
        Frame::Map(pending) => {
            path.push(Step::Key(pending.take()?));
            Some(path.clone())
        }
        Frame::Seq(i) => {
            path.push(Step::Index(*i));
            *i += 1;
            Some(path.clone())
        }
    }
}

/// Where the scalar token at `start` ends: the parser's span may run on over the
/// blanks and a comment after it.
fn token_end(text: &str, start: usize, end: usize) -> Option<usize> {
    let token = text.get(start..end)?;
    let len = match token.as_bytes().first()? {
        b'"' => {
            let mut escaped = false;
            let close = token[1..].char_indices().find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })?;
            close.0 + 2
        }
        b'\'' => {
            let body = &token.as_bytes()[1..];
            let mut i = 0;
            loop {
                match (body.get(i)?, body.get(i + 1)) {
                    (b'\'', Some(b'\'')) => i += 2,
                    (b'\'', _) => break i + 2,
                    _ => i += 1,
                }
            }
        }
        _ => {
            let cut = [" #", "\t#"].iter().filter_map(|c| token.find(c)).min();
            token[..cut.unwrap_or(token.len())].trim_end().len()
        }
    };
    Some(start + len)
}

/// Character index to byte offset, for the parser's markers.
fn byte_offsets(text: &str) -> impl Fn(usize) -> Option<usize> + '_ {
    move |chars| {
        if text.is_ascii() {
            return (chars <= text.len()).then_some(chars);
        }
        text.char_indices()
            .map(|(b, _)| b)
            .chain(std::iter::once(text.len()))
            .nth(chars)
    }
}

/// `value` written in place of `old`, quoted as `old` was where it is a string.
fn render(old: &str, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => {
            if old.starts_with('\'') {
                return Some(format!("'{}'", s.replace('\'', "''")));
            }
            let plain_reads_back = serde_yaml::from_str::<Value>(s).ok() == Some(value.clone())
                && !s.contains(['#', ':', '{', '}', '[', ']', ',', '\n', '"', '\''])
                && s.trim() == s;
            if old.starts_with('"') || !plain_reads_back {
                return serde_json::to_string(s).ok();
            }
            Some(s.clone())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    const FILE: &str = "# the shop, owned by team A\nname: shop\nvirtual_hosts: [shop.test]\nroutes:\n  stable:\n    weight: \"90%\"   # most traffic\n    instances: [\"127.0.0.1:8001\", '127.0.0.1:8002']\n  canary: { weight: 10%, instances: [127.0.0.1:8003] }\n";

    #[test]
    fn a_changed_scalar_is_replaced_where_it_stands() {
        let before = doc(FILE);
        let mut after = before.clone();
        after["routes"]["stable"]["weight"] = Value::String("80%".into());
        after["routes"]["canary"]["weight"] = Value::String("20%".into());
        after["routes"]["stable"]["instances"][1] = Value::String("127.0.0.1:9002".into());
        let text = text_for(Some((FILE, &before)), &after, None).unwrap();
        let expected = FILE
            .replace("\"90%\"", "\"80%\"")
            .replace("weight: 10%", "weight: 20%")
            .replace("'127.0.0.1:8002'", "'127.0.0.1:9002'");
        assert_eq!(text, expected);
    }

    #[test]
    fn a_change_of_shape_writes_the_values_in_their_order() {
        let before = doc(FILE);
        let mut after = before.clone();
        after["routes"]["canary"]["condition"] = Value::String("hdr(x-beta) exists".into());
        let text = text_for(Some((FILE, &before)), &after, None).unwrap();
        assert_eq!(doc(&text), after);
        assert!(
            !text.contains("null") && !text.contains("rewrites"),
            "{text}"
        );
        let keys: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(keys[0], "name: shop", "{text}");
        // A client's own YAML text is written as it came.
        let given = "name: shop\nroutes: { r: { instances: [127.0.0.1:1] } }";
        let text = text_for(Some((FILE, &before)), &doc(given), Some(given)).unwrap();
        assert_eq!(text, format!("{given}\n"));
    }

    #[test]
    fn strings_that_need_quotes_get_them() {
        assert_eq!(
            render("x", &Value::String("a: b".into())).unwrap(),
            "\"a: b\""
        );
        assert_eq!(
            render("x", &Value::String("true".into())).unwrap(),
            "\"true\""
        );
        assert_eq!(render("x", &Value::String("10%".into())).unwrap(), "10%");
        assert_eq!(
            render("'x'", &Value::String("it's".into())).unwrap(),
            "'it''s'"
        );
        assert_eq!(render("1", &serde_yaml::to_value(7).unwrap()).unwrap(), "7");
    }

    #[test]
    fn aliases_and_one_gateway_lists() {
        let aliased = "name: g\nx: &w 10%\nroutes: { a: { weight: *w } }\n";
        let before = doc(aliased);
        let mut after = before.clone();
        after["x"] = Value::String("20%".into());
        assert!(patch_scalars(aliased, &before, &after).is_none());
        let listed = doc("- name: g\n  routes: {}\n");
        assert_eq!(gateway_of(&listed).unwrap()["name"], "g");
        let wrapped = with_gateway(&listed, doc("name: h"));
        assert_eq!(wrapped[0]["name"], "h");
    }
}
