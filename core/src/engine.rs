//! The decision engine: per-uplink health from evidence, then per-family
//! selection. Pure: time comes in as `now`, effects go out as `Action`s.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::target::Target;
use super::{Action, Event, Now, ProbeId, ProbeKind, RouteVia, UplinkId};
use crate::config::{Config, Family};
use crate::status::{BondStatus, Change, Reason};

mod bond;
mod health;
mod reconfigure;
mod schedule;
mod view;

/// Health of one uplink for one family.
#[derive(Debug, Clone)]
struct UplinkFamily {
    gateway: Target,
    /// Per transit (index into config.transits): its targets of this family.
    transits: Vec<Vec<Target>>,
    /// Fast rounds left in the current burst (suspicion), and when the next is due.
    burst_left: u32,
    burst_next: Now,
    /// When the last burst sent its last round: only probes sent after it
    /// can start a new one, so bursts never feed themselves.
    burst_end: Option<Now>,
    usable: Option<bool>,
    /// Since when it has been continuously usable.
    usable_since: Option<Now>,
    reasons: Vec<Reason>,
}

#[derive(Debug, Clone)]
struct Uplink {
    /// None until the first carrier report.
    carrier: Option<bool>,
    present: bool,
    drained: bool,
    undrained_at: Option<Now>,
    fams: [Option<UplinkFamily>; 2],
    /// Failure instants within the damping window.
    flaps: VecDeque<Now>,
    damp_level: u32,
    damped_until: Option<Now>,
    /// True while every family of this uplink is usable (for flap counting).
    fully_usable: bool,
    /// For a bond member: enslaved to its bond (None until the bond is read).
    enslaved: Option<bool>,
}

/// A managed bond: the driver's view and the agent's choice.
#[derive(Debug, Clone, Default)]
struct Bond {
    status: BondStatus,
    seen: bool,
    /// The member the agent last made active.
    chosen: Option<UplinkId>,
}

#[derive(Debug, Clone, Default)]
struct FamilyDecision {
    /// Whether the kernel's route has been observed (initial dump done).
    route_known: bool,
    active: Option<UplinkId>,
    decided: bool,
    fail_static: bool,
    /// A mismatch between the observed route and `active` was hinted by an
    /// event and waits for an authoritative dump.
    verify_pending: bool,
    /// Why `active` was cleared by a reconfiguration (the active uplink was
    /// removed or changed): the reason of the next switch.
    cleared_by: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    uplink: UplinkId,
    family: Family,
    kind: ProbeKind,
    /// Index among the transit's targets of that family.
    slot: usize,
    sent_at: Now,
}

/// State of uplink `i` of `cfg` with no history, its first probes due from `now`.
fn fresh_uplink(cfg: &Config, i: usize, now: Now) -> Uplink {
    let u = &cfg.uplinks[i];
    let fams = Family::ALL.map(|f| {
        // Stagger the far probes of one uplink and family evenly
        // over one interval, so a failure is seen within
        // interval / targets, not within a whole interval.
        let n: usize = cfg.transits.iter().map(|t| t.targets_of(f).count()).sum();
        let mut k = 0u32;
        // Transits are probed through a bond member only from
        // its dedicated probe address (see src/bond.rs).
        let member = u.bond.is_some()
            && match f {
                Family::V4 => u.probe_address4.is_none(),
                Family::V6 => u.probe_address6.is_none(),
            };
        u.gateway(f).map(|gw| UplinkFamily {
            gateway: Target::new(gw, now),
            transits: cfg
                .transits
                .iter()
                .map(|t| {
                    t.targets_of(f)
                        .filter(|_| !member)
                        .map(|a| {
                            let at = now + cfg.probe.transit_interval * k / n.max(1) as u32;
                            k += 1;
                            Target::new(a, at)
                        })
                        .collect()
                })
                .collect(),
            burst_left: 0,
            burst_next: now,
            burst_end: None,
            usable: None,
            usable_since: None,
            reasons: Vec::new(),
        })
    });
    Uplink {
        carrier: None,
        present: true,
        drained: false,
        undrained_at: None,
        fams,
        flaps: VecDeque::new(),
        damp_level: 0,
        damped_until: None,
        fully_usable: false,
        enslaved: None,
    }
}

