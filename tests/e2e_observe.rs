//! End-to-end: observe mode decides and reports, and changes nothing the
//! host routes by.

mod common;

use std::time::Duration;

use common::*;
use uplink_lab::{Lab, Uplink};

const S: fn(u64) -> Duration = Duration::from_secs;

/// The server's main table, every table's routes, and the rules.
fn routing(lab: &Lab) -> (String, String) {
    let ns = lab.server_ns();
    let mut main = String::new();
    for fam in ["-4", "-6"] {
        main += &lab
            .ip(&ns, &[fam, "route", "show", "table", "main"])
            .unwrap();
    }
    let mut rules = String::new();
    for fam in ["-4", "-6"] {
        rules += &lab.ip(&ns, &[fam, "rule", "show"]).unwrap();
    }
    let sysctls = lab
        .exec(
            &ns,
            &[
                "sysctl",
                "net.ipv4.conf.eth0.rp_filter",
                "net.ipv4.conf.eth1.rp_filter",
                "net.ipv4.conf.eth0.ignore_routes_with_linkdown",
            ],
        )
        .unwrap();
    // The carrier loss itself marks routes "linkdown": not our change.
    (main.replace(" linkdown", "") + &sysctls, rules)
}

#[test]
fn observe_mode_reports_a_failover_and_changes_no_route() {
    let lab = lab();
    let (main_before, _) = routing(&lab);
    let mut a = Agent::start(&lab, "[agent]\nmode = \"observe\"\n");
    let s = a.wait_for("first decision", S(10), |s| {
        s.decided && active(s, uplinkd::config::Family::V4) == Some("primary")
    });
    assert_eq!(s.mode, "observe");
    let (_, rules_ready) = routing(&lab);
    let mut events = a.subscribe();
    lab.carrier_down(Uplink::Primary).unwrap();
    let seen = events.until("would-be failover", S(10), |e| {
        e["kind"] == "active_changed" && e["family"] == "ipv4" && e["to"] == "secondary"
    });
    let ev = seen.last().unwrap();
    assert_eq!(ev["observe"], true, "{ev}");
    let s = a.wait_for("status shows the decision", S(5), |s| {
        s.observe
            .as_ref()
            .is_some_and(|o| o.would_route.ipv4.as_deref() == Some("secondary"))
    });
    assert!(s.observe.unwrap().installs.contains("probe table"));
    // Give a route restore loop, if any, time to show.
    std::thread::sleep(S(2));
    let (main_after, rules_after) = routing(&lab);
    assert_eq!(
        main_before, main_after,
        "observe mode changed the main table or a sysctl"
    );
    assert_eq!(rules_ready, rules_after, "observe mode changed the rules");
    let restores = a
        .logged_events()
        .iter()
        .filter(|e| e["kind"] == "route_restored")
        .count();
    assert_eq!(restores, 0, "no route restore loop:\n{}", a.log_text());

    // Observe -> enforce by reload: the route goes where the decision is.
    lab.write_config("[agent]\nmode = \"enforce\"\n").unwrap();
    a.child
        .as_mut()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGHUP);
    for f in uplinkd::config::Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let s = a.wait_for("enforce mode", S(5), |s| s.mode == "enforce");
    assert!(s.observe.is_none());
}
