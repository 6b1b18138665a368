//! The daemon's state, with one method per source of input. Each input is
//! handled at the instant it happened (see `clock`); `end_turn` then hands
//! the turn's events to the core and carries out what it decides.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::actuation::{
    actuate_loop, dev_name, probe_uplinks, relayout, route_via, Done, Ifindexes, Layout, Sources,
    Stale, Work, RT_TABLE_MAIN,
};
use super::clock::{Clock, LoopTimer, Mono};
use super::persist::RunState;
use super::poller::{
    carrier_samples, counter_interfaces, counter_samples, interfaces, reply_checks, CarrierPoller,
    COUNTERS_EVERY,
};
use crate::netlink::counters::{CounterSample, CounterTap, OwnFrames};
use crate::probe::unreach::Unreachable;

/// Sets the flag when dropped: threads watching it end.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
use super::retry::Retries;
use super::{DaemonError, ReloadRequest, RunOptions, StatusFn};
use crate::api::{self, ApiRequest};
use crate::config::{AgentMode, Config, Family};
use crate::core::{Action, CarrierSource, Core, Event, Now, ProbeId, ProbeOutcome, UplinkId};
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::netlink::actuate::{protocol_name, Actuator, RTPROT_KERNEL, RTPROT_UPLINKD};
use crate::netlink::carrier::{CarrierReader, CarrierSample, ReplyWatch};
use crate::netlink::monitor::{spawn_monitor, MonitorHandle};
use crate::netlink::BondSample;
use crate::netlink::NetEvent;
use crate::probe::echo_stream::{EchoStreams, Source, StreamNews};
use crate::probe::{EchoProber, Prober};
use crate::probe::{MemberProber, MemberSpec};
use crate::status::{Change, CompetingRoute, EventRecord, Level};
use crate::task::AbortOnDrop;

/// How often the routes, rules and sysctls the agent owns are re-checked
/// even when no event said they changed.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// The loop sleeps at most this long, whatever is due (the watchdog is
/// pinged from the loop).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A bond member's (probe MAC, gateway's MAC learned on it).
type MemberMacs = ([u8; 6], [u8; 6]);

/// How often managed bonds are read (driver's active member, settings).
const BOND_POLL_EVERY: Duration = Duration::from_millis(5);

/// What the loop waits on, apart from the state, so that waiting on one
/// and handling what it brings borrow separate things.
pub(super) struct Inputs {
    /// Carrier samples from the poller thread (sent on change only).
    pub carrier: mpsc::UnboundedReceiver<CarrierSample>,
    /// Links and routes from the netlink monitor.
    pub net: mpsc::UnboundedReceiver<NetEvent>,
    /// Managed bonds as the bond poller reads them.
    pub bond: mpsc::UnboundedReceiver<BondSample>,
    /// ICMP unreachables quoting our packets (see `probe::unreach`).
    pub unreach: mpsc::UnboundedReceiver<Unreachable>,
    /// Results of the actuation task.
    pub done: mpsc::UnboundedReceiver<Done>,
    /// Requests of the socket API and the metrics listener.
    pub api: mpsc::Receiver<ApiRequest>,
    /// New configurations (SIGHUP), when the caller reloads.
    pub reload: Option<mpsc::UnboundedReceiver<ReloadRequest>>,
    /// The wake-up for the loop's own deadlines.
    pub timer: LoopTimer,
    /// Reply checks the poller thread makes while the loop sleeps; wakes
    /// the loop when a reply is missing.
    pub watch: Arc<ReplyWatch>,
    /// Counter readings for passive suspicion; woken when one could matter.
    pub counters: Arc<CounterTap>,
    /// The forwarding-plane echo streams; woken when one changes.
    pub echo: Arc<EchoStreams>,
}

/// When the loop wakes next, unless an input comes first.
pub(super) struct Plan {
    /// The instant the timer is set for.
    pub wake: Mono,
    /// The poller thread checks the replies in flight: wait on
    /// `Inputs::watch` as well.
    pub watching: bool,
}

