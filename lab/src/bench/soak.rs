//! Soak and load rows (issues 13 and 14): what the daemon does over
//! minutes of adverse but healthy conditions, not how fast it fails over.
//!
//! - `echo-loss`: 10 % random loss of every echo request and
//!   forwarding-plane echo through the primary ([`Lab::random_loss`]) for
//!   the soak (default 10 minutes): switches (target 0), health changes,
//!   the gateway probe mode seen.
//! - `policing`: the primary router polices what is addressed to itself
//!   (pings, ND, ARP, anything else; each class) at 10/s, 5/s and 1/s
//!   ([`Lab::police_self`]), [`POLICING_WINDOW`] per rate: switches
//!   (target 0).
//! - `probe-load`: packets per second the server sends to each router
//!   itself, the echoes each router forwards (and the redirects it sends
//!   for them), and echo requests at each transit target, in the steady
//!   state over [`PROBE_LOAD_WINDOW`] ([`Lab::start_load_count`]).
//! - `tcp-loss`: 2 % random loss of all TCP through the primary
//!   ([`Lab::tcp_loss`]) with a TCP flow running, for the soak: switches
//!   (target 0) and passive-suspicion confirmation bursts per minute
//!   (target at most 1).
//!
//! Every variant runs in a lab of its own, all variants at the same time
//! (a soak per variant in turn would double the wall time and measure them
//! on different minutes of the machine). A row whose measurement did not
//! happen (no loss dropped anything, no traffic, no counter) is an error,
//! never a 0.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};

use super::{baseline, invalid, parse_variant, wants, BenchOpts, Ctx, Result, Results, Variant};
use crate::demo::{self, Uplinkd};
use crate::load::class;
use crate::{Family, Lab, LabSpec, Uplink};
use uplinkd_core::status::Status;

/// The soak sections, in the order they run.
pub const SOAK_SECTIONS: [&str; 4] = ["echo-loss", "policing", "probe-load", "tcp-loss"];

/// Length of the `echo-loss` and `tcp-loss` soaks unless `--soak` says.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(600);
/// Per policing rate (or the soak, if shorter).
pub const POLICING_WINDOW: Duration = Duration::from_secs(60);
/// Policing rates of the primary router, per class, packets/s.
pub const POLICING_RATES: [u32; 3] = [10, 5, 1];
/// The steady-state count (or the soak, if shorter).
pub const PROBE_LOAD_WINDOW: Duration = Duration::from_secs(20);
/// Random loss on the echo path, %.
const ECHO_LOSS_PERCENT: f64 = 10.0;
/// TCP loss: one segment in this many (2 %).
const TCP_LOSS_ONE_IN: u32 = 50;

/// One soak row of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRow {
    /// The section (`--only` name).
    pub section: String,
    /// What the row measured under, e.g. "primary polices ... at 5/s, 60 s".
    pub condition: String,
    /// The variant's label.
    pub subject: String,
    pub window_s: f64,
    /// (figure, value) in table order.
    pub figures: Vec<(String, String)>,
    pub target: Option<String>,
    pub meets_target: Option<bool>,
    /// The measurement did not happen (or the lab failed): why.
    pub error: Option<String>,
    /// The raw counts behind the figures.
    pub detail: Value,
}

impl SoakRow {
    fn failed(section: &str, condition: &str, subject: &str, e: &dyn std::fmt::Display) -> Self {
        SoakRow {
            section: section.into(),
            condition: condition.into(),
            subject: subject.into(),
            window_s: 0.0,
            figures: Vec::new(),
            target: None,
            meets_target: None,
            error: Some(e.to_string()),
            detail: Value::Null,
        }
    }
}

/// The soak length asked for (`--soak`), or the default.
fn soak(opts: &BenchOpts) -> Duration {
    opts.soak.unwrap_or(DEFAULT_SOAK)
}

