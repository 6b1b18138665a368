//! The decision engine: per-uplink health from evidence, then per-family
//! selection. Pure: time comes in as `now`, effects go out as `Action`s.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::target::Target;
use super::{
    Action, CarrierSource, Event, Now, ProbeId, ProbeKind, ProbeOutcome, RouteVia, UplinkId,
};
use crate::config::{Config, Family};
use crate::status::{BondStatus, Change, Reason, UplinkState};

mod bond;
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

    // ---- evidence ------------------------------------------------------

    fn on_carrier(
        &mut self,
        now: Now,
        uplink: UplinkId,
        up: bool,
        present: bool,
        source: CarrierSource,
        out: &mut Vec<Action>,
    ) {
        let up = up && present;
        let u = &mut self.uplinks[uplink];
        u.present = present;
        if up && u.carrier == Some(false) {
            // Back from a carrier loss: the gateway answers again before the
            // uplink is used, and the probes lost while the link was down
            // do not fail it afterwards (one carrier flap is one failure,
            // not two, for damping).
            for f in u.fams.iter_mut().flatten() {
                f.gateway.restart(now);
            }
        }
        if u.carrier != Some(up) {
            u.carrier = Some(up);
            out.push(Action::Report(Change::Carrier {
                uplink: self.cfg.uplinks[uplink].name.clone(),
                up,
                source: source.name().to_string(),
            }));
        }
    }

    fn on_probe(&mut self, now: Now, id: ProbeId, outcome: ProbeOutcome, out: &mut Vec<Action>) {
        let Some(fl) = self.in_flight.remove(&id) else {
            return; // unknown or already forgotten (e.g. after a config change)
        };
        let p = self.cfg.probe.clone();
        let uplink_name = self.name(fl.uplink);
        let transit_name = match fl.kind {
            ProbeKind::Transit(t) => self.cfg.transits[t].name.clone(),
            ProbeKind::Gateway => String::new(),
        };
        let Some(f) = self.uplinks[fl.uplink].fams[fl.family.index()].as_mut() else {
            return;
        };
        let target = match fl.kind {
            ProbeKind::Gateway => &mut f.gateway,
            ProbeKind::Transit(t) => match f.transits.get_mut(t).and_then(|v| v.get_mut(fl.slot)) {
                Some(t) => t,
                None => return,
            },
        };
        match outcome {
            ProbeOutcome::Reply { rtt } => {
                target.reply(now, fl.sent_at, rtt);
                let rise = match fl.kind {
                    ProbeKind::Gateway => p.gateway_rise,
                    ProbeKind::Transit(_) => p.transit_rise,
                };
                // With no history, one reply is enough; a dead target must prove itself.
                let needed = if target.verdict.is_none() { 1 } else { rise };
                if target.verdict != Some(true) && target.consecutive_ok >= needed {
                    target.set_verdict(now, true);
                    let evidence = format!("{} consecutive replies", target.consecutive_ok);
                    out.push(Action::Report(match fl.kind {
                        ProbeKind::Gateway => Change::Gateway {
                            uplink: uplink_name,
                            family: fl.family.name().into(),
                            address: target.addr,
                            reachable: true,
                            evidence,
                        },
                        ProbeKind::Transit(_) => Change::Transit {
                            uplink: uplink_name,
                            transit: transit_name,
                            target: target.addr,
                            reachable: true,
                            evidence,
                        },
                    }));
                }
            }
            ProbeOutcome::Timeout | ProbeOutcome::Error(_) => {
                target.miss(fl.sent_at);
                if let ProbeKind::Transit(_) = fl.kind {
                    if target.verdict != Some(false) && target.consecutive_miss >= p.transit_fall {
                        target.set_verdict(now, false);
                        let detail = match &outcome {
                            ProbeOutcome::Error(e) => format!(" (last: {e})"),
                            _ => String::new(),
                        };
                        out.push(Action::Report(Change::Transit {
                            uplink: uplink_name,
                            transit: transit_name,
                            target: target.addr,
                            reachable: false,
                            evidence: format!(
                                "{} consecutive probes unanswered{detail}",
                                target.consecutive_miss
                            ),
                        }));
                    }
                }
                // Gateway verdicts are time-based: see `gateway_verdicts`.
            }
        }
    }

    /// A gateway is dead when it has not answered for `gateway_dead_after`
    /// and at least `gateway_min_misses` probes since its last reply went
    /// unanswered: time alone would call a gateway dead because we did not
    /// ask; misses alone would be fooled by a burst.
    fn gateway_verdicts(&mut self, now: Now, out: &mut Vec<Action>) {
        let p = self.cfg.probe.clone();
        for (i, u) in self.uplinks.iter_mut().enumerate() {
            for (fi, f) in u.fams.iter_mut().enumerate() {
                let Some(f) = f else { continue };
                let g = &mut f.gateway;
                if g.verdict == Some(false) {
                    continue;
                }
                let Some(base) = g.last_reply.or(g.first_sent) else {
                    continue;
                };
                let silent = now.saturating_sub(base);
                if silent >= p.gateway_dead_after && g.misses_since_reply >= p.gateway_min_misses {
                    g.set_verdict(now, false);
                    out.push(Action::Report(Change::Gateway {
                        uplink: self.cfg.uplinks[i].name.clone(),
                        family: Family::ALL[fi].name().into(),
                        address: g.addr,
                        reachable: false,
                        evidence: format!(
                            "no reply for {} ms, {} probes unanswered",
                            silent.as_millis(),
                            g.misses_since_reply
                        ),
                    }));
                }
            }
        }
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

    // ---- health --------------------------------------------------------

    fn quorum_failures(&self, i: UplinkId, fi: usize) -> Vec<String> {
        let Some(f) = &self.uplinks[i].fams[fi] else {
            return Vec::new();
        };
        let mut down = Vec::new();
        for (t, targets) in f.transits.iter().enumerate() {
            if targets.is_empty() {
                continue;
            }
            let unreachable_here = targets.iter().all(|x| x.verdict == Some(false));
            if !unreachable_here {
                continue;
            }
            let reachable_elsewhere = self.uplinks.iter().enumerate().any(|(j, v)| {
                j != i
                    && v.carrier == Some(true)
                    && v.fams[fi]
                        .as_ref()
                        .is_some_and(|vf| vf.transits[t].iter().any(|x| x.verdict == Some(true)))
            });
            if reachable_elsewhere {
                down.push(self.cfg.transits[t].name.clone());
            }
        }
        down
    }

    fn quorum_k(&self, fi: usize) -> usize {
        let with_targets = self
            .cfg
            .transits
            .iter()
            .filter(|t| t.targets_of(Family::ALL[fi]).next().is_some())
            .count();
        self.cfg.policy.quorum.min(with_targets).max(1)
    }

    fn evaluate(&mut self, now: Now, out: &mut Vec<Action>) {
        self.gateway_verdicts(now, out);
        // Health per uplink and family.
        for i in 0..self.uplinks.len() {
            let mut newly_failed = false;
            for fi in 0..2 {
                if self.uplinks[i].fams[fi].is_none() {
                    continue;
                }
                let quorum_down = self.quorum_failures(i, fi);
                let k = self.quorum_k(fi);
                let u = &self.uplinks[i];
                let f = u.fams[fi].as_ref().expect("checked");
                let family = Family::ALL[fi];
                let mut reasons = Vec::new();
                if !u.present {
                    reasons.push(Reason::Missing);
                }
                if u.carrier == Some(false) {
                    reasons.push(Reason::Carrier);
                }
                if u.enslaved == Some(false) {
                    reasons.push(Reason::NotInBond {
                        bond: self.cfg.uplinks[i].bond.clone().unwrap_or_default(),
                    });
                }
                if f.gateway.verdict == Some(false) {
                    reasons.push(Reason::Gateway {
                        family: family.name().into(),
                    });
                }
                if quorum_down.len() >= k {
                    reasons.push(Reason::Quorum {
                        family: family.name().into(),
                        unreachable: quorum_down.clone(),
                    });
                }
                let known = u.carrier.is_some() && f.gateway.verdict.is_some();
                let usable = if !reasons.is_empty() {
                    Some(false)
                } else if known {
                    Some(true)
                } else {
                    None
                };
                if usable == f.usable && reasons == f.reasons {
                    continue;
                }
                let was = f.usable;
                let evidence = self.evidence(i, fi, &quorum_down);
                let f = self.uplinks[i].fams[fi].as_mut().expect("checked");
                f.reasons = reasons.clone();
                if usable != was {
                    f.usable = usable;
                    f.usable_since = (usable == Some(true)).then_some(now);
                    if was == Some(true) && usable == Some(false) {
                        newly_failed = true;
                    }
                    let state = match usable {
                        Some(true) => UplinkState::Healthy,
                        Some(false) => UplinkState::Unhealthy,
                        None => UplinkState::Unknown,
                    };
                    out.push(Action::Report(Change::UplinkHealth {
                        uplink: self.cfg.uplinks[i].name.clone(),
                        family: family.name().into(),
                        state,
                        reasons,
                        evidence,
                    }));
                }
            }
            let fully = self.uplinks[i]
                .fams
                .iter()
                .flatten()
                .all(|f| f.usable == Some(true));
            let was_fully = std::mem::replace(&mut self.uplinks[i].fully_usable, fully);
            if was_fully && newly_failed {
                self.count_flap(now, i, out);
            }
        }
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

    fn evidence(&self, i: UplinkId, fi: usize, quorum_down: &[String]) -> String {
        let u = &self.uplinks[i];
        let f = u.fams[fi].as_ref().expect("caller checked");
        let mut parts = Vec::new();
        match u.carrier {
            Some(false) => parts.push("carrier down".to_string()),
            None => parts.push("carrier unknown".to_string()),
            _ => {}
        }
        let g = &f.gateway;
        match g.verdict {
            Some(false) => parts.push(format!(
                "gateway {} silent, {} probes unanswered",
                g.addr, g.misses_since_reply
            )),
            None => parts.push(format!("gateway {} not yet probed", g.addr)),
            Some(true) => parts.push(format!(
                "gateway {} answering (loss {:.0}%)",
                g.addr,
                g.loss() * 100.0
            )),
        }
        if !quorum_down.is_empty() {
            parts.push(format!(
                "unreachable here but reachable elsewhere: {}",
                quorum_down.join(", ")
            ));
        }
        parts.join("; ")
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
