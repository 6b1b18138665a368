//! `uplinkctl check`: a monitoring plugin by the Monitoring Plugins
//! conventions (Nagios, Icinga, Naemon, Sensu): one line of text, then
//! performance data after `|`, and the state as the exit code.
//!
//! It reads the daemon's status (and, for the time since the last switch,
//! its metrics) and judges them; it decides nothing the daemon did not:
//! "usable" and "preferred" mean what they mean to the daemon.

use std::fmt::Write as _;
use std::time::Duration;

use uplinkd::client::ClientError;
use uplinkd::config::Family;
use uplinkd::status::{PerFamily, Reason, Status, UplinkState, UplinkStatus};

use crate::show::{active, digit, healthy, human_ms, per, preferred, reason_code, serving, usable};

/// The plugin's state, in the order of its exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Level {
    /// The exit code the monitoring plugin API gives this state.
    pub fn code(self) -> u8 {
        self as u8
    }

    fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }
}

/// The operator's thresholds (`uplinkctl check --warn-rtt ...`).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Milliseconds, for the gateway's and the transits' mean RTT.
    pub warn_rtt: Option<f64>,
    pub crit_rtt: Option<f64>,
    /// Percent, for the gateway's and the transits' mean loss.
    pub warn_loss: Option<f64>,
    pub crit_loss: Option<f64>,
    /// A failover older than this is CRITICAL, not WARNING.
    pub failover_critical_after: Option<Duration>,
}

/// What the plugin prints and exits with.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub level: Level,
    pub text: String,
    /// `'label'=value[UOM];[warn];[crit];[min];[max]` items.
    pub perfdata: Vec<String>,
}

impl Report {
    /// The plugin's one line: `UPLINKD OK - ipv4 on primary, ... | perfdata`.
    pub fn line(&self) -> String {
        // `|` starts the performance data and a newline ends the first
        // line: neither may appear in the text.
        let text = self.text.replace('|', "/").replace('\n', " ");
        let mut l = format!("UPLINKD {} - {text}", self.level.name());
        if !self.perfdata.is_empty() {
            let _ = write!(l, " | {}", self.perfdata.join(" "));
        }
        l
    }

    /// The daemon did not answer (CRITICAL: an agent that is not running
    /// guards nothing), or answered something unreadable (UNKNOWN).
    pub fn unanswered(e: &ClientError) -> Report {
        let level = match e {
            ClientError::Decode { .. } | ClientError::Daemon { .. } => Level::Unknown,
            _ => Level::Critical,
        };
        Report {
            level,
            text: format!("no status from uplinkd: {e}"),
            perfdata: Vec::new(),
        }
    }

    /// A usage error (UNKNOWN, as the plugin API asks).
    pub fn usage(message: &str) -> Report {
        Report {
            level: Level::Unknown,
            text: message.trim().to_string(),
            perfdata: Vec::new(),
        }
    }
}

/// Seconds since each family's last switch, from the metrics text
/// (`uplinkd_since_last_switch_seconds{family="ipv4"} 12.5`); None where
/// the daemon has not switched that family since it started.
pub fn since_last_switch(metrics: &str) -> PerFamily<Option<f64>> {
    let mut out = PerFamily::default();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix("uplinkd_since_last_switch_seconds{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let value = value.trim().parse::<f64>().ok();
        if labels.contains("family=\"ipv4\"") {
            out.ipv4 = value;
        } else if labels.contains("family=\"ipv6\"") {
            out.ipv6 = value;
        }
    }
    out
}

/// `'label'`, quoted as the plugin API asks (a quote doubled, no `=`).
fn label(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''").replace('=', "_"))
}

