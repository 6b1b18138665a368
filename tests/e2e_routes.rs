//! End-to-end: living with other writers of the default route (DHCP
//! clients, systemd-networkd, NetworkManager, operators) in the lab.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use uplink_lab::{Lab, Uplink};
use uplinkd::config::Family;

const S: fn(u64) -> Duration = Duration::from_secs;

/// `ip route <verb> default via <secondary gw> dev <secondary> metric <m> proto dhcp`
/// in the server namespace: what a DHCP client on the secondary does.
fn dhcp_default(lab: &Lab, verb: &str, metric: u32) {
    let u = Uplink::Secondary;
    let gw = u.gateway(Family::V4).to_string();
    let m = metric.to_string();
    lab.ip(
        &lab.server_ns(),
        &[
            "-4",
            "route",
            verb,
            "default",
            "via",
            &gw,
            "dev",
            u.interface(),
            "metric",
            &m,
            "proto",
            "dhcp",
        ],
    )
    .unwrap();
}

/// The status as JSON (read untyped, so a missing field is just null).
fn status_json(a: &Agent) -> Value {
    a.client().status_json().unwrap_or(Value::Null)
}

fn wait_json(a: &Agent, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = status_json(a);
        if pred(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}; last status: {last:#}\nlog:\n{}",
        a.log_text()
    );
}

fn events_of(a: &Agent, kind: &str) -> Vec<Value> {
    a.logged_events()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Whether the kernel still has our managed route (metric 10, proto 85) via `uplink`.
fn managed_route_via(lab: &Lab, uplink: Uplink) -> bool {
    lab.default_routes(Family::V4).unwrap().iter().any(|r| {
        r.metric == 10
            && r.gateway == Some(uplink.gateway(Family::V4))
            && r.dev.as_deref() == Some(uplink.interface())
    })
}

#[test]
fn competing_default_route_is_reported_and_cleared() {
    let lab = lab();
    let a = settled(&lab, "");
    dhcp_default(&lab, "add", 0);
    let s = wait_json(&a, "competing route in status", S(5), |s| {
        !s["competing_route"]["ipv4"].is_null()
    });
    let c = &s["competing_route"]["ipv4"];
    assert_eq!(c["via"], "198.18.2.1");
    assert_eq!(c["dev"], "eth1");
    assert_eq!(c["metric"], 0);
    assert_eq!(c["protocol"], "dhcp");
    assert!(s["competing_route"]["ipv6"].is_null());
    let ev = events_of(&a, "competing_route");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["present"], true);
    assert_eq!(ev[0]["removed"], false);
    assert!(a
        .log_text()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("competing_route")));
    let m = a.client().metrics().unwrap();
    assert!(
        m.lines().any(|l| l
            .starts_with("uplinkd_competing_default_route{family=\"ipv4\",protocol=\"dhcp\"} 1")),
        "{m}"
    );
    // Off by default: the route stays, and ours too.
    assert!(lab
        .default_routes(Family::V4)
        .unwrap()
        .iter()
        .any(|r| r.metric == 0 && r.protocol.as_deref() == Some("dhcp")));
    assert!(managed_route_via(&lab, Uplink::Primary));

    dhcp_default(&lab, "del", 0);
    wait_json(&a, "competing route cleared", S(5), |s| {
        s["competing_route"]["ipv4"].is_null()
    });
    let ev = events_of(&a, "competing_route");
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[1]["present"], false);
    let m = a.client().metrics().unwrap();
    assert!(m
        .lines()
        .any(|l| l
            .starts_with("uplinkd_competing_default_route{family=\"ipv4\",protocol=\"dhcp\"} 0")));
    // A route at a higher metric does not win: not reported.
    dhcp_default(&lab, "add", 100);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(events_of(&a, "competing_route").len(), 2);
    assert!(a.switches(Family::V4).len() <= 1);
}

