//! From the shape-checked document to a [`Config`]: each section is read
//! by its declared keys (`value::read_section`), then the rules between keys
//! are checked, one function per section, and those between sections last.

use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};
use uplinkd_core::config::{
    AgentConfig, Config, DampingConfig, HooksConfig, MetricsConfig, PolicyConfig, ProbeConfig,
    TransitConfig, UplinkConfig,
};

use super::keys::join;
use super::report::Report;
use super::value::{read_section, Section};

/// Routing tables the kernel reserves (include/uapi/linux/rtnetlink.h:
/// RT_TABLE_UNSPEC 0, RT_TABLE_DEFAULT 253, RT_TABLE_MAIN 254, RT_TABLE_LOCAL 255).
const RESERVED_TABLES: [(u32, &str); 4] = [
    (0, "unspec"),
    (253, "default"),
    (254, "main"),
    (255, "local"),
];

/// The whole configuration, or None when something was reported.
pub(super) fn validate(doc: &DeTable<'_>, r: &mut Report<'_>) -> Option<Config> {
    let uplink_entries = entries(doc, "uplink");
    let transit_entries = entries(doc, "transit");
    let n_transits = transit_entries.len();

    let uplinks = uplinks(r, &uplink_entries);
    let transits = transits(r, &transit_entries);
    let agent = agent(r, table(doc, "agent"), uplink_entries.len());
    let policy = policy(r, table(doc, "policy"), n_transits);
    let probe = probe(r, table(doc, "probe"));
    let hooks = read_section(
        r,
        table(doc, "hooks"),
        "hooks",
        &HooksConfig::keys(),
        HooksConfig::default(),
        n_transits,
    )
    .valid();
    let metrics = read_section(
        r,
        table(doc, "metrics"),
        "metrics",
        &MetricsConfig::keys(),
        MetricsConfig::default(),
        n_transits,
    )
    .valid();

    Some(Config {
        agent: agent?,
        policy: policy?,
        probe: probe?,
        uplinks,
        transits,
        hooks: hooks?,
        metrics: metrics?,
    })
}

fn table<'d>(doc: &'d DeTable<'d>, name: &str) -> Option<&'d DeTable<'d>> {
    doc.get(name).and_then(|v| v.get_ref().as_table())
}

/// The `[[name]]` entries (the shape check made sure each is a table).
fn entries<'d>(doc: &'d DeTable<'d>, name: &str) -> Vec<(Range<usize>, &'d DeTable<'d>)> {
    let items = doc.get(name).and_then(|v| v.get_ref().as_array());
    items
        .into_iter()
        .flatten()
        .filter_map(|item: &Spanned<DeValue<'_>>| Some((item.span(), item.get_ref().as_table()?)))
        .collect()
}

/// Checks `holds`, an ordering between two durations `a` and `b` of one
/// section, unless either is bad (already reported).
#[allow(clippy::too_many_arguments)]
fn order<S>(
    r: &mut Report<'_>,
    section: &Section<S>,
    prefix: &str,
    holds: bool,
    (a, a_value): (&str, Duration),
    op: &str,
    (b, b_value): (&str, Duration),
    why: &str,
) {
    if section.bad(a) || section.bad(b) {
        return;
    }
    r.relation(
        holds,
        (&join(prefix, a), section.span(a), a_value),
        (&join(prefix, b), section.span(b), b_value),
        op,
        why,
    );
}

// ---------------------------------------------------------------------------
// [agent]
// ---------------------------------------------------------------------------

