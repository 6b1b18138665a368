//! One section's values: each key present in the file is read by the rule
//! of its [`Kind`] and written to its field; an absent key keeps the
//! section's default, a bad one is reported and marks the key bad (its
//! default is never used in its place).

use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};
use uplinkd_core::config::{AgentMode, Family, GatewayProbe, Key, Kind};

use super::keys::join;
use super::report::{quote, shorten, Report};

/// A key present in the file.
struct Present {
    name: &'static str,
    /// The value's place in the text.
    span: Range<usize>,
    /// For a list: the index and place of each element that passed, in
    /// order (so the list's valid values can be told apart by position).
    items: Vec<(usize, Range<usize>)>,
    /// The value passed its rule.
    ok: bool,
}

/// A section as read: its typed value and where each key was written.
pub(super) struct Section<S> {
    /// Defaults overwritten by every valid value of the file. Holds a
    /// default where a value was bad: use it only through [`Section::valid`]
    /// or after checking [`Section::bad`].
    pub(super) value: S,
    present: Vec<Present>,
}

impl<S> Section<S> {
    /// Where the value of `name` is, if the file sets it.
    pub(super) fn span(&self, name: &str) -> Option<Range<usize>> {
        self.find(name).map(|p| p.span.clone())
    }
    /// Whether the file sets `name`.
    pub(super) fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }
    /// Whether `name` was set to a bad value (already reported).
    pub(super) fn bad(&self, name: &str) -> bool {
        self.find(name).is_some_and(|p| !p.ok)
    }
    /// Index and place of each valid element of the list `name`.
    pub(super) fn items(&self, name: &str) -> &[(usize, Range<usize>)] {
        self.find(name).map_or(&[], |p| &p.items)
    }
    /// The value, if every key the file sets passed.
    pub(super) fn valid(self) -> Option<S> {
        self.all_ok().then_some(self.value)
    }
    /// [`Section::valid`], borrowed.
    pub(super) fn valid_ref(&self) -> Option<&S> {
        self.all_ok().then_some(&self.value)
    }
    fn all_ok(&self) -> bool {
        self.present.iter().all(|p| p.ok)
    }
    fn find(&self, name: &str) -> Option<&Present> {
        self.present.iter().find(|p| p.name == name)
    }
}

/// Reads the keys of one section (`table`, absent when the file has no such
/// section) into `start`, which holds the defaults. `prefix` is the dotted
/// key of the section for messages; `n_transits` bounds the quorum.
pub(super) fn read_section<S>(
    r: &mut Report<'_>,
    table: Option<&DeTable<'_>>,
    prefix: &str,
    keys: &[Key<S>],
    start: S,
    n_transits: usize,
) -> Section<S> {
    let mut section = Section {
        value: start,
        present: Vec::new(),
    };
    for key in keys {
        let Some(v) = table.and_then(|t| t.get(key.name)) else {
            continue;
        };
        let full = join(prefix, key.name);
        let mut items = Vec::new();
        let ok = read_value(
            r,
            &full,
            v,
            &key.kind,
            &mut section.value,
            &mut items,
            n_transits,
        )
        .is_some();
        section.present.push(Present {
            name: key.name,
            span: v.span(),
            items,
            ok,
        });
    }
    section
}

