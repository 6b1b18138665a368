//! Which uplink carries each family (IPv4 and IPv6 decided separately).
//!
//! The most preferred usable uplink wins, with hysteresis both ways: away
//! from a failed uplink at once (but only to one whose gateway answered its
//! latest probe), back to a more preferred one only once it has been usable
//! for `failback_after` (counted from an undrain too). A drained uplink is
//! never chosen. An uplink that keeps failing is damped: while its hold
//! lasts (doubling per level, up to `max_hold`) it is not failed back to
//! and not picked while an undamped uplink is usable. With no usable uplink
//! the family fails static: the current route stays, and the family says
//! so until an uplink is usable again. An uplink that fails only the quorum
//! with every other one (the trouble is upstream of all of them) is no
//! worse than they are, so it is never left for them; but it is better than
//! one that fails for a reason of its own (carrier, gateway), and traffic
//! moves there from such an uplink, still failing static. The first decision waits for a
//! verdict on every uplink, unless the route found in the kernel is
//! already good.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Core, Uplink, UplinkFamily};
use crate::config::Family;
use crate::status::{Change, Reason};
use crate::{Action, Now, UplinkId};

impl Core {
    pub(super) fn select(&mut self, now: Now, family: Family, out: &mut Vec<Action>) {
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
                // With nothing usable, away from an uplink failing for a
                // reason of its own to one failing only with everybody.
                let fallback = current.is_none_or(|c| !self.fails_with_everybody(c, fi));
                let pick = (0..n)
                    .find(|&i| Some(i) != current && undamped(self, i))
                    .or_else(|| (0..n).find(|&i| Some(i) != current && self.candidate(i, fi)))
                    .or_else(|| {
                        let other = |i: UplinkId| {
                            fallback && Some(i) != current && self.fails_with_everybody(i, fi)
                        };
                        (0..n)
                            .find(|&i| other(i) && !self.damped(i, now))
                            .or_else(|| (0..n).find(|&i| other(i)))
                    });
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
                let usable = self.candidate(t, fi);
                let d = &mut self.fam[fi];
                d.active = Some(t);
                d.cleared_by = None;
                let was_static = std::mem::replace(&mut d.fail_static, !usable);
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
                    // Release what the failed path holds, whatever it failed
                    // on and whether this is the first decision after a
                    // restart (the route left was adopted): senders blocked
                    // behind its unresolved neighbour entries resume at once
                    // instead of when the kernel gives up on them. The
                    // reason may be the quorum alone while the gateway's own
                    // verdict is still pending. A drained or failed-back
                    // uplink is healthy and keeps its entries.
                    let failed = self.uplinks[c].carrier == Some(false)
                        || self.uplinks[c].fams[fi]
                            .as_ref()
                            .is_some_and(|f| f.usable == Some(false));
                    if failed {
                        out.push(Action::FlushNeighbours { uplink: c, family });
                        if let Some(f) = self.uplinks[c].fams[fi].as_mut() {
                            f.flushed = true;
                        }
                    }
                }
                if was_static && usable {
                    out.push(Action::Report(Change::FailStatic {
                        family: family.name().into(),
                        active: false,
                        evidence: format!("{} is usable again", self.name(t)),
                    }));
                }
                if !was_static && !usable {
                    let evidence = self.fail_static_evidence(fi);
                    out.push(Action::Report(Change::FailStatic {
                        family: family.name().into(),
                        active: true,
                        evidence: format!(
                            "{evidence}; moved to {}, which fails only with every other uplink",
                            self.name(t)
                        ),
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
                    let evidence = self.fail_static_evidence(fi);
                    out.push(Action::Report(Change::FailStatic {
                        family: family.name().into(),
                        active: true,
                        evidence: format!("{evidence}; keeping current routes"),
                    }));
                }
            }
        }
    }

    /// Flush, once, the neighbour entries of a failed uplink that carries
    /// nothing and was never flushed since start. A failover flushes the
    /// uplink it leaves (above); this covers the uplink that was left by a
    /// previous run: killed between its route change and its flush, that
    /// run left senders blocked behind the dead gateway's unresolved entry,
    /// and the restarted agent adopts the good route and never switches.
    /// Not an uplink whose interface carries the family's route (a standby
    /// member of the bond in use: its neighbours are the bond's, and the
    /// active member's traffic goes through them).
    pub(super) fn flush_failed_standbys(&mut self, family: Family, out: &mut Vec<Action>) {
        let fi = family.index();
        if !self.family_configured(family) || !self.fam[fi].decided {
            return;
        }
        let active = self.fam[fi].active;
        for i in 0..self.uplinks.len() {
            if Some(i) == active {
                continue;
            }
            if let Some(a) = active {
                let (x, y) = (&self.cfg.uplinks[i], &self.cfg.uplinks[a]);
                if x.route_interface() == y.route_interface() {
                    continue;
                }
            }
            let carrier_lost = self.uplinks[i].carrier == Some(false);
            let Some(f) = self.uplinks[i].fams[fi].as_mut() else {
                continue;
            };
            if !f.flushed && (carrier_lost || f.usable == Some(false)) {
                f.flushed = true;
                out.push(Action::FlushNeighbours { uplink: i, family });
            }
        }
    }

