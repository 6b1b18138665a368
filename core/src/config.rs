//! The validated configuration: the typed values the engine and the
//! adapters use. Parsing and validation (TOML with file, line and key in
//! every error) live in the daemon's `config` module; a value of these types
//! has passed them.

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
    /// Commands run on changes (`[hooks]`); none by default.
    pub hooks: HooksConfig,
    /// Prometheus metrics (`[metrics]`): always on the socket, optionally HTTP.
    pub metrics: MetricsConfig,
}

/// Commands run on state changes, each through `/bin/sh -c`, asynchronously,
/// with the change in `UPLINKD_*` environment variables and as JSON on stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct HooksConfig {
    /// Run on every change of a family's active uplink (`active_changed`).
    pub on_active_change: Vec<String>,
    /// Run on every health change of an uplink or transit target
    /// (`uplink_health`, `carrier`, `gateway`, `transit`, `fail_static`, `damped`).
    pub on_health_change: Vec<String>,
    /// A hook still running after this is killed (its whole process group).
    pub timeout: Duration,
}

/// Prometheus metrics: served by `metrics` on the socket, and over HTTP
/// when `http` is on.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Also serve `GET /metrics` over HTTP on `listen`. Off by default: the
    /// socket already serves the same text to local collectors.
    pub http: bool,
    /// Address and port of the HTTP listener (loopback by default).
    pub listen: std::net::SocketAddr,
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
/// Failures are counted per family (a family lost is one failure of that
/// family) and the uplink is judged on the family that failed most: a
/// carrier flap that takes both families down counts once, and a family
/// that stays down does not hide the other's flaps.
#[derive(Debug, Clone, PartialEq)]
pub struct DampingConfig {
    pub threshold: u32,
    pub window: Duration,
    pub hold: Duration,
    pub max_hold: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// The loop's tick: how often the live carrier of every uplink is read,
    /// and the granularity of probe replies and timers.
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
    /// An uplink that carries no default route of a family is probed (its
    /// gateway and the transits through it, for that family) this many times
    /// less often while all is well; 1 probes it like the active one.
    pub standby_slowdown: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UplinkConfig {
    pub name: String,
    pub interface: String,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Set when `interface` is a member (port) of this active-backup bond:
    /// the gateways are reached through the bond, and choosing this uplink
    /// means making `interface` the bond's active member.
    pub bond: Option<String>,
    /// Bond members only: a dedicated address (never configured on the
    /// host) from which transit probes are sent through this member, active
    /// or backup; the agent answers the gateway's ARP / neighbour
    /// solicitations for it with the member's own MAC. Without it the
    /// transits are not probed through the member.
    pub probe_address4: Option<Ipv4Addr>,
    pub probe_address6: Option<Ipv6Addr>,
}

impl UplinkConfig {
    /// The interface routes and neighbours of this uplink live on: the bond
    /// for a bond member, else its own interface.
    pub fn route_interface(&self) -> &str {
        self.bond.as_deref().unwrap_or(&self.interface)
    }

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

// ---------------------------------------------------------------------------
// Defaults (documented in config/uplinkd.toml; a test checks they agree)
// ---------------------------------------------------------------------------

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            socket: PathBuf::from("/run/uplinkd/uplinkd.sock"),
            socket_group: None,
            route_metric: 10,
            kernel_fallback: true,
            table_base: 1000,
            fwmark_base: 1000,
            rule_priority: 1000,
        }
    }
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            on_active_change: Vec::new(),
            on_health_change: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            http: false,
            // 9469: free in the Prometheus default port allocations wiki page.
            listen: std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 9469)),
        }
    }
}

impl Default for DampingConfig {
    fn default() -> Self {
        DampingConfig {
            threshold: 3,
            window: Duration::from_secs(600),
            hold: Duration::from_secs(60),
            max_hold: Duration::from_secs(600),
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            carrier_interval: Duration::from_millis(4),
            gateway_interval: Duration::from_millis(48),
            gateway_fast_interval: Duration::from_millis(4),
            gateway_dead_after: Duration::from_millis(60),
            gateway_min_misses: 8,
            gateway_rise: 3,
            gateway_timeout: Duration::from_millis(8),
            transit_interval: Duration::from_secs(1),
            transit_fast_interval: Duration::from_millis(50),
            transit_timeout: Duration::from_millis(200),
            transit_fall: 4,
            transit_rise: 2,
            standby_slowdown: 2,
        }
    }
}

impl PolicyConfig {
    /// Default `failback_after`.
    pub const DEFAULT_FAILBACK_AFTER: Duration = Duration::from_secs(30);
    /// Default quorum for `n_transits`: a majority-or-half, ceil(n/2)
    /// (1 of 1, 1 of 2, 2 of 3, 2 of 4).
    pub fn default_quorum(n_transits: usize) -> usize {
        n_transits.div_ceil(2).max(1)
    }
}
