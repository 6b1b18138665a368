//! `uplink-lab bench`: failover figures, not a test.
//!
//! Outage as a user feels it: a paced UDP stream of 10,000 datagrams/s from
//! the server to the sink ([`super::UdpStream`]), IPv4 and IPv6 in separate
//! trials; the outage of a trial is the longest run of missing sequence
//! numbers times the interval. Two figures per trial:
//! - **network**: the longest gap that is not entirely slots the sender
//!   skipped while it was merely not scheduled (a descheduled sender on a
//!   loaded 2-core VM is not a network outage). A sender *blocked in
//!   `sendto`* (e.g. behind a dead neighbour's queue) stays in: that is a
//!   real outage an application suffers. This is the headline figure.
//! - **raw**: the longest gap of any kind.
//!
//! Every trial: wait until the daemon is back on the primary for both
//! families, both uplinks are healthy, every veth end of the server's
//! uplinks is operationally up (the kernel applies a veth's carrier-on
//! lazily, through linkwatch) and the kernel's default route goes via the
//! primary; start the stream; 300 ms later inject the failure; wait for the
//! switch (status), then until the stream flows again (so a sender stalled
//! behind a dead path is measured to its end) and 300 ms more; stop; undo.
//!
//! The daemon runs with the shipped defaults adapted to the lab (socket,
//! interfaces, gateways, transit targets) and one change: `failback_after`
//! = [`BENCH_FAILBACK_AFTER`], so a trial does not wait 30 s to return to the
//! primary, and a damping threshold of [`BENCH_DAMPING_THRESHOLD`] failures,
//! so the primary, failed on purpose many times a minute, is not held down
//! for minutes. Every detection path uses the defaults.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};

use crate::demo::{
    self, active, ensure_prerequisites, find_uplinkd, ms, network_gap, on, secs_between, state,
    wait_flowing, wait_until, Cancel, Uplinkd,
};
use crate::{
    Family, Lab, LabError, LabSpec, NoiseGuard, StreamReport, StreamSpec, Uplink, ROUTER_DOWNLINK,
};
use uplinkd_core::status::UplinkState;

mod soak;
pub use soak::{SoakRow, DEFAULT_SOAK, SOAK_SECTIONS};

type Result<T, E = LabError> = std::result::Result<T, E>;

fn invalid(msg: impl Into<String>) -> LabError {
    LabError::Invalid(msg.into())
}

/// `failback_after` during the trials (the shipped default is 30 s).
pub const BENCH_FAILBACK_AFTER: &str = "3s";
/// Flap damping threshold during the trials (default 3 failures in 10 min):
/// the trials fail the primary on purpose, many times a minute; damping
/// would hold it down for minutes between trials.
pub const BENCH_DAMPING_THRESHOLD: u32 = 1000;
/// Datagrams per second of every stream.
pub const RATE: u32 = 10_000;
/// "Another interface on the host changing state": period of the noise.
pub const NOISE_PERIOD: Duration = Duration::from_millis(150);
/// Extra wait before a carrier trial. The previous trial's carrier-on
/// ended in a linkwatch run, and the kernel runs non-urgent linkwatch work
/// at most once per second (net/core/link_watch.c): a carrier loss within
/// a second of it is applied late, as on a busy host. A "quiet host" means
/// no link change for over a second: 200 ms + this + 300 ms before the
/// injection.
pub const LINKWATCH_QUIET: Duration = Duration::from_millis(1000);
/// On the busy host, a random 0-1 s wait before the injection, so the
/// carrier loss falls at a random phase of the noise's toggling and of the
/// kernel's once-per-second linkwatch runs (the trials' own rhythm would
/// otherwise sample one phase only).
fn phase_jitter(kind: Kind) -> Duration {
    if kind == Kind::CarrierBusy {
        Duration::from_millis(rand::random_range(0..1000))
    } else {
        Duration::ZERO
    }
}

/// Network namespaces on the host that are not this process's labs: a sign
/// that other work (other labs, tests) ran at the same time.
fn foreign_namespaces() -> usize {
    let mine = format!("{}{:x}-", super::netns::NAME_PREFIX, std::process::id());
    std::fs::read_dir(super::netns::NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with(&mine))
                .count()
        })
        .unwrap_or(0)
}

fn loadavg() -> Option<String> {
    read_trim("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Length of the random-loss and idle windows.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct BenchOpts {
    pub trials: usize,
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub install_frr: bool,
    pub uplinkd: Option<PathBuf>,
    /// Sections to run (all when empty): see [`SECTIONS`].
    pub only: Vec<String>,
    /// Other daemons to measure side by side in the same run:
    /// `LABEL=BINARY`, `LABEL=BINARY+OVERRIDES.toml` or `LABEL=+OVERRIDES.toml`
    /// (the main binary with other config).
    pub variants: Vec<String>,
    /// Length of the `echo-loss` and `tcp-loss` soaks ([`DEFAULT_SOAK`]
    /// when None); also caps the `policing` window per rate and the
    /// `probe-load` window.
    pub soak: Option<Duration>,
}

/// One daemon measured in a run: a binary and the config it runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// Names its series ("uplinkd" for the main binary with the bench's config).
    pub label: String,
    pub uplinkd: PathBuf,
    /// The config overrides it runs with (the bench's, merged with its own).
    pub overrides: String,
}

/// Parses `LABEL=BINARY[+OVERRIDES.toml]`; an empty BINARY is `main`.
fn parse_variant(spec: &str, main: &Path, base: &str) -> Result<Variant> {
    let (label, rest) = spec
        .split_once('=')
        .filter(|(l, _)| !l.is_empty() && *l != "uplinkd")
        .ok_or_else(|| {
            invalid(format!(
                "--variant {spec}: expected LABEL=BINARY[+OVERRIDES.toml] with a label other than uplinkd"
            ))
        })?;
    let (bin, file) = match rest.split_once('+') {
        Some((b, f)) => (b, Some(f)),
        None => (rest, None),
    };
    let uplinkd = if bin.is_empty() {
        main.to_path_buf()
    } else {
        PathBuf::from(bin)
    };
    if !uplinkd.is_file() {
        return Err(invalid(format!(
            "--variant {spec}: no such binary {}",
            uplinkd.display()
        )));
    }
    let mut table: toml::Table = base
        .parse()
        .map_err(|e| invalid(format!("bench overrides: {e}")))?;
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|source| LabError::Io {
            what: format!("read {f}"),
            source,
        })?;
        let over: toml::Table = text
            .parse()
            .map_err(|e| invalid(format!("--variant {spec}: {f}: {e}")))?;
        crate::merge_toml(&mut table, over);
    }
    Ok(Variant {
        label: label.to_string(),
        uplinkd,
        overrides: toml::to_string(&table)
            .map_err(|e| invalid(format!("--variant {spec}: {e}")))?,
    })
}

/// What a run measured of one variant beyond its outage series.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub variant: Variant,
    pub first_decision: Option<Value>,
    pub idle: Option<Value>,
    pub false_switches: Option<Value>,
}

/// The sections `--only` accepts.
pub const SECTIONS: [&str; 19] = [
    "first-decision",
    "idle",
    "idle-breakdown",
    "carrier-quiet",
    "carrier-busy",
    "gateway",
    "forwarding",
    "upstream",
    "failback",
    "drain",
    "false-switches",
    "round-trip",
    "kernel",
    "frr",
    "suspicion",
    "echo-loss",
    "policing",
    "probe-load",
    "tcp-loss",
];

/// A failure kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    CarrierQuiet,
    CarrierBusy,
    GatewayDead,
    ForwardingDead,
    /// The router stops forwarding while the server is idle (its stream at
    /// the idle rate), and traffic starts with the fault.
    ForwardingDeadIdle,
    UpstreamDead,
    Failback,
    Drain,
    /// Dead upstream while the server carries a TCP flow (passive suspicion).
    UpstreamDeadTcp,
    /// The router withdrew its upstream and answers with ICMP unreachables.
    UpstreamWithdrawn,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::CarrierQuiet => "carrier loss, quiet host",
            Kind::CarrierBusy => "carrier loss, busy host",
            Kind::GatewayDead => "dead gateway, carrier up",
            Kind::ForwardingDead => "router stops forwarding, still answers pings",
            Kind::ForwardingDeadIdle => {
                "the same on an idle server, traffic starting with the fault"
            }
            Kind::UpstreamDead => "dead upstream, gateway alive",
            Kind::Failback => "failback",
            Kind::Drain => "drain",
            Kind::UpstreamDeadTcp => "dead upstream with a TCP flow",
            Kind::UpstreamWithdrawn => "upstream withdrawn (ICMP unreachable)",
        }
    }
    fn section(self) -> &'static str {
        match self {
            Kind::CarrierQuiet => "carrier-quiet",
            Kind::CarrierBusy => "carrier-busy",
            Kind::GatewayDead => "gateway",
            Kind::ForwardingDead | Kind::ForwardingDeadIdle => "forwarding",
            Kind::UpstreamDead => "upstream",
            Kind::Failback => "failback",
            Kind::Drain => "drain",
            Kind::UpstreamDeadTcp | Kind::UpstreamWithdrawn => "suspicion",
        }
    }
    /// The p99 target of the failover requirements, in ms.
    fn target_p99_ms(self) -> f64 {
        match self {
            Kind::CarrierQuiet => 2.0,
            Kind::CarrierBusy => 5.0,
            Kind::GatewayDead => 100.0,
            // Issue 13: within 50 ms p99 with the forwarding-plane echo
            // (ICMP mode only sees it through the transit quorum).
            Kind::ForwardingDead | Kind::ForwardingDeadIdle => 50.0,
            Kind::UpstreamDead => 1000.0,
            // Issue 14's targets.
            Kind::UpstreamDeadTcp => 200.0,
            Kind::UpstreamWithdrawn => 150.0,
            Kind::Failback | Kind::Drain => 0.0,
        }
    }
}

/// min / p50 / p99 / max (nearest rank) of a sample, in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Summary {
        n: v.len(),
        min: v[0],
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1],
    })
}

/// One trial's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub network_ms: f64,
    pub raw_ms: f64,
    pub lost: u64,
    pub sent: u64,
    /// From the injection (just before the command that injects it) to the
    /// daemon's `active_changed` event. None for the kernel comparator.
    pub decision_ms: Option<f64>,
    /// Slots skipped while the sender was blocked in sendto.
    pub blocked_in_sendto: u64,
    /// Slots skipped while the sender was not scheduled.
    pub descheduled: u64,
}

impl Trial {
    fn from_report(r: &StreamReport, decision_ms: Option<f64>) -> Trial {
        Trial {
            network_ms: ms(network_gap(r)),
            raw_ms: ms(r.longest_gap),
            lost: r.lost(),
            sent: r.sent,
            decision_ms,
            blocked_in_sendto: r
                .stalls
                .iter()
                .filter(|s| s.in_sendto)
                .map(|s| s.count)
                .sum(),
            descheduled: r
                .stalls
                .iter()
                .filter(|s| !s.in_sendto)
                .map(|s| s.count)
                .sum(),
        }
    }
}

/// All trials of one (subject, kind, family).
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub subject: String,
    pub kind: Kind,
    pub title: String,
    pub family: String,
    pub trials: Vec<Trial>,
    /// Trials that failed (e.g. no switch within the bound), with why.
    pub failed: Vec<String>,
    pub network_ms: Option<Summary>,
    pub raw_ms: Option<Summary>,
    pub decision_ms: Option<Summary>,
    pub target_p99_ms: Option<f64>,
    pub meets_target: Option<bool>,
    /// Load average (1, 5, 15 min) when the series started and ended.
    pub loadavg: Vec<String>,
    /// Most network namespaces of other work seen on the host during the
    /// series (sampled before every trial): other labs or tests running.
    pub foreign_namespaces_max: usize,
    /// A series of uplinkd (any variant), held to uplinkd's targets; the
    /// comparators are not.
    pub daemon: bool,
}

