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
    /// Per family, the default route of another owner (a DHCP client,
    /// networkd, NetworkManager, an operator) that wins over the managed one
    /// (a lower metric in the main table): while set, traffic does not go
    /// where `active` says. The one with the lowest metric when several.
    #[serde(default)]
    pub competing_route: PerFamily<Option<CompetingRoute>>,
    /// Per family, the other writer (route and protocol) that keeps
    /// rewriting the managed route while the agent restores it with backoff.
    #[serde(default)]
    pub fighting: PerFamily<Option<String>>,
    /// Per family, the service address (`agent.source4` / `source6`) the
    /// default routes carry as their preferred source, and whether it is on
    /// the host; null when not configured.
    #[serde(default)]
    pub source: PerFamily<Option<SourceStatus>>,
    /// "enforce" or "observe" (`[agent] mode`): whether the decisions
    /// above are carried out.
    #[serde(default = "enforce")]
    pub mode: String,
    /// Observe mode only: what the agent would do and does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<ObserveStatus>,
}

/// A default route of another owner, as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompetingRoute {
    /// Its gateway, if any (a route on a device may have none).
    pub via: Option<IpAddr>,
    /// Its output interface (name, or `ifindex N` when not known).
    pub dev: String,
    pub metric: u32,
    /// Who installed it, by rtm_protocol: "dhcp", "static", "boot", "ra"...
    pub protocol: String,
}

/// `default route via 198.18.2.1 dev eth1 metric 0 (proto dhcp)`: how the
/// log, `uplinkctl status` and `uplinkctl check` name it.
impl std::fmt::Display for CompetingRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("default route")?;
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        write!(
            f,
            " dev {} metric {} (proto {})",
            self.dev, self.metric, self.protocol
        )
    }
}

/// The reason a service address shows while it is missing from the host.
pub const SOURCE_MISSING: &str = "source_missing";

/// A configured service address (`agent.source4` / `source6`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub address: IpAddr,
    /// A usable local address of the host. While false the default routes
    /// are installed without a preferred source (the kernel refuses a
    /// source that is not local), and `reason` says so.
    pub present: bool,
    /// "source_missing" while `present` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// The gateway of this family stopped forwarding: its forwarding-plane
    /// echoes (a datagram to our own address, sent to the gateway's MAC)
    /// no longer come back, whether or not its CPU still answers pings.
    Forwarding { family: String },
    /// Too many transits unreachable through this uplink while reachable
    /// through another.
    Quorum {
        family: String,
        unreachable: Vec<String>,
    },
    /// Too many transits unreachable through this uplink, and through every
    /// other uplink with carrier and a live gateway as well: the trouble is
    /// beyond all of them, no uplink is better, so the agent does not move
    /// and the family fails static.
    QuorumEverywhere {
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
    /// Failures (healthy -> unhealthy) counted for damping in the current
    /// window: those of its family that failed most (flaps are counted per
    /// family, so one that stays down does not hide the other's).
    pub flaps: u32,
    /// Remaining hold-down, if damped.
    pub damped_ms: Option<u64>,
    pub families: PerFamily<Option<FamilyStatus>>,
    /// Gateway probe state per family (null when the uplink has no gateway of that family).
    pub gateway: PerFamily<Option<TargetStatus>>,
    /// How each family's gateway is probed (null without a gateway).
    #[serde(default)]
    pub gateway_probe: PerFamily<Option<GatewayProbeStatus>>,
    /// One entry per transit target of every family, probed through this uplink.
    pub transits: Vec<TransitStatus>,
    /// Set for a bond member: its bond, and what each check proves through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondMemberStatus>,
    /// Passive suspicions raised on this uplink and the confirmation bursts
    /// they started (see `[probe] suspicion`).
    #[serde(default)]
    pub suspicion: SuspicionStatus,
}

