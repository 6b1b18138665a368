//! Whether each uplink is usable for each family, and if not, why.
//!
//! Evidence comes in as carrier reports and probe outcomes. Each target gets
//! a verdict with hysteresis (a target with no history needs one reply): a
//! far target is unreachable after `transit_fall` consecutive misses and
//! reachable after `transit_rise` replies, but one that never answered
//! through an uplink is not yet probed, unknown rather than unreachable,
//! until its probes have gone unanswered for a whole `transit_interval`
//! (at start, or when an uplink is added, its first probes may be lost to
//! the path being set up: routes, neighbour resolution); a gateway is dead only after
//! `gateway_dead_after` of silence *and* `gateway_min_misses` unanswered
//! probes, alive after `gateway_rise` replies. A transit counts against an
//! uplink only when it is unreachable here but reachable through another
//! uplink with carrier (one that is down everywhere says nothing about this
//! uplink), and the uplink fails when `quorum` transits do: quorum over
//! independent targets is what makes a fast decision safe. "Reachable
//! there" must be news: a reply through the other uplink sent after this
//! one began missing (a verdict from before the trouble compares nothing).
//! When every uplink that can tell (carrier up, gateway alive) has `quorum`
//! transits unreachable, that rule fails none of them although none
//! works: the quorum fails everywhere, a named reason of its own, and no
//! uplink is better than another (see `selection`). An uplink's health is a
//! set of named reasons (missing, carrier, not in its bond, gateway,
//! quorum, quorum everywhere); none, with carrier and gateway known, is
//! usable.
//! Losing a family is a flap of that family (damping counts them per
//! family, see `count_flaps`).

use super::{Core, InFlight};
use crate::config::{Family, GatewayProbe};
use crate::status::{Change, GatewayMode, Reason, UplinkState};
use crate::target::Target;

/// Auto: this many consecutive forwarding-plane echoes back make echo the
/// gateway probe (a few rounds: one lucky datagram proves little).
pub(crate) const ECHO_TRIAL_OK: u32 = 3;
/// Auto: this many consecutive echoes lost while the gateway answers ICMP
/// fall back to ICMP (about half a second at the default 48 ms rounds; a
/// slow start of the neighbour entry costs a few).
pub(crate) const ECHO_TRIAL_MISS: u32 = 10;
use crate::echo::EchoNews;
use crate::{Action, CarrierSource, Now, ProbeId, ProbeKind, ProbeOutcome, UplinkId};

