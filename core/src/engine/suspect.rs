//! Passive suspicion turned into probes: a finding of the rules in
//! `crate::suspicion` (or a validated ICMP unreachable from the active
//! gateway) starts ONE confirmation burst to the suspected uplink's transit
//! targets, of the families it carries: `transit_fall` rounds
//! `suspicion_burst_interval` apart, each probe timing out after 4 × its
//! target's smoothed RTT (at least [`BURST_TIMEOUT_MIN`], at most
//! `transit_timeout`), so that a dead path reaches its verdicts within a few
//! round trips. The verdicts and the quorum rules are the same as for any
//! other probe: a suspicion never fails an uplink by itself. At most one
//! burst per uplink per `suspicion_holdoff`; no suspicion, no extra probe.

use std::net::IpAddr;
use std::time::Duration;

use super::{Core, Target};
use crate::config::Family;
use crate::status::{Change, Reason};
use crate::suspicion::{Counters, Finding, Rules, Source};
use crate::{Action, Now, UplinkId};

/// Shortest timeout of a burst probe: below it, scheduling noise on a busy
/// host would be taken for loss.
pub(super) const BURST_TIMEOUT_MIN: Duration = Duration::from_millis(10);

/// The timeout of a suspicion burst's probe to `t`.
pub(super) fn burst_timeout(t: &Target, transit_timeout: Duration) -> Duration {
    t.srtt
        .map_or(transit_timeout, |s| s * 4)
        .max(BURST_TIMEOUT_MIN)
        .min(transit_timeout)
}

/// A confirmation burst started by a suspicion: what raised it and what it found.
#[derive(Debug, Clone)]
pub(super) struct SuspectBurst {
    pub source: Source,
    pub at: Now,
    /// Rounds still to send with the suspicion's spacing and timeouts.
    pub running: bool,
    pub sent: u32,
    pub replied: u32,
    pub missed: u32,
}

impl Core {
    fn rules(&self, uplinks: &[UplinkId]) -> Rules {
        let p = &self.cfg.probe;
        // Widened to 4 × the slowest transit's smoothed RTT: a window shorter
        // than a round trip would take the wait for an answer for a stall.
        let srtt = uplinks
            .iter()
            .filter_map(|&u| self.uplinks.get(u))
            .flat_map(|u| u.fams.iter().flatten())
            .flat_map(|f| f.transits.iter().flatten())
            .filter_map(|t| t.srtt)
            .max()
            .unwrap_or_default();
        Rules {
            window: p.suspicion_window.max(srtt * 4),
            segments: p.suspicion_segments,
            timeouts: p.suspicion_timeouts,
        }
    }

    /// The uplinks carrying a default route (each once).
    fn carrying(&self) -> Vec<UplinkId> {
        let mut v: Vec<UplinkId> = self.fam.iter().filter_map(|f| f.active).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    pub(super) fn on_counters(&mut self, now: Now, c: Counters, out: &mut Vec<Action>) {
        if !self.cfg.probe.suspicion {
            return;
        }
        let carrying = self.carrying();
        let rules = self.rules(&carrying);
        let own: Vec<(u64, u64)> = self
            .uplinks
            .iter()
            .map(|u| (u.probes_sent, u.replies))
            .collect();
        let found = self
            .detector
            .observe(c, |u| own.get(u).copied().unwrap_or_default(), rules);
        for Finding {
            source,
            uplink,
            evidence,
        } in found
        {
            let targets: Vec<UplinkId> = match uplink {
                None => carrying.clone(),
                Some(u) if carrying.contains(&u) => vec![u],
                Some(_) => Vec::new(),
            };
            for u in targets {
                self.suspect(now, u, source, &evidence, out);
            }
        }
    }

    pub(super) fn on_unreachable(
        &mut self,
        now: Now,
        family: Family,
        from: IpAddr,
        out: &mut Vec<Action>,
    ) {
        if !self.cfg.probe.suspicion {
            return;
        }
        let Some(a) = self.fam[family.index()].active else {
            return;
        };
        // Only the active gateway's word counts: anyone can send an
        // unreachable, and a router farther away speaks for its own links.
        if self.cfg.uplinks[a].gateway(family) != Some(from) {
            return;
        }
        let evidence = format!("destination unreachable from the gateway {from}");
        self.suspect(now, a, Source::IcmpUnreachable, &evidence, out);
    }

    /// Uplink `u` is suspected: count it, and start a burst unless one
    /// started within `suspicion_holdoff` or one is running.
    fn suspect(
        &mut self,
        now: Now,
        u: UplinkId,
        source: Source,
        evidence: &str,
        out: &mut Vec<Action>,
    ) {
        let p = self.cfg.probe.clone();
        let carried: Vec<usize> = (0..2)
            .filter(|&fi| self.fam[fi].active == Some(u))
            .collect();
        let Some(up) = self.uplinks.get_mut(u) else {
            return;
        };
        let si = Source::ALL.iter().position(|s| *s == source).unwrap_or(0);
        up.suspicions[si] += 1;
        if up.last_burst.is_some_and(|t| now < t + p.suspicion_holdoff) {
            return;
        }
        let mut started = false;
        for fi in carried {
            let Some(f) = up.fams[fi].as_mut() else {
                continue;
            };
            if f.transits.iter().all(Vec::is_empty) {
                continue;
            }
            // A burst of the miss path already running (a steady probe was
            // overdue) becomes this one: the same verdicts, sooner.
            if f.suspicion.as_ref().is_some_and(|s| s.running) {
                continue;
            }
            f.burst_left = p.transit_fall;
            f.burst_next = now;
            f.suspicion = Some(SuspectBurst {
                source,
                at: now,
                running: true,
                sent: 0,
                replied: 0,
                missed: 0,
            });
            started = true;
        }
        if started {
            up.last_burst = Some(now);
            up.bursts += 1;
            out.push(Action::Report(Change::Suspicion {
                uplink: self.cfg.uplinks[u].name.clone(),
                source: source.name().into(),
                evidence: evidence.into(),
            }));
        }
    }

    /// The suspicion behind a quorum failure of uplink `i`, family `fi`: a
    /// burst started within `suspicion_holdoff`, with its result.
    pub(super) fn recent_suspicion(
        &self,
        i: UplinkId,
        fi: usize,
        reasons: &[Reason],
    ) -> Option<&SuspectBurst> {
        if !reasons.iter().any(|r| matches!(r, Reason::Quorum { .. })) {
            return None;
        }
        let f = self.uplinks[i].fams[fi].as_ref()?;
        let s = f.suspicion.as_ref()?;
        (self.last_now < s.at + self.cfg.probe.suspicion_holdoff).then_some(s)
    }

    /// The evidence sentence of a suspicion burst.
    pub(super) fn suspicion_evidence(&self, s: &SuspectBurst) -> String {
        format!(
            "confirmed after a suspicion ({}) {} ms before: burst of {} probes, {} answered, {} unanswered",
            s.source.name(),
            self.last_now.saturating_sub(s.at).as_millis(),
            s.sent,
            s.replied,
            s.missed
        )
    }
}