/// Passive suspicions of one uplink since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SuspicionStatus {
    /// Suspicions raised, by source (`tcp_stall`, `tcp_timeouts`,
    /// `rx_stall`, `icmp_unreachable`); every source is listed.
    pub by_source: std::collections::BTreeMap<String, u64>,
    /// Confirmation bursts started (at most one per `suspicion_holdoff`).
    pub bursts: u64,
    /// Probes those bursts sent.
    pub burst_probes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyStatus {
    pub state: UplinkState,
    pub reasons: Vec<Reason>,
    /// How long the uplink has been continuously usable for this family.
    pub healthy_for_ms: Option<u64>,
    /// Time left until the uplink has been usable for `failback_after`
    /// (counted from an undrain too), so a healthy preferred uplink that is
    /// not active can say when traffic returns to it; 0 once waited out,
    /// null while not usable.
    #[serde(default)]
    pub failback_in_ms: Option<u64>,
}

/// How a gateway is probed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayMode {
    /// ICMP echo requests (ARP/ND for bond members) to the router itself.
    Icmp,
    /// Forwarding-plane echoes decide; a slow ICMP check is kept for diagnosis.
    Echo,
    /// `auto` finding out: echoes on trial while ICMP decides.
    Trying,
}

impl GatewayMode {
    pub fn name(self) -> &'static str {
        match self {
            GatewayMode::Icmp => "icmp",
            GatewayMode::Echo => "echo",
            GatewayMode::Trying => "trying",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            GatewayMode::Icmp => "ICMP to the router itself",
            GatewayMode::Echo => "forwarding-plane echo",
            GatewayMode::Trying => "ICMP while forwarding-plane echoes are tried",
        }
    }
}

