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
//! - `report.rs`: collecting errors with file, line and column;
//! - `sources.rs`: the drop-in files (`<dir>/<stem>.d/*.toml`, read in
//!   lexical order after the main file), how they merge (tables key by key,
//!   a later file's key overriding; an array of tables such as `[[uplink]]`
//!   in a drop-in replacing the whole list) and [`Origins`], where each
//!   value of the merged result was written;
//! - `live.rs`: the host check of `uplinkd --check --live` (interfaces,
//!   bonds, on-link gateways, competing default routes) against a
//!   [`live::Host`] the netlink adapter reads.

use std::path::Path;

pub use uplinkd_core::config::*;

mod keys;
pub mod live;
mod report;
mod sources;
mod validate;
mod value;

pub use keys::known_keys;
use report::Report;
pub use sources::{drop_in_dir, drop_in_files, Origins, Place};

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
    parse_files(&[(origin, text)]).map(|(config, _)| config)
}

/// Parses and validates a configuration made of several files, given as
/// (origin, text) in reading order: the main file, then its drop-ins (see
/// `sources.rs` for how they merge). Every error names the file and line of
/// the value it is about; the [`Origins`] say where each value was written.
pub fn parse_files(files: &[(&str, &str)]) -> Result<(Config, Origins), ConfigErrors> {
    let mut report = Report::new(files);
    let shape = keys::document();

    // 1. Syntax, file by file. The parser can recover and go on, but what
    // it finds after a file's first error is mostly that error's echo:
    // report the first of each file.
    let mut docs = Vec::new();
    for (i, (_, text)) in files.iter().enumerate() {
        let (doc, syntax) = toml::de::DeTable::parse_recoverable(text);
        let base = report.base(i);
        if let Some(e) = syntax.first() {
            let span = e.span().map(|s| s.start + base..s.end + base);
            report.add("", span, e.message().trim().to_string());
            continue;
        }
        let mut doc = doc.into_inner();
        sources::shift(&mut doc, base);
        docs.push(doc);
    }
    if !report.errors.is_empty() {
        return Err(report.into_errors());
    }

    // 2. Shape, file by file: every unknown key and wrongly typed value is
    // reported and removed, so that validation still sees (and reports)
    // the rest.
    let mut whole = true;
    for doc in &mut docs {
        whole &= keys::check_shape(doc, &shape, "", &mut report);
    }
    if !whole {
        return Err(report.into_errors());
    }
    report.shape_done = true;
    let mut docs = docs.into_iter();
    let mut doc = docs.next().unwrap_or_default();
    for over in docs {
        sources::merge(&mut doc, over, &shape);
    }

    // 3. Values, by the rules their keys declare, and the rules between them.
    let config = validate::validate(&doc, &mut report);
    match config {
        Some(config) if report.errors.is_empty() => {
            let origins = Origins::of(&doc, &report);
            Ok((config, origins))
        }
        _ => Err(report.into_errors()),
    }
}

/// Reads and parses a configuration file and its drop-ins; errors are
/// prefixed by the path of the file they are in.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_origins(path).map(|(config, _)| config)
}

/// [`load`], with where each value was written.
pub fn load_with_origins(path: &Path) -> Result<(Config, Origins), ConfigErrors> {
    let unreadable = |path: &Path, e: std::io::Error| ConfigError {
        origin: path.display().to_string(),
        line: None,
        column: None,
        key: String::new(),
        message: format!("cannot read configuration: {e}"),
    };
    let mut paths = vec![path.to_path_buf()];
    let mut errors = Vec::new();
    match drop_in_files(&drop_in_dir(path)) {
        Ok(files) => paths.extend(files),
        Err(e) => errors.push(e),
    }
    let mut files = Vec::new();
    for p in &paths {
        match std::fs::read_to_string(p) {
            Ok(text) => files.push((p.display().to_string(), text)),
            Err(e) => errors.push(unreadable(p, e)),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors { errors });
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(origin, text)| (origin.as_str(), text.as_str()))
        .collect();
    parse_files(&files)
}
