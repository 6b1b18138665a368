//! Prometheus metrics, encoded with `prometheus-client` in the Prometheus
//! text format (0.0.4), which every scraper and `promtool` read.
//!
//! Where the numbers come from, chosen so that the daemon's loop pays
//! almost nothing:
//! - published changes ([`Metrics::on_change`], from the event fan-out):
//!   switches per family and reason, events per kind, time of the last switch;
//! - every probe outcome ([`Metrics::probe_sent`] / [`Metrics::probe_done`],
//!   two calls in the loop): RTT histograms and reply/timeout counters per
//!   uplink and target; a handful of atomic operations per probe;
//! - a status snapshot taken only when somebody scrapes ([`scrape`]): health
//!   gauges, smoothed loss, carrier, drained, active uplink. Nobody scraping
//!   costs nothing.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::config::{Config, Family as AddrFamily};
use crate::core::{ProbeId, ProbeOutcome, ProbeRequest, UplinkId};
use crate::status::{Change, EventRecord, GatewayMode, Status, UplinkState};

/// Content type of what [`Metrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Probe RTT buckets: 100 µs to ~3.3 s, doubling. A gateway next door
/// answers in tens to hundreds of µs, a far transit in milliseconds, and the
/// longest probe timeout is in seconds.
const RTT_BUCKET_START: f64 = 0.0001;
const RTT_BUCKET_COUNT: u16 = 16;

