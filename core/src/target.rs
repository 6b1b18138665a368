//! Per-target probe bookkeeping: schedule, verdict with hysteresis, RTT and loss.

use std::net::IpAddr;
use std::time::Duration;

use super::Now;
use crate::status::TargetStatus;

/// How many recent outcomes the loss estimate covers.
const HISTORY: u32 = 64;

#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub addr: IpAddr,
    /// None until the first verdict; Some(true) reachable, Some(false) not.
    pub verdict: Option<bool>,
    pub consecutive_ok: u32,
    pub consecutive_miss: u32,
    /// Probes sent since the last reply that were answered by a timeout.
    pub misses_since_reply: u32,
    /// Send time of the first probe of the current run of misses: a reply
    /// through another uplink proves a path only if it came after this.
    pub miss_since: Option<Now>,
    pub last_reply: Option<Now>,
    pub first_sent: Option<Now>,
    pub last_sent: Option<Now>,
    pub next_at: Now,
    /// Send times of probes still in flight (oldest first).
    pub in_flight: Vec<Now>,
    /// Smoothed RTT (RFC 6298: srtt = 7/8 srtt + 1/8 sample).
    pub srtt: Option<Duration>,
    /// Bit i = 1: the i-th most recent outcome was a miss.
    history: u64,
    history_len: u32,
    /// When the verdict last changed (for the evidence text).
    pub verdict_since: Option<Now>,
    /// Send time of the newest probe that got a reply: a timeout of an older
    /// probe is loss, but not a consecutive miss (replies overtake timeouts).
    last_replied_sent: Option<Now>,
}

impl Target {
    pub fn new(addr: IpAddr, first_at: Now) -> Self {
        Target {
            addr,
            verdict: None,
            consecutive_ok: 0,
            consecutive_miss: 0,
            misses_since_reply: 0,
            miss_since: None,
            last_reply: None,
            first_sent: None,
            last_sent: None,
            next_at: first_at,
            in_flight: Vec::new(),
            srtt: None,
            history: 0,
            history_len: 0,
            verdict_since: None,
            last_replied_sent: None,
        }
    }

    pub fn sent(&mut self, now: Now) {
        self.first_sent.get_or_insert(now);
        self.last_sent = Some(now);
        self.in_flight.push(now);
    }

    fn forget_in_flight(&mut self, sent_at: Now) {
        if let Some(i) = self.in_flight.iter().position(|t| *t == sent_at) {
            self.in_flight.remove(i);
        }
    }

    fn record(&mut self, miss: bool) {
        self.history = (self.history << 1) | miss as u64;
        self.history_len = (self.history_len + 1).min(HISTORY);
    }

    pub fn reply(&mut self, now: Now, sent_at: Now, rtt: Duration) {
        self.forget_in_flight(sent_at);
        self.record(false);
        if self.last_replied_sent.is_some_and(|t| t > sent_at) {
            return; // an older probe's late reply: newer ones already counted
        }
        self.last_replied_sent = Some(sent_at);
        self.consecutive_ok += 1;
        self.consecutive_miss = 0;
        self.misses_since_reply = 0;
        self.miss_since = None;
        // When it arrived, however late it is handled.
        let at = (sent_at + rtt).min(now);
        self.last_reply = Some(self.last_reply.map_or(at, |t| t.max(at)));
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    pub fn miss(&mut self, sent_at: Now) {
        self.forget_in_flight(sent_at);
        self.record(true);
        if self.last_replied_sent.is_some_and(|t| t > sent_at) {
            return; // a newer probe already got through
        }
        self.consecutive_ok = 0;
        if self.consecutive_miss == 0 {
            self.miss_since = Some(sent_at);
        }
        self.consecutive_miss += 1;
        self.misses_since_reply += 1;
    }

    /// Judge afresh from `now` (e.g. the carrier came back): a reachable
    /// verdict from before is forgotten (one reply restores it), and the
    /// probes sent before `now`, lost while the link was down, count
    /// neither as misses nor as replies.
    pub fn restart(&mut self, now: Now) {
        if self.verdict == Some(true) {
            self.verdict = None;
            self.verdict_since = Some(now);
        }
        self.consecutive_ok = 0;
        self.consecutive_miss = 0;
        self.misses_since_reply = 0;
        self.miss_since = None;
        self.last_reply = None;
        self.first_sent = None;
        self.last_replied_sent = Some(now);
        self.next_at = now;
    }

    /// The misses so far belong to another story (e.g. from before the
    /// gateway came back): the next one starts a new run. The verdict stands.
    pub fn new_run(&mut self) {
        self.consecutive_miss = 0;
        self.miss_since = None;
    }

    /// [`Self::new_run`], and the probes sent before `now` that are still
    /// in flight do not start one either when they time out (they were
    /// lost while the gateway was not known alive).
    pub fn new_run_from(&mut self, now: Now) {
        self.new_run();
        self.last_replied_sent = Some(self.last_replied_sent.map_or(now, |t| t.max(now)));
    }

    pub fn set_verdict(&mut self, now: Now, reachable: bool) -> bool {
        if self.verdict == Some(reachable) {
            return false;
        }
        self.verdict = Some(reachable);
        self.verdict_since = Some(now);
        true
    }

    pub fn loss(&self) -> f64 {
        if self.history_len == 0 {
            return 0.0;
        }
        let mask = if self.history_len >= 64 {
            u64::MAX
        } else {
            (1u64 << self.history_len) - 1
        };
        (self.history & mask).count_ones() as f64 / self.history_len as f64
    }

    /// Age of the oldest probe still in flight.
    /// Reachable and its last probe answered: one more reply changes
    /// nothing but counters and the smoothed RTT.
    pub fn steady(&self) -> bool {
        self.verdict == Some(true) && self.consecutive_miss == 0
    }

    pub fn oldest_in_flight(&self, now: Now) -> Option<Duration> {
        self.in_flight.first().map(|t| now.saturating_sub(*t))
    }

    pub fn status(&self, now: Now) -> TargetStatus {
        TargetStatus {
            address: self.addr,
            reachable: self.verdict,
            rtt_ms: self.srtt.map(|d| d.as_secs_f64() * 1000.0),
            loss: self.loss(),
            last_reply_ms_ago: self
                .last_reply
                .map(|t| now.saturating_sub(t).as_millis() as u64),
            misses: self.misses_since_reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_recent_misses() {
        let mut t = Target::new("198.18.0.1".parse().unwrap(), Duration::ZERO);
        for i in 0..10u64 {
            let at = Duration::from_millis(i);
            t.sent(at);
            if i % 5 == 0 {
                t.miss(at);
            } else {
                t.reply(at, at, Duration::from_micros(100));
            }
        }
        assert!((t.loss() - 0.2).abs() < 1e-9);
        assert!(t.in_flight.is_empty());
        assert_eq!(t.consecutive_ok, 4);
    }
}