/// The decision engine. See the module docs of [`crate::core`].
#[derive(Debug, Clone)]
pub struct Core {
    cfg: Config,
    uplinks: Vec<Uplink>,
    fam: [FamilyDecision; 2],
    in_flight: HashMap<ProbeId, InFlight>,
    next_probe: u64,
    last_now: Now,
    bonds: Vec<Bond>,
}

impl Core {
    /// `now` is the start instant (usually zero).
    pub fn new(cfg: Config, now: Now) -> Core {
        let uplinks = (0..cfg.uplinks.len())
            .map(|i| fresh_uplink(&cfg, i, now))
            .collect();
        let mut bonds: Vec<Bond> = Vec::new();
        for u in &cfg.uplinks {
            if let Some(b) = &u.bond {
                if !bonds.iter().any(|x| &x.status.name == b) {
                    bonds.push(Bond {
                        status: BondStatus {
                            name: b.clone(),
                            ..Default::default()
                        },
                        ..Default::default()
                    });
                }
            }
        }
        Core {
            cfg,
            uplinks,
            fam: Default::default(),
            in_flight: HashMap::new(),
            next_probe: 1,
            last_now: now,
            bonds,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The uplink carrying `family`, if any.
    pub fn active(&self, family: Family) -> Option<UplinkId> {
        self.fam[family.index()].active
    }

    /// True once a first decision was made for every family that has a
    /// gateway on some uplink.
    pub fn decided(&self) -> bool {
        Family::ALL
            .iter()
            .all(|f| !self.family_configured(*f) || self.fam[f.index()].decided)
    }

    fn family_configured(&self, f: Family) -> bool {
        self.uplinks.iter().any(|u| u.fams[f.index()].is_some())
    }

    fn name(&self, u: UplinkId) -> String {
        self.cfg.uplinks[u].name.clone()
    }

    /// Feed one event; get what must be done now.
    pub fn handle(&mut self, now: Now, event: Event) -> Vec<Action> {
        self.handle_all(now, [event])
    }

    /// Several events that happened by `now` (e.g. all the probe replies a
    /// loop turn read), applied in order, then judged together: the same as
    /// handling them one by one, except that no decision or probe is made on
    /// a partial picture (a probe whose reply is the next event in the batch
    /// is not overdue).
    pub fn handle_all(&mut self, now: Now, events: impl IntoIterator<Item = Event>) -> Vec<Action> {
        let mut out = Vec::new();
        self.last_now = self.last_now.max(now);
        for event in events {
            self.apply(now, event, &mut out);
        }
        self.evaluate(now, &mut out);
        self.schedule_probes(now, &mut out);
        out
    }

    fn apply(&mut self, now: Now, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Carrier {
                uplink,
                up,
                present,
                source,
            } => self.on_carrier(now, uplink, up, present, source, out),
            Event::ProbeDone { id, outcome } => self.on_probe(now, id, outcome, out),
            Event::DefaultRoute { family, via } => self.on_route(family, via, true, out),
            Event::DefaultRouteHint { family, via } => self.on_route(family, via, false, out),
            Event::Drain { uplink, drained } => {
                let u = &mut self.uplinks[uplink];
                if u.drained != drained {
                    u.drained = drained;
                    if !drained {
                        u.undrained_at = Some(now);
                    }
                    out.push(Action::Report(Change::Drained {
                        uplink: self.name(uplink),
                        drained,
                    }));
                }
            }
            Event::Reprobe => self.reprobe(now),
            Event::Bond(st) => self.on_bond(st, out),
            Event::Tick => {}
        }
    }

    fn eligible_since(&self, i: UplinkId, f: &UplinkFamily) -> Option<Now> {
        let since = f.usable_since?;
        Some(match self.uplinks[i].undrained_at {
            Some(t) => since.max(t),
            None => since,
        })
    }

    fn on_route(
        &mut self,
        family: Family,
        via: RouteVia,
        authoritative: bool,
        out: &mut Vec<Action>,
    ) {
        let d = &mut self.fam[family.index()];
        if !d.decided {
            // Adopt what we find: the first decision starts from it.
            if !authoritative {
                return;
            }
            d.route_known = true;
            d.active = match via {
                RouteVia::Uplink(u) => Some(u),
                _ => None,
            };
            return;
        }
        let Some(active) = d.active else {
            return;
        };
        let same = matches!(via, RouteVia::Uplink(u) if self.same_route(u, active));
        let d = &mut self.fam[family.index()];
        if same {
            d.verify_pending = false;
            return;
        }
        if !authoritative {
            // Events may describe a state from before our own last change;
            // ask for the kernel's current view before acting.
            if !d.verify_pending {
                d.verify_pending = true;
                out.push(Action::VerifyRoute { family });
            }
            return;
        }
        d.verify_pending = false;
        let found = match via {
            RouteVia::Absent => "no route".to_string(),
            RouteVia::Uplink(u) => format!("route via {}", self.cfg.uplinks[u].name),
            RouteVia::Foreign(s) => s,
        };
        out.push(Action::SetDefaultRoute {
            family,
            uplink: active,
        });
        out.push(Action::Report(Change::RouteRestored {
            family: family.name().into(),
            uplink: self.cfg.uplinks[active].name.clone(),
            found,
        }));
    }

    /// What the evidence so far means: each uplink's health first, then
    /// each family's choice from it.
    fn evaluate(&mut self, now: Now, out: &mut Vec<Action>) {
        self.judge_health(now, out);
        // Expire damping.
        for u in &mut self.uplinks {
            if u.damped_until.is_some_and(|t| t <= now) {
                u.damped_until = None;
            }
            let window = self.cfg.policy.damping.window;
            while u
                .flaps
                .front()
                .is_some_and(|t| now.saturating_sub(*t) > window)
            {
                u.flaps.pop_front();
            }
            if u.flaps.is_empty() && u.damped_until.is_none() {
                u.damp_level = 0;
            }
        }
        for f in Family::ALL {
            self.select(now, f, out);
        }
    }

    fn count_flap(&mut self, now: Now, i: UplinkId, out: &mut Vec<Action>) {
        let d = self.cfg.policy.damping.clone();
        let u = &mut self.uplinks[i];
        u.flaps.push_back(now);
        if u.flaps.len() as u32 >= d.threshold {
            u.damp_level += 1;
            let factor = 1u32 << (u.damp_level - 1).min(16);
            let hold = d.hold.saturating_mul(factor).min(d.max_hold);
            u.damped_until = Some(now + hold);
            out.push(Action::Report(Change::Damped {
                uplink: self.cfg.uplinks[i].name.clone(),
                hold_ms: hold.as_millis() as u64,
                flaps: u.flaps.len() as u32,
            }));
        }
    }

    fn damped(&self, i: UplinkId, now: Now) -> bool {
        self.uplinks[i].damped_until.is_some_and(|t| t > now)
    }

    /// Usable for `family` and not drained.
    fn candidate(&self, i: UplinkId, fi: usize) -> bool {
        let u = &self.uplinks[i];
        !u.drained && u.fams[fi].as_ref().is_some_and(|f| f.usable == Some(true))
    }

    fn healthy_for(&self, i: UplinkId, fi: usize, now: Now) -> Duration {
        self.uplinks[i].fams[fi]
            .as_ref()
            .and_then(|f| self.eligible_since(i, f))
            .map_or(Duration::ZERO, |t| now.saturating_sub(t))
    }

    fn select(&mut self, now: Now, family: Family, out: &mut Vec<Action>) {
        let fi = family.index();
        if !self.family_configured(family) || !self.fam[fi].route_known {
            return;
        }
        let n = self.uplinks.len();
        let has_family: Vec<bool> = (0..n).map(|i| self.uplinks[i].fams[fi].is_some()).collect();
        // Wait for a verdict on every uplink of this family before the first
        // decision, unless the adopted route is already good.
        if !self.fam[fi].decided {
            self.adopt_driver_member(fi);
            let all_known = (0..n).all(|i| {
                !has_family[i] || self.uplinks[i].fams[fi].as_ref().unwrap().usable.is_some()
            });
            let adopted_ok = self.fam[fi].active.is_some_and(|a| self.candidate(a, fi));
            if !all_known && !adopted_ok {
                return;
            }
            self.fam[fi].decided = true;
            let active = self.fam[fi].active;
            out.push(Action::Report(Change::Adopted {
                family: family.name().into(),
                uplink: active.map(|a| self.name(a)),
            }));
        }
        let current = self.fam[fi].active;
        let undamped = |s: &Self, i: UplinkId| s.candidate(i, fi) && !s.damped(i, now);
        let (target, reason): (Option<UplinkId>, String) = match current {
            Some(c) if self.candidate(c, fi) => {
                // Fail back to a more preferred uplink once it is stable.
                let better = (0..c).find(|&p| {
                    undamped(self, p)
                        && self.healthy_for(p, fi, now) >= self.cfg.policy.failback_after
                });
                match better {
                    Some(p) => (Some(p), "failback".into()),
                    None => (Some(c), String::new()),
                }
            }
            _ => {
                let pick = (0..n)
                    .find(|&i| Some(i) != current && undamped(self, i))
                    .or_else(|| (0..n).find(|&i| Some(i) != current && self.candidate(i, fi)));
                // Away from a failed uplink only to one whose gateway answered
                // its latest probe: when both gateways die at once the
                // standby is milliseconds from its own verdict, and moving
                // there first would be a switch for nothing. Its fast probes
                // settle the doubt within a few ms either way.
                if current.is_some()
                    && pick.is_some_and(|p| {
                        self.uplinks[p].fams[fi]
                            .as_ref()
                            .is_some_and(|f| f.gateway.consecutive_miss > 0)
                    })
                {
                    return;
                }
                let reason = match current {
                    None => self.fam[fi]
                        .cleared_by
                        .clone()
                        .unwrap_or_else(|| "initial".to_string()),
                    Some(c) => self.reason_code(c, fi),
                };
                (pick, reason)
            }
        };
        if let Some(t) = target.filter(|t| Some(*t) == current) {
            self.claim_adopted_member(t, family, out);
        }
        match target {
            Some(t) if Some(t) != current => {
                let d = &mut self.fam[fi];
                d.active = Some(t);
                d.cleared_by = None;
                let was_static = std::mem::replace(&mut d.fail_static, false);
                out.push(Action::SetDefaultRoute { family, uplink: t });
                if self.cfg.uplinks[t].bond.is_some() && self.lead_family(t) == family {
                    let why = if reason.is_empty() {
                        "initial"
                    } else {
                        reason.as_str()
                    };
                    let why = why.to_string();
                    self.choose_member(t, &why, out);
                }
                if let Some(c) = current {
                    let fell = !self.candidate(c, fi);
                    let carrier_or_gw = self.uplinks[c].carrier == Some(false)
                        || self.uplinks[c].fams[fi]
                            .as_ref()
                            .is_some_and(|f| f.gateway.verdict == Some(false));
                    if fell && carrier_or_gw {
                        out.push(Action::FlushNeighbours { uplink: c, family });
                    }
                }
                if was_static {
                    out.push(Action::Report(Change::FailStatic {
                        family: family.name().into(),
                        active: false,
                        evidence: format!("{} is usable again", self.name(t)),
                    }));
                }
                out.push(Action::Report(Change::ActiveChanged {
                    family: family.name().into(),
                    from: current.map(|c| self.name(c)),
                    to: Some(self.name(t)),
                    reason,
                }));
            }
            Some(_) => {
                if self.fam[fi].fail_static {
                    self.fam[fi].fail_static = false;
                    out.push(Action::Report(Change::FailStatic {
                        family: family.name().into(),
                        active: false,
                        evidence: "the active uplink is usable again".into(),
                    }));
                }
            }
            None => {
                // Nothing usable: fail static, keep the current route.
                if !self.fam[fi].fail_static {
                    self.fam[fi].fail_static = true;
                    let evidence = (0..n)
                        .filter(|&i| has_family[i])
                        .map(|i| format!("{}: {}", self.name(i), self.reason_code(i, fi)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    out.push(Action::Report(Change::FailStatic {
                        family: family.name().into(),
                        active: true,
                        evidence: format!("no usable uplink ({evidence}); keeping current routes"),
                    }));
                }
            }
        }
    }

    /// Short code for why an uplink is not a candidate, for `active_changed.reason`.
    fn reason_code(&self, i: UplinkId, fi: usize) -> String {
        let u = &self.uplinks[i];
        if u.drained {
            return "drained".into();
        }
        let Some(f) = &u.fams[fi] else {
            return "no_gateway".into();
        };
        let codes: Vec<&str> = f
            .reasons
            .iter()
            .map(|r| match r {
                Reason::Carrier => "carrier",
                Reason::Gateway { .. } => "gateway",
                Reason::Quorum { .. } => "quorum",
                Reason::Damped { .. } => "damped",
                Reason::Drained => "drained",
                Reason::Missing => "missing",
                Reason::NotInBond { .. } => "not_in_bond",
            })
            .collect();
        if codes.is_empty() {
            "unknown".into()
        } else {
            codes.join("+")
        }
    }
}