pub(super) struct Daemon {
    /// Turns each input's instant into the core's time.
    clock: Clock,
    /// The core's time of the input being handled (set once per turn).
    now: Now,
    /// The configuration in force (replaced by a reload).
    cfg: Arc<Config>,
    /// Slots, tables and marks of the uplinks; the actuation task has a copy.
    layout: Layout,
    /// The decisions.
    core: Core,
    /// Reads the carrier at once when a link event or a reload asks.
    carrier: CarrierReader,
    /// For a poller started again (reload, or its thread ended).
    carrier_tx: mpsc::UnboundedSender<CarrierSample>,
    /// The thread polling the carrier every carrier interval.
    poller: CarrierPoller,
    /// Shared with the poller thread (see `Plan::watching`).
    watch: Arc<ReplyWatch>,
    /// The reply checks handed to the poller (reused every turn).
    watch_entries: Vec<(RawFd, Duration)>,
    /// Shared with the poller thread, which reads the counters every few ticks.
    counters: Arc<CounterTap>,
    /// The probes sent through each interface (the counter tap tells them
    /// from traffic).
    loop_frames: Arc<OwnFrames>,
    counter_samples: Vec<CounterSample>,
    /// Shared with the poller thread, which runs them on its tick.
    streams: Arc<EchoStreams>,
    stream_news: Vec<StreamNews>,
    /// The bond members' echo streams running, by (uplink, family), with
    /// the (probe MAC, gateway MAC) they were last given.
    member_streams: HashMap<(UplinkId, Family), Option<MemberMacs>>,
    /// Stops the unreachable listeners when the daemon ends.
    _unreach_stop: StopOnDrop,
    /// The reply watch was set for this turn: cleared once awake.
    watching: bool,
    /// Probes through the routed uplinks.
    prober: Prober,
    /// Probers replaced by a reload, polled until their probes are answered.
    retired_probers: Vec<Prober>,
    /// Forwarding-plane echoes through the routed uplinks' gateways.
    echo: EchoProber,
    /// Echo probers replaced by a reload, polled until their echoes are reported.
    retired_echo: Vec<EchoProber>,
    /// Probes through bond members (ARP/NS on the member itself).
    members: MemberProber,
    /// To the bond actuator: (bond, member to make active).
    bond_set_tx: mpsc::UnboundedSender<(String, String)>,
    /// To the actuation task; run in order.
    work_tx: mpsc::UnboundedSender<Work>,
    /// Interface name -> ifindex as last seen, shared with the actuation task.
    ifindexes: Ifindexes,
    /// Per managed interface: admin up with carrier, as the last link
    /// event said (an interface that comes up needs our routes again).
    usable: HashMap<String, bool>,
    /// The first full netlink dump is done: route events describe the
    /// kernel from then on.
    dumped: bool,
    /// The host's usable local addresses, by (ifindex, address), as the
    /// monitor reports them: where the service addresses are looked for.
    local: HashSet<(u32, IpAddr)>,
    /// Per family: the service address is present, shared with the
    /// actuation task (which gives the main table's routes that source only
    /// while it is).
    sources: Sources,
    /// Per family: other owners' default routes in the main table with a
    /// lower metric than ours, by (metric, gateway, oif); the first is
    /// the one the kernel uses, which the core is told about.
    competing: [BTreeMap<(u32, String), (CompetingRoute, crate::netlink::RouteInfo)>; 2],
    /// Events were lost: `competing` is being rebuilt by the re-dump, and
    /// the core is told again at its end.
    resyncing: bool,
    /// Failed route changes to check again, and which change is the latest.
    retries: Retries,
    /// When the routes, rules and sysctls are re-checked unasked.
    reconcile_at: Now,
    /// The first decision's route work was queued; READY once it is done.
    barrier_sent: bool,
    /// Called once, at READY.
    on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Called with the status line when it changes.
    on_status: Option<StatusFn>,
    /// Called on every turn: the watchdog ping.
    on_alive: Option<Box<dyn FnMut() + Send>>,
    /// (layout generation, active v4, active v6) last shown by `on_status`.
    shown: Option<(u64, Option<UplinkId>, Option<UplinkId>)>,
    /// Sequence number of the last published change.
    seq: u64,
    /// Observe mode: per family, the uplink the managed route would be on.
    /// Route reads are answered with it, so the core, whose decision the
    /// kernel does not follow, never tries to put its route back.
    observed: [Option<UplinkId>; 2],
    /// Drains and sequence numbers kept for the next start.
    run_state: RunState,
    /// The event stream, with the metrics and hooks behind it.
    events: api::Events,
    metrics: Arc<Metrics>,
    /// Told the uplinks' names after a reload.
    api_server: api::Server,
    /// Actions of a reconfiguration, carried out with the turn's others.
    pre_actions: Vec<Action>,
    /// This turn's events for the core (reused: a turn allocates nothing).
    events_in: Vec<Event>,
    /// Carrier samples being turned into events (reused).
    samples: Vec<CarrierSample>,
    /// Probe outcomes being turned into events (reused).
    outcomes: Vec<(ProbeId, ProbeOutcome)>,
    /// Read the live carrier at the end of this turn, as from this source.
    read_carrier: Option<CarrierSource>,
    /// Kept for their lifetime: the netlink monitor, the metrics listener,
    /// the actuation task and the bond poller and actuator.
    _monitor: MonitorHandle,
    _metrics_http: Option<crate::metrics::HttpServer>,
    _tasks: Vec<AbortOnDrop>,
}

