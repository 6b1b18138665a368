//! Applying a new configuration to a running core as a difference (SIGHUP).
//!
//! What is kept, what is reset:
//! - An uplink is the same uplink when its name, interface, gateways and bond
//!   are unchanged: it keeps everything (carrier, probe history and verdicts,
//!   health and since when, drain, damping), also when its place in the
//!   preference order changes. A changed uplink is a new one: no history,
//!   unknown health, probed before it can be used.
//! - A transit is the same transit when its name and targets are unchanged:
//!   its targets keep their history through every kept uplink. A changed or
//!   added transit starts unknown (probed at once); a removed one is dropped.
//! - Policy, probe timing and hooks apply from now on; a probe interval that
//!   got shorter takes effect at once (the next probe is not left waiting for
//!   the old interval).
//! - The active uplink of a family stays active when it is kept; when it was
//!   removed or changed, the family fails over by the normal rules (the next
//!   healthy uplink in preference order; fail static when there is none),
//!   with reason `reconfigured`.
//! - What the daemon sets up once at start cannot change while it runs: every
//!   `[agent]` key (socket, group, route metric, tables, marks, rule
//!   priority, kernel fallback), `[metrics]` (the HTTP listener) and which
//!   interfaces are bond members of which bond. A new configuration that
//!   changes any of them is refused as a whole (nothing is applied) with a
//!   message naming them: restart the service to apply it.

use std::collections::HashMap;

use super::{fresh_uplink, Bond, Core, FamilyDecision, InFlight, Target, Uplink};
use crate::config::{Config, Family, UplinkConfig};
use crate::{Action, Now, ProbeKind};

/// The reason of a switch caused by a reconfiguration.
pub const RECONFIGURED: &str = "reconfigured";

fn same_uplink(a: &UplinkConfig, b: &UplinkConfig) -> bool {
    a.name == b.name
        && a.interface == b.interface
        && a.gateway4 == b.gateway4
        && a.gateway6 == b.gateway6
        && a.gateway_probe == b.gateway_probe
        && a.bond == b.bond
        // A member given or losing its probe address is probed another way.
        && Family::ALL.iter().all(|&f| a.can_echo(f) == b.can_echo(f))
}

/// The keys of `new` that differ from `old` and can only change by a restart.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut v = Vec::new();
    let (a, b) = (&old.agent, &new.agent);
    let mut key = |changed: bool, k: &str| {
        if changed {
            v.push(k.to_string());
        }
    };
    key(a.socket != b.socket, "agent.socket");
    key(a.socket_group != b.socket_group, "agent.socket_group");
    key(a.route_metric != b.route_metric, "agent.route_metric");
    key(
        a.kernel_fallback != b.kernel_fallback,
        "agent.kernel_fallback",
    );
    key(
        a.remove_competing_routes != b.remove_competing_routes,
        "agent.remove_competing_routes",
    );
    key(a.table_base != b.table_base, "agent.table_base");
    key(a.fwmark_base != b.fwmark_base, "agent.fwmark_base");
    key(a.rule_priority != b.rule_priority, "agent.rule_priority");
    key(old.metrics.http != new.metrics.http, "metrics.http");
    key(old.metrics.listen != new.metrics.listen, "metrics.listen");
    // The bond members' prober (packet sockets, probe addresses, the
    // gateways it resolves) is built once at start.
    let members = |c: &Config| {
        let mut m: Vec<String> = c
            .uplinks
            .iter()
            .filter_map(|u| {
                Some(format!(
                    "{} {} {:?} {:?} {:?} {:?}",
                    u.bond.as_ref()?,
                    u.interface,
                    u.gateway4,
                    u.gateway6,
                    u.probe_address4,
                    u.probe_address6
                ))
            })
            .collect();
        m.sort();
        m
    };
    key(
        members(old) != members(new),
        "uplink[].bond, and the interface, gateways and probe addresses of bond members",
    );
    v
}

