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
//! # The steady rate, the hurry and `lost_after`
//! The stream is judged once per tick, after the drain and before the next
//! echoes leave, so an echo has a whole tick (4 ms) to come back; the
//! echoes "outstanding" are those sent after the newest one back.
//!
//! While every echo comes back, the stream sends at its steady rate: one
//! per `echo_interval` (12 ms, every third tick) through the uplink carrying
//! the family's traffic, one per `gateway_interval` through a standby. As
//! soon as one is outstanding at a judging, the stream *hurries*: it sends
//! `hurry` echoes on every tick until none is outstanding or it stops.
//! `hurry` is chosen so that the echoes of a silent gateway add up to at
//! least [`MIN_LOST`] (8) within `echo_dead_after`: the first echo lost,
//! then `hurry` per tick on the `k - 1` ticks after it, where `k =
//! echo_dead_after / tick` (3 at the defaults: `hurry` = 4). The stream has
//! stopped when `lost_after = 1 + hurry·(k - 1)` are outstanding (9 at the
//! defaults): `k` ticks (12 ms) after the first lost echo left. A router
//! that stops forwarding is found 12-24 ms after it stopped (the first lost
//! echo leaves within one `echo_interval`), within the 30 ms the stream is
//! held to, with a sixth of the packets of a steady 2 ms stream and a third
//! of its sending ticks. Each sending tick is one `sendmmsg`, and on a
//! virtual machine one exit to the hypervisor (the NIC's doorbell, or the
//! IPI that hands the frames to another CPU): what the echoes cost a server
//! is counted in sending ticks, which is why the steady rate is not higher.
//!
//! # The idle rate
//! The echoes protect traffic: while the uplink carrying the family has
//! sent nothing besides the agent's own packets for a second (read from its
//! counters every 16 ms by the same thread), its stream sends one echo per
//! `echo_idle_interval` (48 ms, every twelfth tick, the standby's rate and
//! on the standby's ticks), so an idle server costs its router and itself a
//! quarter of the echoes and of the sending ticks. The first reading that
//! sees traffic brings the full rate back, with an echo on that same tick:
//! a router that stopped forwarding while the server was idle is found
//! within 12 ms of the traffic being seen (within 16 ms of its first
//! packet), or by the idle stream itself within 48 + 12 ms, whichever
//! comes first. Only a flowing stream slows: a new one, one verifying,
//! late or stopped, and the hurry, run at the full rate.
//!
//! Under independent random loss `p` on the echo path, a false stop needs
//! a steady echo lost and then every hurried echo after it: `p^lost_after`
//! per steady echo, 10⁻⁹ at 10 % loss and the defaults. Ten minutes of the
//! two active streams (IPv4 and IPv6 through the active uplink, 83 steady
//! echoes/s each) are 100,000 steady echoes: 10⁻⁴ expected false trips
//! (one per ~70 days of 10 % loss), and the standbys' streams (≈ 21/s
//! each) add a quarter of that. A `late` notice (`late_after` = 1 + `hurry`,
//! 5 outstanding, one tick before the stop) lets the core ping the
//! router's own address once, so that when the stream stops it can tell a
//! router that only stopped forwarding (its CPU answers) from a dead one;
//! at 10 % loss one comes about every 600 s (10⁻⁵ × 167 steady echoes/s),
//! far within the control-plane budget of one ping per second. At 10 %
//! loss the stream hurries after one steady echo in ten, for one tick
//! mostly: it sends about 1.4 times its steady rate.

use std::time::Duration;

/// How one stream is run (the core decides it; the thread runs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoSpec {
    /// One echo every this long while all come back (below the poller's
    /// tick: several per tick).
    pub every: Duration,
    /// Echoes per tick while one is outstanding (see the module docs).
    pub hurry: u32,
    /// Echoes outstanding (sent after the newest one back) that stop the stream.
    pub lost_after: u32,
    /// Echoes outstanding that make it late (the core pings the router once).
    pub late_after: u32,
    /// Echoes back in a row that make a stopped stream flow again.
    pub rise: u32,
    /// One echo every this long instead of `every` while the stream flows
    /// and its interface carries no traffic (the uplink carrying the
    /// family only; see the module docs).
    pub idle: Option<Duration>,
}

/// A stream stops only after at least this many echoes in a row are lost
/// (the false-stop arithmetic of the module docs).
pub const MIN_LOST: u32 = 8;

