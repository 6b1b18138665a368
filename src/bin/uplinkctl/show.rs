//! The human views of a [`Status`]: the table of `uplinkctl status` and the
//! per-uplink blocks of `status --verbose`, plus the readings of a status
//! that `check` and `drain` share (which uplink is preferred, which is
//! usable, why a healthy preferred uplink is not active).
//!
//! The table is cut only to fit a terminal: piped into a file, a pager or
//! grep it keeps every character, so the column that explains a decision
//! is never lost.

use std::fmt::Write as _;

use uplinkd::config::Family;
use uplinkd::status::{
    FamilyStatus, PerFamily, Reason, Status, TargetStatus, TransitStatus, UplinkState, UplinkStatus,
};

/// `p`'s value for `f`.
pub fn per<T>(p: &PerFamily<T>, f: Family) -> &T {
    match f {
        Family::V4 => &p.ipv4,
        Family::V6 => &p.ipv6,
    }
}

/// The family's version digit, as in `gateway4`.
pub fn digit(f: Family) -> char {
    match f {
        Family::V4 => '4',
        Family::V6 => '6',
    }
}

/// The uplinks serving `f`, in configuration order, which is the order of
/// preference.
pub fn serving(st: &Status, f: Family) -> impl Iterator<Item = &UplinkStatus> {
    st.uplinks
        .iter()
        .filter(move |u| per(&u.families, f).is_some())
}

/// The most preferred uplink of `f`.
pub fn preferred(st: &Status, f: Family) -> Option<&UplinkStatus> {
    serving(st, f).next()
}

/// The uplink carrying `f`.
pub fn active(st: &Status, f: Family) -> Option<&UplinkStatus> {
    let name = per(&st.active, f).as_deref()?;
    st.uplinks.iter().find(|u| u.name == name)
}

/// Reasons the uplink's own health gives (the selection's own, drained and
/// damped, aside).
fn health_reasons(fs: &FamilyStatus) -> impl Iterator<Item = &Reason> {
    fs.reasons
        .iter()
        .filter(|r| !matches!(r, Reason::Drained | Reason::Damped { .. }))
}

/// Healthy for `f` as far as its probes tell, drained or damped or not.
pub fn healthy(u: &UplinkStatus, f: Family) -> bool {
    per(&u.families, f)
        .as_ref()
        .is_some_and(|fs| fs.state != UplinkState::Unknown && health_reasons(fs).next().is_none())
}

/// The agent may put `f` on it: healthy and not drained (a damped uplink
/// is still taken when nothing else is usable).
pub fn usable(u: &UplinkStatus, f: Family) -> bool {
    healthy(u, f) && !u.drained
}

