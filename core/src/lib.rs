//! uplinkd-core: the pure decision engine, with the validated configuration
//! ([`config`]) and the status and event types ([`status`]) it speaks in,
//! with the socket's request and answer types ([`proto`]).
//!
//! The engine never does I/O and never reads a clock:
//! `handle(now, Event) -> Vec<Action>` and `next_deadline()`. `now` is the
//! time since the daemon started (monotonic), passed in by the caller.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::Family;
use crate::status::Change;

pub mod config;
pub mod echo;
mod engine;
pub mod proto;
pub mod rates;
pub mod status;
pub mod suspicion;
mod target;
pub use engine::Core;

/// Index of an uplink in `Config::uplinks` (0 = primary).
pub type UplinkId = usize;

/// Monotonic time since the daemon started.
pub type Now = Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CarrierSource {
    /// The RTM_GETLINK poll loop.
    Poll,
    /// An rtnetlink multicast event or dump.
    Netlink,
}

impl CarrierSource {
    pub fn name(self) -> &'static str {
        match self {
            CarrierSource::Poll => "poll",
            CarrierSource::Netlink => "netlink",
        }
    }
}

/// What the kernel's managed default route of one family points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteVia {
    /// No default route at the managed metric.
    Absent,
    /// Via this uplink's gateway and interface.
    Uplink(UplinkId),
    /// Something else (another gateway or interface).
    Foreign(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// ICMP echo to the gateway's own address (its CPU answers); ARP/ND
    /// through a bond member.
    Gateway,
    /// Forwarding-plane echo through the gateway: a UDP datagram to the
    /// uplink's own address in a frame to the gateway's MAC, which the
    /// router forwards straight back (BFD echo, RFC 5880 §6.4, RFC 5881 §4).
    /// `target` is the gateway's address; the prober finds the rest.
    Echo,
    /// Index into `Config::transits`.
    Transit(usize),
}

/// A probe the core wants sent: one ICMP echo through `uplink` to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    pub id: ProbeId,
    pub uplink: UplinkId,
    pub family: Family,
    pub kind: ProbeKind,
    pub target: IpAddr,
    /// Report `Timeout` if no valid reply within this.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    Reply {
        rtt: Duration,
    },
    Timeout,
    /// Could not send (e.g. no route, interface gone). Counts as a miss.
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Live carrier of an uplink's interface. `present: false` = interface missing.
    Carrier {
        uplink: UplinkId,
        up: bool,
        present: bool,
        source: CarrierSource,
    },
    /// The result of a probe the core asked for.
    ProbeDone { id: ProbeId, outcome: ProbeOutcome },
    /// The kernel's managed default route of a family, from a dump: authoritative.
    DefaultRoute { family: Family, via: RouteVia },
    /// The same from a multicast event: it may describe a state from before
    /// the agent's own last change, so a mismatch only asks for a dump.
    DefaultRouteHint { family: Family, via: RouteVia },
    /// Operator control: drain / undrain an uplink.
    Drain { uplink: UplinkId, drained: bool },
    /// Operator control: forget probe verdict timers and probe everything now.
    Reprobe,
    /// A managed bond as last read (driver's active member, settings,
    /// enslaved members): the driver may change its active member by itself.
    Bond(crate::status::BondStatus),
    /// A deadline passed.
    Tick,
    /// The kernel refused the latest `SetDefaultRoute` of `family` (its
    /// gateway is not on the link: the uplink's address is gone, as while a
    /// network manager reconfigures it). Nothing went in, so the absence
    /// found next is not another writer's doing: the next restore is made
    /// at once and is not counted as a fight.
    RouteRefused { family: Family },
    /// The default route of another owner that wins over the managed one in
    /// this family (the lowest metric among them), or None: there is none.
    CompetingRoute {
        family: Family,
        route: Option<crate::status::CompetingRoute>,
    },
    /// Whether the service address of `family` (`agent.source4`/`source6`)
    /// is a usable local address of the host: while it is not, the daemon
    /// installs its routes without a preferred source (the kernel refuses
    /// one that is not local), and the core reports it.
    SourceAddress { family: Family, present: bool },
    /// A reading of the namespace's TCP counters and the uplinks' interface
    /// counters (see [`suspicion`]): the rules may suspect an uplink.
    Counters(suspicion::Counters),
    /// Echo mode: the forwarding-plane echo stream through `uplink`'s
    /// gateway of `family` changed (see [`echo`]); `last_back` is when the
    /// newest echo came back, if one did.
    Echo {
        uplink: UplinkId,
        family: Family,
        news: echo::EchoNews,
        last_back: Option<Now>,
    },
    /// An ICMP destination-unreachable from `from` that quotes one of our
    /// own packets (the adapter validated the quoted source). From the
    /// active uplink's gateway of `family`, it is a suspicion.
    Unreachable { family: Family, from: IpAddr },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this probe; answer with `Event::ProbeDone`.
    Probe(ProbeRequest),
    /// Run the forwarding-plane echo stream through `uplink`'s gateway of
    /// `family` (`gateway`) as `spec` says, replacing any before; `None`
    /// stops it. Answered with `Event::Echo` on changes only.
    EchoStream {
        uplink: UplinkId,
        family: Family,
        gateway: IpAddr,
        spec: Option<echo::EchoSpec>,
        /// Judge it afresh, as a new stream, even if one runs (the core
        /// forgot its verdict: the carrier came back).
        fresh: bool,
    },
    /// Replace the managed default route of `family` so it goes via `uplink`.
    SetDefaultRoute { family: Family, uplink: UplinkId },
    /// Drop the uplink's neighbour entries of this family so senders blocked
    /// on an unresolved dead gateway resume at once.
    FlushNeighbours { uplink: UplinkId, family: Family },
    /// Have the kernel resolve `uplink`'s gateway of `family` afresh: after
    /// a long outage its neighbour entry is left unresolved (INCOMPLETE or
    /// FAILED) and the kernel retries only once a second, so when a dead
    /// gateway shows signs of life (or its carrier is back) the entry is
    /// dropped and the next packet solicits it at once.
    RefreshNeighbour { uplink: UplinkId, family: Family },
    /// Dump the kernel's default route of `family` and answer with
    /// `Event::DefaultRoute`.
    VerifyRoute { family: Family },
    /// Make `uplink`'s interface the active member of its bond
    /// (IFLA_BOND_ACTIVE_SLAVE). For a bond member, this is what
    /// "the route goes via this uplink" means.
    SetBondActive { bond: String, uplink: UplinkId },
    /// A state change to log and publish.
    Report(Change),
    /// Delete this competing default route (`agent.remove_competing_routes`).
    RemoveRoute {
        family: Family,
        route: crate::status::CompetingRoute,
    },
}
