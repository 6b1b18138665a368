//! Configuration parsing: the raw TOML is parsed once into the validated
//! [`Config`] of `uplinkd-core`. Every problem is reported with file, line and
//! key; a bad value is never replaced by a default.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

pub use uplinkd_core::config::*;

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

// ---------------------------------------------------------------------------
// Raw (serde) form: exactly what the TOML says, with spans.
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    probe: RawProbe,
    uplink: Option<Vec<Spanned<RawUplink>>>,
    transit: Option<Vec<Spanned<RawTransit>>>,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default)]
    metrics: RawMetrics,
}

type RawStr = Option<Spanned<String>>;
type RawInt = Option<Spanned<i64>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    socket: RawStr,
    socket_group: RawStr,
    route_metric: RawInt,
    kernel_fallback: Option<Spanned<bool>>,
    table_base: RawInt,
    fwmark_base: RawInt,
    rule_priority: RawInt,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    failback_after: RawStr,
    quorum: RawInt,
    #[serde(default)]
    damping: RawDamping,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDamping {
    threshold: RawInt,
    window: RawStr,
    hold: RawStr,
    max_hold: RawStr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    carrier_interval: RawStr,
    gateway_interval: RawStr,
    gateway_fast_interval: RawStr,
    gateway_dead_after: RawStr,
    gateway_min_misses: RawInt,
    gateway_rise: RawInt,
    gateway_timeout: RawStr,
    transit_interval: RawStr,
    transit_fast_interval: RawStr,
    transit_timeout: RawStr,
    transit_fall: RawInt,
    transit_rise: RawInt,
    standby_slowdown: RawInt,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    on_active_change: Option<Spanned<Vec<Spanned<String>>>>,
    on_health_change: Option<Spanned<Vec<Spanned<String>>>>,
    timeout: RawStr,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    http: Option<Spanned<bool>>,
    listen: RawStr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    name: RawStr,
    interface: RawStr,
    gateway4: RawStr,
    gateway6: RawStr,
    bond: RawStr,
    probe_address4: RawStr,
    probe_address6: RawStr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransit {
    name: RawStr,
    targets: Option<Spanned<Vec<Spanned<String>>>>,
}

// ---------------------------------------------------------------------------
// Shape: the keys and value types the raw structs accept. Checked on the
// parsed document before serde runs, so that *every* unknown key and every
// wrongly-typed value is reported (serde stops at the first). A unit test
// checks that this table and the raw structs agree.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    Table(&'static [(&'static str, Kind)]),
    TableList(&'static [(&'static str, Kind)]),
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "a boolean (true or false)",
            Kind::StrList => "an array of strings",
            Kind::Table(_) => "a table",
            Kind::TableList(_) => "an array of tables ([[...]])",
        }
    }
}

const AGENT_KEYS: &[(&str, Kind)] = &[
    ("socket", Kind::Str),
    ("socket_group", Kind::Str),
    ("route_metric", Kind::Int),
    ("kernel_fallback", Kind::Bool),
    ("table_base", Kind::Int),
    ("fwmark_base", Kind::Int),
    ("rule_priority", Kind::Int),
];
const DAMPING_KEYS: &[(&str, Kind)] = &[
    ("threshold", Kind::Int),
    ("window", Kind::Str),
    ("hold", Kind::Str),
    ("max_hold", Kind::Str),
];
const POLICY_KEYS: &[(&str, Kind)] = &[
    ("failback_after", Kind::Str),
    ("quorum", Kind::Int),
    ("damping", Kind::Table(DAMPING_KEYS)),
];
const PROBE_KEYS: &[(&str, Kind)] = &[
    ("carrier_interval", Kind::Str),
    ("gateway_interval", Kind::Str),
    ("gateway_fast_interval", Kind::Str),
    ("gateway_dead_after", Kind::Str),
    ("gateway_min_misses", Kind::Int),
    ("gateway_rise", Kind::Int),
    ("gateway_timeout", Kind::Str),
    ("transit_interval", Kind::Str),
    ("transit_fast_interval", Kind::Str),
    ("transit_timeout", Kind::Str),
    ("transit_fall", Kind::Int),
    ("transit_rise", Kind::Int),
    ("standby_slowdown", Kind::Int),
];
const UPLINK_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("interface", Kind::Str),
    ("gateway4", Kind::Str),
    ("gateway6", Kind::Str),
    ("bond", Kind::Str),
    ("probe_address4", Kind::Str),
    ("probe_address6", Kind::Str),
];
const TRANSIT_KEYS: &[(&str, Kind)] = &[("name", Kind::Str), ("targets", Kind::StrList)];
const HOOKS_KEYS: &[(&str, Kind)] = &[
    ("on_active_change", Kind::StrList),
    ("on_health_change", Kind::StrList),
    ("timeout", Kind::Str),
];
const METRICS_KEYS: &[(&str, Kind)] = &[("http", Kind::Bool), ("listen", Kind::Str)];
const ROOT_KEYS: &[(&str, Kind)] = &[
    ("agent", Kind::Table(AGENT_KEYS)),
    ("policy", Kind::Table(POLICY_KEYS)),
    ("probe", Kind::Table(PROBE_KEYS)),
    ("uplink", Kind::TableList(UPLINK_KEYS)),
    ("transit", Kind::TableList(TRANSIT_KEYS)),
    ("hooks", Kind::Table(HOOKS_KEYS)),
    ("metrics", Kind::Table(METRICS_KEYS)),
];

