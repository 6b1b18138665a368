//! The decision engine: per-uplink health from evidence, then per-family
//! selection. Pure: time comes in as `now`, effects go out as `Action`s.
//!
//! This file holds the engine's state (per uplink and family, per family,
//! per bond, the probes in flight) and the one path every input takes:
//! `handle_all` applies a batch of events, judges them together
//! (`evaluate`: health, then selection), then schedules the probes. The
//! submodules do the deciding, each an `impl Core` over this state:
//! - `health`: whether each uplink is usable for each family, and why not;
//! - `selection`: which uplink carries each family (failback, damping,
//!   drain, fail static);
//! - `route`: keeping the kernel's default route to that decision;
//! - `bond`: which bond member is active, and why the driver moved;
//! - `schedule`: which probe goes out when, and when the loop must wake;
//! - `view`: the status published from the state;
//! - `reconfigure`: a new configuration applied as a difference.

use std::collections::{HashMap, VecDeque};

use super::target::Target;
use super::{Action, Event, Now, ProbeId, ProbeKind, UplinkId};
use crate::config::{Config, Family};
use crate::status::{BondStatus, GatewayMode, Reason};

mod bond;
mod health;
mod reconfigure;
mod route;
mod schedule;
mod selection;
mod suspect;
mod view;

/// Health of one uplink for one family.
#[derive(Debug, Clone)]
struct UplinkFamily {
    /// What decides the gateway's verdict: its ICMP echoes, or in echo
    /// mode the forwarding-plane echoes through it.
    gateway: Target,
    /// How the gateway is probed now (see `gateway_probe`).
    mode: GatewayMode,
    /// Auto, while trying: consecutive echoes that came back / were lost.
    trial_ok: u32,
    trial_miss: u32,
    /// Echo mode: the slow ICMP check of the router itself (at most one
    /// per second; diagnosis only, never a verdict).
    check: Target,
    /// Echo mode: the echo stream last asked of the adapter (None: none
    /// running, or one to be asked afresh).
    stream: Option<crate::echo::EchoSpec>,
    /// The next stream asked must be judged afresh (the carrier came back).
    stream_fresh: bool,
    /// Echo mode: the stream is late or stopped (the router is pinged
    /// once, to tell a dead router from one that stopped forwarding).
    echo_trouble: bool,
    /// Per transit (index into config.transits): its targets of this family.
    transits: Vec<Vec<Target>>,
    /// Fast rounds left in the current burst (suspicion), and when the next is due.
    burst_left: u32,
    burst_next: Now,
    /// When the last burst sent its last round: only probes sent after it
    /// can start a new one, so bursts never feed themselves.
    burst_end: Option<Now>,
    /// The current (or last) burst was started by a passive suspicion: its
    /// rounds are `suspicion_burst_interval` apart and its probes time out
    /// after 4 × the target's smoothed RTT; what raised it and its result.
    suspicion: Option<suspect::SuspectBurst>,
    /// The gateway's neighbour entry was asked to be refreshed since the
    /// gateway was last found dead: once per outage is enough.
    refresh_asked: bool,
    /// Its neighbour entries were flushed (for this family) since start.
    flushed: bool,
    usable: Option<bool>,
    /// Since when it has been continuously usable.
    usable_since: Option<Now>,
    /// Has been usable with a verdict on every far target: only then is
    /// losing it a flap (one found wanting by its first verdicts never
    /// worked, it did not fail).
    proven: bool,
    reasons: Vec<Reason>,
}

#[derive(Debug, Clone)]
struct Uplink {
    /// None until the first carrier report.
    carrier: Option<bool>,
    present: bool,
    drained: bool,
    undrained_at: Option<Now>,
    fams: [Option<UplinkFamily>; 2],
    /// Per family: its losses within the damping window. Counted per
    /// family so that a family that stays down does not hide the other's
    /// flaps; the uplink is damped on its worst family, so one carrier
    /// flap that fails both families counts once.
    flaps: [VecDeque<Now>; 2],
    damp_level: u32,
    damped_until: Option<Now>,
    /// For a bond member: enslaved to its bond (None until the bond is read).
    enslaved: Option<bool>,
    /// Probes sent through this uplink and replies received: the rx_stall
    /// rule discounts them from the interface counters.
    probes_sent: u64,
    replies: u64,
    /// When the last confirmation burst started (one per `suspicion_holdoff`).
    last_burst: Option<Now>,
    /// Suspicions by source (index of `suspicion::Source::ALL`), bursts
    /// started and the probes they sent.
    suspicions: [u64; 4],
    bursts: u64,
    burst_probes: u64,
}

