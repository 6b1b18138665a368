//! Where each section lives in the file, and the shape check: every key
//! and its TOML type follow from the declarations in `uplinkd_core::config`
//! (`AgentConfig::keys()` and the like); nothing here names a key.

use uplinkd_core::config::{
    AgentConfig, DampingConfig, HooksConfig, Key, Kind, MetricsConfig, PolicyConfig, ProbeConfig,
    TransitConfig, UplinkConfig,
};

use super::report::Report;

/// What a part of the document must be.
pub(super) enum Shape {
    Str,
    Int,
    Bool,
    StrList,
    Table(Vec<(&'static str, Shape)>),
    /// `[[name]]` entries, each a table of these keys.
    TableList(Vec<(&'static str, Shape)>),
}

impl Shape {
    fn describe(&self) -> &'static str {
        match self {
            Shape::Str => "a string",
            Shape::Int => "an integer",
            Shape::Bool => "a boolean (true or false)",
            Shape::StrList => "an array of strings",
            Shape::Table(_) => "a table",
            Shape::TableList(_) => "an array of tables ([[...]])",
        }
    }
}

/// The TOML type of a key's value.
fn shape_of<S>(kind: &Kind<S>) -> Shape {
    match kind {
        Kind::Duration { .. }
        | Kind::SocketPath { .. }
        | Kind::Group { .. }
        | Kind::Listen { .. }
        | Kind::Name { .. }
        | Kind::Interface { .. }
        | Kind::Ipv4 { .. }
        | Kind::Ipv6 { .. }
        | Kind::OptIpv4 { .. }
        | Kind::OptIpv6 { .. }
        | Kind::Mode { .. }
        | Kind::GatewayProbe { .. } => Shape::Str,
        Kind::Count { .. } | Kind::Quorum { .. } => Shape::Int,
        Kind::Bool { .. } => Shape::Bool,
        Kind::Commands { .. } | Kind::Targets { .. } => Shape::StrList,
    }
}

fn fields<S>(keys: &[Key<S>]) -> Vec<(&'static str, Shape)> {
    keys.iter().map(|k| (k.name, shape_of(&k.kind))).collect()
}

/// The whole document: each section's table and the keys it declares.
pub(super) fn document() -> Vec<(&'static str, Shape)> {
    let mut policy = fields(&PolicyConfig::keys());
    policy.push(("damping", Shape::Table(fields(&DampingConfig::keys()))));
    vec![
        ("agent", Shape::Table(fields(&AgentConfig::keys()))),
        ("policy", Shape::Table(policy)),
        ("probe", Shape::Table(fields(&ProbeConfig::keys()))),
        ("uplink", Shape::TableList(fields(&UplinkConfig::keys()))),
        ("transit", Shape::TableList(fields(&TransitConfig::keys()))),
        ("hooks", Shape::Table(fields(&HooksConfig::keys()))),
        ("metrics", Shape::Table(fields(&MetricsConfig::keys()))),
    ]
}

/// Every leaf key the configuration accepts, dotted (`agent.socket`,
/// `policy.damping.hold`, `uplink.gateway4`, `transit.targets`; entries of
/// `[[uplink]]`/`[[transit]]` are written without an index).
pub fn known_keys() -> Vec<String> {
    fn walk(fields: &[(&str, Shape)], prefix: &str, out: &mut Vec<String>) {
        for (name, shape) in fields {
            let key = join(prefix, name);
            match shape {
                Shape::Table(sub) | Shape::TableList(sub) => walk(sub, &key, out),
                _ => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk(&document(), "", &mut out);
    out
}

pub(super) fn join(prefix: &str, name: &str) -> String {
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
/// the rest can still be validated: one run reports every problem. Returns
/// false when the structure is too broken to go on (an `[[uplink]]` /
/// `[[transit]]` entry that is not a table: later indices would shift).
pub(super) fn check_shape(
    table: &mut toml::de::DeTable<'_>,
    fields: &[(&str, Shape)],
    prefix: &str,
    report: &mut Report<'_>,
) -> bool {
    use toml::de::DeValue;
    let lookup = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, s)| s);

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
        }
    }

    let mut ok = true;
    // Rebuild the table with only the entries that passed.
    for (name, mut v) in std::mem::take(table) {
        let Some(shape) = lookup(name.get_ref()) else {
            continue; // unknown: reported above
        };
        let key = join(prefix, name.get_ref());
        let span = v.span();
        let keep = match (shape, v.get_mut()) {
            (Shape::Str, DeValue::String(_))
            | (Shape::Int, DeValue::Integer(_))
            | (Shape::Bool, DeValue::Boolean(_)) => true,
            (Shape::StrList, DeValue::Array(items)) => {
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
            (Shape::Table(sub), DeValue::Table(t)) => {
                ok &= check_shape(t, sub, &key, report);
                true
            }
            (Shape::TableList(sub), DeValue::Array(items)) => {
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
                    format!("expected {}, found {}", shape.describe(), type_name(other)),
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
