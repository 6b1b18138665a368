//! End-to-end: the real daemon with its defaults in the lab topology.

mod common;

use std::time::Duration;

use common::*;
use uplink_lab::Uplink;
use uplinkd::config::Family;

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn carrier_loss_on_primary_moves_both_families() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let s = a.wait_for("secondary active", S(5), |s| {
        s.active.ipv4.as_deref() == Some("secondary")
            && s.active.ipv6.as_deref() == Some("secondary")
    });
    assert!(!s.uplinks[0].carrier);
    assert!(a
        .switches(Family::V4)
        .iter()
        .any(|(_, to, r)| to.as_deref() == Some("secondary") && r == "carrier"));
}

fn on(s: &uplinkd::status::Status, v4: &str, v6: &str) -> bool {
    s.active.ipv4.as_deref() == Some(v4) && s.active.ipv6.as_deref() == Some(v6)
}

#[test]
fn dead_gateway_with_carrier_up_moves_traffic() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.gateway_dead(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let s = a.wait_for("on secondary", S(5), |s| on(s, "secondary", "secondary"));
    assert!(s.uplinks[0].carrier, "carrier stayed up");
    assert!(s.uplinks[0]
        .reasons
        .iter()
        .any(|r| matches!(r, uplinkd::status::Reason::Gateway { .. })));
    assert!(a
        .switches(Family::V4)
        .iter()
        .any(|(_, to, r)| to.as_deref() == Some("secondary") && r == "gateway"));
}

#[test]
fn dead_upstream_with_gateway_alive_fails_quorum() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.upstream_dead(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(10));
    }
    let s = a.wait_for("on secondary", S(5), |s| on(s, "secondary", "secondary"));
    let gw = s.uplinks[0].gateway.ipv4.as_ref().unwrap();
    assert_eq!(gw.reachable, Some(true), "gateway still answers");
    assert!(s.uplinks[0]
        .reasons
        .iter()
        .any(|r| matches!(r, uplinkd::status::Reason::Quorum { .. })));
    assert!(a
        .switches(Family::V4)
        .iter()
        .any(|(_, to, r)| to.as_deref() == Some("secondary") && r == "quorum"));
}

#[test]
fn recovery_fails_back_only_after_failback_after() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.carrier_down(Uplink::Primary).unwrap();
    a.wait_for("on secondary", S(10), |s| on(s, "secondary", "secondary"));
    lab.carrier_up(Uplink::Primary).unwrap();
    let back = std::time::Instant::now();
    a.wait_for("primary healthy again", S(15), |s| {
        s.uplinks[0].state == uplinkd::status::UplinkState::Healthy
    });
    // Default failback_after is 30 s: still on the secondary well before.
    std::thread::sleep(S(20).saturating_sub(back.elapsed()));
    assert!(
        route_via(&lab, Family::V4, Uplink::Secondary),
        "no early failback"
    );
    assert!(on(&a.status().unwrap(), "secondary", "secondary"));
    a.wait_for("failback", S(30), |s| on(s, "primary", "primary"));
    assert!(
        back.elapsed() >= S(30),
        "failback after {:?}",
        back.elapsed()
    );
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Primary, S(5));
    }
    assert!(a
        .switches(Family::V4)
        .iter()
        .any(|(_, to, r)| to.as_deref() == Some("primary") && r == "failback"));
}

#[test]
fn one_dead_transit_does_not_switch() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.transit_dead(0).unwrap();
    a.wait_for("transit-a seen unreachable through both", S(10), |s| {
        s.uplinks.iter().all(|u| {
            let a: Vec<_> = u
                .transits
                .iter()
                .filter(|t| t.name == "transit-a")
                .collect();
            // Present (`all` of nothing is true), and unreachable.
            !a.is_empty() && a.iter().all(|t| t.reachable == Some(false))
        })
    });
    std::thread::sleep(S(5));
    let s = a.status().unwrap();
    assert!(on(&s, "primary", "primary"));
    assert_eq!(a.switches(Family::V4).len(), 1, "only the initial decision");
    assert_eq!(a.switches(Family::V6).len(), 1);
    assert!(route_via(&lab, Family::V4, Uplink::Primary));
}

#[test]
fn random_loss_on_primary_probes_for_60s_never_switches() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.random_loss(Uplink::Primary, 10.0).unwrap();
    std::thread::sleep(S(60));
    let s = a.status().unwrap();
    assert!(on(&s, "primary", "primary"), "{s:#?}");
    assert_eq!(
        a.switches(Family::V4).len(),
        1,
        "{:?}",
        a.switches(Family::V4)
    );
    assert_eq!(
        a.switches(Family::V6).len(),
        1,
        "{:?}",
        a.switches(Family::V6)
    );
    // The loss was really there and seen.
    let gw = s.uplinks[0].gateway.ipv4.as_ref().unwrap();
    assert!(gw.loss > 0.0, "loss was applied: {gw:?}");
}