/// Checks one value by its kind's rule and writes it; None if it is bad
/// (reported). `items` receives the valid elements of a list.
fn read_value<S>(
    r: &mut Report<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    kind: &Kind<S>,
    out: &mut S,
    items: &mut Vec<(usize, Range<usize>)>,
    n_transits: usize,
) -> Option<()> {
    let span = v.span();
    match kind {
        Kind::Duration { min, max, set } => set(out, duration(r, key, text(v)?, span, *min, *max)?),
        Kind::Count { min, max, why, set } => {
            let n = integer(r, key, v, i64::from(*min)..=i64::from(*max), why)?;
            set(out, u32::try_from(n).ok()?)
        }
        Kind::Quorum { set } => {
            if n_transits == 0 {
                return None; // already reported: no transits
            }
            let raw = v.get_ref().as_integer()?;
            match i64::from_str_radix(raw.as_str(), raw.radix()) {
                Ok(n) if (1..=n_transits as i64).contains(&n) => set(out, n as usize),
                parsed => {
                    let shown = parsed.map_or_else(|_| raw.as_str().to_string(), |n| n.to_string());
                    r.add(
                        key,
                        Some(span),
                        format!(
                            "{shown} is out of range 1..={n_transits} (the number of transits)"
                        ),
                    );
                    return None;
                }
            }
        }
        Kind::Bool { set } => set(out, v.get_ref().as_bool()?),
        Kind::SocketPath { set } => set(out, socket_path(r, key, text(v)?, span)?),
        Kind::Group { set } => set(out, Some(group(r, key, text(v)?, span)?)),
        Kind::Listen { set } => set(out, listen(r, key, text(v)?, span)?),
        Kind::Name { set } => set(out, checked(r, key, v, name_problem)?),
        Kind::Interface { set } => set(out, checked(r, key, v, ifname_problem)?),
        Kind::Ipv4 { set } => set(out, address(r, key, v, "an IPv4 address")?),
        Kind::Ipv6 { set } => set(out, address(r, key, v, "an IPv6 address")?),
        Kind::OptIpv4 { set } => set(out, Some(one_family(r, key, v, Family::V4)?)),
        Kind::OptIpv6 { set } => set(out, Some(one_family(r, key, v, Family::V6)?)),
        Kind::Mode { set } => match AgentMode::from_name(text(v)?) {
            Some(m) => set(out, m),
            None => {
                let names = AgentMode::NAMES.join("\" or \"");
                r.add(key, Some(span), format!("must be \"{names}\""));
                return None;
            }
        },
        Kind::GatewayProbe { set } => match GatewayProbe::from_name(text(v)?) {
            Some(m) => set(out, m),
            None => {
                let names = GatewayProbe::NAMES.join("\", \"");
                r.add(key, Some(span), format!("must be one of \"{names}\""));
                return None;
            }
        },
        Kind::Commands { set } => {
            let (list, all_ok) = list(r, key, v, items, |r, key, item| {
                let cmd = text(item)?;
                if cmd.trim().is_empty() || cmd.contains('\0') {
                    r.add(
                        key,
                        Some(item.span()),
                        "must be a command line (run with /bin/sh -c), not empty",
                    );
                    return None;
                }
                Some(cmd.to_string())
            });
            if !all_ok {
                return None;
            }
            set(out, list)
        }
        Kind::Targets { set } => {
            if v.get_ref().as_array().is_some_and(|a| a.is_empty()) {
                r.add(key, Some(span), "must list at least one target address");
                return None;
            }
            let (list, all_ok) = list(r, key, v, items, |r, key, item| {
                address::<IpAddr>(r, key, item, "an IP address")
            });
            // The valid ones are kept even when another is bad: the check
            // for addresses listed twice in the file still sees them.
            set(out, list);
            if !all_ok {
                return None;
            }
        }
    }
    Some(())
}

/// The string of a value (the shape check made sure it is one).
fn text<'v>(v: &'v Spanned<DeValue<'_>>) -> Option<&'v str> {
    v.get_ref().as_str()
}

/// A string that `problem` finds nothing wrong with.
fn checked(
    r: &mut Report<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    problem: fn(&str) -> Option<String>,
) -> Option<String> {
    let text = text(v)?;
    if let Some(problem) = problem(text) {
        r.add(key, Some(v.span()), problem);
        return None;
    }
    Some(text.to_string())
}

/// Reads each element of a list with `read` (key `key[i]`): the valid
/// ones, also recorded in `items`, and whether all were.
fn list<T>(
    r: &mut Report<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    items: &mut Vec<(usize, Range<usize>)>,
    mut read: impl FnMut(&mut Report<'_>, &str, &Spanned<DeValue<'_>>) -> Option<T>,
) -> (Vec<T>, bool) {
    let mut all_ok = true;
    let mut out = Vec::new();
    for (i, item) in v.get_ref().as_array().into_iter().flatten().enumerate() {
        match read(r, &format!("{key}[{i}]"), item) {
            Some(t) => {
                items.push((i, item.span()));
                out.push(t);
            }
            None => all_ok = false,
        }
    }
    (out, all_ok)
}

