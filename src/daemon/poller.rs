//! The carrier poller thread as the loop uses it: which interfaces it polls
//! hot, its samples turned into core events, and the reply checks it makes
//! while the loop sleeps.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::actuation::Ifindexes;
use super::clock::Clock;
use crate::config::{Config, Family};
use crate::core::ProbeKind;
use crate::core::{CarrierSource, Core, Event};
use crate::netlink::carrier::{spawn_carrier_poller_hot, CarrierSample, ReplyWatch, TickHook};
use crate::netlink::counters::{CounterSample, CounterTap};
use crate::netlink::NetlinkError;
use crate::probe::echo_stream::EchoStreams;
use crate::probe::{EchoProber, Prober};

/// The managed interfaces, sorted, each once.
pub(super) fn interfaces(cfg: &Config) -> Vec<String> {
    let mut v: Vec<String> = cfg.uplinks.iter().map(|u| u.interface.clone()).collect();
    v.sort();
    v.dedup();
    v
}

/// The interfaces that carry no default route are polled every this many
/// carrier intervals (100 ms with the default 4 ms); their link events are
/// still read at once.
const COLD_EVERY: u32 = 25;

/// The carrier poller thread; stopped when dropped (it ends within one
/// poll interval).
pub(super) struct CarrierPoller {
    /// The interfaces polled, in the order of the bits of `hot`.
    pub interfaces: Vec<String>,
    /// Bit i: `interfaces[i]` carries a default route (polled every interval).
    hot: Arc<AtomicU64>,
    /// Set on drop: the thread ends within one poll interval.
    stop: Arc<AtomicBool>,
    /// Watched for an unexpected end (restarted then).
    pub thread: std::thread::JoinHandle<()>,
}

impl CarrierPoller {
    /// Start polling `interfaces` every `every`, from the calling thread's
    /// network namespace; all hot until told otherwise.
    pub fn start(
        interfaces: Vec<String>,
        every: Duration,
        watch: &Arc<ReplyWatch>,
        counters: &Arc<CounterTap>,
        echo: &Arc<EchoStreams>,
        tx: mpsc::UnboundedSender<CarrierSample>,
    ) -> Result<Self, NetlinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let hot = Arc::new(AtomicU64::new(u64::MAX));
        let thread = spawn_carrier_poller_hot(
            interfaces.clone(),
            every,
            (hot.clone(), COLD_EVERY),
            Some(watch.clone()),
            vec![counters.clone() as Arc<dyn TickHook>, echo.clone()],
            tx,
            stop.clone(),
        )?;
        Ok(CarrierPoller {
            interfaces,
            hot,
            stop,
            thread,
        })
    }

    /// Poll every interval the interfaces of the active uplinks; all of them
    /// while a family has none (not decided yet).
    pub fn follow(&self, cfg: &Config, core: &Core) {
        let mut mask = 0u64;
        for f in Family::ALL {
            if cfg.uplinks.iter().all(|u| u.gateway(f).is_none()) {
                continue;
            }
            let Some(a) = core.active(f) else {
                mask = u64::MAX;
                break;
            };
            if let Some(i) = self
                .interfaces
                .iter()
                .position(|n| *n == cfg.uplinks[a].interface)
            {
                mask |= 1u64.checked_shl(i as u32).unwrap_or(0);
            }
        }
        if mask == 0 {
            mask = u64::MAX;
        }
        self.hot.store(mask, Ordering::Relaxed);
    }
}

impl Drop for CarrierPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Turn carrier samples into core events (one per uplink on the interface).
pub(super) fn carrier_samples(
    cfg: &Config,
    ifindexes: &Ifindexes,
    samples: &mut Vec<CarrierSample>,
    source: CarrierSource,
    events_in: &mut Vec<Event>,
) {
    for s in samples.drain(..) {
        if let Some(idx) = s.ifindex {
            ifindexes.lock().unwrap().insert(s.interface.clone(), idx);
        }
        for (i, u) in cfg.uplinks.iter().enumerate() {
            if u.interface == s.interface {
                events_in.push(Event::Carrier {
                    uplink: i,
                    up: s.carrier,
                    present: s.present,
                    source,
                });
            }
        }
    }
}

/// The reply checks of the probes in flight as (socket, due time on
/// CLOCK_MONOTONIC) in `out`, and whether they can be watched: every probe
/// in flight has one on a socket of its own (see `Prober::watch_fd`). With
/// the core's next deadline: if watched, the one that comes due even if the
/// replies are in; otherwise `Core::next_deadline` (from the same scan).
pub(super) fn reply_checks(
    core: &Core,
    prober: &Prober,
    echo: &EchoProber,
    clock: &Clock,
    out: &mut Vec<(RawFd, Duration)>,
) -> (bool, Option<Duration>) {
    out.clear();
    let mut all = true;
    let mut first_check: Option<Duration> = None;
    let hard = core.reply_checks(&mut |uplink, family, kind, at| {
        first_check = Some(first_check.map_or(at, |c| c.min(at)));
        let fd = match kind {
            ProbeKind::Echo => echo.watch_fd(uplink, family),
            _ => prober.watch_fd(uplink, family, kind),
        };
        match fd {
            Some(fd) => out.push((fd, clock.mono(clock.ceil(at)).0)),
            None => all = false,
        }
    });
    if all && out.len() == prober.in_flight() + echo.in_flight() {
        (true, hard)
    } else {
        (false, hard.into_iter().chain(first_check).min())
    }
}

/// The counters are read every this many carrier ticks (16 ms with the
/// default 4 ms): often enough for the suspicion window (40 ms), and the
/// cost stays small (see `CounterTap::cost`, logged at exit).
pub(super) const COUNTERS_EVERY: u32 = 4;

/// The interfaces whose packet counters the suspicion rules read: each
/// uplink's own (a bond member's, for a member).
pub(super) fn counter_interfaces(cfg: &Config) -> Vec<String> {
    interfaces(cfg)
}

/// Counter readings into core events, naming the uplinks by index.
pub(super) fn counter_samples(
    cfg: &Config,
    clock: &Clock,
    samples: &mut Vec<CounterSample>,
    events_in: &mut Vec<Event>,
) {
    for s in samples.drain(..) {
        let links = s
            .links
            .iter()
            .flat_map(|(name, l)| {
                cfg.uplinks
                    .iter()
                    .enumerate()
                    .filter(move |(_, u)| u.interface == *name)
                    .map(move |(i, _)| (i, *l))
            })
            .collect();
        events_in.push(Event::Counters(crate::core::suspicion::Counters {
            at: clock.reading(super::clock::Mono(s.at)),
            tcp: s.tcp,
            links,
        }));
    }
}
