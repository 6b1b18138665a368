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