/// Every leaf key the configuration accepts, dotted (`agent.socket`,
/// `policy.damping.hold`, `uplink.gateway4`, `transit.targets`; entries of
/// `[[uplink]]`/`[[transit]]` are written without an index).
pub fn known_keys() -> Vec<String> {
    fn walk(fields: &[(&str, Kind)], prefix: &str, out: &mut Vec<String>) {
        for (name, kind) in fields {
            let key = if prefix.is_empty() {
                (*name).to_string()
            } else {
                format!("{prefix}.{name}")
            };
            match kind {
                Kind::Table(sub) | Kind::TableList(sub) => walk(sub, &key, out),
                _ => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk(ROOT_KEYS, "", &mut out);
    out
}

// ---------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------

/// Collects problems, turning byte spans into line/column.
struct Report<'a> {
    origin: &'a str,
    text: &'a str,
    errors: Vec<ConfigError>,
    /// Keys already reported as unknown or of the wrong type (and removed
    /// before validation): later errors about them would only repeat or
    /// mislead (e.g. "missing name" after "name: expected a string").
    broken: Vec<String>,
    /// Set once the shape check is over: from then on, errors about broken
    /// keys are dropped.
    shape_done: bool,
}

impl<'a> Report<'a> {
    fn new(origin: &'a str, text: &'a str) -> Self {
        Report {
            origin,
            text,
            errors: Vec::new(),
            broken: Vec::new(),
            shape_done: false,
        }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // Spans are byte offsets on char boundaries; be safe anyway.
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Whether `key` (or a table containing it) was removed as malformed.
    fn is_broken(&self, key: &str) -> bool {
        self.broken.iter().any(|b| {
            key == b
                || key
                    .strip_prefix(b.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    fn add(
        &mut self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let key = key.into();
        if self.shape_done && self.is_broken(&key) {
            return;
        }
        let (line, column) = match span {
            Some(span) => {
                let (l, c) = self.position(span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.errors.push(ConfigError {
            origin: self.origin.to_string(),
            line,
            column,
            key,
            message: message.into(),
        });
    }

    /// The problems found, in text order (those without a place, such as a
    /// missing section, first). Called only when there is at least one.
    fn into_errors(mut self) -> ConfigErrors {
        if self.errors.is_empty() {
            // A caller bug, not a config problem: say so rather than succeed.
            self.add("", None, "invalid configuration (no detail recorded)");
        }
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors {
            errors: self.errors,
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn type_name(v: &toml::de::DeValue<'_>) -> &'static str {
    use toml::de::DeValue;
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Reports every unknown key and every value of the wrong type, and removes
/// them from the document (recording their keys in `report.broken`) so that
/// the rest can still be deserialized and validated: one run reports every
/// problem. Returns false when the structure is too broken to go on (an
/// `[[uplink]]`/`[[transit]]` entry that is not a table: later indices would
/// shift).
fn check_shape(
    table: &mut toml::de::DeTable<'_>,
    fields: &[(&str, Kind)],
    prefix: &str,
    report: &mut Report<'_>,
) -> bool {
    use toml::de::DeValue;
    let lookup = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);

    let mut unknown = Vec::new();
    for (k, _) in table.iter() {
        if lookup(k.get_ref()).is_none() {
            let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
            let key = join(prefix, k.get_ref());
            report.add(
                key.clone(),
                Some(k.span()),
                format!("unknown key; expected one of: {}", known.join(", ")),
            );
            report.broken.push(key);
            unknown.push(k.get_ref().to_string());
        }
    }

    let mut ok = true;
    // Rebuild the table with only the entries that passed.
    for (name, mut v) in std::mem::take(table) {
        let Some(kind) = lookup(name.get_ref()) else {
            continue; // unknown: reported above
        };
        let key = join(prefix, name.get_ref());
        let span = v.span();
        let keep = match (kind, v.get_mut()) {
            (Kind::Str, DeValue::String(_))
            | (Kind::Int, DeValue::Integer(_))
            | (Kind::Bool, DeValue::Boolean(_)) => true,
            (Kind::StrList, DeValue::Array(items)) => {
                let mut good = true;
                for (i, item) in items.iter().enumerate() {
                    if !item.get_ref().is_str() {
                        report.add(
                            format!("{key}[{i}]"),
                            Some(item.span()),
                            format!("expected a string, found {}", type_name(item.get_ref())),
                        );
                        good = false;
                    }
                }
                good
            }
            (Kind::Table(sub), DeValue::Table(t)) => {
                ok &= check_shape(t, sub, &key, report);
                true
            }
            (Kind::TableList(sub), DeValue::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let item_span = item.span();
                    match item.get_mut() {
                        DeValue::Table(t) => {
                            ok &= check_shape(t, sub, &format!("{key}[{i}]"), report);
                        }
                        other => {
                            report.add(
                                format!("{key}[{i}]"),
                                Some(item_span),
                                format!("expected a table, found {}", type_name(other)),
                            );
                            ok = false;
                        }
                    }
                }
                true
            }
            (_, other) => {
                report.add(
                    key.clone(),
                    Some(span),
                    format!("expected {}, found {}", kind.describe(), type_name(other)),
                );
                false
            }
        };
        if keep {
            table.insert(name, v);
        } else {
            report.broken.push(key);
        }
    }
    ok
}

/// Reads typed values out of the raw form, reporting each problem; a
/// value that is absent takes its default, a value that is bad yields
/// `None` (and an error), never the default.
impl Report<'_> {
    fn duration(&mut self, key: &str, raw: &RawStr, default: Duration) -> Option<Duration> {
        let Some(raw) = raw else {
            return Some(default);
        };
        match humantime::parse_duration(raw.get_ref().trim()) {
            Ok(d) if d.is_zero() => {
                self.add(key, Some(raw.span()), "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.add(
                    key,
                    Some(raw.span()),
                    format!(
                        "invalid duration {:?}: {e} (write e.g. \"250ms\", \"30s\", \"10m\")",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn int<T: TryFrom<i64>>(
        &mut self,
        key: &str,
        raw: &RawInt,
        default: T,
        range: std::ops::RangeInclusive<i64>,
        why: &str,
    ) -> Option<T> {
        let Some(raw) = raw else {
            return Some(default);
        };
        let v = *raw.get_ref();
        if !range.contains(&v) {
            self.add(
                key,
                Some(raw.span()),
                format!(
                    "{v} is out of range {}..={}{}{why}",
                    range.start(),
                    range.end(),
                    if why.is_empty() { "" } else { ": " }
                ),
            );
            return None;
        }
        match T::try_from(v) {
            Ok(t) => Some(t),
            Err(_) => {
                self.add(key, Some(raw.span()), format!("{v} is out of range"));
                None
            }
        }
    }

    /// An ordering between two durations; reported on the key the operator
    /// wrote (the first if both), so the line points at something to change.
    fn relation(
        &mut self,
        ok: bool,
        (a_key, a_raw, a): (&str, &RawStr, Duration),
        (b_key, b_raw, b): (&str, &RawStr, Duration),
        op: &str,
        why: &str,
    ) {
        if ok || self.is_broken(a_key) || self.is_broken(b_key) {
            return;
        }
        let (key, span) = match (a_raw, b_raw) {
            (Some(r), _) => (a_key, Some(r.span())),
            (None, Some(r)) => (b_key, Some(r.span())),
            (None, None) => (a_key, None),
        };
        let dflt = |raw: &RawStr| if raw.is_none() { ", the default" } else { "" };
        self.add(
            key,
            span,
            format!(
                "{a_key} ({}{}) must be {op} {b_key} ({}{}): {why}",
                humantime::format_duration(a),
                dflt(a_raw),
                humantime::format_duration(b),
                dflt(b_raw),
            ),
        );
    }
}

/// Linux interface names: IFNAMSIZ is 16 including the NUL (include/uapi/linux/if.h),
/// and `dev_valid_name()` (net/core/dev.c) rejects '/', ':', whitespace, "." and "..".
fn ifname_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 15 {
        return Some(format!(
            "{name:?} is not a valid interface name: must be 1 to 15 bytes (IFNAMSIZ - 1), not {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || *c == '\0')
    {
        return Some(format!(
            "{name:?} is not a valid interface name: it contains {c:?} (the kernel rejects '/', ':' and whitespace)"
        ));
    }
    None
}

/// Object names appear in logs, status, metrics labels and hooks' arguments.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 32 {
        return Some(format!(
            "{name:?} is too long ({} bytes, at most 32)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!(
            "{name:?} contains {c:?}; use only letters, digits, '_', '.' and '-'"
        ));
    }
    None
}

/// Why `addr` cannot be probed or routed through, if it cannot.
fn unicast_problem(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("is unspecified (0.0.0.0)"),
        IpAddr::V4(a) if a.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("is a multicast address"),
        IpAddr::V4(a) if a.is_loopback() => Some("is a loopback address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("is unspecified (::)"),
        IpAddr::V6(a) if a.is_multicast() => Some("is a multicast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("is the loopback address"),
        _ => None,
    }
}

fn parse_addr<T: std::str::FromStr + Into<IpAddr> + Copy>(
    report: &mut Report<'_>,
    key: &str,
    raw: &Spanned<String>,
    what: &str,
) -> Option<T> {
    let text = raw.get_ref().trim();
    let Ok(addr) = text.parse::<T>() else {
        let hint = if text.contains('/') {
            " (a single address, without a prefix length)"
        } else {
            ""
        };
        report.add(
            key,
            Some(raw.span()),
            format!("{:?} is not {what}{hint}", raw.get_ref()),
        );
        return None;
    };
    if let Some(problem) = unicast_problem(addr.into()) {
        report.add(
            key,
            Some(raw.span()),
            format!("{text} {problem}; expected a unicast address"),
        );
        return None;
    }
    Some(addr)
}

/// Routing tables the kernel reserves (include/uapi/linux/rtnetlink.h:
/// RT_TABLE_UNSPEC 0, RT_TABLE_DEFAULT 253, RT_TABLE_MAIN 254, RT_TABLE_LOCAL 255).
const RESERVED_TABLES: [(u32, &str); 4] = [
    (0, "unspec"),
    (253, "default"),
    (254, "main"),
    (255, "local"),
];

/// The kernel's default rules sit at 0 (local), 32766 (main) and 32767
/// (default); the probe rules must come after local and before main.
const RULE_PRIORITY_MAX: i64 = 32765;

/// `sun_path` is 108 bytes including the terminating NUL (unix(7)).
const SUN_PATH_MAX: usize = 107;

/// Upper bound for counters and thresholds: larger values are almost
/// certainly a typo, and would make a detector that never fires.
const COUNT_MAX: i64 = 1000;

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
    let span = doc.span();
    let mut doc = doc.into_inner();
    if !check_shape(&mut doc, ROOT_KEYS, "", &mut report) {
        return Err(report.into_errors());
    }
    report.shape_done = true;

    // 3. Raw structs (cannot fail after the shape check, but map it if it does).
    let de = toml::de::ValueDeserializer::from(Spanned::new(span, toml::de::DeValue::Table(doc)));
    let raw = match RawConfig::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            report.add("", e.span(), e.message().trim().to_string());
            return Err(report.into_errors());
        }
    };

    // 4. Values and relations.
    let config = validate(&raw, &mut report);
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

fn validate(raw: &RawConfig, r: &mut Report<'_>) -> Option<Config> {
    let uplinks_raw: &[Spanned<RawUplink>] = raw.uplink.as_deref().unwrap_or(&[]);
    let transits_raw: &[Spanned<RawTransit>] = raw.transit.as_deref().unwrap_or(&[]);
    let n_uplinks = uplinks_raw.len();
    let n_transits = transits_raw.len();

    // --- uplinks ---
    if n_uplinks == 0 {
        r.add(
            "uplink",
            None,
            "at least one [[uplink]] is required (the first is the primary)",
        );
    }
    let mut uplinks: Vec<UplinkConfig> = Vec::new();
    // (name, index, line) seen so far, for duplicates.
    let mut seen_names: Vec<(String, usize, usize)> = Vec::new();
    for (i, u) in uplinks_raw.iter().enumerate() {
        let p = format!("uplink[{i}]");
        let table_span = Some(u.span());
        let u = u.get_ref();
        let name = checked_name(
            r,
            "uplink",
            &p,
            &u.name,
            table_span.clone(),
            i,
            &mut seen_names,
        );
        let interface = match &u.interface {
            None => {
                r.add(
                    format!("{p}.interface"),
                    table_span.clone(),
                    "missing (the network interface of this uplink, e.g. \"eth0\")",
                );
                None
            }
            Some(ifn) => match ifname_problem(ifn.get_ref()) {
                Some(problem) => {
                    r.add(format!("{p}.interface"), Some(ifn.span()), problem);
                    None
                }
                None => Some(ifn.get_ref().clone()),
            },
        };
        // Outer None: present but bad (reported); Some(None): absent.
        let gateway4: Option<Option<Ipv4Addr>> = match &u.gateway4 {
            None => Some(None),
            Some(g) => {
                parse_addr::<Ipv4Addr>(r, &format!("{p}.gateway4"), g, "an IPv4 address").map(Some)
            }
        };
        let gateway6: Option<Option<Ipv6Addr>> = match &u.gateway6 {
            None => Some(None),
            Some(g) => {
                parse_addr::<Ipv6Addr>(r, &format!("{p}.gateway6"), g, "an IPv6 address").map(Some)
            }
        };
        if u.gateway4.is_none() && u.gateway6.is_none() && !r.is_broken(&format!("{p}.gateway6")) {
            r.add(
                format!("{p}.gateway4"),
                table_span.clone(),
                "an uplink needs at least one gateway: set gateway4, gateway6 or both",
            );
        }
        // Outer None: present but bad (reported); Some(None): absent.
        let bond: Option<Option<String>> = match &u.bond {
            None => Some(None),
            Some(b) => match ifname_problem(b.get_ref()) {
                Some(problem) => {
                    r.add(format!("{p}.bond"), Some(b.span()), problem);
                    None
                }
                None if interface.as_deref() == Some(b.get_ref().as_str()) => {
                    r.add(
                        format!("{p}.bond"),
                        Some(b.span()),
                        format!(
                            "the bond ({}) must differ from the interface, which is the bond's member",
                            b.get_ref()
                        ),
                    );
                    None
                }
                None => Some(Some(b.get_ref().clone())),
            },
        };
        let probe_address4: Option<Option<Ipv4Addr>> = match &u.probe_address4 {
            None => Some(None),
            Some(g) => {
                parse_addr::<Ipv4Addr>(r, &format!("{p}.probe_address4"), g, "an IPv4 address")
                    .map(Some)
            }
        };
        let probe_address6: Option<Option<Ipv6Addr>> = match &u.probe_address6 {
            None => Some(None),
            Some(g) => {
                parse_addr::<Ipv6Addr>(r, &format!("{p}.probe_address6"), g, "an IPv6 address")
                    .map(Some)
            }
        };
        for (key, set, has_gw) in [
            ("probe_address4", &u.probe_address4, u.gateway4.is_some()),
            ("probe_address6", &u.probe_address6, u.gateway6.is_some()),
        ] {
            let Some(v) = set else { continue };
            if u.bond.is_none() {
                r.add(
                    format!("{p}.{key}"),
                    Some(v.span()),
                    "only bond members have a probe address (a routed uplink probes from its own address)",
                );
            } else if !has_gw {
                r.add(
                    format!("{p}.{key}"),
                    Some(v.span()),
                    "a probe address needs the gateway of its family (transit probes leave through it)",
                );
            }
        }
        let (
            Some(name),
            Some(interface),
            Some(gateway4),
            Some(gateway6),
            Some(bond),
            Some(probe_address4),
            Some(probe_address6),
        ) = (
            name,
            interface,
            gateway4,
            gateway6,
            bond,
            probe_address4,
            probe_address6,
        )
        else {
            continue;
        };
        for (j, other) in uplinks.iter().enumerate() {
            let clash4 = probe_address4.is_some()
                && (probe_address4 == other.probe_address4 || probe_address4 == other.gateway4);
            let clash6 = probe_address6.is_some()
                && (probe_address6 == other.probe_address6 || probe_address6 == other.gateway6);
            if clash4 || clash6 {
                let (key, span) = if clash4 {
                    (
                        "probe_address4",
                        u.probe_address4.as_ref().map(|s| s.span()),
                    )
                } else {
                    (
                        "probe_address6",
                        u.probe_address6.as_ref().map(|s| s.span()),
                    )
                };
                r.add(
                    format!("{p}.{key}"),
                    span,
                    format!(
                        "also used by uplink[{j}] {:?}; each member needs its own probe address",
                        other.name
                    ),
                );
            }
        }
        if (probe_address4.is_some() && probe_address4 == gateway4)
            || (probe_address6.is_some() && probe_address6 == gateway6)
        {
            r.add(
                format!("{p}.probe_address4"),
                table_span.clone(),
                "the probe address must not be the gateway's",
            );
        }
        // Members of one bond reach the same gateways through it (the route
        // goes via the bond whichever member is active).
        if let Some(b) = &bond {
            if let Some((j, other)) = uplinks
                .iter()
                .enumerate()
                .find(|(_, o)| o.bond.as_ref() == Some(b))
            {
                if other.gateway4 != gateway4 || other.gateway6 != gateway6 {
                    r.add(
                        format!("{p}.bond"),
                        u.bond.as_ref().map(|s| s.span()),
                        format!(
                            "uplink {name:?} and uplink[{j}] {:?} are members of bond {b} but have different gateways; members of one bond reach the same gateway4/gateway6 through it",
                            other.name
                        ),
                    );
                }
            }
            if let Some((j, other)) = uplinks
                .iter()
                .enumerate()
                .find(|(_, o)| o.bond.is_none() && o.interface == *b)
            {
                r.add(
                    format!("{p}.bond"),
                    u.bond.as_ref().map(|s| s.span()),
                    format!(
                        "bond {b} is also the interface of the routed uplink[{j}] {:?}; configure the bond through its members (interface = member, bond = {b:?})",
                        other.name
                    ),
                );
            }
        }
        // Two uplinks on one interface (e.g. two routers on one VLAN) are
        // told apart only by their gateways.
        for (j, other) in uplinks.iter().enumerate() {
            if other.interface != interface {
                continue;
            }
            let same4 = gateway4.is_some() && gateway4 == other.gateway4;
            let same6 = gateway6.is_some() && gateway6 == other.gateway6;
            if same4 || same6 {
                let (fam, span) = if same4 {
                    ("gateway4", u.gateway4.as_ref().map(|s| s.span()))
                } else {
                    ("gateway6", u.gateway6.as_ref().map(|s| s.span()))
                };
                r.add(
                    format!("{p}.{fam}"),
                    span,
                    format!(
                        "uplink {name:?} uses the same interface ({interface}) and {fam} as uplink[{j}] {:?}; uplinks may share an interface only with different gateways",
                        other.name
                    ),
                );
            }
        }
        uplinks.push(UplinkConfig {
            name,
            interface,
            gateway4,
            gateway6,
            bond,
            probe_address4,
            probe_address6,
        });
    }

    // --- transits ---
    if n_transits == 0 {
        r.add(
            "transit",
            None,
            "at least one [[transit]] with targets is required (the far end whose reachability decides an uplink's health)",
        );
    }
    let mut transits = Vec::new();
    let mut seen_names: Vec<(String, usize, usize)> = Vec::new();
    let mut seen_targets: Vec<(IpAddr, String)> = Vec::new();
    for (i, t) in transits_raw.iter().enumerate() {
        let p = format!("transit[{i}]");
        let table_span = Some(t.span());
        let t = t.get_ref();
        let mut ok = true;
        let name = checked_name(
            r,
            "transit",
            &p,
            &t.name,
            table_span.clone(),
            i,
            &mut seen_names,
        );
        let mut targets = Vec::new();
        match &t.targets {
            None => {
                r.add(
                    format!("{p}.targets"),
                    table_span,
                    "missing: list at least one target address, e.g. targets = [\"203.0.113.1\"]",
                );
                ok = false;
            }
            Some(list) if list.get_ref().is_empty() => {
                r.add(
                    format!("{p}.targets"),
                    Some(list.span()),
                    "must list at least one target address",
                );
                ok = false;
            }
            Some(list) => {
                for (k, target) in list.get_ref().iter().enumerate() {
                    let key = format!("{p}.targets[{k}]");
                    match parse_addr::<IpAddr>(r, &key, target, "an IP address") {
                        None => ok = false,
                        Some(addr) => {
                            if let Some((_, where_)) = seen_targets.iter().find(|(a, _)| *a == addr)
                            {
                                // Quorum counts independent targets; one address twice is one target.
                                r.add(
                                    key,
                                    Some(target.span()),
                                    format!("{addr} is listed twice (also {where_}); each target must be distinct"),
                                );
                                ok = false;
                            } else {
                                seen_targets.push((addr, key));
                                targets.push(addr);
                            }
                        }
                    }
                }
            }
        }
        if let (Some(name), true) = (name, ok) {
            transits.push(TransitConfig { name, targets });
        }
    }

    // --- agent ---
    let a = &raw.agent;
    let d = AgentConfig::default();
    let socket = match &a.socket {
        None => Some(d.socket.clone()),
        Some(s) => {
            let path = s.get_ref();
            if !path.starts_with('/') {
                r.add(
                    "agent.socket",
                    Some(s.span()),
                    format!("{path:?} must be an absolute path"),
                );
                None
            } else if path.len() > SUN_PATH_MAX || path.contains('\0') {
                r.add(
                    "agent.socket",
                    Some(s.span()),
                    format!(
                        "{path:?} is too long for a Unix socket (at most {SUN_PATH_MAX} bytes)"
                    ),
                );
                None
            } else {
                Some(PathBuf::from(path))
            }
        }
    };
    let socket_group = match &a.socket_group {
        None => Some(None),
        Some(g) => {
            let name = g.get_ref();
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c == ':' || c == '/' || c.is_whitespace())
            {
                r.add(
                    "agent.socket_group",
                    Some(g.span()),
                    format!("{name:?} is not a valid group name (omit the key for root's group)"),
                );
                None
            } else {
                Some(Some(name.clone()))
            }
        }
    };
    let max_metric = i64::from(u32::MAX) - 64;
    let route_metric = r.int(
        "agent.route_metric",
        &a.route_metric,
        d.route_metric,
        1..=max_metric,
        "0 becomes 1024 for IPv6, and kernel fallback routes use route_metric + 1 + uplink index",
    );
    if let (Some(m), Some(raw_m)) = (route_metric, &a.route_metric) {
        if u64::from(m) + n_uplinks as u64 > u64::from(u32::MAX) {
            r.add(
                "agent.route_metric",
                Some(raw_m.span()),
                format!("{m} + {n_uplinks} uplinks overflows the fallback route metrics"),
            );
        }
    }
    let kernel_fallback = a
        .kernel_fallback
        .as_ref()
        .map_or(d.kernel_fallback, |b| *b.get_ref());
    let table_base = r.int(
        "agent.table_base",
        &a.table_base,
        d.table_base,
        1..=i64::from(u32::MAX),
        "",
    );
    if let Some(base) = table_base {
        let last = i64::from(base) + n_uplinks.max(1) as i64 - 1;
        let span = a.table_base.as_ref().map(|s| s.span());
        if last > i64::from(u32::MAX) {
            r.add(
                "agent.table_base",
                span,
                format!("tables {base}..={last} do not fit in 32 bits"),
            );
        } else if let Some((t, tname)) = RESERVED_TABLES
            .iter()
            .find(|(t, _)| (i64::from(base)..=last).contains(&i64::from(*t)))
        {
            r.add(
                "agent.table_base",
                span,
                format!(
                    "per-uplink tables {base}..={last} (table_base + uplink index) include the kernel's reserved table {t} ({tname}); pick a base clear of 0 and 253-255"
                ),
            );
        }
    }
    let fwmark_base = r.int(
        "agent.fwmark_base",
        &a.fwmark_base,
        d.fwmark_base,
        1..=i64::from(u32::MAX),
        "mark 0 means unmarked",
    );
    if let (Some(base), Some(s)) = (fwmark_base, &a.fwmark_base) {
        if u64::from(base) + n_uplinks as u64 > u64::from(u32::MAX) + 1 {
            r.add(
                "agent.fwmark_base",
                Some(s.span()),
                format!("marks {base} + uplink index do not fit in 32 bits"),
            );
        }
    }
    let rule_priority = r.int(
        "agent.rule_priority",
        &a.rule_priority,
        d.rule_priority,
        1..=RULE_PRIORITY_MAX,
        "the rules must come after the local rule (0) and before the main table's (32766)",
    );

    // --- policy ---
    let p = &raw.policy;
    let failback_after = r.duration(
        "policy.failback_after",
        &p.failback_after,
        PolicyConfig::DEFAULT_FAILBACK_AFTER,
    );
    let quorum = match &p.quorum {
        None => Some(PolicyConfig::default_quorum(n_transits)),
        Some(q) => {
            let v = *q.get_ref();
            if n_transits == 0 {
                None // already reported: no transits
            } else if v < 1 || v > n_transits as i64 {
                r.add(
                    "policy.quorum",
                    Some(q.span()),
                    format!("{v} is out of range 1..={n_transits} (the number of transits)"),
                );
                None
            } else {
                Some(v as usize)
            }
        }
    };
    let dd = DampingConfig::default();
    let dr = &p.damping;
    let threshold = r.int(
        "policy.damping.threshold",
        &dr.threshold,
        dd.threshold,
        1..=COUNT_MAX,
        "",
    );
    let window = r.duration("policy.damping.window", &dr.window, dd.window);
    let hold = r.duration("policy.damping.hold", &dr.hold, dd.hold);
    let max_hold = r.duration("policy.damping.max_hold", &dr.max_hold, dd.max_hold);
    if let (Some(h), Some(m)) = (hold, max_hold) {
        r.relation(
            h <= m,
            ("policy.damping.hold", &dr.hold, h),
            ("policy.damping.max_hold", &dr.max_hold, m),
            "<=",
            "the hold doubles up to max_hold",
        );
    }

    // --- probe ---
    let pd = ProbeConfig::default();
    let pr = &raw.probe;
    let carrier_interval = r.duration(
        "probe.carrier_interval",
        &pr.carrier_interval,
        pd.carrier_interval,
    );
    let gateway_interval = r.duration(
        "probe.gateway_interval",
        &pr.gateway_interval,
        pd.gateway_interval,
    );
    let gateway_fast_interval = r.duration(
        "probe.gateway_fast_interval",
        &pr.gateway_fast_interval,
        pd.gateway_fast_interval,
    );
    let gateway_dead_after = r.duration(
        "probe.gateway_dead_after",
        &pr.gateway_dead_after,
        pd.gateway_dead_after,
    );
    let gateway_min_misses = r.int(
        "probe.gateway_min_misses",
        &pr.gateway_min_misses,
        pd.gateway_min_misses,
        1..=COUNT_MAX,
        "",
    );
    let gateway_rise = r.int(
        "probe.gateway_rise",
        &pr.gateway_rise,
        pd.gateway_rise,
        1..=COUNT_MAX,
        "",
    );
    let gateway_timeout = r.duration(
        "probe.gateway_timeout",
        &pr.gateway_timeout,
        pd.gateway_timeout,
    );
    let transit_interval = r.duration(
        "probe.transit_interval",
        &pr.transit_interval,
        pd.transit_interval,
    );
    let transit_fast_interval = r.duration(
        "probe.transit_fast_interval",
        &pr.transit_fast_interval,
        pd.transit_fast_interval,
    );
    let transit_timeout = r.duration(
        "probe.transit_timeout",
        &pr.transit_timeout,
        pd.transit_timeout,
    );
    let transit_fall = r.int(
        "probe.transit_fall",
        &pr.transit_fall,
        pd.transit_fall,
        1..=COUNT_MAX,
        "",
    );
    let transit_rise = r.int(
        "probe.transit_rise",
        &pr.transit_rise,
        pd.transit_rise,
        1..=COUNT_MAX,
        "",
    );
    let standby_slowdown = r.int(
        "probe.standby_slowdown",
        &pr.standby_slowdown,
        pd.standby_slowdown,
        1..=10,
        "",
    );
    if let (Some(tick), Some(fast)) = (carrier_interval, gateway_fast_interval) {
        r.relation(
            tick <= fast,
            ("probe.carrier_interval", &pr.carrier_interval, tick),
            (
                "probe.gateway_fast_interval",
                &pr.gateway_fast_interval,
                fast,
            ),
            "<=",
            "carrier_interval is the agent's tick: probes and timers are handled on it",
        );
    }
    if let (Some(fast), Some(slow)) = (gateway_fast_interval, gateway_interval) {
        r.relation(
            fast <= slow,
            (
                "probe.gateway_fast_interval",
                &pr.gateway_fast_interval,
                fast,
            ),
            ("probe.gateway_interval", &pr.gateway_interval, slow),
            "<=",
            "the fast interval is used on suspicion, to probe harder",
        );
    }
    if let (Some(dead), Some(slow)) = (gateway_dead_after, gateway_interval) {
        r.relation(
            dead > slow,
            ("probe.gateway_dead_after", &pr.gateway_dead_after, dead),
            ("probe.gateway_interval", &pr.gateway_interval, slow),
            ">",
            "otherwise a healthy gateway is declared dead between two probes",
        );
    }
    if let (Some(timeout), Some(dead)) = (gateway_timeout, gateway_dead_after) {
        r.relation(
            timeout <= dead,
            ("probe.gateway_timeout", &pr.gateway_timeout, timeout),
            ("probe.gateway_dead_after", &pr.gateway_dead_after, dead),
            "<=",
            "a reply that may arrive later than the dead-after time cannot keep a gateway alive",
        );
    }
    if let (Some(fast), Some(slow)) = (transit_fast_interval, transit_interval) {
        r.relation(
            fast <= slow,
            (
                "probe.transit_fast_interval",
                &pr.transit_fast_interval,
                fast,
            ),
            ("probe.transit_interval", &pr.transit_interval, slow),
            "<=",
            "the fast interval is used on suspicion, to probe harder",
        );
    }

    // --- hooks ---
    let hd = HooksConfig::default();
    let hr = &raw.hooks;
    let mut hook_list = |key: &str, raw: &Option<Spanned<Vec<Spanned<String>>>>| {
        let mut ok = true;
        let mut out = Vec::new();
        for (k, cmd) in raw.iter().flat_map(|l| l.get_ref().iter()).enumerate() {
            let text = cmd.get_ref();
            if text.trim().is_empty() || text.contains('\0') {
                r.add(
                    format!("{key}[{k}]"),
                    Some(cmd.span()),
                    "must be a command line (run with /bin/sh -c), not empty",
                );
                ok = false;
            } else {
                out.push(text.clone());
            }
        }
        ok.then_some(out)
    };
    let on_active_change = hook_list("hooks.on_active_change", &hr.on_active_change);
    let on_health_change = hook_list("hooks.on_health_change", &hr.on_health_change);
    let hook_timeout = r.duration("hooks.timeout", &hr.timeout, hd.timeout);

    // --- metrics ---
    let md = MetricsConfig::default();
    let mr = &raw.metrics;
    let metrics_http = mr.http.as_ref().map_or(md.http, |b| *b.get_ref());
    let metrics_listen = match &mr.listen {
        None => Some(md.listen),
        Some(l) => match l.get_ref().trim().parse::<std::net::SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                r.add(
                    "metrics.listen",
                    Some(l.span()),
                    format!("{a}: port 0 would pick a random port; give a fixed one"),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                r.add(
                    "metrics.listen",
                    Some(l.span()),
                    format!(
                        "{:?} is not an address and port (write e.g. \"127.0.0.1:9469\" or \"[::1]:9469\")",
                        l.get_ref()
                    ),
                );
                None
            }
        },
    };

    Some(Config {
        agent: AgentConfig {
            socket: socket?,
            socket_group: socket_group?,
            route_metric: route_metric?,
            kernel_fallback,
            table_base: table_base?,
            fwmark_base: fwmark_base?,
            rule_priority: rule_priority?,
        },
        policy: PolicyConfig {
            failback_after: failback_after?,
            quorum: quorum?,
            damping: DampingConfig {
                threshold: threshold?,
                window: window?,
                hold: hold?,
                max_hold: max_hold?,
            },
        },
        probe: ProbeConfig {
            carrier_interval: carrier_interval?,
            gateway_interval: gateway_interval?,
            gateway_fast_interval: gateway_fast_interval?,
            gateway_dead_after: gateway_dead_after?,
            gateway_min_misses: gateway_min_misses?,
            gateway_rise: gateway_rise?,
            gateway_timeout: gateway_timeout?,
            transit_interval: transit_interval?,
            transit_fast_interval: transit_fast_interval?,
            transit_timeout: transit_timeout?,
            transit_fall: transit_fall?,
            transit_rise: transit_rise?,
            standby_slowdown: standby_slowdown?,
        },
        uplinks,
        transits,
        hooks: HooksConfig {
            on_active_change: on_active_change?,
            on_health_change: on_health_change?,
            timeout: hook_timeout?,
        },
        metrics: MetricsConfig {
            http: metrics_http,
            listen: metrics_listen?,
        },
    })
}

/// Checks an uplink's or transit's name: present, well formed, unique among
/// its kind. `seen` holds (name, index, line) of the valid ones so far.
fn checked_name(
    r: &mut Report<'_>,
    kind: &str,
    prefix: &str,
    raw: &RawStr,
    table_span: Option<Range<usize>>,
    index: usize,
    seen: &mut Vec<(String, usize, usize)>,
) -> Option<String> {
    let key = format!("{prefix}.name");
    let Some(n) = raw else {
        r.add(
            key,
            table_span,
            format!("missing (every {kind} needs a name)"),
        );
        return None;
    };
    if let Some(problem) = name_problem(n.get_ref()) {
        r.add(key, Some(n.span()), problem);
        return None;
    }
    if let Some((_, j, line)) = seen.iter().find(|(s, _, _)| s == n.get_ref()) {
        r.add(
            key,
            Some(n.span()),
            format!(
                "duplicate {kind} name {:?} (also {kind}[{j}], line {line})",
                n.get_ref()
            ),
        );
        return None;
    }
    let line = r.position(n.span().start).0;
    seen.push((n.get_ref().clone(), index, line));
    Some(n.get_ref().clone())
}