/// Hurried echoes per tick are at most this many.
const MAX_HURRY: u32 = 16;

impl EchoSpec {
    /// The stream of an uplink at `every`, judged by the configured
    /// `echo_dead_after` on the poller's tick (`carrier_interval`), and
    /// `gateway_rise`.
    pub fn new(every: Duration, p: &crate::config::ProbeConfig) -> EchoSpec {
        let tick = p.carrier_interval.as_nanos().max(1);
        // Judgings from the first lost echo to the stop.
        let k = (p.echo_dead_after.as_nanos() / tick).clamp(2, u32::MAX as u128) as u32;
        let steady = steady_per_tick(every, p.carrier_interval).0;
        let hurry = (MIN_LOST.saturating_sub(steady).div_ceil(k - 1))
            .max(steady)
            .clamp(1, MAX_HURRY);
        let lost_after = steady.saturating_add(hurry.saturating_mul(k - 1));
        EchoSpec {
            every,
            hurry,
            lost_after,
            late_after: steady
                .saturating_add(hurry.saturating_mul((k - 1) / 2))
                .max(1),
            rise: p.gateway_rise.max(1),
            idle: None,
        }
    }

    /// The same, one echo every `idle` while its interface is idle (if
    /// slower than `every`).
    pub fn with_idle(self, idle: Duration) -> EchoSpec {
        EchoSpec {
            idle: (idle > self.every).then_some(idle),
            ..self
        }
    }

    /// Echoes sent per tick of `tick` at the steady rate, and every how
    /// many ticks.
    pub fn per_tick(&self, tick: Duration) -> (u32, u64) {
        steady_per_tick(self.every, tick)
    }
}