/// A managed bond: the driver's view and the agent's choice.
#[derive(Debug, Clone, Default)]
struct Bond {
    status: BondStatus,
    seen: bool,
    /// The member the agent last made active.
    chosen: Option<UplinkId>,
}

#[derive(Debug, Clone, Default)]
struct FamilyDecision {
    /// Whether the kernel's route has been observed (initial dump done).
    route_known: bool,
    active: Option<UplinkId>,
    decided: bool,
    fail_static: bool,
    /// A mismatch between the observed route and `active` was hinted by an
    /// event and waits for an authoritative dump.
    verify_pending: bool,
    /// Why `active` was cleared by a reconfiguration (the active uplink was
    /// removed or changed): the reason of the next switch.
    cleared_by: Option<String>,
    /// Restores of the managed route and the fight with another writer
    /// (see `engine/route.rs`).
    guard: route::RouteGuard,
    /// The configured service address of this family is missing from the
    /// host (`Event::SourceAddress`): the routes carry no source meanwhile.
    source_missing: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    uplink: UplinkId,
    family: Family,
    kind: ProbeKind,
    /// Index among the transit's targets of that family.
    slot: usize,
    sent_at: Now,
    /// Sent by a burst a suspicion started.
    suspicion: bool,
}

/// State of uplink `i` of `cfg` with no history, its first probes due from `now`.
fn fresh_uplink(cfg: &Config, i: usize, now: Now) -> Uplink {
    let u = &cfg.uplinks[i];
    let fams = Family::ALL.map(|f| {
        // Stagger the far probes of one uplink and family evenly
        // over one interval, so a failure is seen within
        // interval / targets, not within a whole interval.
        let n: usize = cfg.transits.iter().map(|t| t.targets_of(f).count()).sum();
        let mut k = 0u32;
        // Transits are probed through a bond member only from
        // its dedicated probe address (see src/bond.rs).
        let member = u.bond.is_some()
            && match f {
                Family::V4 => u.probe_address4.is_none(),
                Family::V6 => u.probe_address6.is_none(),
            };
        u.gateway(f).map(|gw| UplinkFamily {
            gateway: Target::new(gw, now),
            mode: initial_mode(u, f),
            trial_ok: 0,
            trial_miss: 0,
            check: Target::new(gw, now),
            stream: None,
            stream_fresh: false,
            echo_trouble: false,
            transits: cfg
                .transits
                .iter()
                .map(|t| {
                    t.targets_of(f)
                        .filter(|_| !member)
                        .map(|a| {
                            let at = now + cfg.probe.transit_interval * k / n.max(1) as u32;
                            k += 1;
                            Target::new(a, at)
                        })
                        .collect()
                })
                .collect(),
            burst_left: 0,
            burst_next: now,
            burst_end: None,
            suspicion: None,
            refresh_asked: false,
            flushed: false,
            usable: None,
            usable_since: None,
            proven: false,
            reasons: Vec::new(),
        })
    });
    Uplink {
        carrier: None,
        present: true,
        drained: false,
        undrained_at: None,
        fams,
        flaps: Default::default(),
        damp_level: 0,
        damped_until: None,
        enslaved: None,
        probes_sent: 0,
        replies: 0,
        last_burst: None,
        suspicions: [0; 4],
        bursts: 0,
        burst_probes: 0,
    }
}

/// How a fresh uplink's gateway of `family` is probed: a bond member
/// without a probe address of the family by ARP/ND on the member (the echo
/// needs an address to echo to: see `UplinkConfig::can_echo`).
fn initial_mode(u: &crate::config::UplinkConfig, family: Family) -> GatewayMode {
    use crate::config::GatewayProbe;
    match u.gateway_probe {
        _ if !u.can_echo(family) => GatewayMode::Icmp,
        GatewayProbe::Icmp => GatewayMode::Icmp,
        GatewayProbe::Echo => GatewayMode::Echo,
        GatewayProbe::Auto => GatewayMode::Trying,
    }
}

/// The decision engine. See the crate docs.
#[derive(Debug, Clone)]
pub struct Core {
    cfg: Config,
    uplinks: Vec<Uplink>,
    fam: [FamilyDecision; 2],
    in_flight: HashMap<ProbeId, InFlight>,
    next_probe: u64,
    last_now: Now,
    bonds: Vec<Bond>,
    detector: crate::suspicion::Detector,
}