/// A duration for people: `42s`, `5m07s`, `3h05m`.
pub fn human_ms(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Why `u`, healthy and more preferred for `f` than the uplink carrying it,
/// does not carry it; None when it does, or when its reasons already say
/// why (it is not healthy).
pub fn why_not_active(st: &Status, u: &UplinkStatus, f: Family) -> Option<String> {
    let carrier = active(st, f)?;
    let rank = |name: &str| serving(st, f).position(|x| x.name == name);
    if rank(&u.name)? >= rank(&carrier.name)? || !healthy(u, f) {
        return None;
    }
    let fs = per(&u.families, f).as_ref()?;
    Some(if u.drained {
        format!("drained (uplinkctl undrain {} puts it back)", u.name)
    } else if let Some(ms) = u.damped_ms {
        format!("damped for {} more after {} flaps", human_ms(ms), u.flaps)
    } else {
        match fs.failback_in_ms {
            Some(0) => "failing back now".into(),
            Some(ms) => format!("failback in {}", human_ms(ms)),
            // A daemon from before the field: the rule, without the time.
            None => "waiting for failback_after".into(),
        }
    })
}

/// One line per uplink held back from the families it is preferred for:
/// `primary is healthy but not active for ipv4, ipv6: failback in 25s`.
fn held_back(st: &Status) -> Vec<String> {
    let mut out = Vec::new();
    for u in &st.uplinks {
        let mut whys: Vec<(Vec<&str>, String)> = Vec::new();
        for f in Family::ALL {
            let Some(why) = why_not_active(st, u, f) else {
                continue;
            };
            match whys.iter_mut().find(|(_, w)| *w == why) {
                Some((fams, _)) => fams.push(f.name()),
                None => whys.push((vec![f.name()], why)),
            }
        }
        for (fams, why) in whys {
            out.push(format!(
                "{} is healthy but not active for {}: {why}",
                u.name,
                fams.join(", ")
            ));
        }
    }
    out
}

/// A default route of another writer that outranks the agent's, or a
/// writer rewriting the agent's route: traffic may not go where `active`
/// says.
fn route_trouble(st: &Status) -> Vec<String> {
    let mut out = Vec::new();
    for f in Family::ALL {
        if let Some(c) = per(&st.competing_route, f) {
            out.push(format!(
                "WARNING {f}: {c} outranks ours and carries the traffic"
            ));
        }
        if let Some(who) = per(&st.fighting, f) {
            out.push(format!(
                "WARNING {f}: our default route is being rewritten ({who})"
            ));
        }
        if let Some(src) = per(&st.source, f).as_ref().filter(|s| !s.present) {
            out.push(format!(
                "WARNING {f}: service address {} is missing from the host (source_missing): default routes carry no source until it is back",
                src.address
            ));
        }
    }
    out
}

/// Cut `s` to `n` characters, marking the cut with `~`.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

fn gateway_cell(g: &Option<TargetStatus>) -> String {
    match g {
        None => "-".into(),
        Some(g) => match (g.reachable, g.rtt_ms) {
            (Some(false), _) => "DEAD".into(),
            (_, Some(r)) => format!("{r:.2}ms {:.0}%", g.loss * 100.0),
            _ => "?".into(),
        },
    }
}

/// A reason in a few characters: `gateway4`, `quorum6(transit-a,transit-b)`,
/// `damped(60s)`; any other reason by its kind (taken from the wire form, so
/// a new reason needs no change here).
pub fn reason_code(r: &Reason) -> String {
    let v = serde_json::to_value(r).unwrap_or_default();
    let mut s = v["kind"].as_str().unwrap_or("?").to_string();
    match v["family"].as_str() {
        Some("ipv4") => s.push('4'),
        Some("ipv6") => s.push('6'),
        _ => {}
    }
    if let Some(list) = v["unreachable"].as_array() {
        let names: Vec<&str> = list.iter().filter_map(|n| n.as_str()).collect();
        s.push_str(&format!("({})", names.join(",")));
    }
    if let Some(ms) = v["remaining_ms"].as_u64() {
        s.push_str(&format!("({}s)", ms.div_ceil(1000)));
    }
    if let Some(b) = v["bond"].as_str() {
        s.push_str(&format!("({b})"));
    }
    s
}

/// A reason in words, for `status --verbose`.
fn reason_text(r: &Reason, uplink: &str) -> String {
    #[allow(unreachable_patterns)] // a reason added to the core prints by its code
    match r {
        Reason::Carrier => "no carrier (cable, switch port, or interface down)".into(),
        Reason::Gateway { family } => format!("the {family} gateway stopped answering"),
        Reason::Forwarding { family } => format!(
            "the {family} gateway stopped forwarding (its forwarding-plane echoes are lost)"
        ),
        Reason::Quorum {
            family,
            unreachable,
        } => format!(
            "{family} transit quorum lost: unreachable through this uplink while reachable through another: {}",
            unreachable.join(", ")
        ),
        Reason::QuorumEverywhere {
            family,
            unreachable,
        } => format!(
            "{family} transit quorum lost through every uplink (the internet, not this uplink): {}",
            unreachable.join(", ")
        ),
        Reason::Damped { remaining_ms } => format!(
            "damped after repeated flaps, {} of hold-down left",
            human_ms(*remaining_ms)
        ),
        Reason::Drained => format!("drained by an operator (uplinkctl undrain {uplink})"),
        Reason::Missing => "the interface does not exist".into(),
        Reason::NotInBond { bond } => format!("not enslaved to its bond {bond}"),
        _ => reason_code(r),
    }
}

fn state_name(s: UplinkState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn state_cell(u: &UplinkStatus) -> String {
    if u.drained {
        "drained".into()
    } else {
        state_name(u.state)
    }
}

/// The families `u` carries: `v4,v6`, `v4`, or `-`.
fn active_cell(st: &Status, u: &UplinkStatus) -> String {
    let fams: Vec<&str> = Family::ALL
        .into_iter()
        .filter(|f| per(&st.active, *f).as_deref() == Some(u.name.as_str()))
        .map(|f| if f == Family::V4 { "v4" } else { "v6" })
        .collect();
    if fams.is_empty() {
        "-".into()
    } else {
        fams.join(",")
    }
}

/// The first line: which uplink carries each family.
fn active_line(st: &Status) -> String {
    let fam = |f: Family| {
        let name = per(&st.active, f).clone().unwrap_or_else(|| "-".into());
        match (*per(&st.fail_static, f), st.decided) {
            (true, _) => format!("{name} (FAIL STATIC: no usable uplink)"),
            (false, false) => format!("{name} (undecided)"),
            _ => name,
        }
    };
    format!(
        "active  ipv4: {}   ipv6: {}",
        fam(Family::V4),
        fam(Family::V6)
    )
}

/// The compact table. With `width` (a terminal's), every line is cut to
/// it; without (piped), nothing is cut.
pub fn table(st: &Status, width: Option<usize>) -> String {
    let fit = |line: String| match width {
        Some(w) => cut(&line, w),
        None => line,
    };
    let mut lines = vec![active_line(st)];
    lines.extend(held_back(st).into_iter().map(|l| format!("        {l}")));
    lines.extend(
        route_trouble(st)
            .into_iter()
            .map(|l| format!("        {l}")),
    );
    if let Some(o) = &st.observe {
        lines.push(format!(
            "        OBSERVE MODE: decisions are reported, not carried out ({})",
            o.installs
        ));
    }
    let head = [
        "UPLINK", "IFACE", "STATE", "CARRIER", "ACTIVE", "GW4", "GW6", "TRANSITS", "REASONS",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for u in &st.uplinks {
        let up = u
            .transits
            .iter()
            .filter(|t| t.reachable == Some(true))
            .count();
        let reasons: Vec<String> = u.reasons.iter().map(reason_code).collect();
        rows.push(vec![
            u.name.clone(),
            u.interface.clone(),
            state_cell(u),
            if u.carrier { "up" } else { "DOWN" }.into(),
            active_cell(st, u),
            gateway_cell(&u.gateway.ipv4),
            gateway_cell(&u.gateway.ipv6),
            format!("{up}/{} up", u.transits.len()),
            if reasons.is_empty() {
                "-".into()
            } else {
                reasons.join(" ")
            },
        ]);
    }
    // Columns as wide as their widest cell, at least as in the classic
    // layout; the last (reasons) is not padded.
    let min = [12, 10, 9, 7, 6, 11, 11, 8, 0];
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                .max(min[c])
        })
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$} ", w = widths[c]);
            }
        }
        lines.push(line);
    }
    for b in &st.bonds {
        let name = |m: &Option<String>| m.as_deref().unwrap_or("-").to_string();
        lines.push(format!(
            "bond {}: driver's active member {}, agent's choice {}",
            b.name,
            name(&b.active),
            name(&b.chosen)
        ));
        lines.extend(b.warnings.iter().map(|w| format!("  ! {w}")));
    }
    lines.into_iter().map(|l| fit(l) + "\n").collect()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn target_text(reachable: Option<bool>, rtt_ms: Option<f64>, loss: f64) -> String {
    let verdict = match reachable {
        None => "not known yet",
        Some(true) => "reachable",
        Some(false) => "UNREACHABLE",
    };
    let rtt = rtt_ms.map_or("-".into(), |r| format!("{r:.3} ms"));
    format!("{verdict:<13} rtt {rtt:<11} loss {:.0}%", loss * 100.0)
}

