//! The forwarding-plane echo stream: how a run of echoes is judged.
//!
//! In echo mode the gateway is not probed by rounds the loop sends: the
//! carrier poller thread sends a stream of echoes on its tick (every
//! `echo_interval` through the uplink carrying the family's traffic, every
//! `gateway_interval` through a standby) and drains the echoes that came
//! back on the same tick. [`EchoRun`] is the rule it judges the stream by,
//! pure so that the core's scenarios run the same rule as the thread: it
//! tells the loop only what changed ([`EchoNews`]), and the core turns that
//! into the gateway's verdict.
//!
//! # Why `lost_after` echoes (8 at the defaults)
//! The stream is judged once per tick, after the drain and before the next
//! echoes leave, so an echo has a whole tick (4 ms) to come back; the
//! echoes "outstanding" are those sent after the newest one back. The
//! stream has stopped when `lost_after = ceil(echo_dead_after /
//! echo_interval)` are outstanding: 16 ms / 2 ms = 8 at the defaults
//! (two echoes per 4 ms tick), so a router that stops forwarding is found
//! 16–20 ms after its last echo came back.
//!
//! Under independent random loss `p` on the echo path, a run of `n` lost
//! echoes starts at a given echo with probability `(1 - p)·pⁿ`. At 10 %
//! loss and `n = 8` that is 0.9 × 10⁻⁸. Ten minutes of the two active
//! streams (IPv4 and IPv6 through the active uplink, 500 echoes/s each)
//! are 600,000 echoes: 600,000 × 0.9 × 10⁻⁸ ≈ 5.4 × 10⁻³ expected false
//! trips; the two standby streams (one echo per 48 ms, ≈ 21/s each) add
//! 25,000 × 0.9 × 10⁻⁸ ≈ 2.3 × 10⁻⁴. In all about 1 in 180 ten-minute
//! runs, one false trip per ~30 hours of 10 % loss (and a standby's trip
//! moves no traffic). With `n = 6` it would be 0.55 per ten minutes: not
//! far enough below one. A `late` notice (half of `lost_after`) lets the
//! core ping the router's own address once, so that when the stream stops
//! it can tell a router that only stopped forwarding (its CPU answers)
//! from a dead one; at 10 % loss a run of 4 starts about once per 11 s
//! (0.9 × 10⁻⁴ × 1,000 echoes/s), within the control-plane budget of one
//! ping per second.

use std::time::Duration;

/// How one stream is run (the core decides it; the thread runs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoSpec {
    /// One echo every this long (below the poller's tick: several per tick).
    pub every: Duration,
    /// Echoes outstanding (sent after the newest one back) that stop the stream.
    pub lost_after: u32,
    /// Echoes outstanding that make it late (the core pings the router once).
    pub late_after: u32,
    /// Echoes back in a row that make a stopped stream flow again.
    pub rise: u32,
}

impl EchoSpec {
    /// The stream of an uplink at `every`, judged by the configured
    /// `echo_dead_after` over `echo_interval` and `gateway_rise`.
    pub fn new(every: Duration, p: &crate::config::ProbeConfig) -> EchoSpec {
        let lost_after = lost_after(p.echo_dead_after, p.echo_interval);
        EchoSpec {
            every,
            lost_after,
            late_after: (lost_after / 2).max(1),
            rise: p.gateway_rise.max(1),
        }
    }

    /// Echoes sent per tick of `tick`, and every how many ticks.
    pub fn per_tick(&self, tick: Duration) -> (u32, u64) {
        let (e, t) = (self.every.as_nanos().max(1), tick.as_nanos().max(1));
        if e >= t {
            (1, (e / t).max(1) as u64)
        } else {
            ((t / e).max(1) as u32, 1)
        }
    }
}

/// `ceil(dead_after / interval)`, at least 1.
pub fn lost_after(dead_after: Duration, interval: Duration) -> u32 {
    let i = interval.as_nanos().max(1);
    (dead_after.as_nanos().div_ceil(i)).clamp(1, u32::MAX as u128) as u32
}

/// A new stream (nothing back yet) stops only after this many times
/// `lost_after`: its first echoes may wait for the gateway's MAC to be
/// resolved (the stream of a fresh start, of a carrier back).
pub const UNKNOWN_FACTOR: u32 = 16;