impl Daemon {
    /// Open every adapter and start the tasks and threads; the first
    /// events come from the netlink dump and the first carrier polls.
    pub async fn start(
        config: Config,
        mut opts: RunOptions,
    ) -> Result<(Daemon, Inputs), DaemonError> {
        let mut clock = Clock::start(config.probe.carrier_interval);
        let cfg = Arc::new(config);
        let layout = Layout {
            cfg: cfg.clone(),
            slots: (0..cfg.uplinks.len() as u32).collect(),
            gen: 0,
        };
        let (net_tx, net_rx) = mpsc::unbounded_channel();
        let monitor = spawn_monitor(net_tx).await?;

        // The live carrier is polled every `carrier_interval` by a thread of
        // its own that does nothing else (one ETHTOOL_GLINK per interface per
        // poll) and wakes this loop only when something changed: a wake-up of
        // this loop costs several times the poll itself, and the loop has work
        // only when probes are due or answered. The loop also reads the carrier
        // itself at once when a link event arrives (whichever sees a loss first
        // wins).
        let ifnames = interfaces(&cfg);
        let carrier = CarrierReader::new(ifnames.clone())?;
        let (carrier_tx, carrier_rx) = mpsc::unbounded_channel();
        // Reply checks the poller makes for this loop while it sleeps (see
        // `ReplyWatch`): a probe round is then one wake-up, not two.
        let watch = Arc::new(ReplyWatch::default());
        // Opened here, on the loop's thread: the daemon's namespace.
        let counters = Arc::new(CounterTap::new(counter_interfaces(&cfg), COUNTERS_EVERY));
        let missing = counters.missing();
        if cfg.probe.suspicion && !missing.is_empty() {
            warn!(files = %missing.join(", "), "passive suspicion cannot read these counters; it goes without them");
        }
        // The forwarding-plane echo streams ride the same tick (see
        // `probe::echo_stream`); their sockets are opened by the thread,
        // which is in this namespace.
        let streams = Arc::new(EchoStreams::new(cfg.probe.carrier_interval));
        counters.set_own_tx(streams.frames());
        // The loop's probes, counted as it sends them (`act`): with the
        // echoes, what the uplinks send that is not traffic.
        let loop_frames = Arc::new(OwnFrames::default());
        counters.set_loop_tx(loop_frames.clone());
        streams.set_traffic(counters.traffic());
        let poller = CarrierPoller::start(
            ifnames,
            cfg.probe.carrier_interval,
            &watch,
            &counters,
            &streams,
            carrier_tx.clone(),
        )?;

        // ICMP unreachables quoting our packets, read by threads started
        // here (the daemon's namespace).
        let (unreach_tx, unreach_rx) = mpsc::unbounded_channel();
        let unreach_stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        if cfg.probe.suspicion {
            for (f, e) in crate::probe::unreach::spawn_listeners(unreach_tx, unreach_stop.0.clone())
            {
                warn!(family = f.name(), error = %e, "ICMP unreachables not watched (passive suspicion goes without them)");
            }
        }

        let mut tasks = Vec::new();
        // Bond members: their bonds polled, the active member set, their
        // gateways probed with ARP on the member itself.
        let mut bonds: Vec<(String, Vec<String>)> = Vec::new();
        for u in cfg.uplinks.iter().filter(|u| u.bond.is_some()) {
            let b = u.bond.clone().unwrap_or_default();
            match bonds.iter_mut().find(|(n, _)| *n == b) {
                Some((_, m)) => m.push(u.interface.clone()),
                None => bonds.push((b, vec![u.interface.clone()])),
            }
        }
        let (bond_tx, bond_rx) = mpsc::unbounded_channel();
        let (bond_set_tx, bond_set_rx) = mpsc::unbounded_channel();
        let members = MemberProber::new(
            cfg.uplinks
                .iter()
                .filter(|u| u.bond.is_some())
                .map(|u| MemberSpec {
                    interface: u.interface.clone(),
                    probe4: u.probe_address4,
                    probe6: u.probe_address6,
                })
                .collect(),
        );
        if !bonds.is_empty() {
            let bond_io = |e: std::io::Error| DaemonError::Api {
                path: "bond netlink socket".into(),
                source: e,
            };
            tasks.push(AbortOnDrop(
                crate::netlink::spawn_bond_poller(bonds, BOND_POLL_EVERY, bond_tx)
                    .map_err(bond_io)?,
            ));
            tasks.push(AbortOnDrop(
                crate::netlink::spawn_bond_actuator(bond_set_rx).map_err(bond_io)?,
            ));
        }

        let ifindexes: Ifindexes = Default::default();
        // Every configured service address is present at start, or no start.
        let sources: Sources = Default::default();
        if cfg.agent.source4.is_some() || cfg.agent.source6.is_some() {
            let host = crate::netlink::host::read().await?;
            let missing = crate::config::live::missing_sources(&cfg, &host);
            if !missing.is_empty() {
                return Err(DaemonError::Source(missing.join("; ")));
            }
            for f in Family::ALL {
                sources[f.index()].store(true, Ordering::Relaxed);
            }
        }
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let actuator = Actuator::new().await?;
        tasks.push(AbortOnDrop(tokio::spawn(actuate_loop(
            layout.clone(),
            actuator,
            ifindexes.clone(),
            sources.clone(),
            work_rx,
            done_tx,
        ))));
        let _ = work_tx.send(Work::Ensure);

        let (api_tx, api_rx) = mpsc::channel(64);
        // Published changes go to the event stream, the metrics and the hooks.
        let metrics = Arc::new(Metrics::new(&cfg));
        let hooks = Hooks::start(&cfg.hooks, metrics.clone());
        let events = api::Events::new(api::EVENT_BACKLOG).with_outputs(metrics.clone(), hooks);
        let metrics_http = match cfg.metrics.http {
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
        // Beside the socket, whose directory serving it made.
        let (run_state, last_seq) = RunState::open(&cfg.agent.socket);
        let timer = LoopTimer::new().map_err(|e| DaemonError::Api {
            path: "timerfd".into(),
            source: e,
        })?;

        let now = clock.now(Mono::now());
        let inputs = Inputs {
            carrier: carrier_rx,
            net: net_rx,
            bond: bond_rx,
            done: done_rx,
            api: api_rx,
            reload: opts.reload.take(),
            timer,
            watch: watch.clone(),
            counters: counters.clone(),
            echo: streams.clone(),
            unreach: unreach_rx,
        };
        let mut daemon = Daemon {
            clock,
            now,
            core: Core::new((*cfg).clone(), now),
            prober: Prober::new(probe_uplinks(&layout)),
            echo: EchoProber::new(probe_uplinks(&layout)),
            retired_echo: Vec::new(),
            cfg,
            layout,
            carrier,
            carrier_tx,
            poller,
            watch,
            watch_entries: Vec::new(),
            counters,
            loop_frames,
            counter_samples: Vec::new(),
            streams,
            stream_news: Vec::new(),
            member_streams: HashMap::new(),
            _unreach_stop: unreach_stop,
            watching: false,
            retired_probers: Vec::new(),
            members,
            bond_set_tx,
            work_tx,
            ifindexes,
            usable: HashMap::new(),
            dumped: false,
            local: HashSet::new(),
            sources,
            competing: Default::default(),
            resyncing: false,
            retries: Retries::default(),
            reconcile_at: now + RECONCILE_EVERY,
            barrier_sent: false,
            on_ready: opts.on_ready.take(),
            on_status: opts.on_status.take(),
            on_alive: opts.on_alive.take(),
            shown: None,
            seq: last_seq,
            observed: [None; 2],
            run_state,
            events,
            metrics,
            api_server,
            pre_actions: Vec::new(),
            events_in: Vec::new(),
            samples: Vec::new(),
            outcomes: Vec::new(),
            read_carrier: None,
            _monitor: monitor,
            _metrics_http: metrics_http,
            _tasks: tasks,
        };
        info!(
            uplinks = daemon.cfg.uplinks.len(),
            transits = daemon.cfg.transits.len(),
            "uplinkd started"
        );
        daemon.restore_drains();
        Ok((daemon, inputs))
    }

    /// The operator's drains of the previous run, handed to the core
    /// before its first decision (which needs probe results, later).
    fn restore_drains(&mut self) {
        for name in self.run_state.drained() {
            match self.cfg.uplinks.iter().position(|u| u.name == name) {
                Some(uplink) => {
                    info!(uplink = name, "drain kept from the previous run");
                    self.events_in.push(Event::Drain {
                        uplink,
                        drained: true,
                    });
                }
                None => warn!(
                    uplink = name,
                    "drain of an uplink no longer configured dropped"
                ),
            }
        }
    }

    /// When to wake next: the core's next deadline, a re-check, the
    /// periodic reconcile, or at most `MAX_SLEEP` on.
    ///
    /// Wake on the grid: a deadline between two grid points waits for the
    /// next one (at most one step late), so timers close together share a
    /// wake-up. Probes in flight are looked for at the next grid point
    /// (their replies are read within one step, as the carrier is polled);
    /// with nothing in flight and nothing due the loop sleeps.
    ///
    /// In the steady state (each socket with probes in flight has one, and
    /// the core has a reply check for it) the loop does not wake to read
    /// replies: the poller thread checks at each check's time that a reply
    /// is queued and wakes the loop only if one is not; the replies are
    /// read on the next wake-up (the next round). The core counts a reply
    /// from its arrival (kernel timestamp), so reading it late decides the
    /// same.
    pub fn plan(&mut self) -> Plan {
        let t = self.clock.now(Mono::now());
        let mut wake = (t + MAX_SLEEP).min(self.clock.ceil(self.reconcile_at));
        if let Some(r) = self.retries.next() {
            wake = wake.min(self.clock.ceil(r));
        }
        let others_in_flight = self.members.in_flight() > 0
            || self.retired_probers.iter().any(|p| p.in_flight() > 0)
            || self.retired_echo.iter().any(|p| p.in_flight() > 0);
        let in_flight =
            others_in_flight || self.prober.in_flight() > 0 || self.echo.in_flight() > 0;
        let (watching, deadline) = match in_flight && !others_in_flight && self.core.decided() {
            true => reply_checks(
                &self.core,
                &self.prober,
                &self.echo,
                &self.clock,
                &mut self.watch_entries,
            ),
            false => (false, self.core.next_deadline()),
        };
        if let Some(d) = deadline {
            wake = wake.min(self.clock.ceil(d));
        }
        if watching {
            self.watch.set(self.watch_entries.iter().copied());
        } else if in_flight {
            wake = wake.min(self.clock.ceil(t + Duration::from_nanos(1)));
        }
        self.watching = watching;
        Plan {
            wake: self.clock.mono(wake),
            watching,
        }
    }

    /// The turn's time: the input's instant, converted once.
    fn begin(&mut self, at: Mono) {
        self.now = self.clock.now(at);
    }

    /// Carrier samples from the poller thread: `first` and any queued behind
    /// it, handled at the instant of the latest poll.
    pub fn on_carrier(
        &mut self,
        first: CarrierSample,
        more: &mut mpsc::UnboundedReceiver<CarrierSample>,
    ) {
        self.samples.push(first);
        while let Ok(s) = more.try_recv() {
            self.samples.push(s);
        }
        let at = self.samples.iter().map(|s| s.at).max().unwrap_or_default();
        self.begin(Mono(at));
        carrier_samples(
            &self.cfg,
            &self.ifindexes,
            &mut self.samples,
            CarrierSource::Poll,
            &mut self.events_in,
        );
    }

    /// An ICMP unreachable quoting one of our packets. The probes' replies
    /// are read on the same turn (see `on_counters`).
    pub fn on_unreachable(&mut self, u: Unreachable) {
        self.on_timer(Mono::now());
        self.events_in.push(Event::Unreachable {
            family: u.family,
            from: u.from,
        });
    }

    /// A counter reading that could matter (see `CounterTap`): taken with
    /// the others at the end of the turn. The probes' replies are read on
    /// this turn as on a timer's: the loop may have been sleeping past the
    /// replies' checks (the reply watch), and a core that judged at this
    /// instant without them would take them for overdue and start a burst
    /// (measured: 62 echo requests at a transit in 10 s instead of 30).
    pub fn on_counters(&mut self, at: Mono) {
        self.on_timer(at);
    }

    /// What the echo streams cost the poller thread: (ticks with a
    /// stream, echoes sent, mean time of such a tick).
    pub fn echo_cost(&self) -> (u64, u64, Duration) {
        self.streams.cost()
    }

    /// What the counter tap costs the poller thread: (readings, mean time
    /// of one).
    pub fn counter_cost(&self) -> (u64, Duration) {
        self.counters.cost()
    }

    /// An echo stream changed (see `EchoStreams`): taken at the end of the
    /// turn; the probes' replies are read on this turn too (as `on_counters`).
    pub fn on_echo(&mut self, at: Mono) {
        self.on_timer(at);
    }

    /// The timer, or the poller's reply watch: read the probes' replies,
    /// expire the unanswered, and tell the core if a deadline of its passed.
    pub fn on_timer(&mut self, at: Mono) {
        self.begin(at);
        if self.poller.thread.is_finished() {
            error!("the carrier poller thread ended; starting it again");
            match CarrierPoller::start(
                interfaces(&self.cfg),
                self.clock.grid(),
                &self.watch,
                &self.counters,
                &self.streams,
                self.carrier_tx.clone(),
            ) {
                Ok(p) => self.poller = p,
                Err(e) => error!(error = %e, "carrier poller not restarted"),
            }
        }
        let now = self.clock.instant(self.now);
        self.prober.poll(now, &mut self.outcomes);
        for old in &mut self.retired_probers {
            old.poll(now, &mut self.outcomes);
        }
        self.retired_probers.retain(|p| p.in_flight() > 0);
        self.echo.poll(now, &mut self.outcomes);
        for old in &mut self.retired_echo {
            old.poll(now, &mut self.outcomes);
        }
        self.retired_echo.retain(|p| p.in_flight() > 0);
        self.members
            .poll(self.clock.instant_at(at), &mut self.outcomes);
        self.member_stream_macs();
        for (id, outcome) in self.outcomes.drain(..) {
            self.events_in.push(Event::ProbeDone { id, outcome });
        }
        if self.core.next_deadline().is_some_and(|d| d <= self.now) {
            self.events_in.push(Event::Tick);
        }
    }

    /// A managed bond as the bond poller read it.
    pub fn on_bond(&mut self, b: BondSample, at: Mono) {
        self.begin(at);
        self.members.update(&b);
        self.member_stream_macs();
        self.events_in.push(Event::Bond(b.status()));
    }

    /// The bond members' echo streams get their member's probe MAC and the
    /// gateway's MAC as the member prober learned them, when first known
    /// and whenever they change; a MAC no longer known (an ARP probe
    /// unanswered: a router that polices its CPU may still forward) is
    /// not taken from the stream, whose echoes tell.
    fn member_stream_macs(&mut self) {
        for (&(uplink, family), given) in self.member_streams.iter_mut() {
            let Some(u) = self.cfg.uplinks.get(uplink) else {
                continue;
            };
            let Some(gateway) = u.gateway(family) else {
                continue;
            };
            let macs = self.members.echo_macs(&u.interface, gateway);
            if let Some((probe_mac, gw_mac)) = macs.filter(|m| Some(*m) != *given) {
                *given = Some((probe_mac, gw_mac));
                self.streams
                    .set_member_macs(uplink, family, probe_mac, gw_mac);
            }
        }
    }

    /// A link or route event, or the end of a dump, from the netlink monitor.
    pub fn on_net(&mut self, ev: NetEvent, at: Mono) {
        self.begin(at);
        if self.reinstall_needed(&ev) {
            self.send(Work::Ensure);
        }
        if let Some(family) = self.uplink_prefix_added(&ev) {
            // What the kernel dropped silently with the address (IPv4
            // routes through a removed subnet go without RTM_DELROUTE):
            // the tables, rules and fallback routes (above), and the
            // managed route of that family, which the core checks and puts
            // back. Only that family's: a second read queued before the
            // core's restore would find the route still missing and look
            // like another writer removing it again.
            self.send(Work::Ensure);
            self.verify(family);
        }
        match ev {
            NetEvent::Link(l) => {
                if self.cfg.uplinks.iter().any(|u| u.interface == l.name) {
                    self.ifindexes.lock().unwrap().insert(l.name, l.ifindex);
                    // Read the live carrier now (whichever of event and poll
                    // sees a loss first wins; the event itself may describe
                    // an older state).
                    self.read_carrier = Some(CarrierSource::Netlink);
                }
            }
            NetEvent::LinkRemoved { name, .. } => {
                self.ifindexes.lock().unwrap().remove(&name);
                for (i, u) in self.cfg.uplinks.iter().enumerate() {
                    if u.interface == name {
                        self.events_in.push(Event::Carrier {
                            uplink: i,
                            up: false,
                            present: false,
                            source: CarrierSource::Netlink,
                        });
                    }
                }
            }
            NetEvent::Route { route, removed } => {
                self.competing_route(&route, removed);
                if route.dst_len == 0
                    && route.table == RT_TABLE_MAIN
                    && route.metric == self.cfg.agent.route_metric
                    && self.dumped
                {
                    let via = match removed {
                        true => crate::core::RouteVia::Absent,
                        false => route_via(&self.cfg, &self.ifindexes, &route),
                    };
                    self.events_in.push(Event::DefaultRouteHint {
                        family: route.family,
                        via,
                    });
                }
            }
            NetEvent::Address {
                ifindex,
                address,
                usable,
            } => {
                match usable {
                    true => self.local.insert((ifindex, address)),
                    false => self.local.remove(&(ifindex, address)),
                };
                if self.dumped && !self.resyncing {
                    self.check_sources();
                }
            }
            NetEvent::Resync => {
                warn!("netlink events were lost (overrun): re-reading links and routes");
                self.resyncing = true;
                self.competing = Default::default();
                self.local.clear();
            }
            NetEvent::DumpDone => {
                self.dumped = true;
                self.resyncing = false;
                self.check_sources();
                self.verify_all();
                for f in Family::ALL {
                    self.tell_competing(f);
                }
            }
            // Handled by `reinstall_needed` above.
            NetEvent::RuleRemoved { .. } => {}
            NetEvent::Failed { error } => {
                error!(%error, "netlink monitor failed; relying on the carrier poll and periodic checks");
            }
        }
    }

    /// Whether the configured service address of `family` is a usable
    /// local address now (as the monitor last reported).
    fn source_here(&self, family: Family) -> Option<bool> {
        let a = self.cfg.agent.source(family)?;
        Some(self.local.iter().any(|(_, l)| *l == a))
    }

    /// The service addresses against the host: a family whose address left
    /// (or came back) has its main-table routes replaced without (with) the
    /// source, and the core reports it (status, event, metric, a warning).
    fn check_sources(&mut self) {
        for f in Family::ALL {
            let Some(here) = self.source_here(f) else {
                continue;
            };
            let flag = &self.sources[f.index()];
            if flag.swap(here, Ordering::Relaxed) != here && !self.observing() {
                // An IPv4 route whose source leaves is deleted with it (and
                // without an RTM_DELROUTE): put the managed one back at
                // once, via the uplink the core chose, without the source.
                match self.core.active(f) {
                    Some(uplink) => {
                        let ticket = self.retries.queued(f);
                        self.send(Work::SetRoute {
                            family: f,
                            uplink,
                            ticket,
                        });
                        self.send(Work::Ensure);
                    }
                    None => self.send(Work::Resource { family: f }),
                }
                self.verify(f);
            }
            // The core reports only changes: telling it every time is cheap.
            self.events_in.push(Event::SourceAddress {
                family: f,
                present: here,
            });
        }
    }

    /// Track another owner's default route that wins over ours: main table,
    /// a lower metric than `route_metric` (so never one of our kernel
    /// fallback routes, which are above it), not ours by protocol.
    fn competing_route(&mut self, route: &crate::netlink::RouteInfo, removed: bool) {
        if route.dst_len != 0
            || route.table != RT_TABLE_MAIN
            || route.metric >= self.cfg.agent.route_metric
            || route.protocol == RTPROT_UPLINKD
        {
            return;
        }
        let dev = dev_name(&self.ifindexes.lock().unwrap(), route.oif);
        let key = (route.metric, format!("{:?} {dev}", route.gateway));
        let map = &mut self.competing[route.family.index()];
        match removed {
            true => map.remove(&key),
            false => map.insert(
                key,
                (
                    CompetingRoute {
                        via: route.gateway,
                        dev,
                        metric: route.metric,
                        protocol: protocol_name(route.protocol),
                    },
                    route.clone(),
                ),
            ),
        };
        if self.dumped && !self.resyncing {
            self.tell_competing(route.family);
        }
    }

    /// Tell the core the competing route of `family` that wins, if any.
    fn tell_competing(&mut self, family: Family) {
        let route = self.competing[family.index()]
            .values()
            .next()
            .map(|(c, _)| c.clone());
        self.events_in.push(Event::CompetingRoute { family, route });
    }

    /// Whether what the agent installs besides the active route (each
    /// uplink's probe table route and rule, the kernel fallback routes, the
    /// sysctls) must be installed again after `ev`: an interface is new,
    /// re-created or came up (the kernel drops routes through a link that
    /// goes down), one of those routes or a probe rule was removed, or the
    /// first dump is in.
    ///
    /// The daemon decides this, not the core: these are the daemon's own
    /// layout (slots, tables, marks), which the core never sees. What the
    /// core owns, the active route, it checks itself (`Event::DefaultRoute`
    /// in, `Action::VerifyRoute` out).
    fn reinstall_needed(&mut self, ev: &NetEvent) -> bool {
        match ev {
            NetEvent::Link(l) => {
                if !self.cfg.uplinks.iter().any(|u| u.interface == l.name) {
                    return false;
                }
                let old = self.ifindexes.lock().unwrap().get(&l.name).copied();
                let usable = l.admin_up && l.carrier;
                let was_usable = self.usable.insert(l.name.clone(), usable);
                old != Some(l.ifindex) || (usable && was_usable != Some(true))
            }
            NetEvent::Route {
                route,
                removed: true,
            } => {
                let a = &self.cfg.agent;
                let n = self.cfg.uplinks.len() as u32;
                let probe_table = route.table >= a.table_base
                    && route.table < a.table_base + self.layout.table_span();
                let fallback = route.table == RT_TABLE_MAIN
                    && route.metric > a.route_metric
                    && route.metric <= a.route_metric + n;
                route.dst_len == 0 && (probe_table || fallback)
            }
            // A probe rule deleted (by an operator, or a network manager
            // that removes rules it does not know).
            NetEvent::RuleRemoved { table, protocol } => {
                let a = &self.cfg.agent;
                *protocol == RTPROT_UPLINKD
                    && *table >= a.table_base
                    && *table < a.table_base + self.layout.table_span()
            }
            NetEvent::DumpDone => true,
            _ => false,
        }
    }

    /// The family of `ev` if it is an uplink's connected prefix route coming (back): its
    /// address was added, as a network manager does after removing it
    /// (`networkctl reconfigure`, ifdown/ifup, a DHCP renewal with a new
    /// lease). Removing an IPv4 address drops every route through its
    /// subnet without an event (the probe table's, the fallback, the
    /// managed route), and none of them could be installed while it was
    /// missing: everything the agent owns for the uplink is installed
    /// again. Before the first dump is in, the dump's end does it.
    fn uplink_prefix_added(&self, ev: &NetEvent) -> Option<Family> {
        let NetEvent::Route {
            route,
            removed: false,
        } = ev
        else {
            return None;
        };
        if !self.dumped
            || route.table != RT_TABLE_MAIN
            || route.dst_len == 0
            || route.protocol != RTPROT_KERNEL
            || route.gateway.is_some()
        {
            return None;
        }
        let oif = route.oif?;
        let ifindexes = self.ifindexes.lock().unwrap();
        self.cfg
            .uplinks
            .iter()
            .any(|u| ifindexes.get(u.route_interface()) == Some(&oif))
            .then_some(route.family)
    }

    /// A result of the actuation task.
    pub fn on_done(&mut self, done: Done, at: Mono) {
        self.begin(at);
        match done {
            Done::Route { family, via, gen } if gen == self.layout.gen => {
                let via = match self.observed[family.index()] {
                    Some(u) if self.observing() => crate::core::RouteVia::Uplink(u),
                    _ => via,
                };
                self.events_in.push(Event::DefaultRoute { family, via })
            }
            // Read under an older configuration: read again.
            Done::Route { family, .. } => self.verify(family),
            Done::SetFailed {
                family,
                ticket,
                refused,
            } => {
                self.retries.failed(family, ticket, self.now);
                if refused {
                    self.events_in.push(Event::RouteRefused { family });
                }
            }
            Done::Barrier => {
                if let Some(f) = self.on_ready.take() {
                    info!("first decision made and applied for every family: ready");
                    f();
                }
            }
        }
    }

    /// A new configuration (SIGHUP): applied as a difference, or refused.
    pub fn on_reload(&mut self, (new, reply): ReloadRequest, at: Mono) {
        self.begin(at);
        let _ = reply.send(self.reconfigure(new));
    }

    fn reconfigure(&mut self, new: Config) -> Result<String, String> {
        // A new service address must be on the host already (like at start).
        let missing: Vec<String> = Family::ALL
            .iter()
            .filter_map(|f| {
                let a = new.agent.source(*f)?;
                let changed = self.cfg.agent.source(*f) != Some(a);
                (changed && self.dumped && !self.local.iter().any(|(_, l)| *l == a)).then(|| {
                    let key = format!("agent.source{}", f.index() * 2 + 4);
                    format!("{key}: {}", crate::config::live::missing_source_text(*f, a))
                })
            })
            .collect();
        if !missing.is_empty() {
            return Err(missing.join("; "));
        }
        let (actions, summary) = self.core.reconfigure(self.now, new)?;
        let old_layout = self.layout.clone();
        self.cfg = Arc::new(self.core.config().clone());
        // Into enforce mode: the kernel's routes are read as they are (the
        // core puts back what differs from its decisions, as after a
        // foreign change). Into observe mode: what is installed stays.
        if !self.observing() {
            self.observed = [None; 2];
        }
        self.layout = relayout(&old_layout, self.cfg.clone());
        let stale: Vec<Stale> = {
            let now_used = self.layout.installed();
            old_layout
                .installed()
                .into_iter()
                .filter(|s| !now_used.contains(s))
                .collect()
        };
        self.send(Work::Reconfigure(Box::new(self.layout.clone()), stale));
        // The sources under the new configuration, then every main-table
        // route replaced with them (a source added, changed or removed).
        for f in Family::ALL {
            let here = self.source_here(f).unwrap_or(false);
            self.sources[f.index()].store(here, Ordering::Relaxed);
            if old_layout.cfg.agent.source(f) != self.cfg.agent.source(f) {
                self.send(Work::Resource { family: f });
            }
        }
        self.check_sources();
        self.send(Work::Ensure);
        self.verify_all();
        let new_probe = probe_uplinks(&self.layout);
        if new_probe != probe_uplinks(&old_layout) {
            let old = std::mem::replace(&mut self.echo, EchoProber::new(new_probe.clone()));
            if old.in_flight() > 0 {
                self.retired_echo.push(old);
            }
            let old = std::mem::replace(&mut self.prober, Prober::new(new_probe));
            if old.in_flight() > 0 {
                self.retired_probers.push(old);
            }
        }
        let names = interfaces(&self.cfg);
        match CarrierReader::new(names.clone()) {
            Ok(c) => self.carrier = c,
            Err(e) => error!(error = %e, "carrier reader not renewed"),
        }
        let grid = self.cfg.probe.carrier_interval;
        if names != self.poller.interfaces || grid != self.clock.grid() {
            self.counters.set_interfaces(counter_interfaces(&self.cfg));
            match CarrierPoller::start(
                names,
                grid,
                &self.watch,
                &self.counters,
                &self.streams,
                self.carrier_tx.clone(),
            ) {
                Ok(p) => self.poller = p,
                Err(e) => error!(error = %e, "carrier poller not renewed"),
            }
        }
        // The echo streams name uplinks by index: the core asks again.
        self.streams.clear();
        self.member_streams.clear();
        self.streams.set_tick(grid);
        // Read every carrier on this turn: new uplinks learn theirs.
        self.read_carrier = Some(CarrierSource::Poll);
        self.clock.set_grid(grid);
        self.metrics.reconfigure(&self.cfg);
        if old_layout.cfg.hooks != self.cfg.hooks {
            let hooks = Hooks::start(&self.cfg.hooks, self.metrics.clone());
            self.events = self
                .events
                .clone()
                .with_outputs(self.metrics.clone(), hooks);
        }
        self.api_server
            .set_uplinks(self.cfg.uplinks.iter().map(|u| u.name.clone()).collect());
        self.shown = None;
        self.pre_actions = actions;
        self.events_in.push(Event::Tick);
        Ok(summary)
    }

    /// A request of the socket API (or the metrics listener).
    pub fn on_api(&mut self, req: ApiRequest, at: Mono) {
        self.begin(at);
        match req {
            ApiRequest::Status(reply) => {
                let mut status = self.core.status(self.now);
                for (i, u) in status.uplinks.iter_mut().enumerate() {
                    for (f, gp) in [
                        (Family::V4, &mut u.gateway_probe.ipv4),
                        (Family::V6, &mut u.gateway_probe.ipv6),
                    ] {
                        if let Some(gp) = gp {
                            gp.redirects = match self.cfg.uplinks.get(i) {
                                Some(c) if c.bond.is_some() => {
                                    self.members.redirects(&c.interface, f)
                                        + self.streams.redirects(i, f)
                                }
                                _ => self.echo.redirects(i, f) + self.streams.redirects(i, f),
                            };
                            gp.echo_idle = self.streams.idle_rate(i, f);
                        }
                    }
                    // Echo mode: the gateway's loss and last reply are the
                    // stream's (the core hears of it only on changes).
                    let now = crate::netlink::carrier::monotonic_now();
                    for (f, g) in [
                        (Family::V4, &mut u.gateway.ipv4),
                        (Family::V6, &mut u.gateway.ipv6),
                    ] {
                        if let (Some(g), Some((loss, back, _, _))) =
                            (g.as_mut(), self.streams.stats(i, f))
                        {
                            g.loss = loss;
                            if let Some(b) = back {
                                g.last_reply_ms_ago =
                                    Some(now.saturating_sub(b).as_millis() as u64);
                            }
                        }
                    }
                }
                let _ = reply.send(status);
            }
            ApiRequest::Drain {
                uplink,
                name,
                drained,
                reply,
            } => {
                // By name: a reload may have moved it since the lookup.
                let id = match self.cfg.uplinks.get(uplink) {
                    Some(u) if u.name == name => Some(uplink),
                    _ => self.cfg.uplinks.iter().position(|u| u.name == name),
                };
                let _ = reply.send(match id {
                    Some(uplink) => {
                        self.run_state.set_drained(&name, drained);
                        self.events_in.push(Event::Drain { uplink, drained });
                        Ok(())
                    }
                    None => Err(format!("no uplink named {name:?} (removed by a reload)")),
                });
            }
            ApiRequest::Reprobe(reply) => {
                self.events_in.push(Event::Reprobe);
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// After every input: the core decides on the turn's events, the
    /// actions are carried out, and the loop's own timed work is done.
    pub fn end_turn(&mut self) {
        if self.watching {
            self.watch.clear();
        }
        if let Some(source) = self.read_carrier.take() {
            self.carrier.read_changes(&mut self.samples);
            carrier_samples(
                &self.cfg,
                &self.ifindexes,
                &mut self.samples,
                source,
                &mut self.events_in,
            );
        }
        // The counter readings since the last turn, in order, each at its
        // own instant.
        self.counters.take(&mut self.counter_samples);
        counter_samples(
            &self.cfg,
            &self.clock,
            &mut self.counter_samples,
            &mut self.events_in,
        );
        self.streams.take(&mut self.stream_news);
        for n in self.stream_news.drain(..) {
            self.events_in.push(Event::Echo {
                uplink: n.uplink,
                family: n.family,
                news: n.news,
                last_back: n.last_back.map(|m| self.clock.reading(Mono(m))),
            });
        }
        if !self.events_in.is_empty() || !self.pre_actions.is_empty() {
            for ev in &self.events_in {
                if let Event::ProbeDone { id, outcome } = ev {
                    self.metrics.probe_done(*id, outcome);
                }
            }
            let handled = self.core.handle_all(self.now, self.events_in.drain(..));
            for action in std::mem::take(&mut self.pre_actions)
                .into_iter()
                .chain(handled)
            {
                self.act(action);
            }
        }
        self.timed_work();
        self.announce();
        self.poller.follow(&self.cfg, &self.core);
        if let Some(f) = self.on_alive.as_mut() {
            f();
        }
    }

    /// Carry out one action of the core.
    fn act(&mut self, action: Action) {
        match action {
            Action::Probe(req) => {
                self.metrics.probe_sent(&req);
                let u = &self.cfg.uplinks[req.uplink];
                self.loop_frames.add(&u.interface, 1);
                if u.bond.is_some() {
                    let gw = u.gateway(req.family);
                    self.members.send(&u.interface, gw, req)
                } else if req.kind == crate::core::ProbeKind::Echo {
                    self.echo.send(self.clock.instant(self.now), req)
                } else {
                    self.prober.send(self.clock.instant(self.now), req)
                }
            }
            Action::EchoStream {
                uplink,
                family,
                gateway,
                spec,
                fresh,
            } => {
                let Some(u) = self.cfg.uplinks.get(uplink) else {
                    return;
                };
                // A bond member echoes from its probe address (the core
                // streams only a member that has one of the family).
                let member = u.bond.as_ref().and(u.probe_address(family));
                let source = match member {
                    None => Source::Routed,
                    Some(addr) => {
                        // As known now, else as the running stream was
                        // given them (see `member_stream_macs`).
                        let key = (uplink, family);
                        let macs = self.members.echo_macs(&u.interface, gateway).or(self
                            .member_streams
                            .get(&key)
                            .copied()
                            .flatten());
                        match spec {
                            Some(_) => self.member_streams.insert(key, macs),
                            None => self.member_streams.remove(&key),
                        };
                        Source::Member {
                            addr,
                            probe_mac: macs.map(|m| m.0),
                            gw_mac: macs.map(|m| m.1),
                        }
                    }
                };
                if spec.is_some() {
                    // The stream takes over from the trial's socket.
                    match member {
                        None => self.echo.close(uplink, family),
                        Some(_) => self.members.close_echoes(&u.interface, family),
                    }
                }
                self.streams
                    .set(uplink, family, &u.interface, gateway, source, spec, fresh);
            }
            Action::SetBondActive { .. } if self.observing() => {}
            Action::SetBondActive { bond, uplink } => {
                let member = self.cfg.uplinks[uplink].interface.clone();
                let _ = self.bond_set_tx.send((bond, member));
            }
            Action::SetDefaultRoute { family, uplink } if self.observing() => {
                self.observed[family.index()] = Some(uplink);
            }
            Action::SetDefaultRoute { family, uplink } => {
                let ticket = self.retries.queued(family);
                self.send(Work::SetRoute {
                    family,
                    uplink,
                    ticket,
                });
            }
            Action::FlushNeighbours { .. } if self.observing() => {}
            Action::FlushNeighbours { uplink, family } => self.send(Work::Flush { uplink, family }),
            Action::RefreshNeighbour { .. } if self.observing() => {}
            Action::RefreshNeighbour { uplink, family } => {
                self.send(Work::Refresh { uplink, family })
            }
            Action::VerifyRoute { family } => self.verify(family),
            Action::RemoveRoute { .. } if self.observing() => {}
            Action::RemoveRoute { family, route } => {
                let found = self.competing[family.index()]
                    .values()
                    .find(|(c, _)| *c == route);
                if let Some((_, r)) = found {
                    self.send(Work::DeleteRoute(r.clone()));
                }
            }
            Action::Report(change) => {
                self.seq += 1;
                self.run_state.reserve(self.seq);
                let observe = self.observing() && would_act(&change);
                publish(&self.events, self.seq, change, observe);
            }
        }
    }

    /// The loop's timed work: the periodic reconcile, and the re-checks of
    /// failed route changes that are due.
    fn timed_work(&mut self) {
        if self.now >= self.reconcile_at {
            self.reconcile_at = self.now + RECONCILE_EVERY;
            self.send(Work::Ensure);
            self.verify_all();
        }
        for family in self.retries.take_due(self.now) {
            self.verify(family);
        }
    }

    /// READY once the first decision's route work is done; the status line
    /// whenever the active uplinks change.
    fn announce(&mut self) {
        if self.core.decided() && self.dumped && !self.barrier_sent {
            self.barrier_sent = true;
            self.send(Work::Barrier);
        }
        if !self.barrier_sent {
            return;
        }
        let key = (
            self.layout.gen,
            self.core.active(Family::V4),
            self.core.active(Family::V6),
        );
        let Some(f) = self.on_status.as_mut().filter(|_| self.shown != Some(key)) else {
            return;
        };
        self.shown = Some(key);
        let line = Family::ALL
            .iter()
            .map(|fam| match self.core.active(*fam) {
                Some(a) => format!("{fam} via {}", self.cfg.uplinks[a].name),
                None => format!("{fam}: no route"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        f(&line);
    }

    /// Read the kernel's route of `family` (answered with `Done::Route`); a
    /// re-check pending for it is superseded.
    fn verify(&mut self, family: Family) {
        let ticket = self.retries.queued(family);
        self.send(Work::Verify { family, ticket });
    }

    fn verify_all(&mut self) {
        for f in Family::ALL {
            self.verify(f);
        }
    }

    /// Observe mode: decide and report, change nothing on the host.
    fn observing(&self) -> bool {
        self.cfg.agent.mode == AgentMode::Observe
    }

    fn send(&self, work: Work) {
        let _ = self.work_tx.send(work);
    }
}

/// Whether `change` reports something the agent carries out (a route or a
/// bond member moved): in observe mode such a record is marked `observe`.
fn would_act(change: &Change) -> bool {
    match change {
        Change::ActiveChanged { .. } | Change::RouteRestored { .. } => true,
        Change::Bond { by, .. } => by == "agent",
        _ => false,
    }
}

/// Log one change in the one structured format, and publish it. The one
/// place wall time is read: the record's timestamp.
fn publish(events: &api::Events, seq: u64, change: Change, observe: bool) {
    let record = EventRecord {
        seq,
        time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        change,
        observe,
    };
    // The message is a sentence for a person; the record (with its seq,
    // kind and time) goes beside it as one structured field.
    let json = serde_json::to_string(&record).unwrap_or_default();
    let mut sentence = record.change.describe();
    if record.observe {
        sentence.insert_str(0, "observe mode, not carried out: ");
    }
    match record.change.level() {
        Level::Warn => warn!(event = %json, "{sentence}"),
        Level::Info => info!(event = %json, "{sentence}"),
    }
    events.publish(record);
}