/// One line per difference between `old` and `new`, for the log.
pub fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |k: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{k} {a} -> {b}"));
        }
    };
    let d = |x: std::time::Duration| humantime::format_duration(x).to_string();
    let (p, q) = (&old.policy, &new.policy);
    field(
        "policy.failback_after",
        d(p.failback_after),
        d(q.failback_after),
    );
    field("policy.quorum", p.quorum.to_string(), q.quorum.to_string());
    let src = |a: Option<std::net::IpAddr>| a.map_or("unset".to_string(), |a| a.to_string());
    for f in crate::config::Family::ALL {
        field(
            &format!(
                "agent.source{}",
                if f == crate::config::Family::V4 { 4 } else { 6 }
            ),
            src(old.agent.source(f)),
            src(new.agent.source(f)),
        );
    }
    field(
        "policy.damping",
        format!("{:?}", p.damping),
        format!("{:?}", q.damping),
    );
    let (p, q) = (&old.probe, &new.probe);
    for (k, a, b) in [
        ("carrier_interval", p.carrier_interval, q.carrier_interval),
        ("gateway_interval", p.gateway_interval, q.gateway_interval),
        (
            "gateway_fast_interval",
            p.gateway_fast_interval,
            q.gateway_fast_interval,
        ),
        (
            "gateway_dead_after",
            p.gateway_dead_after,
            q.gateway_dead_after,
        ),
        ("gateway_timeout", p.gateway_timeout, q.gateway_timeout),
        ("transit_interval", p.transit_interval, q.transit_interval),
        (
            "transit_fast_interval",
            p.transit_fast_interval,
            q.transit_fast_interval,
        ),
        ("transit_timeout", p.transit_timeout, q.transit_timeout),
    ] {
        field(&format!("probe.{k}"), d(a), d(b));
    }
    for (k, a, b) in [
        (
            "gateway_min_misses",
            p.gateway_min_misses,
            q.gateway_min_misses,
        ),
        ("gateway_rise", p.gateway_rise, q.gateway_rise),
        ("transit_fall", p.transit_fall, q.transit_fall),
        ("transit_rise", p.transit_rise, q.transit_rise),
        ("standby_slowdown", p.standby_slowdown, q.standby_slowdown),
    ] {
        field(&format!("probe.{k}"), a.to_string(), b.to_string());
    }
    if old.hooks != new.hooks {
        out.push("hooks changed".into());
    }
    for u in &new.uplinks {
        match old.uplinks.iter().find(|o| o.name == u.name) {
            None => out.push(format!("uplink {} added", u.name)),
            Some(o) if !same_uplink(o, u) => out.push(format!(
                "uplink {} changed (its state starts afresh)",
                u.name
            )),
            _ => {}
        }
    }
    for o in &old.uplinks {
        if !new.uplinks.iter().any(|u| u.name == o.name) {
            out.push(format!("uplink {} removed", o.name));
        }
    }
    let order = |c: &Config| c.uplinks.iter().map(|u| u.name.clone()).collect::<Vec<_>>();
    let (a, b) = (order(old), order(new));
    let kept_a: Vec<&String> = a.iter().filter(|n| b.contains(n)).collect();
    let kept_b: Vec<&String> = b.iter().filter(|n| a.contains(n)).collect();
    if kept_a != kept_b {
        out.push(format!("preference order now {}", b.join(", ")));
    }
    for t in &new.transits {
        match old.transits.iter().find(|o| o.name == t.name) {
            None => out.push(format!("transit {} added", t.name)),
            Some(o) if o.targets != t.targets => out.push(format!(
                "transit {} targets changed (they start afresh)",
                t.name
            )),
            _ => {}
        }
    }
    for o in &old.transits {
        if !new.transits.iter().any(|t| t.name == o.name) {
            out.push(format!("transit {} removed", o.name));
        }
    }
    out
}

