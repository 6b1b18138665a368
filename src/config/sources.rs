//! The files a configuration is read from, and how they combine: the main
//! file, then each drop-in of `<dir>/<stem>.d/*.toml` in lexical order of
//! file name (`/etc/uplinkd/uplinkd.toml` reads
//! `/etc/uplinkd/uplinkd.d/*.toml`).
//!
//! Merging: tables merge key by key, a later file's key overriding an
//! earlier one's (recursively, so `[policy.damping]` merges too); any other
//! value, lists included, is replaced whole; an array of tables (`[[uplink]]`,
//! `[[transit]]`) written in a drop-in replaces the whole list of the files
//! before it, so a host's list is always the one file's list, never a splice
//! by position. Each file is checked for syntax and shape (unknown keys,
//! TOML types) on its own; values and the rules between them are checked
//! once, on the merged result. Every value keeps its span, shifted by its
//! file's base offset (see `report.rs`), so every error names the file and
//! line the value is written in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use super::keys::{join, Shape};
use super::report::Report;
use super::ConfigError;

/// The drop-in directory of the configuration file `path`:
/// `<dir>/<stem>.d` (`/etc/uplinkd/uplinkd.toml` -> `/etc/uplinkd/uplinkd.d`).
pub fn drop_in_dir(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.d"))
}

/// The drop-ins of `dir`, in the order they are read: regular files (or
/// links to one) named `*.toml`, sorted by name; names starting with '.'
/// (editors' lock and backup files) are skipped. A missing directory has
/// none; an unreadable one is an error naming it.
pub fn drop_in_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let problem = |message: String| ConfigError {
        origin: dir.display().to_string(),
        line: None,
        column: None,
        key: String::new(),
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(problem(format!("cannot read the drop-in directory: {e}"))),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| problem(format!("cannot read the drop-in directory: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // Followed: configuration management often links a shared file in.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Adds `by` to every span of `table` (keys and values, recursively).
pub(super) fn shift(table: &mut DeTable<'_>, by: usize) {
    if by == 0 {
        return;
    }
    for (key, mut value) in std::mem::take(table) {
        shift_value(&mut value, by);
        let span = key.span();
        table.insert(
            Spanned::new(span.start + by..span.end + by, key.into_inner()),
            value,
        );
    }
}

fn shift_value(value: &mut Spanned<DeValue<'_>>, by: usize) {
    match value.get_mut() {
        DeValue::Table(t) => shift(t, by),
        DeValue::Array(items) => items.iter_mut().for_each(|i| shift_value(i, by)),
        _ => {}
    }
    let span = value.span();
    let inner = std::mem::replace(value.get_mut(), DeValue::Boolean(false));
    *value = Spanned::new(span.start + by..span.end + by, inner);
}

/// Merges the shape-checked `over` into `base`: tables key by key, anything
/// else (a value, a list, an array of tables) replaced whole.
pub(super) fn merge<'a>(base: &mut DeTable<'a>, over: DeTable<'a>, fields: &[(&str, Shape)]) {
    for (key, mut value) in over {
        let name = key.get_ref().to_string();
        let sub = match fields.iter().find(|(n, _)| *n == name) {
            Some((_, Shape::Table(sub))) => Some(sub),
            _ => None,
        };
        if let (Some(sub), Some(existing)) = (sub, base.get_mut(name.as_str())) {
            if let (DeValue::Table(into), DeValue::Table(from)) =
                (existing.get_mut(), value.get_mut())
            {
                merge(into, std::mem::take(from), sub);
                continue;
            }
        }
        base.remove(name.as_str());
        base.insert(key, value);
    }
}

/// Where a value is written: file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub origin: String,
    pub line: usize,
    pub column: usize,
}

/// Where each value of a valid configuration was written, after the merge:
/// lets a later check (the host check of `--check --live`) point at the file
/// and line to change, like the parser's own errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// The main file: names problems about keys no file sets.
    main: String,
    /// By dotted key with 0-based indices: `agent.route_metric`,
    /// `uplink[1].interface`, `uplink[1]` (the entry's table),
    /// `transit[0].targets[1]`.
    places: BTreeMap<String, Place>,
}

impl Origins {
    /// Records the place of every key and list element of `doc`.
    pub(super) fn of(doc: &DeTable<'_>, report: &Report<'_>) -> Origins {
        let mut origins = Origins {
            main: report.main_origin().to_string(),
            places: BTreeMap::new(),
        };
        origins.walk(doc, "", report);
        origins
    }

    fn walk(&mut self, table: &DeTable<'_>, prefix: &str, report: &Report<'_>) {
        for (key, value) in table {
            let full = join(prefix, key.get_ref());
            self.value(&full, value, report);
        }
    }

    fn value(&mut self, key: &str, value: &Spanned<DeValue<'_>>, report: &Report<'_>) {
        let (origin, line, column) = report.place(value.span().start);
        self.places.insert(
            key.to_string(),
            Place {
                origin: origin.to_string(),
                line,
                column,
            },
        );
        match value.get_ref() {
            DeValue::Table(t) => self.walk(t, key, report),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.value(&format!("{key}[{i}]"), item, report);
                }
            }
            _ => {}
        }
    }

    /// Where `key` is written, if some file sets it.
    pub fn get(&self, key: &str) -> Option<&Place> {
        self.places.get(key)
    }

    /// A problem about `key`, placed where it is written; about the main
    /// file, without a line, when no file sets it (a default).
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let place = self.get(key);
        ConfigError {
            origin: place.map_or_else(|| self.main.clone(), |p| p.origin.clone()),
            line: place.map(|p| p.line),
            column: place.map(|p| p.column),
            key: key.to_string(),
            message: message.into(),
        }
    }
}