fn gateway_text(g: &TargetStatus) -> String {
    let last = g
        .last_reply_ms_ago
        .map_or("never".into(), |ms| format!("{ms} ms ago"));
    format!(
        "{:<24} {}   last reply {last}, {} unanswered",
        g.address.to_string(),
        target_text(g.reachable, g.rtt_ms, g.loss),
        g.misses
    )
}

fn transit_text(t: &TransitStatus) -> String {
    format!(
        "{:<12} {:<5} {:<24} {}",
        t.name,
        t.family,
        t.target.to_string(),
        target_text(t.reachable, t.rtt_ms, t.loss)
    )
}

/// `status --verbose`: the families' decisions, then one block per uplink
/// with every field (reasons in words, every target with its RTT and
/// loss), then one block per bond. Never cut.
pub fn verbose(st: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", active_line(st));
    for l in held_back(st) {
        let _ = writeln!(o, "        {l}");
    }
    let _ = writeln!(o, "decided {}", yes_no(st.decided));
    for u in &st.uplinks {
        let _ = writeln!(o, "\nuplink {}", u.name);
        let row = |o: &mut String, k: &str, v: &str| {
            let _ = writeln!(o, "  {k:<12} {v}");
        };
        row(&mut o, "interface", &u.interface);
        row(&mut o, "state", &state_name(u.state));
        row(&mut o, "active for", &active_cell(st, u));
        row(&mut o, "carrier", if u.carrier { "up" } else { "DOWN" });
        row(&mut o, "drained", yes_no(u.drained));
        let damped = match u.damped_ms {
            Some(ms) => format!("yes, {} left", human_ms(ms)),
            None => "no".into(),
        };
        row(
            &mut o,
            "damped",
            &format!("{damped} (flaps counted for damping: {})", u.flaps),
        );
        if u.reasons.is_empty() {
            row(&mut o, "reasons", "none");
        }
        for (i, r) in u.reasons.iter().enumerate() {
            row(
                &mut o,
                if i == 0 { "reasons" } else { "" },
                &reason_text(r, &u.name),
            );
        }
        for f in Family::ALL {
            let Some(fs) = per(&u.families, f) else {
                continue;
            };
            let mut v = state_name(fs.state);
            if let Some(ms) = fs.healthy_for_ms {
                let _ = write!(v, ", usable for {}", human_ms(ms));
            }
            if let Some(why) = why_not_active(st, u, f) {
                let _ = write!(v, ", not active: {why}");
            }
            if !fs.reasons.is_empty() {
                let codes: Vec<String> = fs.reasons.iter().map(reason_code).collect();
                let _ = write!(v, " ({})", codes.join(" "));
            }
            row(&mut o, f.name(), &v);
        }
        for f in Family::ALL {
            if let Some(g) = per(&u.gateway, f) {
                row(&mut o, &format!("gateway{}", digit(f)), &gateway_text(g));
            }
        }
        let up = u
            .transits
            .iter()
            .filter(|t| t.reachable == Some(true))
            .count();
        row(
            &mut o,
            "transits",
            &format!("{up} of {} targets reachable", u.transits.len()),
        );
        // Passive suspicions (`[probe] suspicion`), by source.
        let raised: Vec<String> = u
            .suspicion
            .by_source
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        row(
            &mut o,
            "suspicions",
            &if raised.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{}; {} confirmation bursts, {} probes",
                    raised.join(", "),
                    u.suspicion.bursts,
                    u.suspicion.burst_probes
                )
            },
        );
        for t in &u.transits {
            let _ = writeln!(o, "    {}", transit_text(t));
        }
        if let Some(b) = &u.bond {
            row(
                &mut o,
                "bond",
                &format!(
                    "{}: {}, {}",
                    b.bond,
                    if b.enslaved {
                        "enslaved"
                    } else {
                        "NOT enslaved"
                    },
                    if b.active {
                        "the driver's active member"
                    } else {
                        "a backup member"
                    }
                ),
            );
            for c in &b.checks {
                let probed = if c.probed { "probed" } else { "not probed" };
                let _ = writeln!(o, "    {:<12} {probed}: {}", c.check, c.how);
            }
        }
    }
    for b in &st.bonds {
        let _ = writeln!(o, "\nbond {}", b.name);
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let ms = |v: Option<u32>| v.map_or("-".into(), |x| format!("{x} ms"));
        let _ = writeln!(o, "  {:<17} {}", "present", yes_no(b.present));
        let _ = writeln!(o, "  {:<17} {}", "mode", opt(&b.mode));
        let _ = writeln!(o, "  {:<17} {}", "driver's active", opt(&b.active));
        let _ = writeln!(o, "  {:<17} {}", "agent's choice", opt(&b.chosen));
        let _ = writeln!(o, "  {:<17} {}", "miimon", ms(b.miimon_ms));
        let _ = writeln!(o, "  {:<17} {}", "arp_interval", ms(b.arp_interval_ms));
        let _ = writeln!(o, "  {:<17} {}", "primary", opt(&b.primary));
        let _ = writeln!(
            o,
            "  {:<17} {}",
            "primary_reselect",
            opt(&b.primary_reselect)
        );
        let _ = writeln!(o, "  {:<17} {}", "enslaved", b.enslaved.join(", "));
        for w in &b.warnings {
            let _ = writeln!(o, "  ! {w}");
        }
    }
    o
}