    /// Usable for `family` and not drained.
    pub(super) fn candidate(&self, i: UplinkId, fi: usize) -> bool {
        let u = &self.uplinks[i];
        !u.drained && u.fams[fi].as_ref().is_some_and(|f| f.usable == Some(true))
    }

    /// Not drained, and not usable only because the quorum fails through
    /// every uplink: no worse than any other.
    fn fails_with_everybody(&self, i: UplinkId, fi: usize) -> bool {
        let u = &self.uplinks[i];
        !u.drained
            && u.fams[fi].as_ref().is_some_and(|f| {
                !f.reasons.is_empty()
                    && f.reasons
                        .iter()
                        .all(|r| matches!(r, Reason::QuorumEverywhere { .. }))
            })
    }

    /// Why no uplink of a family is usable: each one's reason codes, and
    /// the transits when the quorum fails everywhere.
    fn fail_static_evidence(&self, fi: usize) -> String {
        let codes = (0..self.uplinks.len())
            .filter(|&i| self.uplinks[i].fams[fi].is_some())
            .map(|i| format!("{}: {}", self.name(i), self.reason_code(i, fi)))
            .collect::<Vec<_>>()
            .join(", ");
        let everywhere = self
            .uplinks
            .iter()
            .filter_map(|u| u.fams[fi].as_ref())
            .flat_map(|f| &f.reasons)
            .find_map(|r| match r {
                Reason::QuorumEverywhere { unreachable, .. } => Some(unreachable.join(", ")),
                _ => None,
            });
        match everywhere {
            Some(t) => format!(
                "no usable uplink ({codes}); the transit quorum fails through every uplink ({t} unreachable)"
            ),
            None => format!("no usable uplink ({codes})"),
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
                Reason::Forwarding { .. } => "forwarding",
                Reason::Quorum { .. } => "quorum",
                Reason::QuorumEverywhere { .. } => "quorum_everywhere",
                Reason::Damped { .. } => "damped",
                Reason::Drained => "drained",
                Reason::Missing => "missing",
                Reason::NotInBond { .. } => "not_in_bond",
            })
            .collect();
        if codes.is_empty() {
            return "unknown".into();
        }
        let mut code = codes.join("+");
        if let Some(s) = self.recent_suspicion(i, fi, &f.reasons) {
            code.push_str("+suspicion_");
            code.push_str(s.source.name());
        }
        code
    }

    fn healthy_for(&self, i: UplinkId, fi: usize, now: Now) -> Duration {
        self.uplinks[i].fams[fi]
            .as_ref()
            .and_then(|f| self.eligible_since(i, f))
            .map_or(Duration::ZERO, |t| now.saturating_sub(t))
    }

    pub(super) fn eligible_since(&self, i: UplinkId, f: &UplinkFamily) -> Option<Now> {
        let since = f.usable_since?;
        Some(match self.uplinks[i].undrained_at {
            Some(t) => since.max(t),
            None => since,
        })
    }

    /// The operator drains or undrains an uplink: a drained uplink is not
    /// chosen; an undrained one is failed back to only once it has been
    /// usable for `failback_after` since the undrain.
    pub(super) fn on_drain(
        &mut self,
        now: Now,
        uplink: UplinkId,
        drained: bool,
        out: &mut Vec<Action>,
    ) {
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

    /// Families `fams` of uplink `i` were just lost: one flap each. Flaps
    /// are counted per family, so that a family that stays down does not
    /// hide the other's flaps, and the uplink is damped on its worst
    /// family: one carrier flap that fails both families is one flap, and
    /// the hold grows only when that count does.
    pub(super) fn count_flaps(
        &mut self,
        now: Now,
        i: UplinkId,
        fams: &[usize],
        out: &mut Vec<Action>,
    ) {
        let d = self.cfg.policy.damping.clone();
        let u = &mut self.uplinks[i];
        let before = worst_flaps(u);
        for &fi in fams {
            u.flaps[fi].push_back(now);
        }
        let flaps = worst_flaps(u);
        if flaps > before && flaps >= d.threshold {
            u.damp_level += 1;
            let factor = 1u32 << (u.damp_level - 1).min(16);
            let hold = d.hold.saturating_mul(factor).min(d.max_hold);
            u.damped_until = Some(now + hold);
            out.push(Action::Report(Change::Damped {
                uplink: self.cfg.uplinks[i].name.clone(),
                hold_ms: hold.as_millis() as u64,
                flaps,
            }));
        }
    }

    /// A damping hold ends when it expires; flaps older than the window are
    /// forgotten, and with none left the next hold starts from the base.
    pub(super) fn expire_damping(&mut self, now: Now) {
        for u in &mut self.uplinks {
            if u.damped_until.is_some_and(|t| t <= now) {
                u.damped_until = None;
            }
            let window = self.cfg.policy.damping.window;
            for flaps in &mut u.flaps {
                while flaps
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) > window)
                {
                    flaps.pop_front();
                }
            }
            if worst_flaps(u) == 0 && u.damped_until.is_none() {
                u.damp_level = 0;
            }
        }
    }

    fn damped(&self, i: UplinkId, now: Now) -> bool {
        self.uplinks[i].damped_until.is_some_and(|t| t > now)
    }
}

/// The flaps damping counts for an uplink: those of its worst family.
pub(super) fn worst_flaps(u: &Uplink) -> u32 {
    u.flaps.iter().map(VecDeque::len).max().unwrap_or(0) as u32
}
