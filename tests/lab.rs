//! The lab itself: topology, failure injection (each with its undo), traffic
//! measurement, config generation and cleanup. Needs root (CI is root); a
//! test that cannot build its lab fails, it is never skipped.

use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

use uplink_lab::{
    self, netns, sink, transit_target, Family, Lab, LabSpec, PingOpts, StreamSpec, Uplink, TRANSITS,
};

const OK_TIMEOUT: Duration = Duration::from_secs(3);
const FAIL_TIMEOUT: Duration = Duration::from_millis(600);

fn build(spec: &LabSpec) -> Lab {
    Lab::build(spec).unwrap_or_else(|e| panic!("build lab: {e}"))
}

/// Per-uplink source routing in the server, so the test can send through
/// either uplink without a default route: `from <eth addr> lookup 100+i`,
/// default via that uplink's gateway in that table. Works with the strict
/// rp_filter the lab sets on the server (the reverse lookup matches the
/// `from` rule too).
fn add_uplink_tables(lab: &Lab) {
    let srv = lab.server_ns();
    for u in Uplink::ALL {
        let table = (100 + u.index()).to_string();
        for f in Family::ALL {
            let flag = if f == Family::V4 { "-4" } else { "-6" };
            let src = u.server_addr(f).to_string();
            let gw = u.gateway(f).to_string();
            lab.ip(
                &srv,
                &[
                    flag, "rule", "add", "from", &src, "table", &table, "pref", "100",
                ],
            )
            .unwrap();
            lab.ip(
                &srv,
                &[
                    flag,
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw,
                    "dev",
                    u.interface(),
                    "table",
                    &table,
                ],
            )
            .unwrap();
        }
    }
}

fn via(u: Uplink, family: Family, timeout: Duration) -> PingOpts {
    PingOpts {
        device: Some(u.interface().to_string()),
        source: Some(u.server_addr(family)),
        timeout,
        interval: Duration::from_millis(100),
    }
}

/// Whether `dst` answers the server through `u`.
fn reachable(lab: &Lab, u: Uplink, dst: IpAddr, expect: bool) -> bool {
    let f = Family::of(&dst);
    let t = if expect { OK_TIMEOUT } else { FAIL_TIMEOUT };
    lab.ping(&lab.server_ns(), dst, &via(u, f, t))
        .unwrap()
        .is_some()
}

fn assert_reach(lab: &Lab, u: Uplink, dst: IpAddr, expect: bool, why: &str) {
    assert_eq!(
        reachable(lab, u, dst, expect),
        expect,
        "{why}: {dst} through {} should be {}",
        u.name(),
        if expect { "reachable" } else { "unreachable" }
    );
}

fn all_targets() -> Vec<IpAddr> {
    let mut v = Vec::new();
    for f in Family::ALL {
        for i in 0..TRANSITS {
            v.push(transit_target(i, f));
        }
        v.push(sink(f));
    }
    v
}

fn assert_all_healthy(lab: &Lab, why: &str) {
    for u in Uplink::ALL {
        for f in Family::ALL {
            assert_reach(lab, u, u.gateway(f), true, why);
        }
        for t in all_targets() {
            assert_reach(lab, u, t, true, why);
        }
    }
}

#[test]
fn topology_forwards_through_each_uplink() {
    let lab = build(&LabSpec::default());
    // Same ifindex on both ends of each server uplink (linkwatch treats it
    // like a physical NIC).
    for u in Uplink::ALL {
        let s = lab.server_link(u).unwrap();
        let r = lab
            .link(&lab.router_ns(u), uplink_lab::ROUTER_DOWNLINK)
            .unwrap();
        assert_eq!(s.ifindex, u.ifindex());
        assert_eq!(r.ifindex, u.ifindex());
        assert_eq!(s.link_index, Some(s.ifindex));
        assert!(s.carrier() && s.operstate == "UP", "{s:?}");
    }
    // No default route unless asked.
    for f in Family::ALL {
        assert_eq!(lab.default_route(f).unwrap(), None);
    }
    add_uplink_tables(&lab);
    assert_all_healthy(&lab, "fresh lab");
    // Namespaces carry our prefix and pid.
    for ns in lab.namespaces() {
        assert_eq!(netns::owner_pid(&ns), Some(std::process::id()), "{ns}");
    }
}