/// Synthetic statuses for the tests of every view.
#[cfg(test)]
pub mod fixture {
    use uplinkd::status::*;

    fn target(addr: &str, rtt: f64) -> TargetStatus {
        TargetStatus {
            address: addr.parse().unwrap(),
            reachable: Some(true),
            rtt_ms: Some(rtt),
            loss: 0.0,
            last_reply_ms_ago: Some(40),
            misses: 0,
        }
    }

    fn family() -> Option<FamilyStatus> {
        Some(FamilyStatus {
            state: UplinkState::Healthy,
            reasons: vec![],
            healthy_for_ms: Some(600_000),
            failback_in_ms: Some(0),
        })
    }

    pub fn uplink(name: &str, interface: &str, n: u8) -> UplinkStatus {
        let mut transits = Vec::new();
        for (fam, base) in [("ipv4", "198.18.100."), ("ipv6", "2001:db8:100::")] {
            for t in 0..4 {
                transits.push(TransitStatus {
                    name: format!("transit-{}", (b'a' + t) as char),
                    family: fam.into(),
                    target: format!("{base}{}", t + 1).parse().unwrap(),
                    reachable: Some(true),
                    rtt_ms: Some(10.0 + f64::from(t)),
                    loss: 0.0,
                });
            }
        }
        UplinkStatus {
            name: name.into(),
            interface: interface.into(),
            state: UplinkState::Healthy,
            carrier: true,
            drained: false,
            reasons: vec![],
            flaps: 0,
            damped_ms: None,
            families: PerFamily {
                ipv4: family(),
                ipv6: family(),
            },
            gateway: PerFamily {
                ipv4: Some(target(&format!("198.18.{n}.1"), 0.25)),
                ipv6: Some(target(&format!("2001:db8:{n}::1"), 0.5)),
            },
            gateway_probe: Default::default(),
            transits,
            bond: None,
            suspicion: Default::default(),
        }
    }

