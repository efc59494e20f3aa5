//! Configuration errors that point at `file:line:col` and say how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate::{PathSeg, Position, SourceMap};

/// One mistake in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the mistake is in.
    pub file: PathBuf,
    /// 1-based line (0 when the file could not be read at all).
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every mistake found in one configuration file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single error that is not tied to a place in the file (unreadable file, unknown extension).
    pub fn whole_file(file: &Path, message: String, hint: Option<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message,
            hint,
        }])
    }
}

/// A path into the configuration document, built while walking the model.
#[derive(Clone, Debug, Default)]
pub struct DocPath(pub Vec<PathSeg>);

impl DocPath {
    /// The document root.
    pub fn root() -> Self {
        DocPath(Vec::new())
    }
    /// This path plus a map key.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.0.clone();
        p.push(PathSeg::Key(key.to_string()));
        DocPath(p)
    }
    /// This path plus a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.0.clone();
        p.push(PathSeg::Index(index));
        DocPath(p)
    }
}

/// Collects errors while the compiler walks the model, so that one run reports all of them.
pub struct Diagnostics<'a> {
    file: &'a Path,
    source: Option<&'a SourceMap>,
    errors: Vec<(Position, ConfigError)>,
}

impl<'a> Diagnostics<'a> {
    /// A collector for `file`, locating paths through `source`.
    pub fn new(file: &'a Path, source: Option<&'a SourceMap>) -> Self {
        Diagnostics {
            file,
            source,
            errors: Vec::new(),
        }
    }

    /// Records a mistake in the value at `path`.
    pub fn error(
        &mut self,
        path: &DocPath,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        let pos = self
            .source
            .map(|s| s.locate(&path.0))
            .unwrap_or(Position { line: 1, column: 1 });
        self.errors.push((
            pos,
            ConfigError {
                file: self.file.to_path_buf(),
                line: pos.line,
                column: pos.column,
                message: message.into(),
                hint: hint.into(),
            },
        ));
    }

    /// How many errors were recorded so far.
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The recorded errors sorted by position.
    pub fn into_errors(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(p, _)| (p.line, p.column));
        ConfigErrors(self.errors.into_iter().map(|(_, e)| e).collect())
    }
}