impl Series {
    fn new(subject: &str, kind: Kind, family: Family) -> Series {
        Series {
            subject: subject.to_string(),
            kind,
            title: kind.title().to_string(),
            family: family.name().to_string(),
            trials: Vec::new(),
            failed: Vec::new(),
            network_ms: None,
            raw_ms: None,
            decision_ms: None,
            target_p99_ms: None,
            meets_target: None,
            loadavg: loadavg().into_iter().collect(),
            foreign_namespaces_max: 0,
            daemon: false,
        }
    }
    fn finish(&mut self) {
        self.loadavg.extend(loadavg());
        let net: Vec<f64> = self.trials.iter().map(|t| t.network_ms).collect();
        let raw: Vec<f64> = self.trials.iter().map(|t| t.raw_ms).collect();
        let dec: Vec<f64> = self.trials.iter().filter_map(|t| t.decision_ms).collect();
        self.network_ms = summarize(&net);
        self.raw_ms = summarize(&raw);
        self.decision_ms = summarize(&dec);
        if self.daemon {
            let target = self.kind.target_p99_ms();
            self.target_p99_ms = Some(target);
            self.meets_target = self
                .network_ms
                .map(|s| s.p99 <= target + 1e-9 && self.failed.is_empty());
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Value,
    pub method: Value,
    pub series: Vec<Series>,
    pub first_decision: Option<Value>,
    pub idle: Option<Value>,
    /// Idle CPU with parts of the default probing slowed down, to show what
    /// the idle figure is made of.
    pub idle_breakdown: Vec<Value>,
    pub false_switches: Option<Value>,
    /// How each comparator was set up.
    pub comparators: Vec<Value>,
    /// What was not measured, and why.
    pub not_measured: Vec<String>,
    /// Every target this run missed, with what limits it.
    pub targets_missed: Vec<String>,
    /// Both directions (`round-trip`): a request/response stream echoed by
    /// the sink and a TCP connection, per failure and family.
    pub round_trip: Vec<RoundTripSeries>,
    /// Each daemon variant's own figures (the first is the main binary,
    /// whose figures are also in `first_decision`, `idle` and
    /// `false_switches`); more than one with `--variant`.
    pub variants: Vec<VariantResult>,
    /// Steady probes per transit target with passive suspicion off and on
    /// (section `suspicion`).
    pub suspicion_probes: Vec<Value>,
    /// The soak and load rows (`echo-loss`, `policing`, `probe-load`,
    /// `tcp-loss`), every variant side by side.
    pub soak: Vec<SoakRow>,
    pub duration_s: f64,
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// What machine this ran on.
pub fn machine() -> Value {
    let uname = nix::sys::utsname::uname().ok();
    let mem_kib: Option<u64> = read_trim("/proc/meminfo").and_then(|m| {
        m.lines().find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
    });
    let cpu = read_trim("/proc/cpuinfo").and_then(|c| {
        c.lines().find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
    });
    // systemd-detect-virt names the innermost layer (e.g. a container);
    // the cpuinfo flag says whether the kernel itself runs on a hypervisor.
    let detected = std::process::Command::new("systemd-detect-virt")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let hypervisor = read_trim("/proc/cpuinfo").is_some_and(|c| c.contains(" hypervisor"));
    let virt = match (detected, hypervisor) {
        (Some(d), true) => Some(format!(
            "{d} (systemd-detect-virt); kernel on a hypervisor (cpuinfo)"
        )),
        (Some(d), false) => Some(format!("{d} (systemd-detect-virt)")),
        (None, true) => Some("kernel on a hypervisor (cpuinfo)".to_string()),
        (None, false) => None,
    };
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_mib": mem_kib.map(|k| k / 1024),
        "kernel": uname.as_ref().map(|u| u.release().to_string_lossy().to_string()),
        "arch": uname.as_ref().map(|u| u.machine().to_string_lossy().to_string()),
        "virtualization": virt,
        "os": read_trim("/etc/os-release").and_then(|o| o.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|s| s.trim_matches('"').to_string()))),
        "uplinkd_version": env!("CARGO_PKG_VERSION"),
        "load_average_start": loadavg(),
        "other_network_namespaces_at_start": foreign_namespaces(),
        "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    })
}

struct Ctx<'a> {
    cancel: &'a Cancel,
    progress_t0: Instant,
}

impl Ctx<'_> {
    fn say(&self, msg: &str) {
        eprintln!("[{:7.1}s] {msg}", self.progress_t0.elapsed().as_secs_f64());
    }
}