/// `[agent]`, with the kernel objects numbered per uplink (`n_uplinks`).
fn agent(r: &mut Report<'_>, table: Option<&DeTable<'_>>, n_uplinks: usize) -> Option<AgentConfig> {
    let s = read_section(
        r,
        table,
        "agent",
        &AgentConfig::keys(),
        AgentConfig::default(),
        0,
    );
    let a = &s.value;
    if let (Some(span), false) = (s.span("route_metric"), s.bad("route_metric")) {
        let m = a.route_metric;
        if u64::from(m) + n_uplinks as u64 > u64::from(u32::MAX) {
            r.add(
                "agent.route_metric",
                Some(span),
                format!("{m} + {n_uplinks} uplinks overflows the fallback route metrics"),
            );
        }
    }
    if !s.bad("table_base") {
        let base = a.table_base;
        let last = i64::from(base) + n_uplinks.max(1) as i64 - 1;
        let span = s.span("table_base");
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
    if let (Some(span), false) = (s.span("fwmark_base"), s.bad("fwmark_base")) {
        let base = a.fwmark_base;
        if u64::from(base) + n_uplinks as u64 > u64::from(u32::MAX) + 1 {
            r.add(
                "agent.fwmark_base",
                Some(span),
                format!("marks {base} + uplink index do not fit in 32 bits"),
            );
        }
    }
    s.valid()
}

// ---------------------------------------------------------------------------
// [policy], [policy.damping]
// ---------------------------------------------------------------------------

/// `[policy]` with `[policy.damping]`; the quorum's default and range come
/// from the number of transits.
fn policy(
    r: &mut Report<'_>,
    table: Option<&DeTable<'_>>,
    n_transits: usize,
) -> Option<PolicyConfig> {
    let damping = damping(
        r,
        table
            .and_then(|t| t.get("damping"))
            .and_then(|v| v.get_ref().as_table()),
        n_transits,
    );
    let start = PolicyConfig {
        failback_after: PolicyConfig::DEFAULT_FAILBACK_AFTER,
        quorum: PolicyConfig::default_quorum(n_transits),
        damping: DampingConfig::default(),
    };
    let s = read_section(r, table, "policy", &PolicyConfig::keys(), start, n_transits);
    let mut policy = s.valid()?;
    policy.damping = damping?;
    Some(policy)
}

fn damping(
    r: &mut Report<'_>,
    table: Option<&DeTable<'_>>,
    n_transits: usize,
) -> Option<DampingConfig> {
    let p = "policy.damping";
    let s = read_section(
        r,
        table,
        p,
        &DampingConfig::keys(),
        DampingConfig::default(),
        n_transits,
    );
    let d = &s.value;
    order(
        r,
        &s,
        p,
        d.hold <= d.max_hold,
        ("hold", d.hold),
        "<=",
        ("max_hold", d.max_hold),
        "the hold doubles up to max_hold",
    );
    s.valid()
}

// ---------------------------------------------------------------------------
// [probe]
// ---------------------------------------------------------------------------

fn probe(r: &mut Report<'_>, table: Option<&DeTable<'_>>) -> Option<ProbeConfig> {
    let p = "probe";
    let s = read_section(r, table, p, &ProbeConfig::keys(), ProbeConfig::default(), 0);
    let c = &s.value;
    let suspicion = "the fast interval is used on suspicion, to probe harder";
    let rules = [
        (
            c.carrier_interval <= c.gateway_fast_interval,
            ("carrier_interval", c.carrier_interval),
            "<=",
            ("gateway_fast_interval", c.gateway_fast_interval),
            "carrier_interval is the agent's tick: probes and timers are handled on it",
        ),
        (
            c.gateway_fast_interval <= c.gateway_interval,
            ("gateway_fast_interval", c.gateway_fast_interval),
            "<=",
            ("gateway_interval", c.gateway_interval),
            suspicion,
        ),
        (
            c.gateway_dead_after > c.gateway_interval,
            ("gateway_dead_after", c.gateway_dead_after),
            ">",
            ("gateway_interval", c.gateway_interval),
            "otherwise a healthy gateway is declared dead between two probes",
        ),
        (
            c.gateway_timeout <= c.gateway_dead_after,
            ("gateway_timeout", c.gateway_timeout),
            "<=",
            ("gateway_dead_after", c.gateway_dead_after),
            "a reply that may arrive later than the dead-after time cannot keep a gateway alive",
        ),
        (
            c.transit_timeout <= c.transit_interval,
            ("transit_timeout", c.transit_timeout),
            "<=",
            ("transit_interval", c.transit_interval),
            "a reply still awaited when the next probe of the target is due would overlap it",
        ),
        (
            c.transit_fast_interval <= c.transit_interval,
            ("transit_fast_interval", c.transit_fast_interval),
            "<=",
            ("transit_interval", c.transit_interval),
            suspicion,
        ),
    ];
    for (holds, a, op, b, why) in rules {
        order(r, &s, p, holds, a, op, b, why);
    }
    s.valid()
}

// ---------------------------------------------------------------------------
// [[uplink]]
// ---------------------------------------------------------------------------

fn uplinks(r: &mut Report<'_>, entries: &[(Range<usize>, &DeTable<'_>)]) -> Vec<UplinkConfig> {
    if entries.is_empty() {
        r.add(
            "uplink",
            None,
            "at least one [[uplink]] is required (the first is the primary)",
        );
    }
    let mut uplinks: Vec<UplinkConfig> = Vec::new();
    // (name, index, line) seen so far, for duplicates.
    let mut seen_names: Vec<(String, usize, usize)> = Vec::new();
    for (i, (table_span, table)) in entries.iter().enumerate() {
        let p = format!("uplink[{i}]");
        let table_span = Some(table_span.clone());
        let start = UplinkConfig {
            name: String::new(),
            interface: String::new(),
            gateway4: None,
            gateway6: None,
            bond: None,
            probe_address4: None,
            probe_address6: None,
            gateway_probe: Default::default(),
        };
        let s = read_section(r, Some(table), &p, &UplinkConfig::keys(), start, 0);
        let name_ok = checked_name(r, "uplink", &p, &s, table_span.clone(), i, &mut seen_names);
        let u = &s.value;
        if !s.has("interface") {
            r.add(
                format!("{p}.interface"),
                table_span.clone(),
                "missing (the network interface of this uplink, e.g. \"eth0\")",
            );
        }
        if !s.has("gateway4") && !s.has("gateway6") && !r.is_broken(&format!("{p}.gateway6")) {
            r.add(
                format!("{p}.gateway4"),
                table_span.clone(),
                "an uplink needs at least one gateway: set gateway4, gateway6 or both",
            );
        }
        let mut bond_ok = true;
        if let Some(b) = u.bond.as_ref().filter(|_| !s.bad("interface")) {
            if *b == u.interface {
                r.add(
                    format!("{p}.bond"),
                    s.span("bond"),
                    format!(
                        "the bond ({b}) must differ from the interface, which is the bond's member"
                    ),
                );
                bond_ok = false;
            }
        }
        if u.bond.is_some() && u.gateway_probe == uplinkd_core::config::GatewayProbe::Echo {
            // A member echoes from its probe address (its own MAC and
            // address, never the bond's): one per family with a gateway.
            let missing: Vec<&str> = [
                (
                    "gateway4",
                    u.gateway4.is_some(),
                    u.probe_address4.is_some(),
                    "probe_address4",
                ),
                (
                    "gateway6",
                    u.gateway6.is_some(),
                    u.probe_address6.is_some(),
                    "probe_address6",
                ),
            ]
            .iter()
            .filter(|(g, has_gw, has_probe, _)| *has_gw && s.has(g) && !has_probe)
            .map(|(.., key)| *key)
            .collect();
            if !missing.is_empty() {
                r.add(
                    format!("{p}.gateway_probe"),
                    s.span("gateway_probe"),
                    format!(
                        "a bond member sends forwarding-plane echoes from its own probe address: set {} (an address of the gateway's subnet that no host uses), or use \"auto\" or \"icmp\" (ARP/ND on the member)",
                        missing.join(" and ")
                    ),
                );
            }
        }
        for (key, gateway) in [
            ("probe_address4", "gateway4"),
            ("probe_address6", "gateway6"),
        ] {
            let Some(span) = s.span(key) else { continue };
            if !s.has("bond") {
                r.add(
                    format!("{p}.{key}"),
                    Some(span),
                    "only bond members have a probe address (a routed uplink probes from its own address)",
                );
            } else if !s.has(gateway) {
                r.add(
                    format!("{p}.{key}"),
                    Some(span),
                    "a probe address needs the gateway of its family (transit probes leave through it)",
                );
            }
        }
        if !(name_ok && s.has("interface") && bond_ok) {
            continue;
        }
        let Some(u) = s.valid_ref() else { continue };
        check_against_earlier(r, &p, u, &s, table_span, &uplinks);
        uplinks.push(u.clone());
    }
    uplinks
}

