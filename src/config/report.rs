//! Collecting problems: byte spans become file, line and column, keys
//! removed by the shape check silence later errors about them.
//!
//! A configuration may come from several files (the main file and its
//! drop-ins). Each file's spans are shifted by the file's `base` (the total
//! length of the files before it, plus one per file), so one offset names
//! one place in one file: the merged document keeps every value's origin
//! without carrying a file name along.

use std::ops::Range;
use std::time::Duration;

use super::{ConfigError, ConfigErrors};

/// Longest part of a value quoted in a message: enough to recognise it,
/// and an error that quotes a 10 MB value stays one short line.
const QUOTE_MAX: usize = 64;
/// Longest key and message of an error.
const KEY_MAX: usize = 128;
const MESSAGE_MAX: usize = 512;

/// A value as quoted in messages: `"..."` (escaped), at most [`QUOTE_MAX`]
/// characters of it, then `…` if it is longer.
pub(super) fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
    }
}

/// `text` cut to at most `max` characters, with `…` if it was longer.
pub(super) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// One file of the configuration, and where its offsets start.
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
    /// Offset of the file's first byte in the shifted spans.
    base: usize,
}

/// Collects problems, turning byte spans into file, line and column.
pub(super) struct Report<'a> {
    /// In reading order; the first is the main file, which also names
    /// problems that have no place (a missing section).
    sources: Vec<Source<'a>>,
    pub(super) errors: Vec<ConfigError>,
    /// The shifted offset of each error in `errors` (None: no place), to
    /// sort them in reading order across files.
    offsets: Vec<Option<usize>>,
    /// Keys already reported as unknown or of the wrong type (and removed
    /// before validation): later errors about them would only repeat or
    /// mislead (e.g. "missing name" after "name: expected a string").
    pub(super) broken: Vec<String>,
    /// Set once the shape check is over: from then on, errors about broken
    /// keys are dropped.
    pub(super) shape_done: bool,
}

impl<'a> Report<'a> {
    /// A report on `files` (origin, text), in reading order (at least one).
    pub(super) fn new(files: &[(&'a str, &'a str)]) -> Self {
        let mut base = 0;
        let sources = files
            .iter()
            .map(|&(origin, text)| {
                let source = Source { origin, text, base };
                base += text.len() + 1;
                source
            })
            .collect();
        Report {
            sources,
            errors: Vec::new(),
            offsets: Vec::new(),
            broken: Vec::new(),
            shape_done: false,
        }
    }

    /// Where the spans of file `i` start.
    pub(super) fn base(&self, i: usize) -> usize {
        self.sources[i].base
    }

    /// The file a shifted offset lies in, and the offset within it.
    fn source_of(&self, offset: usize) -> (&Source<'a>, usize) {
        let source = self
            .sources
            .iter()
            .rev()
            .find(|s| s.base <= offset)
            .unwrap_or(&self.sources[0]);
        (source, offset - source.base.min(offset))
    }

    /// File, 1-based line and column (in characters) of a shifted offset.
    pub(super) fn place(&self, offset: usize) -> (&'a str, usize, usize) {
        let (source, offset) = self.source_of(offset);
        let text = source.text;
        let offset = offset.min(text.len());
        // Spans are byte offsets on char boundaries; be safe anyway.
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (source.origin, line, column)
    }

    /// 1-based line and column of a shifted offset (in its own file).
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let (_, line, column) = self.place(offset);
        (line, column)
    }

    /// The main file's name.
    pub(super) fn main_origin(&self) -> &'a str {
        self.sources[0].origin
    }

    /// Whether `key` (or a table containing it) was removed as malformed.
    pub(super) fn is_broken(&self, key: &str) -> bool {
        self.broken.iter().any(|b| {
            key == b
                || key
                    .strip_prefix(b.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    pub(super) fn add(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let key = key.into();
        if self.shape_done && self.is_broken(&key) {
            return;
        }
        // An unknown key is quoted in `key`, and a message may quote a
        // value (each quote is short already: this bounds what slips through).
        let key = shorten(&key, KEY_MAX);
        let message = shorten(&message.into(), MESSAGE_MAX);
        let (origin, line, column) = match &span {
            Some(span) => {
                let (o, l, c) = self.place(span.start);
                (o, Some(l), Some(c))
            }
            None => (self.main_origin(), None, None),
        };
        self.errors.push(ConfigError {
            origin: origin.to_string(),
            line,
            column,
            key,
            message,
        });
        self.offsets.push(span.map(|s| s.start));
    }

    /// The problems found, in text order (those without a place, such as a
    /// missing section, first). Called only when there is at least one.
    pub(super) fn into_errors(mut self) -> ConfigErrors {
        if self.errors.is_empty() {
            // A caller bug, not a config problem: say so rather than succeed.
            self.add("", None, "invalid configuration (no detail recorded)");
        }
        // Reading order: offsets grow from one file to the next.
        let mut sorted: Vec<(Option<usize>, ConfigError)> =
            self.offsets.into_iter().zip(self.errors).collect();
        sorted.sort_by_key(|(offset, _)| *offset);
        ConfigErrors {
            errors: sorted.into_iter().map(|(_, e)| e).collect(),
        }
    }

    /// An ordering between two durations; reported on the key the operator
    /// wrote (the first if both), so the line points at something to change.
    /// Each side is (key, span of its value if written, value).
    pub(super) fn relation(
        &mut self,
        ok: bool,
        (a_key, a_span, a): (&str, Option<Range<usize>>, Duration),
        (b_key, b_span, b): (&str, Option<Range<usize>>, Duration),
        op: &str,
        why: &str,
    ) {
        if ok || self.is_broken(a_key) || self.is_broken(b_key) {
            return;
        }
        let dflt = |span: &Option<Range<usize>>| if span.is_none() { ", the default" } else { "" };
        let message = format!(
            "{a_key} ({}{}) must be {op} {b_key} ({}{}): {why}",
            humantime::format_duration(a),
            dflt(&a_span),
            humantime::format_duration(b),
            dflt(&b_span),
        );
        match (a_span, b_span) {
            (Some(span), _) => self.add(a_key, Some(span), message),
            (None, Some(span)) => self.add(b_key, Some(span), message),
            (None, None) => self.add(a_key, None, message),
        }
    }
}