/// Every veth end of both server uplinks is operationally up with carrier.
fn links_up(lab: &Lab) -> Result<bool> {
    for u in Uplink::ALL {
        let s = lab.server_link(u)?;
        let r = lab.link(&lab.router_ns(u), ROUTER_DOWNLINK)?;
        for l in [s, r] {
            if !l.carrier() || l.operstate != "UP" {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn route_via(lab: &Lab, f: Family, u: Uplink) -> Result<bool> {
    Ok(lab
        .default_route(f)?
        .is_some_and(|(gw, dev)| gw == u.gateway(f) && dev == u.interface()))
}

/// Back to the starting point: on the primary, everything healthy and up.
fn baseline(ctx: &Ctx, lab: &Lab, d: &mut Uplinkd) -> Result<()> {
    d.wait_for(
        ctx.cancel,
        "back on the primary, both uplinks healthy",
        Duration::from_secs(90),
        |s| {
            on(s, Uplink::Primary)
                && !s.fail_static.ipv4
                && !s.fail_static.ipv6
                && Uplink::ALL.iter().all(|u| {
                    state(s, *u) == Some(UplinkState::Healthy) && !s.uplinks[u.index()].drained
                })
        },
    )?;
    wait_until(
        ctx.cancel,
        "veth ends up and routes via the primary",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            Ok(links_up(lab)?
                && route_via(lab, Family::V4, Uplink::Primary)?
                && route_via(lab, Family::V6, Uplink::Primary)?)
        },
    )?;
    ctx.cancel.sleep(Duration::from_millis(200))
}

fn spec(f: Family) -> StreamSpec {
    StreamSpec {
        family: f,
        rate: RATE,
        max_duration: Duration::from_secs(60),
        ..StreamSpec::default()
    }
}

/// One trial of the daemon.
fn uplinkd_trial(ctx: &Ctx, lab: &Lab, d: &mut Uplinkd, kind: Kind, f: Family) -> Result<Trial> {
    baseline(ctx, lab, d)?;
    if matches!(kind, Kind::CarrierQuiet | Kind::CarrierBusy) {
        ctx.cancel.sleep(LINKWATCH_QUIET + phase_jitter(kind))?;
    }
    if kind == Kind::Failback {
        lab.carrier_down(Uplink::Primary)?;
        d.wait_for(
            ctx.cancel,
            "on the secondary",
            Duration::from_secs(15),
            |s| on(s, Uplink::Secondary),
        )?;
        lab.carrier_up(Uplink::Primary)?;
        d.wait_for(
            ctx.cancel,
            "primary healthy again",
            Duration::from_secs(30),
            |s| state(s, Uplink::Primary) == Some(UplinkState::Healthy),
        )?;
    }
    let (from, to) = match kind {
        Kind::Failback => (Uplink::Secondary, Uplink::Primary),
        _ => (Uplink::Primary, Uplink::Secondary),
    };
    let _ = from;
    // The server's own TCP traffic next to the UDP stream.
    let flow = match kind {
        Kind::UpstreamDeadTcp => Some(lab.tcp_flow(f)?),
        _ => None,
    };
    // On an idle server (nothing sent for longer than the daemon's traffic
    // hold of 1 s, whatever the previous trial's stream), the fault comes
    // first and the traffic with it.
    let idle_fault = if kind == Kind::ForwardingDeadIdle {
        ctx.cancel
            .sleep(Duration::from_millis(1500 + rand::random_range(0..48)))?;
        let t = SystemTime::now();
        inject(lab, d, kind)?;
        Some(t)
    } else {
        None
    };
    let stream = lab.udp_stream(&spec(f))?;
    let outcome = (|| -> Result<SystemTime> {
        let t = match idle_fault {
            Some(t) => t,
            None => {
                ctx.cancel.sleep(Duration::from_millis(300))?;
                let t = SystemTime::now();
                inject(lab, d, kind)?;
                t
            }
        };
        let bound = match kind {
            Kind::Failback => Duration::from_secs(30),
            _ => Duration::from_secs(15),
        };
        d.wait_for(
            ctx.cancel,
            &format!("{f} on the {}", to.name()),
            bound,
            |s| active(s, f) == Some(to.name()),
        )?;
        Ok(t)
    })();
    let result = match outcome {
        Ok(t) => {
            let flowing = wait_flowing(ctx.cancel, &stream, Duration::from_secs(10))?;
            ctx.cancel.sleep(Duration::from_millis(300))?;
            let r = stream.stop();
            let decision = d
                .wait_switch_event(f, to.name(), t, Duration::from_secs(2))
                .map(|e| secs_between(t, e.time) * 1000.0);
            if !flowing {
                Err(invalid(format!(
                    "{f} stream did not flow again within 10 s after the switch ({} of {} lost)",
                    r.lost(),
                    r.sent
                )))
            } else {
                Ok(Trial::from_report(&r, decision))
            }
        }
        Err(e) => {
            drop(stream);
            Err(e)
        }
    };
    drop(flow);
    // Undo (also after a failed trial).
    let undo = undo(lab, d, kind);
    let t = result?;
    undo?;
    Ok(t)
}

/// The kernel's own fallback: no daemon, two default routes (metric 10 via
/// the primary, 11 via the secondary), `ignore_routes_with_linkdown=1`.
fn kernel_setup(lab: &Lab) -> Result<()> {
    let srv = lab.server_ns();
    let mut kv = Vec::new();
    for fam in ["ipv4", "ipv6"] {
        for dev in ["all", "default", "eth0", "eth1"] {
            kv.push(format!(
                "net.{fam}.conf.{dev}.ignore_routes_with_linkdown=1"
            ));
        }
    }
    let kv: Vec<&str> = kv.iter().map(String::as_str).collect();
    lab.sysctl(&srv, &kv)?;
    lab.set_server_default(Uplink::Primary, 10)?;
    lab.set_server_default(Uplink::Secondary, 11)?;
    Ok(())
}

fn primary_route_linkdown(lab: &Lab, f: Family) -> Result<bool> {
    Ok(lab.default_routes(f)?.iter().any(|r| {
        r.dev.as_deref() == Some(Uplink::Primary.interface())
            && r.flags.iter().any(|x| x == "linkdown")
    }))
}

fn kernel_ready(lab: &Lab, f: Family) -> Result<bool> {
    Ok(links_up(lab)?
        && !primary_route_linkdown(lab, Family::V4)?
        && !primary_route_linkdown(lab, Family::V6)?
        && route_via(lab, f, Uplink::Primary)?)
}

/// One carrier-loss trial of a comparator that runs by itself (the
/// kernel's fallback, FRR): wait until `ready` (links up, routes on the
/// primary), stay quiet for a linkwatch period, start the stream, cut the
/// primary's carrier, watch only the stream, restore the carrier.
fn passive_trial(
    ctx: &Ctx,
    lab: &Lab,
    kind: Kind,
    f: Family,
    ready: &dyn Fn() -> Result<bool>,
) -> Result<Trial> {
    wait_until(
        ctx.cancel,
        "veth ends up, routes via the primary",
        Duration::from_secs(20),
        Duration::from_millis(20),
        ready,
    )?;
    ctx.cancel
        .sleep(Duration::from_millis(200) + LINKWATCH_QUIET + phase_jitter(kind))?;
    let stream = lab.udp_stream(&spec(f))?;
    ctx.cancel.sleep(Duration::from_millis(300))?;
    lab.carrier_down(Uplink::Primary)?;
    let res = (|| -> Result<bool> {
        // Nothing may ask the kernel about the server's links or routes
        // while the outage lasts: `ip` resolves device names with a
        // per-device RTM_GETLINK, which synchronises pending linkwatch work
        // (linkwatch_sync_dev) and would apply a delayed link change early.
        // Only the stream is watched; the kernel (and a daemon waiting for
        // its link event) comes at most ~1 s late (linkwatch), so watch at
        // least that long.
        let t = Instant::now();
        let flowing = wait_flowing(ctx.cancel, &stream, Duration::from_secs(10))?;
        ctx.cancel
            .sleep(Duration::from_millis(1300).saturating_sub(t.elapsed()))?;
        ctx.cancel.sleep(Duration::from_millis(300))?;
        Ok(flowing)
    })();
    let r = stream.stop();
    let undo = lab.carrier_up(Uplink::Primary);
    let flowing = res?;
    undo?;
    if !flowing {
        return Err(invalid(format!(
            "{f} stream did not flow again within 10 s ({} of {} lost)",
            r.lost(),
            r.sent
        )));
    }
    Ok(Trial::from_report(&r, None))
}

// ---------------------------------------------------------------------------
// FRR: zebra + staticd with two static defaults (distance 10 and 20)
// ---------------------------------------------------------------------------

/// FRR's daemons directory (Debian: /usr/lib/frr).
fn frr_dir() -> Option<PathBuf> {
    frr_zebra().and_then(|z| z.parent().map(Path::to_path_buf))
}

/// `apt-get install frr` (for `--install-frr`).
fn install_frr(ctx: &Ctx) -> Result<()> {
    ctx.say("--install-frr: apt-get install -y --no-install-recommends frr");
    let run = |args: &[&str]| -> Result<bool> {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .map_err(|source| LabError::Io {
                what: "run apt-get".into(),
                source,
            })
    };
    let install = ["install", "-y", "--no-install-recommends", "frr"];
    // A fresh machine often has no package lists yet: update, then retry.
    let ok = run(&install)? || (run(&["update"])? && run(&install)?);
    if ok {
        Ok(())
    } else {
        Err(invalid("apt-get install frr failed"))
    }
}

/// zebra and staticd running in the lab's server namespace.
struct Frr {
    zebra: super::LabChild,
    staticd: super::LabChild,
    dir: PathBuf,
}

/// FRR's version, e.g. "FRR 8.4.4" (from `zebra --version`: "zebra
/// version 8.4.4").
fn frr_version(bin: &Path) -> Option<String> {
    std::process::Command::new(bin.join("zebra"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().last())
                .map(|v| format!("FRR {v}"))
        })
}

/// The staticd config of the comparator: two static defaults per family,
/// the primary at distance 10, the secondary at 20 (a floating static).
pub fn frr_static_config() -> String {
    let mut c = String::from("hostname srv\n");
    for (u, dist) in [(Uplink::Primary, 10), (Uplink::Secondary, 20)] {
        c.push_str(&format!(
            "ip route 0.0.0.0/0 {} {dist}\nipv6 route ::/0 {} {dist}\n",
            u.gateway(Family::V4),
            u.gateway(Family::V6)
        ));
    }
    c
}

impl Frr {
    /// Starts zebra, then staticd, in the server namespace, as the `frr`
    /// user (FRR drops to it and keeps the capabilities it needs); every
    /// file in `<lab dir>/frr`. Waits (bounded) until the routes are in.
    fn start(ctx: &Ctx, lab: &Lab, bin: &Path) -> Result<Frr> {
        use std::os::unix::fs::PermissionsExt;
        let dir = lab.dir().join("frr");
        let io = |what: String| move |source| LabError::Io { what, source };
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        std::fs::write(dir.join("zebra.conf"), "hostname srv\n")
            .map_err(io("write zebra.conf".into()))?;
        std::fs::write(dir.join("staticd.conf"), frr_static_config())
            .map_err(io("write staticd.conf".into()))?;
        let user = nix::unistd::User::from_name("frr")
            .ok()
            .flatten()
            .ok_or_else(|| {
                LabError::Missing("the `frr` user (installed with Debian's frr package)".into())
            })?;
        for e in std::fs::read_dir(&dir)
            .map_err(io(format!("list {}", dir.display())))?
            .flatten()
        {
            let _ = nix::unistd::chown(&e.path(), Some(user.uid), Some(user.gid));
        }
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid))
            .map_err(|e| io(format!("chown {}", dir.display()))(e.into()))?;
        // The frr user must be able to reach its directory.
        let _ = std::fs::set_permissions(lab.dir(), std::fs::Permissions::from_mode(0o711));
        let d = dir.display().to_string();
        let srv = lab.server_ns();
        let daemon = |name: &str| -> Result<super::LabChild> {
            let prog = bin.join(name).display().to_string();
            let mut c = lab.command(
                &srv,
                &[
                    &prog,
                    "-f",
                    &format!("{d}/{name}.conf"),
                    "-i",
                    &format!("{d}/{name}.pid"),
                    "-z",
                    &format!("{d}/zserv.api"),
                    "--vty_socket",
                    &d,
                    "-u",
                    "frr",
                    "-g",
                    "frr",
                    "-P",
                    "0",
                    "--log",
                    &format!("file:{d}/{name}.log"),
                ],
            )?;
            let out = std::fs::File::create(dir.join(format!("{name}.out")))
                .map_err(io(format!("create {name}.out")))?;
            let err = out.try_clone().map_err(io(format!("create {name}.out")))?;
            c.stdin(std::process::Stdio::null()).stdout(out).stderr(err);
            let child = c.spawn().map_err(io(format!("start {prog}")))?;
            Ok(super::LabChild::new(child, name.to_string()))
        };
        let zebra = daemon("zebra")?;
        wait_until(
            ctx.cancel,
            "zebra's socket",
            Duration::from_secs(15),
            Duration::from_millis(20),
            || Ok(dir.join("zserv.api").exists()),
        )?;
        let staticd = daemon("staticd")?;
        let mut frr = Frr {
            zebra,
            staticd,
            dir,
        };
        let ready = wait_until(
            ctx.cancel,
            "FRR's static default routes via the primary",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                frr.check_alive()?;
                Ok(route_via(lab, Family::V4, Uplink::Primary)?
                    && route_via(lab, Family::V6, Uplink::Primary)?)
            },
        );
        if let Err(e) = ready {
            return Err(invalid(format!("{e}; {}", frr.log_tail())));
        }
        Ok(frr)
    }

    fn check_alive(&mut self) -> Result<()> {
        for (name, c) in [("zebra", &mut self.zebra), ("staticd", &mut self.staticd)] {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(invalid(format!("FRR's {name} exited ({st})")));
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        ["zebra.out", "zebra.log", "staticd.out", "staticd.log"]
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                format!(
                    "{f}: {}",
                    lines[lines.len().saturating_sub(5)..].join(" / ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn stop(self) {
        let _ = self.staticd.terminate(Duration::from_secs(3));
        let _ = self.zebra.terminate(Duration::from_secs(3));
    }
}

/// What the daemon cost over an idle window.
#[derive(Debug, Clone, Serialize)]
pub struct IdleFigures {
    pub window_s: f64,
    /// On-CPU time / window, from /proc/PID/schedstat (the scheduler's
    /// clock; includes softirq work done in the daemon's context, e.g. the
    /// lab routers' echo replies over veth).
    pub cpu_percent: f64,
    /// The same from utime + stime (sampled at the kernel tick).
    pub cpu_percent_utime_stime: f64,
    /// Times the daemon was scheduled in, per second.
    pub wakeups_per_s: f64,
    /// CPU per wake-up, in microseconds.
    pub us_per_wakeup: f64,
    pub vm_hwm_kib: Option<u64>,
    pub vm_rss_kib: Option<u64>,
    /// Per thread (name, CPU %, wake-ups/s).
    pub threads: Vec<(String, f64, f64)>,
    /// Where the daemon and the lab routers ran (see [`Steering`]).
    pub placement: String,
}

fn measure_idle(ctx: &Ctx, d: &Uplinkd, window: Duration) -> Result<IdleFigures> {
    let c0 = d.cpu_seconds()?;
    let s0 = d.schedstat();
    let t0s = d.thread_schedstat().unwrap_or_default();
    let t0 = Instant::now();
    ctx.cancel.sleep(window)?;
    let c1 = d.cpu_seconds()?;
    let s1 = d.schedstat();
    let t1s = d.thread_schedstat().unwrap_or_default();
    let secs = t0.elapsed().as_secs_f64();
    let threads = t1s
        .iter()
        .map(|(tid, name, ns, k)| {
            let (ns0, k0) = t0s
                .iter()
                .find(|t| t.0 == *tid)
                .map_or((0, 0), |t| (t.2, t.3));
            (
                name.clone(),
                ns.saturating_sub(ns0) as f64 / 1e9 / secs * 100.0,
                k.saturating_sub(k0) as f64 / secs,
            )
        })
        .collect();
    let ticks_pct = (c1 - c0) / secs * 100.0;
    let (cpu_percent, wakeups_per_s, us_per_wakeup) = match (s0, s1) {
        (Some((n0, k0)), Some((n1, k1))) => {
            let ns = n1.saturating_sub(n0) as f64;
            let k = k1.saturating_sub(k0).max(1) as f64;
            (ns / 1e9 / secs * 100.0, k / secs, ns / 1e3 / k)
        }
        _ => (ticks_pct, f64::NAN, f64::NAN),
    };
    Ok(IdleFigures {
        window_s: secs,
        cpu_percent,
        cpu_percent_utime_stime: ticks_pct,
        wakeups_per_s,
        us_per_wakeup,
        vm_hwm_kib: d.proc_status_kib("VmHWM"),
        vm_rss_kib: d.proc_status_kib("VmRSS"),
        threads,
        placement: String::new(),
    })
}

/// Where the idle figure is measured: over veth, a lab router's echo reply
/// is made in the softirq that the daemon's own `sendto` runs (on its CPU,
/// in its context, so counted as its CPU time), which a real gateway does
/// on its own hardware. Steering puts the routers' receive processing on
/// the last CPU (RPS on their downlinks) and the daemon's threads on CPU 0,
/// so what is counted is the daemon's own work. Undone when dropped.
struct Steering<'a> {
    lab: &'a Lab,
    pid: u32,
}

impl<'a> Steering<'a> {
    /// None (and nothing changed) on a machine with one CPU.
    fn on(lab: &'a Lab, d: &Uplinkd) -> Result<Option<Steering<'a>>> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            return Ok(None);
        }
        let s = Steering { lab, pid: d.pid() };
        s.set(&format!("{:x}", 1u64 << (cpus - 1).min(63)), Some(0))?;
        Ok(Some(s))
    }

    fn describe(&self) -> String {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!(
            "daemon's threads pinned to CPU 0; lab routers' receive processing steered to CPU {} (RPS on {})",
            cpus - 1,
            ROUTER_DOWNLINK
        )
    }

    /// RPS mask of the routers' downlinks; the daemon's threads on `cpu`
    /// (None: every CPU).
    fn set(&self, rps: &str, cpu: Option<usize>) -> Result<()> {
        for u in [Uplink::Primary, Uplink::Secondary] {
            let path = format!("/sys/class/net/{}/queues/rx-0/rps_cpus", ROUTER_DOWNLINK);
            self.lab.exec(
                &self.lab.router_ns(u),
                &["sh", "-c", &format!("echo {rps} > {path}")],
            )?;
        }
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid)).map_err(|source| {
            LabError::Io {
                what: format!("list the threads of {}", self.pid),
                source,
            }
        })?;
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: a zeroed cpu_set_t is valid; CPU_SET/sched_setaffinity
            // get a live set of the stated size.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                for c in 0..cpus {
                    if cpu.is_none_or(|x| x == c) {
                        libc::CPU_SET(c, &mut set);
                    }
                }
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }
        Ok(())
    }
}

impl Drop for Steering<'_> {
    fn drop(&mut self) {
        let _ = self.set("0", None);
    }
}

/// The idle figures with the daemon's work alone counted (see
/// [`Steering`]), then as they come without steering.
fn measure_idle_steered(
    ctx: &Ctx,
    lab: &Lab,
    d: &Uplinkd,
    window: Duration,
) -> Result<(IdleFigures, IdleFigures)> {
    let steered = {
        let steering = Steering::on(lab, d)?;
        ctx.cancel.sleep(Duration::from_secs(1))?;
        let mut m = measure_idle(ctx, d, window)?;
        m.placement = steering
            .as_ref()
            .map_or("one CPU: nothing to steer".to_string(), |s| s.describe());
        m
    };
    ctx.cancel.sleep(Duration::from_secs(1))?;
    let mut plain = measure_idle(ctx, d, window)?;
    plain.placement =
        "not steered: the lab routers' echo processing partly runs in the daemon's context"
            .to_string();
    Ok((steered, plain))
}

/// Window of each idle-breakdown variant.
const BREAKDOWN_WINDOW: Duration = Duration::from_secs(20);