impl Core {
    /// `now` is the start instant (usually zero).
    pub fn new(cfg: Config, now: Now) -> Core {
        let uplinks = (0..cfg.uplinks.len())
            .map(|i| fresh_uplink(&cfg, i, now))
            .collect();
        let mut bonds: Vec<Bond> = Vec::new();
        for u in &cfg.uplinks {
            if let Some(b) = &u.bond {
                if !bonds.iter().any(|x| &x.status.name == b) {
                    bonds.push(Bond {
                        status: BondStatus {
                            name: b.clone(),
                            ..Default::default()
                        },
                        ..Default::default()
                    });
                }
            }
        }
        Core {
            cfg,
            uplinks,
            fam: Default::default(),
            in_flight: HashMap::new(),
            next_probe: 1,
            last_now: now,
            bonds,
            detector: Default::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The uplink carrying `family`, if any.
    pub fn active(&self, family: Family) -> Option<UplinkId> {
        self.fam[family.index()].active
    }

    /// True once a first decision was made for every family that has a
    /// gateway on some uplink.
    pub fn decided(&self) -> bool {
        Family::ALL
            .iter()
            .all(|f| !self.family_configured(*f) || self.fam[f.index()].decided)
    }

    fn family_configured(&self, f: Family) -> bool {
        self.uplinks.iter().any(|u| u.fams[f.index()].is_some())
    }

    fn name(&self, u: UplinkId) -> String {
        self.cfg.uplinks[u].name.clone()
    }

    /// Feed one event; get what must be done now.
    pub fn handle(&mut self, now: Now, event: Event) -> Vec<Action> {
        self.handle_all(now, [event])
    }

    /// Several events that happened by `now` (e.g. all the probe replies a
    /// loop turn read), applied in order, then judged together: the same as
    /// handling them one by one, except that no decision or probe is made on
    /// a partial picture (a probe whose reply is the next event in the batch
    /// is not overdue).
    pub fn handle_all(&mut self, now: Now, events: impl IntoIterator<Item = Event>) -> Vec<Action> {
        let mut out = Vec::new();
        self.last_now = self.last_now.max(now);
        for event in events {
            self.apply(now, event, &mut out);
        }
        self.evaluate(now, &mut out);
        self.schedule_probes(now, &mut out);
        out
    }

    fn apply(&mut self, now: Now, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Carrier {
                uplink,
                up,
                present,
                source,
            } => self.on_carrier(now, uplink, up, present, source, out),
            Event::ProbeDone { id, outcome } => self.on_probe(now, id, outcome, out),
            Event::DefaultRoute { family, via } => self.on_route(now, family, via, true, out),
            Event::DefaultRouteHint { family, via } => self.on_route(now, family, via, false, out),
            Event::Drain { uplink, drained } => self.on_drain(now, uplink, drained, out),
            Event::Reprobe => self.reprobe(now),
            Event::Bond(st) => self.on_bond(st, out),
            Event::Tick => self.route_timers(now, out),
            Event::RouteRefused { family } => self.on_refused(family),
            Event::CompetingRoute { family, route } => self.on_competing(family, route, out),
            Event::SourceAddress { family, present } => self.on_source(family, present, out),
            Event::Counters(c) => self.on_counters(now, c, out),
            Event::Unreachable { family, from } => self.on_unreachable(now, family, from, out),
            Event::Echo {
                uplink,
                family,
                news,
                last_back,
            } => self.on_echo(now, uplink, family, news, last_back, out),
        }
    }

    /// The service address of `family` came or went: reported once per change.
    fn on_source(&mut self, family: Family, present: bool, out: &mut Vec<Action>) {
        let Some(address) = self.cfg.agent.source(family) else {
            return;
        };
        let d = &mut self.fam[family.index()];
        if d.source_missing != present {
            return;
        }
        d.source_missing = !present;
        out.push(Action::Report(crate::status::Change::SourceAddress {
            family: family.name().into(),
            address,
            present,
        }));
    }

    /// The service address of `family` as status shows it.
    pub fn source_status(&self, family: Family) -> Option<crate::status::SourceStatus> {
        let address = self.cfg.agent.source(family)?;
        let missing = self.fam[family.index()].source_missing;
        Some(crate::status::SourceStatus {
            address,
            present: !missing,
            reason: missing.then(|| crate::status::SOURCE_MISSING.to_string()),
        })
    }

    /// What the evidence so far means: each uplink's health first, then
    /// each family's choice from it.
    fn evaluate(&mut self, now: Now, out: &mut Vec<Action>) {
        self.judge_health(now, out);
        self.expire_damping(now);
        for f in Family::ALL {
            self.select(now, f, out);
            self.flush_failed_standbys(f, out);
        }
    }
}
