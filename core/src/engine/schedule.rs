//! Which probe goes out when, and when the loop must wake next.
//!
//! The probe budget is paid by the whole fleet, so the steady rate is low
//! and speed comes from probing harder only on suspicion: a gateway whose
//! reply is missing is probed at the fast interval; a far target whose reply
//! is overdue starts a burst of `transit_fall` fast rounds to every far
//! target of that uplink and family, enough to reach a verdict. The standby
//! of a family is probed `standby_slowdown` times less often while it
//! answers, and at the full rate as soon as it matters (unknown,
//! unreachable, or just made active); while the active uplink's gateway is
//! in doubt, the standby's gateway is probed fast too, so that a failover
//! goes to a gateway that has just answered. Likewise a far target that
//! starts missing through one uplink is probed at once through the others
//! (once per run of misses), as the quorum counts it only if it answers
//! there after the trouble began.
//!
//! Steady probes leave on a grid of gateway rounds, so the loop wakes once
//! per round rather than once per target; the far targets of one uplink and
//! family keep their own phases spread over the interval, so a dead upstream
//! is seen within interval / targets. The deadlines tell the loop when it
//! must call `handle(Tick)` at the latest, and which of them only matter if
//! a reply is still missing by then.

use std::time::Duration;

use super::{suspect, Core, InFlight, Target};
use crate::config::Family;
use crate::status::GatewayMode;
use crate::{Action, Now, ProbeId, ProbeKind, ProbeRequest, UplinkId};

/// A suspected transit probe: unanswered for longer than this (or 4 × srtt,
/// whichever is larger) starts the fast probing before its timeout expires.
const OVERDUE_MIN: Duration = Duration::from_millis(10);

/// Echo mode: the slow ICMP check of the router's own address, one every
/// 2 s per family: with the ARP/ND refreshes, the router's CPU gets under
/// 1 packet/s per family (the control-plane budget of issue 13; at 1 s the
/// bench's probe-load row counted 1.05 / 1.25 per s).
pub(super) const ICMP_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Its timeout: a router's CPU that polices pings may answer late; the
/// check decides nothing, so it can wait.
const ICMP_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