/// The main binary with the bench's overrides, then every `--variant`.
fn variants(opts: &BenchOpts, bin: &Path, overrides: &str) -> Result<Vec<Variant>> {
    let mut v = vec![Variant {
        label: "uplinkd".into(),
        uplinkd: bin.to_path_buf(),
        overrides: overrides.to_string(),
    }];
    for spec in &opts.variants {
        v.push(parse_variant(spec, bin, overrides)?);
    }
    Ok(v)
}

/// Runs the soak sections asked for.
pub(super) fn run(
    opts: &BenchOpts,
    ctx: &Ctx,
    bin: &Path,
    overrides: &str,
    res: &mut Results,
) -> Result<()> {
    let variants = variants(opts, bin, overrides)?;
    for section in SOAK_SECTIONS {
        if !wants(opts, section) {
            continue;
        }
        let rows = all_at_once(ctx, &variants, section, |lab, d, v| match section {
            "echo-loss" => echo_loss(ctx, lab, d, &v.label, soak(opts)),
            "policing" => policing(ctx, lab, d, &v.label, soak(opts).min(POLICING_WINDOW)),
            "probe-load" => probe_load(ctx, lab, d, &v.label, soak(opts).min(PROBE_LOAD_WINDOW)),
            "tcp-loss" => tcp_loss(ctx, lab, d, &v.label, soak(opts)),
            other => Err(invalid(format!("no soak section {other}"))),
        });
        for r in &rows {
            if let Some(e) = &r.error {
                ctx.say(&format!(
                    "{} {} ({}): MEASUREMENT FAILED: {e}",
                    r.section, r.subject, r.condition
                ));
            }
        }
        res.soak.extend(rows);
        ctx.cancel.check()?;
    }
    Ok(())
}

/// `f` for every variant at once, each in a lab of its own with its daemon
/// decided and settled on the primary; the rows in variant order. A
/// variant whose lab or daemon failed gets one row with the error.
fn all_at_once(
    ctx: &Ctx,
    variants: &[Variant],
    section: &str,
    f: impl Fn(&Lab, &mut Uplinkd, &Variant) -> Result<Vec<SoakRow>> + Sync,
) -> Vec<SoakRow> {
    ctx.say(&format!(
        "{section}: {} variant(s) at once, a lab each",
        variants.len()
    ));
    std::thread::scope(|sc| {
        let hs: Vec<_> = variants
            .iter()
            .map(|v| {
                let f = &f;
                sc.spawn(move || -> Result<Vec<SoakRow>> {
                    let lab = Lab::build(&LabSpec::default())?;
                    let r = (|| {
                        let mut d = Uplinkd::start(&lab, &v.uplinkd, &v.overrides)?;
                        let r = d
                            .wait_for(
                                ctx.cancel,
                                "the first decision",
                                Duration::from_secs(30),
                                |s| s.decided,
                            )
                            .and_then(|_| f(&lab, &mut d, v));
                        d.stop();
                        r
                    })();
                    let destroyed = lab.destroy();
                    let rows = r?;
                    destroyed?;
                    Ok(rows)
                })
            })
            .collect();
        hs.into_iter()
            .zip(variants)
            .flat_map(|(h, v)| match h.join() {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => vec![SoakRow::failed(section, "-", &v.label, &e)],
                Err(_) => vec![SoakRow::failed(section, "-", &v.label, &"thread panicked")],
            })
            .collect()
    })
}

/// Events of `kind` between `t0` and `t1`.
fn events_in<'a>(
    ev: &'a [demo::Event],
    kind: &'a str,
    t0: SystemTime,
    t1: SystemTime,
) -> impl Iterator<Item = &'a demo::Event> + 'a {
    ev.iter()
        .filter(move |e| e.time >= t0 && e.time <= t1 && e.kind() == kind)
}