    /// Both families on a healthy primary, a healthy secondary standing by.
    pub fn all_healthy() -> Status {
        Status {
            active: PerFamily {
                ipv4: Some("primary".into()),
                ipv6: Some("primary".into()),
            },
            fail_static: PerFamily::default(),
            decided: true,
            uplinks: vec![uplink("primary", "upa", 1), uplink("secondary", "upb", 2)],
            bonds: vec![],
            competing_route: PerFamily::default(),
            fighting: PerFamily::default(),
            source: PerFamily::default(),
            mode: "enforce".into(),
            observe: None,
        }
    }

    /// Both families of uplink `i`.
    pub fn families_mut(st: &mut Status, i: usize) -> [&mut FamilyStatus; 2] {
        let f = &mut st.uplinks[i].families;
        [f.ipv4.as_mut().unwrap(), f.ipv6.as_mut().unwrap()]
    }

    /// Uplink `i` unusable for both families for `reasons`.
    pub fn fail(st: &mut Status, i: usize, reasons: Vec<Reason>) {
        st.uplinks[i].state = UplinkState::Unhealthy;
        st.uplinks[i].reasons = reasons.clone();
        for f in families_mut(st, i) {
            f.state = UplinkState::Unhealthy;
            f.reasons = reasons.clone();
            f.healthy_for_ms = None;
            f.failback_in_ms = None;
        }
    }