/// Idle CPU (steered, see [`Steering`]) with the default probing (the
/// forwarding-plane echo stream on the carrier tick), then with today's
/// ICMP gateway probes instead (`bench/icmp.toml`), then the echo stream
/// at half its rate, then the gateway probed once a second with the
/// carrier poll slowed to 100 ms: the differences are what the gateway
/// probes and the carrier poll cost.
fn idle_breakdown(ctx: &Ctx, lab: &Lab, bin: &Path) -> Result<Vec<Value>> {
    let icmp = include_str!("../../bench/icmp.toml");
    let variants = [
        (
            "defaults (carrier poll 4 ms; gateway echo stream, one per 12 ms, on that tick)",
            String::new(),
        ),
        (
            "carrier poll 4 ms; gateway_probe = icmp, one ping per 48 ms",
            icmp.to_string(),
        ),
        (
            "carrier poll 4 ms; echo stream at half rate (one per 24 ms)",
            "[probe]\necho_interval = \"24ms\"\necho_dead_after = \"24ms\"\n".to_string(),
        ),
        (
            "carrier poll 100 ms; gateway echo every 1 s",
            "[probe]\ncarrier_interval = \"100ms\"\ngateway_fast_interval = \"100ms\"\ngateway_interval = \"1s\"\ngateway_dead_after = \"3s\"\ngateway_timeout = \"100ms\"\necho_interval = \"1s\"\necho_dead_after = \"3s\"\n".to_string(),
        ),
    ];
    let mut out = Vec::new();
    for (what, probe) in variants {
        ctx.cancel.check()?;
        let d = Uplinkd::start(lab, bin, &probe)?;
        ctx.cancel.sleep(Duration::from_secs(3))?;
        let steering = Steering::on(lab, &d)?;
        ctx.cancel.sleep(Duration::from_secs(1))?;
        let m = measure_idle(ctx, &d, BREAKDOWN_WINDOW)?;
        drop(steering);
        ctx.say(&format!(
            "idle breakdown: {what}: CPU {:.2} % ({:.0} wake-ups/s, {:.1} us each)",
            m.cpu_percent, m.wakeups_per_s, m.us_per_wakeup
        ));
        let mut v = serde_json::to_value(&m).unwrap_or_default();
        v["config"] = json!(what);
        out.push(v);
        d.stop();
    }
    Ok(out)
}

