//! Passive suspicion: the server's own traffic says, within a round trip or
//! two, that its packets are no longer answered. Pure rules over counter
//! samples the daemon reads on its existing tick; a finding is not a
//! verdict: it starts one short confirmation burst to the suspected
//! uplink's transit targets, and the quorum rules decide (see
//! `engine/suspect.rs`).
//!
//! The rules, over the last `window` W (the configured `suspicion_window`,
//! widened to 4 × the transits' smoothed RTT) and the window before it:
//! - **tcp_stall**: no TCP segment came in (`Tcp: InSegs`) for at least W
//!   since the last sample that saw one, while at least `segments` went out
//!   (`OutSegs`) since then: the server keeps talking and nothing answers,
//!   progress stopped. Judged only within 4 W of the last segment received,
//!   so segments trickling out long after (a connection attempt to a dead
//!   peer on an otherwise idle server) are not taken for a path that just
//!   died. Random loss never stops every acknowledgement of a busy server
//!   for a whole window, so 2 % loss does not look like this.
//! - **tcp_timeouts**: at least `timeouts` retransmission timeouts and tail
//!   loss probes (`TcpExt: TCPTimeouts + TCPLossProbes`) over W, with no more
//!   segments received than retransmitted (`RetransSegs`): many flows timing
//!   out at once with nothing coming back. Under ordinary loss, segments
//!   received outnumber retransmissions by far (at 2 % loss, ~50 to 1).
//! - **rx_stall**: the active uplink's interface sent at least `segments`
//!   packets beyond the agent's own probes and forwarding-plane echoes over
//!   W and received none beyond one per probe or echo sent (its reply),
//!   while it received at least `segments / 2` beyond that over the window
//!   before. A one-way stream (nothing ever comes back) never fires it, and
//!   the echoes, which come back through a router whose upstream died, do
//!   not hide a stall.
//! - **icmp_unreachable**: a destination-unreachable from the active
//!   gateway quoting one of our own packets (validated by the adapter: the
//!   quoted source is one of our addresses).
//!
//! Each rule is edge-triggered: once it fired it stays quiet until its
//! condition has cleared, so one stall is one suspicion. Counters are per
//! network namespace (TCP is counted for both families together, and
//! includes loopback and on-link traffic, which can hide a stall but never
//! makes one); a TCP finding is attributed to the uplinks carrying the
//! default routes.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Now, UplinkId};

/// The namespace's TCP counters (cumulative, as the kernel keeps them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `/proc/net/snmp` Tcp: InSegs.
    pub in_segs: u64,
    /// Tcp: OutSegs (retransmissions not included).
    pub out_segs: u64,
    /// Tcp: RetransSegs.
    pub retrans_segs: u64,
    /// `/proc/net/netstat` TcpExt: TCPLossProbes.
    pub loss_probes: u64,
    /// TcpExt: TCPTimeouts (retransmission timer expiries).
    pub timeouts: u64,
}

/// An interface's packet counters (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Frames the agent sent through the interface besides the loop's
    /// probes (the forwarding-plane echoes), counted by their sender at the
    /// same instant: like a probe, each is one packet out and, if
    /// answered, one in, and neither is traffic.
    pub own_tx: u64,
}

/// One reading of the counters, taken at the instant of the event carrying it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// When it was read: the rules' windows are measured between readings
    /// (the loop may handle a reading a little later).
    pub at: Now,
    /// None when the files could not be read.
    pub tcp: Option<TcpCounters>,
    /// The interface counters of the uplinks read this time.
    pub links: Vec<(UplinkId, LinkCounters)>,
}

/// What raised a suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    TcpStall,
    TcpTimeouts,
    RxStall,
    IcmpUnreachable,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::TcpStall,
        Source::TcpTimeouts,
        Source::RxStall,
        Source::IcmpUnreachable,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Source::TcpStall => "tcp_stall",
            Source::TcpTimeouts => "tcp_timeouts",
            Source::RxStall => "rx_stall",
            Source::IcmpUnreachable => "icmp_unreachable",
        }
    }
}

/// The thresholds of the rules (from `[probe]`).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub window: Duration,
    pub segments: u32,
    pub timeouts: u32,
}

/// A rule that fired: on `uplink` (None: TCP, whichever carries the routes).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub source: Source,
    pub uplink: Option<UplinkId>,
    pub evidence: String,
}