/// One echo every `every` on a tick of `tick`: echoes per tick, and every
/// how many ticks.
fn steady_per_tick(every: Duration, tick: Duration) -> (u32, u64) {
    let (e, t) = (every.as_nanos().max(1), tick.as_nanos().max(1));
    if e >= t {
        (1, (e / t).max(1) as u64)
    } else {
        ((t / e).max(1) as u32, 1)
    }
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
    /// Its interface carries no traffic (see [`EchoRun::set_idle`]).
    idle: bool,
    /// Traffic came back while it ran at the idle rate: an echo is due now.
    kick: bool,
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
            idle: false,
            kick: false,
        }
    }

    /// Whether its interface carries no traffic now. The stream runs at
    /// the spec's idle rate only while it flows (a new stream, one
    /// verifying, late or stopped runs at the full rate); when traffic
    /// comes back to a stream at the idle rate, an echo is due at once.
    pub fn set_idle(&mut self, idle: bool) {
        if !idle && self.slow() {
            self.kick = true;
        }
        self.idle = idle;
    }

    /// At the idle rate now.
    pub fn slow(&self) -> bool {
        self.idle && self.spec.idle.is_some() && self.state == EchoState::Flowing
    }

    /// The sequence number of the next echo, counted as sent.
    pub fn send(&mut self) -> u32 {
        self.kick = false;
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

    /// Run on by `spec` from now on (the same stream, asked for again):
    /// made faster, it may carry the traffic soon, so it verifies.
    pub fn respec(&mut self, spec: EchoSpec) {
        if spec.every < self.spec.every {
            self.verify();
        }
        self.spec = spec;
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

    /// Echoes to send on the tick numbered `ticks` (the poller's count,
    /// so that every stream's steady echoes fall on the same ticks) of a
    /// poller ticking every `tick`, right after [`EchoRun::judge`]: the
    /// steady rate; `hurry` while one is outstanding and the stream has
    /// not stopped (see the module docs); one at once when asked to verify;
    /// and the rest of a rise at once when a stopped stream's echo is back.
    pub fn due(&self, ticks: u64, tick: Duration) -> u32 {
        let (n, every) = match self.spec.idle {
            Some(idle) if self.slow() => steady_per_tick(idle, tick),
            _ => self.spec.per_tick(tick),
        };
        let steady = if ticks % every == 0 || self.kick {
            n
        } else {
            0
        };
        let lost = self.outstanding();
        match self.state {
            EchoState::Stopped if lost == 0 && self.back_in_row > 0 => {
                steady.max(self.spec.rise.saturating_sub(self.back_in_row))
            }
            EchoState::Stopped => steady,
            EchoState::Verifying if self.sent == self.verify_from => steady.max(1),
            _ if lost > 0 => self.spec.hurry.max(n),
            _ => steady,
        }
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
            hurry: 2,
            lost_after: 8,
            late_after: 4,
            rise: 3,
            idle: None,
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

    const TICK: Duration = Duration::from_millis(4);

    /// The stream at the defaults through the active uplink.
    fn default_spec() -> EchoSpec {
        let p = crate::config::ProbeConfig::default();
        EchoSpec::new(p.echo_interval, &p)
    }

    /// One tick as the poller runs it: judge, then send what is due, each
    /// echo back unless `lost` says so. The news and the echoes sent.
    fn run_tick(
        r: &mut EchoRun,
        ticks: u64,
        mut lost: impl FnMut() -> bool,
    ) -> (Option<EchoNews>, u32) {
        let news = r.judge();
        let n = r.due(ticks, TICK);
        for _ in 0..n {
            let s = r.send();
            if !lost() {
                r.back(s);
            }
        }
        (news, n)
    }

    /// The idle rate (see the module docs): only a flowing stream slows,
    /// traffic brings an echo at once and the full rate back, and the
    /// hurry of a silent gateway is not slowed.
    #[test]
    fn an_idle_stream_slows_and_traffic_brings_the_full_rate_at_once() {
        let p = crate::config::ProbeConfig::default();
        let spec = default_spec().with_idle(p.echo_idle_interval);
        assert_eq!(spec.idle, Some(Duration::from_millis(48)));
        assert_eq!(
            default_spec().with_idle(Duration::from_millis(12)).idle,
            None
        );
        let mut r = EchoRun::new(spec);
        // A new stream sends at once, idle or not; its first echo back
        // makes it flow, and then it slows.
        r.set_idle(true);
        assert_eq!(r.due(3, TICK), 1, "a new stream: the full rate");
        let first: Vec<u32> = (0..6).map(|t| run_tick(&mut r, t, || false).1).collect();
        assert_eq!(first, [1, 0, 0, 0, 0, 0]);
        assert_eq!(r.state, EchoState::Flowing);
        // Flowing and idle: every twelfth tick.
        let idle: Vec<u64> = (6..54)
            .filter(|&t| run_tick(&mut r, t, || false).1 > 0)
            .collect();
        assert_eq!(idle, [12, 24, 36, 48]);
        // Traffic on tick 55: an echo at once, then every third tick.
        run_tick(&mut r, 54, || false);
        r.set_idle(false);
        let busy: Vec<u64> = (55..64)
            .filter(|&t| run_tick(&mut r, t, || false).1 > 0)
            .collect();
        assert_eq!(busy, [55, 57, 60, 63]);
        // Idle again, then the gateway goes silent: the first lost echo
        // leaves on the idle grid, and the hurry stops the stream 3 ticks
        // later, as at the full rate.
        r.set_idle(true);
        let mut news = Vec::new();
        for t in 64..76 {
            let (n, sent) = run_tick(&mut r, t, || t >= 72);
            news.push((t, n, sent));
        }
        assert_eq!(
            news.iter()
                .filter(|x| x.2 > 0)
                .map(|x| x.0)
                .collect::<Vec<_>>(),
            [72, 73, 74, 75]
        );
        assert_eq!(news[9], (73, None, 4), "hurry");
        assert_eq!(news[11], (75, Some(EchoNews::Stopped { lost: 9 }), 1));
        // A stopped stream is not slowed, nor is traffic a kick for it.
        r.set_idle(false);
        assert_eq!(r.due(76, TICK), 0);
        assert_eq!(r.due(78, TICK), 1);
    }

    /// The arithmetic of the module docs, by simulation: 10 % independent
    /// loss at the defaults (one echo every third tick, hurrying when one
    /// is lost).
    #[test]
    fn ten_percent_loss_rarely_stops_the_stream() {
        let mut r = EchoRun::new(default_spec());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let (mut stops, mut lates, mut sent) = (0, 0u64, 0u64);
        let ticks = 3_000_000u64; // 200 minutes of one stream at 4 ms
        for t in 0..ticks {
            let (news, n) = run_tick(&mut r, t, || {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % 10 == 0
            });
            sent += u64::from(n);
            match news {
                Some(EchoNews::Stopped { .. }) => stops += 1,
                Some(EchoNews::Late { .. }) => lates += 1,
                _ => {}
            }
        }
        // Expected 1,000,000 steady echoes × 10⁻⁹: none.
        assert_eq!(stops, 0, "{stops} stops in {ticks} ticks at 10 % loss");
        // About 1,000,000 × 10⁻⁵ = 10 late notices, each one ping.
        assert!((2..40).contains(&lates), "{lates} late notices");
        // The hurry costs about 0.4 of the steady rate (1/3 per tick) at
        // 10 % loss (one steady echo in ten is followed by a tick of 4).
        let rate = sent as f64 / ticks as f64;
        assert!((0.43..0.52).contains(&rate), "{rate} echoes per tick");
    }

    /// A gateway that goes silent stops the stream `k` = 3 ticks (12 ms)
    /// after the first lost echo left, late a tick before; a stream that
    /// flows sends one echo every third tick.
    #[test]
    fn a_silent_gateway_stops_the_stream_within_echo_dead_after() {
        let spec = default_spec();
        assert_eq!(
            (spec.every, spec.hurry, spec.lost_after, spec.late_after),
            (Duration::from_millis(12), 4, 9, 5)
        );
        let mut r = EchoRun::new(spec);
        let steady: Vec<u32> = (0..9).map(|t| run_tick(&mut r, t, || false).1).collect();
        assert_eq!(steady, [1, 0, 0, 1, 0, 0, 1, 0, 0], "steady");
        assert_eq!(r.state, EchoState::Flowing);
        let mut news = Vec::new();
        for t in 9..18 {
            let (n, sent) = run_tick(&mut r, t, || true);
            news.push((t, n, sent));
        }
        assert_eq!(news[0], (9, None, 1), "the first lost echo leaves");
        assert_eq!(news[1], (10, None, 4), "one outstanding: hurry");
        assert_eq!(news[2], (11, Some(EchoNews::Late { lost: 5 }), 4));
        assert_eq!(news[3], (12, Some(EchoNews::Stopped { lost: 9 }), 1));
        assert_eq!(
            news[4..].iter().map(|x| x.2).collect::<Vec<_>>(),
            [0, 0, 1, 0, 0],
            "a stopped stream sends at the steady rate: {news:?}"
        );
    }

    /// A stream asked to verify sends at once; a stopped stream whose echo
    /// is back sends the rest of its rise at once.
    #[test]
    fn verifying_and_rising_do_not_wait_for_the_steady_tick() {
        let mut r = EchoRun::new(default_spec());
        for t in 0..4 {
            run_tick(&mut r, t, || false);
        }
        r.verify();
        assert_eq!(r.due(5, TICK), 1, "verify: one now, off the steady tick");
        let (_, sent) = run_tick(&mut r, 5, || false);
        assert_eq!(sent, 1);
        let (news, _) = run_tick(&mut r, 7, || false);
        assert_eq!(news, Some(EchoNews::Back { back: 1 }));
        // Stopped, then the gateway answers again.
        let mut t = 8;
        while r.state != EchoState::Stopped {
            run_tick(&mut r, t, || true);
            t += 1;
        }
        while r.due(t, TICK) == 0 {
            run_tick(&mut r, t, || true);
            t += 1;
        }
        run_tick(&mut r, t, || false); // one steady echo back
        let (news, sent) = run_tick(&mut r, t + 1, || false);
        assert_eq!((news, sent), (None, 2), "the rest of the rise at once");
        let (news, _) = run_tick(&mut r, t + 2, || false);
        assert_eq!(news, Some(EchoNews::Back { back: 3 }));
    }

    /// Other settings keep at least `MIN_LOST` echoes and `echo_dead_after`.
    #[test]
    fn hurry_fits_the_configured_window() {
        let mut p = crate::config::ProbeConfig::default();
        for (dead_ms, every_ms, hurry, lost_after) in [
            (12, 12, 4, 9),
            (12, 8, 4, 9),
            (16, 4, 3, 10),
            (16, 2, 2, 8),
            (8, 4, 7, 8),
            (2, 4, 7, 8),
            (32, 8, 1, 8),
            (1000, 100, 1, 250),
        ] {
            p.echo_dead_after = Duration::from_millis(dead_ms);
            p.echo_interval = Duration::from_millis(every_ms);
            let s = EchoSpec::new(p.echo_interval, &p);
            assert_eq!(
                (s.hurry, s.lost_after),
                (hurry, lost_after),
                "dead_after {dead_ms} ms, every {every_ms} ms"
            );
            assert!(s.lost_after >= MIN_LOST);
        }
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
    }
}