/// "uplinkd 0.46 % 50/s, carrier:eth0 0.37 % 250/s".
fn threads_line(threads: &[(String, f64, f64)]) -> String {
    threads
        .iter()
        .map(|(n, cpu, k)| format!("{n} {cpu:.2} % {k:.0}/s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The idle windows of an idle figure: "60 s", or "median of 5 rounds of
/// 12 s: 0.91, 0.85, ... %".
fn idle_windows(i: &Value) -> String {
    let w = i["window_s"].as_f64().unwrap_or(f64::NAN);
    match i["rounds_cpu_percent"].as_array() {
        Some(r) if r.len() > 1 => format!(
            "median of {} rounds of {w:.0} s alternating with the other variants: {} %",
            r.len(),
            r.iter()
                .map(|x| x.as_f64().map_or("?".into(), |x| format!("{x:.2}")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => format!("{w:.0} s"),
    }
}

/// [`threads_line`] from the JSON of an [`IdleFigures`].
fn threads_of(v: &Value) -> String {
    let t: Vec<(String, f64, f64)> =
        serde_json::from_value(v["threads"].clone()).unwrap_or_default();
    threads_line(&t)
}

fn wants(opts: &BenchOpts, section: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|s| s == section)
}

fn frr_zebra() -> Option<PathBuf> {
    for p in ["/usr/lib/frr/zebra", "/usr/sbin/zebra"] {
        if Path::new(p).is_file() {
            return Some(PathBuf::from(p));
        }
    }
    std::process::Command::new("sh")
        .args(["-c", "command -v zebra"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// Runs the benchmark; prints the table; writes the JSON and Markdown asked for.
pub fn run_bench(opts: &BenchOpts, cancel: &Cancel) -> Result<Results> {
    for s in &opts.only {
        if !SECTIONS.contains(&s.as_str()) {
            return Err(invalid(format!(
                "--only {s}: unknown section (sections: {})",
                SECTIONS.join(", ")
            )));
        }
    }
    if opts.trials == 0 {
        return Err(invalid("--trials must be at least 1"));
    }
    let t_start = Instant::now();
    ensure_prerequisites()?;
    let bin = find_uplinkd(opts.uplinkd.as_deref())?;
    let ctx = Ctx {
        cancel,
        progress_t0: t_start,
    };
    let mut res = Results {
        machine: machine(),
        method: json!({
            "stream_rate_per_s": RATE,
            "outage": "longest run of missing sequence numbers x interval (0.1 ms); network = excluding runs made only of slots the sender skipped while descheduled (not blocked in sendto); raw = any",
            "percentiles": "nearest rank",
            "trials_per_series": opts.trials,
            "daemon_config": format!("shipped defaults; lab socket/interfaces/gateways/targets; failback_after = \"{BENCH_FAILBACK_AFTER}\" (default 30s) and damping threshold = {BENCH_DAMPING_THRESHOLD} (default 3) to keep trials short; detection uses the defaults"),
            "busy_host": format!("a same-ifindex veth pair in two other namespaces toggled every {} ms", NOISE_PERIOD.as_millis()),
            "decision_ms": "from just before the injecting command (ip/nft, a few ms to start) to the daemon's active_changed event time",
            "uplinkd": bin.display().to_string(),
        }),
        series: Vec::new(),
        first_decision: None,
        idle: None,
        idle_breakdown: Vec::new(),
        false_switches: None,
        suspicion_probes: Vec::new(),
        soak: Vec::new(),
        comparators: Vec::new(),
        not_measured: Vec::new(),
        targets_missed: Vec::new(),
        round_trip: Vec::new(),
        variants: Vec::new(),
        duration_s: 0.0,
    };
    let outcome = run_sections(opts, &ctx, &bin, &mut res);
    res.duration_s = t_start.elapsed().as_secs_f64();
    res.machine["load_average_end"] = json!(loadavg());
    if let Err(e) = &outcome {
        ctx.say(&format!("stopped early: {e}"));
        res.not_measured.push(format!("the run stopped early: {e}"));
    }
    res.targets_missed = targets_missed(&res);
    print_table(&res);
    if let Some(p) = &opts.json {
        let text = serde_json::to_string_pretty(&res).unwrap_or_default();
        write_file(p, &text)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &opts.markdown {
        write_file(p, &markdown(&res))?;
        eprintln!("wrote {}", p.display());
    }
    // A soak row that did not measure fails the run (after the table).
    outcome.and_then(|()| soak::check(&res.soak)).map(|()| res)
}

fn write_file(p: &Path, text: &str) -> Result<()> {
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LabError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
    }
    std::fs::write(p, text).map_err(|source| LabError::Io {
        what: format!("write {}", p.display()),
        source,
    })
}

fn run_sections(opts: &BenchOpts, ctx: &Ctx, bin: &Path, res: &mut Results) -> Result<()> {
    let overrides = format!(
        "[policy]\nfailback_after = \"{BENCH_FAILBACK_AFTER}\"\n[policy.damping]\nthreshold = {BENCH_DAMPING_THRESHOLD}\n"
    );
    let daemon_kinds = [
        Kind::CarrierQuiet,
        Kind::GatewayDead,
        Kind::ForwardingDead,
        Kind::ForwardingDeadIdle,
        Kind::UpstreamDead,
        Kind::Failback,
        Kind::Drain,
        Kind::CarrierBusy,
    ];
    let need_daemon = [
        "first-decision",
        "idle",
        "idle-breakdown",
        "false-switches",
        "round-trip",
    ]
    .iter()
    .any(|s| wants(opts, s))
        || daemon_kinds.iter().any(|k| wants(opts, k.section()));
    if need_daemon {
        let mut variants = vec![Variant {
            label: "uplinkd".into(),
            uplinkd: bin.to_path_buf(),
            overrides: overrides.clone(),
        }];
        for spec in &opts.variants {
            variants.push(parse_variant(spec, bin, &overrides)?);
        }
        res.variants = variants
            .iter()
            .map(|v| VariantResult {
                variant: v.clone(),
                first_decision: None,
                idle: None,
                false_switches: None,
            })
            .collect();
        ctx.say("building the lab for uplinkd");
        let lab = Lab::build(&LabSpec::default())?;
        let mut running = Running::default();
        // Every variant from a fresh start: the first decision, then idle,
        // in rounds that alternate the variants (see `IDLE_ROUNDS`).
        let idle_rounds = match (wants(opts, "idle"), variants.len()) {
            (false, _) => 0,
            (true, 1) => 1,
            (true, _) => IDLE_ROUNDS,
        };
        let mut idle: Vec<Vec<Value>> = vec![Vec::new(); variants.len()];
        for round in 0..idle_rounds.max(1) {
            for vi in 0..variants.len() {
                let d = running.switch(ctx, &lab, &variants, vi, res)?;
                baseline(ctx, &lab, d)?;
                if round < idle_rounds {
                    let window = WINDOW / idle_rounds as u32;
                    let label = &variants[vi].label;
                    idle[vi].push(idle_section(ctx, &lab, d, label, window)?);
                }
            }
        }
        for (vi, rounds) in idle.into_iter().enumerate() {
            res.variants[vi].idle = median_round(rounds);
        }
        for kind in daemon_kinds {
            if !wants(opts, kind.section()) {
                continue;
            }
            let noise: Option<NoiseGuard> = if kind == Kind::CarrierBusy {
                Some(lab.noise(NOISE_PERIOD)?)
            } else {
                None
            };
            // Each variant's trials of this kind in turn, so that the
            // variants of one kind see the same machine.
            let mut interrupted = None;
            for vi in 0..variants.len() {
                let d = running.switch(ctx, &lab, &variants, vi, res)?;
                let r = daemon_series(opts, ctx, &lab, d, kind, &variants[vi].label, res);
                if let Err(e) = r {
                    interrupted = Some(e);
                    break;
                }
            }
            if let Some(n) = &noise {
                let errs = n.errors();
                if !errs.is_empty() {
                    res.not_measured.push(format!(
                        "noise stopped during {}: {}",
                        kind.title(),
                        errs.join("; ")
                    ));
                }
            }
            drop(noise);
            if let Some(e) = interrupted {
                return Err(e);
            }
        }
        if wants(opts, "false-switches") {
            for vi in 0..variants.len() {
                let d = running.switch(ctx, &lab, &variants, vi, res)?;
                let v = false_switches(ctx, &lab, d, &variants[vi].label)?;
                res.variants[vi].false_switches = Some(v);
            }
        }
        if wants(opts, "round-trip") {
            let d = running.switch(ctx, &lab, &variants, 0, res)?;
            round_trip_series(opts, ctx, &lab, d, res)?;
        }
        running.stop();
        // The main variant's figures where a single run has always put them.
        res.first_decision = res.variants[0].first_decision.clone();
        res.idle = res.variants[0].idle.clone();
        res.false_switches = res.variants[0].false_switches.clone();
        if wants(opts, "idle-breakdown") {
            res.idle_breakdown = idle_breakdown(ctx, &lab, bin)?;
        }
        lab.destroy()?;
    }

    if SOAK_SECTIONS.iter().any(|s| wants(opts, s)) {
        soak::run(opts, ctx, bin, &overrides, res)?;
    }

    if wants(opts, "suspicion") {
        suspicion_section(opts, ctx, bin, res)?;
    }

    if wants(opts, "kernel") {
        ctx.say("building a lab for the kernel's own fallback (no daemon)");
        let lab = Lab::build(&LabSpec::default())?;
        kernel_setup(&lab)?;
        comparator_series(opts, ctx, res, &lab, "kernel", &|f| kernel_ready(&lab, f))?;
        lab.destroy()?;
        res.not_measured.push(
            "kernel fallback for a dead gateway or a dead upstream: the kernel does not detect either (it keeps routing into the dead path); no figure".into(),
        );
    }

    if wants(opts, "frr") {
        if frr_dir().is_none() && opts.install_frr {
            install_frr(ctx)?;
        }
        match frr_dir() {
            None => {
                let msg = "FRR not installed (no zebra in /usr/lib/frr or PATH; `--install-frr` installs Debian's frr package): no FRR comparator";
                ctx.say(msg);
                res.not_measured.push(msg.into());
            }
            Some(bin) => {
                let version = frr_version(&bin).unwrap_or_else(|| "FRR".into());
                ctx.say(&format!(
                    "building a lab for FRR ({version}: zebra + staticd, static defaults at distance 10 via the primary and 20 via the secondary)"
                ));
                let lab = Lab::build(&LabSpec::default())?;
                let frr = Frr::start(ctx, &lab, &bin)?;
                let r = comparator_series(opts, ctx, res, &lab, "frr", &|f| {
                    Ok(links_up(&lab)? && route_via(&lab, f, Uplink::Primary)?)
                });
                frr.stop();
                r?;
                lab.destroy()?;
                res.comparators.push(json!({
                    "subject": "frr",
                    "version": version,
                    "daemons": "zebra + staticd, in the server namespace",
                    "staticd_config": frr_static_config(),
                }));
                res.not_measured.push(format!(
                    "FRR dead gateway (bfdd): {version}'s staticd cannot tie a static route to a BFD session (`ip route ... bfd` arrived in FRR 8.5, FRRouting/frr#12424; Debian 12 ships 8.4): no figure"
                ));
                res.not_measured.push(
                    "FRR dead upstream: static routes (and single-hop BFD to the gateway) cannot see a dead upstream behind a live gateway: no figure".into(),
                );
            }
        }
    }
    Ok(())
}

/// Passive suspicion (issue 14), off and on in the same run: a dead
/// upstream with no traffic, with a TCP flow, and withdrawn with ICMP
/// unreachables; then the steady probes per transit target, counted at
/// transit-a's namespace over `SUSPICION_PROBE_WINDOW` with a TCP flow.
fn suspicion_section(opts: &BenchOpts, ctx: &Ctx, bin: &Path, res: &mut Results) -> Result<()> {
    let base = format!(
        "[policy]\nfailback_after = \"{BENCH_FAILBACK_AFTER}\"\n[policy.damping]\nthreshold = {BENCH_DAMPING_THRESHOLD}\n"
    );
    ctx.say("building the lab for passive suspicion (off and on)");
    let lab = Lab::build(&LabSpec::default())?;
    let start = |on: bool| -> Result<Uplinkd> {
        let mut d = Uplinkd::start(&lab, bin, &format!("{base}[probe]\nsuspicion = {on}\n"))?;
        if let Err(e) = d.wait_for(
            ctx.cancel,
            "the first decision",
            Duration::from_secs(30),
            |s| s.decided,
        ) {
            d.stop();
            return Err(e);
        }
        Ok(d)
    };
    let label = |on: bool| if on { "suspicion on" } else { "suspicion off" };
    let mut run = || -> Result<()> {
        for kind in [
            Kind::UpstreamDead,
            Kind::UpstreamDeadTcp,
            Kind::UpstreamWithdrawn,
        ] {
            for on in [false, true] {
                let mut d = start(on)?;
                let r = daemon_series(opts, ctx, &lab, &mut d, kind, label(on), res);
                d.stop();
                r?;
            }
        }
        for on in [false, true] {
            let mut d = start(on)?;
            let r = (|| -> Result<Value> {
                baseline(ctx, &lab, &mut d)?;
                let flow = lab.tcp_flow(Family::V4)?;
                ctx.cancel.sleep(Duration::from_secs(2))?;
                let n = lab.count_transit_probes(0, SUSPICION_PROBE_WINDOW)?;
                drop(flow);
                let st = d.client().status()?;
                let per_s = n as f64 / SUSPICION_PROBE_WINDOW.as_secs_f64();
                ctx.say(&format!(
                    "{}: steady echo requests at transit-a (both families, both uplinks, a TCP flow running): {n} in {} s = {per_s:.2}/s; suspicion bursts {}",
                    label(on),
                    SUSPICION_PROBE_WINDOW.as_secs(),
                    st.uplinks[0].suspicion.bursts
                ));
                Ok(json!({
                    "subject": label(on),
                    "echo_requests": n,
                    "window_s": SUSPICION_PROBE_WINDOW.as_secs(),
                    "per_s": per_s,
                    "suspicion_bursts": st.uplinks[0].suspicion.bursts,
                    "suspicion_burst_probes": st.uplinks[0].suspicion.burst_probes,
                }))
            })();
            d.stop();
            res.suspicion_probes.push(r?);
        }
        Ok(())
    };
    let r = run();
    lab.destroy()?;
    r
}

/// How long the steady probes per transit target are counted.
const SUSPICION_PROBE_WINDOW: Duration = Duration::from_secs(10);

/// The daemon variant running on the lab: one at a time, since two would
/// fight over the routes.
#[derive(Default)]
struct Running {
    now: Option<(usize, Uplinkd)>,
}

impl Running {
    /// Variant `vi`, started (after stopping another) if it is not the one
    /// running. The first start of a variant measures its first decision.
    fn switch<'r>(
        &'r mut self,
        ctx: &Ctx,
        lab: &Lab,
        variants: &[Variant],
        vi: usize,
        res: &mut Results,
    ) -> Result<&'r mut Uplinkd> {
        if self.now.as_ref().is_some_and(|(i, _)| *i == vi) {
            return Ok(&mut self.now.as_mut().expect("running").1);
        }
        self.stop();
        let v = &variants[vi];
        if variants.len() > 1 {
            ctx.say(&format!(
                "starting variant {}: {}",
                v.label,
                v.uplinkd.display()
            ));
        }
        let mut d = Uplinkd::start(lab, &v.uplinkd, &v.overrides)?;
        let fresh = res.variants[vi].first_decision.is_none();
        let decided = d.wait_for(
            ctx.cancel,
            "the first decision",
            Duration::from_secs(30),
            |s| s.decided,
        );
        let s = match decided {
            Ok(s) => s,
            Err(e) => {
                d.stop();
                return Err(e);
            }
        };
        if fresh {
            let decided_ms = d.spawned.elapsed().as_secs_f64() * 1000.0;
            let first_event = d
                .events()
                .into_iter()
                .find(|e| e.kind() == "active_changed")
                .map(|e| secs_between(d.spawned_wall, e.time) * 1000.0);
            ctx.say(&format!(
                "{}: first decision: status decided after {decided_ms:.0} ms (polled every 10 ms), first active_changed at {:.0} ms",
                v.label,
                first_event.unwrap_or(f64::NAN)
            ));
            res.variants[vi].first_decision = Some(json!({
                "status_decided_ms": decided_ms,
                "first_active_changed_ms": first_event,
                "active": { "ipv4": active(&s, Family::V4), "ipv6": active(&s, Family::V6) },
                "note": if vi == 0 {
                    "from spawning `ip netns exec <server> uplinkd` (fresh lab, no route to adopt); status polled every 10 ms"
                } else {
                    "from spawning `ip netns exec <server> uplinkd`, adopting the routes the variant before it left; status polled every 10 ms"
                },
            }));
        }
        self.now = Some((vi, d));
        Ok(&mut self.now.as_mut().expect("just started").1)
    }

    fn stop(&mut self) {
        if let Some((_, d)) = self.now.take() {
            d.stop();
        }
    }
}

/// Rounds of the idle row when variants are compared. This machine is a
/// virtual machine whose host's load comes and goes: one window per
/// variant, one after the other, measured the load as much as the
/// daemons (the same binary moved by 0.3 points between runs). Each
/// variant's idle windows alternate with the others' (a fresh start each
/// time, `WINDOW` split between the rounds), and its figure is its median
/// round, so that a slow change of load falls on every variant alike.
const IDLE_ROUNDS: usize = 5;

/// The median round of one variant's idle rounds (by steered CPU; the
/// not-steered figure is the median of its own), with every round's
/// figures and the peak RSS over all of them.
fn median_round(rounds: Vec<Value>) -> Option<Value> {
    let cpu = |v: &Value| num_at(v, &["cpu_percent"]).unwrap_or(f64::NAN);
    let all: Vec<f64> = rounds.iter().map(cpu).collect();
    let plain: Vec<Value> = rounds.iter().map(|v| v["not_steered"].clone()).collect();
    let plain_all: Vec<f64> = plain.iter().map(cpu).collect();
    let hwm = rounds.iter().filter_map(|v| v["vm_hwm_kib"].as_u64()).max();
    let n = rounds.len();
    // The middle one by CPU (the lower of two for an even count).
    let middle = |mut vs: Vec<Value>| {
        vs.sort_by(|a, b| cpu(a).total_cmp(&cpu(b)));
        vs.into_iter().nth(n.checked_sub(1)? / 2)
    };
    let mut v = middle(rounds)?;
    v["not_steered"] = middle(plain)?;
    v["vm_hwm_kib"] = json!(hwm);
    v["rounds"] = json!(n);
    v["rounds_cpu_percent"] = json!(all);
    v["rounds_not_steered_cpu_percent"] = json!(plain_all);
    v["meets_target"] = json!(idle_meets_target(cpu(&v), hwm));
    Some(v)
}

/// The idle targets: at most 1 % of a core, peak RSS at most 16 MiB.
fn idle_meets_target(cpu_percent: f64, vm_hwm_kib: Option<u64>) -> bool {
    cpu_percent <= 1.0 && vm_hwm_kib.is_some_and(|k| k <= 16 * 1024)
}

/// The number at `path` in `v`.
fn num_at(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |x, k| x.get(k))?.as_f64()
}

/// Idle CPU and memory of the running daemon over `window`, steered and not.
fn idle_section(ctx: &Ctx, lab: &Lab, d: &Uplinkd, label: &str, window: Duration) -> Result<Value> {
    ctx.say(&format!(
        "{label}: idle: {} s with default probes",
        window.as_secs()
    ));
    ctx.cancel.sleep(Duration::from_secs(2))?;
    let (m, plain) = measure_idle_steered(ctx, lab, d, window)?;
    ctx.say(&format!(
        "{label}: idle: CPU {:.2} % of one core ({:.0} wake-ups/s, {:.1} us each; {}), peak RSS (VmHWM) {} KiB; {}",
        m.cpu_percent,
        m.wakeups_per_s,
        m.us_per_wakeup,
        threads_line(&m.threads),
        m.vm_hwm_kib.unwrap_or(0),
        m.placement
    ));
    ctx.say(&format!(
        "{label}: idle, not steered: CPU {:.2} % ({:.0} wake-ups/s; {})",
        plain.cpu_percent,
        plain.wakeups_per_s,
        threads_line(&plain.threads)
    ));
    let mut v = serde_json::to_value(&m).unwrap_or_default();
    v["target_cpu_percent"] = json!(1.0);
    v["target_rss_mib"] = json!(16);
    v["meets_target"] = json!(idle_meets_target(m.cpu_percent, m.vm_hwm_kib));
    v["not_steered"] = serde_json::to_value(&plain).unwrap_or_default();
    Ok(v)
}

/// `opts.trials` trials of `kind` per family with the running daemon, as
/// the series of `label`. The trials done count also after an interruption.
fn daemon_series(
    opts: &BenchOpts,
    ctx: &Ctx,
    lab: &Lab,
    d: &mut Uplinkd,
    kind: Kind,
    label: &str,
    res: &mut Results,
) -> Result<()> {
    let mut series: Vec<Series> = Family::ALL
        .iter()
        .map(|f| {
            let mut s = Series::new(label, kind, *f);
            s.daemon = true;
            s
        })
        .collect();
    let mut outcome = Ok(());
    'trials: for i in 0..opts.trials {
        for (k, f) in Family::ALL.iter().enumerate() {
            if let Err(e) = ctx.cancel.check() {
                outcome = Err(e);
                break 'trials;
            }
            series[k].foreign_namespaces_max =
                series[k].foreign_namespaces_max.max(foreign_namespaces());
            match uplinkd_trial(ctx, lab, d, kind, *f) {
                Ok(t) => {
                    ctx.say(&format!(
                        "{label} {} {f} trial {}/{}: outage {:.1} ms (raw {:.1}), decision {}",
                        kind.title(),
                        i + 1,
                        opts.trials,
                        t.network_ms,
                        t.raw_ms,
                        t.decision_ms.map_or("?".into(), |x| format!("{x:.1} ms"))
                    ));
                    series[k].trials.push(t);
                }
                Err(e) => {
                    if ctx.cancel.is_cancelled() {
                        outcome = Err(e);
                        break 'trials;
                    }
                    ctx.say(&format!(
                        "{label} {} {f} trial {} FAILED: {e}",
                        kind.title(),
                        i + 1
                    ));
                    series[k].failed.push(e.to_string());
                    if let Err(e) = d.check_alive() {
                        outcome = Err(e);
                        break 'trials;
                    }
                    if series[k].failed.len() > opts.trials / 2 + 2 {
                        ctx.say("too many failures: skipping the rest of this kind");
                        break 'trials;
                    }
                }
            }
        }
    }
    for mut s in series {
        s.finish();
        res.series.push(s);
    }
    outcome
}

/// One round-trip trial: the request/response stream and the TCP
/// connection through one failure.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTripTrial {
    /// Longest run of requests that never reached the sink (one way), ms.
    pub request_outage_ms: f64,
    /// Longest run of requests whose reply never came back, ms.
    pub round_trip_outage_ms: f64,
    /// The TCP connection's longest time without delivery, ms.
    pub tcp_stall_ms: f64,
    /// Slots the request sender skipped (late: a loaded host), counted lost.
    pub skipped: u64,
    pub sent: u64,
    pub decision_ms: Option<f64>,
}

/// All round-trip trials of one (failure, family).
#[derive(Debug, Clone, Serialize)]
pub struct RoundTripSeries {
    pub kind: Kind,
    pub title: String,
    pub family: String,
    pub trials: Vec<RoundTripTrial>,
    pub failed: Vec<String>,
    pub request_ms: Option<Summary>,
    pub round_trip_ms: Option<Summary>,
    pub tcp_stall_ms: Option<Summary>,
}

/// The failures the round trip is measured for.
const ROUND_TRIP_KINDS: [Kind; 5] = [
    Kind::CarrierQuiet,
    Kind::GatewayDead,
    Kind::UpstreamDead,
    Kind::Failback,
    Kind::Drain,
];

fn round_trip_series(
    opts: &BenchOpts,
    ctx: &Ctx,
    lab: &Lab,
    d: &mut Uplinkd,
    res: &mut Results,
) -> Result<()> {
    for kind in ROUND_TRIP_KINDS {
        for f in Family::ALL {
            let mut s = RoundTripSeries {
                kind,
                title: kind.title().to_string(),
                family: f.name().to_string(),
                trials: Vec::new(),
                failed: Vec::new(),
                request_ms: None,
                round_trip_ms: None,
                tcp_stall_ms: None,
            };
            for i in 0..opts.trials {
                ctx.cancel.check()?;
                match round_trip_trial(ctx, lab, d, kind, f) {
                    Ok(t) => {
                        ctx.say(&format!(
                            "round trip, {} {f} trial {}/{}: request {:.1} ms, round trip {:.1} ms, TCP stall {:.1} ms",
                            kind.title(),
                            i + 1,
                            opts.trials,
                            t.request_outage_ms,
                            t.round_trip_outage_ms,
                            t.tcp_stall_ms
                        ));
                        s.trials.push(t);
                    }
                    Err(e) => {
                        if ctx.cancel.is_cancelled() {
                            return Err(e);
                        }
                        ctx.say(&format!(
                            "round trip, {} {f} trial {} FAILED: {e}",
                            kind.title(),
                            i + 1
                        ));
                        s.failed.push(e.to_string());
                        d.check_alive()?;
                    }
                }
            }
            let col = |g: fn(&RoundTripTrial) -> f64| {
                summarize(&s.trials.iter().map(g).collect::<Vec<_>>())
            };
            s.request_ms = col(|t| t.request_outage_ms);
            s.round_trip_ms = col(|t| t.round_trip_outage_ms);
            s.tcp_stall_ms = col(|t| t.tcp_stall_ms);
            res.round_trip.push(s);
        }
    }
    Ok(())
}

/// One round-trip trial: like [`uplinkd_trial`], with the echo stream and a
/// TCP connection (both sourced as the server's routes say: the service
/// address) instead of the one-way stream.
fn round_trip_trial(
    ctx: &Ctx,
    lab: &Lab,
    d: &mut Uplinkd,
    kind: Kind,
    f: Family,
) -> Result<RoundTripTrial> {
    baseline(ctx, lab, d)?;
    if kind == Kind::CarrierQuiet {
        ctx.cancel.sleep(LINKWATCH_QUIET)?;
    }
    if kind == Kind::Failback {
        lab.carrier_down(Uplink::Primary)?;
        d.wait_for(
            ctx.cancel,
            "on the secondary",
            Duration::from_secs(15),
            |s| on(s, Uplink::Secondary),
        )?;
        lab.carrier_up(Uplink::Primary)?;
        d.wait_for(
            ctx.cancel,
            "primary healthy again",
            Duration::from_secs(30),
            |s| state(s, Uplink::Primary) == Some(UplinkState::Healthy),
        )?;
    }
    let to = match kind {
        Kind::Failback => Uplink::Primary,
        _ => Uplink::Secondary,
    };
    let echo = crate::EchoStream::start(
        lab,
        &crate::EchoSpec {
            family: f,
            rate: RATE,
            ..crate::EchoSpec::default()
        },
    )?;
    let tcp = crate::TcpFlow::start(
        lab,
        &crate::TcpSpec {
            family: f,
            ..crate::TcpSpec::default()
        },
    )?;
    let outcome = (|| -> Result<SystemTime> {
        ctx.cancel.sleep(Duration::from_millis(300))?;
        tcp.reset_stall();
        let t = SystemTime::now();
        inject(lab, d, kind)?;
        let bound = match kind {
            Kind::Failback => Duration::from_secs(30),
            _ => Duration::from_secs(15),
        };
        d.wait_for(
            ctx.cancel,
            &format!("{f} on the {}", to.name()),
            bound,
            |s| active(s, f) == Some(to.name()),
        )?;
        Ok(t)
    })();
    let result = match outcome {
        Ok(t) => {
            // Replies and TCP bytes flow again (bounded), then a margin.
            let replies = echo.replies_so_far();
            let bytes = tcp.delivered();
            wait_until(
                ctx.cancel,
                "replies and TCP delivery again",
                Duration::from_secs(10),
                Duration::from_millis(10),
                || Ok(echo.replies_so_far() > replies + 100 && tcp.delivered() > bytes + 4096),
            )?;
            ctx.cancel.sleep(Duration::from_millis(300))?;
            let stall = tcp.longest_stall();
            tcp.stop();
            let r = echo.stop();
            let decision = d
                .wait_switch_event(f, to.name(), t, Duration::from_secs(2))
                .map(|e| secs_between(t, e.time) * 1000.0);
            Ok(RoundTripTrial {
                request_outage_ms: r.request_outage_ms,
                round_trip_outage_ms: r.round_trip_outage_ms,
                tcp_stall_ms: ms(stall),
                skipped: r.skipped,
                sent: r.sent,
                decision_ms: decision,
            })
        }
        Err(e) => Err(e),
    };
    let undo = undo(lab, d, kind);
    let t = result?;
    undo?;
    Ok(t)
}

/// The round-trip table (empty without the `round-trip` section).
fn round_trip_table(res: &Results) -> String {
    if res.round_trip.is_empty() {
        return String::new();
    }
    let p = |s: &Option<Summary>| s.map_or("-".into(), |s| format!("{:.1} / {:.1}", s.p50, s.max));
    let mut t = String::new();
    t.push_str(&format!(
        "Both directions, with the service address as source (p50 / max ms; request/response at {RATE}/s echoed by the sink; TCP: longest delivery stall)\n\n"
    ));
    t.push_str(&format!(
        "| {:<30} | {:<4} | {:>2} | {:>15} | {:>15} | {:>15} |\n|---|---|---|---|---|---|\n",
        "failure", "fam", "n", "one way (req.)", "round trip", "TCP stall"
    ));
    for s in &res.round_trip {
        let fam = if s.family == "ipv4" { "v4" } else { "v6" };
        t.push_str(&format!(
            "| {:<30} | {:<4} | {:>2} | {:>15} | {:>15} | {:>15} |{}\n",
            s.title,
            fam,
            s.trials.len(),
            p(&s.request_ms),
            p(&s.round_trip_ms),
            p(&s.tcp_stall_ms),
            if s.failed.is_empty() {
                String::new()
            } else {
                format!(" {} FAILED", s.failed.len())
            }
        ));
    }
    t
}

/// Switches made by the running daemon during `WINDOW` of 10 % random loss
/// on every probe through the primary.
fn false_switches(ctx: &Ctx, lab: &Lab, d: &mut Uplinkd, label: &str) -> Result<Value> {
    baseline(ctx, lab, d)?;
    ctx.say(&format!(
        "{label}: false switches: 10 % random loss on every probe through the primary for {} s",
        WINDOW.as_secs()
    ));
    let t0 = SystemTime::now();
    lab.random_loss(Uplink::Primary, 10.0)?;
    let slept = ctx.cancel.sleep(WINDOW);
    let s = d.status();
    let cleared = lab.clear_loss(Uplink::Primary);
    slept?;
    cleared?;
    let t1 = SystemTime::now();
    let ev = d.events();
    let in_window = |e: &&demo::Event| e.time >= t0 && e.time <= t1;
    let switches = ev
        .iter()
        .filter(in_window)
        .filter(|e| e.kind() == "active_changed")
        .count();
    let health = ev
        .iter()
        .filter(in_window)
        .filter(|e| e.kind() == "uplink_health")
        .count();
    let gw_loss = s
        .as_ref()
        .ok()
        .and_then(|s| s.uplinks[0].gateway.ipv4.as_ref().map(|g| g.loss));
    ctx.say(&format!(
        "{label}: false switches: {switches} switches, {health} health changes (gateway v4 loss seen {:.1} %)",
        gw_loss.unwrap_or(0.0) * 100.0
    ));
    Ok(json!({
        "window_s": WINDOW.as_secs(),
        "loss_percent": 10.0,
        "switches": switches,
        "uplink_health_changes": health,
        "gateway_v4_loss_seen": gw_loss,
        "target": 0,
        "meets_target": switches == 0,
    }))
}

/// Carrier-loss trials (quiet, then busy host) of a comparator that runs
/// by itself in `lab`; `ready(f)` says when a trial may start.
fn comparator_series(
    opts: &BenchOpts,
    ctx: &Ctx,
    res: &mut Results,
    lab: &Lab,
    subject: &str,
    ready: &dyn Fn(Family) -> Result<bool>,
) -> Result<()> {
    for kind in [Kind::CarrierQuiet, Kind::CarrierBusy] {
        let noise = if kind == Kind::CarrierBusy {
            Some(lab.noise(NOISE_PERIOD)?)
        } else {
            None
        };
        let mut series: Vec<Series> = Family::ALL
            .iter()
            .map(|f| Series::new(subject, kind, *f))
            .collect();
        let mut interrupted = None;
        'trials: for i in 0..opts.trials {
            for (k, f) in Family::ALL.iter().enumerate() {
                if let Err(e) = ctx.cancel.check() {
                    interrupted = Some(e);
                    break 'trials;
                }
                series[k].foreign_namespaces_max =
                    series[k].foreign_namespaces_max.max(foreign_namespaces());
                let f = *f;
                match passive_trial(ctx, lab, kind, f, &|| ready(f)) {
                    Ok(t) => {
                        ctx.say(&format!(
                            "{subject} {} {f} trial {}/{}: outage {:.1} ms (raw {:.1})",
                            kind.title(),
                            i + 1,
                            opts.trials,
                            t.network_ms,
                            t.raw_ms
                        ));
                        series[k].trials.push(t);
                    }
                    Err(e) => {
                        if ctx.cancel.is_cancelled() {
                            interrupted = Some(e);
                            break 'trials;
                        }
                        ctx.say(&format!(
                            "{subject} {} {f} trial {} FAILED: {e}",
                            kind.title(),
                            i + 1
                        ));
                        series[k].failed.push(e.to_string());
                        if series[k].failed.len() > opts.trials / 2 + 2 {
                            ctx.say("too many failures: skipping the rest of this kind");
                            break 'trials;
                        }
                    }
                }
            }
        }
        if let Some(n) = &noise {
            let errs = n.errors();
            if !errs.is_empty() {
                res.not_measured.push(format!(
                    "noise stopped during {subject} {}: {}",
                    kind.title(),
                    errs.join("; ")
                ));
            }
        }
        drop(noise);
        // Also after an interruption: the trials done so far count.
        for mut s in series {
            s.finish();
            res.series.push(s);
        }
        if let Some(e) = interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn fmt_summary(s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "{:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            s.min, s.p50, s.p99, s.max
        ),
        None => format!("{:>8} {:>8} {:>8} {:>8}", "-", "-", "-", "-"),
    }
}

/// The variants side by side (a Markdown table), when a run measured more
/// than one: outage p50 / p99 per failure and family, idle CPU and memory,
/// false switches, first decision.
pub fn comparison(res: &Results) -> Option<String> {
    if res.variants.len() < 2 {
        return None;
    }
    let labels: Vec<&str> = res
        .variants
        .iter()
        .map(|v| v.variant.label.as_str())
        .collect();
    let mut m = String::new();
    m.push_str(&format!("| figure | {} |\n", labels.join(" | ")));
    m.push_str(&format!("|---|{}\n", "---|".repeat(labels.len())));
    let mut kinds: Vec<Kind> = Vec::new();
    for s in res.series.iter().filter(|s| s.daemon) {
        if !kinds.contains(&s.kind) {
            kinds.push(s.kind);
        }
    }
    for kind in kinds {
        for fam in ["ipv4", "ipv6"] {
            let cells: Vec<String> = labels
                .iter()
                .map(|l| {
                    res.series
                        .iter()
                        .find(|s| s.daemon && s.subject == *l && s.kind == kind && s.family == fam)
                        .and_then(|s| {
                            s.network_ms.map(|n| {
                                let failed = if s.failed.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({} failed)", s.failed.len())
                                };
                                format!("{:.1} / {:.1} (n={}){failed}", n.p50, n.p99, n.n)
                            })
                        })
                        .unwrap_or_else(|| "-".into())
                })
                .collect();
            m.push_str(&format!(
                "| {} {fam}, outage p50 / p99 ms | {} |\n",
                kind.title(),
                cells.join(" | ")
            ));
        }
    }
    let row = |name: &str, f: &dyn Fn(&VariantResult) -> Option<String>| {
        let cells: Vec<String> = res
            .variants
            .iter()
            .map(|v| f(v).unwrap_or_else(|| "-".into()))
            .collect();
        if cells.iter().all(|c| c == "-") {
            String::new()
        } else {
            format!("| {name} | {} |\n", cells.join(" | "))
        }
    };
    let num = |v: &Option<Value>, path: &[&str]| num_at(v.as_ref()?, path);
    m.push_str(&row("idle CPU, % of a core (steered)", &|v| {
        num(&v.idle, &["cpu_percent"]).map(|x| format!("{x:.2}"))
    }));
    m.push_str(&row("idle CPU, % of a core (not steered)", &|v| {
        num(&v.idle, &["not_steered", "cpu_percent"]).map(|x| format!("{x:.2}"))
    }));
    m.push_str(&row("idle wake-ups/s", &|v| {
        num(&v.idle, &["wakeups_per_s"]).map(|x| format!("{x:.0}"))
    }));
    m.push_str(&row("peak RSS, KiB", &|v| {
        num(&v.idle, &["vm_hwm_kib"]).map(|x| format!("{x:.0}"))
    }));
    m.push_str(&row("false switches (10 % probe loss)", &|v| {
        num(&v.false_switches, &["switches"]).map(|x| format!("{x:.0}"))
    }));
    m.push_str(&row("start to first decision, ms", &|v| {
        num(&v.first_decision, &["status_decided_ms"]).map(|x| format!("{x:.0}"))
    }));
    for v in &res.variants {
        m.push_str(&format!(
            "\n- {}: `{}`",
            v.variant.label,
            v.variant.uplinkd.display()
        ));
    }
    m.push('\n');
    Some(m)
}

/// The table, to stdout.
pub fn print_table(res: &Results) {
    let rt = round_trip_table(res);
    if !rt.is_empty() {
        println!();
        print!("{rt}");
    }
    println!();
    println!(
        "Outage in ms (min / p50 / p99 / max; {} datagrams/s; network gaps, and raw gaps where the sender was also descheduled)",
        RATE
    );
    println!(
        "  {:<8} {:<30} {:<5} {:>3} {:>8} {:>8} {:>8} {:>8}   {:<8}  raw p99/max   decision p50/p99",
        "subject", "failure", "fam", "n", "min", "p50", "p99", "max", "target"
    );
    for s in &res.series {
        let fam = if s.family == "ipv4" { "v4" } else { "v6" };
        let target = match (s.target_p99_ms, s.meets_target) {
            (Some(t), Some(ok)) => format!("{}{t:.0}{}", "<=", if ok { " ok" } else { " MISS" }),
            (Some(t), None) => format!("<={t:.0} ?"),
            _ => String::new(),
        };
        let raw = match (&s.raw_ms, &s.network_ms) {
            (Some(r), Some(n)) if (r.p99 - n.p99).abs() > 0.05 || (r.max - n.max).abs() > 0.05 => {
                format!("{:.1}/{:.1}", r.p99, r.max)
            }
            (Some(_), _) => "same".into(),
            _ => "-".into(),
        };
        let dec = s
            .decision_ms
            .map(|d| format!("{:.1}/{:.1}", d.p50, d.p99))
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<8} {:<30} {:<5} {:>3} {}   {:<8}  {:<12}  {}{}",
            s.subject,
            s.title,
            fam,
            s.trials.len(),
            fmt_summary(&s.network_ms),
            target,
            raw,
            dec,
            if s.failed.is_empty() {
                String::new()
            } else {
                format!("  ({} failed)", s.failed.len())
            }
        );
    }
    if let Some(fs) = &res.false_switches {
        println!(
            "  false switches during {} s of 10 % random probe loss through the primary: {} (target 0)",
            fs["window_s"], fs["switches"]
        );
    }
    if let Some(i) = &res.idle {
        println!(
            "  idle ({}, default probes): CPU {:.2} % of one core (target <= 1 %; {:.0} wake-ups/s, {:.1} us each; {}), peak RSS {} KiB (target <= 16 MiB); {}",
            idle_windows(i),
            i["cpu_percent"].as_f64().unwrap_or(f64::NAN),
            i["wakeups_per_s"].as_f64().unwrap_or(f64::NAN),
            i["us_per_wakeup"].as_f64().unwrap_or(f64::NAN),
            threads_of(i),
            i["vm_hwm_kib"],
            i["placement"].as_str().unwrap_or("?")
        );
        let p = &i["not_steered"];
        println!(
            "  idle, not steered (the lab routers' echo processing partly in the daemon's context): CPU {:.2} % ({:.0} wake-ups/s; {})",
            p["cpu_percent"].as_f64().unwrap_or(f64::NAN),
            p["wakeups_per_s"].as_f64().unwrap_or(f64::NAN),
            threads_of(p)
        );
    }
    for b in &res.idle_breakdown {
        println!(
            "    {}: {:.2} % ({:.0} wake-ups/s, {:.1} us each)",
            b["config"].as_str().unwrap_or("?"),
            b["cpu_percent"].as_f64().unwrap_or(f64::NAN),
            b["wakeups_per_s"].as_f64().unwrap_or(f64::NAN),
            b["us_per_wakeup"].as_f64().unwrap_or(f64::NAN),
        );
    }
    if let Some(fd) = &res.first_decision {
        println!(
            "  start to first decision: {:.0} ms (status decided), first active_changed at {:.0} ms",
            fd["status_decided_ms"].as_f64().unwrap_or(f64::NAN),
            fd["first_active_changed_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some(c) = comparison(res) {
        println!("\nSide by side, same run:\n{c}");
    }
    let soak = soak::table(&res.soak);
    if !soak.is_empty() {
        println!("\nSoak and load, variants side by side (each in its own lab, at the same time):\n{soak}");
    }
    for n in &res.not_measured {
        println!("  not measured: {n}");
    }
    for t in &res.targets_missed {
        println!("  TARGET MISSED: {t}");
    }
}

/// Every target missed, with what limits it (from what the run measured).
fn targets_missed(res: &Results) -> Vec<String> {
    let load = |s: &Series| s.loadavg.first().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for s in res.series.iter().filter(|s| s.meets_target == Some(false)) {
        let why = match s.kind {
            _ if !s.failed.is_empty() => format!("{} trial(s) failed: {}", s.failed.len(), s.failed.join("; ")),
            Kind::CarrierQuiet | Kind::CarrierBusy => "detection is bounded by the 4 ms carrier tick (carrier_interval); a longer gap means the daemon (or the stream's receiver) was not scheduled in time on this loaded machine (see load)".into(),
            Kind::GatewayDead => "detection is gateway_dead_after (60 ms) plus at least gateway_min_misses (5) unanswered probes, plus the tick".into(),
            Kind::ForwardingDead => "with gateway_probe = echo: as a dead gateway (the echoes stop); with icmp: only the transit quorum sees it (a transit miss, then the burst)".into(),
            Kind::ForwardingDeadIdle => "with gateway_probe = echo: the stream at its idle rate (echo_idle_interval, 48 ms) until the counters see the traffic (read every 16 ms), then as a dead gateway; with icmp: only the transit quorum sees it".into(),
            Kind::UpstreamDead => "detection is a transit miss (up to transit_interval = 1 s after the cut), then a burst of transit_fall (4) probes at transit_fast_interval (50 ms) to confirm".into(),
            Kind::UpstreamDeadTcp => "detection is a TCP stall (suspicion_window, 40 ms, after the last segment received, read every 16 ms), then a burst of transit_fall (4) probes 10 ms apart with timeouts of 4 x srtt (at least 10 ms); with suspicion off, as the dead upstream".into(),
            Kind::UpstreamWithdrawn => "detection is the router's first unreachable (to a probe or our traffic), then the burst as for a TCP stall; with suspicion off, as the dead upstream".into(),
            Kind::Failback | Kind::Drain => "make-before-break should lose nothing: look at the trials (raw vs network gap) for a sender or receiver descheduled".into(),
        };
        out.push(format!(
            "{} {} ({}): p99 {:.1} ms > target {:.0} ms; load average at start {}; {why}",
            s.subject,
            s.title,
            s.family,
            s.network_ms.map_or(f64::NAN, |x| x.p99),
            s.target_p99_ms.unwrap_or(f64::NAN),
            load(s)
        ));
    }
    if let Some(i) = &res.idle {
        let cpu = i["cpu_percent"].as_f64().unwrap_or(f64::NAN);
        if cpu > 1.0 {
            let mut why = format!(
                "idle CPU {cpu:.2} % of one core > 1 %: {:.0} wake-ups/s at {:.1} us each ({}); on this virtual machine a wake-up costs 15-20 us",
                i["wakeups_per_s"].as_f64().unwrap_or(f64::NAN),
                i["us_per_wakeup"].as_f64().unwrap_or(f64::NAN),
                threads_of(i),
            );
            if !res.idle_breakdown.is_empty() {
                why.push_str("; breakdown: ");
                why.push_str(
                    &res.idle_breakdown
                        .iter()
                        .map(|b| {
                            format!(
                                "{} {:.2} %",
                                b["config"].as_str().unwrap_or("?"),
                                b["cpu_percent"].as_f64().unwrap_or(f64::NAN)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            why.push_str(&format!(
                "; load average at start {}",
                res.machine["load_average_start"].as_str().unwrap_or("?")
            ));
            out.push(why);
        }
        if i["vm_hwm_kib"].as_u64().is_some_and(|k| k > 16 * 1024) {
            out.push(format!("peak RSS {} KiB > 16 MiB", i["vm_hwm_kib"]));
        }
    }
    out.extend(soak::missed(&res.soak));
    if let Some(fs) = &res.false_switches {
        if fs["switches"].as_u64().unwrap_or(0) > 0 {
            out.push(format!(
                "{} false switch(es) during {} s of 10 % probe loss (target 0)",
                fs["switches"], fs["window_s"]
            ));
        }
    }
    out
}

/// The results as a Markdown document (what bench/RESULTS.md is).
pub fn markdown(res: &Results) -> String {
    let mut m = String::new();
    let mach = &res.machine;
    let st = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    };
    m.push_str("# uplinkd failover benchmark\n\n");
    m.push_str("Produced by `uplink-lab bench` (lab/src/bench.rs). Outage as a user feels it: a paced UDP stream of 10,000 datagrams/s from the lab's server to its sink, IPv4 and IPv6 in separate trials; the outage of a trial is the longest run of missing sequence numbers times the interval (0.1 ms). Percentiles are nearest rank over the trials.\n\n");
    if let Some(c) = comparison(res) {
        m.push_str("## Side by side (same run)\n\n");
        m.push_str(&c);
        m.push('\n');
    }
    m.push_str("## Machine\n\n");
    for (k, label) in [
        ("date", "date"),
        ("nproc", "CPUs (nproc)"),
        ("cpu", "CPU model"),
        ("memory_mib", "memory (MiB)"),
        ("kernel", "kernel"),
        ("arch", "architecture"),
        ("os", "OS"),
        ("virtualization", "virtualization"),
        ("load_average_start", "load average at start (1, 5, 15 min)"),
        ("load_average_end", "load average at end"),
        (
            "other_network_namespaces_at_start",
            "network namespaces of other work at start",
        ),
        ("uplinkd_version", "uplinkd version"),
    ] {
        m.push_str(&format!("- {label}: {}\n", st(&mach[k])));
    }
    m.push_str(&format!(
        "- trials per series: {}; whole run: {:.0} s\n\n",
        st(&res.method["trials_per_series"]),
        res.duration_s
    ));
    m.push_str("## Method\n\n");
    if let Some(o) = res.method.as_object() {
        for (k, v) in o {
            m.push_str(&format!("- {k}: {}\n", st(v)));
        }
    }
    m.push_str("- trial: wait until the daemon is on the primary with both uplinks healthy and the veth ends up; start the stream; 300 ms later inject the failure; wait for the switch, then until the stream flows again and 300 ms more; undo. Carrier trials wait a further 1 s first (the kernel's linkwatch runs at most once a second), busy-host trials a random 0-1 s more.\n");
    m.push_str("- comparators run on the same topology, without uplinkd: the kernel's own fallback (default routes at metric 10 via the primary and 11 via the secondary, `ignore_routes_with_linkdown=1`) and FRR (zebra + staticd, static defaults at distance 10 and 20). While a comparator's outage lasts nothing queries the server's links (an `ip` call would make the kernel apply a delayed link change early).\n\n");
    m.push_str("## Outage (ms)\n\n");
    m.push_str("`network`: gaps made only of slots the sender skipped while descheduled are excluded (a sender blocked in `sendto` counts); `raw`: any gap. `decision`: from the injecting command to the daemon's `active_changed` event.\n\n");
    m.push_str(&series_table(res));
    m.push_str("\n## Other figures\n\n");
    if let Some(fs) = &res.false_switches {
        m.push_str(&format!(
            "- false switches during {} s of 10 % random loss on every echo request through the primary: **{}** (target 0); uplink health changes: {}; gateway v4 loss seen by the daemon: {}\n",
            st(&fs["window_s"]),
            st(&fs["switches"]),
            st(&fs["uplink_health_changes"]),
            fs["gateway_v4_loss_seen"].as_f64().map_or("?".into(), |x| format!("{:.1} %", x * 100.0))
        ));
    }
    if let Some(i) = &res.idle {
        m.push_str(&format!(
            "- idle, {}, default probes: CPU **{:.2} %** of one core (target <= 1 %; /proc/PID/task/*/schedstat; utime+stime says {:.2} %), {:.0} wake-ups/s at {:.1} us each ({}); peak RSS (VmHWM) **{} KiB** (target <= 16 MiB). Placement: {}\n",
            idle_windows(i),
            i["cpu_percent"].as_f64().unwrap_or(f64::NAN),
            i["cpu_percent_utime_stime"].as_f64().unwrap_or(f64::NAN),
            i["wakeups_per_s"].as_f64().unwrap_or(f64::NAN),
            i["us_per_wakeup"].as_f64().unwrap_or(f64::NAN),
            threads_of(i),
            st(&i["vm_hwm_kib"]),
            st(&i["placement"])
        ));
        let p = &i["not_steered"];
        m.push_str(&format!(
            "- idle, the same, not steered (the lab routers' echo replies partly made in the daemon's context, as veth does): CPU {:.2} %, {:.0} wake-ups/s ({})\n",
            p["cpu_percent"].as_f64().unwrap_or(f64::NAN),
            p["wakeups_per_s"].as_f64().unwrap_or(f64::NAN),
            threads_of(p)
        ));
    }
    for b in &res.idle_breakdown {
        m.push_str(&format!(
            "  - {}: {:.2} % ({:.0} wake-ups/s, {:.1} us each; {:.0} s)\n",
            st(&b["config"]),
            b["cpu_percent"].as_f64().unwrap_or(f64::NAN),
            b["wakeups_per_s"].as_f64().unwrap_or(f64::NAN),
            b["us_per_wakeup"].as_f64().unwrap_or(f64::NAN),
            b["window_s"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    if let Some(fd) = &res.first_decision {
        m.push_str(&format!(
            "- start to first decision: {:.0} ms (status `decided`, polled every 10 ms); first `active_changed` event at {:.0} ms\n",
            fd["status_decided_ms"].as_f64().unwrap_or(f64::NAN),
            fd["first_active_changed_ms"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    if !res.comparators.is_empty() {
        m.push_str("\n## Comparators\n\n");
        for c in &res.comparators {
            m.push_str(&format!(
                "- {} ({}): {}\n\n```\n{}```\n",
                st(&c["subject"]),
                st(&c["version"]),
                st(&c["daemons"]),
                c["staticd_config"].as_str().unwrap_or("")
            ));
        }
    }
    m.push_str("\n## Targets missed\n\n");
    if res.targets_missed.is_empty() {
        m.push_str("None in this run.\n");
    }
    for t in &res.targets_missed {
        m.push_str(&format!("- {t}\n"));
    }
    let soak = soak::table(&res.soak);
    if !soak.is_empty() {
        m.push_str("\n## Soak and load (variants side by side)\n\nEvery variant in a lab of its own, all at the same time (lab/src/bench/soak.rs).\n\n");
        m.push_str(&soak);
    }
    let rt = round_trip_table(res);
    if !rt.is_empty() {
        m.push_str("\n## Both directions\n\n");
        m.push_str(&rt);
    }
    if !res.not_measured.is_empty() {
        m.push_str("\n## Not measured\n\n");
        for n in &res.not_measured {
            m.push_str(&format!("- {n}\n"));
        }
    }
    m
}

/// The outage table.
fn series_table(res: &Results) -> String {
    let mut m = String::new();
    m.push_str("| subject | failure | family | n | min | p50 | p99 | max | target (p99) | raw p99 / max | decision p50 / p99 |\n");
    m.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in &res.series {
        let (min, p50, p99, max) = s
            .network_ms
            .map(|x| {
                (
                    format!("{:.1}", x.min),
                    format!("{:.1}", x.p50),
                    format!("{:.1}", x.p99),
                    format!("{:.1}", x.max),
                )
            })
            .unwrap_or_default();
        let target = match (s.target_p99_ms, s.meets_target) {
            (Some(t), Some(true)) => format!("<= {t:.0}: met"),
            (Some(t), Some(false)) => format!("<= {t:.0}: **missed**"),
            _ => "-".into(),
        };
        let raw = s
            .raw_ms
            .map(|r| format!("{:.1} / {:.1}", r.p99, r.max))
            .unwrap_or_default();
        let dec = s
            .decision_ms
            .map(|d| format!("{:.1} / {:.1}", d.p50, d.p99))
            .unwrap_or_else(|| "-".into());
        m.push_str(&format!(
            "| {} | {} | {} | {}{} | {min} | {p50} | {p99} | {max} | {target} | {raw} | {dec} |\n",
            s.subject,
            s.title,
            s.family,
            s.trials.len(),
            if s.failed.is_empty() {
                String::new()
            } else {
                format!(" ({} failed)", s.failed.len())
            },
        ));
    }
    m
}

/// Breaks the primary the way `kind` says (the trials' fault).
fn inject(lab: &Lab, d: &Uplinkd, kind: Kind) -> Result<()> {
    match kind {
        Kind::CarrierQuiet | Kind::CarrierBusy => lab.carrier_down(Uplink::Primary)?,
        Kind::GatewayDead => lab.gateway_dead(Uplink::Primary)?,
        Kind::ForwardingDead | Kind::ForwardingDeadIdle => lab.forwarding_dead(Uplink::Primary)?,
        Kind::UpstreamDead | Kind::UpstreamDeadTcp => lab.upstream_dead(Uplink::Primary)?,
        Kind::UpstreamWithdrawn => lab.upstream_withdrawn(Uplink::Primary)?,
        Kind::Drain => d.client().drain(Uplink::Primary.name())?,
        Kind::Failback => {}
    }
    Ok(())
}

/// Undoes [`inject`] (also after a failed trial).
fn undo(lab: &Lab, d: &Uplinkd, kind: Kind) -> Result<()> {
    match kind {
        Kind::CarrierQuiet | Kind::CarrierBusy => lab.carrier_up(Uplink::Primary),
        Kind::GatewayDead => lab.gateway_alive(Uplink::Primary),
        Kind::ForwardingDead | Kind::ForwardingDeadIdle => lab.forwarding_alive(Uplink::Primary),
        Kind::UpstreamDead | Kind::UpstreamDeadTcp => lab.upstream_alive(Uplink::Primary),
        Kind::UpstreamWithdrawn => lab.upstream_restored(Uplink::Primary),
        Kind::Drain => d
            .client()
            .undrain(Uplink::Primary.name())
            .map_err(LabError::from),
        Kind::Failback => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[policy]\nfailback_after = \"5s\"\n";

    #[test]
    fn the_idle_figure_is_the_median_round() {
        let round = |cpu: f64, plain: f64, hwm: u64| {
            json!({"cpu_percent": cpu, "window_s": 12.0, "vm_hwm_kib": hwm,
                   "not_steered": {"cpu_percent": plain}})
        };
        let v = median_round(vec![
            round(1.4, 0.9, 7000),
            round(0.8, 1.2, 7100),
            round(0.9, 1.0, 6900),
            round(2.5, 0.7, 7000),
            round(1.0, 1.1, 7000),
        ])
        .unwrap();
        assert_eq!(v["cpu_percent"], json!(1.0));
        assert_eq!(v["not_steered"]["cpu_percent"], json!(1.0));
        assert_eq!(v["vm_hwm_kib"], json!(7100), "peak over every round");
        assert_eq!(v["rounds_cpu_percent"], json!([1.4, 0.8, 0.9, 2.5, 1.0]));
        assert_eq!(v["meets_target"], json!(true));
        assert!(idle_windows(&v).starts_with("median of 5 rounds of 12 s"));
        assert_eq!(median_round(Vec::new()), None);
        let one = median_round(vec![round(0.5, 0.6, 7000)]).unwrap();
        assert_eq!(idle_windows(&one), "12 s");
    }

    #[test]
    fn a_variant_names_its_binary_and_merges_its_config_over_the_bench_overrides() {
        let dir = std::env::temp_dir().join(format!("uplink-lab-variant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let over = dir.join("echo.toml");
        std::fs::write(
            &over,
            "[policy]\nquorum = 1\n[probe]\ngateway_interval = \"20ms\"\n",
        )
        .unwrap();
        let main = std::env::current_exe().unwrap();
        let v = parse_variant(&format!("fast=+{}", over.display()), &main, BASE).unwrap();
        assert_eq!(v.label, "fast");
        assert_eq!(v.uplinkd, main);
        let t: toml::Table = v.overrides.parse().unwrap();
        assert_eq!(t["policy"]["failback_after"].as_str(), Some("5s"));
        assert_eq!(t["policy"]["quorum"].as_integer(), Some(1));
        assert_eq!(t["probe"]["gateway_interval"].as_str(), Some("20ms"));

        let old = parse_variant(&format!("old={}", main.display()), &main, BASE).unwrap();
        assert_eq!(old.label, "old");
        assert_eq!(
            old.overrides.parse::<toml::Table>().unwrap(),
            BASE.parse().unwrap()
        );

        for bad in ["old", "=x", "uplinkd=/bin/true", "old=/no/such/binary"] {
            assert!(parse_variant(bad, &main, BASE).is_err(), "{bad} accepted");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn variants_are_compared_row_by_row() {
        let variant = |label: &str, cpu: f64| VariantResult {
            variant: Variant {
                label: label.into(),
                uplinkd: PathBuf::from(format!("/bin/{label}")),
                overrides: String::new(),
            },
            first_decision: None,
            idle: Some(json!({"cpu_percent": cpu, "not_steered": {"cpu_percent": cpu + 0.1}})),
            false_switches: None,
        };
        let series = |label: &str, f: Family, ms: &[f64]| {
            let mut s = Series::new(label, Kind::GatewayDead, f);
            s.daemon = true;
            for &x in ms {
                s.trials.push(Trial {
                    network_ms: x,
                    raw_ms: x,
                    lost: 0,
                    sent: 0,
                    decision_ms: None,
                    blocked_in_sendto: 0,
                    descheduled: 0,
                });
            }
            s.finish();
            s
        };
        let mut res = Results {
            machine: Value::Null,
            method: Value::Null,
            series: vec![
                series("uplinkd", Family::V4, &[60.0, 70.0]),
                series("old", Family::V4, &[65.0, 80.0]),
            ],
            first_decision: None,
            idle: None,
            idle_breakdown: Vec::new(),
            false_switches: None,
            comparators: Vec::new(),
            not_measured: Vec::new(),
            targets_missed: Vec::new(),
            round_trip: Vec::new(),
            variants: vec![variant("uplinkd", 0.8)],
            suspicion_probes: Vec::new(),
            soak: Vec::new(),
            duration_s: 0.0,
        };
        assert_eq!(comparison(&res), None, "one variant: nothing to compare");
        res.variants.push(variant("old", 0.9));
        let c = comparison(&res).unwrap();
        assert!(c.starts_with("| figure | uplinkd | old |"), "{c}");
        assert!(
            c.contains("| dead gateway, carrier up ipv4, outage p50 / p99 ms | 60.0 / 70.0 (n=2) | 65.0 / 80.0 (n=2) |"),
            "{c}"
        );
        assert!(
            c.contains("| dead gateway, carrier up ipv6, outage p50 / p99 ms | - | - |"),
            "{c}"
        );
        assert!(
            c.contains("| idle CPU, % of a core (steered) | 0.80 | 0.90 |"),
            "{c}"
        );
        assert!(!c.contains("false switches"), "no figure, no row: {c}");
    }
}
