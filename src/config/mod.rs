//! Configuration parsing: the TOML text is parsed once into the validated
//! [`Config`] of `uplinkd-core`. Every problem is reported with file, line and
//! key; a bad value is never replaced by a default.
//!
//! Every key is declared once, next to its field, in `uplinkd_core::config`
//! (name, type, default, accepted range). From those declarations:
//! - `keys.rs`: where each section lives in the file, the shape check
//!   (unknown keys, wrong TOML types) and [`known_keys`];
//! - `value.rs`: reading one section's keys by their declared rules;
//! - `validate.rs`: the rules between keys, one function per section;
//! - `report.rs`: collecting errors with line and column.

use std::path::Path;

pub use uplinkd_core::config::*;

mod keys;
mod report;
mod validate;
mod value;

pub use keys::known_keys;
use report::Report;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line, when the problem has a place in the text (a missing
    /// section, or an unreadable file, has none).
    pub line: Option<usize>,
    /// 1-based column (in characters), with `line`.
    pub column: Option<usize>,
    /// Dotted key, e.g. `uplink[1].gateway4` (array indices are 0-based, as
    /// in `Config::uplinks`). Empty for syntax and read errors.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration (never empty), in text order.
/// Displays as one problem per line: `origin:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
    pub fn len(&self) -> usize {
        self.errors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Parses and validates configuration text. `origin` names where the
/// text came from (a path) and prefixes every error.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let mut report = Report::new(origin, text);

    // 1. Syntax. The parser can recover and go on, but what it finds
    // after the first error is mostly that error's echo: report the first.
    let (doc, syntax) = toml::de::DeTable::parse_recoverable(text);
    if let Some(e) = syntax.first() {
        report.add("", e.span(), e.message().trim().to_string());
        return Err(report.into_errors());
    }

    // 2. Shape: every unknown key and wrongly typed value is reported and
    // removed, so that validation still sees (and reports) the rest.
    let mut doc = doc.into_inner();
    if !keys::check_shape(&mut doc, &keys::document(), "", &mut report) {
        return Err(report.into_errors());
    }
    report.shape_done = true;

    // 3. Values, by the rules their keys declare, and the rules between them.
    let config = validate::validate(&doc, &mut report);
    match config {
        Some(config) if report.errors.is_empty() => Ok(config),
        _ => Err(report.into_errors()),
    }
}

/// Reads and parses a configuration file; errors are prefixed by its path.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => Err(ConfigErrors {
            errors: vec![ConfigError {
                origin,
                line: None,
                column: None,
                key: String::new(),
                message: format!("cannot read configuration: {e}"),
            }],
        }),
    }
}
