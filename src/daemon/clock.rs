//! The loop's one clock.
//!
//! Every input carries the CLOCK_MONOTONIC instant it happened at (a
//! carrier sample the instant it was read, anything else the instant the
//! loop took it in) and is turned into the core's [`Now`] here, once. The
//! carrier poller thread sleeps on the same clock, on multiples of the
//! carrier interval; the loop's time zero sits on such a multiple and its
//! timer is armed on the same clock, so a wake-up of the loop comes with one
//! of the poller's (one timer interrupt for both). Wall time is read only
//! for the timestamps of published records (`publish`).

use std::time::Duration;

use tracing::warn;

use crate::core::Now;
use crate::netlink::carrier::monotonic_now;

/// An instant on CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Mono(pub Duration);

impl Mono {
    /// CLOCK_MONOTONIC now: the instant of an input that carries none.
    pub fn now() -> Mono {
        Mono(monotonic_now())
    }
}

/// Turns instants into the core's time and back.
#[derive(Debug)]
pub(super) struct Clock {
    /// The loop's time zero: a multiple of the carrier interval, as the
    /// poller's polls are.
    zero: Mono,
    /// std's `Instant` at `zero` (read together with it): the probers stamp
    /// their probes with std `Instant`s, which on Linux are CLOCK_MONOTONIC.
    zero_std: std::time::Instant,
    /// The grid the core's time is snapped to and the loop's wake-ups are
    /// rounded up to (the carrier interval; a reload may change it).
    grid: Duration,
    /// The latest time handed out: the core's time never goes back, even
    /// for an input stamped before the one handled last.
    last: Now,
}

impl Clock {
    /// Time zero on the last multiple of `grid` of CLOCK_MONOTONIC.
    pub fn start(grid: Duration) -> Clock {
        let std_now = std::time::Instant::now();
        let mono = monotonic_now();
        let every = grid.as_nanos().max(1);
        let off = Duration::from_nanos((mono.as_nanos() % every) as u64);
        let (zero, zero_std) = match std_now.checked_sub(off) {
            Some(s) => (mono - off, s),
            None => (mono, std_now),
        };
        Clock {
            zero: Mono(zero),
            zero_std,
            grid,
            last: Duration::ZERO,
        }
    }

    /// The core's time for an input that happened at `at`: snapped to the
    /// grid (see [`snap`]), never before the time handed out last.
    pub fn now(&mut self, at: Mono) -> Now {
        let t = snap(at.0.saturating_sub(self.zero.0), self.grid).max(self.last);
        self.last = t;
        t
    }

    /// The core's time of a reading taken at `at`, as it is (not snapped,
    /// not held monotonic with other inputs): the counter readings carry
    /// their own instants, which the suspicion rules measure windows by.
    pub fn reading(&self, at: Mono) -> Now {
        at.0.saturating_sub(self.zero.0)
    }

    /// A new grid (a reload changed the carrier interval).
    pub fn set_grid(&mut self, grid: Duration) {
        self.grid = grid;
    }

    pub fn grid(&self) -> Duration {
        self.grid
    }

    /// The first grid point at or after `t`.
    pub fn ceil(&self, t: Now) -> Now {
        grid_ceil(t, self.grid)
    }

    /// The CLOCK_MONOTONIC instant of the core's time `t`.
    pub fn mono(&self, t: Now) -> Mono {
        Mono(self.zero.0 + t)
    }

    /// The std `Instant` of the core's time `t` (what the prober, which
    /// runs on the core's snapped time, is given).
    pub fn instant(&self, t: Now) -> std::time::Instant {
        self.zero_std + t
    }

    /// The std `Instant` of `at` itself, not snapped (for the bond member
    /// prober, which stamps its probes with the time they really left).
    pub fn instant_at(&self, at: Mono) -> std::time::Instant {
        self.zero_std + at.0.saturating_sub(self.zero.0)
    }
}

/// The first multiple of `grid` at or after `t`.
pub(super) fn grid_ceil(t: Duration, grid: Duration) -> Duration {
    let g = grid.as_nanos().max(1);
    let n = t.as_nanos().div_ceil(g);
    Duration::from_nanos((n * g) as u64)
}