impl Core {
    pub(super) fn schedule_probes(&mut self, now: Now, out: &mut Vec<Action>) {
        let p = self.cfg.probe.clone();
        let suspect = |g: &Target| {
            g.verdict != Some(false)
                && (g.consecutive_miss > 0
                    || g.oldest_in_flight(now)
                        .is_some_and(|a| a >= p.gateway_timeout / 2))
        };
        // Per family: the active uplink's gateway is missing replies. Then
        // the standby's gateway is probed fast too, so that a failover goes
        // to a gateway that has just answered (see `select`).
        let active_suspect: [bool; 2] = std::array::from_fn(|fi| {
            self.fam[fi].active.is_some_and(|a| {
                self.uplinks
                    .get(a)
                    .and_then(|u| u.fams[fi].as_ref())
                    .is_some_and(|f| suspect(&f.gateway) || f.echo_trouble)
            })
        });
        // Per uplink, family and transit: since when it has been missing
        // there (the latest start of its targets' runs of misses).
        let missing: Vec<[Vec<Option<Now>>; 2]> = self
            .uplinks
            .iter()
            .map(|u| {
                std::array::from_fn(|fi| {
                    u.fams[fi].as_ref().map_or_else(Vec::new, |f| {
                        f.transits
                            .iter()
                            .map(|ts| ts.iter().filter_map(|x| x.miss_since).max())
                            .collect()
                    })
                })
            })
            .collect();
        for i in 0..self.uplinks.len() {
            for fi in 0..2 {
                let family = Family::ALL[fi];
                let Some(f) = self.uplinks[i].fams[fi].as_ref() else {
                    continue;
                };
                // A transit missing through another uplink: probe it here
                // now unless a probe went out since (the quorum there needs
                // a reply here after that).
                let verify_since: Vec<Option<Now>> = (0..f.transits.len())
                    .map(|t| {
                        (0..missing.len())
                            .filter(|&j| j != i)
                            .filter_map(|j| missing[j][fi].get(t).copied().flatten())
                            .max()
                    })
                    .collect();
                // Suspicion: a steady probe to a reachable far target that is
                // overdue (or missed) starts a burst: every far target of this
                // uplink and family gets `transit_fall` fast probes, enough
                // to reach a verdict, then probing returns to the steady rate.
                let trigger = f.burst_left == 0
                    && f.transits.iter().flatten().any(|t| {
                        t.verdict != Some(false)
                            && t.in_flight.iter().any(|sent| {
                                f.burst_end.is_none_or(|e| *sent > e)
                                    && now.saturating_sub(*sent) >= self.overdue(t)
                            })
                    });
                let mut reqs = Vec::new();
                // The standby of this family (it carries no route of it) is
                // probed `standby_slowdown` times less often while all is
                // well: its targets that answer are probed slower, those
                // unknown or unreachable at the full rate (recovery is seen
                // as soon as on the active uplink).
                let standby = self.fam[fi].active.is_some_and(|a| a != i);
                let active_doubt = active_suspect.get(fi).copied().unwrap_or(false);
                let verify = standby && active_doubt;
                let slowdown = |verdict: Option<bool>| {
                    if standby && verdict == Some(true) {
                        p.standby_slowdown.max(1)
                    } else {
                        1
                    }
                };
                let present = self.uplinks[i].present;
                let carrier = self.uplinks[i].carrier == Some(true);
                let active = self.fam[fi].active;
                let f = self.uplinks[i].fams[fi].as_mut().expect("checked");
                // Echo mode: the echo stream (see `crate::echo`) takes the
                // rounds' place: fast through the uplink carrying the
                // family (or any, while none does), slow through a standby.
                // A bond member's too (from its probe address, through the
                // member itself: the uplink carrying the family is the
                // bond's active member).
                let want = (f.mode == GatewayMode::Echo && present).then(|| {
                    match active {
                        // A standby, fast too while the active uplink's
                        // gateway is in doubt (see `verify`), and while its
                        // carrier is down (its gateway is judged dead as
                        // soon as by the rounds of ICMP mode: the far
                        // probes lost meanwhile then say nothing).
                        Some(a) if a != i && !verify && carrier => {
                            crate::echo::EchoSpec::new(p.gateway_interval, &p)
                        }
                        // The uplink carrying the family, not in doubt:
                        // slower while it carries no traffic (see
                        // `crate::echo`).
                        Some(a) if a == i && !active_doubt => {
                            crate::echo::EchoSpec::new(p.echo_interval, &p)
                                .with_idle(p.echo_idle_interval)
                        }
                        _ => crate::echo::EchoSpec::new(p.echo_interval, &p),
                    }
                });
                if want != f.stream {
                    if let (Some(old), Some(new)) = (f.stream, want) {
                        if new.every < old.every && f.gateway.verdict == Some(true) {
                            // The adapter reports the next echo back (or
                            // the stop): until then this gateway has not
                            // answered since the doubt began, and traffic
                            // does not move to it (see `select`).
                            f.gateway.consecutive_miss = f.gateway.consecutive_miss.max(1);
                        }
                    }
                    f.stream = want;
                    out.push(Action::EchoStream {
                        uplink: i,
                        family,
                        gateway: f.gateway.addr,
                        spec: want,
                        fresh: std::mem::take(&mut f.stream_fresh),
                    });
                }
                let echo_mode = f.mode == GatewayMode::Echo;
                // Gateway: fast while a reply is missing.
                let g = &mut f.gateway;
                if echo_mode {
                    // No rounds: the stream runs in the adapter.
                } else if slowdown(g.verdict) == 1 {
                    // Just made active (or no longer answering): back to
                    // the full rate at once.
                    if let Some(t) = g.last_sent {
                        g.next_at =
                            g.next_at
                                .min(next_round(t, p.gateway_interval, p.gateway_interval));
                    }
                }
                // A dead gateway is re-probed at the steady rate, not hammered.
                let g_suspect = if echo_mode {
                    f.echo_trouble
                } else {
                    suspect(g) || (verify && g.verdict != Some(false))
                };
                if g_suspect && !echo_mode {
                    g.next_at = g
                        .next_at
                        .min(g.last_sent.map_or(now, |t| t + p.gateway_fast_interval));
                }
                if g.next_at <= now && !echo_mode {
                    g.sent(now);
                    let every = if g_suspect {
                        p.gateway_fast_interval
                    } else {
                        p.gateway_interval * slowdown(g.verdict)
                    };
                    g.next_at = if g_suspect {
                        now + every
                    } else {
                        next_round(now, every, p.gateway_interval)
                    };
                    // Trying (auto): the forwarding-plane echo rides along
                    // (echo mode sends no rounds: its stream runs).
                    reqs.push((ProbeKind::Gateway, 0usize, g.addr, p.gateway_timeout, false));
                    if f.mode == GatewayMode::Trying {
                        reqs.push((ProbeKind::Echo, 0usize, g.addr, p.gateway_timeout, false));
                    }
                }
                // Echo mode: the router's own address gets one ICMP echo a
                // second (the control-plane budget), for diagnosis only; and
                // one at once when the echoes start missing, so that a
                // verdict can say whether the router died or only its
                // forwarding (its CPU still answers): see `judge_health`.
                if f.mode == GatewayMode::Echo
                    && g_suspect
                    && f.check
                        .last_sent
                        .is_none_or(|c| f.gateway.last_reply.is_some_and(|r| c < r))
                {
                    f.check.next_at = now;
                }
                if f.mode == GatewayMode::Echo && f.check.next_at <= now {
                    let c = &mut f.check;
                    c.sent(now);
                    c.next_at = next_round(now, ICMP_CHECK_INTERVAL, p.gateway_interval);
                    reqs.push((
                        ProbeKind::Gateway,
                        0usize,
                        c.addr,
                        p.gateway_timeout.max(ICMP_CHECK_TIMEOUT),
                        false,
                    ));
                }
                if trigger {
                    f.burst_left = p.transit_fall;
                    f.burst_next = now;
                    // A burst of its own, not a suspicion's (see `suspect`).
                    if let Some(s) = f.suspicion.as_mut() {
                        s.running = false;
                    }
                }
                let round = f.burst_left > 0 && f.burst_next <= now;
                // A suspicion's burst: its rounds closer together, its
                // timeouts from the measured RTT.
                let suspicion = round && f.suspicion.as_ref().is_some_and(|s| s.running);
                if round {
                    f.burst_left -= 1;
                    f.burst_next = now
                        + if suspicion {
                            p.suspicion_burst_interval
                        } else {
                            p.transit_fast_interval
                        };
                    if f.burst_left == 0 {
                        f.burst_end = Some(now);
                        if let Some(s) = f.suspicion.as_mut() {
                            s.running = false;
                        }
                    }
                }
                let n_targets: usize = f.transits.iter().map(Vec::len).sum();
                let mut k = 0usize;
                for (t, targets) in f.transits.iter_mut().enumerate() {
                    for (slot, x) in targets.iter_mut().enumerate() {
                        let index = k;
                        k += 1;
                        if let Some(since) = verify_since[t] {
                            if x.last_sent.is_none_or(|l| l < since) {
                                x.next_at = x.next_at.min(now);
                            }
                        }
                        if slowdown(x.verdict) == 1 {
                            // Just made active (or no longer answering): its
                            // next probe comes on the full rate's phase
                            // point, not up to a standby interval later (a
                            // no-op when it is already on it).
                            let half = p.transit_interval / 2;
                            let due = staggered(
                                (now + Duration::from_nanos(1)).saturating_sub(half),
                                p.transit_interval,
                                (index, n_targets),
                                p.gateway_interval,
                            );
                            x.next_at = x.next_at.min(due);
                        }
                        if round || x.next_at <= now {
                            x.sent(now);
                            if x.next_at <= now {
                                x.next_at = staggered(
                                    now,
                                    p.transit_interval * slowdown(x.verdict),
                                    (index, n_targets),
                                    p.gateway_interval,
                                );
                            }
                            let timeout = if suspicion {
                                suspect::burst_timeout(x, p.transit_timeout)
                            } else {
                                p.transit_timeout
                            };
                            reqs.push((ProbeKind::Transit(t), slot, x.addr, timeout, suspicion));
                        }
                    }
                }
                for (kind, slot, target, timeout, by_suspicion) in reqs {
                    let id = ProbeId(self.next_probe);
                    self.next_probe += 1;
                    let u = &mut self.uplinks[i];
                    u.probes_sent += 1;
                    if by_suspicion {
                        u.burst_probes += 1;
                        if let Some(s) = u.fams[fi].as_mut().and_then(|f| f.suspicion.as_mut()) {
                            s.sent += 1;
                        }
                    }
                    self.in_flight.insert(
                        id,
                        InFlight {
                            uplink: i,
                            family,
                            kind,
                            slot,
                            sent_at: now,
                            suspicion: by_suspicion,
                        },
                    );
                    out.push(Action::Probe(ProbeRequest {
                        id,
                        uplink: i,
                        family,
                        kind,
                        target,
                        timeout,
                    }));
                }
            }
        }
    }