#[test]
fn default_route_when_asked() {
    let lab = build(&LabSpec {
        server_default_route: Some(Uplink::Secondary),
        server_default_metric: 42,
        ..LabSpec::default()
    });
    for f in Family::ALL {
        assert_eq!(
            lab.default_route(f).unwrap(),
            Some((Uplink::Secondary.gateway(f), "eth1".to_string()))
        );
        let routes = lab.default_routes(f).unwrap();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0].metric, 42);
    }
    lab.set_server_default(Uplink::Primary, 10).unwrap();
    assert_eq!(
        lab.default_route(Family::V6).unwrap(),
        Some((Uplink::Primary.gateway(Family::V6), "eth0".to_string()))
    );
    lab.delete_server_default(Family::V6, 10).unwrap();
    lab.delete_server_default(Family::V6, 10).unwrap(); // idempotent
    assert_eq!(
        lab.default_route(Family::V6).unwrap(),
        Some((Uplink::Secondary.gateway(Family::V6), "eth1".to_string()))
    );
}

#[test]
fn carrier_down_and_up() {
    let lab = build(&LabSpec::default());
    add_uplink_tables(&lab);
    for _ in 0..2 {
        lab.carrier_down(Uplink::Primary).unwrap(); // idempotent
    }
    lab.wait_carrier(Uplink::Primary, false, Duration::from_secs(2))
        .unwrap();
    assert!(!lab.server_link(Uplink::Primary).unwrap().carrier());
    assert!(lab.server_link(Uplink::Secondary).unwrap().carrier());
    assert_reach(
        &lab,
        Uplink::Secondary,
        sink(Family::V4),
        true,
        "other uplink",
    );
    for _ in 0..2 {
        lab.carrier_up(Uplink::Primary).unwrap();
    }
    lab.wait_carrier(Uplink::Primary, true, Duration::from_secs(2))
        .unwrap();
    assert_all_healthy(&lab, "after carrier_up");
}

#[test]
fn gateway_dead_and_alive() {
    let lab = build(&LabSpec::default());
    add_uplink_tables(&lab);
    for _ in 0..2 {
        lab.gateway_dead(Uplink::Primary).unwrap();
    }
    assert!(lab.server_link(Uplink::Primary).unwrap().carrier());
    for f in Family::ALL {
        assert_reach(
            &lab,
            Uplink::Primary,
            Uplink::Primary.gateway(f),
            false,
            "gateway dead",
        );
        assert_reach(&lab, Uplink::Primary, sink(f), false, "gateway dead");
        assert_reach(&lab, Uplink::Secondary, sink(f), true, "other uplink");
    }
    // ARP/ND are dropped too: once the server forgets the gateway's address
    // it cannot learn it again.
    lab.ip(&lab.server_ns(), &["neigh", "flush", "dev", "eth0"])
        .unwrap();
    assert_reach(
        &lab,
        Uplink::Primary,
        Uplink::Primary.gateway(Family::V4),
        false,
        "gateway dead",
    );
    let neigh = lab
        .ip(&lab.server_ns(), &["-4", "neigh", "show", "dev", "eth0"])
        .unwrap();
    assert!(
        !neigh.contains("REACHABLE") && !neigh.contains("lladdr"),
        "ARP must fail while the gateway is dead: {neigh}"
    );
    for _ in 0..2 {
        lab.gateway_alive(Uplink::Primary).unwrap();
    }
    assert_all_healthy(&lab, "after gateway_alive");
}