/// One performance datum; `U` when the value is not known; empty trailing
/// fields dropped.
fn perf(name: &str, value: Option<String>, uom: &str, fields: [Option<f64>; 4]) -> String {
    let mut s = format!(
        "{}={}",
        label(name),
        value.map_or("U".into(), |v| format!("{v}{uom}"))
    );
    let fields: Vec<String> = fields
        .iter()
        .map(|f| f.map_or(String::new(), |x| x.to_string()))
        .collect();
    let used = fields
        .iter()
        .rposition(|f| !f.is_empty())
        .map_or(0, |i| i + 1);
    for f in &fields[..used] {
        s.push(';');
        s.push_str(f);
    }
    s
}

/// A family's transit targets through `u`: mean RTT (ms, over those that
/// answer), mean loss (%), how many answer, how many there are.
fn transits(u: &UplinkStatus, f: Family) -> (Option<f64>, Option<f64>, usize, usize) {
    let ts: Vec<_> = u.transits.iter().filter(|t| t.family == f.name()).collect();
    let rtts: Vec<f64> = ts
        .iter()
        .filter(|t| t.reachable == Some(true))
        .filter_map(|t| t.rtt_ms)
        .collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let losses: Vec<f64> = ts.iter().map(|t| t.loss * 100.0).collect();
    (mean(&rtts), mean(&losses), rtts.len(), ts.len())
}