    /// Both families moved to the secondary.
    pub fn on_secondary(st: &mut Status) {
        st.active.ipv4 = Some("secondary".into());
        st.active.ipv6 = Some("secondary".into());
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    fn quorum(family: &str) -> Reason {
        Reason::Quorum {
            family: family.into(),
            unreachable: ["transit-a", "transit-b", "transit-c", "transit-d"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Both uplinks lost their quorum: the reasons and the fail-static
    /// notice are long.
    fn long_lines() -> Status {
        let mut st = all_healthy();
        fail(&mut st, 0, vec![quorum("ipv4"), quorum("ipv6")]);
        fail(&mut st, 1, vec![quorum("ipv4"), quorum("ipv6")]);
        st.fail_static = PerFamily {
            ipv4: true,
            ipv6: true,
        };
        st
    }

    #[test]
    fn observe_mode_is_said_in_the_table() {
        let mut st = all_healthy();
        assert!(!table(&st, None).contains("OBSERVE"));
        st.mode = "observe".into();
        st.observe = Some(uplinkd::status::ObserveStatus {
            would_route: st.active.clone(),
            installs: "only the probe tables and rules".into(),
        });
        let t = table(&st, None);
        assert!(
            t.contains("OBSERVE MODE: decisions are reported, not carried out (only the probe tables and rules)"),
            "{t}"
        );
    }

    #[test]
    fn a_competing_route_is_shown_in_the_table() {
        let mut st = all_healthy();
        st.competing_route.ipv6 = Some(uplinkd::status::CompetingRoute {
            via: Some("2001:db8:2::1".parse().unwrap()),
            dev: "upb".into(),
            metric: 0,
            protocol: "ra".into(),
        });
        let t = table(&st, None);
        assert!(
            t.contains("WARNING ipv6: default route via 2001:db8:2::1 dev upb metric 0 (proto ra) outranks ours and carries the traffic"),
            "{t}"
        );
        assert!(!table(&all_healthy(), None).contains("WARNING"));
    }

    #[test]
    fn piped_table_is_never_cut() {
        let t = table(&long_lines(), None);
        assert!(!t.contains('~'), "{t}");
        assert!(
            t.contains("ipv6: primary (FAIL STATIC: no usable uplink)"),
            "{t}"
        );
        assert!(
            t.contains("quorum4(transit-a,transit-b,transit-c,transit-d) quorum6(transit-a,transit-b,transit-c,transit-d)"),
            "{t}"
        );
        assert!(t.lines().any(|l| l.chars().count() > 100), "{t}");
        // Long names widen their column instead of being cut.
        let mut st = all_healthy();
        st.uplinks[1].name = "secondary-via-rack-17".into();
        let t = table(&st, None);
        assert!(t.contains("secondary-via-rack-17 "), "{t}");
        let col = |l: &str| l.find("upa").or_else(|| l.find("upb"));
        let rows: Vec<&str> = t.lines().filter(|l| col(l).is_some()).collect();
        assert_eq!(col(rows[0]), col(rows[1]), "{t}");
    }

    #[test]
    fn terminal_table_fits_the_width() {
        for width in [60, 80, 100, 132] {
            let t = table(&long_lines(), Some(width));
            for l in t.lines() {
                assert!(l.chars().count() <= width, "{width}: {l:?}");
            }
            // The long lines are cut, and the cut is marked.
            assert!(t.lines().any(|l| l.ends_with('~')), "{t}");
        }
        // Wide enough: nothing is cut.
        let t = table(&long_lines(), Some(500));
        assert_eq!(t, table(&long_lines(), None));
    }

    #[test]
    fn verbose_has_one_block_per_uplink_with_every_field() {
        let mut st = all_healthy();
        fail(&mut st, 0, vec![Reason::Carrier, quorum("ipv4")]);
        on_secondary(&mut st);
        st.uplinks[0]
            .suspicion
            .by_source
            .insert("tcp_stall".into(), 2);
        st.uplinks[0].suspicion.bursts = 1;
        st.uplinks[0].suspicion.burst_probes = 32;
        let v = verbose(&st);
        assert_eq!(v.matches("\nuplink ").count(), 2, "{v}");
        let block = |name: &str| {
            v.split("\nuplink ")
                .find(|b| b.starts_with(&format!("{name}\n")))
                .unwrap_or_else(|| panic!("no block for {name}:\n{v}"))
                .to_string()
        };
        let p = block("primary");
        assert!(block("secondary").contains("suspicions   none"), "{v}");
        for want in [
            "suspicions   tcp_stall 2; 1 confirmation bursts, 32 probes",
            "interface    upa",
            "state        unhealthy",
            "carrier      up",
            "drained      no",
            "no carrier",
            "ipv4 transit quorum lost: unreachable through this uplink while reachable through another: transit-a, transit-b, transit-c, transit-d",
            "gateway4     198.18.1.1",
            "gateway6     2001:db8:1::1",
            "8 of 8 targets reachable",
        ] {
            assert!(p.contains(want), "{want:?} not in\n{p}");
        }
        // Every target, with its RTT and loss.
        let targets: Vec<&str> = p
            .lines()
            .filter(|l| l.contains("198.18.100.") || l.contains("2001:db8:100::"))
            .collect();
        assert_eq!(targets.len(), 8, "{p}");
        for l in targets {
            assert!(l.contains("rtt 1") && l.contains("loss 0%"), "{l}");
        }
        assert!(
            p.contains("ipv6         unhealthy (carrier quorum4("),
            "{p}"
        );
        let s = block("secondary");
        assert!(s.contains("active for   v4,v6"), "{s}");
    }

    #[test]
    fn a_healthy_preferred_uplink_says_why_it_is_not_active() {
        let mut st = all_healthy();
        on_secondary(&mut st);
        for f in families_mut(&mut st, 0) {
            f.failback_in_ms = Some(24_200);
        }
        let t = table(&st, None);
        assert!(
            t.contains("primary is healthy but not active for ipv4, ipv6: failback in 25s"),
            "{t}"
        );
        assert!(verbose(&st).contains("not active: failback in 25s"));

        // Per family, and in words for long waits.
        st.uplinks[0].families.ipv6.as_mut().unwrap().failback_in_ms = Some(3_723_000);
        let t = table(&st, None);
        assert!(t.contains("for ipv4: failback in 25s"), "{t}");
        assert!(t.contains("for ipv6: failback in 1h02m"), "{t}");

        // Damped: the hold, not the failback timer.
        let mut d = st.clone();
        d.uplinks[0].damped_ms = Some(90_000);
        d.uplinks[0].flaps = 3;
        for f in families_mut(&mut d, 0) {
            f.state = UplinkState::Unhealthy;
            f.reasons = vec![Reason::Damped {
                remaining_ms: 90_000,
            }];
        }
        let t = table(&d, None);
        assert!(
            t.contains("primary is healthy but not active for ipv4, ipv6: damped for 1m30s more after 3 flaps"),
            "{t}"
        );

        // Drained.
        let mut d = st.clone();
        d.uplinks[0].drained = true;
        d.uplinks[0].reasons = vec![Reason::Drained];
        let t = table(&d, None);
        assert!(
            t.contains("primary is healthy but not active for ipv4, ipv6: drained (uplinkctl undrain primary puts it back)"),
            "{t}"
        );

        // Not healthy: its reasons say why, no extra line.
        let mut d = st.clone();
        fail(&mut d, 0, vec![Reason::Carrier]);
        assert!(!table(&d, None).contains("not active"));
        // On the preferred uplink: nothing to explain.
        assert!(!table(&all_healthy(), None).contains("not active"));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_ms(0), "0s");
        assert_eq!(human_ms(1), "1s");
        assert_eq!(human_ms(59_000), "59s");
        assert_eq!(human_ms(60_000), "1m00s");
        assert_eq!(human_ms(3_599_000), "59m59s");
        assert_eq!(human_ms(3_600_000), "1h00m");
    }
}