#[derive(Debug, Clone)]
struct Entry {
    at: Now,
    tcp: Option<TcpCounters>,
    /// (uplink, counters, own probes and echoes sent, own replies
    /// received) at `at`.
    links: Vec<(UplinkId, LinkCounters, u64, u64)>,
}

/// Keeps the recent samples and the rules' latches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Detector {
    hist: VecDeque<Entry>,
    /// The last sample that saw a TCP segment come in, with OutSegs then.
    tcp_progress: Option<(Now, u64)>,
    /// The progress instant whose stall was reported (one report per stall).
    tcp_stall: Option<Now>,
    tcp_timeouts: bool,
    /// Uplinks whose rx_stall fired and has not cleared.
    rx_stall: Vec<UplinkId>,
}

/// Samples kept at most (a few windows at the usual cadence).
const MAX_ENTRIES: usize = 512;

/// A stall is judged within this many windows after the last segment
/// received: segments trickling out long after (a connection attempt to a
/// dead peer on an otherwise idle server) are not a path that just died.
const STALL_WINDOWS: u32 = 4;

impl Detector {
    /// Forget everything (suspicion switched off, or uplinks renumbered).
    pub fn clear(&mut self) {
        *self = Detector::default();
    }

    /// Take one sample (read at `c.at`); `own(uplink)` = (probes sent,
    /// replies received) through that uplink so far. Returns the rules
    /// that fired.
    pub fn observe(
        &mut self,
        c: Counters,
        own: impl Fn(UplinkId) -> (u64, u64),
        rules: Rules,
    ) -> Vec<Finding> {
        let now = c.at;
        let entry = Entry {
            at: now,
            tcp: c.tcp,
            links: c
                .links
                .iter()
                .map(|(u, l)| {
                    let (s, r) = own(*u);
                    (*u, *l, s + l.own_tx, r)
                })
                .collect(),
        };
        // Counters going backwards (a new namespace, a re-created interface):
        // start over rather than judge across the gap.
        if let Some(last) = self.hist.back() {
            let tcp_back = matches!((last.tcp, entry.tcp), (Some(a), Some(b)) if b.in_segs < a.in_segs || b.out_segs < a.out_segs);
            if tcp_back || now < last.at {
                self.clear();
            }
        }
        self.hist.push_back(entry);
        let w = rules.window;
        // Keep three windows: the window before the last one starts at a
        // sample up to a window before `now - 2 w` (then one older than it).
        while self.hist.len() > MAX_ENTRIES
            || (self.hist.len() > 2 && self.hist[1].at + w * 3 <= now)
        {
            self.hist.pop_front();
        }
        let mut found = Vec::new();
        let cur = self.hist.back().expect("pushed").clone();
        if let Some(c) = cur.tcp {
            // Progress: the last sample that saw a segment come in, and the
            // segments sent by then.
            let prev = self.hist.iter().rev().nth(1).and_then(|e| e.tcp);
            if prev.is_some_and(|p| c.in_segs > p.in_segs) {
                self.tcp_progress = Some((now, c.out_segs));
            }
            if let Some((at, out_then)) = self.tcp_progress {
                let sent = c.out_segs.saturating_sub(out_then);
                let silent = now.saturating_sub(at);
                if silent >= w
                    && silent <= w * STALL_WINDOWS
                    && sent >= rules.segments as u64
                    && self.tcp_stall != Some(at)
                {
                    self.tcp_stall = Some(at);
                    found.push(Finding {
                        source: Source::TcpStall,
                        uplink: None,
                        evidence: format!(
                            "{sent} TCP segments sent and none received for {} ms",
                            silent.as_millis()
                        ),
                    });
                }
            }
        }
        // The newest sample at least a window old, and one a window older.
        let Some(b1) = self.hist.iter().rev().find(|e| e.at + w <= now).cloned() else {
            return found;
        };
        let b2 = self.hist.iter().rev().find(|e| e.at + w <= b1.at).cloned();
        if let (Some(c), Some(o)) = (cur.tcp, b1.tcp) {
            let d = delta(c, o);
            let tos = d.timeouts + d.loss_probes;
            let timing_out = tos >= rules.timeouts as u64 && d.in_segs <= d.retrans_segs;
            if !timing_out {
                self.tcp_timeouts = false;
            } else if !self.tcp_timeouts {
                self.tcp_timeouts = true;
                found.push(Finding {
                    source: Source::TcpTimeouts,
                    uplink: None,
                    evidence: format!(
                        "{} retransmission timeouts and {} loss probes in {} ms, {} segments retransmitted, {} received",
                        d.timeouts,
                        d.loss_probes,
                        w.as_millis(),
                        d.retrans_segs,
                        d.in_segs
                    ),
                });
            }
        }
        for &(u, l, sent, _) in &cur.links {
            let Some(&(_, l1, s1, _)) = b1.links.iter().find(|x| x.0 == u) else {
                continue;
            };
            let rx = l.rx_packets.saturating_sub(l1.rx_packets);
            let tx = l.tx_packets.saturating_sub(l1.tx_packets);
            let tx_other = tx.saturating_sub(sent.saturating_sub(s1));
            // Each probe sent is one packet out and (if answered) one in, within
            // a round trip: counted when sent, not when its reply is read (the
            // loop reads replies up to a round late).
            let rx_other = rx.saturating_sub(sent.saturating_sub(s1));
            let rx_before = b2
                .as_ref()
                .and_then(|e| e.links.iter().find(|x| x.0 == u))
                .map(|&(_, l2, s2, _)| {
                    l1.rx_packets
                        .saturating_sub(l2.rx_packets)
                        .saturating_sub(s1.saturating_sub(s2))
                });
            let stalled = tx_other >= rules.segments as u64 && rx_other == 0;
            let latched = self.rx_stall.contains(&u);
            if !stalled {
                self.rx_stall.retain(|x| *x != u);
            } else if !latched && rx_before.is_some_and(|r| r >= (rules.segments as u64 / 2).max(1))
            {
                self.rx_stall.push(u);
                found.push(Finding {
                    source: Source::RxStall,
                    uplink: Some(u),
                    evidence: format!(
                        "{tx_other} packets sent and none received in {} ms besides the probes and echoes ({} received in the {} ms before)",
                        w.as_millis(),
                        rx_before.expect("checked"),
                        w.as_millis()
                    ),
                });
            }
        }
        found
    }
}