/// The server's service address is reached from the sink while the
/// primary's router has its link to the server (near route), after that link
/// lost carrier or its gateway died (handed to the other router over x0),
/// and after the primary's upstream died (inet's far route).
#[test]
fn service_address_is_routed_to_the_server_through_both_routers() {
    let lab = build(&LabSpec {
        // The server answers through the secondary whichever way the
        // request came: loose rp_filter, as uplinkd sets on its uplinks.
        server_default_route: Some(Uplink::Secondary),
        server_rp_filter: Some(2),
        ..LabSpec::default()
    });
    let reach = |why: &str| {
        for f in Family::ALL {
            let dst = uplink_lab::service(f);
            let r = lab
                .ping(&lab.inet_ns(), dst, &PingOpts::timeout(OK_TIMEOUT))
                .unwrap();
            assert!(r.is_some(), "{dst} unreachable from the sink: {why}");
        }
    };
    let via_router = |u: Uplink, why: &str| {
        let out = lab
            .ip(&lab.router_ns(u), &["-4", "route", "get", "198.18.0.1"])
            .unwrap();
        assert!(
            out.contains(why),
            "{} route to the service: {out}",
            u.name()
        );
    };
    reach("all up");
    via_router(Uplink::Primary, "dev down0");
    lab.carrier_down(Uplink::Primary).unwrap();
    via_router(Uplink::Primary, "dev x0");
    reach("primary's link to the server down");
    lab.carrier_up(Uplink::Primary).unwrap();
    lab.wait_carrier(Uplink::Primary, true, OK_TIMEOUT).unwrap();
    via_router(Uplink::Primary, "dev down0");
    lab.gateway_dead(Uplink::Primary).unwrap();
    via_router(Uplink::Primary, "dev x0");
    reach("primary's gateway dead");
    lab.gateway_alive(Uplink::Primary).unwrap();
    via_router(Uplink::Primary, "dev down0");
    lab.upstream_dead(Uplink::Primary).unwrap();
    reach("primary's upstream dead");
    lab.upstream_alive(Uplink::Primary).unwrap();
    reach("all up again");
}

#[test]
fn upstream_dead_and_alive() {
    let lab = build(&LabSpec::default());
    add_uplink_tables(&lab);
    for _ in 0..2 {
        lab.upstream_dead(Uplink::Primary).unwrap();
    }
    for f in Family::ALL {
        assert_reach(
            &lab,
            Uplink::Primary,
            Uplink::Primary.gateway(f),
            true,
            "upstream dead",
        );
        assert_reach(
            &lab,
            Uplink::Primary,
            transit_target(0, f),
            false,
            "upstream dead",
        );
        assert_reach(&lab, Uplink::Primary, sink(f), false, "upstream dead");
        assert_reach(
            &lab,
            Uplink::Secondary,
            transit_target(0, f),
            true,
            "other uplink",
        );
    }
    for _ in 0..2 {
        lab.upstream_alive(Uplink::Primary).unwrap();
    }
    assert_all_healthy(&lab, "after upstream_alive");
}

#[test]
fn transit_dead_and_alive() {
    let lab = build(&LabSpec::default());
    add_uplink_tables(&lab);
    for _ in 0..2 {
        lab.transit_dead(1).unwrap();
    }
    for u in Uplink::ALL {
        for f in Family::ALL {
            assert_reach(&lab, u, transit_target(1, f), false, "transit-b dead");
            assert_reach(&lab, u, transit_target(0, f), true, "transit-a alive");
            assert_reach(&lab, u, transit_target(2, f), true, "transit-c alive");
        }
    }
    for _ in 0..2 {
        lab.transit_alive(1).unwrap();
    }
    assert_all_healthy(&lab, "after transit_alive");
}

