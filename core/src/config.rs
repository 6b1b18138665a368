//! The validated configuration: the typed values the engine and the
//! adapters use, and the declaration of every key (name, default, accepted
//! range) they are read from. Parsing and validation (TOML with file, line
//! and key in every error) live in the daemon's `config` module; a value of
//! these types has passed them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

// ---------------------------------------------------------------------------
// Key declarations: what the parser (the daemon's `config` module) reads
// ---------------------------------------------------------------------------

/// One key of a configuration section `S`: its TOML name, what its value
/// must be, and the field of `S` a valid value is written to. The parser
/// walks these lists; nothing else names a key.
pub struct Key<S> {
    /// The key as written in the file, e.g. `carrier_interval`.
    pub name: &'static str,
    /// What the value must be, and where it goes.
    pub kind: Kind<S>,
}

/// What a key's value must be (its TOML type and the rule the parser checks),
/// with the setter of the field it fills. Ranges are inclusive and are the
/// ones documented in config/uplinkd.toml. Every duration has an upper bound
/// of at most a day, so that the engine's and the daemon's arithmetic on
/// them (`now + interval * slowdown`, `Instant + timeout`) cannot overflow.
pub enum Kind<S> {
    /// A duration string ("250ms", "30s", "1h 30m") within `min..=max`.
    Duration {
        min: Duration,
        max: Duration,
        set: fn(&mut S, Duration),
    },
    /// An integer within `min..=max`; `why` (may be empty) explains the bounds.
    Count {
        min: u32,
        max: u32,
        why: &'static str,
        set: fn(&mut S, u32),
    },
    /// true or false.
    Bool { set: fn(&mut S, bool) },
    /// An absolute path for a Unix socket (fits `sun_path`).
    SocketPath { set: fn(&mut S, PathBuf) },
    /// A group name (absent = root's group).
    Group { set: fn(&mut S, Option<String>) },
    /// An IP address and a fixed port.
    Listen { set: fn(&mut S, SocketAddr) },
    /// Command lines for `/bin/sh -c`.
    Commands { set: fn(&mut S, Vec<String>) },
    /// 1..=the number of transits.
    Quorum { set: fn(&mut S, usize) },
    /// An object name (letters, digits, '_', '.', '-'; at most 32 bytes),
    /// unique among its kind.
    Name { set: fn(&mut S, String) },
    /// A Linux interface name.
    Interface { set: fn(&mut S, String) },
    /// A unicast IPv4 address.
    Ipv4 { set: fn(&mut S, Ipv4Addr) },
    /// A unicast IPv6 address.
    Ipv6 { set: fn(&mut S, Ipv6Addr) },
    /// An optional unicast IPv4 address (absent = None); an IPv6 address
    /// is refused with a message naming the other family's key.
    OptIpv4 { set: fn(&mut S, Option<Ipv4Addr>) },
    /// An optional unicast IPv6 address (absent = None); see `OptIpv4`.
    OptIpv6 { set: fn(&mut S, Option<Ipv6Addr>) },
    /// A list of unicast addresses, each listed once in the whole file.
    Targets { set: fn(&mut S, Vec<IpAddr>) },
    /// One of [`AgentMode::NAMES`].
    Mode { set: fn(&mut S, AgentMode) },
    /// One of [`GatewayProbe::NAMES`].
    GatewayProbe { set: fn(&mut S, GatewayProbe) },
}

/// How an uplink's gateway is probed (`[[uplink]] gateway_probe`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GatewayProbe {
    /// Try the forwarding-plane echo at start and whenever the gateway
    /// recovers; use it where it comes back, ICMP/ARP/ND where it does not.
    #[default]
    Auto,
    /// The forwarding-plane echo only (a datagram to our own address in a
    /// frame to the gateway's MAC), plus a slow ICMP check for diagnosis.
    Echo,
    /// ICMP echo requests to the gateway's own address (its CPU answers).
    Icmp,
}

impl GatewayProbe {
    /// The accepted values, as written in the file.
    pub const NAMES: [&'static str; 3] = ["auto", "echo", "icmp"];
    pub fn name(self) -> &'static str {
        match self {
            GatewayProbe::Auto => "auto",
            GatewayProbe::Echo => "echo",
            GatewayProbe::Icmp => "icmp",
        }
    }
    pub fn from_name(s: &str) -> Option<GatewayProbe> {
        match s {
            "auto" => Some(GatewayProbe::Auto),
            "echo" => Some(GatewayProbe::Echo),
            "icmp" => Some(GatewayProbe::Icmp),
            _ => None,
        }
    }
}