fn delta(c: TcpCounters, o: TcpCounters) -> TcpCounters {
    TcpCounters {
        in_segs: c.in_segs.saturating_sub(o.in_segs),
        out_segs: c.out_segs.saturating_sub(o.out_segs),
        retrans_segs: c.retrans_segs.saturating_sub(o.retrans_segs),
        loss_probes: c.loss_probes.saturating_sub(o.loss_probes),
        timeouts: c.timeouts.saturating_sub(o.timeouts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_stall_after_progress_fires_once() {
        let mut d = Detector::default();
        let rules = Rules {
            window: ms(40),
            segments: 8,
            timeouts: 4,
        };
        let mut tcp = TcpCounters::default();
        let mut fired = Vec::new();
        for i in 0..100u64 {
            let t = ms(i * 16);
            if i < 50 {
                tcp.in_segs += 80;
                tcp.out_segs += 160;
            } else if i == 50 {
                tcp.out_segs += 100;
            }
            let c = Counters {
                at: t,
                tcp: Some(tcp),
                links: vec![],
            };
            for f in d.observe(c, |_| (0, 0), rules) {
                fired.push((i, f.source));
            }
        }
        assert_eq!(fired, vec![(52, Source::TcpStall)]);
    }

    /// Many flows timing out at once with nothing coming back is a
    /// suspicion (once); as many timeouts while acknowledgements keep
    /// coming (a busy server's ordinary loss) are not.
    #[test]
    fn timeouts_count_only_with_nothing_coming_back() {
        let rules = Rules {
            window: ms(40),
            segments: 8,
            timeouts: 4,
        };
        let run = |acks: u64| {
            let mut d = Detector::default();
            let mut tcp = TcpCounters::default();
            let mut fired = Vec::new();
            for i in 0..40u64 {
                // Every sample: 2 timeouts, 3 loss probes, 5 retransmissions;
                // the window sees 3 samples of them.
                tcp.timeouts += 2;
                tcp.loss_probes += 3;
                tcp.retrans_segs += 5;
                tcp.in_segs += acks;
                let c = Counters {
                    at: ms(i * 16),
                    tcp: Some(tcp),
                    links: vec![],
                };
                for f in d.observe(c, |_| (0, 0), rules) {
                    fired.push(f.source);
                }
            }
            fired
        };
        assert_eq!(run(0), vec![Source::TcpTimeouts]);
        assert_eq!(run(200), vec![]);
    }
}