/// Probes in flight are remembered by id until their outcome arrives; the
/// prober always reports one, so this only guards against a bug growing memory.
const MAX_PENDING_PROBES: usize = 65_536;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchLabels {
    family: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CompetingLabels {
    family: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BondLabels {
    bond: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkLabels {
    uplink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SuspicionLabels {
    uplink: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkFamilyLabels {
    uplink: String,
    family: String,
}

/// What the fleet's rules join per-uplink series on (`uplinkd_uplink_info`):
/// which router an uplink leads to, and whether it is the family's
/// preferred one. One series per uplink and family, whatever the number of
/// targets, so the join costs no cardinality.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkInfoLabels {
    uplink: String,
    family: String,
    /// The kernel's name for the uplink, to match node_exporter's `device`.
    interface: String,
    /// The router behind the uplink (its address for the family): the fleet
    /// rules count servers per router with it.
    gateway: String,
    /// The uplink's rank among the family's uplinks in the configuration
    /// ("0" is the preferred one), for "not on its preferred uplink".
    preference: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkStateLabels {
    uplink: String,
    state: String,
}

/// One probed target through one uplink: `target` is "gateway" or the
/// transit's name, `address` the probed address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    uplink: String,
    family: String,
    target: String,
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeResultLabels {
    uplink: String,
    family: String,
    target: String,
    address: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

type GaugeF = Gauge<f64, AtomicU64>;

fn probe_result_labels(l: &TargetLabels, result: &str) -> ProbeResultLabels {
    ProbeResultLabels {
        uplink: l.uplink.clone(),
        family: l.family.clone(),
        target: l.target.clone(),
        address: l.address.clone(),
        result: result.into(),
    }
}

fn rtt_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        RTT_BUCKET_START,
        2.0,
        RTT_BUCKET_COUNT,
    ))
}

/// Handles of one (uplink, target) pair, resolved once at start so that a
/// probe outcome costs no label allocation.
struct ProbeHandles {
    labels: TargetLabels,
    rtt: Histogram,
    reply: Counter,
    timeout: Counter,
    error: Counter,
}

/// Every metric of the agent. Shared (`Arc`) by the loop, the event fan-out,
/// the hooks runner and the socket/HTTP servers; all updates are atomic.
pub struct Metrics {
    registry: Registry,
    switches: Family<SwitchLabels, Counter>,
    events: Family<KindLabels, Counter>,
    active: Family<UplinkFamilyLabels, Gauge>,
    fail_static: Family<FamilyLabels, Gauge>,
    bond_warnings: Family<BondLabels, Gauge>,
    since_switch: Family<FamilyLabels, GaugeF>,
    last_switch_ts: Family<FamilyLabels, GaugeF>,
    uplink_healthy: Family<UplinkFamilyLabels, Gauge>,
    uplink_info: Family<UplinkInfoLabels, Gauge>,
    uplink_state: Family<UplinkStateLabels, Gauge>,
    uplink_carrier: Family<UplinkLabels, Gauge>,
    uplink_drained: Family<UplinkLabels, Gauge>,
    uplink_damped: Family<UplinkLabels, GaugeF>,
    uplink_flaps: Family<UplinkLabels, Gauge>,
    suspicions: Family<SuspicionLabels, Counter>,
    suspicion_burst_probes: Family<UplinkLabels, Counter>,
    gateway_reachable: Family<TargetLabels, Gauge>,
    transit_reachable: Family<TargetLabels, Gauge>,
    probe_loss: Family<TargetLabels, GaugeF>,
    probe_srtt: Family<TargetLabels, GaugeF>,
    hook_runs: Family<HookLabels, Counter>,
    hooks_running: Gauge,
    api_clients: Gauge,
    api_refused: Family<ReasonLabels, Counter>,
    subscribers_dropped: Family<ReasonLabels, Counter>,
    uptime: GaugeF,
    started: Instant,
    /// When each family's active uplink last changed (index: Family::index).
    last_switch: Mutex<[Option<Instant>; 2]>,
    probe_rtt: Family<TargetLabels, Histogram, fn() -> Histogram>,
    probe_results: Family<ProbeResultLabels, Counter>,
    /// (uplink, address) -> its handles, for the running configuration.
    probe_index: Mutex<HashMap<(UplinkId, IpAddr), Arc<ProbeHandles>>>,
    /// Probes in flight -> the handles of their (uplink, target).
    pending: Mutex<HashMap<ProbeId, Arc<ProbeHandles>>>,
    /// 1 while another owner's default route wins over ours: traffic is
    /// not where the status says, which no other gauge shows.
    competing: Family<CompetingLabels, Gauge>,
    gateway_probe_mode: Family<ProbeModeLabels, Gauge>,
    gateway_redirects: Family<UplinkFamilyLabels, Counter>,
    /// Uplinks with a `gateway_redirects` series: a reload removes those of
    /// the uplinks it removes (a counter cannot be cleared for the others).
    redirect_uplinks: Mutex<Vec<String>>,
    /// Per family with a configured service address: 1 while it is on the
    /// host (the routes carry it as source), 0 while it is missing.
    source_present: Family<FamilyLabels, Gauge>,
}

/// How a gateway is probed: `mode` is echo, icmp or trying; `setting` the
/// configured `gateway_probe` (auto, echo, icmp).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeModeLabels {
    uplink: String,
    family: String,
    mode: String,
    setting: String,
}

impl Metrics {
    pub fn new(cfg: &Config) -> Metrics {
        let mut reg = Registry::with_prefix("uplinkd");
        let m = Metrics {
            registry: Registry::default(),
            switches: Family::default(),
            events: Family::default(),
            active: Family::default(),
            fail_static: Family::default(),
            bond_warnings: Family::default(),
            since_switch: Family::default(),
            last_switch_ts: Family::default(),
            uplink_healthy: Family::default(),
            uplink_info: Family::default(),
            uplink_state: Family::default(),
            uplink_carrier: Family::default(),
            uplink_drained: Family::default(),
            uplink_damped: Family::default(),
            uplink_flaps: Family::default(),
            suspicions: Family::default(),
            suspicion_burst_probes: Family::default(),
            gateway_reachable: Family::default(),
            transit_reachable: Family::default(),
            probe_loss: Family::default(),
            probe_srtt: Family::default(),
            hook_runs: Family::default(),
            hooks_running: Gauge::default(),
            api_clients: Gauge::default(),
            api_refused: Family::default(),
            subscribers_dropped: Family::default(),
            uptime: GaugeF::default(),
            started: Instant::now(),
            last_switch: Mutex::new([None, None]),
            probe_rtt: Family::new_with_constructor(rtt_histogram),
            probe_results: Family::default(),
            probe_index: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            competing: Family::default(),
            gateway_probe_mode: Family::default(),
            gateway_redirects: Family::default(),
            redirect_uplinks: Mutex::new(Vec::new()),
            source_present: Family::default(),
        };
        reg.register(
            "gateway_probe_mode",
            "1 for how the uplink's gateway is probed now (mode: echo = forwarding-plane echo, icmp = pings to the router itself, trying = auto finding out), 0 for the other modes; setting is the configured gateway_probe",
            m.gateway_probe_mode.clone(),
        );
        reg.register(
            "gateway_redirects",
            "ICMP redirects the gateway answered forwarding-plane echoes with (the router should not send redirects on that interface)",
            m.gateway_redirects.clone(),
        );
        reg.register(
            "build",
            "Build of the running agent (value is always 1)",
            Info::new(vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                ("name".to_string(), env!("CARGO_PKG_NAME").to_string()),
            ]),
        );
        reg.register(
            "switches",
            "Changes of a family's active uplink, by family and reason (initial, carrier, gateway, quorum, drained, failback, ...)",
            m.switches.clone(),
        );
        reg.register(
            "events",
            "State changes published, by kind (as on the event stream)",
            m.events.clone(),
        );
        reg.register(
            "active",
            "1 for the uplink carrying the family's default route, 0 for the others",
            m.active.clone(),
        );
        reg.register(
            "bond_warnings",
            "Number of settings of a managed bond that weaken or fight the agent (not active-backup, no link monitoring, primary_reselect=always...; see status bonds[].warnings)",
            m.bond_warnings.clone(),
        );
        reg.register(
            "fail_static",
            "1 while no uplink of the family is usable and the agent keeps the current route",
            m.fail_static.clone(),
        );
        reg.register_with_unit(
            "since_last_switch",
            "Time since the family's active uplink last changed (absent before the first decision)",
            Unit::Seconds,
            m.since_switch.clone(),
        );
        reg.register_with_unit(
            "last_switch_timestamp",
            "Unix time of the family's last change of active uplink",
            Unit::Seconds,
            m.last_switch_ts.clone(),
        );
        reg.register(
            "uplink_healthy",
            "1 if the uplink is usable for the family (healthy, not drained), else 0",
            m.uplink_healthy.clone(),
        );
        reg.register(
            "uplink_info",
            "1 per uplink and family: its interface, its gateway (the router behind it) and its preference (0 = preferred), to join per-uplink series on",
            m.uplink_info.clone(),
        );
        reg.register(
            "uplink_state",
            "1 for the uplink's current state (unknown, healthy, degraded, unhealthy), 0 for the others",
            m.uplink_state.clone(),
        );
        reg.register(
            "uplink_carrier",
            "1 if the uplink's interface has carrier",
            m.uplink_carrier.clone(),
        );
        reg.register(
            "uplink_drained",
            "1 if an operator drained the uplink",
            m.uplink_drained.clone(),
        );
        reg.register_with_unit(
            "uplink_damped_remaining",
            "Remaining flap-damping hold-down of the uplink (0 when not damped)",
            Unit::Seconds,
            m.uplink_damped.clone(),
        );
        reg.register(
            "suspicions",
            "Passive suspicions raised on the uplink by source (tcp_stall, tcp_timeouts, rx_stall, icmp_unreachable); each starts at most one confirmation burst per suspicion_holdoff",
            m.suspicions.clone(),
        );
        reg.register(
            "suspicion_burst_probes",
            "Probes sent by the confirmation bursts that passive suspicions started on the uplink",
            m.suspicion_burst_probes.clone(),
        );
        reg.register(
            "uplink_flaps",
            "Failures of the uplink counted for damping in the current window",
            m.uplink_flaps.clone(),
        );
        reg.register(
            "gateway_reachable",
            "1 if the uplink's gateway answers, 0 if it is considered dead (absent until known)",
            m.gateway_reachable.clone(),
        );
        reg.register(
            "transit_reachable",
            "1 if the transit target is reachable through the uplink, 0 if not (absent until known)",
            m.transit_reachable.clone(),
        );
        reg.register(
            "probe_loss_ratio",
            "Fraction of the recent probes of the target through the uplink that got no reply",
            m.probe_loss.clone(),
        );
        reg.register_with_unit(
            "probe_srtt",
            "Smoothed round-trip time of the target through the uplink",
            Unit::Seconds,
            m.probe_srtt.clone(),
        );
        reg.register(
            "hook_runs",
            "Hook runs by hook and result (ok, failed, timeout, error, skipped)",
            m.hook_runs.clone(),
        );
        reg.register(
            "hooks_running",
            "Hooks running now",
            m.hooks_running.clone(),
        );
        reg.register(
            "api_clients",
            "Clients connected to the socket now",
            m.api_clients.clone(),
        );
        reg.register(
            "api_refused",
            "Socket requests or connections refused, by reason",
            m.api_refused.clone(),
        );
        reg.register(
            "event_subscribers_dropped",
            "Event subscribers dropped, by reason (lagged: missed events; slow: a write timed out)",
            m.subscribers_dropped.clone(),
        );
        reg.register_with_unit(
            "uptime",
            "Time since the agent started",
            Unit::Seconds,
            m.uptime.clone(),
        );

        // Probe RTT histograms and outcome counters, one set per probed
        // (uplink, target), created up front so every series exists from the
        // start (a counter that appears only at its first increment hides
        // the first increase from rate()).
        reg.register_with_unit(
            "probe_rtt",
            "Round-trip time of answered probes, per uplink and target",
            Unit::Seconds,
            m.probe_rtt.clone(),
        );
        reg.register(
            "probes",
            "Probes per uplink, target and result (reply, timeout, error); loss = rate of timeout+error over all",
            m.probe_results.clone(),
        );
        reg.register(
            "competing_default_route",
            "1 while a default route of another owner (by protocol) wins over the managed one",
            m.competing.clone(),
        );
        reg.register(
            "source_address_present",
            "1 while the service address (agent.source4/source6) is on the host and the default routes carry it as source; 0 while it is missing",
            m.source_present.clone(),
        );
        let m = Metrics { registry: reg, ..m };
        m.set_probe_targets(cfg);
        m
    }

    /// Resolve the probe series of every (uplink, target) of `cfg`: a pair
    /// that already had series keeps them (same labels, same counters);
    /// series of pairs `cfg` no longer has are removed.
    fn set_probe_targets(&self, cfg: &Config) {
        let mut index = HashMap::new();
        for (i, u) in cfg.uplinks.iter().enumerate() {
            let mut targets: Vec<(String, IpAddr)> = Vec::new();
            for f in AddrFamily::ALL {
                if u.gateway(f).is_none() {
                    continue;
                }
                if let Some(gw) = u.gateway(f) {
                    targets.push(("gateway".into(), gw));
                }
                for t in &cfg.transits {
                    for a in t.targets_of(f) {
                        targets.push((t.name.clone(), a));
                    }
                }
            }
            for (name, addr) in targets {
                let labels = TargetLabels {
                    uplink: u.name.clone(),
                    family: AddrFamily::of(&addr).name().into(),
                    target: name,
                    address: addr.to_string(),
                };
                let h = ProbeHandles {
                    rtt: self.probe_rtt.get_or_create(&labels).clone(),
                    reply: self.probe_counter(&labels, "reply"),
                    timeout: self.probe_counter(&labels, "timeout"),
                    error: self.probe_counter(&labels, "error"),
                    labels,
                };
                index.insert((i, addr), Arc::new(h));
            }
        }
        let old = std::mem::replace(&mut *self.probe_index.lock().unwrap(), index);
        let now: Vec<TargetLabels> = self
            .probe_index
            .lock()
            .unwrap()
            .values()
            .map(|h| h.labels.clone())
            .collect();
        for h in old.values().filter(|h| !now.contains(&h.labels)) {
            self.probe_rtt.remove(&h.labels);
            for result in ["reply", "timeout", "error"] {
                self.probe_results
                    .remove(&probe_result_labels(&h.labels, result));
            }
        }
    }

    fn probe_counter(&self, l: &TargetLabels, result: &str) -> Counter {
        self.probe_results
            .get_or_create(&probe_result_labels(l, result))
            .clone()
    }

    /// A new configuration (SIGHUP): probe series follow its uplinks and
    /// targets (kept ones keep theirs); the gauges that describe the state
    /// are dropped and rebuilt from the next status snapshot, so removed
    /// uplinks and targets leave no stale series.
    pub fn reconfigure(&self, cfg: &Config) {
        self.set_probe_targets(cfg);
        self.active.clear();
        self.uplink_healthy.clear();
        self.uplink_info.clear();
        self.uplink_state.clear();
        self.uplink_carrier.clear();
        self.uplink_drained.clear();
        self.uplink_damped.clear();
        self.uplink_flaps.clear();
        // Counters the core counts: rebuilt from its totals (catch-up).
        self.suspicions.clear();
        self.suspicion_burst_probes.clear();
        self.gateway_reachable.clear();
        self.gateway_probe_mode.clear();
        self.redirect_uplinks.lock().unwrap().retain(|name| {
            let kept = cfg.uplinks.iter().any(|u| &u.name == name);
            if !kept {
                for family in ["ipv4", "ipv6"] {
                    self.gateway_redirects.remove(&UplinkFamilyLabels {
                        uplink: name.clone(),
                        family: family.into(),
                    });
                }
            }
            kept
        });
        self.transit_reachable.clear();
        self.probe_loss.clear();
        self.probe_srtt.clear();
    }

    /// A probe was sent (called by the loop for `Action::Probe`).
    pub fn probe_sent(&self, req: &ProbeRequest) {
        let Some(i) = self
            .probe_index
            .lock()
            .unwrap()
            .get(&(req.uplink, req.target))
            .cloned()
        else {
            return;
        };
        let mut p = self.pending.lock().unwrap();
        if p.len() >= MAX_PENDING_PROBES {
            p.clear();
        }
        p.insert(req.id, i);
    }

    /// A probe's outcome arrived (called by the loop for `Event::ProbeDone`).
    pub fn probe_done(&self, id: ProbeId, outcome: &ProbeOutcome) {
        let Some(h) = self.pending.lock().unwrap().remove(&id) else {
            return;
        };
        match outcome {
            ProbeOutcome::Reply { rtt } => {
                h.reply.inc();
                h.rtt.observe(rtt.as_secs_f64());
            }
            ProbeOutcome::Timeout => {
                h.timeout.inc();
            }
            ProbeOutcome::Error(_) => {
                h.error.inc();
            }
        }
    }

    /// A change was published.
    pub fn on_change(&self, r: &EventRecord) {
        self.events
            .get_or_create(&KindLabels {
                kind: r.change.kind().into(),
            })
            .inc();
        if let Change::CompetingRoute {
            family,
            route,
            present,
            ..
        } = &r.change
        {
            self.competing
                .get_or_create(&CompetingLabels {
                    family: family.clone(),
                    protocol: route.protocol.clone(),
                })
                .set(i64::from(*present));
        }
        if let Change::ActiveChanged { family, reason, .. } = &r.change {
            self.switches
                .get_or_create(&SwitchLabels {
                    family: family.clone(),
                    reason: reason.clone(),
                })
                .inc();
            let fi = usize::from(family == "ipv6");
            self.last_switch.lock().unwrap()[fi] = Some(Instant::now());
            let unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.last_switch_ts
                .get_or_create(&FamilyLabels {
                    family: family.clone(),
                })
                .set(unix);
        }
    }

    /// Refresh the gauges that describe the current state from a snapshot.
    pub fn update_from_status(&self, s: &Status) {
        for (fam, src) in [("ipv4", &s.source.ipv4), ("ipv6", &s.source.ipv6)] {
            let labels = FamilyLabels { family: fam.into() };
            match src {
                Some(src) => {
                    self.source_present
                        .get_or_create(&labels)
                        .set(i64::from(src.present));
                }
                // Not configured (any more, after a reload): no series.
                None => {
                    self.source_present.remove(&labels);
                }
            }
        }
        for b in &s.bonds {
            self.bond_warnings
                .get_or_create(&BondLabels {
                    bond: b.name.clone(),
                })
                .set(b.warnings.len() as i64);
        }
        for (fam, active, fs) in [
            ("ipv4", &s.active.ipv4, s.fail_static.ipv4),
            ("ipv6", &s.active.ipv6, s.fail_static.ipv6),
        ] {
            self.fail_static
                .get_or_create(&FamilyLabels { family: fam.into() })
                .set(i64::from(fs));
            for u in &s.uplinks {
                if !has_family(u, fam) {
                    continue;
                }
                self.active
                    .get_or_create(&UplinkFamilyLabels {
                        uplink: u.name.clone(),
                        family: fam.into(),
                    })
                    .set(i64::from(active.as_deref() == Some(u.name.as_str())));
            }
        }
        for u in &s.uplinks {
            let ul = UplinkLabels {
                uplink: u.name.clone(),
            };
            self.uplink_carrier
                .get_or_create(&ul)
                .set(i64::from(u.carrier));
            self.uplink_drained
                .get_or_create(&ul)
                .set(i64::from(u.drained));
            self.uplink_flaps.get_or_create(&ul).set(i64::from(u.flaps));
            // Counted by the core; the counters catch up on each scrape.
            let catch_up = |c: &Counter, v: u64| {
                let have = c.get();
                if v > have {
                    c.inc_by(v - have);
                }
            };
            for (source, n) in &u.suspicion.by_source {
                catch_up(
                    &self.suspicions.get_or_create(&SuspicionLabels {
                        uplink: u.name.clone(),
                        source: source.clone(),
                    }),
                    *n,
                );
            }
            catch_up(
                &self.suspicion_burst_probes.get_or_create(&ul),
                u.suspicion.burst_probes,
            );
            self.uplink_damped
                .get_or_create(&ul)
                .set(u.damped_ms.unwrap_or(0) as f64 / 1000.0);
            for st in [
                UplinkState::Unknown,
                UplinkState::Healthy,
                UplinkState::Degraded,
                UplinkState::Unhealthy,
            ] {
                self.uplink_state
                    .get_or_create(&UplinkStateLabels {
                        uplink: u.name.clone(),
                        state: state_name(st),
                    })
                    .set(i64::from(u.state == st));
            }
            for (fam, gp) in [
                ("ipv4", &u.gateway_probe.ipv4),
                ("ipv6", &u.gateway_probe.ipv6),
            ] {
                let Some(gp) = gp else { continue };
                for mode in [GatewayMode::Echo, GatewayMode::Icmp, GatewayMode::Trying] {
                    self.gateway_probe_mode
                        .get_or_create(&ProbeModeLabels {
                            uplink: u.name.clone(),
                            family: fam.into(),
                            mode: mode.name().into(),
                            setting: gp.setting.clone(),
                        })
                        .set(i64::from(gp.mode == mode));
                }
                {
                    let mut seen = self.redirect_uplinks.lock().unwrap();
                    if !seen.contains(&u.name) {
                        seen.push(u.name.clone());
                    }
                }
                let c = self.gateway_redirects.get_or_create(&UplinkFamilyLabels {
                    uplink: u.name.clone(),
                    family: fam.into(),
                });
                if gp.redirects > c.get() {
                    c.inc_by(gp.redirects - c.get());
                }
            }
            for (fam, fs, gw) in [
                ("ipv4", &u.families.ipv4, &u.gateway.ipv4),
                ("ipv6", &u.families.ipv6, &u.gateway.ipv6),
            ] {
                if let (Some(_), Some(g)) = (fs, gw) {
                    // Status lists the uplinks in configuration order, which
                    // is the order of preference.
                    let rank = s
                        .uplinks
                        .iter()
                        .take_while(|o| o.name != u.name)
                        .filter(|o| has_family(o, fam))
                        .count();
                    self.uplink_info
                        .get_or_create(&UplinkInfoLabels {
                            uplink: u.name.clone(),
                            family: fam.into(),
                            interface: u.interface.clone(),
                            gateway: g.address.to_string(),
                            preference: rank.to_string(),
                        })
                        .set(1);
                }
                if let Some(fs) = fs {
                    let usable = fs.state == UplinkState::Healthy && !u.drained;
                    self.uplink_healthy
                        .get_or_create(&UplinkFamilyLabels {
                            uplink: u.name.clone(),
                            family: fam.into(),
                        })
                        .set(i64::from(usable));
                }
                if let Some(g) = gw {
                    let l = TargetLabels {
                        uplink: u.name.clone(),
                        family: fam.into(),
                        target: "gateway".into(),
                        address: g.address.to_string(),
                    };
                    self.target_gauges(&self.gateway_reachable, &l, g.reachable, g.rtt_ms, g.loss);
                }
            }
            for t in &u.transits {
                let l = TargetLabels {
                    uplink: u.name.clone(),
                    family: t.family.clone(),
                    target: t.name.clone(),
                    address: t.target.to_string(),
                };
                self.target_gauges(&self.transit_reachable, &l, t.reachable, t.rtt_ms, t.loss);
            }
        }
    }

    fn target_gauges(
        &self,
        reachable_family: &Family<TargetLabels, Gauge>,
        l: &TargetLabels,
        reachable: Option<bool>,
        rtt_ms: Option<f64>,
        loss: f64,
    ) {
        if let Some(r) = reachable {
            reachable_family.get_or_create(l).set(i64::from(r));
        }
        self.probe_loss.get_or_create(l).set(loss);
        if let Some(rtt) = rtt_ms {
            self.probe_srtt.get_or_create(l).set(rtt / 1000.0);
        }
    }

    /// A hook run ended (or was skipped) with `result`.
    pub fn hook_result(&self, hook: &str, result: &str) {
        self.hook_runs
            .get_or_create(&HookLabels {
                hook: hook.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn hooks_running(&self) -> &Gauge {
        &self.hooks_running
    }

    pub fn api_clients(&self) -> &Gauge {
        &self.api_clients
    }

    pub fn api_refused(&self, reason: &str) {
        self.api_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn subscriber_dropped(&self, reason: &str) {
        self.subscribers_dropped
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let now = Instant::now();
        self.uptime
            .set(now.duration_since(self.started).as_secs_f64());
        let last = *self.last_switch.lock().unwrap();
        for f in AddrFamily::ALL {
            if let Some(t) = last[f.index()] {
                self.since_switch
                    .get_or_create(&FamilyLabels {
                        family: f.name().into(),
                    })
                    .set(now.duration_since(t).as_secs_f64());
            }
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Whether the uplink serves `fam` ("ipv4" or "ipv6").
fn has_family(u: &crate::status::UplinkStatus, fam: &str) -> bool {
    match fam {
        "ipv4" => u.families.ipv4.is_some(),
        _ => u.families.ipv6.is_some(),
    }
}

/// The wire name of a state (`healthy`, ...).
fn state_name(s: UplinkState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// How long a scrape waits for the loop's status snapshot before it
/// answers with the gauges as they were.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a scrape gets its status snapshot (the daemon's loop, through the
/// socket's request channel): a parameter, so the metrics need not know
/// how the loop is asked.
pub trait StatusSource {
    /// The current status, or None when it cannot be had now.
    fn snapshot(&self) -> impl Future<Output = Option<Status>> + Send;
}

/// Take a status snapshot, refresh the gauges, and encode.
pub async fn scrape(source: &impl StatusSource, metrics: &Metrics) -> String {
    if let Ok(Some(status)) = tokio::time::timeout(SNAPSHOT_TIMEOUT, source.snapshot()).await {
        metrics.update_from_status(&status);
    }
    metrics.encode()
}

// ---------------------------------------------------------------------------
// The optional HTTP listener: GET /metrics, nothing else.
// ---------------------------------------------------------------------------

/// Most HTTP clients served at once; a scraper needs one.
const HTTP_MAX_CLIENTS: usize = 8;
/// A client must send its request head within this, and read the answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head accepted.
const HTTP_MAX_HEAD: usize = 8192;

/// The HTTP listener; stops when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `addr` and serve `GET /metrics` on the current runtime.
pub async fn serve_http<S>(
    addr: SocketAddr,
    source: S,
    metrics: Arc<Metrics>,
) -> io::Result<HttpServer>
where
    S: StatusSource + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let clients = Arc::new(tokio::sync::Semaphore::new(HTTP_MAX_CLIENTS));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = clients.clone().try_acquire_owned() else {
                metrics.api_refused("http_too_many_clients");
                continue;
            };
            let source = source.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let r = tokio::time::timeout(HTTP_TIMEOUT, http_client(stream, &source, &metrics))
                    .await;
                if let Ok(Err(e)) | Err(e) = r.map_err(io::Error::other) {
                    debug!(%peer, error = %e, "metrics HTTP client ended");
                }
                drop(permit);
            });
        }
    });
    Ok(HttpServer { addr, task })
}

async fn http_client(
    mut s: TcpStream,
    source: &impl StatusSource,
    metrics: &Metrics,
) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > HTTP_MAX_HEAD {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = scrape(source, metrics).await;
            respond(&mut s, "200 OK", CONTENT_TYPE, &body).await
        }
        ("GET", _) => {
            respond(
                &mut s,
                "404 Not Found",
                "text/plain",
                "only /metrics is served here\n",
            )
            .await
        }
        _ => {
            respond(
                &mut s,
                "405 Method Not Allowed",
                "text/plain",
                "only GET /metrics\n",
            )
            .await
        }
    }
}

async fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}