    /// When `handle(_, Event::Tick)` must be called next at the latest.
    pub fn next_deadline(&self) -> Option<Now> {
        let best = std::cell::Cell::new(None::<Now>);
        let consider = |t: Now| best.set(Some(best.get().map_or(t, |b| b.min(t))));
        self.deadlines(&mut |t| consider(t), &mut |_, _, _, t| consider(t));
        best.get()
    }

    /// Hands `f` the deadlines that only matter if a probe in flight is
    /// still unanswered by then (its reply is overdue: probe harder): per
    /// target in the steady state (reachable, its last probe answered) with
    /// a probe in flight, (uplink, family, kind, when). Returns the next
    /// deadline that comes due even if every reply is in by its check
    /// ([`Core::next_deadline`] is the earlier of that and the checks): if
    /// each reply is in by its check, handling it at any later time up to
    /// that deadline decides the same (a reply counts from when it arrived:
    /// send time + round-trip time). A target not in the steady state has
    /// no check: its reply is news (a verdict may change), to be handled
    /// when it arrives.
    pub fn reply_checks(
        &self,
        f: &mut impl FnMut(UplinkId, Family, ProbeKind, Now),
    ) -> Option<Now> {
        let mut best: Option<Now> = None;
        self.deadlines(&mut |t| best = Some(best.map_or(t, |b: Now| b.min(t))), f);
        best
    }