/// Judges a status: the state and the line's text, the performance data.
pub fn evaluate(st: &Status, since_switch: &PerFamily<Option<f64>>, limits: &Limits) -> Report {
    let mut level = Level::Ok;
    let mut families = Vec::new();
    let mut problems = Vec::new();
    let mut raise = |l: Level| level = level.max(l);

    for f in Family::ALL {
        let Some(pref) = preferred(st, f) else {
            continue; // no uplink serves this family
        };
        let on = active(st, f);
        let on_name = on.map_or("-", |u| u.name.as_str());
        if *per(&st.fail_static, f) {
            raise(Level::Critical);
            families.push(format!("{f} FAIL STATIC on {on_name} (no usable uplink)"));
            continue;
        }
        match on {
            None if !st.decided => {
                raise(Level::Warning);
                families.push(format!("{f} undecided (starting)"));
            }
            None => {
                raise(Level::Critical);
                families.push(format!("{f} on no uplink"));
            }
            Some(a) if a.name == pref.name => families.push(format!("{f} on {}", a.name)),
            Some(a) => {
                let since = *per(since_switch, f);
                let mut s = format!("{f} on {}, not {}", a.name, pref.name);
                if let Some(secs) = since {
                    let _ = write!(s, ", for {}", human_ms(secs.floor() as u64 * 1000));
                }
                match limits.failover_critical_after {
                    Some(d) if since.is_some_and(|secs| secs >= d.as_secs_f64()) => {
                        raise(Level::Critical);
                        let _ = write!(s, " (over {})", humantime::format_duration(d));
                    }
                    _ => raise(Level::Warning),
                }
                families.push(s);
            }
        }
        if st.decided && !serving(st, f).any(|u| usable(u, f)) {
            raise(Level::Critical);
            problems.push(format!("no usable {f} uplink"));
        }
    }

    for u in &st.uplinks {
        let mut what = Vec::new();
        if u.drained {
            what.push("drained".to_string());
        }
        if let Some(ms) = u.damped_ms {
            what.push(format!("damped for {}", human_ms(ms)));
        }
        let served: Vec<Family> = Family::ALL
            .into_iter()
            .filter(|f| per(&u.families, *f).is_some())
            .collect();
        let known = served.iter().filter(|f| {
            per(&u.families, **f).as_ref().map(|fs| fs.state) != Some(UplinkState::Unknown)
        });
        let bad = known.filter(|f| !healthy(u, **f)).count();
        if bad > 0 {
            let codes: Vec<String> = u
                .reasons
                .iter()
                .filter(|r| !matches!(r, Reason::Drained | Reason::Damped { .. }))
                .map(reason_code)
                .collect();
            let state = if bad < served.len() {
                "degraded"
            } else {
                "unhealthy"
            };
            what.push(format!("{state} ({})", codes.join(" ")));
        }
        if !what.is_empty() {
            raise(Level::Warning);
            problems.push(format!("{} {}", u.name, what.join(", ")));
        }
    }
    // Another writer's default route outranks ours, or rewrites it: traffic
    // may not go where the agent decided.
    for f in Family::ALL {
        if let Some(c) = per(&st.competing_route, f) {
            raise(Level::Warning);
            problems.push(format!("{f} {c} outranks ours"));
        }
        if let Some(who) = per(&st.fighting, f) {
            raise(Level::Warning);
            problems.push(format!("{f} route rewritten by {who}"));
        }
        // The service address is gone: new connections take an uplink's
        // own address, which does not survive that uplink.
        if let Some(src) = per(&st.source, f).as_ref().filter(|s| !s.present) {
            raise(Level::Warning);
            problems.push(format!(
                "{f} service address {} missing (source_missing)",
                src.address
            ));
        }
    }
    for b in st.bonds.iter().filter(|b| !b.warnings.is_empty()) {
        raise(Level::Warning);
        problems.push(format!(
            "bond {}: {} setting(s) weaken the agent (uplinkctl status)",
            b.name,
            b.warnings.len()
        ));
    }

    // Thresholds, on what traffic goes through: each family's active uplink.
    let mut perfdata = Vec::new();
    for u in &st.uplinks {
        for f in Family::ALL {
            if per(&u.families, f).is_none() {
                continue;
            }
            let carries = per(&st.active, f).as_deref() == Some(u.name.as_str());
            let (rtt_w, rtt_c, loss_w, loss_c) = if carries {
                (
                    limits.warn_rtt,
                    limits.crit_rtt,
                    limits.warn_loss,
                    limits.crit_loss,
                )
            } else {
                (None, None, None, None)
            };
            let (t_rtt, t_loss, t_up, t_all) = transits(u, f);
            let g = per(&u.gateway, f).as_ref();
            let measured = [
                (
                    "gateway",
                    format!("gw{}", digit(f)),
                    g.and_then(|g| g.rtt_ms),
                    g.map(|g| g.loss * 100.0),
                ),
                ("transits", format!("transit{}", digit(f)), t_rtt, t_loss),
            ];
            for (what, short, rtt, loss) in measured {
                let name = format!("{}_{short}", u.name);
                perfdata.push(perf(
                    &format!("{name}_rtt"),
                    rtt.map(|r| format!("{r:.3}")),
                    "ms",
                    [rtt_w, rtt_c, Some(0.0), None],
                ));
                perfdata.push(perf(
                    &format!("{name}_loss"),
                    loss.map(|l| format!("{l:.1}")),
                    "%",
                    [loss_w, loss_c, Some(0.0), Some(100.0)],
                ));
                let mut over = |value: Option<f64>,
                                warn: Option<f64>,
                                crit: Option<f64>,
                                unit: &str,
                                kind: &str| {
                    let Some(v) = value else { return };
                    let (l, limit) = match (crit, warn) {
                        (Some(c), _) if v > c => (Level::Critical, c),
                        (_, Some(w)) if v > w => (Level::Warning, w),
                        _ => return,
                    };
                    raise(l);
                    problems.push(format!(
                        "{} {what}{} {kind} {v:.1}{unit} > {limit}{unit}",
                        u.name,
                        digit(f)
                    ));
                };
                over(rtt, rtt_w, rtt_c, "ms", "rtt");
                over(loss, loss_w, loss_c, "%", "loss");
            }
            perfdata.push(perf(
                &format!("{}_transit{}_up", u.name, digit(f)),
                Some(t_up.to_string()),
                "",
                [None, None, Some(0.0), Some(t_all as f64)],
            ));
        }
    }
    for f in Family::ALL {
        if let Some(secs) = per(since_switch, f) {
            perfdata.push(perf(
                &format!("{f}_since_switch"),
                Some(format!("{}", secs.floor())),
                "s",
                [None, None, Some(0.0), None],
            ));
        }
    }

    let mut text = families.join(", ");
    if !problems.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&problems.join("; "));
    }
    if text.is_empty() {
        text = "no uplink configured".into();
    }
    Report {
        level,
        text,
        perfdata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::show::fixture::*;

    fn since(v4: f64, v6: f64) -> PerFamily<Option<f64>> {
        PerFamily {
            ipv4: Some(v4),
            ipv6: Some(v6),
        }
    }

    #[test]
    fn on_the_preferred_uplink_all_healthy_is_ok() {
        let r = evaluate(&all_healthy(), &since(3600.0, 3600.0), &Limits::default());
        assert_eq!(r.level, Level::Ok, "{r:?}");
        let line = r.line();
        assert!(
            line.starts_with("UPLINKD OK - ipv4 on primary, ipv6 on primary | 'primary_gw4_rtt'=0.250ms;;;0 'primary_gw4_loss'=0.0%;;;0;100 'primary_transit4_rtt'=11.500ms;;;0 'primary_transit4_loss'=0.0%;;;0;100 'primary_transit4_up'=4;;;0;4 "),
            "{line}"
        );
        assert!(
            line.ends_with(" 'ipv4_since_switch'=3600s;;;0 'ipv6_since_switch'=3600s;;;0"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        // 5 per uplink and family, 1 per family.
        assert_eq!(r.perfdata.len(), 2 * 2 * 5 + 2, "{line}");
    }

    #[test]
    fn a_competing_route_or_a_route_fight_warns() {
        let mut st = all_healthy();
        st.competing_route.ipv4 = Some(uplinkd::status::CompetingRoute {
            via: Some("198.18.2.1".parse().unwrap()),
            dev: "upb".into(),
            metric: 0,
            protocol: "dhcp".into(),
        });
        let r = evaluate(&st, &since(3600.0, 3600.0), &Limits::default());
        assert_eq!(r.level, Level::Warning, "{r:?}");
        assert!(
            r.text.contains(
                "ipv4 default route via 198.18.2.1 dev upb metric 0 (proto dhcp) outranks ours"
            ),
            "{}",
            r.text
        );
        let mut st = all_healthy();
        st.fighting.ipv6 = Some("route via 2001:db8:2::1 dev upb proto static".into());
        let r = evaluate(&st, &since(3600.0, 3600.0), &Limits::default());
        assert_eq!(r.level, Level::Warning, "{r:?}");
        assert!(
            r.text.contains("ipv6 route rewritten by route via"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_missing_service_address_warns() {
        let mut st = all_healthy();
        st.source.ipv6 = Some(uplinkd::status::SourceStatus {
            address: "2001:db8:0:1::1".parse().unwrap(),
            present: true,
            reason: None,
        });
        let r = evaluate(&st, &since(3600.0, 3600.0), &Limits::default());
        assert_eq!(r.level, Level::Ok, "{r:?}");
        st.source.ipv6.as_mut().unwrap().present = false;
        let r = evaluate(&st, &since(3600.0, 3600.0), &Limits::default());
        assert_eq!(r.level, Level::Warning, "{r:?}");
        assert!(
            r.text
                .contains("ipv6 service address 2001:db8:0:1::1 missing (source_missing)"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_failover_warns_and_escalates_after_the_limit() {
        let mut st = all_healthy();
        fail(&mut st, 0, vec![Reason::Carrier]);
        on_secondary(&mut st);
        let r = evaluate(&st, &since(125.0, 125.0), &Limits::default());
        assert_eq!(r.level, Level::Warning);
        assert_eq!(
            r.text,
            "ipv4 on secondary, not primary, for 2m05s, ipv6 on secondary, not primary, for 2m05s; primary unhealthy (carrier)"
        );
        let limits = Limits {
            failover_critical_after: Some(Duration::from_secs(120)),
            ..Limits::default()
        };
        let r = evaluate(&st, &since(125.0, 60.0), &limits);
        assert_eq!(r.level, Level::Critical);
        assert!(r.text.starts_with("ipv4 on secondary, not primary, for 2m05s (over 2m), ipv6 on secondary, not primary, for 1m00s;"), "{}", r.text);
        // Without the time since the switch, no escalation.
        let r = evaluate(&st, &PerFamily::default(), &limits);
        assert_eq!(r.level, Level::Warning);
        // The primary healthy again, failback pending: still a failover.
        let mut st = all_healthy();
        on_secondary(&mut st);
        let r = evaluate(&st, &since(5.0, 5.0), &Limits::default());
        assert_eq!(r.level, Level::Warning);
        assert_eq!(
            r.text,
            "ipv4 on secondary, not primary, for 5s, ipv6 on secondary, not primary, for 5s"
        );
    }

    #[test]
    fn fail_static_and_no_usable_uplink_are_critical() {
        let mut st = all_healthy();
        fail(
            &mut st,
            0,
            vec![Reason::Gateway {
                family: "ipv4".into(),
            }],
        );
        fail(&mut st, 1, vec![Reason::Carrier]);
        st.fail_static = PerFamily {
            ipv4: true,
            ipv6: true,
        };
        let r = evaluate(&st, &PerFamily::default(), &Limits::default());
        assert_eq!(r.level, Level::Critical);
        assert!(r.text.starts_with("ipv4 FAIL STATIC on primary (no usable uplink), ipv6 FAIL STATIC on primary (no usable uplink); "), "{}", r.text);
        // No usable uplink without fail static yet (the moment in between).
        st.fail_static = PerFamily::default();
        let r = evaluate(&st, &PerFamily::default(), &Limits::default());
        assert_eq!(r.level, Level::Critical);
        assert!(
            r.text
                .contains("no usable ipv4 uplink; no usable ipv6 uplink"),
            "{}",
            r.text
        );
    }

    #[test]
    fn drained_damped_degraded_and_unhealthy_uplinks_warn() {
        let limits = Limits::default();
        let mut st = all_healthy();
        st.uplinks[1].drained = true;
        st.uplinks[1].reasons = vec![Reason::Drained];
        let r = evaluate(&st, &PerFamily::default(), &limits);
        assert_eq!(
            (r.level, r.text.as_str()),
            (
                Level::Warning,
                "ipv4 on primary, ipv6 on primary; secondary drained"
            )
        );

        let mut st = all_healthy();
        st.uplinks[1].damped_ms = Some(30_000);
        let r = evaluate(&st, &PerFamily::default(), &limits);
        assert_eq!(r.level, Level::Warning);
        assert!(r.text.ends_with("; secondary damped for 30s"), "{}", r.text);

        let mut st = all_healthy();
        let v6 = st.uplinks[0].families.ipv6.as_mut().unwrap();
        v6.state = UplinkState::Unhealthy;
        v6.reasons = vec![Reason::Gateway {
            family: "ipv6".into(),
        }];
        st.uplinks[0].reasons = v6.reasons.clone();
        st.uplinks[0].state = UplinkState::Degraded;
        st.active.ipv6 = Some("secondary".into());
        let r = evaluate(&st, &PerFamily::default(), &limits);
        assert_eq!(r.level, Level::Warning);
        assert_eq!(
            r.text,
            "ipv4 on primary, ipv6 on secondary, not primary; primary degraded (gateway6)"
        );

        let mut st = all_healthy();
        fail(&mut st, 1, vec![Reason::Carrier]);
        let r = evaluate(&st, &PerFamily::default(), &limits);
        assert_eq!(r.level, Level::Warning);
        assert!(
            r.text.ends_with("; secondary unhealthy (carrier)"),
            "{}",
            r.text
        );
    }

    #[test]
    fn thresholds_apply_to_the_active_uplinks() {
        let mut st = all_healthy();
        st.uplinks[0].gateway.ipv4.as_mut().unwrap().rtt_ms = Some(60.0);
        st.uplinks[1].gateway.ipv4.as_mut().unwrap().rtt_ms = Some(500.0);
        let limits = Limits {
            warn_rtt: Some(50.0),
            crit_rtt: Some(100.0),
            warn_loss: Some(5.0),
            crit_loss: Some(20.0),
            ..Limits::default()
        };
        let r = evaluate(&st, &PerFamily::default(), &limits);
        assert_eq!(r.level, Level::Warning, "{r:?}");
        assert!(
            r.text.ends_with("; primary gateway4 rtt 60.0ms > 50ms"),
            "{}",
            r.text
        );
        let line = r.line();
        assert!(
            line.contains("'primary_gw4_rtt'=60.000ms;50;100;0 "),
            "{line}"
        );
        // The standby's series carry no thresholds: they are not judged.
        assert!(
            line.contains("'secondary_gw4_rtt'=500.000ms;;;0 "),
            "{line}"
        );

        // One transit in four lost: 25 % mean loss through the primary.
        for t in st.uplinks[0]
            .transits
            .iter_mut()
            .filter(|t| t.name == "transit-a")
        {
            t.reachable = Some(false);
            t.loss = 1.0;
        }
        let r = evaluate(&st, &PerFamily::default(), &limits);
        assert_eq!(r.level, Level::Critical);
        assert!(
            r.text
                .contains("primary transits4 loss 25.0% > 20%; primary transits6 loss 25.0% > 20%"),
            "{}",
            r.text
        );
        assert!(
            r.line().contains("'primary_transit4_up'=3;;;0;4"),
            "{}",
            r.line()
        );
        // The mean RTT is over the targets that answer.
        assert!(
            r.line()
                .contains("'primary_transit4_rtt'=12.000ms;50;100;0"),
            "{}",
            r.line()
        );
    }

    #[test]
    fn unknown_values_are_u() {
        let mut st = all_healthy();
        let g = st.uplinks[1].gateway.ipv6.as_mut().unwrap();
        g.rtt_ms = None;
        g.reachable = None;
        let r = evaluate(&st, &PerFamily::default(), &Limits::default());
        assert!(
            r.perfdata
                .contains(&"'secondary_gw6_rtt'=U;;;0".to_string()),
            "{r:?}"
        );
    }

    #[test]
    fn since_last_switch_is_read_from_the_metrics() {
        let m = "# HELP uplinkd_since_last_switch_seconds Time since\n\
                 # TYPE uplinkd_since_last_switch_seconds gauge\n\
                 # UNIT uplinkd_since_last_switch_seconds seconds\n\
                 uplinkd_since_last_switch_seconds{family=\"ipv6\"} 7.25\n\
                 uplinkd_since_last_switch_seconds{family=\"ipv4\"} 12.5\n\
                 uplinkd_last_switch_timestamp_seconds{family=\"ipv4\"} 1.8e9\n";
        assert_eq!(since_last_switch(m), since(12.5, 7.25));
        assert_eq!(since_last_switch("# EOF\n"), PerFamily::default());
    }

    #[test]
    fn an_unreachable_daemon_is_critical() {
        let e = ClientError::Connect {
            socket: "/run/uplinkd/uplinkd.sock".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let r = Report::unanswered(&e);
        assert_eq!(r.level, Level::Critical);
        assert!(r.line().starts_with("UPLINKD CRITICAL - no status from uplinkd: connect to uplinkd at /run/uplinkd/uplinkd.sock"), "{}", r.line());
        assert_eq!(Level::Unknown.code(), 3);
        assert_eq!(
            Report::usage("unexpected argument '--x' found").line(),
            "UPLINKD UNKNOWN - unexpected argument '--x' found"
        );
    }

    #[test]
    fn labels_and_text_cannot_break_the_line() {
        assert_eq!(label("it's=odd"), "'it''s_odd'");
        let r = Report {
            level: Level::Ok,
            text: "a|b\nc".into(),
            perfdata: vec![],
        };
        assert_eq!(r.line(), "UPLINKD OK - a/b c");
    }
}
