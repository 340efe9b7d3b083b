//! Config diagnostics: one error with where it is (file, line and column, and the
//! gateway and route it concerns), the list of all errors found, and the helpers that
//! make them useful: "did you mean" suggestions, and positions for semantic errors
//! found by looking the gateway and route up in the file's text.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column, for syntax and type errors.
    pub position: Option<(usize, usize)>,
    /// What the error concerns, e.g. `gateway "sava", route "sava:1.0"`.
    pub scope: Option<String>,
    /// The gateway (and route) it concerns, to find its position in the file.
    pub subject: Option<Box<(String, Option<String>)>>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            position: None,
            scope: None,
            subject: None,
            message: message.into(),
        }
    }

    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.position = Some((line, column));
        self
    }

    pub fn scoped(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Names the gateway (and route) the error concerns.
    pub fn about(mut self, gateway: &str, route: Option<&str>) -> Self {
        self.subject = Some(Box::new((gateway.to_string(), route.map(str::to_string))));
        self
    }

    /// A serde_yaml error, with its position moved out of the message into ours, and a
    /// suggestion for an unknown key that is close to a known one.
    pub fn from_yaml(file: &Path, err: &serde_yaml::Error) -> Self {
        let text = err.to_string();
        let mut message = match text.rfind(" at line ") {
            Some(i) if err.location().is_some() => text[..i].to_string(),
            _ => text,
        };
        if let Some(hint) = unknown_field_hint(&message) {
            message.push_str(&hint);
        }
        let diag = Diagnostic::new(file, message);
        match err.location() {
            Some(loc) => diag.at(loc.line(), loc.column()),
            None => diag,
        }
    }
}

/// `; did you mean `x`?` for serde's "unknown field `y`, expected one of `x`, ...".
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    crate::suggest::closest(unknown, &candidates).map(|c| format!("; did you mean `{c}`?"))
}

/// Gives a position to each diagnostic that names a gateway (and route) but has none:
/// where the gateway's `name:` (and the route's key after it) stands in its file.
/// Texts are the loaded files, by path.
pub fn locate<'t>(diags: &mut Diagnostics, texts: impl Fn(&Path) -> Option<&'t str>) {
    for d in diags.0.iter_mut().filter(|d| d.position.is_none()) {
        let Some((gateway, route)) = d.subject.as_deref() else {
            continue;
        };
        let Some(text) = texts(&d.file) else {
            continue;
        };
        d.position = find_subject(text, gateway, route.as_deref());
    }
}

/// 1-based line and column of a gateway's `name:` key, or of a route key after it.
fn find_subject(text: &str, gateway: &str, route: Option<&str>) -> Option<(usize, usize)> {
    let quoted = |s: &str| [s.to_string(), format!("\"{s}\""), format!("'{s}'")];
    let name_at = quoted(gateway).iter().find_map(|v| {
        text.match_indices("name:").find_map(|(i, _)| {
            let after = text[i + 5..].trim_start_matches([' ', '\t']);
            let ends = after.strip_prefix(v.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with([',', '}', '\n', '\r', ' ', '#'])
            });
            ends.then_some(i)
        })
    })?;
    let at = match route {
        None => name_at,
        Some(key) => quoted(key)
            .iter()
            .filter_map(|k| {
                text[name_at..]
                    .match_indices(k.as_str())
                    .find_map(|(j, _)| {
                        let i = name_at + j;
                        let before = text[..i].chars().next_back();
                        let after = text[i + k.len()..].trim_start_matches([' ', '\t']);
                        let starts = matches!(before, Some(' ' | '\t' | '\n' | '{' | ','));
                        (starts && after.starts_with(':')).then_some(i)
                    })
            })
            .min()
            .unwrap_or(name_at),
    };
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    Some((line, column))
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(scope) = &self.scope {
            write!(f, ": {scope}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one load; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// The same, each file named relative to `base` where it lies under it (what an API
    /// client is told: not the machine's layout).
    pub fn relative_to(&self, base: &Path) -> Diagnostics {
        let mut out = self.clone();
        for d in &mut out.0 {
            if let Ok(rel) = d.file.strip_prefix(base) {
                d.file = rel.to_path_buf();
            }
        }
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            unknown_field_hint(
                "routes: unknown field `wieght`, expected one of `weight`, `condition`"
            ),
            Some("; did you mean `weight`?".into())
        );
    }

    #[test]
    fn subjects_are_found_in_the_text() {
        let text = "gateways:\n  - name: other\n    routes: { a: {} }\n  - name: shop\n    routes:\n      \"a\": { weight: 50% }\n      b: {}\n";
        assert_eq!(find_subject(text, "shop", None), Some((4, 5)));
        assert_eq!(find_subject(text, "shop", Some("a")), Some((6, 7)));
        assert_eq!(find_subject(text, "shop", Some("b")), Some((7, 7)));
        assert_eq!(find_subject(text, "other", Some("a")), Some((3, 15)));
        assert_eq!(find_subject(text, "shop", Some("gone")), Some((4, 5)));
        assert_eq!(find_subject(text, "nope", None), None);
    }
}