    /// Every future deadline: `hard` those that come due whatever happens,
    /// `check` the reply checks.
    fn deadlines(
        &self,
        hard: &mut impl FnMut(Now),
        check: &mut impl FnMut(UplinkId, Family, ProbeKind, Now),
    ) {
        let p = &self.cfg.probe;
        let after = self.last_now;
        // Only future instants: a deadline already handled must not spin the loop.
        let mut consider = |t: Now| {
            if t > after {
                hard(t)
            }
        };
        self.route_deadlines(&mut consider);
        for (i, u) in self.uplinks.iter().enumerate() {
            for (fi, f) in u.fams.iter().enumerate() {
                let Some(f) = f else { continue };
                let family = Family::ALL[fi];
                if f.mode != GatewayMode::Echo {
                    consider(f.gateway.next_at);
                }
                let gateway_kind = match f.mode {
                    GatewayMode::Echo => {
                        consider(f.check.next_at);
                        ProbeKind::Echo
                    }
                    _ => ProbeKind::Gateway,
                };
                if let Some(&sent) = f.gateway.in_flight.first() {
                    let t = sent + p.gateway_timeout / 2;
                    match f.gateway.steady() {
                        true if t > after => check(i, family, gateway_kind, t),
                        _ => consider(t),
                    }
                }
                // The dead-after time only decides once enough probes went
                // unanswered (each of which is an event of its own).
                if f.mode != GatewayMode::Echo
                    && f.gateway.verdict != Some(false)
                    && f.gateway.misses_since_reply >= p.gateway_min_misses
                {
                    let base = f.gateway.last_reply.or(f.gateway.first_sent);
                    if let Some(b) = base {
                        consider(b + p.gateway_dead_after);
                    }
                }
                if f.burst_left > 0 {
                    consider(f.burst_next);
                }
                for (k, targets) in f.transits.iter().enumerate() {
                    for t in targets {
                        consider(t.next_at);
                        if let Some(&sent) = t.in_flight.last() {
                            let at = sent + self.overdue(t);
                            match t.steady() {
                                true if at > after => check(i, family, ProbeKind::Transit(k), at),
                                _ => consider(at),
                            }
                        }
                    }
                }
                if let Some(since) = self.eligible_since(i, f) {
                    consider(since + self.cfg.policy.failback_after);
                }
            }
            if let Some(d) = u.damped_until {
                consider(d);
            }
        }
    }

