//! The one event loop: adapters turn I/O into core events and core actions
//! into I/O. `run(config, shutdown)` is used by `main` and by the tests.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::api::{self, ApiRequest};
use crate::config::{Config, Family};
use crate::core::{Action, CarrierSource, Core, Event, RouteVia, UplinkId};
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::netlink::actuate::{Actuator, RTPROT_UPLINKD};
use crate::netlink::carrier::{
    monotonic_now, spawn_carrier_poller_hot, CarrierReader, CarrierSample, ReplyWatch,
};
use crate::netlink::monitor::spawn_monitor;
use crate::netlink::{sysctl, NetEvent, NetlinkError, RouteInfo};
use crate::probe::{ProbeUplink, Prober};
use crate::status::{Change, EventRecord};

/// The kernel's main routing table (RT_TABLE_MAIN, include/uapi/linux/rtnetlink.h).
const RT_TABLE_MAIN: u32 = 254;
/// How often the routes, rules and sysctls the agent owns are re-checked
/// even when no event said they changed.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// After a failed route change, wait this long before checking again, so a
/// persistent error does not spin.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("status socket {path}: {source}")]
    Api {
        path: String,
        source: std::io::Error,
    },
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Work for the actuation task; executed in order.
#[derive(Debug)]
enum Work {
    SetRoute {
        family: Family,
        uplink: UplinkId,
    },
    Flush {
        uplink: UplinkId,
        family: Family,
    },
    Refresh {
        uplink: UplinkId,
        family: Family,
    },
    Verify {
        family: Family,
        delay: Duration,
    },
    /// (Re)install per-uplink tables, rules, kernel fallback routes, sysctls.
    Ensure,
    /// A new configuration (SIGHUP): remove what the old one installed and
    /// the new one does not use, then work with the new one.
    Reconfigure(Box<Layout>, Vec<Stale>),
    /// Answer `Done::Barrier` once everything queued before is done.
    Barrier,
}

/// The configuration the actuation task works with, and each uplink's slot:
/// uplink `i` probes with mark `fwmark_base + slots[i]` through table
/// `table_base + slots[i]`. An uplink kept by a reload keeps its slot, so
/// its probes never pass through another uplink's table.
#[derive(Debug, Clone)]
struct Layout {
    cfg: Arc<Config>,
    slots: Vec<u32>,
    /// Counts reloads: a route read under an older layout names uplinks by
    /// their old indices and is ignored.
    gen: u64,
}

impl Layout {
    fn table(&self, i: UplinkId) -> u32 {
        self.cfg.agent.table_base + self.slots[i]
    }
    fn fwmark(&self, i: UplinkId) -> u32 {
        self.cfg.agent.fwmark_base + self.slots[i]
    }
    /// Tables `table_base .. table_base + table_span()` may be ours.
    fn table_span(&self) -> u32 {
        self.slots.iter().max().map_or(0, |m| m + 1)
    }
    /// What the agent installs besides the active route: per-uplink table
    /// routes and rules (family, slot), kernel fallback routes (family, metric).
    fn installed(&self) -> Vec<Stale> {
        let mut v = Vec::new();
        for (i, u) in self.cfg.uplinks.iter().enumerate() {
            for f in Family::ALL {
                if u.gateway(f).is_none() {
                    continue;
                }
                v.push(Stale::Slot(f, self.slots[i]));
                if self.cfg.agent.kernel_fallback {
                    v.push(Stale::Fallback(
                        f,
                        self.cfg.agent.route_metric + 1 + i as u32,
                    ));
                }
            }
        }
        v
    }
}

/// Something an older configuration installed that the current one does not use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stale {
    /// The probe table route and the rule of a slot.
    Slot(Family, u32),
    /// A kernel fallback route in the main table at this metric.
    Fallback(Family, u32),
}

/// Results of the actuation task, back to the loop.
#[derive(Debug)]
enum Done {
    Route {
        family: Family,
        via: RouteVia,
        gen: u64,
    },
    SetFailed {
        family: Family,
    },
    Barrier,
}

/// Shared with the actuation task: interface name -> ifindex as last seen.
type Ifindexes = Arc<std::sync::Mutex<HashMap<String, u32>>>;

/// A new, already validated configuration, and where to answer: what
/// changed, or why it was refused.
pub type ReloadRequest = (Config, oneshot::Sender<Result<String, String>>);

/// A status-line callback (see `RunOptions::on_status`).
pub type StatusFn = Box<dyn FnMut(&str) + Send>;