fn duration(
    r: &mut Report<'_>,
    key: &str,
    text: &str,
    span: Range<usize>,
    min: Duration,
    max: Duration,
) -> Option<Duration> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => {
            r.add(key, Some(span), "must be greater than zero");
            None
        }
        // As written: a huge value would read as "584542046090years ...".
        Ok(d) if d < min || d > max => {
            r.add(
                key,
                Some(span),
                format!(
                    "{} is out of range {}..={}",
                    quote(text.trim()),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            r.add(
                key,
                Some(span),
                format!(
                    "invalid duration {}: {} (write e.g. \"250ms\", \"30s\", \"10m\")",
                    quote(text),
                    // humantime's message may quote part of the value.
                    shorten(&e.to_string(), 160)
                ),
            );
            None
        }
    }
}

/// An integer within `range`; `why` (may be empty) explains the bounds.
fn integer(
    r: &mut Report<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    range: std::ops::RangeInclusive<i64>,
    why: &str,
) -> Option<i64> {
    let i = v.get_ref().as_integer()?;
    let n = i64::from_str_radix(i.as_str(), i.radix()).ok();
    if let Some(n) = n.filter(|n| range.contains(n)) {
        return Some(n);
    }
    let shown = n.map_or_else(|| i.as_str().to_string(), |n| n.to_string());
    r.add(
        key,
        Some(v.span()),
        format!(
            "{shown} is out of range {}..={}{}{why}",
            range.start(),
            range.end(),
            if why.is_empty() { "" } else { ": " }
        ),
    );
    None
}

/// `sun_path` is 108 bytes including the terminating NUL (unix(7)).
const SUN_PATH_MAX: usize = 107;

fn socket_path(r: &mut Report<'_>, key: &str, path: &str, span: Range<usize>) -> Option<PathBuf> {
    let q = quote(path);
    if !path.starts_with('/') {
        r.add(key, Some(span), format!("{q} must be an absolute path"));
        return None;
    }
    if path.len() > SUN_PATH_MAX || path.contains('\0') {
        r.add(
            key,
            Some(span),
            format!("{q} is too long for a Unix socket (at most {SUN_PATH_MAX} bytes)"),
        );
        return None;
    }
    // The socket is a file the agent creates (and removes) in a directory:
    // "/" or "/run/uplinkd/" names a directory, not a socket.
    let file = path.rsplit('/').next().unwrap_or("");
    if matches!(file, "" | "." | "..") {
        r.add(
            key,
            Some(span),
            format!(
                "{q} must end in a file name for the socket (e.g. \"/run/uplinkd/uplinkd.sock\"), not name a directory"
            ),
        );
        return None;
    }
    Some(PathBuf::from(path))
}

/// Longest group name groupadd accepts by default (shadow-utils'
/// GROUP_NAME_MAX_LENGTH).
const GROUP_NAME_MAX: usize = 32;

/// A group that exists on this host. Looked up here, so that `--check`,
/// the start and a reload refuse a missing group alike (the socket is
/// created with it at start).
fn group(r: &mut Report<'_>, key: &str, name: &str, span: Range<usize>) -> Option<String> {
    let q = quote(name);
    // Checked before the lookup: NSS modules are not all ready for any
    // string (systemd's aborts the process on a name of megabytes).
    if name.is_empty()
        || name.len() > GROUP_NAME_MAX
        || name
            .chars()
            .any(|c| c == ':' || c == '/' || c.is_control() || c.is_whitespace())
    {
        r.add(
            key,
            Some(span),
            format!(
                "{q} is not a valid group name: 1 to {GROUP_NAME_MAX} bytes, no ':', '/', spaces or control characters (omit the key for root's group)"
            ),
        );
        return None;
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(_)) => Some(name.to_string()),
        Ok(None) => {
            r.add(
                key,
                Some(span),
                format!(
                    "group {q} does not exist on this host (create it, e.g. with groupadd --system, or omit the key for root's group)"
                ),
            );
            None
        }
        Err(e) => {
            r.add(key, Some(span), format!("cannot look up group {q}: {e}"));
            None
        }
    }
}

