//! Config diagnostics: one error with where it is (file, line and column when known,
//! otherwise the gateway and route it concerns), and the list of all errors found.

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
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            position: None,
            scope: None,
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

    /// A serde_yaml error, with its position moved out of the message into ours.
    pub fn from_yaml(file: &Path, err: &serde_yaml::Error) -> Self {
        let text = err.to_string();
        let message = match text.rfind(" at line ") {
            Some(i) if err.location().is_some() => text[..i].to_string(),
            _ => text,
        };
        let diag = Diagnostic::new(file, message);
        match err.location() {
            Some(loc) => diag.at(loc.line(), loc.column()),
            None => diag,
        }
    }
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