    fn overdue(&self, t: &Target) -> Duration {
        let by_rtt = t.srtt.map_or(Duration::ZERO, |s| s * 4);
        by_rtt.max(OVERDUE_MIN).min(self.cfg.probe.transit_timeout)
    }

    /// The operator's reprobe: every target of every uplink is due now.
    pub(super) fn reprobe(&mut self, now: Now) {
        for u in &mut self.uplinks {
            for f in u.fams.iter_mut().flatten() {
                f.gateway.next_at = now;
                for t in f.transits.iter_mut().flatten() {
                    t.next_at = now;
                }
            }
        }
    }
}

/// When a steady probe sent at `now` is next due, `every` later: on the
/// grid of gateway rounds (`round` apart, from the core's time zero), the
/// round nearest to `now + every`. Every steady probe then leaves in a
/// round, so the loop wakes once per round to send and once more to read
/// the replies, instead of once for each target's own phase. The first
/// steady probes of the transits stay spread over the interval (to the
/// nearest round).
fn next_round(now: Now, every: Duration, round: Duration) -> Now {
    let r = round.as_nanos();
    if r == 0 || every < round {
        return now + every;
    }
    let t = (now + every - round / 2).as_nanos();
    let next = Duration::from_nanos((t.div_ceil(r) * r) as u64);
    next.max(now + round / 2)
}

/// When the steady probe of far target `k` of `n` (of one uplink and
/// family), sent at `now`, is next due: on its own phase, `k/n` of `every`,
/// at least half an interval on, then on the round grid ([`next_round`]).
/// The targets stay spread over the interval whatever happened before
/// (after a recovery they would otherwise all be answered, and rescheduled,
/// in the same round), so a dead upstream is seen within `every / n`.
fn staggered(now: Now, every: Duration, (k, n): (usize, usize), round: Duration) -> Now {
    let e = every.as_nanos();
    if e == 0 || n == 0 {
        return now + every;
    }
    let phase = e * (k % n) as u128 / n as u128;
    let base = (now + every / 2).as_nanos();
    let m = base.saturating_sub(phase).div_ceil(e);
    let t = Duration::from_nanos((phase + m * e) as u64);
    let r = round.as_nanos();
    if r == 0 || every < round {
        return t.max(now + every / 2);
    }
    Duration::from_nanos((t.as_nanos().div_ceil(r) * r) as u64)
}

#[cfg(test)]
mod tests {
    use super::{next_round, staggered};
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steady_probes_fall_on_the_rounds() {
        // On a round: the next round `every` later.
        assert_eq!(next_round(ms(400), ms(40), ms(40)), ms(440));
        // Late by a wake-up: still that round, not one later.
        assert_eq!(next_round(ms(401), ms(40), ms(40)), ms(440));
        // After fast probing, off the grid: back on it, at least half a round on.
        assert_eq!(next_round(ms(412), ms(40), ms(40)), ms(440));
        assert_eq!(next_round(ms(432), ms(40), ms(40)), ms(480));
        // A transit a second on: the round nearest to it.
        assert_eq!(next_round(ms(250), ms(1000), ms(40)), ms(1240));
        assert_eq!(next_round(ms(1240), ms(1000), ms(40)), ms(2240));
        // Intervals shorter than a round are kept as they are.
        assert_eq!(next_round(ms(7), ms(20), ms(40)), ms(27));
        assert_eq!(next_round(ms(7), ms(20), Duration::ZERO), ms(27));
    }

    #[test]
    fn far_targets_keep_their_phases() {
        // Four targets answered in the same round still go out 250 ms apart
        // (to the nearest later 40 ms round).
        let next: Vec<_> = (0..4)
            .map(|k| staggered(ms(10_000), ms(1000), (k, 4), ms(40)))
            .collect();
        assert_eq!(next, vec![ms(11_000), ms(11_280), ms(10_520), ms(10_760)]);
        // Steady: a second apart.
        assert_eq!(staggered(ms(11_280), ms(1000), (1, 4), ms(40)), ms(12_280));
    }
}