/// The rules between an uplink and the ones before it: probe addresses,
/// bonds and shared interfaces.
fn check_against_earlier(
    r: &mut Report<'_>,
    p: &str,
    u: &UplinkConfig,
    s: &Section<UplinkConfig>,
    table_span: Option<Range<usize>>,
    uplinks: &[UplinkConfig],
) {
    let name = &u.name;
    for (j, other) in uplinks.iter().enumerate() {
        let clash4 = u.probe_address4.is_some()
            && (u.probe_address4 == other.probe_address4 || u.probe_address4 == other.gateway4);
        let clash6 = u.probe_address6.is_some()
            && (u.probe_address6 == other.probe_address6 || u.probe_address6 == other.gateway6);
        if clash4 || clash6 {
            let key = if clash4 {
                "probe_address4"
            } else {
                "probe_address6"
            };
            r.add(
                format!("{p}.{key}"),
                s.span(key),
                format!(
                    "also used by uplink[{j}] {:?}; each member needs its own probe address",
                    other.name
                ),
            );
        }
    }
    if (u.probe_address4.is_some() && u.probe_address4 == u.gateway4)
        || (u.probe_address6.is_some() && u.probe_address6 == u.gateway6)
    {
        r.add(
            format!("{p}.probe_address4"),
            table_span,
            "the probe address must not be the gateway's",
        );
    }
    // Members of one bond reach the same gateways through it (the route
    // goes via the bond whichever member is active).
    if let Some(b) = &u.bond {
        if let Some((j, other)) = uplinks
            .iter()
            .enumerate()
            .find(|(_, o)| o.bond.as_ref() == Some(b))
        {
            if other.gateway4 != u.gateway4 || other.gateway6 != u.gateway6 {
                r.add(
                    format!("{p}.bond"),
                    s.span("bond"),
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
                s.span("bond"),
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
        if other.interface != u.interface {
            continue;
        }
        let same4 = u.gateway4.is_some() && u.gateway4 == other.gateway4;
        let same6 = u.gateway6.is_some() && u.gateway6 == other.gateway6;
        if same4 || same6 {
            let fam = if same4 { "gateway4" } else { "gateway6" };
            r.add(
                format!("{p}.{fam}"),
                s.span(fam),
                format!(
                    "uplink {name:?} uses the same interface ({}) and {fam} as uplink[{j}] {:?}; uplinks may share an interface only with different gateways",
                    u.interface, other.name
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// [[transit]]
// ---------------------------------------------------------------------------

fn transits(r: &mut Report<'_>, entries: &[(Range<usize>, &DeTable<'_>)]) -> Vec<TransitConfig> {
    if entries.is_empty() {
        r.add(
            "transit",
            None,
            "at least one [[transit]] with targets is required (the far end whose reachability decides an uplink's health)",
        );
    }
    let mut transits = Vec::new();
    let mut seen_names: Vec<(String, usize, usize)> = Vec::new();
    // Every valid target so far, with its key: quorum counts independent
    // targets, and one address twice is one target.
    let mut seen_targets: Vec<(IpAddr, String)> = Vec::new();
    for (i, (table_span, table)) in entries.iter().enumerate() {
        let p = format!("transit[{i}]");
        let table_span = Some(table_span.clone());
        let start = TransitConfig {
            name: String::new(),
            targets: Vec::new(),
        };
        let s = read_section(r, Some(table), &p, &TransitConfig::keys(), start, 0);
        let name_ok = checked_name(r, "transit", &p, &s, table_span.clone(), i, &mut seen_names);
        let mut ok = name_ok;
        if !s.has("targets") {
            r.add(
                format!("{p}.targets"),
                table_span,
                "missing: list at least one target address, e.g. targets = [\"203.0.113.1\"]",
            );
            ok = false;
        }
        // The valid targets, by position in the list.
        for ((k, span), addr) in s.items("targets").iter().zip(&s.value.targets) {
            let key = format!("{p}.targets[{k}]");
            if let Some((_, where_)) = seen_targets.iter().find(|(a, _)| a == addr) {
                r.add(
                    key,
                    Some(span.clone()),
                    format!("{addr} is listed twice (also {where_}); each target must be distinct"),
                );
                ok = false;
            } else {
                seen_targets.push((*addr, key));
            }
        }
        if let (Some(t), true) = (s.valid(), ok) {
            transits.push(t);
        }
    }
    transits
}

/// Checks that an uplink's or transit's name is present and unique among
/// its kind (its form was checked when read). `seen` holds (name, index,
/// line) of the valid ones so far.
fn checked_name<S>(
    r: &mut Report<'_>,
    kind: &str,
    prefix: &str,
    s: &Section<S>,
    table_span: Option<Range<usize>>,
    index: usize,
    seen: &mut Vec<(String, usize, usize)>,
) -> bool
where
    S: Named,
{
    let key = format!("{prefix}.name");
    let Some(span) = s.span("name") else {
        r.add(
            key,
            table_span,
            format!("missing (every {kind} needs a name)"),
        );
        return false;
    };
    if s.bad("name") {
        return false;
    }
    let name = s.value.name();
    if let Some((_, j, line)) = seen.iter().find(|(n, _, _)| n == name) {
        r.add(
            key,
            Some(span),
            format!("duplicate {kind} name {name:?} (also {kind}[{j}], line {line})"),
        );
        return false;
    }
    let line = r.position(span.start).0;
    seen.push((name.to_string(), index, line));
    true
}

/// Sections with a `name` key ([[uplink]], [[transit]]).
trait Named {
    fn name(&self) -> &str;
}
impl Named for UplinkConfig {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for TransitConfig {
    fn name(&self) -> &str {
        &self.name
    }
}
