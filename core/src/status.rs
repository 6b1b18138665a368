//! The one status type: what the core publishes, the socket serves,
//! `uplinkctl` prints and the tests assert on. Keep it stable: fields are
//! only ever added.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Snapshot of everything the agent knows and decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Which uplink carries each family's default route (uplink name, or null).
    pub active: PerFamily<Option<String>>,
    /// True while no uplink of that family is healthy and the agent keeps the
    /// current route ("fail static").
    pub fail_static: PerFamily<bool>,
    /// True once the agent has made its first decision for every family.
    pub decided: bool,
    pub uplinks: Vec<UplinkStatus>,
    /// The managed active-backup bonds (empty without bond members).
    #[serde(default)]
    pub bonds: Vec<BondStatus>,
    /// "enforce" or "observe" (`[agent] mode`): whether the decisions
    /// above are carried out.
    #[serde(default = "enforce")]
    pub mode: String,
    /// Observe mode only: what the agent would do and does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<ObserveStatus>,
}

fn enforce() -> String {
    "enforce".into()
}

/// In observe mode the decisions are reported and not carried out; this
/// says so beside the decisions, so nobody reads `active` as the kernel's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserveStatus {
    /// The uplink each family's default route would be on: the decision,
    /// which the kernel's route does not follow.
    pub would_route: PerFamily<Option<String>>,
    /// What observe mode installs (only the probe tables and rules) and
    /// what it leaves alone, so an operator knows what the trial touches.
    pub installs: String,
}

/// A managed bond: the driver's view, the agent's choice, and loud warnings
/// about settings that weaken or fight the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondStatus {
    pub name: String,
    pub present: bool,
    /// The driver's active member (interface), as last read.
    pub active: Option<String>,
    /// The member the agent chose (interface); null before its first choice.
    pub chosen: Option<String>,
    pub mode: Option<String>,
    pub miimon_ms: Option<u32>,
    pub arp_interval_ms: Option<u32>,
    pub primary: Option<String>,
    pub primary_reselect: Option<String>,
    /// Configured members currently enslaved to the bond.
    pub enslaved: Vec<String>,
    /// Settings that weaken or fight the agent, each with what it does about it.
    pub warnings: Vec<String>,
}

/// What one check proves for a bond member, and how it is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCheck {
    /// "carrier", "gateway4", "gateway6", "transits".
    pub check: String,
    /// Whether this check is done through this member.
    pub probed: bool,
    /// How, or why not.
    pub how: String,
}

/// Bond membership of an uplink (absent for routed uplinks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondMemberStatus {
    pub bond: String,
    /// Enslaved to that bond right now.
    pub enslaved: bool,
    /// The driver's active member right now.
    pub active: bool,
    pub checks: Vec<MemberCheck>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerFamily<T> {
    pub ipv4: T,
    pub ipv6: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    /// Not enough evidence yet (just started).
    Unknown,
    /// Usable for every family it has a gateway for.
    Healthy,
    /// Usable for some families, not for others.
    Degraded,
    /// Usable for no family.
    Unhealthy,
}

/// Why an uplink (or one family of it) is not usable. A failure is a set of
/// these, never a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The interface has no carrier (or is administratively down / missing).
    Carrier,
    /// The gateway of this family stopped answering.
    Gateway { family: String },
    /// Too many transits unreachable through this uplink while reachable
    /// through another.
    Quorum {
        family: String,
        unreachable: Vec<String>,
    },
    /// Held down after repeated flaps.
    Damped { remaining_ms: u64 },
    /// Drained by an operator.
    Drained,
    /// The interface does not exist (yet).
    Missing,
    /// A bond member that is not enslaved to its bond (removed from it).
    NotInBond { bond: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    pub interface: String,
    pub state: UplinkState,
    pub carrier: bool,
    pub drained: bool,
    /// Union of the reasons of every family.
    pub reasons: Vec<Reason>,
    /// Failures (healthy -> unhealthy) counted for damping in the current window.
    pub flaps: u32,
    /// Remaining hold-down, if damped.
    pub damped_ms: Option<u64>,
    pub families: PerFamily<Option<FamilyStatus>>,
    /// Gateway probe state per family (null when the uplink has no gateway of that family).
    pub gateway: PerFamily<Option<TargetStatus>>,
    /// One entry per transit target of every family, probed through this uplink.
    pub transits: Vec<TransitStatus>,
    /// Set for a bond member: its bond, and what each check proves through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondMemberStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyStatus {
    pub state: UplinkState,
    pub reasons: Vec<Reason>,
    /// How long the uplink has been continuously usable for this family.
    pub healthy_for_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub address: IpAddr,
    /// None until the first verdict.
    pub reachable: Option<bool>,
    /// Smoothed round-trip time.
    pub rtt_ms: Option<f64>,
    /// Fraction of the recent probes that got no reply.
    pub loss: f64,
    pub last_reply_ms_ago: Option<u64>,
    /// Probes sent since the last reply that went unanswered.
    pub misses: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitStatus {
    pub name: String,
    pub family: String,
    pub target: IpAddr,
    pub reachable: Option<bool>,
    pub rtt_ms: Option<f64>,
    pub loss: f64,
}

/// One state change, as logged and as sent on the event stream. The daemon
/// adds `seq` and `time` when it publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The uplink carrying a family changed.
    ActiveChanged {
        family: String,
        from: Option<String>,
        to: Option<String>,
        reason: String,
    },
    /// An uplink's usability for a family changed.
    UplinkHealth {
        uplink: String,
        family: String,
        state: UplinkState,
        reasons: Vec<Reason>,
        evidence: String,
    },
    Carrier {
        uplink: String,
        up: bool,
        source: String,
    },
    Gateway {
        uplink: String,
        family: String,
        address: IpAddr,
        reachable: bool,
        evidence: String,
    },
    Transit {
        uplink: String,
        transit: String,
        target: IpAddr,
        reachable: bool,
        evidence: String,
    },
    FailStatic {
        family: String,
        active: bool,
        evidence: String,
    },
    Damped {
        uplink: String,
        hold_ms: u64,
        flaps: u32,
    },
    Drained {
        uplink: String,
        drained: bool,
    },
    /// Somebody else changed or deleted a managed route; the agent put it back.
    RouteRestored {
        family: String,
        uplink: String,
        found: String,
    },
    /// The route was adopted as found at start.
    Adopted {
        family: String,
        uplink: Option<String>,
    },
    /// A bond's active member changed (`by`: "agent" or "driver"), or its
    /// settings changed (`warnings` lists what weakens or fights the agent).
    Bond {
        bond: String,
        from: Option<String>,
        to: Option<String>,
        by: String,
        cause: String,
        warnings: Vec<String>,
    },
}

impl Change {
    /// Its `kind`, exactly as on the wire: what metrics count by and hooks
    /// select on.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::ActiveChanged { .. } => "active_changed",
            Change::UplinkHealth { .. } => "uplink_health",
            Change::Carrier { .. } => "carrier",
            Change::Gateway { .. } => "gateway",
            Change::Transit { .. } => "transit",
            Change::FailStatic { .. } => "fail_static",
            Change::Damped { .. } => "damped",
            Change::Drained { .. } => "drained",
            Change::RouteRestored { .. } => "route_restored",
            Change::Adopted { .. } => "adopted",
            Change::Bond { .. } => "bond",
        }
    }
}

/// A published change: what goes on the wire and into the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    /// RFC 3339 wall-clock time.
    pub time: String,
    #[serde(flatten)]
    pub change: Change,
    /// Set in observe mode on a decision that was not carried out (a
    /// route or bond member the agent would have changed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observe: bool,
}