/// How one gateway is probed (per uplink and family).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayProbeStatus {
    /// The configured `gateway_probe`: "auto", "echo" or "icmp".
    pub setting: String,
    pub mode: GatewayMode,
    /// In echo mode: the slow ICMP check of the router's own address
    /// (diagnosis only; it never decides a failover while echoes flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_check: Option<TargetStatus>,
    /// ICMP redirects the router sent in answer to our echoes (it should
    /// have redirects off on this interface).
    #[serde(default)]
    pub redirects: u64,
    /// In echo mode: the stream runs at its idle rate (`echo_idle_interval`)
    /// because the uplink has carried no traffic for a second.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo_idle: bool,
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
    /// How an uplink's gateway is probed changed (`gateway_probe`): `mode`
    /// is "echo" (forwarding plane), "icmp" (the router's own address) or
    /// "trying" (auto: echoes on trial beside ICMP).
    GatewayProbe {
        uplink: String,
        family: String,
        mode: GatewayMode,
        setting: String,
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
    /// A default route of another owner that wins over the managed one
    /// appeared (`present`) or went away; `removed`: the agent deleted it
    /// (`agent.remove_competing_routes`).
    CompetingRoute {
        family: String,
        route: CompetingRoute,
        present: bool,
        removed: bool,
    },
    /// Another writer keeps rewriting the managed route (`active`: the fight
    /// started; false: it has been quiet for a while). Restores during a
    /// fight back off and are counted here, not reported one by one.
    Fighting {
        family: String,
        with: String,
        active: bool,
        restores: u32,
    },
    /// The service address of a family (`agent.source4` / `source6`) left
    /// the host (`present`: false; the routes lose their source until it is
    /// back) or came back (the source is put back).
    SourceAddress {
        family: String,
        address: IpAddr,
        present: bool,
    },
    /// The server's own traffic made an uplink suspect (`source`: tcp_stall,
    /// tcp_timeouts, rx_stall, icmp_unreachable) and a confirmation burst to
    /// its transits started; the quorum rules decide on the burst's result.
    Suspicion {
        uplink: String,
        source: String,
        evidence: String,
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
            Change::GatewayProbe { .. } => "gateway_probe",
            Change::FailStatic { .. } => "fail_static",
            Change::Damped { .. } => "damped",
            Change::Drained { .. } => "drained",
            Change::RouteRestored { .. } => "route_restored",
            Change::Adopted { .. } => "adopted",
            Change::Bond { .. } => "bond",
            Change::CompetingRoute { .. } => "competing_route",
            Change::Fighting { .. } => "fighting",
            Change::SourceAddress { .. } => "source_address",
            Change::Suspicion { .. } => "suspicion",
        }
    }

    /// One sentence a person reads in the log (the structured record goes
    /// beside it), e.g. "ipv4: primary → secondary (carrier lost on primary)".
    pub fn describe(&self) -> String {
        let or_none = |u: &Option<String>| u.clone().unwrap_or_else(|| "no uplink".into());
        let state = |ok: bool, yes: &str, no: &str| if ok { yes } else { no }.to_string();
        match self {
            Change::ActiveChanged {
                family,
                from,
                to,
                reason,
            } => format!(
                "{family}: {} → {} ({})",
                or_none(from),
                or_none(to),
                why_moved(reason, from.as_deref())
            ),
            Change::UplinkHealth {
                uplink,
                family,
                state: st,
                evidence,
                ..
            } => {
                let st = match st {
                    UplinkState::Unknown => "unknown",
                    UplinkState::Healthy => "healthy",
                    UplinkState::Degraded => "degraded",
                    UplinkState::Unhealthy => "unhealthy",
                };
                format!("{uplink} is {st} for {family} ({evidence})")
            }
            Change::Carrier { uplink, up, source } => format!(
                "{uplink}: carrier {} (seen by {source})",
                state(*up, "up", "down")
            ),
            Change::Gateway {
                uplink,
                family,
                address,
                reachable,
                evidence,
            } => format!(
                "{uplink}: {family} gateway {address} {} ({evidence})",
                state(*reachable, "answers", "does not answer")
            ),
            Change::GatewayProbe {
                uplink,
                family,
                mode,
                setting,
                evidence,
            } => format!(
                "{uplink}: {family} gateway probed by {} (gateway_probe = {setting}; {evidence})",
                mode.describe()
            ),
            Change::Transit {
                uplink,
                transit,
                target,
                reachable,
                evidence,
            } => format!(
                "{transit} ({target}) {} through {uplink} ({evidence})",
                state(*reachable, "reachable", "unreachable")
            ),
            Change::FailStatic {
                family,
                active: true,
                evidence,
            } => format!("{family}: no usable uplink, keeping the current route ({evidence})"),
            Change::FailStatic {
                family, evidence, ..
            } => format!("{family}: fail static over ({evidence})"),
            Change::Damped {
                uplink,
                hold_ms,
                flaps,
            } => format!(
                "{uplink} held down for {} s after {flaps} failures (flapping)",
                hold_ms.div_ceil(1000)
            ),
            Change::Drained { uplink, drained } => {
                format!("{uplink} {} by an operator", state(*drained, "drained", "undrained"))
            }
            Change::RouteRestored {
                family,
                uplink,
                found,
            } => format!(
                "{family}: the default route was changed by someone else ({found}); put back via {uplink}"
            ),
            Change::Adopted { family, uplink } => match uplink {
                Some(u) => format!("{family}: started with the default route via {u} as found"),
                None => format!("{family}: started with no managed default route"),
            },
            Change::Bond {
                bond,
                from,
                to,
                by,
                cause,
                ..
            } => format!(
                "{bond}: active member {} → {} (by the {by}: {cause})",
                from.as_deref().unwrap_or("none"),
                to.as_deref().unwrap_or("none"),
            ),
            Change::CompetingRoute {
                family,
                route,
                present,
                removed,
            } => match (present, removed) {
                (true, true) => format!("{family}: removed a competing {route}"),
                (true, false) => {
                    format!("{family}: a competing {route} outranks ours and carries the traffic")
                }
                (false, _) => format!("{family}: the competing {route} is gone"),
            },
            Change::Suspicion {
                uplink,
                source,
                evidence,
            } => format!("{uplink} suspected ({source}: {evidence}); confirming with a probe burst to its transits"),
            Change::Fighting {
                family,
                with,
                active,
                restores,
            } => {
                if *active {
                    format!("{family}: our default route keeps being rewritten ({with}); restoring it with backoff")
                } else {
                    format!("{family}: the fight over the default route with {with} ended after {restores} restore(s)")
                }
            }
            Change::SourceAddress {
                family,
                address,
                present: false,
            } => format!(
                "{family}: service address {address} (source) is gone from the host; default routes installed without a source until it is back (source_missing)"
            ),
            Change::SourceAddress {
                family, address, ..
            } => format!(
                "{family}: service address {address} is back; default routes carry it as their source again"
            ),
        }
    }

    /// How loud the change is in the log: planned and routine changes
    /// (start-up health, the initial choice, a drain, a failback) are
    /// `Info`; an unplanned failover, fail static, damping and a fight over
    /// routes or bond members are `Warn`.
    pub fn level(&self) -> Level {
        let warn_if = |w: bool| if w { Level::Warn } else { Level::Info };
        match self {
            Change::ActiveChanged { reason, .. } => warn_if(!matches!(
                reason.as_str(),
                "initial" | "failback" | "drained"
            )),
            Change::UplinkHealth { state, .. } => warn_if(matches!(
                state,
                UplinkState::Unhealthy | UplinkState::Degraded
            )),
            Change::FailStatic { active, .. } => warn_if(*active),
            Change::Damped { .. } | Change::RouteRestored { .. } => Level::Warn,
            Change::Bond { by, .. } => warn_if(by != "agent"),
            Change::CompetingRoute { present, .. } => warn_if(*present),
            Change::Fighting { active, .. } => warn_if(*active),
            Change::GatewayProbe { mode, setting, .. } => {
                warn_if(*mode == GatewayMode::Icmp && setting != "icmp")
            }
            Change::SourceAddress { present, .. } => warn_if(!present),
            Change::Suspicion { .. } => Level::Info,
            Change::Carrier { .. }
            | Change::Gateway { .. }
            | Change::Transit { .. }
            | Change::Drained { .. }
            | Change::Adopted { .. } => Level::Info,
        }
    }
}