impl Core {
    /// Apply `new` as a difference (see the module docs). On success returns
    /// what must be done now (probes of new targets, a failover when the
    /// active uplink was removed) and a one-line summary of what changed. On
    /// refusal nothing changed and the error says why.
    pub fn reconfigure(&mut self, now: Now, new: Config) -> Result<(Vec<Action>, String), String> {
        let restart = restart_only_changes(&self.cfg, &new);
        if !restart.is_empty() {
            return Err(format!(
                "not applied: changing {} requires a restart (the running configuration stays in force)",
                restart.join(", ")
            ));
        }
        let changes = describe_changes(&self.cfg, &new);
        if changes.is_empty() && self.cfg == new {
            return Ok((Vec::new(), "no change".into()));
        }
        self.last_now = self.last_now.max(now);
        let old = std::mem::replace(&mut self.cfg, new);
        let new = &self.cfg;

        // new uplink index -> old index, for the uplinks that are the same.
        let kept: Vec<Option<usize>> = new
            .uplinks
            .iter()
            .map(|u| old.uplinks.iter().position(|o| same_uplink(o, u)))
            .collect();
        let old_to_new: HashMap<usize, usize> = kept
            .iter()
            .enumerate()
            .filter_map(|(n, o)| o.map(|o| (o, n)))
            .collect();
        // new transit index -> old index, for the transits that are the same.
        let transit_kept: Vec<Option<usize>> = new
            .transits
            .iter()
            .map(|t| {
                old.transits
                    .iter()
                    .position(|o| o.name == t.name && o.targets == t.targets)
            })
            .collect();
        let transit_old_to_new: HashMap<usize, usize> = transit_kept
            .iter()
            .enumerate()
            .filter_map(|(n, o)| o.map(|o| (o, n)))
            .collect();

        let mut old_uplinks: Vec<Option<Uplink>> = std::mem::take(&mut self.uplinks)
            .into_iter()
            .map(Some)
            .collect();
        let p = new.probe.clone();
        let mut uplinks = Vec::with_capacity(new.uplinks.len());
        for (n, o) in kept.iter().enumerate() {
            let fresh = fresh_uplink(new, n, now);
            let Some(mut u) = o.and_then(|o| old_uplinks[o].take()) else {
                uplinks.push(fresh);
                continue;
            };
            // Same interface and gateways: the same families, the same
            // gateway targets. Transits: kept ones move, others start afresh.
            let fresh_fams = fresh.fams;
            for (fi, fresh_f) in fresh_fams.into_iter().enumerate() {
                let (Some(f), Some(fresh_f)) = (u.fams[fi].as_mut(), fresh_f) else {
                    continue;
                };
                let mut old_transits: Vec<Option<Vec<Target>>> = std::mem::take(&mut f.transits)
                    .into_iter()
                    .map(Some)
                    .collect();
                f.transits = fresh_f
                    .transits
                    .into_iter()
                    .enumerate()
                    .map(|(t, fresh_targets)| {
                        transit_kept[t]
                            .and_then(|o| old_transits.get_mut(o).and_then(Option::take))
                            .unwrap_or_else(|| {
                                // New targets of a running uplink: probe at once.
                                fresh_targets
                                    .into_iter()
                                    .map(|x| Target::new(x.addr, now))
                                    .collect()
                            })
                    })
                    .collect();
                let g = &mut f.gateway;
                if let Some(last) = g.last_sent {
                    g.next_at = g.next_at.min(last + p.gateway_interval);
                }
                for t in f.transits.iter_mut().flatten() {
                    if let Some(last) = t.last_sent {
                        t.next_at = t.next_at.min(last + p.transit_interval);
                    }
                }
                // A burst in progress refers to the old targets: let it end.
                if f.burst_left > 0 {
                    f.burst_left = 0;
                    f.burst_end = Some(now);
                }
                // The adapter drops its echo streams on a reload (they name
                // uplinks by index): asked again, judged afresh.
                f.stream = None;
                f.echo_trouble = false;
            }
            uplinks.push(u);
        }
        self.uplinks = uplinks;
        // Its samples name uplinks by their old index.
        self.detector.clear();

        // Probes in flight: kept for kept targets, forgotten otherwise (their
        // outcome is then ignored).
        self.in_flight = std::mem::take(&mut self.in_flight)
            .into_iter()
            .filter_map(|(id, fl)| {
                let uplink = *old_to_new.get(&fl.uplink)?;
                let kind = match fl.kind {
                    ProbeKind::Gateway => ProbeKind::Gateway,
                    ProbeKind::Echo => ProbeKind::Echo,
                    ProbeKind::Transit(t) => ProbeKind::Transit(*transit_old_to_new.get(&t)?),
                };
                Some((id, InFlight { uplink, kind, ..fl }))
            })
            .collect();

        // Each family's decision follows its active uplink.
        for f in Family::ALL {
            let d: &mut FamilyDecision = &mut self.fam[f.index()];
            if let Some(a) = d.active {
                d.active = old_to_new.get(&a).copied();
                if d.active.is_none() {
                    d.cleared_by = Some(RECONFIGURED.into());
                }
            }
        }

        // Bonds: kept by name, their agent choice remapped.
        let mut old_bonds = std::mem::take(&mut self.bonds);
        for u in &new.uplinks {
            let Some(b) = &u.bond else { continue };
            if self.bonds.iter().any(|x| &x.status.name == b) {
                continue;
            }
            let bond = match old_bonds.iter().position(|x| &x.status.name == b) {
                Some(i) => {
                    let mut x = old_bonds.swap_remove(i);
                    x.chosen = x.chosen.and_then(|c| old_to_new.get(&c).copied());
                    x
                }
                None => Bond {
                    status: crate::status::BondStatus {
                        name: b.clone(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            };
            self.bonds.push(bond);
        }

        let mut out = Vec::new();
        self.evaluate(now, &mut out);
        self.schedule_probes(now, &mut out);
        let summary = if changes.is_empty() {
            "no effective change".to_string()
        } else {
            changes.join("; ")
        };
        Ok((out, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, PolicyConfig, TransitConfig};

    fn cfg() -> Config {
        let uplink = |name: &str, interface: &str, gw: [u8; 4]| UplinkConfig {
            name: name.into(),
            interface: interface.into(),
            gateway4: Some(gw.into()),
            gateway6: None,
            bond: None,
            probe_address4: None,
            probe_address6: None,
            gateway_probe: Default::default(),
        };
        Config {
            agent: AgentConfig {
                socket: "/tmp/x.sock".into(),
                ..Default::default()
            },
            policy: PolicyConfig {
                failback_after: PolicyConfig::DEFAULT_FAILBACK_AFTER,
                quorum: PolicyConfig::default_quorum(1),
                damping: Default::default(),
            },
            probe: Default::default(),
            uplinks: vec![
                uplink("primary", "eth0", [198, 18, 1, 1]),
                uplink("secondary", "eth1", [198, 18, 2, 1]),
            ],
            transits: vec![TransitConfig {
                name: "transit-a".into(),
                targets: vec!["198.19.0.1".parse().unwrap()],
            }],
            hooks: Default::default(),
            metrics: Default::default(),
        }
    }

    #[test]
    fn restart_only_keys_are_named() {
        let a = cfg();
        let mut b = a.clone();
        b.agent.socket = "/tmp/y.sock".into();
        b.agent.table_base += 1;
        assert_eq!(
            restart_only_changes(&a, &b),
            vec!["agent.socket".to_string(), "agent.table_base".into()]
        );
        let mut core = Core::new(a.clone(), Now::ZERO);
        let err = core.reconfigure(Now::ZERO, b).unwrap_err();
        assert!(
            err.contains("agent.socket") && err.contains("restart"),
            "{err}"
        );
        assert_eq!(core.config(), &a, "nothing applied");
    }

    #[test]
    fn changes_are_described() {
        let a = cfg();
        let mut b = a.clone();
        b.policy.failback_after = std::time::Duration::from_secs(5);
        b.uplinks.swap(0, 1);
        b.transits.push(TransitConfig {
            name: "transit-b".into(),
            targets: vec!["198.19.0.2".parse().unwrap()],
        });
        let d = describe_changes(&a, &b);
        assert!(
            d.iter()
                .any(|l| l.starts_with("policy.failback_after 30s -> 5s")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l == "preference order now secondary, primary"),
            "{d:?}"
        );
        assert!(d.iter().any(|l| l == "transit transit-b added"), "{d:?}");
        assert!(describe_changes(&a, &a).is_empty());
    }
}