fn listen(
    r: &mut Report<'_>,
    key: &str,
    text: &str,
    span: Range<usize>,
) -> Option<std::net::SocketAddr> {
    match text.trim().parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            r.add(
                key,
                Some(span),
                format!("{a}: port 0 would pick a random port; give a fixed one"),
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            r.add(
                key,
                Some(span),
                format!(
                    "{} is not an address and port (write e.g. \"127.0.0.1:9469\" or \"[::1]:9469\")",
                    quote(text)
                ),
            );
            None
        }
    }
}

/// Linux interface names: IFNAMSIZ is 16 including the NUL (include/uapi/linux/if.h),
/// and `dev_valid_name()` (net/core/dev.c) rejects '/', ':', whitespace, "." and "..".
fn ifname_problem(name: &str) -> Option<String> {
    let q = quote(name);
    if name.is_empty() || name.len() > 15 {
        return Some(format!(
            "{q} is not a valid interface name: must be 1 to 15 bytes (IFNAMSIZ - 1), not {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("{q} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || *c == '\0')
    {
        return Some(format!(
            "{q} is not a valid interface name: it contains {c:?} (the kernel rejects '/', ':' and whitespace)"
        ));
    }
    None
}

/// Object names appear in logs, status, metrics labels and hooks' arguments.
fn name_problem(name: &str) -> Option<String> {
    let q = quote(name);
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 32 {
        return Some(format!(
            "{q} is too long ({} bytes, at most 32)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Some(format!(
            "{q} contains {c:?}; use only letters, digits, '_', '.' and '-'"
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
        // ::ffff:a.b.c.d is an IPv4 destination in IPv6 clothes: a socket
        // sends it as IPv4 (or not at all), never to an IPv6 gateway.
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some(
            "is an IPv4-mapped IPv6 address (write the IPv4 address, as gateway4 or an IPv4 target)",
        ),
        _ => None,
    }
}

/// A unicast address of `family` for a key that has a twin of the other
/// family (`source4` / `source6`): an address of the other family is
/// refused with a message naming the key it belongs in.
fn one_family<T: std::str::FromStr + Into<IpAddr> + Copy>(
    r: &mut Report<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    family: Family,
) -> Option<T> {
    let raw = text(v)?;
    if let Ok(other) = raw.trim().parse::<IpAddr>() {
        if Family::of(&other) != family {
            let twin = match key.strip_suffix(['4', '6']) {
                Some(stem) => format!("{stem}{}", if family == Family::V4 { 6 } else { 4 }),
                None => "the other family's key".into(),
            };
            r.add(
                key,
                Some(v.span()),
                format!(
                    "{other} is an {} address; {key} takes an {} address (put this one in {twin})",
                    pretty(Family::of(&other)),
                    pretty(family)
                ),
            );
            return None;
        }
    }
    let what = match family {
        Family::V4 => "an IPv4 address",
        Family::V6 => "an IPv6 address",
    };
    address(r, key, v, what)
}

fn pretty(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// A unicast address of type `T` (`what` names it in messages).
fn address<T: std::str::FromStr + Into<IpAddr> + Copy>(
    r: &mut Report<'_>,
    key: &str,
    v: &Spanned<DeValue<'_>>,
    what: &str,
) -> Option<T> {
    let raw = text(v)?;
    let text = raw.trim();
    let Ok(addr) = text.parse::<T>() else {
        let hint = if text.contains('/') {
            " (a single address, without a prefix length)"
        } else {
            ""
        };
        r.add(
            key,
            Some(v.span()),
            format!("{} is not {what}{hint}", quote(raw)),
        );
        return None;
    };
    if let Some(problem) = unicast_problem(addr.into()) {
        r.add(
            key,
            Some(v.span()),
            format!("{text} {problem}; expected a unicast address"),
        );
        return None;
    }
    Some(addr)
}
