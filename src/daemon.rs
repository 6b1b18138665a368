//! The one event loop: adapters turn I/O into core events and core actions
//! into I/O. `run(config, shutdown)` is used by `main` and by the tests.

use std::collections::HashMap;
use std::future::Future;
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
use crate::netlink::carrier::CarrierReader;
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
    Verify {
        family: Family,
        delay: Duration,
    },
    /// (Re)install per-uplink tables, rules, kernel fallback routes, sysctls.
    Ensure,
}

/// Results of the actuation task, back to the loop.
#[derive(Debug)]
enum Done {
    Route { family: Family, via: RouteVia },
    SetFailed { family: Family },
}

/// Shared with the actuation task: interface name -> ifindex as last seen.
type Ifindexes = Arc<std::sync::Mutex<HashMap<String, u32>>>;

/// Options the binary (or a test) may set beyond the config.
#[derive(Default)]
pub struct RunOptions {
    /// Called once when the first decision for every family has been made.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Called on every loop turn (at least every second): a watchdog ping.
    pub on_alive: Option<Box<dyn FnMut() + Send>>,
    /// New, already validated configurations (SIGHUP): applied as a
    /// difference; the answer says what changed or why it was refused.
    pub reload: Option<mpsc::UnboundedReceiver<(Config, oneshot::Sender<Result<String, String>>)>>,
}