/// Options the binary (or a test) may set beyond the config.
#[derive(Default)]
pub struct RunOptions {
    /// Called once, after the first full netlink dump, when the first
    /// decision for every family has been made and applied to the kernel.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Called with a one-line summary ("ipv4 via primary, ipv6 via
    /// secondary") at ready and whenever the active uplinks change.
    pub on_status: Option<StatusFn>,
    /// Called on every loop turn (at least every second): a watchdog ping.
    pub on_alive: Option<Box<dyn FnMut() + Send>>,
    /// New, already validated configurations (SIGHUP): applied as a
    /// difference; the answer says what changed or why it was refused.
    pub reload: Option<mpsc::UnboundedReceiver<ReloadRequest>>,
}

/// Run the agent until `shutdown` completes. Must be called on a tokio
/// runtime on a thread in the server's network namespace.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    mut opts: RunOptions,
) -> Result<(), DaemonError> {
    // The loop's time zero sits on a multiple of the carrier interval of
    // CLOCK_MONOTONIC, as the poller thread's polls do: a wake-up of the loop
    // then comes with one of the poller's (one timer interrupt for both).
    let (start, start_mono) = {
        let every = config.probe.carrier_interval.as_nanos().max(1);
        let now = Instant::now();
        let mono = monotonic_now();
        let off = Duration::from_nanos((mono.as_nanos() % every) as u64);
        match now.checked_sub(off) {
            Some(s) => (s, mono - off),
            None => (now, mono),
        }
    };
    // The time the core and the prober see: snapped to the grid (see
    // `snap`), so a timer due on a grid point is due when the loop wakes
    // there, and what it schedules lands on grid points in turn.
    let snap_grid = std::cell::Cell::new(config.probe.carrier_interval);
    let now = || snap(start.elapsed(), snap_grid.get());
    let start_std = start.into_std();
    let now_std = || start_std + now();
    let mut cfg = Arc::new(config);
    let mut layout = Layout {
        cfg: cfg.clone(),
        slots: (0..cfg.uplinks.len() as u32).collect(),
        gen: 0,
    };
    let mut reload_rx = opts.reload.take();

    let (net_tx, mut net_rx) = mpsc::unbounded_channel();
    let _monitor = spawn_monitor(net_tx).await?;

    // The live carrier is polled every `carrier_interval` by a thread of
    // its own that does nothing else (one ETHTOOL_GLINK per interface per
    // poll) and wakes this loop only when something changed: a wake-up of
    // this loop costs several times the poll itself, and the loop has work
    // only when probes are due or answered. The loop also reads the carrier
    // itself at once when a link event arrives (whichever sees a loss first
    // wins).
    let ifnames = interfaces(&cfg);
    let mut carrier = CarrierReader::new(ifnames.clone())?;
    let (carrier_tx, mut carrier_rx) = mpsc::unbounded_channel();
    // Reply checks the poller makes for this loop while it sleeps (see
    // `ReplyWatch`): a probe round is then one wake-up, not two.
    let reply_watch = Arc::new(ReplyWatch::default());
    let mut watch_entries: Vec<(RawFd, Duration)> = Vec::new();
    let mut poller = CarrierPoller::start(
        ifnames,
        cfg.probe.carrier_interval,
        &reply_watch,
        carrier_tx.clone(),
    )?;
    // The grid the loop's timers are rounded up to, so that deadlines close
    // together share one wake-up; while probes are in flight the loop looks
    // for their replies once per grid step.
    let mut tick = cfg.probe.carrier_interval;

    let mut prober = Prober::new(probe_uplinks(&layout));
    // Probers replaced by a reload, polled until their probes are answered.
    let mut retired_probers: Vec<Prober> = Vec::new();
    // Bond members (src/bond.rs): their bonds polled, the active member set,
    // their gateways probed with ARP on the member itself.
    let bond_list: Vec<(String, Vec<String>)> = {
        let mut v: Vec<(String, Vec<String>)> = Vec::new();
        for u in cfg.uplinks.iter().filter(|u| u.bond.is_some()) {
            let b = u.bond.clone().unwrap_or_default();
            match v.iter_mut().find(|(n, _)| *n == b) {
                Some((_, m)) => m.push(u.interface.clone()),
                None => v.push((b, vec![u.interface.clone()])),
            }
        }
        v
    };
    let (bond_tx, mut bond_rx) = mpsc::unbounded_channel::<crate::netlink::BondSample>();
    let (bond_set_tx, bond_set_rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut members = crate::probe::MemberProber::new(
        cfg.uplinks
            .iter()
            .filter(|u| u.bond.is_some())
            .map(|u| crate::probe::MemberSpec {
                interface: u.interface.clone(),
                probe4: u.probe_address4,
                probe6: u.probe_address6,
            })
            .collect(),
    );
    let bond_io = |e: std::io::Error| DaemonError::Api {
        path: "bond netlink socket".into(),
        source: e,
    };
    let _bond_tasks = if bond_list.is_empty() {
        None
    } else {
        Some((
            AbortOnDropBond(
                crate::netlink::spawn_bond_poller(bond_list, BOND_POLL_EVERY, bond_tx)
                    .map_err(bond_io)?,
            ),
            AbortOnDropBond(crate::netlink::spawn_bond_actuator(bond_set_rx).map_err(bond_io)?),
        ))
    };

    let ifindexes: Ifindexes = Default::default();
    let (work_tx, work_rx) = mpsc::unbounded_channel::<Work>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let actuator = Actuator::new().await?;
    let actuation = tokio::spawn(actuate_loop(
        layout.clone(),
        actuator,
        ifindexes.clone(),
        work_rx,
        done_tx,
    ));
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _actuation = AbortOnDrop(actuation);
    let _ = work_tx.send(Work::Ensure);

    let (api_tx, mut api_rx) = mpsc::channel::<ApiRequest>(64);
    // Published changes go to the event stream, the metrics and the hooks.
    let metrics = Arc::new(Metrics::new(&cfg));
    let hooks = Hooks::start(&cfg.hooks, metrics.clone());
    let mut events = api::Events::new(api::EVENT_BACKLOG).with_outputs(metrics.clone(), hooks);
    let _metrics_http = match cfg.metrics.http {
        false => None,
        true => Some(
            crate::metrics::serve_http(cfg.metrics.listen, api_tx.clone(), metrics.clone())
                .await
                .map_err(|source| DaemonError::Metrics {
                    addr: cfg.metrics.listen,
                    source,
                })?,
        ),
    };
    let api_server = api::serve(&cfg, api_tx, events.clone(), metrics.clone())
        .await
        .map_err(|source| DaemonError::Api {
            path: cfg.agent.socket.display().to_string(),
            source,
        })?;

    let mut core = Core::new((*cfg).clone(), now());
    let mut seq: u64 = 0;
    let mut dumped = false;
    let mut admin: HashMap<String, bool> = HashMap::new();
    let mut ready = opts.on_ready.take();
    // The first decision's work was queued; READY once it is done.
    let mut barrier_sent = false;
    let mut shown: Option<(u64, Option<UplinkId>, Option<UplinkId>)> = None;
    // Actions of a reconfiguration, dispatched with the next events.
    let mut pre_actions: Vec<Action> = Vec::new();
    let mut reconcile_at = now() + RECONCILE_EVERY;
    let mut timer = LoopTimer::new().map_err(|e| DaemonError::Api {
        path: "timerfd".into(),
        source: e,
    })?;
    let mut samples = Vec::new();
    let mut outcomes = Vec::new();
    let mut events_in: Vec<Event> = Vec::new();
    tokio::pin!(shutdown);

    info!(
        uplinks = cfg.uplinks.len(),
        transits = cfg.transits.len(),
        "uplinkd started"
    );
    loop {
        // Wake on the grid: a core deadline between two grid points waits
        // for the next one (at most one step late), so timers close together
        // share a wake-up. Probes in flight are looked for at the next grid
        // point (their replies are read within one step, as the carrier is
        // polled); with nothing in flight and nothing due the loop sleeps.
        //
        // In the steady state (each socket with probes in flight has one,
        // and the core has a reply check for it) the loop does not wake to
        // read replies: the poller thread checks at each check's time that
        // a reply is queued and wakes the loop only if one is not; the
        // replies are read on the next wake-up (the next round). The core
        // counts a reply from its arrival (kernel timestamp), so reading it
        // late decides the same.
        let t = now();
        let mut wake = (t + MAX_SLEEP).min(reconcile_at);
        let others_in_flight =
            members.in_flight() > 0 || retired_probers.iter().any(|p| p.in_flight() > 0);
        let in_flight = others_in_flight || prober.in_flight() > 0;
        let (watching, deadline) = match in_flight && !others_in_flight && core.decided() {
            true => reply_checks(&core, &prober, start_mono, tick, &mut watch_entries),
            false => (false, core.next_deadline()),
        };
        if let Some(d) = deadline {
            wake = wake.min(grid_ceil(d, tick));
        }
        if watching {
            reply_watch.set(watch_entries.iter().copied());
        } else if in_flight {
            wake = wake.min(grid_ceil(t + Duration::from_nanos(1), tick));
        }
        // Reused: a turn allocates nothing for its events.
        events_in.clear();
        let mut read_carrier: Option<CarrierSource> = None;
        let mut ticked = false;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(s) = carrier_rx.recv() => {
                samples.push(s);
                while let Ok(s) = carrier_rx.try_recv() {
                    samples.push(s);
                }
                carrier_samples(&cfg, &ifindexes, &mut samples, CarrierSource::Poll, &mut events_in);
            }
            _ = timer.wait(start + wake) => ticked = true,
            _ = reply_watch.missing(), if watching => ticked = true,
            Some(b) = bond_rx.recv() => {
                members.update(&b);
                events_in.push(Event::Bond(b.status()));
            }
            Some(ev) = net_rx.recv() => {
                if handle_net(&cfg, layout.table_span(), &ifindexes, &mut admin, ev, &mut events_in, &work_tx, &mut dumped) {
                    // A link event for an uplink: read the live carrier now
                    // (whichever of event and poll sees a loss first wins; the
                    // event itself may describe an older state).
                    read_carrier = Some(CarrierSource::Netlink);
                }
            }
            Some(d) = done_rx.recv() => match d {
                Done::Route { family, via, gen } if gen == layout.gen => {
                    events_in.push(Event::DefaultRoute { family, via })
                }
                Done::Route { family, .. } => {
                    // Read under an older configuration: read again.
                    let _ = work_tx.send(Work::Verify { family, delay: Duration::ZERO });
                }
                Done::SetFailed { family } => {
                    let _ = work_tx.send(Work::Verify { family, delay: RETRY_AFTER });
                }
                Done::Barrier => {
                    if let Some(f) = ready.take() {
                        info!("first decision made and applied for every family: ready");
                        f();
                    }
                }
            },
            Some((new, reply)) = next_reload(&mut reload_rx) => {
                let t = now();
                match core.reconfigure(t, new) {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok((actions, summary)) => {
                        let old_layout = layout.clone();
                        cfg = Arc::new(core.config().clone());
                        layout = relayout(&old_layout, cfg.clone());
                        let stale: Vec<Stale> = {
                            let now_used = layout.installed();
                            old_layout
                                .installed()
                                .into_iter()
                                .filter(|s| !now_used.contains(s))
                                .collect()
                        };
                        let _ = work_tx.send(Work::Reconfigure(Box::new(layout.clone()), stale));
                        let _ = work_tx.send(Work::Ensure);
                        for f in Family::ALL {
                            let _ = work_tx.send(Work::Verify { family: f, delay: Duration::ZERO });
                        }
                        let new_probe = probe_uplinks(&layout);
                        if new_probe != probe_uplinks(&old_layout) {
                            let old = std::mem::replace(&mut prober, Prober::new(new_probe));
                            if old.in_flight() > 0 {
                                retired_probers.push(old);
                            }
                        }
                        let names = interfaces(&cfg);
                        match CarrierReader::new(names.clone()) {
                            Ok(c) => carrier = c,
                            Err(e) => error!(error = %e, "carrier reader not renewed"),
                        }
                        if names != poller.interfaces || cfg.probe.carrier_interval != tick {
                            match CarrierPoller::start(names, cfg.probe.carrier_interval, &reply_watch, carrier_tx.clone()) {
                                Ok(p) => poller = p,
                                Err(e) => error!(error = %e, "carrier poller not renewed"),
                            }
                        }
                        // Read every carrier on this turn: new uplinks learn theirs.
                        read_carrier = Some(CarrierSource::Poll);
                        tick = cfg.probe.carrier_interval;
                        snap_grid.set(tick);
                        metrics.reconfigure(&cfg);
                        if old_layout.cfg.hooks != cfg.hooks {
                            events = events
                                .clone()
                                .with_outputs(metrics.clone(), Hooks::start(&cfg.hooks, metrics.clone()));
                        }
                        api_server.set_uplinks(cfg.uplinks.iter().map(|u| u.name.clone()).collect());
                        shown = None;
                        pre_actions = actions;
                        events_in.push(Event::Tick);
                        let _ = reply.send(Ok(summary));
                    }
                }
            }
            Some(req) = api_rx.recv() => match req {
                ApiRequest::Status(reply) => { let _ = reply.send(core.status(now())); }
                ApiRequest::Drain { uplink, name, drained, reply } => {
                    // By name: a reload may have moved it since the lookup.
                    let id = match cfg.uplinks.get(uplink) {
                        Some(u) if u.name == name => Some(uplink),
                        _ => cfg.uplinks.iter().position(|u| u.name == name),
                    };
                    let _ = reply.send(match id {
                        Some(uplink) => {
                            events_in.push(Event::Drain { uplink, drained });
                            Ok(())
                        }
                        None => Err(format!("no uplink named {name:?} (removed by a reload)")),
                    });
                }
                ApiRequest::Reprobe(reply) => {
                    events_in.push(Event::Reprobe);
                    let _ = reply.send(Ok(()));
                }
            },
        }
        if watching {
            reply_watch.clear();
        }
        if let Some(source) = read_carrier {
            carrier.read_changes(&mut samples);
            carrier_samples(&cfg, &ifindexes, &mut samples, source, &mut events_in);
        }
        if ticked {
            if poller.thread.is_finished() {
                error!("the carrier poller thread ended; starting it again");
                match CarrierPoller::start(interfaces(&cfg), tick, &reply_watch, carrier_tx.clone())
                {
                    Ok(p) => poller = p,
                    Err(e) => error!(error = %e, "carrier poller not restarted"),
                }
            }
            prober.poll(now_std(), &mut outcomes);
            for old in &mut retired_probers {
                old.poll(now_std(), &mut outcomes);
            }
            retired_probers.retain(|p| p.in_flight() > 0);
            members.poll(std::time::Instant::now(), &mut outcomes);
            for (id, outcome) in outcomes.drain(..) {
                events_in.push(Event::ProbeDone { id, outcome });
            }
            if core.next_deadline().is_some_and(|d| d <= now()) {
                events_in.push(Event::Tick);
            }
        }
        if !events_in.is_empty() || !pre_actions.is_empty() {
            for ev in &events_in {
                if let Event::ProbeDone { id, outcome } = ev {
                    metrics.probe_done(*id, outcome);
                }
            }
            let handled = core.handle_all(now(), events_in.drain(..));
            for action in std::mem::take(&mut pre_actions).into_iter().chain(handled) {
                match action {
                    Action::Probe(req) => {
                        metrics.probe_sent(&req);
                        let u = &cfg.uplinks[req.uplink];
                        if u.bond.is_some() {
                            let gw = u.gateway(req.family);
                            members.send(&u.interface, gw, req)
                        } else {
                            prober.send(now_std(), req)
                        }
                    }
                    Action::SetBondActive { bond, uplink } => {
                        let _ = bond_set_tx.send((bond, cfg.uplinks[uplink].interface.clone()));
                    }
                    Action::SetDefaultRoute { family, uplink } => {
                        let _ = work_tx.send(Work::SetRoute { family, uplink });
                    }
                    Action::FlushNeighbours { uplink, family } => {
                        let _ = work_tx.send(Work::Flush { uplink, family });
                    }
                    Action::RefreshNeighbour { uplink, family } => {
                        let _ = work_tx.send(Work::Refresh { uplink, family });
                    }
                    Action::VerifyRoute { family } => {
                        let _ = work_tx.send(Work::Verify {
                            family,
                            delay: Duration::ZERO,
                        });
                    }
                    Action::Report(change) => {
                        seq += 1;
                        publish(&events, seq, change);
                    }
                }
            }
        }
        if now() >= reconcile_at {
            reconcile_at = now() + RECONCILE_EVERY;
            let _ = work_tx.send(Work::Ensure);
            for f in Family::ALL {
                let _ = work_tx.send(Work::Verify {
                    family: f,
                    delay: Duration::ZERO,
                });
            }
        }
        if core.decided() && dumped && !barrier_sent {
            // READY once the first decision's route changes are done.
            barrier_sent = true;
            let _ = work_tx.send(Work::Barrier);
        }
        if let Some(f) = opts.on_status.as_mut().filter(|_| barrier_sent) {
            let key = (layout.gen, core.active(Family::V4), core.active(Family::V6));
            if shown != Some(key) {
                shown = Some(key);
                let line = Family::ALL
                    .iter()
                    .map(|fam| match core.active(*fam) {
                        Some(a) => format!("{fam} via {}", cfg.uplinks[a].name),
                        None => format!("{fam}: no route"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                f(&line);
            }
        }
        poller.follow(&cfg, &core);
        if let Some(f) = opts.on_alive.as_mut() {
            f();
        }
    }
    info!("uplinkd stopping; routes are left as they are");
    Ok(())
}

/// Log one change in the one structured format, and publish it.
fn publish(events: &api::Events, seq: u64, change: Change) {
    let record = EventRecord {
        seq,
        time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        change,
    };
    let json = serde_json::to_string(&record).unwrap_or_default();
    let kind = json
        .split("\"kind\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("?")
        .to_string();
    match &record.change {
        Change::FailStatic { active: true, .. } => {
            error!(seq, kind = %kind, event = %json, "no usable uplink: failing static")
        }
        Change::ActiveChanged { .. }
        | Change::UplinkHealth { .. }
        | Change::RouteRestored { .. }
        | Change::Damped { .. } => warn!(seq, kind = %kind, event = %json, "state change"),
        _ => info!(seq, kind = %kind, event = %json, "state change"),
    }
    events.publish(record);
}

fn route_via(cfg: &Config, ifindexes: &Ifindexes, r: &RouteInfo) -> RouteVia {
    let map = ifindexes.lock().unwrap();
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if u.gateway(r.family).is_some()
            && r.gateway == u.gateway(r.family)
            && r.oif.is_some()
            && r.oif == map.get(u.route_interface()).copied()
        {
            return RouteVia::Uplink(i);
        }
    }
    RouteVia::Foreign(format!(
        "route via {} ifindex {}",
        r.gateway.map_or("-".to_string(), |g| g.to_string()),
        r.oif.map_or("-".to_string(), |o| o.to_string())
    ))
}

#[allow(clippy::too_many_arguments)]
fn handle_net(
    cfg: &Config,
    table_span: u32,
    ifindexes: &Ifindexes,
    admin: &mut HashMap<String, bool>,
    ev: NetEvent,
    out: &mut Vec<Event>,
    work: &mpsc::UnboundedSender<Work>,
    dumped: &mut bool,
) -> bool {
    match ev {
        NetEvent::Link(l) => {
            let managed = cfg.uplinks.iter().any(|u| u.interface == l.name);
            if !managed {
                return false;
            }
            let old = ifindexes.lock().unwrap().insert(l.name.clone(), l.ifindex);
            let usable = l.admin_up && l.carrier;
            let was_usable = admin.insert(l.name.clone(), usable);
            if old != Some(l.ifindex) || (usable && was_usable != Some(true)) {
                // New or re-created interface, or it came up (the kernel drops
                // routes through a link that goes down): re-install ours.
                let _ = work.send(Work::Ensure);
            }
            return true;
        }
        NetEvent::LinkRemoved { name, .. } => {
            ifindexes.lock().unwrap().remove(&name);
            for (i, u) in cfg.uplinks.iter().enumerate() {
                if u.interface == name {
                    out.push(Event::Carrier {
                        uplink: i,
                        up: false,
                        present: false,
                        source: CarrierSource::Netlink,
                    });
                }
            }
        }
        NetEvent::Route { route, removed } => {
            if route.dst_len != 0 {
                return false;
            }
            let n = cfg.uplinks.len() as u32;
            let metric = cfg.agent.route_metric;
            let ours_elsewhere = (route.table >= cfg.agent.table_base
                && route.table < cfg.agent.table_base + table_span)
                || (route.table == RT_TABLE_MAIN
                    && route.metric > metric
                    && route.metric <= metric + n);
            if ours_elsewhere && removed {
                let _ = work.send(Work::Ensure);
            }
            if route.table == RT_TABLE_MAIN && route.metric == metric && *dumped {
                let via = if removed {
                    RouteVia::Absent
                } else {
                    route_via(cfg, ifindexes, &route)
                };
                out.push(Event::DefaultRouteHint {
                    family: route.family,
                    via,
                });
            }
        }
        NetEvent::Resync => {
            warn!("netlink events were lost (overrun): re-reading links and routes");
        }
        NetEvent::DumpDone => {
            *dumped = true;
            let _ = work.send(Work::Ensure);
            for f in Family::ALL {
                let _ = work.send(Work::Verify {
                    family: f,
                    delay: Duration::ZERO,
                });
            }
        }
        NetEvent::Failed { error } => {
            error!(%error, "netlink monitor failed; relying on the carrier poll and periodic checks");
        }
    }
    false
}

/// The first multiple of `grid` at or after `t`.
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

/// The loop sleeps at most this long, whatever is due (the watchdog is
/// pinged from the loop).
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The loop's one timer: a timerfd set to the absolute instant of the next
/// wake-up. Unlike a tokio `Sleep` made anew on every turn, re-arming it
/// costs one system call and nothing else, and it never wakes the thread
/// early (tokio's timer wheel wakes to move a timer more than 64 ms away
/// down a level, and re-registering a timer wakes the driver through its
/// eventfd).
struct LoopTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    armed: Option<Instant>,
    /// `Instant` and CLOCK_MONOTONIC read together at the start.
    base: (Instant, Duration),
}

impl LoopTimer {
    fn new() -> std::io::Result<Self> {
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
        Ok(LoopTimer {
            fd,
            armed: None,
            base: (Instant::now(), monotonic_now()),
        })
    }

    /// Complete at `at` (at once if it has passed, or if the timer already
    /// expired unseen: the caller then just looks again).
    async fn wait(&mut self, at: Instant) {
        use std::os::fd::AsRawFd;
        if self.armed != Some(at) {
            let mono = self.base.1 + at.saturating_duration_since(self.base.0);
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: mono.as_secs() as libc::time_t,
                    // Never all zero, which would disarm it.
                    tv_nsec: mono.subsec_nanos().max(1) as libc::c_long,
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
                tokio::time::sleep_until(at).await;
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
                tokio::time::sleep_until(at).await;
            }
        }
    }
}

/// The managed interfaces, sorted, each once.
fn interfaces(cfg: &Config) -> Vec<String> {
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
struct CarrierPoller {
    interfaces: Vec<String>,
    /// Bit i: `interfaces[i]` carries a default route (polled every interval).
    hot: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl CarrierPoller {
    /// Start polling `interfaces` every `every`, from the calling thread's
    /// network namespace; all hot until told otherwise.
    fn start(
        interfaces: Vec<String>,
        every: Duration,
        watch: &Arc<ReplyWatch>,
        tx: mpsc::UnboundedSender<CarrierSample>,
    ) -> Result<Self, NetlinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let hot = Arc::new(AtomicU64::new(u64::MAX));
        let thread = spawn_carrier_poller_hot(
            interfaces.clone(),
            every,
            (hot.clone(), COLD_EVERY),
            Some(watch.clone()),
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
    fn follow(&self, cfg: &Config, core: &Core) {
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
fn carrier_samples(
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
fn reply_checks(
    core: &Core,
    prober: &Prober,
    start_mono: Duration,
    tick: Duration,
    out: &mut Vec<(RawFd, Duration)>,
) -> (bool, Option<Duration>) {
    out.clear();
    let mut all = true;
    let mut first_check: Option<Duration> = None;
    let hard = core.reply_checks(&mut |uplink, family, kind, at| {
        first_check = Some(first_check.map_or(at, |c| c.min(at)));
        match prober.watch_fd(uplink, family, kind) {
            Some(fd) => out.push((fd, start_mono + grid_ceil(at, tick))),
            None => all = false,
        }
    });
    if all && out.len() == prober.in_flight() {
        (true, hard)
    } else {
        (false, hard.into_iter().chain(first_check).min())
    }
}

fn grid_ceil(t: Duration, grid: Duration) -> Duration {
    let g = grid.as_nanos().max(1);
    let n = t.as_nanos().div_ceil(g);
    Duration::from_nanos((n * g) as u64)
}

async fn actuate_loop(
    mut layout: Layout,
    act: Actuator,
    ifindexes: Ifindexes,
    mut rx: mpsc::UnboundedReceiver<Work>,
    done: mpsc::UnboundedSender<Done>,
) {
    let metric = layout.cfg.agent.route_metric;
    while let Some(w) = rx.recv().await {
        let cfg = layout.cfg.clone();
        match w {
            Work::SetRoute { family, uplink } => {
                let u = &cfg.uplinks[uplink];
                let Some(gw) = u.gateway(family) else {
                    continue;
                };
                let idx = ifindex(&act, &ifindexes, u.route_interface()).await;
                let t0 = std::time::Instant::now();
                let res = match idx {
                    Some(idx) => {
                        act.replace_default_route(
                            family,
                            gw,
                            idx,
                            metric,
                            RT_TABLE_MAIN,
                            RTPROT_UPLINKD,
                        )
                        .await
                    }
                    None => Err(NetlinkError::Invalid {
                        op: format!(
                            "set {family} default route via {} ({})",
                            u.name, u.interface
                        ),
                        reason: "interface not found".into(),
                    }),
                };
                match res {
                    Ok(()) => info!(
                        family = %family, uplink = %u.name, gateway = %gw,
                        micros = t0.elapsed().as_micros() as u64,
                        "default route replaced"
                    ),
                    Err(e) => {
                        error!(error = %e, "route change failed; will check again");
                        let _ = done.send(Done::SetFailed { family });
                    }
                }
            }
            Work::Flush { uplink, family } => {
                let u = &cfg.uplinks[uplink];
                if let Some(idx) = ifindex(&act, &ifindexes, u.route_interface()).await {
                    match act.flush_neighbours(idx, family).await {
                        Ok(n) => {
                            debug!(uplink = %u.name, %family, flushed = n, "neighbours flushed")
                        }
                        Err(e) => warn!(error = %e, "neighbour flush failed"),
                    }
                }
            }
            Work::Refresh { uplink, family } => {
                let u = &cfg.uplinks[uplink];
                if let (Some(gw), Some(idx)) = (
                    u.gateway(family),
                    ifindex(&act, &ifindexes, u.route_interface()).await,
                ) {
                    match act.refresh_neighbour(idx, gw).await {
                        Ok(n) => debug!(uplink = %u.name, %gw, refreshed = n, "gateway neighbour"),
                        Err(e) => warn!(error = %e, "gateway neighbour refresh failed"),
                    }
                }
            }
            Work::Verify { family, delay } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match act.default_routes(family, RT_TABLE_MAIN).await {
                    Ok(routes) => {
                        let via = routes
                            .iter()
                            .find(|r| r.dst_len == 0 && r.metric == metric)
                            .map_or(RouteVia::Absent, |r| route_via(&cfg, &ifindexes, r));
                        let _ = done.send(Done::Route {
                            family,
                            via,
                            gen: layout.gen,
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "route dump failed; retrying");
                        let _ = done.send(Done::SetFailed { family });
                    }
                }
            }
            Work::Ensure => ensure(&layout, &act, &ifindexes).await,
            Work::Reconfigure(new, stale) => {
                layout = *new;
                remove_stale(&layout, &act, &stale).await;
            }
            Work::Barrier => {
                let _ = done.send(Done::Barrier);
            }
        }
    }
}

async fn ifindex(act: &Actuator, map: &Ifindexes, name: &str) -> Option<u32> {
    if let Some(i) = map.lock().unwrap().get(name).copied() {
        return Some(i);
    }
    match act.ifindex(name).await {
        Ok(Some(i)) => {
            map.lock().unwrap().insert(name.to_string(), i);
            Some(i)
        }
        _ => None,
    }
}

/// Install what the agent needs besides the active route; idempotent.
async fn ensure(layout: &Layout, act: &Actuator, ifindexes: &Ifindexes) {
    let cfg = &layout.cfg;
    let a = &cfg.agent;
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if let Err(e) = sysctl::uplink_sysctls(&u.interface) {
            debug!(error = %e, uplink = %u.name, "uplink sysctls not set (interface missing?)");
        }
        let Some(idx) = ifindex(act, ifindexes, u.route_interface()).await else {
            debug!(uplink = %u.name, "interface missing; will retry when it appears");
            continue;
        };
        for f in Family::ALL {
            let Some(gw) = u.gateway(f) else { continue };
            let mut results: Vec<(String, Result<(), NetlinkError>)> = vec![
                (
                    "probe table route".into(),
                    act.replace_default_route(
                        f,
                        gw,
                        idx,
                        a.route_metric,
                        layout.table(i),
                        RTPROT_UPLINKD,
                    )
                    .await,
                ),
                (
                    "probe rule".into(),
                    act.ensure_rule(f, layout.fwmark(i), layout.table(i), a.rule_priority)
                        .await,
                ),
            ];
            if a.kernel_fallback {
                results.push((
                    "kernel fallback route".into(),
                    act.replace_default_route(
                        f,
                        gw,
                        idx,
                        a.route_metric + 1 + i as u32,
                        RT_TABLE_MAIN,
                        RTPROT_UPLINKD,
                    )
                    .await,
                ));
            }
            for (what, r) in results {
                if let Err(e) = r {
                    warn!(uplink = %u.name, family = %f, error = %e, "{what} not installed");
                }
            }
        }
    }
}

/// The prober's view of each uplink under `layout`.
fn probe_uplinks(layout: &Layout) -> Vec<ProbeUplink> {
    layout
        .cfg
        .uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| ProbeUplink {
            interface: u.interface.clone(),
            fwmark: layout.fwmark(i),
        })
        .collect()
}

/// The layout for `cfg` after a reload from `old`: an uplink kept as it was
/// (same name, interface, gateways, bond) keeps its slot; others take the
/// lowest free ones.
fn relayout(old: &Layout, cfg: Arc<Config>) -> Layout {
    let kept: Vec<Option<u32>> = cfg
        .uplinks
        .iter()
        .map(|u| {
            old.cfg
                .uplinks
                .iter()
                .position(|o| o == u)
                .map(|i| old.slots[i])
        })
        .collect();
    let mut used: Vec<u32> = kept.iter().flatten().copied().collect();
    let slots = kept
        .into_iter()
        .map(|k| {
            k.unwrap_or_else(|| {
                let free = (0..).find(|s| !used.contains(s)).unwrap_or(0);
                used.push(free);
                free
            })
        })
        .collect();
    Layout {
        cfg,
        slots,
        gen: old.gen + 1,
    }
}

/// Delete what an older configuration installed and `layout` does not use.
async fn remove_stale(layout: &Layout, act: &Actuator, stale: &[Stale]) {
    let a = &layout.cfg.agent;
    for s in stale {
        let r = match *s {
            Stale::Slot(f, slot) => {
                let table = a.table_base + slot;
                let r1 = act.delete_default_route(f, a.route_metric, table).await;
                let r2 = act
                    .delete_rule(f, a.fwmark_base + slot, table, a.rule_priority)
                    .await;
                r1.and(r2)
            }
            Stale::Fallback(f, metric) => act.delete_default_route(f, metric, RT_TABLE_MAIN).await,
        };
        match r {
            Ok(()) => debug!(?s, "removed what the old configuration installed"),
            Err(e) => {
                warn!(?s, error = %e, "could not remove what the old configuration installed")
            }
        }
    }
}

/// The next reload request, or never when there is no reload channel.
async fn next_reload(
    rx: &mut Option<mpsc::UnboundedReceiver<ReloadRequest>>,
) -> Option<ReloadRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How often managed bonds are read (driver's active member, settings).
const BOND_POLL_EVERY: Duration = Duration::from_millis(5);

struct AbortOnDropBond(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDropBond {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// For callers without a runtime: build a current-thread runtime and run.
pub fn run_blocking(
    config: Config,
    shutdown: impl Future<Output = ()>,
    opts: RunOptions,
) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(config, shutdown, opts))
}

#[cfg(test)]
mod tests {
    use super::{grid_ceil, snap};
    use std::time::Duration;

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
}