/// Whether the agent carries out its decisions (`[agent] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AgentMode {
    /// Routes, rules, sysctls and bond members follow the decisions.
    #[default]
    Enforce,
    /// Probe, decide and report, but change nothing the host routes by:
    /// a trial run beside an existing setup.
    Observe,
}

impl AgentMode {
    /// The accepted values, as written in the file.
    pub const NAMES: [&'static str; 2] = ["enforce", "observe"];
    pub fn name(self) -> &'static str {
        match self {
            AgentMode::Enforce => "enforce",
            AgentMode::Observe => "observe",
        }
    }
    pub fn from_name(s: &str) -> Option<AgentMode> {
        match s {
            "enforce" => Some(AgentMode::Enforce),
            "observe" => Some(AgentMode::Observe),
            _ => None,
        }
    }
}

/// Declares a flat configuration section once: for each key its doc, field
/// type, default and [`Kind`] (with the kind's range arguments). Expands to
/// the struct (every field `pub`), `impl Default` from the defaults, and
/// `keys()`: one [`Key`] per field, named like the field, in this order.
///
/// ```text
/// settings! {
///     /// Section doc.
///     pub struct ProbeConfig {
///         /// Field doc.
///         carrier_interval: Duration = ms(4), Duration { min: .., max: .. };
///     }
/// }
/// ```
macro_rules! settings {
    ($(
        $(#[doc = $doc:expr])*
        pub struct $section:ident {
            $(
                $(#[doc = $field_doc:expr])*
                $field:ident: $ty:ty = $default:expr, $kind:ident { $($arg:ident: $value:expr),* $(,)? };
            )*
        }
    )*) => {$(
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $section {
            $($(#[doc = $field_doc])* pub $field: $ty,)*
        }

        impl Default for $section {
            fn default() -> Self {
                $section { $($field: $default,)* }
            }
        }

        impl $section {
            /// The keys of this section, in declaration order.
            pub fn keys() -> Vec<Key<Self>> {
                vec![$(Key {
                    name: stringify!($field),
                    kind: Kind::$kind { $($arg: $value,)* set: |s: &mut Self, v| s.$field = v },
                },)*]
            }
        }
    )*};
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Shortest carrier poll: below it the poller thread is a busy loop
/// (src/netlink/carrier.rs refuses it too).
pub const CARRIER_INTERVAL_MIN: Duration = Duration::from_micros(100);

/// Upper bound for counters and thresholds: larger values are almost
/// certainly a typo, and would make a detector that never fires.
pub const COUNT_MAX: u32 = 1000;

/// The kernel's default rules sit at 0 (local), 32766 (main) and 32767
/// (default); the probe rules must come after local and before main.
pub const RULE_PRIORITY_MAX: u32 = 32765;

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// The preferred uplink must be continuously healthy this long before
    /// traffic fails back to it.
    pub failback_after: Duration,
    /// An uplink fails the transit quorum when this many transits are
    /// unreachable through it while reachable through another uplink.
    pub quorum: usize,
    /// `[policy.damping]`: holding a flapping uplink down.
    pub damping: DampingConfig,
}

// ---------------------------------------------------------------------------
// The keys of the flat sections, each declared once: field, type, default
// and the range the parser accepts (documented in config/uplinkd.toml).
// `settings!` turns each declaration into the struct field, its `Default`
// and an entry of the section's `keys()`, which the parser reads.
// ---------------------------------------------------------------------------

settings! {
    /// The agent itself: its socket and the kernel objects it owns. Every key
    /// needs a restart to change.
    pub struct AgentConfig {
        /// Unix socket for status, events, metrics and controls.
        socket: PathBuf = PathBuf::from("/run/uplinkd/uplinkd.sock"), SocketPath {};
        /// Group owning the socket (read access); None = root's group.
        socket_group: Option<String> = None, Group {};
        /// Metric of the managed default route (main table). Explicit because IPv6
        /// turns 0 into 1024 and a replace only matches the same metric.
        route_metric: u32 = 10, Count {
            min: 1,
            max: u32::MAX - 64,
            why: "0 becomes 1024 for IPv6, and kernel fallback routes use route_metric + 1 + uplink index",
        };
        /// Kernel fallback routes are installed at `route_metric + 1 + index` for
        /// each uplink, used only by the kernel when the agent has not acted yet
        /// (with `ignore_routes_with_linkdown=1`). false = do not install them.
        kernel_fallback: bool = true, Bool {};
        /// Delete another owner's default route that wins over ours (lower metric, main table) instead of only reporting it.
        remove_competing_routes: bool = false, Bool {};
        /// Per-uplink routing table for probes: uplink i uses `table_base + i`.
        table_base: u32 = 1000, Count { min: 1, max: u32::MAX, why: "" };
        /// Per-uplink socket mark for probes: uplink i uses `fwmark_base + i`.
        fwmark_base: u32 = 1000, Count { min: 1, max: u32::MAX, why: "mark 0 means unmarked" };
        /// Priority of the `fwmark -> table` policy rules.
        rule_priority: u32 = 1000, Count {
            min: 1,
            max: RULE_PRIORITY_MAX,
            why: "the rules must come after the local rule (0) and before the main table's (32766)",
        };
        /// "observe": decide and report without changing the host (see config/uplinkd.toml).
        mode: AgentMode = AgentMode::Enforce, Mode {};
        /// The server's IPv4 service address (on its loopback, routed to it by
        /// the network through every uplink): the preferred source (RTA_PREFSRC)
        /// of every IPv4 default route uplinkd installs in the main table, so
        /// connections use it whichever uplink carries them. None = no src.
        source4: Option<Ipv4Addr> = None, OptIpv4 {};
        /// The server's IPv6 service address; see `source4`.
        source6: Option<Ipv6Addr> = None, OptIpv6 {};
    }

    /// Flap damping: an uplink that fails `threshold` times within `window` is
    /// held down for `hold`, doubling with each further failure up to `max_hold`.
    /// Failures are counted per family (a family lost is one failure of that
    /// family) and the uplink is judged on the family that failed most: a
    /// carrier flap that takes both families down counts once, and a family
    /// that stays down does not hide the other's flaps.
    pub struct DampingConfig {
        /// Failures within `window` that start a hold-down.
        threshold: u32 = 3, Count { min: 1, max: COUNT_MAX, why: "" };
        /// How far back failures are counted.
        window: Duration = secs(600), Duration { min: SECOND, max: DAY };
        /// The first hold-down: long enough that a flapping link stops costing a
        /// switch each time it comes back.
        hold: Duration = secs(60), Duration { min: SECOND, max: DAY };
        /// The longest hold-down, however often the uplink flaps.
        max_hold: Duration = secs(600), Duration { min: SECOND, max: DAY };
    }

    /// How uplinks are watched: the carrier poll, gateway and transit probes.
    pub struct ProbeConfig {
        /// The loop's tick: how often the live carrier of every uplink is read,
        /// and the granularity of probe replies and timers.
        carrier_interval: Duration = ms(4), Duration { min: CARRIER_INTERVAL_MIN, max: SECOND };
        /// Gateway echo interval while all is well.
        gateway_interval: Duration = ms(48), Duration { min: ms(1), max: secs(10) };
        /// Gateway echo interval while a reply is overdue (suspicion).
        gateway_fast_interval: Duration = ms(4), Duration { min: CARRIER_INTERVAL_MIN, max: secs(10) };
        /// A gateway is dead when it has not answered for this long...
        gateway_dead_after: Duration = ms(60), Duration { min: ms(1), max: MINUTE };
        /// ...and at least this many probes sent since its last reply went unanswered.
        gateway_min_misses: u32 = 8, Count { min: 1, max: COUNT_MAX, why: "" };
        /// Consecutive replies needed before a dead gateway counts as alive again.
        gateway_rise: u32 = 3, Count { min: 1, max: COUNT_MAX, why: "" };
        /// Echo timeout for gateway probes.
        gateway_timeout: Duration = ms(8), Duration { min: ms(1), max: secs(10) };
        /// Echo mode: one forwarding-plane echo every this long through the uplink
        /// carrying the family's traffic while they all come back (a standby: every
        /// `gateway_interval`); while one is missing the stream hurries (see
        /// `echo_dead_after`). The echoes leave on the carrier poller's tick
        /// (`carrier_interval`): a shorter interval sends several per tick.
        echo_interval: Duration = ms(12), Duration { min: ms(1), max: SECOND };
        /// Echo mode: the gateway stops counting as alive when the echoes sent over
        /// this long all went unanswered. As soon as one is missing the stream sends
        /// enough per tick for at least 8 to be lost in this window (4 per tick at
        /// the defaults: 9 in 12 ms); see core/src/echo.rs for the false-trip
        /// arithmetic.
        echo_dead_after: Duration = ms(12), Duration { min: ms(2), max: secs(10) };
        /// Echo mode: while the uplink carrying the family has carried no traffic
        /// (packets sent besides the agent's own) for a second, its stream sends one
        /// echo every this long instead of every `echo_interval`; the first reading
        /// of its counters that sees traffic (every 16 ms) brings the full rate back
        /// at once, with an echo on that tick. A standby's rate (`gateway_interval`)
        /// and the hurry are unchanged. Set it to `echo_interval` to keep the full
        /// rate on an idle server.
        echo_idle_interval: Duration = ms(48), Duration { min: ms(1), max: SECOND };
        /// Interval between probes of one transit target through one uplink while all is well.
        transit_interval: Duration = secs(1), Duration { min: ms(10), max: HOUR };
        /// Interval while a transit target is suspected (missed a reply).
        transit_fast_interval: Duration = ms(50), Duration { min: ms(10), max: HOUR };
        /// Echo timeout for transit probes.
        transit_timeout: Duration = ms(200), Duration { min: ms(1), max: MINUTE };
        /// Consecutive misses before a transit target counts as unreachable.
        transit_fall: u32 = 4, Count { min: 1, max: COUNT_MAX, why: "" };
        /// Consecutive replies before an unreachable transit target counts as reachable.
        transit_rise: u32 = 2, Count { min: 1, max: COUNT_MAX, why: "" };
        /// An uplink that carries no default route of a family is probed (its
        /// gateway and the transits through it, for that family) this many times
        /// less often while all is well; 1 probes it like the active one.
        standby_slowdown: u32 = 2, Count { min: 1, max: 10, why: "" };
        /// Passive suspicion (core/src/suspicion.rs): the server's own traffic
        /// (TCP progress and timeouts, the active uplink's receive counter, ICMP
        /// unreachables from the gateway) starts a confirmation burst to the
        /// suspected uplink's transits. false = only the probes decide when to
        /// probe harder (the steady probes are the same either way).
        suspicion: bool = true, Bool {};
        /// The window over which progress is judged: TCP segments sent with none
        /// received over it (when some were received over the window before) is
        /// a stall. Widened to 4 × the transits' smoothed RTT when that is longer.
        suspicion_window: Duration = ms(40), Duration { min: ms(8), max: secs(10) };
        /// Segments (packets, for the receive counter) sent within one window,
        /// beyond the agent's own probes, with nothing received, before a stall
        /// is suspected.
        suspicion_segments: u32 = 8, Count { min: 1, max: COUNT_MAX, why: "" };
        /// Retransmission timeouts plus tail-loss probes within one window, with
        /// no more segments received than retransmitted, before a path failure
        /// is suspected.
        suspicion_timeouts: u32 = 4, Count { min: 1, max: COUNT_MAX, why: "" };
        /// Spacing of the rounds of a confirmation burst (`transit_fall` probes
        /// to each transit target, each with a timeout of 4 × its smoothed RTT,
        /// at least 10 ms and at most `transit_timeout`).
        suspicion_burst_interval: Duration = ms(10), Duration { min: ms(1), max: SECOND };
        /// At most one confirmation burst per uplink within this.
        suspicion_holdoff: Duration = secs(1), Duration { min: SECOND, max: HOUR };
    }

    /// Commands run on state changes, each through `/bin/sh -c`, asynchronously,
    /// with the change in `UPLINKD_*` environment variables and as JSON on stdin.
    pub struct HooksConfig {
        /// Run on every change of a family's active uplink (`active_changed`).
        on_active_change: Vec<String> = Vec::new(), Commands {};
        /// Run on every health change of an uplink or transit target
        /// (`uplink_health`, `carrier`, `gateway`, `transit`, `fail_static`, `damped`).
        on_health_change: Vec<String> = Vec::new(), Commands {};
        /// A hook still running after this is killed (its whole process group).
        timeout: Duration = secs(10), Duration { min: ms(100), max: HOUR };
    }

    /// Prometheus metrics: served by `metrics` on the socket, and over HTTP
    /// when `http` is on.
    pub struct MetricsConfig {
        /// Also serve `GET /metrics` over HTTP on `listen`. Off by default: the
        /// socket already serves the same text to local collectors.
        http: bool = false, Bool {};
        /// Address and port of the HTTP listener (loopback by default; 9469 is
        /// free in the Prometheus default port allocations wiki page).
        listen: SocketAddr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9469)), Listen {};
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
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
    /// host) from which transit probes and forwarding-plane echoes are sent
    /// through this member, active or backup; the agent answers the
    /// gateway's ARP / neighbour solicitations for it with the member's own
    /// MAC. Without it the transits are not probed through the member, and
    /// its gateway is probed by ARP / ND only.
    pub probe_address4: Option<Ipv4Addr>,
    pub probe_address6: Option<Ipv6Addr>,
    /// How the gateway is probed: the forwarding-plane echo, ICMP to the
    /// router itself, or whichever works (`auto`).
    pub gateway_probe: GatewayProbe,
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

    /// Whether the forwarding-plane echo can probe this uplink's gateway of
    /// `family`: a routed uplink echoes from its own address, a bond member
    /// from its probe address of that family (without one, its gateway is
    /// probed by ARP / ND). In echo mode the echoes run as a stream on the
    /// carrier poller's tick, a bond member's as a routed uplink's.
    pub fn can_echo(&self, family: Family) -> bool {
        self.bond.is_none() || self.probe_address(family).is_some()
    }

    /// A bond member's probe address of `family`, if it has one.
    pub fn probe_address(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.probe_address4.map(IpAddr::V4),
            Family::V6 => self.probe_address6.map(IpAddr::V6),
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

impl AgentConfig {
    /// The service address of `family` (`source4` / `source6`), if set.
    pub fn source(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.source4.map(IpAddr::V4),
            Family::V6 => self.source6.map(IpAddr::V6),
        }
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
// Keys of the sections the macro does not cover: their defaults depend on
// other sections (quorum) or they have none ([[uplink]], [[transit]]).
// ---------------------------------------------------------------------------

impl<S> Key<S> {
    const fn new(name: &'static str, kind: Kind<S>) -> Self {
        Key { name, kind }
    }
}

impl PolicyConfig {
    /// The keys of `[policy]` (besides the `[policy.damping]` table).
    pub fn keys() -> Vec<Key<Self>> {
        let (min, max) = (SECOND, DAY);
        vec![
            Key::new(
                "failback_after",
                Kind::Duration {
                    min,
                    max,
                    set: |p, v| p.failback_after = v,
                },
            ),
            Key::new(
                "quorum",
                Kind::Quorum {
                    set: |p, v| p.quorum = v,
                },
            ),
        ]
    }
}

impl UplinkConfig {
    /// The keys of each `[[uplink]]`; `name` and `interface` are required.
    pub fn keys() -> Vec<Key<Self>> {
        vec![
            Key::new(
                "name",
                Kind::Name {
                    set: |u, v| u.name = v,
                },
            ),
            Key::new(
                "interface",
                Kind::Interface {
                    set: |u, v| u.interface = v,
                },
            ),
            Key::new(
                "gateway4",
                Kind::Ipv4 {
                    set: |u, v| u.gateway4 = Some(v),
                },
            ),
            Key::new(
                "gateway6",
                Kind::Ipv6 {
                    set: |u, v| u.gateway6 = Some(v),
                },
            ),
            Key::new(
                "bond",
                Kind::Interface {
                    set: |u, v| u.bond = Some(v),
                },
            ),
            Key::new(
                "probe_address4",
                Kind::Ipv4 {
                    set: |u, v| u.probe_address4 = Some(v),
                },
            ),
            Key::new(
                "probe_address6",
                Kind::Ipv6 {
                    set: |u, v| u.probe_address6 = Some(v),
                },
            ),
            Key::new(
                "gateway_probe",
                Kind::GatewayProbe {
                    set: |u, v| u.gateway_probe = v,
                },
            ),
        ]
    }
}

impl TransitConfig {
    /// The keys of each `[[transit]]`; both are required.
    pub fn keys() -> Vec<Key<Self>> {
        vec![
            Key::new(
                "name",
                Kind::Name {
                    set: |t, v| t.name = v,
                },
            ),
            Key::new(
                "targets",
                Kind::Targets {
                    set: |t, v| t.targets = v,
                },
            ),
        ]
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