#[test]
fn ipv6_broken_alone_moves_only_ipv6() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.ipv6_broken(Uplink::Primary).unwrap();
    wait_route(&lab, &a, Family::V6, Uplink::Secondary, S(10));
    let s = a.wait_for("v6 on secondary", S(5), |s| on(s, "primary", "secondary"));
    assert_eq!(s.uplinks[0].state, uplinkd::status::UplinkState::Degraded);
    assert!(route_via(&lab, Family::V4, Uplink::Primary));
    assert_eq!(a.switches(Family::V4).len(), 1);
}

#[test]
fn both_uplinks_dead_fails_static() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.gateway_dead(Uplink::Secondary).unwrap();
    a.wait_for("secondary unhealthy", S(10), |s| {
        s.uplinks[1].state == uplinkd::status::UplinkState::Unhealthy
    });
    lab.gateway_dead(Uplink::Primary).unwrap();
    let s = a.wait_for("fail static", S(10), |s| {
        s.fail_static.ipv4 && s.fail_static.ipv6
    });
    assert!(on(&s, "primary", "primary"), "kept the current uplink");
    std::thread::sleep(S(3));
    assert!(route_via(&lab, Family::V4, Uplink::Primary), "route kept");
    assert!(route_via(&lab, Family::V6, Uplink::Primary));
    assert_eq!(
        a.switches(Family::V4).len(),
        1,
        "no flapping between dead uplinks"
    );
    assert!(a
        .logged_events()
        .iter()
        .any(|e| e["kind"] == "fail_static" && e["active"] == true));
    // The secondary comes back: traffic moves there at once.
    lab.gateway_alive(Uplink::Secondary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(10));
    }
    let s = a.wait_for("out of fail static", S(5), |s| !s.fail_static.ipv4);
    assert!(on(&s, "secondary", "secondary"));
}

#[test]
fn restart_while_on_secondary_does_not_flap() {
    let lab = lab();
    let mut a = settled(&lab, "");
    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(10));
    }
    lab.carrier_up(Uplink::Primary).unwrap();
    a.wait_for("primary healthy", S(15), |s| {
        s.uplinks[0].state == uplinkd::status::UplinkState::Healthy
    });
    a.kill();
    let before = a.switches(Family::V4).len();
    a.spawn(&lab);
    let s = a.wait_for("decided after restart", S(10), |s| s.decided);
    assert!(
        on(&s, "secondary", "secondary"),
        "adopted the secondary: {s:#?}"
    );
    // Watch for a while: the primary is healthy, but failback must wait.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < S(10) {
        assert!(
            route_via(&lab, Family::V4, Uplink::Secondary),
            "flapped to primary"
        );
        assert!(
            route_via(&lab, Family::V6, Uplink::Secondary),
            "flapped to primary"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        a.switches(Family::V4).len(),
        before,
        "no switch after restart"
    );
    assert!(a
        .logged_events()
        .iter()
        .any(|e| e["kind"] == "adopted" && e["uplink"] == "secondary"));
}

#[test]
fn deleted_route_is_restored() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.delete_server_default(Family::V4, 10).unwrap();
    wait_route(&lab, &a, Family::V4, Uplink::Primary, S(5));
    a.wait_for("restore reported", S(5), |_| {
        a.logged_events()
            .iter()
            .any(|e| e["kind"] == "route_restored")
    });
}

/// A route change that keeps failing for one family does not hold up the
/// other family's failover: the failed change is re-checked later by the
/// loop, not by a wait inside the serial actuation queue that every later
/// change queues behind.
#[test]
fn failing_ipv4_route_changes_do_not_delay_an_ipv6_failover() {
    let lab = lab();
    let a = settled(&lab, "");
    // The server loses its IPv4 addresses (the kernel drops the IPv4 routes
    // through both uplinks without a word), and something else puts a route
    // at the agent's metric: the agent sees it and puts its own back, which
    // now fails every time (the gateway is on no connected subnet:
    // "Nexthop has invalid gateway"), and it keeps re-checking.
    let srv = lab.server_ns();
    for u in Uplink::ALL {
        lab.ip(&srv, &["-4", "addr", "flush", "dev", u.interface()])
            .unwrap();
    }
    lab.ip(
        &srv,
        &[
            "-4",
            "route",
            "add",
            "unreachable",
            "default",
            "metric",
            "10",
        ],
    )
    .unwrap();
    let failures = || a.log_text().matches("route change failed").count();
    let deadline = std::time::Instant::now() + S(10);
    let mut seen = failures();
    while seen == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed IPv4 route change"
        );
        std::thread::sleep(Duration::from_millis(5));
        seen = failures();
    }
    // Right after the next failure: a re-check of IPv4 is now pending.
    while failures() == seen {
        assert!(
            std::time::Instant::now() < deadline,
            "IPv4 route change not retried"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let t0 = std::time::Instant::now();
    lab.carrier_down(Uplink::Primary).unwrap();
    wait_route(&lab, &a, Family::V6, Uplink::Secondary, S(5));
    let took = t0.elapsed();
    eprintln!("IPv6 moved {took:?} after the carrier loss, with an IPv4 re-check pending");
    assert!(
        took < Duration::from_millis(400),
        "IPv6 failover took {took:?}: held up behind the IPv4 retry"
    );
    assert!(route_via(&lab, Family::V6, Uplink::Secondary));
}
