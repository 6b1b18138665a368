//! Configuration: the raw TOML is parsed once into [`Config`], a validated,
//! typed value. Every problem is reported with file, line and key; a bad
//! value is never replaced by a default.
//!
//! The typed structs below are the contract the rest of the agent uses. The
//! parsing/validation lives in this file too (`Config::load`, `Config::parse`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Address family. v4 and v6 are decided separately everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    pub policy: PolicyConfig,
    pub probe: ProbeConfig,
    /// In order of preference: index 0 is the primary.
    pub uplinks: Vec<UplinkConfig>,
    /// The upstream transit providers (any number >= 1).
    pub transits: Vec<TransitConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Unix socket for status (and, later, the full API).
    pub socket: PathBuf,
    /// Group owning the socket (read access); None = root's group.
    pub socket_group: Option<String>,
    /// Metric of the managed default route (main table). Explicit because IPv6
    /// turns 0 into 1024 and a replace only matches the same metric.
    pub route_metric: u32,
    /// Kernel fallback routes are installed at `route_metric + 1 + index` for
    /// each uplink, used only by the kernel when the agent has not acted yet
    /// (with `ignore_routes_with_linkdown=1`). false = do not install them.
    pub kernel_fallback: bool,
    /// Per-uplink routing table for probes: uplink i uses `table_base + i`.
    pub table_base: u32,
    /// Per-uplink socket mark for probes: uplink i uses `fwmark_base + i`.
    pub fwmark_base: u32,
    /// Priority of the `fwmark -> table` policy rules.
    pub rule_priority: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// The preferred uplink must be continuously healthy this long before
    /// traffic fails back to it.
    pub failback_after: Duration,
    /// An uplink fails the transit quorum when this many transits are
    /// unreachable through it while reachable through another uplink.
    pub quorum: usize,
    pub damping: DampingConfig,
}

/// Flap damping: an uplink that fails `threshold` times within `window` is
/// held down for `hold`, doubling with each further failure up to `max_hold`.
#[derive(Debug, Clone, PartialEq)]
pub struct DampingConfig {
    pub threshold: u32,
    pub window: Duration,
    pub hold: Duration,
    pub max_hold: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// How often the live carrier of every uplink is read (RTM_GETLINK).
    pub carrier_interval: Duration,
    /// Gateway echo interval while all is well.
    pub gateway_interval: Duration,
    /// Gateway echo interval while a reply is overdue (suspicion).
    pub gateway_fast_interval: Duration,
    /// A gateway is dead when it has not answered for this long...
    pub gateway_dead_after: Duration,
    /// ...and at least this many probes sent since its last reply went unanswered.
    pub gateway_min_misses: u32,
    /// Consecutive replies needed before a dead gateway counts as alive again.
    pub gateway_rise: u32,
    /// Echo timeout for gateway probes.
    pub gateway_timeout: Duration,
    /// Interval between probes of one transit target through one uplink while all is well.
    pub transit_interval: Duration,
    /// Interval while a transit target is suspected (missed a reply).
    pub transit_fast_interval: Duration,
    /// Echo timeout for transit probes.
    pub transit_timeout: Duration,
    /// Consecutive misses before a transit target counts as unreachable.
    pub transit_fall: u32,
    /// Consecutive replies before an unreachable transit target counts as reachable.
    pub transit_rise: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    pub name: String,
    pub interface: String,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
}

impl UplinkConfig {
    pub fn gateway(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.gateway4.map(IpAddr::V4),
            Family::V6 => self.gateway6.map(IpAddr::V6),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransitConfig {
    pub name: String,
    pub targets: Vec<IpAddr>,
}

impl TransitConfig {
    pub fn targets_of(&self, family: Family) -> impl Iterator<Item = IpAddr> + '_ {
        self.targets
            .iter()
            .copied()
            .filter(move |a| Family::of(a) == family)
    }
}

impl Config {
    /// Routing table used by probes of uplink `i`.
    pub fn table_of(&self, i: usize) -> u32 {
        self.agent.table_base + i as u32
    }
    /// Socket mark used by probes of uplink `i`.
    pub fn fwmark_of(&self, i: usize) -> u32 {
        self.agent.fwmark_base + i as u32
    }
}