#[test]
fn competing_default_route_is_removed_when_configured() {
    let lab = lab();
    let a = settled(&lab, "[agent]\nremove_competing_routes = true");
    dhcp_default(&lab, "add", 0);
    let deadline = Instant::now() + S(5);
    while lab
        .default_routes(Family::V4)
        .unwrap()
        .iter()
        .any(|r| r.metric == 0)
    {
        assert!(
            Instant::now() < deadline,
            "competing route not removed:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_route(&lab, &a, Family::V4, Uplink::Primary, S(1));
    let ev = events_of(&a, "competing_route");
    assert!(
        ev.iter().any(|e| e["present"] == true
            && e["removed"] == true
            && e["route"]["protocol"] == "dhcp"),
        "{ev:?}"
    );
    wait_json(&a, "competing route cleared", S(5), |s| {
        s["competing_route"]["ipv4"].is_null()
    });
}

/// A manager that rewrites our route every 100 ms: restores back off, and
/// one fighting condition names it, instead of a restore and a warning per
/// write.
#[test]
fn fight_over_the_managed_route_backs_off() {
    let lab = lab();
    let a = settled(&lab, "");
    let before = events_of(&a, "route_restored").len();
    for _ in 0..30 {
        dhcp_default(&lab, "replace", 10);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The fight is reported once, naming the other writer's protocol.
    let fights = events_of(&a, "fighting");
    let started: Vec<_> = fights.iter().filter(|e| e["active"] == true).collect();
    assert_eq!(started.len(), 1, "{fights:?}\n{}", a.log_text());
    assert_eq!(started[0]["family"], "ipv4");
    assert!(
        started[0]["with"].as_str().unwrap().contains("proto dhcp"),
        "{fights:?}"
    );
    // Our route comes back once the other writer stops ...
    wait_route(&lab, &a, Family::V4, Uplink::Primary, S(6));
    assert!(managed_route_via(&lab, Uplink::Primary));
    // ... and the fight ends, quietly and once.
    let ended = {
        let deadline = Instant::now() + S(12);
        loop {
            let e = events_of(&a, "fighting");
            if let Some(x) = e.iter().find(|e| e["active"] == false) {
                break x.clone();
            }
            assert!(
                Instant::now() < deadline,
                "fight never ended:\n{}",
                a.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let restored = events_of(&a, "route_restored").len() - before;
    let restores = restored as u64 + ended["restores"].as_u64().unwrap();
    eprintln!("30 rewrites: {restores} restores ({restored} reported one by one)");
    assert!((2..=8).contains(&restores), "{restores} restores");
    let warnings = a
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && (l.contains("route_restored") || l.contains("fighting")))
        .count();
    assert!(warnings <= 3, "{warnings} warnings");
    assert!(a.switches(Family::V4).len() <= 1, "no failover");
    let s = a.status().unwrap();
    assert_eq!(active(&s, Family::V4), Some("primary"));
    assert!(status_json(&a)["fighting"]["ipv4"].is_null());
}

/// The stream's longest gap and the whole report, after `scenario` ran
/// while a 10,000/s IPv4 stream flowed.
fn outage(lab: &Lab, scenario: impl FnOnce()) -> (Duration, uplink_lab::StreamReport) {
    let stream = lab
        .udp_stream(&uplink_lab::StreamSpec {
            max_duration: S(30),
            ..uplink_lab::StreamSpec::v4()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    scenario();
    std::thread::sleep(Duration::from_secs(4));
    let r = stream.stop();
    (r.longest_gap, r)
}

/// The primary fails (`fail`) while the agent is dead (SIGKILL before it
/// could switch); the restarted agent must release what the dead path
/// holds (senders blocked on the dead gateway's unresolved neighbour
/// entry), not only move the route.
fn kill_before_failover(overrides: &str, fail: impl FnOnce(&Lab)) {
    let lab = lab();
    let mut a = settled(&lab, overrides);
    let (gap, r) = outage(&lab, || {
        a.kill();
        fail(&lab);
        std::thread::sleep(Duration::from_millis(200));
        a.spawn(&lab);
        wait_route(&lab, &a, Family::V4, Uplink::Secondary, S(5));
    });
    eprintln!("outage {gap:?} (failed 200 ms before the restart): {r:?}");
    assert!(gap < Duration::from_millis(1200), "outage {gap:?}: {r:?}");
}

/// The agent is killed right after it moved the route; the restarted agent
/// adopts the new route and must still release the dead path.
fn kill_right_after_failover(fail: impl FnOnce(&Lab)) {
    let lab = lab();
    let mut a = settled(&lab, "");
    let (gap, r) = outage(&lab, || {
        fail(&lab);
        let deadline = Instant::now() + S(5);
        while !route_via(&lab, Family::V4, Uplink::Secondary) {
            assert!(Instant::now() < deadline, "no failover");
        }
        a.kill();
        a.spawn(&lab);
        a.wait_for("decided after restart", S(10), |s| s.decided);
    });
    eprintln!("outage {gap:?}: {r:?}");
    assert!(gap < Duration::from_millis(1000), "outage {gap:?}: {r:?}");
}

#[test]
fn restart_after_kill_before_failover_gateway_dead() {
    kill_before_failover("", |lab| lab.gateway_dead(Uplink::Primary).unwrap());
}

#[test]
fn restart_after_kill_before_failover_carrier_down() {
    kill_before_failover("", |lab| lab.carrier_down(Uplink::Primary).unwrap());
}

/// Without the kernel fallback routes, nothing moves the traffic while the
/// agent is dead: packets for the dead gateway queue on its unresolved
/// neighbour entry until the restarted agent switches and flushes it.
#[test]
fn restart_after_kill_before_failover_carrier_down_no_fallback() {
    kill_before_failover("[agent]\nkernel_fallback = false", |lab| {
        lab.carrier_down(Uplink::Primary).unwrap()
    });
}

#[test]
fn restart_after_kill_right_after_failover_gateway_dead() {
    kill_right_after_failover(|lab| lab.gateway_dead(Uplink::Primary).unwrap());
}

#[test]
fn restart_after_kill_right_after_failover_carrier_down() {
    kill_right_after_failover(|lab| lab.carrier_down(Uplink::Primary).unwrap());
}

/// The primary's gateway dies while its neighbour entry has expired (as
/// it does on a path that carried only one-way traffic), and the agent is
/// killed before it could switch: datagrams queue on the INCOMPLETE entry
/// and the blocking sender sleeps in `sendto`. The restarted agent's first
/// decision leaves the adopted route via the dead primary; it must flush
/// that entry so the sender resumes, whatever verdict (gateway or quorum)
/// judged the primary first.
#[test]
fn restart_after_kill_before_failover_gateway_dead_unresolved_neighbour() {
    kill_before_failover("", |lab| {
        lab.gateway_dead(Uplink::Primary).unwrap();
        lab.ip(&lab.server_ns(), &["neigh", "flush", "dev", "eth0"])
            .unwrap();
    });
}

/// Everything the agent owns in the server namespace: its routes (proto 85,
/// every table, both families) and its fwmark rules, one line each, sorted.
fn owned(lab: &Lab) -> Vec<String> {
    let ns = lab.server_ns();
    let mut out = Vec::new();
    for f in ["-4", "-6"] {
        let routes = lab
            .ip(&ns, &[f, "route", "show", "table", "all", "proto", "85"])
            .unwrap();
        out.extend(routes.lines().map(|l| format!("{f} {}", l.trim())));
        let rules = lab.ip(&ns, &[f, "rule", "show"]).unwrap();
        out.extend(
            rules
                .lines()
                .filter(|l| l.contains("fwmark"))
                .map(|l| format!("{f} rule {}", l.trim())),
        );
    }
    out.sort();
    out
}

/// The managed default route's line in `owned` (main table, `route_metric`).
fn is_managed(line: &str) -> bool {
    line.contains(" metric 10") && !line.contains(" table ")
}

/// A network manager that reconfigures an interface (systemd-networkd's
/// `networkctl reconfigure`, an ifdown/ifup) removes its addresses and adds
/// them again; the kernel then drops every IPv4 route through the removed
/// subnet without a word (no RTM_DELROUTE): the probe table's route, the
/// kernel fallback route and the managed default route. When the uplink's
/// connected prefix comes back, the agent installs all of it again, long
/// before its periodic re-check (30 s).
#[test]
fn routes_come_back_with_an_uplinks_addresses() {
    let lab = lab();
    let a = settled(&lab, "");
    let before = owned(&lab);
    // Both uplinks' probe tables, rules and fallback routes, and the
    // managed default routes (metric 10), in both families.
    for want in [
        "table 1000",
        "table 1001",
        "metric 10 ",
        "metric 11 ",
        "metric 12 ",
        "rule 1000:",
    ] {
        for f in ["-4", "-6"] {
            assert!(
                before
                    .iter()
                    .any(|l| l.starts_with(f) && format!("{l} ").contains(want)),
                "{f} {want:?} missing before: {before:#?}"
            );
        }
    }
    let ns = lab.server_ns();
    let addrs = [
        ("-4", "198.18.1.2/24", "eth0"),
        ("-6", "2001:db8:1::2/64", "eth0"),
    ];
    for (f, addr, dev) in addrs {
        lab.ip(&ns, &[f, "addr", "del", addr, "dev", dev]).unwrap();
    }
    // Without its addresses the primary's probes fail: the agent may move
    // the traffic meanwhile (that is right); what it owns per uplink must
    // come back either way.
    std::thread::sleep(Duration::from_millis(300));
    let gone: Vec<String> = before
        .iter()
        .filter(|l| !owned(&lab).contains(l))
        .cloned()
        .collect();
    assert!(
        gone.iter().any(|l| l.contains("table 1000")),
        "removing the addresses did not remove the probe table's route: {gone:#?}"
    );
    let t = Instant::now();
    for (f, addr, dev) in addrs {
        let mut args = vec![f, "addr", "add", addr, "dev", dev];
        if f == "-6" {
            args.push("nodad");
        }
        lab.ip(&ns, &args).unwrap();
    }
    let per_uplink =
        |v: &[String]| -> Vec<String> { v.iter().filter(|l| !is_managed(l)).cloned().collect() };
    let deadline = t + S(10);
    loop {
        let now = owned(&lab);
        // Every table, rule and fallback route as before, and the managed
        // route of each family on the uplink the agent says is active.
        let s = a.status().unwrap();
        let managed_ok = Family::ALL.iter().all(|f| {
            let (flag, u) = match (f, active(&s, *f)) {
                (Family::V4, Some("primary")) => ("-4", Uplink::Primary),
                (Family::V4, _) => ("-4", Uplink::Secondary),
                (Family::V6, Some("primary")) => ("-6", Uplink::Primary),
                (Family::V6, _) => ("-6", Uplink::Secondary),
            };
            let dev = format!("dev {} ", u.interface());
            now.iter()
                .any(|l| l.starts_with(flag) && is_managed(l) && l.contains(&dev))
        });
        if per_uplink(&now) == per_uplink(&before) && managed_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back 10 s after the addresses (gone when removed: {gone:#?}):\n\
             before: {before:#?}\nnow: {now:#?}\nlog:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "{} routes and rules dropped with the addresses; all back {:?} after them",
        gone.len(),
        t.elapsed()
    );
}

/// A probe rule deleted by someone else (an operator, a network manager
/// that removes the rules it does not know: networkd's default
/// ManageForeignRoutingPolicyRules=yes) is put back at once, not at the
/// periodic re-check (30 s).
#[test]
fn a_deleted_probe_rule_comes_back() {
    let lab = lab();
    let a = settled(&lab, "");
    let before = owned(&lab);
    let ns = lab.server_ns();
    for f in ["-4", "-6"] {
        lab.ip(
            &ns,
            &[
                f, "rule", "del", "priority", "1000", "fwmark", "0x3e8", "lookup", "1000",
            ],
        )
        .unwrap();
    }
    // (`ip rule del` fails when there is no such rule.)
    let t = Instant::now();
    let deadline = t + S(10);
    while owned(&lab) != before {
        assert!(
            Instant::now() < deadline,
            "rules not back 10 s after their deletion: {:#?}\nlog:\n{}",
            owned(&lab),
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("probe rules back {:?} after their deletion", t.elapsed());
    assert!(a.switches(Family::V4).len() <= 1, "no failover");
    assert!(a.switches(Family::V6).len() <= 1, "no failover");
}

/// The agent is killed between its route change and its neighbour flush:
/// the primary's gateway died while its entry was unresolved (senders
/// blocked behind it), the route already goes via the secondary, and the
/// flush never came. The restarted agent adopts the good route and does not
/// switch; it must still flush the dead primary's entries once it finds the
/// primary failed, so the blocked sender resumes (else it waits until the
/// kernel gives up on the entry, ~3 s).
#[test]
fn restart_after_kill_between_route_change_and_flush() {
    let lab = lab();
    let mut a = settled(&lab, "");
    let ns = lab.server_ns();
    let (gap, r) = outage(&lab, || {
        a.kill();
        lab.gateway_dead(Uplink::Primary).unwrap();
        lab.ip(&ns, &["neigh", "flush", "dev", "eth0"]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // What the killed agent did before it could flush.
        let gw = Uplink::Secondary.gateway(Family::V4).to_string();
        lab.ip(
            &ns,
            &[
                "-4", "route", "replace", "default", "via", &gw, "dev", "eth1", "metric", "10",
                "proto", "85",
            ],
        )
        .unwrap();
        a.spawn(&lab);
        a.wait_for("decided after restart", S(10), |s| s.decided);
    });
    eprintln!("outage {gap:?}: {r:?}");
    assert!(route_via(&lab, Family::V4, Uplink::Secondary));
    // Only the first run's initial choice: the restarted agent adopted.
    let moves: Vec<_> = a
        .switches(Family::V4)
        .into_iter()
        .filter(|(from, _, _)| from.is_some())
        .collect();
    assert!(moves.is_empty(), "the restarted agent switched: {moves:?}");
    assert!(gap < Duration::from_millis(1200), "outage {gap:?}: {r:?}");
}