/// Run the agent until `shutdown` completes. Must be called on a tokio
/// runtime on a thread in the server's network namespace.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    mut opts: RunOptions,
) -> Result<(), DaemonError> {
    let start = Instant::now();
    let now = || start.elapsed();
    let cfg = Arc::new(config);

    let (net_tx, mut net_rx) = mpsc::unbounded_channel();
    let _monitor = spawn_monitor(net_tx).await?;

    // The live carrier is read on the loop's own tick (no thread of its
    // own): on this class of machine every wake-up costs ~20 µs of CPU, so
    // the loop wakes once per tick for everything (carrier, probe replies,
    // timers) instead of once per event.
    let mut ifnames: Vec<String> = cfg.uplinks.iter().map(|u| u.interface.clone()).collect();
    ifnames.sort();
    ifnames.dedup();
    let mut carrier = CarrierReader::new(ifnames)?;
    let tick = cfg.probe.carrier_interval;

    let mut prober = Prober::new(
        cfg.uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| ProbeUplink {
                interface: u.interface.clone(),
                fwmark: cfg.fwmark_of(i),
            })
            .collect(),
    );
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
    let (bond_tx, mut bond_rx) = mpsc::unbounded_channel::<crate::bond::BondSample>();
    let (bond_set_tx, bond_set_rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut members = crate::bond::MemberProber::new(
        cfg.uplinks
            .iter()
            .filter(|u| u.bond.is_some())
            .map(|u| crate::bond::MemberSpec {
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
                crate::bond::spawn_bond_poller(bond_list, BOND_POLL_EVERY, bond_tx)
                    .map_err(bond_io)?,
            ),
            AbortOnDropBond(crate::bond::spawn_bond_actuator(bond_set_rx).map_err(bond_io)?),
        ))
    };

    let ifindexes: Ifindexes = Default::default();
    let (work_tx, work_rx) = mpsc::unbounded_channel::<Work>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let actuator = Actuator::new().await?;
    let actuation = tokio::spawn(actuate_loop(
        cfg.clone(),
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
    let events = api::Events::new(api::EVENT_BACKLOG).with_outputs(metrics.clone(), hooks);
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
    let _api = api::serve(&cfg, api_tx, events.clone(), metrics.clone())
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
    let mut reconcile_at = now() + RECONCILE_EVERY;
    let mut next_tick = now();
    let mut samples = Vec::new();
    let mut outcomes = Vec::new();
    tokio::pin!(shutdown);

    info!(
        uplinks = cfg.uplinks.len(),
        transits = cfg.transits.len(),
        "uplinkd started"
    );
    loop {
        // Wake on the tick grid: a core deadline between two ticks waits
        // for the next one (at most one tick late), so timers cost no wakes.
        let wake = match core.next_deadline() {
            Some(d) if d < next_tick => next_tick.min(grid_ceil(d, tick)),
            _ => next_tick,
        }
        .min(reconcile_at);
        let mut events_in: Vec<Event> = Vec::new();
        let mut read_carrier: Option<CarrierSource> = None;
        let mut ticked = false;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(start + wake) => ticked = true,
            Some(b) = bond_rx.recv() => {
                members.update(&b);
                events_in.push(Event::Bond(b.status()));
            }
            Some(ev) = net_rx.recv() => {
                if handle_net(&cfg, &ifindexes, &mut admin, ev, &mut events_in, &work_tx, &mut dumped) {
                    // A link event for an uplink: read the live carrier now
                    // (whichever of event and poll sees a loss first wins; the
                    // event itself may describe an older state).
                    read_carrier = Some(CarrierSource::Netlink);
                }
            }
            Some(d) = done_rx.recv() => match d {
                Done::Route { family, via } => events_in.push(Event::DefaultRoute { family, via }),
                Done::SetFailed { family } => {
                    let _ = work_tx.send(Work::Verify { family, delay: RETRY_AFTER });
                }
            },
            Some(req) = api_rx.recv() => match req {
                ApiRequest::Status(reply) => { let _ = reply.send(core.status(now())); }
                ApiRequest::Drain { uplink, drained, reply } => {
                    events_in.push(Event::Drain { uplink, drained });
                    let _ = reply.send(Ok(()));
                }
                ApiRequest::Reprobe(reply) => {
                    events_in.push(Event::Reprobe);
                    let _ = reply.send(Ok(()));
                }
            },
        }
        if ticked && now() >= next_tick {
            next_tick += tick;
            if next_tick < now() {
                // Fell behind (suspended, starved): skip, do not burst.
                next_tick = grid_ceil(now(), tick);
            }
            read_carrier = Some(CarrierSource::Poll);
        }
        if let Some(source) = read_carrier {
            carrier.read_changes(&mut samples);
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
        if ticked {
            prober.poll(std::time::Instant::now(), &mut outcomes);
            members.poll(std::time::Instant::now(), &mut outcomes);
            for (id, outcome) in outcomes.drain(..) {
                events_in.push(Event::ProbeDone { id, outcome });
            }
            if core.next_deadline().is_some_and(|d| d <= now()) {
                events_in.push(Event::Tick);
            }
        }
        for ev in events_in {
            if let Event::ProbeDone { id, outcome } = &ev {
                metrics.probe_done(*id, outcome);
            }
            let t = now();
            for action in core.handle(t, ev) {
                match action {
                    Action::Probe(req) => {
                        metrics.probe_sent(&req);
                        let u = &cfg.uplinks[req.uplink];
                        if u.bond.is_some() {
                            let gw = u.gateway(req.family);
                            members.send(&u.interface, gw, req)
                        } else {
                            prober.send(std::time::Instant::now(), req)
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
        if core.decided() {
            if let Some(f) = ready.take() {
                info!("first decision made for every family: ready");
                f();
            }
        }
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

fn handle_net(
    cfg: &Config,
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
                && route.table < cfg.agent.table_base + n)
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
fn grid_ceil(t: Duration, grid: Duration) -> Duration {
    let g = grid.as_nanos().max(1);
    let n = t.as_nanos().div_ceil(g);
    Duration::from_nanos((n * g) as u64)
}

async fn actuate_loop(
    cfg: Arc<Config>,
    act: Actuator,
    ifindexes: Ifindexes,
    mut rx: mpsc::UnboundedReceiver<Work>,
    done: mpsc::UnboundedSender<Done>,
) {
    let metric = cfg.agent.route_metric;
    while let Some(w) = rx.recv().await {
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
                        let _ = done.send(Done::Route { family, via });
                    }
                    Err(e) => {
                        warn!(error = %e, "route dump failed; retrying");
                        let _ = done.send(Done::SetFailed { family });
                    }
                }
            }
            Work::Ensure => ensure(&cfg, &act, &ifindexes).await,
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
async fn ensure(cfg: &Config, act: &Actuator, ifindexes: &Ifindexes) {
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
                        cfg.table_of(i),
                        RTPROT_UPLINKD,
                    )
                    .await,
                ),
                (
                    "probe rule".into(),
                    act.ensure_rule(f, cfg.fwmark_of(i), cfg.table_of(i), a.rule_priority)
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