#[test]
fn random_loss_drops_echo_requests_only() {
    let lab = build(&LabSpec {
        server_default_route: Some(Uplink::Primary),
        ..LabSpec::default()
    });
    add_uplink_tables(&lab);
    let srv = lab.server_ns();
    lab.random_loss(Uplink::Primary, 50.0).unwrap();
    lab.random_loss(Uplink::Primary, 50.0).unwrap(); // replaces
    let opts = |f| via(Uplink::Primary, f, Duration::from_millis(300));
    for f in Family::ALL {
        for dst in [Uplink::Primary.gateway(f), transit_target(0, f)] {
            let n = lab
                .ping_burst(&srv, dst, &opts(f), 200, Duration::from_micros(500))
                .unwrap();
            assert!(
                (40..=160).contains(&n),
                "{dst}: {n} of 200 answered at 50 % loss"
            );
        }
        let other = lab
            .ping_burst(
                &srv,
                Uplink::Secondary.gateway(f),
                &via(Uplink::Secondary, f, Duration::from_millis(300)),
                100,
                Duration::from_micros(500),
            )
            .unwrap();
        assert_eq!(other, 100, "the other uplink is unaffected");
    }
    // 100 %: no echo gets through, but ARP/ND and other traffic do, even
    // with cold neighbour caches.
    lab.random_loss(Uplink::Primary, 100.0).unwrap();
    for f in Family::ALL {
        assert_reach(
            &lab,
            Uplink::Primary,
            Uplink::Primary.gateway(f),
            false,
            "100 % loss",
        );
    }
    lab.ip(&srv, &["neigh", "flush", "dev", "eth0"]).unwrap();
    for f in Family::ALL {
        let stream = lab
            .udp_stream(&StreamSpec {
                family: f,
                ..StreamSpec::default()
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let r = stream.stop();
        assert!(r.sent > 1000, "{r:?}");
        assert_eq!(
            r.received, r.transmitted,
            "UDP through a 100 % echo-loss router: {r:?}"
        );
        assert_eq!(r.send_errors, 0, "{r:?}");
    }
    lab.clear_loss(Uplink::Primary).unwrap();
    lab.clear_loss(Uplink::Primary).unwrap();
    for f in Family::ALL {
        let n = lab
            .ping_burst(
                &srv,
                Uplink::Primary.gateway(f),
                &opts(f),
                100,
                Duration::from_micros(500),
            )
            .unwrap();
        assert_eq!(n, 100, "after clear_loss");
    }
    assert!(lab.random_loss(Uplink::Primary, 101.0).is_err());
}

#[test]
fn ipv6_broken_and_fixed() {
    let lab = build(&LabSpec::default());
    add_uplink_tables(&lab);
    for _ in 0..2 {
        lab.ipv6_broken(Uplink::Primary).unwrap();
    }
    let p = Uplink::Primary;
    assert_reach(&lab, p, p.gateway(Family::V4), true, "v6 broken, v4 fine");
    assert_reach(
        &lab,
        p,
        transit_target(0, Family::V4),
        true,
        "v6 broken, v4 fine",
    );
    assert_reach(&lab, p, p.gateway(Family::V6), false, "v6 broken");
    assert_reach(&lab, p, transit_target(0, Family::V6), false, "v6 broken");
    assert_reach(
        &lab,
        Uplink::Secondary,
        transit_target(0, Family::V6),
        true,
        "other uplink",
    );
    // ND still works: with a cold cache the gateway's address is learned.
    lab.ip(&lab.server_ns(), &["-6", "neigh", "flush", "dev", "eth0"])
        .unwrap();
    assert_reach(&lab, p, p.gateway(Family::V6), false, "v6 broken");
    let neigh = lab
        .ip(
            &lab.server_ns(),
            &["-6", "neigh", "show", "2001:db8:1::1", "dev", "eth0"],
        )
        .unwrap();
    assert!(neigh.contains("lladdr"), "ND must still resolve: {neigh:?}");
    for _ in 0..2 {
        lab.ipv6_fixed(Uplink::Primary).unwrap();
    }
    assert_all_healthy(&lab, "after ipv6_fixed");
}

#[test]
fn udp_stream_counts_outage() {
    let lab = build(&LabSpec {
        server_default_route: Some(Uplink::Primary),
        ..LabSpec::default()
    });
    for f in Family::ALL {
        // Nothing breaks: nothing lost.
        let s = lab
            .udp_stream(&StreamSpec {
                family: f,
                ..StreamSpec::default()
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let r = s.stop();
        assert!(r.sent >= 7000, "{r:?}");
        // Everything transmitted arrived. Slots skipped while the sender was
        // not scheduled (an overloaded test host) are the only excuse.
        assert_eq!(r.send_errors, 0, "{r:?}");
        assert_eq!(r.received, r.transmitted, "{f}: {:?}", r.gaps);
        assert!(r.stalls.iter().all(|s| !s.in_sendto), "{:?}", r.stalls);
        assert!(r.network_gaps().is_empty(), "{f}: {:?}", r.gaps);
        if r.stalls.is_empty() {
            assert_eq!(r.received, r.sent);
            assert!(r.gaps.is_empty() && r.longest_gap == Duration::ZERO);
        }

        // The route disappears for ~100 ms: one gap of about that length.
        let s = lab
            .udp_stream(&StreamSpec {
                family: f,
                ..StreamSpec::default()
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        lab.delete_server_default(f, 10).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        lab.set_server_default(Uplink::Primary, 10).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let r = s.stop();
        assert!(r.send_errors > 0, "{r:?}");
        // One outage of about 100 ms (10,000/s: 1,000 slots), apart from
        // sender stalls on an overloaded host.
        let big: Vec<_> = r.network_gaps().into_iter().filter(|g| g.1 >= 50).collect();
        assert_eq!(big.len(), 1, "{f}: one outage expected: {r:?}");
        assert!(
            (800..=4000).contains(&big[0].1),
            "{f}: outage of {} slots, expected ~1000: {r:?}",
            big[0].1
        );
        assert!(r.longest_gap >= Duration::from_millis(80), "{r:?}");
        assert_eq!(r.lost(), r.sent - r.received);
    }
}

#[test]
fn noise_toggles_and_cleans_up() {
    let lab = build(&LabSpec::default());
    let names;
    {
        let noise = lab.noise(Duration::from_millis(20)).unwrap();
        names = noise.namespaces().clone();
        for n in &names {
            assert!(netns::exists(n), "{n}");
        }
        let a = lab.link(&names[0], uplink_lab::NOISE_DEV).unwrap();
        let b = lab.link(&names[1], uplink_lab::NOISE_DEV).unwrap();
        assert_eq!(
            a.ifindex, b.ifindex,
            "noise veth has the same ifindex on both ends"
        );
        std::thread::sleep(Duration::from_millis(400));
        assert!(noise.toggles() >= 8, "toggles: {}", noise.toggles());
        assert!(noise.errors().is_empty(), "{:?}", noise.errors());
    }
    for n in &names {
        assert!(!netns::exists(n), "{n} left behind");
    }
    // The lab itself is untouched.
    assert!(lab.server_link(Uplink::Primary).unwrap().carrier());
}

#[test]
fn namespaces_gone_after_drop_and_after_panic() {
    let lab = build(&LabSpec {
        check_reachability: false,
        ..LabSpec::default()
    });
    let _noise = lab.noise(Duration::from_millis(50)).unwrap();
    let names = lab.namespaces();
    assert_eq!(names.len(), 4 + TRANSITS + 2, "{names:?}");
    let dir = lab.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(lab); // before the noise guard: the guard copes
    for n in &names {
        assert!(!netns::exists(n), "{n} left behind after drop");
    }
    assert!(!dir.exists());

    let seen = Mutex::new(Vec::new());
    let r = catch_unwind(AssertUnwindSafe(|| {
        let lab = build(&LabSpec {
            check_reachability: false,
            ..LabSpec::default()
        });
        *seen.lock().unwrap() = lab.namespaces();
        panic!("boom inside a test");
    }));
    assert!(r.is_err());
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 4 + TRANSITS);
    for n in &seen {
        assert!(!netns::exists(n), "{n} left behind after panic");
    }
}

#[test]
fn foreign_namespaces_are_refused() {
    let lab = build(&LabSpec {
        check_reachability: false,
        ..LabSpec::default()
    });
    assert!(matches!(
        lab.exec("some-other-ns", &["true"]),
        Err(uplink_lab::LabError::ForeignNamespace(_))
    ));
    assert!(lab.exec(&lab.server_ns(), &["true"]).is_ok());
    let out = lab
        .exec(
            &lab.inet_ns(),
            &["ip", "-4", "-o", "addr", "show", "dev", "lo"],
        )
        .unwrap();
    assert!(out.contains("198.19.1.1"), "{out}");
}

#[test]
fn config_for_the_lab_parses() {
    let lab = build(&LabSpec {
        check_reachability: false,
        ..LabSpec::default()
    });
    let text = lab.config_toml("[policy]\nfailback_after = \"5s\"\n\n[agent]\nroute_metric = 20\n");
    let cfg = uplinkd::config::parse(&text, "lab config")
        .unwrap_or_else(|e| panic!("lab config does not parse: {e:?}\n{text}"));
    assert_eq!(cfg.agent.socket, lab.socket_path());
    assert_eq!(cfg.agent.route_metric, 20);
    assert_eq!(cfg.policy.failback_after, Duration::from_secs(5));
    let names: Vec<_> = cfg.uplinks.iter().map(|u| u.interface.as_str()).collect();
    assert_eq!(names, ["eth0", "eth1"]);
    assert_eq!(
        cfg.uplinks[1].gateway6,
        Some("2001:db8:2::1".parse().unwrap())
    );
    assert_eq!(cfg.transits.len(), 4);
    assert_eq!(cfg.transits[3].name, "transit-d");
    assert_eq!(
        cfg.transits[3].targets,
        vec![transit_target(3, Family::V4), transit_target(3, Family::V6)]
    );
    assert!(lab.try_config_toml("[policy").is_err());
    let path = lab.write_config("").unwrap();
    assert!(path.starts_with(lab.dir()));
}

#[test]
fn stale_namespaces_of_dead_labs_are_removed() {
    // A pid that surely ran and is gone (reaped).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let stale = format!("ul-{pid:x}-999-srv");
    let out = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let live = build(&LabSpec {
        check_reachability: false,
        ..LabSpec::default()
    });
    let r = netns::cleanup_stale();
    assert!(r.deleted.contains(&stale), "{r:?}");
    assert!(!netns::exists(&stale));
    for n in live.namespaces() {
        assert!(netns::exists(&n), "a live lab's namespace {n} was deleted");
    }
}

/// The README's first command, end to end: the demo builds its lab, runs
/// the real uplinkd, plays every step, and each step ends on the expected
/// uplink (both families, seen in the daemon's events) with an outage
/// figure from both streams; nothing is left behind. No timing asserts: the
/// figures are the bench's business.
#[test]
fn demo_runs_end_to_end() {
    use uplink_lab::demo::{run_demo, Cancel, DemoOpts};
    let opts = DemoOpts {
        uplinkd: Some(env!("CARGO_BIN_EXE_uplinkd").into()),
    };
    let report = run_demo(&opts, &Cancel::new()).unwrap_or_else(|e| panic!("demo: {e}"));
    let expected = [
        ("primary carrier loss", Uplink::Secondary),
        ("primary carrier back, failback", Uplink::Primary),
        ("primary gateway dead", Uplink::Secondary),
        ("primary gateway alive, failback", Uplink::Primary),
        ("primary upstream dead", Uplink::Secondary),
        ("primary upstream back, failback", Uplink::Primary),
        ("primary gateway dead again", Uplink::Secondary),
        (
            "secondary dead too (fail static), then primary back",
            Uplink::Primary,
        ),
    ];
    let titles: Vec<&str> = report.steps.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(
        titles,
        expected.iter().map(|e| e.0).collect::<Vec<_>>(),
        "{report:#?}"
    );
    for (step, (title, to)) in report.steps.iter().zip(expected) {
        assert_eq!(step.expect, to, "{title}");
        // The TCP connections opened before the first failure (from the
        // service address) still deliver after every step.
        assert_eq!(step.tcp.len(), 2, "{title}: {:?}", step.tcp);
        assert!(
            step.tcp.iter().all(|t| t.delivering),
            "{title}: {:?}",
            step.tcp
        );
        for f in Family::ALL {
            let sw = step
                .switches
                .iter()
                .find(|s| s.family == f)
                .unwrap_or_else(|| panic!("{title}: no {f} switch in the timeline: {step:#?}"));
            assert_eq!(sw.to, to.name(), "{title}: {f}");
            // Only switches after the injection are taken (so >= 0 says
            // nothing); a failback must wait failback_after (5 s in the demo).
            assert!(sw.after_ms.is_finite(), "{step:#?}");
            if title.ends_with("failback") {
                let min = humantime::parse_duration(uplink_lab::demo::DEMO_FAILBACK_AFTER)
                    .unwrap()
                    .as_secs_f64()
                    * 1000.0;
                assert!(
                    sw.after_ms >= min,
                    "{title}: {f} failback {} ms after the recovery (failback_after {min} ms)",
                    sw.after_ms
                );
            }
            let o = step
                .outages
                .iter()
                .find(|o| o.family == f)
                .unwrap_or_else(|| panic!("{title}: no {f} outage figure: {step:#?}"));
            assert!(o.sent > 0, "{title}: the {f} stream sent nothing");
            // The outage is one of the stream's gaps, its losses among what
            // it sent (a Duration is never negative: >= 0 says nothing).
            assert!(
                o.outage_ms.is_finite() && o.outage_ms <= o.raw_ms + 1e-6,
                "{title}: {f} outage above the longest gap: {o:#?}"
            );
            assert!(o.lost <= o.sent, "{title}: {o:#?}");
        }
        assert!(!step.text.is_empty(), "{title}");
    }
    let last = report.steps.last().unwrap();
    assert!(last.fail_static, "fail static not seen: {last:#?}");
    assert_eq!(
        last.switches_while_static,
        Some(0),
        "switched between dead uplinks: {last:#?}"
    );
    // Fail static keeps traffic on the dead secondary until the primary is
    // back: that outage is real and must be measured as one.
    assert!(last.outages.iter().all(|o| o.lost > 0), "{last:#?}");
    assert!(report.first_decision_ms.is_some());
    assert!(!report.namespaces.is_empty());
    for n in &report.namespaces {
        assert!(!netns::exists(n), "{n} left behind by the demo");
    }
}

/// The bench's probe-load and policing rows stand on these: pings to a
/// router and to a transit are counted where they arrive, the policer lets
/// a burst and then its rate through (and counts what it dropped), and the
/// loss rules count their drops.
#[test]
fn load_counters_policing_and_loss_counters_count_what_they_see() {
    use uplink_lab::load::class;
    let lab = build(&LabSpec {
        server_default_route: Some(Uplink::Primary),
        ..LabSpec::default()
    });
    add_uplink_tables(&lab);
    let srv = lab.server_ns();
    let opts = |f| via(Uplink::Primary, f, Duration::from_millis(300));
    let spacing = Duration::from_micros(500);
    lab.start_load_count().unwrap();
    for f in Family::ALL {
        let gw = lab
            .ping_burst(&srv, Uplink::Primary.gateway(f), &opts(f), 200, spacing)
            .unwrap();
        assert_eq!(gw, 200, "{f} gateway");
        let t = lab
            .ping_burst(&srv, transit_target(0, f), &opts(f), 100, spacing)
            .unwrap();
        assert_eq!(t, 100, "{f} transit-a");
    }
    let loads = lab.read_load_count().unwrap();
    let names: Vec<&str> = loads.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(
        names,
        [
            "ra",
            "rb",
            "transit-a",
            "transit-b",
            "transit-c",
            "transit-d"
        ]
    );
    let (ra, rb, ta) = (&loads[0], &loads[1], &loads[2]);
    assert_eq!(ra.get(class::V4_PINGS).unwrap(), 200, "{ra:?}");
    assert_eq!(ra.get(class::V6_PINGS).unwrap(), 200, "{ra:?}");
    assert!(ra.get(class::V4_TO_ROUTER).unwrap() >= 200, "{ra:?}");
    assert_eq!(rb.get(class::V4_PINGS).unwrap(), 0, "{rb:?}");
    assert_eq!(ta.get(class::V4_TRANSIT).unwrap(), 100, "{ta:?}");
    assert_eq!(ta.get(class::V6_TRANSIT).unwrap(), 100, "{ta:?}");
    assert_eq!(loads[3].get(class::V4_TRANSIT).unwrap(), 0);
    // Read once: the counting rules are gone.
    assert!(lab.read_load_count().is_err(), "counters read twice");

    lab.police_self(Uplink::Primary, 5).unwrap();
    for f in Family::ALL {
        // 200 pings in 0.1 s: the burst (5) and a packet or so more.
        let n = lab
            .ping_burst(&srv, Uplink::Primary.gateway(f), &opts(f), 200, spacing)
            .unwrap();
        assert!(n <= 20, "{f}: {n} of 200 answered through a 5/s policer");
        let other = lab
            .ping_burst(
                &srv,
                Uplink::Secondary.gateway(f),
                &via(Uplink::Secondary, f, Duration::from_millis(300)),
                100,
                spacing,
            )
            .unwrap();
        assert_eq!(other, 100, "{f}: the other router is not policed");
        // Forwarded traffic is not policed.
        let t = lab
            .ping_burst(&srv, transit_target(0, f), &opts(f), 100, spacing)
            .unwrap();
        assert_eq!(t, 100, "{f}: forwarding through the policing router");
    }
    let c = lab.police_counters(Uplink::Primary).unwrap();
    assert_eq!(c["seen icmp echo"], 200, "{c:?}");
    assert_eq!(c["seen icmpv6 echo"], 200, "{c:?}");
    assert!(c["policed icmp echo"] >= 180, "{c:?}");
    assert!(
        c.contains_key("policed arp") && c.contains_key("seen nd"),
        "{c:?}"
    );
    lab.clear_police(Uplink::Primary).unwrap();
    assert!(lab.police_counters(Uplink::Primary).is_err(), "cleared");
    let gw = Uplink::Primary.gateway(Family::V4);
    let n = lab
        .ping_burst(&srv, gw, &opts(Family::V4), 200, spacing)
        .unwrap();
    assert_eq!(n, 200, "policing cleared");

    lab.random_loss(Uplink::Primary, 50.0).unwrap();
    let n = lab
        .ping_burst(&srv, gw, &opts(Family::V4), 200, spacing)
        .unwrap();
    let (pings, echoes) = lab.loss_dropped(Uplink::Primary).unwrap();
    assert_eq!(pings, 200 - n as u64, "dropped = not answered");
    assert_eq!(echoes, 0);
    lab.clear_loss(Uplink::Primary).unwrap();
    assert!(lab.loss_dropped(Uplink::Primary).is_err(), "cleared");
    lab.tcp_loss(Uplink::Primary, 2).unwrap();
    assert_eq!(lab.tcp_loss_dropped(Uplink::Primary).unwrap(), 0);
    lab.clear_tcp_loss(Uplink::Primary).unwrap();
    lab.destroy().unwrap();
}