/// The loop's time `t` as the core and the prober see it: less than half a
/// grid step past a grid point counts as that grid point. The loop wakes
/// for timers on grid points, always a little late (wake-up latency); seen
/// as late, a probe sent there would be due a little after the grid point
/// it was meant for, and wait for the next one: every fast probe and every
/// timeout one step (4 ms) late. Monotonic in `t`.
fn snap(t: Duration, grid: Duration) -> Duration {
    let g = grid.as_nanos().max(1);
    let n = t.as_nanos();
    let floor = n / g * g;
    if n - floor < g / 2 {
        Duration::from_nanos(floor as u64)
    } else {
        t
    }
}

/// The loop's one timer: a timerfd on CLOCK_MONOTONIC set to the absolute
/// instant of the next wake-up. Unlike a tokio `Sleep` made anew on every
/// turn, re-arming it costs one system call and nothing else, and it never
/// wakes the thread early (tokio's timer wheel wakes to move a timer more
/// than 64 ms away down a level, and re-registering a timer wakes the driver
/// through its eventfd).
pub(super) struct LoopTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    /// The instant it is armed for, if it has not expired since: arming it
    /// again for the same instant is skipped.
    armed: Option<Mono>,
}

impl LoopTimer {
    pub fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain timerfd_create(2).
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd: open, and the same fd while the AsyncFd lives.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)?
        };
        Ok(LoopTimer { fd, armed: None })
    }

    /// Complete at `at` (at once if it has passed, or if the timer already
    /// expired unseen: the caller then just looks again).
    pub async fn wait(&mut self, at: Mono) {
        use std::os::fd::AsRawFd;
        if self.armed != Some(at) {
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: at.0.as_secs() as libc::time_t,
                    // Never all zero, which would disarm it.
                    tv_nsec: at.0.subsec_nanos().max(1) as libc::c_long,
                },
            };
            // SAFETY: valid fd and a live itimerspec.
            let rc = unsafe {
                libc::timerfd_settime(
                    self.fd.as_raw_fd(),
                    libc::TFD_TIMER_ABSTIME,
                    &spec,
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                warn!(error = %std::io::Error::last_os_error(), "timerfd_settime failed; sleeping with tokio");
                sleep_until(at).await;
                return;
            }
            self.armed = Some(at);
        }
        // Edge-triggered: every expiry is a new readiness event, so the
        // expiry count is never read (one system call saved per wake-up).
        match self.fd.readable().await {
            Ok(mut guard) => {
                guard.clear_ready();
                self.armed = None;
            }
            Err(e) => {
                warn!(error = %e, "timerfd wait failed; sleeping with tokio");
                sleep_until(at).await;
            }
        }
    }
}

/// Sleep with tokio's timer until `at` (the fallback if the timerfd fails).
async fn sleep_until(at: Mono) {
    tokio::time::sleep(at.0.saturating_sub(monotonic_now())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_late_wake_counts_as_its_grid_point() {
        let g = us(4000);
        assert_eq!(snap(us(8000), g), us(8000));
        assert_eq!(snap(us(8050), g), us(8000), "50 us late");
        assert_eq!(snap(us(9999), g), us(8000));
        assert_eq!(snap(us(10_000), g), us(10_000), "half a step on: real time");
        assert_eq!(snap(us(11_900), g), us(11_900));
        assert_eq!(snap(us(12_001), g), us(12_000));
        // Monotonic across a grid point.
        assert!(snap(us(11_999), g) < snap(us(12_001), g));
        // What is scheduled 4 ms after a late wake lands on the next point.
        assert_eq!(grid_ceil(snap(us(8300), g) + us(4000), g), us(12_000));
        assert_eq!(
            grid_ceil(us(8300) + us(4000), g),
            us(16_000),
            "unsnapped: a step late"
        );
    }

    #[test]
    fn one_clock_for_every_input() {
        let g = us(4000);
        let mut c = Clock::start(g);
        assert_eq!(c.zero.0.as_nanos() % g.as_nanos(), 0, "zero on the grid");
        let zero = c.zero.0;
        let at = |t: Duration| Mono(zero + t);
        let (a, b, early) = (at(us(8050)), at(us(12_100)), at(us(4000)));
        assert_eq!(c.now(a), us(8000), "snapped");
        assert_eq!(c.mono(us(8000)), at(us(8000)));
        assert_eq!(c.instant(us(8000)) - c.instant(Duration::ZERO), us(8000));
        assert_eq!(
            c.instant_at(a) - c.instant(Duration::ZERO),
            us(8050),
            "not snapped"
        );
        assert_eq!(c.now(b), us(12_000));
        assert_eq!(
            c.now(early),
            us(12_000),
            "an input stamped before the last one handled does not move time back"
        );
    }
}