impl Core {
    pub(super) fn on_carrier(
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
                // Echo mode: the stream is judged afresh too (asked again).
                f.stream = None;
                f.stream_fresh = true;
                f.echo_trouble = false;
            }
            // Probing resumes: a gateway dead before has the entry the
            // outage left behind, to be resolved afresh.
            for (fi, f) in u.fams.iter_mut().enumerate() {
                if let Some(f) = f.as_mut().filter(|f| f.gateway.verdict == Some(false)) {
                    f.refresh_asked = true;
                    out.push(Action::RefreshNeighbour {
                        uplink,
                        family: Family::ALL[fi],
                    });
                }
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

    pub(super) fn on_probe(
        &mut self,
        now: Now,
        id: ProbeId,
        outcome: ProbeOutcome,
        out: &mut Vec<Action>,
    ) {
        let Some(mut fl) = self.in_flight.remove(&id) else {
            return; // unknown or already forgotten (e.g. after a config change)
        };
        if self.gateway_mode_probe(now, &fl, &outcome, out) {
            return;
        }
        // What is left decides the gateway's verdict: its ICMP echoes, or
        // in echo mode its forwarding-plane echoes.
        if fl.kind == ProbeKind::Echo {
            fl.kind = ProbeKind::Gateway;
        }
        let p = self.cfg.probe.clone();
        let uplink_name = self.name(fl.uplink);
        let transit_name = match fl.kind {
            ProbeKind::Transit(t) => self.cfg.transits[t].name.clone(),
            ProbeKind::Gateway | ProbeKind::Echo => String::new(),
        };
        let u = &mut self.uplinks[fl.uplink];
        if matches!(outcome, ProbeOutcome::Reply { .. }) {
            u.replies += 1;
        }
        let Some(f) = u.fams[fl.family.index()].as_mut() else {
            return;
        };
        if fl.suspicion {
            if let Some(s) = f.suspicion.as_mut() {
                match outcome {
                    ProbeOutcome::Reply { .. } => s.replied += 1,
                    _ => s.missed += 1,
                }
            }
        }
        let target = match fl.kind {
            ProbeKind::Gateway | ProbeKind::Echo => &mut f.gateway,
            ProbeKind::Transit(t) => match f.transits.get_mut(t).and_then(|v| v.get_mut(fl.slot)) {
                Some(t) => t,
                None => return,
            },
        };
        let mut recovered = false;
        match outcome {
            ProbeOutcome::Reply { rtt } => {
                target.reply(now, fl.sent_at, rtt);
                if fl.kind == ProbeKind::Gateway && target.verdict == Some(false) {
                    self.refresh_dead_gateways(fl.uplink, out);
                }
                let Some(f) = self.uplinks[fl.uplink].fams[fl.family.index()].as_mut() else {
                    return;
                };
                let target = match fl.kind {
                    ProbeKind::Gateway | ProbeKind::Echo => &mut f.gateway,
                    ProbeKind::Transit(t) => &mut f.transits[t][fl.slot],
                };
                let rise = match fl.kind {
                    ProbeKind::Gateway | ProbeKind::Echo => p.gateway_rise,
                    ProbeKind::Transit(_) => p.transit_rise,
                };
                // With no history, one reply is enough; a dead target must prove itself.
                let needed = if target.verdict.is_none() { 1 } else { rise };
                if target.verdict != Some(true) && target.consecutive_ok >= needed {
                    recovered = target.verdict == Some(false) && fl.kind == ProbeKind::Gateway;
                    target.set_verdict(now, true);
                    if let ProbeKind::Gateway = fl.kind {
                        // The far targets missed while the gateway was not
                        // known alive say nothing about the upstream: their
                        // next miss starts a new run (their verdicts stand).
                        for x in f.transits.iter_mut().flatten() {
                            x.new_run();
                        }
                    }
                    let target = match fl.kind {
                        ProbeKind::Gateway | ProbeKind::Echo => &mut f.gateway,
                        ProbeKind::Transit(t) => &mut f.transits[t][fl.slot],
                    };
                    let evidence = format!("{} consecutive replies", target.consecutive_ok);
                    out.push(Action::Report(match fl.kind {
                        ProbeKind::Gateway | ProbeKind::Echo => Change::Gateway {
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
                    // Never answered through this uplink: judged only once
                    // probed for a whole interval.
                    let probed = target.verdict.is_some()
                        || target
                            .first_sent
                            .is_some_and(|t| now >= t + p.transit_interval);
                    if probed
                        && target.verdict != Some(false)
                        && target.consecutive_miss >= p.transit_fall
                    {
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
        if recovered {
            self.retry_echo(now, fl.uplink, fl.family, out);
        }
    }

    /// Echo mode: the echo stream through `uplink`'s gateway changed. Late:
    /// the router is pinged once (see `schedule_probes`); stopped: the
    /// gateway is down now (its reason, forwarding or gateway, from that
    /// ping: see `judge_health`); back: alive again.
    pub(super) fn on_echo(
        &mut self,
        now: Now,
        uplink: UplinkId,
        family: Family,
        news: EchoNews,
        last_back: Option<Now>,
        out: &mut Vec<Action>,
    ) {
        let Some(name) = self.cfg.uplinks.get(uplink).map(|u| u.name.clone()) else {
            return;
        };
        let Some(f) = self.uplinks[uplink].fams[family.index()].as_mut() else {
            return;
        };
        // News of a stream no longer asked for (a mode change, a reload).
        if f.mode != GatewayMode::Echo || f.stream.is_none() {
            return;
        }
        let g = &mut f.gateway;
        if let Some(b) = last_back {
            g.last_reply = Some(g.last_reply.map_or(b, |r| r.max(b)));
        }
        match news {
            EchoNews::Late { lost } => {
                f.echo_trouble = true;
                g.misses_since_reply = lost;
                g.consecutive_miss = lost;
            }
            EchoNews::Stopped { lost } => {
                f.echo_trouble = true;
                g.misses_since_reply = lost;
                g.consecutive_miss = lost;
                if g.set_verdict(now, false) {
                    f.refresh_asked = false;
                    let silent = g
                        .last_reply
                        .map(|r| {
                            format!(", none back for {} ms", now.saturating_sub(r).as_millis())
                        })
                        .unwrap_or_default();
                    out.push(Action::Report(Change::Gateway {
                        uplink: name,
                        family: family.name().into(),
                        address: g.addr,
                        reachable: false,
                        evidence: format!(
                            "{lost} forwarding-plane echoes in a row unanswered{silent}"
                        ),
                    }));
                }
            }
            EchoNews::Back { back } => {
                f.echo_trouble = false;
                g.misses_since_reply = 0;
                g.consecutive_miss = 0;
                g.consecutive_ok = back;
                let was_dead = g.verdict == Some(false);
                if g.set_verdict(now, true) {
                    // As in `on_probe`: far targets missed while the
                    // gateway was not known alive start a new run, and
                    // their probes lost meanwhile (timing out now: the
                    // stream finds a gateway back within milliseconds)
                    // start none.
                    for x in f.transits.iter_mut().flatten() {
                        x.new_run_from(now);
                    }
                    out.push(Action::Report(Change::Gateway {
                        uplink: name,
                        family: family.name().into(),
                        address: f.gateway.addr,
                        reachable: true,
                        evidence: format!("{back} forwarding-plane echoes back in a row"),
                    }));
                }
                if was_dead {
                    // As for a dead gateway's ICMP reply: its other
                    // family's entry is resolved now, not at the kernel's
                    // next retry.
                    self.refresh_dead_gateways(uplink, out);
                }
            }
        }
    }

    /// Auto, ICMP mode: a gateway that recovers may be another router now
    /// (or the same with its filters changed): find out again whether it
    /// loops echoes.
    fn retry_echo(&mut self, _now: Now, uplink: UplinkId, family: Family, out: &mut Vec<Action>) {
        let c = &self.cfg.uplinks[uplink];
        if c.gateway_probe != GatewayProbe::Auto || !c.can_echo(family) {
            return;
        }
        let name = c.name.clone();
        let Some(f) = self.uplinks[uplink].fams[family.index()].as_mut() else {
            return;
        };
        if f.mode != GatewayMode::Icmp {
            return;
        }
        f.mode = GatewayMode::Trying;
        f.trial_ok = 0;
        f.trial_miss = 0;
        out.push(Action::Report(Change::GatewayProbe {
            uplink: name,
            family: family.name().into(),
            mode: GatewayMode::Trying,
            setting: GatewayProbe::Auto.name().into(),
            evidence: "the gateway recovered: trying forwarding-plane echoes again".into(),
        }));
    }

    /// The probes that do not feed the gateway's verdict: echoes on trial
    /// (auto), and the slow ICMP check in echo mode. True when `fl` was one.
    fn gateway_mode_probe(
        &mut self,
        now: Now,
        fl: &InFlight,
        outcome: &ProbeOutcome,
        out: &mut Vec<Action>,
    ) -> bool {
        if matches!(fl.kind, ProbeKind::Transit(_)) {
            return false;
        }
        let c = &self.cfg.uplinks[fl.uplink];
        let setting = c.gateway_probe.name();
        let name = c.name.clone();
        let Some(f) = self.uplinks[fl.uplink].fams[fl.family.index()].as_mut() else {
            return true;
        };
        let ok = matches!(outcome, ProbeOutcome::Reply { .. });
        match (fl.kind, f.mode) {
            (ProbeKind::Gateway, GatewayMode::Echo) => {
                match outcome {
                    ProbeOutcome::Reply { rtt } => f.check.reply(now, fl.sent_at, *rtt),
                    _ => f.check.miss(fl.sent_at),
                }
                f.check.verdict = Some(f.check.consecutive_miss == 0);
                true
            }
            // Round echoes of the trial still in flight when it ended: the
            // stream decides in echo mode (bond members' too); in ICMP mode
            // they say nothing.
            (ProbeKind::Echo, GatewayMode::Icmp | GatewayMode::Echo) => true,
            (ProbeKind::Echo, GatewayMode::Trying) => {
                if ok {
                    f.trial_ok += 1;
                    f.trial_miss = 0;
                } else if f.gateway.verdict == Some(true) {
                    // Only a gateway known alive can be blamed for not
                    // looping echoes (before, its MAC may not even be known).
                    f.trial_miss += 1;
                    f.trial_ok = 0;
                } else {
                    f.trial_miss = 0;
                    f.trial_ok = 0;
                }
                let to = if f.trial_ok >= ECHO_TRIAL_OK {
                    Some((
                        GatewayMode::Echo,
                        format!("{} forwarding-plane echoes came back", f.trial_ok),
                    ))
                } else if f.trial_miss >= ECHO_TRIAL_MISS && f.gateway.verdict == Some(true) {
                    Some((
                        GatewayMode::Icmp,
                        format!(
                            "{} forwarding-plane echoes lost while the gateway answers ICMP: it drops packets whose source is their destination, does not hairpin, or filters by uRPF",
                            f.trial_miss
                        ),
                    ))
                } else {
                    None
                };
                if let Some((mode, evidence)) = to {
                    f.mode = mode;
                    if mode == GatewayMode::Echo {
                        // The verdict carries over; the ICMP check starts afresh.
                        f.check = Target::new(f.gateway.addr, now);
                    }
                    out.push(Action::Report(Change::GatewayProbe {
                        uplink: name,
                        family: fl.family.name().into(),
                        mode,
                        setting: setting.into(),
                        evidence,
                    }));
                }
                true
            }
            _ => false,
        }
    }

    /// A dead gateway of `uplink` answers (it may be any family's, or a
    /// bond member's ARP probe that never used the kernel's entry): the
    /// uplink's dead gateways' neighbour entries are refreshed, once per
    /// outage, so that they are resolved now rather than at the kernel's
    /// next retry.
    fn refresh_dead_gateways(&mut self, uplink: UplinkId, out: &mut Vec<Action>) {
        for (fi, f) in self.uplinks[uplink].fams.iter_mut().enumerate() {
            let Some(f) = f else { continue };
            if f.gateway.verdict == Some(false) && !f.refresh_asked {
                f.refresh_asked = true;
                out.push(Action::RefreshNeighbour {
                    uplink,
                    family: Family::ALL[fi],
                });
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
                // Echo mode: the echo stream decides (`on_echo`).
                if f.mode == GatewayMode::Echo {
                    continue;
                }
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
                    f.refresh_asked = false;
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

    /// Each uplink's health per family from the evidence: usable, or the
    /// named reasons why not. A family that stops being usable counts a
    /// flap of that family (damping).
    pub(super) fn judge_health(&mut self, now: Now, out: &mut Vec<Action>) {
        self.gateway_verdicts(now, out);
        // Health per uplink and family.
        for i in 0..self.uplinks.len() {
            let mut newly_failed = Vec::new();
            for fi in 0..2 {
                if self.uplinks[i].fams[fi].is_none() {
                    continue;
                }
                let quorum_down = self.quorum_failures(i, fi);
                let k = self.quorum_k(fi);
                let unreachable = self.unreachable_here(i, fi);
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
                    let family = family.name().into();
                    // Echo mode: the echoes stopped. If the router's CPU
                    // answered a ping since they did, it is alive but does
                    // not forward; otherwise it is dead as a whole.
                    let cpu_answers = f
                        .check
                        .last_reply
                        .is_some_and(|c| f.gateway.last_reply.is_none_or(|g| c > g));
                    reasons.push(match f.mode {
                        GatewayMode::Echo if cpu_answers => Reason::Forwarding { family },
                        _ => Reason::Gateway { family },
                    });
                }
                if quorum_down.len() >= k {
                    reasons.push(Reason::Quorum {
                        family: family.name().into(),
                        unreachable: quorum_down.clone(),
                    });
                } else if self.can_tell(i, fi) && self.quorum_fails_everywhere(fi) {
                    reasons.push(Reason::QuorumEverywhere {
                        family: family.name().into(),
                        unreachable: unreachable.clone(),
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
                let judged = f.transits.iter().flatten().all(|x| x.verdict.is_some());
                let was_proven = f.proven;
                if usable == Some(true) && judged && !was_proven {
                    self.uplinks[i].fams[fi].as_mut().expect("checked").proven = true;
                }
                let f = self.uplinks[i].fams[fi].as_ref().expect("checked");
                if usable == f.usable && reasons == f.reasons {
                    continue;
                }
                let was = f.usable;
                let evidence = self.evidence(i, fi, &quorum_down, &reasons);
                let f = self.uplinks[i].fams[fi].as_mut().expect("checked");
                f.reasons = reasons.clone();
                if usable != was {
                    f.usable = usable;
                    f.usable_since = (usable == Some(true)).then_some(now);
                    // Failing with everybody is not this uplink's flap.
                    let own = reasons
                        .iter()
                        .any(|r| !matches!(r, Reason::QuorumEverywhere { .. }));
                    if was == Some(true) && usable == Some(false) && was_proven && own {
                        newly_failed.push(fi);
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
            if !newly_failed.is_empty() {
                self.count_flaps(now, i, &newly_failed, out);
            }
        }
    }

    /// The transits unreachable through uplink `i` (every target of the
    /// family), by index, with when that began (the latest start of their
    /// targets' runs of misses), or None when a target's misses all date
    /// from before its gateway last came back (see `on_probe`).
    fn unreachable_since(&self, i: UplinkId, fi: usize) -> Vec<(usize, Option<Now>)> {
        let Some(f) = &self.uplinks[i].fams[fi] else {
            return Vec::new();
        };
        f.transits
            .iter()
            .enumerate()
            .filter(|(_, targets)| {
                !targets.is_empty() && targets.iter().all(|x| x.verdict == Some(false))
            })
            .map(|(t, targets)| {
                let runs: Option<Vec<Now>> = targets.iter().map(|x| x.miss_since).collect();
                (t, runs.and_then(|r| r.into_iter().max()))
            })
            .collect()
    }

    /// The transits unreachable through uplink `i` on evidence from since
    /// it could tell (its gateway alive): what "the quorum fails
    /// everywhere" counts.
    fn unreachable_here(&self, i: UplinkId, fi: usize) -> Vec<String> {
        self.unreachable_since(i, fi)
            .into_iter()
            .filter(|(_, since)| since.is_some())
            .map(|(t, _)| self.cfg.transits[t].name.clone())
            .collect()
    }

    /// The transits that count against uplink `i`: unreachable here, and
    /// reachable through another uplink with carrier by a reply to a probe
    /// sent since they began failing here.
    fn quorum_failures(&self, i: UplinkId, fi: usize) -> Vec<String> {
        let mut down = Vec::new();
        for (t, since) in self.unreachable_since(i, fi) {
            let reachable_elsewhere = self.uplinks.iter().enumerate().any(|(j, v)| {
                j != i
                    && v.carrier == Some(true)
                    && v.fams[fi].as_ref().is_some_and(|vf| {
                        vf.transits[t].iter().any(|x| {
                            x.verdict == Some(true)
                                && since.is_none_or(|s| x.last_reply.is_some_and(|r| r >= s))
                        })
                    })
            });
            if reachable_elsewhere {
                down.push(self.cfg.transits[t].name.clone());
            }
        }
        down
    }

    /// Uplink `i`'s far probes say something about the upstream for this
    /// family: carrier up, present, in its bond, gateway not dead.
    fn can_tell(&self, i: UplinkId, fi: usize) -> bool {
        let u = &self.uplinks[i];
        u.present
            && u.carrier == Some(true)
            && u.enslaved != Some(false)
            && u.fams[fi]
                .as_ref()
                .is_some_and(|f| f.gateway.verdict != Some(false))
    }

    /// Every uplink that can tell has `quorum` transits unreachable: the
    /// trouble is beyond all of them.
    fn quorum_fails_everywhere(&self, fi: usize) -> bool {
        let k = self.quorum_k(fi);
        let mut telling = (0..self.uplinks.len())
            .filter(|&i| self.can_tell(i, fi))
            .peekable();
        telling.peek().is_some() && telling.all(|i| self.unreachable_here(i, fi).len() >= k)
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

    fn evidence(
        &self,
        i: UplinkId,
        fi: usize,
        quorum_down: &[String],
        reasons: &[Reason],
    ) -> String {
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
        if let Some(s) = self.recent_suspicion(i, fi, reasons) {
            parts.push(self.suspicion_evidence(s));
        }
        for r in reasons {
            if let Reason::QuorumEverywhere { unreachable, .. } = r {
                parts.push(format!(
                    "unreachable through every uplink: {}",
                    unreachable.join(", ")
                ));
            }
        }
        parts.join("; ")
    }
}