/// What the loop is told: only changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoNews {
    /// `lost` echoes outstanding: late, not yet stopped.
    Late { lost: u32 },
    /// `lost` echoes outstanding: the stream stopped.
    Stopped { lost: u32 },
    /// Echoes come back (`back` in a row).
    Back { back: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoState {
    /// Nothing judged yet.
    Unknown,
    /// Asked to prove itself again (made faster because it may carry the
    /// traffic soon): the next echo back is news, as is a stop.
    Verifying,
    Flowing,
    Late,
    Stopped,
}

/// The judge of one stream; see the module docs.
#[derive(Debug, Clone)]
pub struct EchoRun {
    pub spec: EchoSpec,
    pub state: EchoState,
    /// Sequence number of the newest echo sent (0: none yet).
    sent: u32,
    /// Sequence number of the newest echo back (0: none).
    newest_back: u32,
    /// Echoes back in a row since the stream was last judged missing some.
    back_in_row: u32,
    /// Verifying: only echoes sent after this sequence number prove it.
    verify_from: u32,
}

impl EchoRun {
    pub fn new(spec: EchoSpec) -> EchoRun {
        EchoRun {
            spec,
            state: EchoState::Unknown,
            sent: 0,
            newest_back: 0,
            back_in_row: 0,
            verify_from: 0,
        }
    }

    /// The sequence number of the next echo, counted as sent.
    pub fn send(&mut self) -> u32 {
        self.sent = self.sent.wrapping_add(1).max(1);
        self.sent
    }

    /// A valid echo back: counts if it is newer than the newest one back
    /// and not newer than the newest sent (a replay or a forged sequence
    /// number counts for nothing). True if it counted.
    pub fn back(&mut self, seq: u32) -> bool {
        if seq == 0 || seq > self.sent || seq <= self.newest_back {
            return false;
        }
        self.newest_back = seq;
        self.back_in_row += 1;
        true
    }

    /// The stream is about to matter (see [`EchoState::Verifying`]): tell
    /// the loop when an echo sent from now on is back. A stopped stream
    /// stays stopped (its rise is news anyway).
    pub fn verify(&mut self) {
        if matches!(self.state, EchoState::Flowing | EchoState::Late) {
            self.state = EchoState::Verifying;
            self.back_in_row = 0;
            self.verify_from = self.sent;
        }
    }

    /// Echoes sent after the newest one back.
    pub fn outstanding(&self) -> u32 {
        self.sent - self.newest_back
    }

    /// Judge the stream (after the drain, before the next echoes leave):
    /// the news, if its state changed.
    pub fn judge(&mut self) -> Option<EchoNews> {
        let lost = self.outstanding();
        let s = &self.spec;
        let news = match self.state {
            EchoState::Stopped => {
                if lost > 0 {
                    // A rise needs echoes back in a row.
                    self.back_in_row = 0;
                    None
                } else if self.back_in_row >= s.rise {
                    self.state = EchoState::Flowing;
                    Some(EchoNews::Back {
                        back: self.back_in_row,
                    })
                } else {
                    None
                }
            }
            EchoState::Unknown if lost >= s.lost_after.saturating_mul(UNKNOWN_FACTOR) => {
                self.state = EchoState::Stopped;
                self.back_in_row = 0;
                Some(EchoNews::Stopped { lost })
            }
            EchoState::Flowing | EchoState::Late | EchoState::Verifying if lost >= s.lost_after => {
                self.state = EchoState::Stopped;
                self.back_in_row = 0;
                Some(EchoNews::Stopped { lost })
            }
            EchoState::Verifying if self.newest_back > self.verify_from => {
                self.state = EchoState::Flowing;
                Some(EchoNews::Back {
                    back: self.back_in_row.max(1),
                })
            }
            EchoState::Late | EchoState::Unknown if lost == 0 && self.back_in_row > 0 => {
                self.state = EchoState::Flowing;
                Some(EchoNews::Back {
                    back: self.back_in_row,
                })
            }
            EchoState::Flowing if lost >= s.late_after => {
                self.state = EchoState::Late;
                Some(EchoNews::Late { lost })
            }
            _ => None,
        };
        if lost > 0 && self.state != EchoState::Stopped {
            self.back_in_row = 0;
        }
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EchoSpec {
        EchoSpec {
            every: Duration::from_millis(2),
            lost_after: 8,
            late_after: 4,
            rise: 3,
        }
    }

    /// One tick: judge, then send `n`, of which `back` come back.
    fn tick(r: &mut EchoRun, n: u32, back: bool) -> Option<EchoNews> {
        let news = r.judge();
        for _ in 0..n {
            let s = r.send();
            if back {
                r.back(s);
            }
        }
        news
    }

    #[test]
    fn flows_goes_late_stops_and_rises() {
        let mut r = EchoRun::new(spec());
        assert_eq!(tick(&mut r, 2, true), None);
        assert_eq!(tick(&mut r, 2, true), Some(EchoNews::Back { back: 2 }));
        assert_eq!(tick(&mut r, 2, false), None);
        assert_eq!(tick(&mut r, 2, false), None, "2 outstanding");
        assert_eq!(
            tick(&mut r, 2, false),
            Some(EchoNews::Late { lost: 4 }),
            "4 outstanding"
        );
        assert_eq!(tick(&mut r, 2, false), None);
        assert_eq!(tick(&mut r, 2, true), Some(EchoNews::Stopped { lost: 8 }));
        // Two back when judged: not yet three in a row.
        assert_eq!(tick(&mut r, 1, true), None);
        assert_eq!(tick(&mut r, 1, true), Some(EchoNews::Back { back: 3 }));
        assert_eq!(r.state, EchoState::Flowing);
    }

    #[test]
    fn a_stream_asked_to_verify_says_when_an_echo_is_back() {
        let mut r = EchoRun::new(spec());
        tick(&mut r, 1, true);
        assert_eq!(tick(&mut r, 1, true), Some(EchoNews::Back { back: 1 }));
        r.verify();
        assert_eq!(r.state, EchoState::Verifying);
        assert_eq!(tick(&mut r, 2, true), None, "nothing sent since");
        assert_eq!(tick(&mut r, 2, true), Some(EchoNews::Back { back: 2 }));
        // Verifying a dead one: it stops after `lost_after`, not 16 times that.
        r.verify();
        for _ in 0..4 {
            assert_eq!(tick(&mut r, 2, false), None);
        }
        assert_eq!(tick(&mut r, 2, false), Some(EchoNews::Stopped { lost: 8 }));
    }

    #[test]
    fn replays_and_future_sequence_numbers_count_for_nothing() {
        let mut r = EchoRun::new(spec());
        let a = r.send();
        assert!(r.back(a));
        assert!(!r.back(a), "a replay");
        assert!(!r.back(a + 5), "never sent");
        assert!(!r.back(0));
    }

    #[test]
    fn a_late_echo_clears_the_run() {
        let mut r = EchoRun::new(spec());
        tick(&mut r, 2, true);
        tick(&mut r, 2, true);
        let late: Vec<u32> = (0..3).map(|_| r.send()).collect();
        assert_eq!(r.judge(), None, "3 outstanding");
        r.back(late[2]);
        assert_eq!(r.outstanding(), 0, "the newest back covers the older ones");
    }

    /// The arithmetic of the module docs, by simulation: 10 % independent
    /// loss, 2 echoes per tick, 8 outstanding stop the stream.
    #[test]
    fn ten_percent_loss_rarely_stops_the_stream() {
        let mut r = EchoRun::new(spec());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut stops = 0;
        let ticks = 3_000_000u64; // 200 minutes of one stream at 4 ms
        for _ in 0..ticks {
            if matches!(r.judge(), Some(EchoNews::Stopped { .. })) {
                stops += 1;
            }
            for _ in 0..2 {
                let s = r.send();
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
                if v % 10 != 0 {
                    r.back(s);
                }
            }
        }
        // Expected 6,000,000 × 0.9 × 10⁻⁸ = 0.054.
        assert!(stops <= 1, "{stops} stops in {ticks} ticks at 10 % loss");
    }

    #[test]
    fn per_tick() {
        let s = spec();
        assert_eq!(s.per_tick(Duration::from_millis(4)), (2, 1));
        let slow = EchoSpec {
            every: Duration::from_millis(48),
            ..s
        };
        assert_eq!(slow.per_tick(Duration::from_millis(4)), (1, 12));
        assert_eq!(
            lost_after(Duration::from_millis(16), Duration::from_millis(2)),
            8
        );
        assert_eq!(
            lost_after(Duration::from_millis(15), Duration::from_millis(2)),
            8
        );
    }
}