/// "primary echo/echo, secondary echo/echo" (v4/v6 gateway probe modes).
fn modes(s: &Status) -> String {
    s.uplinks
        .iter()
        .map(|u| {
            let m = |g: &Option<uplinkd_core::status::GatewayProbeStatus>| {
                g.as_ref().map_or("-", |g| g.mode.name())
            };
            format!(
                "{} {}/{}",
                u.name,
                m(&u.gateway_probe.ipv4),
                m(&u.gateway_probe.ipv6)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Switches, health changes, gateway-unreachable and mode-change events in
/// the window, as figures and detail.
struct WindowEvents {
    switches: usize,
    health: usize,
    gateway_down: usize,
    mode_changes: Vec<String>,
    switch_reasons: Vec<String>,
}

impl WindowEvents {
    fn of(d: &Uplinkd, t0: SystemTime, t1: SystemTime) -> WindowEvents {
        let ev = d.events();
        WindowEvents {
            switches: events_in(&ev, "active_changed", t0, t1).count(),
            health: events_in(&ev, "uplink_health", t0, t1).count(),
            gateway_down: events_in(&ev, "gateway", t0, t1)
                .filter(|e| e.record["reachable"] == false)
                .count(),
            mode_changes: events_in(&ev, "gateway_probe", t0, t1)
                .map(|e| {
                    format!(
                        "{} {} -> {}",
                        e.record["uplink"].as_str().unwrap_or("?"),
                        e.record["family"].as_str().unwrap_or("?"),
                        e.record["mode"].as_str().unwrap_or("?")
                    )
                })
                .collect(),
            switch_reasons: events_in(&ev, "active_changed", t0, t1)
                .map(|e| {
                    format!(
                        "{} {} -> {}: {}",
                        e.record["family"].as_str().unwrap_or("?"),
                        e.record["from"].as_str().unwrap_or("-"),
                        e.record["to"].as_str().unwrap_or("-"),
                        e.record["reason"].as_str().unwrap_or("?")
                    )
                })
                .collect(),
        }
    }

    fn figures(&self, before: &str, after: &str) -> Vec<(String, String)> {
        let mut mode = before.to_string();
        if after != before {
            mode.push_str(&format!(" -> {after}"));
        }
        if !self.mode_changes.is_empty() {
            mode.push_str(&format!(" ({} mode changes)", self.mode_changes.len()));
        }
        vec![
            ("switches".into(), self.switches.to_string()),
            (
                "uplink health changes / gateway unreachable events".into(),
                format!("{} / {}", self.health, self.gateway_down),
            ),
            ("gateway probe mode (v4/v6)".into(), mode),
        ]
    }

    fn detail(&self) -> Value {
        json!({
            "switches": self.switches,
            "switch_events": self.switch_reasons,
            "uplink_health_changes": self.health,
            "gateway_unreachable_events": self.gateway_down,
            "gateway_probe_mode_changes": self.mode_changes,
        })
    }
}

/// Sleeps `d` in steps of at most a minute, checking that the daemon lives
/// and calling `each` after every step.
fn soak_for(
    ctx: &Ctx,
    d: &mut Uplinkd,
    dur: Duration,
    mut each: impl FnMut(&Uplinkd) -> Result<()>,
) -> Result<()> {
    let step = Duration::from_secs(60);
    let mut left = dur;
    while !left.is_zero() {
        let s = left.min(step);
        ctx.cancel.sleep(s)?;
        left -= s;
        d.check_alive()?;
        each(d)?;
    }
    Ok(())
}

fn echo_loss(
    ctx: &Ctx,
    lab: &Lab,
    d: &mut Uplinkd,
    label: &str,
    dur: Duration,
) -> Result<Vec<SoakRow>> {
    let condition = format!(
        "{ECHO_LOSS_PERCENT:.0} % random loss of echo requests and forwarding-plane echoes through the primary, {} s",
        dur.as_secs()
    );
    baseline(ctx, lab, d)?;
    let before = modes(&d.status()?);
    ctx.say(&format!("{label}: echo-loss: {condition} (modes {before})"));
    let t0 = SystemTime::now();
    lab.random_loss(Uplink::Primary, ECHO_LOSS_PERCENT)?;
    let soaked = soak_for(ctx, d, dur, |_| Ok(()));
    let dropped = lab.loss_dropped(Uplink::Primary);
    let status = d.status();
    let cleared = lab.clear_loss(Uplink::Primary);
    let t1 = SystemTime::now();
    soaked?;
    let (pings, echoes) = dropped?;
    cleared?;
    let s = status?;
    if pings + echoes == 0 {
        return Err(invalid(format!(
            "echo-loss {label}: the loss rule at the primary router dropped nothing in {} s: no probe crossed it",
            dur.as_secs()
        )));
    }
    let w = WindowEvents::of(d, t0, t1);
    let after = modes(&s);
    let loss_seen = |f: Family| {
        let g = match f {
            Family::V4 => &s.uplinks[0].gateway.ipv4,
            Family::V6 => &s.uplinks[0].gateway.ipv6,
        };
        g.as_ref()
            .map_or("-".into(), |g| format!("{:.1} %", g.loss * 100.0))
    };
    let mut figures = w.figures(&before, &after);
    figures.push((
        "dropped by the loss rule: echo requests / echoes".into(),
        format!("{pings} / {echoes}"),
    ));
    figures.push((
        "primary gateway loss seen at the end, v4 / v6".into(),
        format!("{} / {}", loss_seen(Family::V4), loss_seen(Family::V6)),
    ));
    ctx.say(&format!(
        "{label}: echo-loss: {} switches, {} health changes, modes {after}; dropped {pings} echo requests and {echoes} echoes",
        w.switches, w.health
    ));
    Ok(vec![SoakRow {
        section: "echo-loss".into(),
        condition,
        subject: label.into(),
        window_s: dur.as_secs_f64(),
        figures,
        target: Some("0 switches".into()),
        meets_target: Some(w.switches == 0),
        error: None,
        detail: json!({
            "events": w.detail(),
            "modes_before": before,
            "modes_after": after,
            "dropped_echo_requests": pings,
            "dropped_echoes": echoes,
        }),
    }])
}

fn policing(
    ctx: &Ctx,
    lab: &Lab,
    d: &mut Uplinkd,
    label: &str,
    dur: Duration,
) -> Result<Vec<SoakRow>> {
    let mut rows = Vec::new();
    for rate in POLICING_RATES {
        let condition = format!(
            "primary router polices what is addressed to itself (ICMP, ICMPv6 echo, ND, ARP, other; each) at {rate}/s, {} s",
            dur.as_secs()
        );
        let r = (|| -> Result<SoakRow> {
            baseline(ctx, lab, d)?;
            let before = modes(&d.status()?);
            ctx.say(&format!("{label}: policing: {condition}"));
            let t0 = SystemTime::now();
            lab.police_self(Uplink::Primary, rate)?;
            let soaked = soak_for(ctx, d, dur, |_| Ok(()));
            let counters = lab.police_counters(Uplink::Primary);
            let status = d.status();
            let cleared = lab.clear_police(Uplink::Primary);
            let t1 = SystemTime::now();
            soaked?;
            let c = counters?;
            cleared?;
            let after = modes(&status?);
            let sum = |prefix: &str| -> u64 {
                c.iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| *v)
                    .sum()
            };
            let (seen, policed) = (sum("seen "), sum("policed "));
            if seen == 0 {
                return Err(invalid(format!(
                    "policing {label} at {rate}/s: the primary router's policer saw nothing addressed to it in {} s ({c:?})",
                    dur.as_secs()
                )));
            }
            let get = |k: &str| c.get(k).copied().unwrap_or(0);
            let w = WindowEvents::of(d, t0, t1);
            let mut figures = w.figures(&before, &after);
            figures.push((
                "addressed to the router: seen / policed".into(),
                format!("{seen} / {policed}"),
            ));
            figures.push((
                "of which ICMP + ICMPv6 echo requests: seen / policed".into(),
                format!(
                    "{} / {}",
                    get("seen icmp echo") + get("seen icmpv6 echo"),
                    get("policed icmp echo") + get("policed icmpv6 echo")
                ),
            ));
            ctx.say(&format!(
                "{label}: policing at {rate}/s: {} switches, {} health changes; {seen} packets to the router, {policed} policed",
                w.switches, w.health
            ));
            Ok(SoakRow {
                section: "policing".into(),
                condition: condition.clone(),
                subject: label.into(),
                window_s: dur.as_secs_f64(),
                figures,
                target: Some("0 switches".into()),
                meets_target: Some(w.switches == 0),
                error: None,
                detail: json!({
                    "rate_per_s": rate,
                    "events": w.detail(),
                    "modes_before": before,
                    "modes_after": after,
                    "policer": c,
                }),
            })
        })();
        match r {
            Ok(row) => rows.push(row),
            Err(e) => {
                if ctx.cancel.is_cancelled() {
                    return Err(e);
                }
                let _ = lab.clear_police(Uplink::Primary);
                rows.push(SoakRow::failed("policing", &condition, label, &e));
            }
        }
    }
    Ok(rows)
}

/// Per second, two decimals.
fn rate(n: u64, window: Duration) -> f64 {
    n as f64 / window.as_secs_f64()
}

fn probe_load(
    ctx: &Ctx,
    lab: &Lab,
    d: &mut Uplinkd,
    label: &str,
    dur: Duration,
) -> Result<Vec<SoakRow>> {
    let condition = format!(
        "steady state, no fault, {} s (packets/s; v4 / v6)",
        dur.as_secs()
    );
    baseline(ctx, lab, d)?;
    // Past the start's probing (auto's trial, the first verdicts).
    ctx.cancel.sleep(Duration::from_secs(2))?;
    let s = d.status()?;
    let before = modes(&s);
    ctx.say(&format!(
        "{label}: probe-load: {condition} (modes {before})"
    ));
    lab.start_load_count()?;
    let t0 = std::time::Instant::now();
    let slept = ctx.cancel.sleep(dur);
    let loads = lab.read_load_count();
    let window = t0.elapsed();
    slept?;
    let loads = loads?;
    let after = modes(&d.status()?);
    let pair = |a: u64, b: u64| format!("{:.2} / {:.2}", rate(a, window), rate(b, window));
    let mut figures = vec![("gateway probe mode (v4/v6)".to_string(), {
        let mut m = before.clone();
        if after != before {
            m.push_str(&format!(" -> {after}"));
        }
        m
    })];
    let mut worst_to_router: f64 = 0.0;
    let mut transit_total = 0;
    let mut router_total = 0;
    let mut detail = serde_json::Map::new();
    for l in &loads {
        detail.insert(l.node.clone(), json!(l.packets));
        if l.node.starts_with("transit") {
            let (v4, v6) = (l.get(class::V4_TRANSIT)?, l.get(class::V6_TRANSIT)?);
            transit_total += v4 + v6;
            figures.push((format!("{}: echo requests", l.node), pair(v4, v6)));
            continue;
        }
        let v4 = l.get(class::V4_TO_ROUTER)? + l.get(class::ARP)?;
        let v6 = l.get(class::V6_TO_ROUTER)? + l.get(class::V6_ND_MULTICAST)?;
        let (e4, e6) = (l.get(class::V4_ECHOES)?, l.get(class::V6_ECHOES)?);
        router_total += v4 + v6 + e4 + e6;
        worst_to_router = worst_to_router.max(rate(v4, window)).max(rate(v6, window));
        let role = if l.node == "ra" {
            "primary"
        } else {
            "secondary"
        };
        figures.push((
            format!("{} ({role}): to the router itself (incl. ARP / ND)", l.node),
            pair(v4, v6),
        ));
        figures.push((
            format!("{}: of which echo requests (pings)", l.node),
            pair(l.get(class::V4_PINGS)?, l.get(class::V6_PINGS)?),
        ));
        figures.push((
            format!("{}: of which ARP / multicast ND", l.node),
            pair(l.get(class::ARP)?, l.get(class::V6_ND_MULTICAST)?),
        ));
        figures.push((format!("{}: echoes forwarded", l.node), pair(e4, e6)));
        figures.push((
            format!("{}: ICMP redirects it sent", l.node),
            pair(l.get(class::V4_REDIRECTS)?, l.get(class::V6_REDIRECTS)?),
        ));
    }
    if transit_total == 0 || router_total == 0 {
        return Err(invalid(format!(
            "probe-load {label}: nothing counted in {:.1} s (transits {transit_total}, routers {router_total}): the counters did not see the daemon's probes; {loads:?}",
            window.as_secs_f64()
        )));
    }
    ctx.say(&format!(
        "{label}: probe-load: most to one router itself {worst_to_router:.2}/s per family; {:.2}/s at the transits together",
        rate(transit_total, window)
    ));
    Ok(vec![SoakRow {
        section: "probe-load".into(),
        condition,
        subject: label.into(),
        window_s: window.as_secs_f64(),
        figures,
        target: Some(
            "at most 1 packet/s per family addressed to each router itself (issue 13)".into(),
        ),
        meets_target: Some(worst_to_router <= 1.0),
        error: None,
        detail: json!({ "window_s": window.as_secs_f64(), "modes": after, "packets": detail }),
    }])
}

/// Suspicion counters summed over the uplinks: (bursts, burst probes, by source).
fn suspicion(s: &Status) -> (u64, u64, BTreeMap<String, u64>) {
    let mut by = BTreeMap::new();
    let (mut b, mut p) = (0, 0);
    for u in &s.uplinks {
        b += u.suspicion.bursts;
        p += u.suspicion.burst_probes;
        for (k, v) in &u.suspicion.by_source {
            *by.entry(k.clone()).or_insert(0) += v;
        }
    }
    (b, p, by)
}

fn tcp_loss(
    ctx: &Ctx,
    lab: &Lab,
    d: &mut Uplinkd,
    label: &str,
    dur: Duration,
) -> Result<Vec<SoakRow>> {
    let condition = format!(
        "{:.0} % random loss of all TCP through the primary (both ways), a TCP flow running, {} s",
        100.0 / TCP_LOSS_ONE_IN as f64,
        dur.as_secs()
    );
    baseline(ctx, lab, d)?;
    let flow = lab.tcp_flow(Family::V4)?;
    ctx.cancel.sleep(Duration::from_secs(2))?;
    let delivered0 = flow.delivered();
    let (b0, p0, by0) = suspicion(&d.status()?);
    ctx.say(&format!("{label}: tcp-loss: {condition}"));
    let t0 = SystemTime::now();
    lab.tcp_loss(Uplink::Primary, TCP_LOSS_ONE_IN)?;
    let mut per_minute = Vec::new();
    let mut last = b0;
    let soaked = soak_for(ctx, d, dur, |d| {
        let (b, _, _) = suspicion(&d.status()?);
        per_minute.push(b - last);
        last = b;
        Ok(())
    });
    let dropped = lab.tcp_loss_dropped(Uplink::Primary);
    let delivered = flow.delivered() - delivered0;
    let status = d.status();
    let cleared = lab.clear_tcp_loss(Uplink::Primary);
    let t1 = SystemTime::now();
    flow.stop();
    soaked?;
    let dropped = dropped?;
    cleared?;
    let s = status?;
    if delivered == 0 {
        return Err(invalid(format!(
            "tcp-loss {label}: the TCP flow delivered nothing in {} s",
            dur.as_secs()
        )));
    }
    if dropped == 0 {
        return Err(invalid(format!(
            "tcp-loss {label}: the loss rule dropped no TCP segment in {} s ({delivered} bytes delivered)",
            dur.as_secs()
        )));
    }
    let (b1, p1, by1) = suspicion(&s);
    let bursts = b1 - b0;
    let minutes = dur.as_secs_f64() / 60.0;
    let max_minute = per_minute.iter().copied().max().unwrap_or(0);
    let sources: BTreeMap<String, u64> = by1
        .iter()
        .map(|(k, v)| (k.clone(), v - by0.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let w = WindowEvents::of(d, t0, t1);
    let mut figures = w.figures(&modes(&s), &modes(&s));
    figures.retain(|(k, _)| !k.starts_with("gateway probe mode"));
    figures.push((
        "suspicion bursts: total, per minute mean / most in a minute".into(),
        format!("{bursts}, {:.2} / {max_minute}", bursts as f64 / minutes),
    ));
    figures.push(("suspicion burst probes".into(), (p1 - p0).to_string()));
    figures.push((
        "suspicions by source".into(),
        if sources.is_empty() {
            "none".into()
        } else {
            sources
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));
    figures.push((
        "TCP delivered / segments dropped by the loss rule".into(),
        format!("{:.1} MB / {dropped}", delivered as f64 / 1e6),
    ));
    ctx.say(&format!(
        "{label}: tcp-loss: {} switches, {bursts} suspicion bursts (most in a minute {max_minute}), {:.1} MB delivered, {dropped} segments dropped",
        w.switches,
        delivered as f64 / 1e6
    ));
    Ok(vec![SoakRow {
        section: "tcp-loss".into(),
        condition,
        subject: label.into(),
        window_s: dur.as_secs_f64(),
        figures,
        target: Some("0 switches, at most 1 confirmation burst a minute (issue 14)".into()),
        meets_target: Some(w.switches == 0 && max_minute <= 1),
        error: None,
        detail: json!({
            "events": w.detail(),
            "suspicion_bursts": bursts,
            "suspicion_bursts_per_minute": per_minute,
            "suspicion_burst_probes": p1 - p0,
            "suspicions_by_source": sources,
            "tcp_delivered_bytes": delivered,
            "tcp_segments_dropped": dropped,
        }),
    }])
}

/// The soak rows side by side: one line per (condition, figure), one
/// column per variant. Empty without soak rows.
pub fn table(rows: &[SoakRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut subjects: Vec<&str> = Vec::new();
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !subjects.contains(&r.subject.as_str()) {
            subjects.push(&r.subject);
        }
        if !keys.contains(&(&r.section, &r.condition)) {
            keys.push((&r.section, &r.condition));
        }
    }
    let mut t = format!(
        "| row | condition | figure | {} |\n|---|---|---|{}\n",
        subjects.join(" | "),
        "---|".repeat(subjects.len())
    );
    for (section, condition) in keys {
        let of = |subj: &str| {
            rows.iter()
                .find(|r| r.section == section && r.condition == condition && r.subject == subj)
        };
        let mut figures: Vec<&str> = Vec::new();
        for r in rows
            .iter()
            .filter(|r| r.section == section && r.condition == condition)
        {
            for (f, _) in &r.figures {
                if !figures.contains(&f.as_str()) {
                    figures.push(f);
                }
            }
        }
        for f in &figures {
            let cells: Vec<String> = subjects
                .iter()
                .map(|s| match of(s) {
                    Some(r) if r.error.is_some() => "FAILED".into(),
                    Some(r) => r
                        .figures
                        .iter()
                        .find(|(k, _)| k == f)
                        .map_or("-".into(), |(_, v)| v.clone()),
                    None => "-".into(),
                })
                .collect();
            t.push_str(&format!(
                "| {section} | {condition} | {f} | {} |\n",
                cells.join(" | ")
            ));
        }
        let target = rows
            .iter()
            .find(|r| r.section == section && r.condition == condition && r.target.is_some())
            .and_then(|r| r.target.clone());
        let verdicts: Vec<String> = subjects
            .iter()
            .map(|s| match of(s) {
                Some(r) if r.error.is_some() => {
                    format!(
                        "**measurement failed**: {}",
                        one_line(r.error.as_deref().unwrap_or(""))
                    )
                }
                Some(r) => match r.meets_target {
                    Some(true) => "met".into(),
                    Some(false) => "**missed**".into(),
                    None => "-".into(),
                },
                None => "-".into(),
            })
            .collect();
        t.push_str(&format!(
            "| {section} | {condition} | target: {} | {} |\n",
            target.as_deref().unwrap_or("-"),
            verdicts.join(" | ")
        ));
    }
    t
}

/// `text` on one line (a table cell), at most 300 characters.
fn one_line(text: &str) -> String {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{} ...", &t[..i]),
        None => t,
    }
}

/// Every soak row that missed its target or did not measure.
pub fn missed(rows: &[SoakRow]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| match (&r.error, r.meets_target) {
            (Some(e), _) => Some(format!(
                "{} {} ({}): measurement failed: {e}",
                r.section, r.subject, r.condition
            )),
            (None, Some(false)) => Some(format!(
                "{} {} ({}): target {} missed: {}",
                r.section,
                r.subject,
                r.condition,
                r.target.as_deref().unwrap_or("?"),
                r.figures
                    .iter()
                    .filter(|(k, _)| {
                        ["switches", "itself", "bursts"]
                            .iter()
                            .any(|w| k.contains(w))
                    })
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            _ => None,
        })
        .collect()
}

/// An error naming every soak row whose measurement failed (the run's
/// outcome: a failed measurement is never a quiet 0).
pub fn check(rows: &[SoakRow]) -> Result<()> {
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("{} {}: {e}", r.section, r.subject))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(invalid(format!(
            "{} soak row(s) did not measure: {}",
            failed.len(),
            failed.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(subject: &str, condition: &str, switches: usize, error: Option<&str>) -> SoakRow {
        SoakRow {
            section: "policing".into(),
            condition: condition.into(),
            subject: subject.into(),
            window_s: 60.0,
            figures: vec![("switches".into(), switches.to_string())],
            target: Some("0 switches".into()),
            meets_target: Some(switches == 0),
            error: error.map(String::from),
            detail: Value::Null,
        }
    }

    #[test]
    fn soak_rows_are_side_by_side_and_a_failed_measurement_is_loud() {
        let rows = vec![
            row("uplinkd", "at 10/s", 0, None),
            row("icmp", "at 10/s", 4, None),
            row("uplinkd", "at 1/s", 0, None),
            SoakRow::failed("policing", "at 1/s", "icmp", &"the policer saw nothing"),
        ];
        let t = table(&rows);
        assert!(
            t.starts_with("| row | condition | figure | uplinkd | icmp |"),
            "{t}"
        );
        assert!(
            t.contains("| policing | at 10/s | switches | 0 | 4 |"),
            "{t}"
        );
        assert!(
            t.contains("| policing | at 10/s | target: 0 switches | met | **missed** |"),
            "{t}"
        );
        assert!(
            t.contains("| policing | at 1/s | switches | 0 | FAILED |"),
            "{t}"
        );
        assert!(
            t.contains("**measurement failed**: the policer saw nothing"),
            "{t}"
        );
        let long = SoakRow::failed("policing", "at 5/s", "icmp", &"exited;\nlog:\nline");
        let t1 = table(&[long]);
        assert!(
            t1.contains("**measurement failed**: exited; log: line |"),
            "{t1}"
        );
        assert_eq!(one_line(&"x".repeat(400)).len(), 304);
        let m = missed(&rows);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(
            m[0].contains("icmp") && m[0].contains("switches 4"),
            "{m:?}"
        );
        assert!(m[1].contains("measurement failed"), "{m:?}");
        let e = check(&rows).unwrap_err().to_string();
        assert!(e.contains("policing icmp: the policer saw nothing"), "{e}");
        assert!(check(&rows[..3]).is_ok());
        assert_eq!(table(&[]), "");
    }
}