/// How loud a change is in the log (see [`Change::level`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// The reason code of `active_changed` ("carrier", "gateway+quorum",
/// "failback", ...) in words, about the uplink left (`from`).
fn why_moved(reason: &str, from: Option<&str>) -> String {
    let from = from.unwrap_or("the old uplink");
    let words: Vec<String> = reason
        .split('+')
        .map(|code| match code {
            "initial" => "initial choice".to_string(),
            "failback" => "failback: preferred uplink healthy long enough".to_string(),
            "drained" => format!("{from} drained"),
            "carrier" => format!("carrier lost on {from}"),
            "gateway" => format!("gateway not answering through {from}"),
            "forwarding" => format!("gateway not forwarding through {from}"),
            "quorum" => format!("transit quorum unreachable through {from}"),
            "damped" => format!("{from} held down for flapping"),
            "missing" => format!("{from}'s interface is missing"),
            "not_in_bond" => format!("{from} left its bond"),
            "no_gateway" => format!("{from} has no gateway of this family"),
            c if c.starts_with("suspicion_") => {
                format!(
                    "confirmed by a probe burst after a suspicion ({})",
                    &c[10..]
                )
            }
            other => other.to_string(),
        })
        .collect();
    words.join(", ")
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

#[cfg(test)]
mod describe_tests {
    use super::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn every_change_reads_as_one_sentence_at_its_level() {
        let addr: IpAddr = "198.18.1.1".parse().unwrap();
        let active = |reason: &str| Change::ActiveChanged {
            family: s("ipv4"),
            from: Some(s("primary")),
            to: Some(s("secondary")),
            reason: s(reason),
        };
        let cases: Vec<(Change, &str, Level)> = vec![
            (
                active("carrier"),
                "ipv4: primary → secondary (carrier lost on primary)",
                Level::Warn,
            ),
            (
                active("gateway+quorum"),
                "ipv4: primary → secondary (gateway not answering through primary, transit quorum unreachable through primary)",
                Level::Warn,
            ),
            (
                active("failback"),
                "ipv4: primary → secondary (failback: preferred uplink healthy long enough)",
                Level::Info,
            ),
            (active("drained"), "ipv4: primary → secondary (primary drained)", Level::Info),
            (
                active("quorum+suspicion_tcp_stall"),
                "ipv4: primary → secondary (transit quorum unreachable through primary, confirmed by a probe burst after a suspicion (tcp_stall))",
                Level::Warn,
            ),
            (
                Change::Suspicion {
                    uplink: s("primary"),
                    source: s("icmp_unreachable"),
                    evidence: s("destination unreachable from the gateway 198.18.1.1"),
                },
                "primary suspected (icmp_unreachable: destination unreachable from the gateway 198.18.1.1); confirming with a probe burst to its transits",
                Level::Info,
            ),
            (
                Change::ActiveChanged {
                    family: s("ipv6"),
                    from: None,
                    to: Some(s("primary")),
                    reason: s("initial"),
                },
                "ipv6: no uplink → primary (initial choice)",
                Level::Info,
            ),
            (
                Change::UplinkHealth {
                    uplink: s("primary"),
                    family: s("ipv4"),
                    state: UplinkState::Healthy,
                    reasons: vec![],
                    evidence: s("gateway answering"),
                },
                "primary is healthy for ipv4 (gateway answering)",
                Level::Info,
            ),
            (
                Change::UplinkHealth {
                    uplink: s("primary"),
                    family: s("ipv4"),
                    state: UplinkState::Unhealthy,
                    reasons: vec![Reason::Carrier],
                    evidence: s("carrier down"),
                },
                "primary is unhealthy for ipv4 (carrier down)",
                Level::Warn,
            ),
            (
                Change::Carrier {
                    uplink: s("primary"),
                    up: false,
                    source: s("poll"),
                },
                "primary: carrier down (seen by poll)",
                Level::Info,
            ),
            (
                Change::Gateway {
                    uplink: s("primary"),
                    family: s("ipv4"),
                    address: addr,
                    reachable: false,
                    evidence: s("8 probes unanswered"),
                },
                "primary: ipv4 gateway 198.18.1.1 does not answer (8 probes unanswered)",
                Level::Info,
            ),
            (
                Change::Transit {
                    uplink: s("primary"),
                    transit: s("transit-a"),
                    target: addr,
                    reachable: true,
                    evidence: s("2 replies"),
                },
                "transit-a (198.18.1.1) reachable through primary (2 replies)",
                Level::Info,
            ),
            (
                Change::FailStatic {
                    family: s("ipv4"),
                    active: true,
                    evidence: s("all down"),
                },
                "ipv4: no usable uplink, keeping the current route (all down)",
                Level::Warn,
            ),
            (
                Change::FailStatic {
                    family: s("ipv4"),
                    active: false,
                    evidence: s("primary is usable again"),
                },
                "ipv4: fail static over (primary is usable again)",
                Level::Info,
            ),
            (
                Change::Damped {
                    uplink: s("primary"),
                    hold_ms: 60_000,
                    flaps: 3,
                },
                "primary held down for 60 s after 3 failures (flapping)",
                Level::Warn,
            ),
            (
                Change::Drained {
                    uplink: s("primary"),
                    drained: true,
                },
                "primary drained by an operator",
                Level::Info,
            ),
            (
                Change::RouteRestored {
                    family: s("ipv4"),
                    uplink: s("primary"),
                    found: s("no route"),
                },
                "ipv4: the default route was changed by someone else (no route); put back via primary",
                Level::Warn,
            ),
            (
                Change::Adopted {
                    family: s("ipv4"),
                    uplink: None,
                },
                "ipv4: started with no managed default route",
                Level::Info,
            ),
            (
                Change::Bond {
                    bond: s("bond0"),
                    from: Some(s("eth0")),
                    to: Some(s("eth1")),
                    by: s("driver"),
                    cause: s("miimon"),
                    warnings: vec![],
                },
                "bond0: active member eth0 → eth1 (by the driver: miimon)",
                Level::Warn,
            ),
        ];
        for (change, sentence, level) in cases {
            assert_eq!(change.describe(), sentence, "{change:?}");
            assert_eq!(change.level(), level, "{change:?}");
        }
    }
}
