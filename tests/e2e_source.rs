//! End-to-end: the way back. The lab's server has its service address on
//! its loopback, routed to it by both routers (each handing it to the other
//! when its own link to the server is gone); the lab config sets it as
//! `agent.source4`/`source6`. The default routes uplinkd installs carry it
//! as their source, so a connection the server opens uses it and survives a
//! failover; the address leaving the host is reported and the routes stay
//! valid; `--check` refuses a source of the wrong family.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use uplink_lab::{service, Lab, TcpFlow, TcpSpec, Uplink};
use uplinkd::config::Family;

const S: fn(u64) -> Duration = Duration::from_secs;

/// The server's default routes of `family` in the main table uplinkd
/// installed (proto 85): metric -> source.
fn our_routes(lab: &Lab, f: Family) -> Vec<(u32, Option<std::net::IpAddr>)> {
    lab.default_routes(f)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.protocol.as_deref(), Some("85" | "uplinkd")))
        .map(|r| (r.metric, r.prefsrc))
        .collect()
}

/// Wait until the managed route (10) and the kernel fallback routes (11,
/// 12) of `f` exist, each with source `src`.
fn wait_routes_with(lab: &Lab, a: &Agent, f: Family, src: Option<std::net::IpAddr>) {
    let want = vec![(10, src), (11, src), (12, src)];
    let deadline = Instant::now() + S(10);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = our_routes(lab, f);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{f}: wanted routes {want:?}, have {last:?}\nlog:\n{}",
        a.log_text()
    );
}

#[test]
fn default_routes_carry_the_service_address_and_probe_tables_do_not() {
    let lab = lab();
    let a = settled(&lab, "");
    for f in Family::ALL {
        wait_routes_with(&lab, &a, f, Some(service(f)));
        // The probe tables keep the uplink's own address: no src.
        for table in ["1000", "1001"] {
            let out = lab
                .ip(
                    &lab.server_ns(),
                    &[
                        "-j",
                        if f == Family::V4 { "-4" } else { "-6" },
                        "route",
                        "show",
                        "table",
                        table,
                    ],
                )
                .unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            let routes = v.as_array().unwrap();
            assert!(!routes.is_empty(), "{f} table {table}: {out}");
            assert!(
                routes.iter().all(|r| r.get("prefsrc").is_none()),
                "{f} table {table}: {out}"
            );
        }
    }
    let s = a.status().unwrap();
    let src = s.source.ipv4.expect("status shows the ipv4 source");
    assert_eq!(src.address, service(Family::V4));
    assert!(src.present && src.reason.is_none());
    assert!(s.source.ipv6.is_some_and(|s| s.present));
    let m = a.client().metrics().unwrap();
    for f in ["ipv4", "ipv6"] {
        assert!(
            m.lines()
                .any(|l| l == format!("uplinkd_source_address_present{{family=\"{f}\"}} 1")),
            "{m}"
        );
    }
}

/// A TCP connection per family from the server to the sink, with the source
/// the server's routes give it; delivering before `fail`, and still (new
/// bytes arrive) after the switch to the secondary it causes.
fn tcp_survives(fail: impl FnOnce(&Lab)) {
    let lab = lab();
    let a = settled(&lab, "");
    for f in Family::ALL {
        wait_routes_with(&lab, &a, f, Some(service(f)));
    }
    let flows: Vec<(Family, TcpFlow)> = Family::ALL
        .iter()
        .map(|f| {
            let flow = TcpFlow::start(
                &lab,
                &TcpSpec {
                    family: *f,
                    ..TcpSpec::default()
                },
            )
            .unwrap();
            (*f, flow)
        })
        .collect();
    for (f, flow) in &flows {
        // The kernel chose the source from the route: the service address.
        assert_eq!(flow.local_addr().ip(), service(*f), "{f}");
        assert!(flow.wait_delivered(0, 10_000, S(10)), "{f}: not delivering");
    }
    fail(&lab);
    a.wait_for("both families on the secondary", S(20), |s| {
        Family::ALL
            .iter()
            .all(|f| active(s, *f) == Some(Uplink::Secondary.name()))
    });
    for (f, flow) in &flows {
        let now = flow.delivered();
        assert!(
            flow.wait_delivered(now, 20_000, S(30)),
            "{f}: the TCP connection from {} delivered nothing more after the failover (stalled {:?})\nlog:\n{}",
            flow.local_addr(),
            flow.last_delivery().map(|t| t.elapsed()),
            a.log_text()
        );
    }
}

#[test]
fn tcp_from_the_service_address_survives_carrier_loss() {
    tcp_survives(|lab| lab.carrier_down(Uplink::Primary).unwrap());
}

#[test]
fn tcp_from_the_service_address_survives_a_dead_gateway() {
    tcp_survives(|lab| lab.gateway_dead(Uplink::Primary).unwrap());
}

#[test]
fn tcp_from_the_service_address_survives_a_dead_upstream() {
    tcp_survives(|lab| lab.upstream_dead(Uplink::Primary).unwrap());
}

fn source_json(a: &Agent, f: &str) -> Value {
    a.client().status_json().unwrap_or(Value::Null)["source"][f].clone()
}

fn wait_source(a: &Agent, f: &str, present: bool) -> Value {
    let deadline = Instant::now() + S(10);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = source_json(a, f);
        if last["present"] == present {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{f} source never present={present}: {last}\nlog:\n{}",
        a.log_text()
    );
}

#[test]
fn a_service_address_removed_while_running_is_reported_and_restored() {
    let lab = lab();
    let a = settled(&lab, "");
    let srv = lab.server_ns();
    let cidr = |f: Family| match f {
        Family::V4 => format!("{}/32", service(f)),
        Family::V6 => format!("{}/128", service(f)),
    };
    for f in Family::ALL {
        wait_routes_with(&lab, &a, f, Some(service(f)));
    }
    for f in Family::ALL {
        lab.ip(&srv, &["addr", "del", &cidr(f), "dev", "lo"])
            .unwrap();
    }
    for f in Family::ALL {
        let s = wait_source(&a, f.name(), false);
        assert_eq!(s["reason"], "source_missing", "{s}");
        assert_eq!(s["address"], service(f).to_string());
        // The routes stay, without the source the kernel would refuse.
        wait_routes_with(&lab, &a, f, None);
    }
    // Still routing: the gateway answers through the managed route.
    let m = a.client().metrics().unwrap();
    for f in ["ipv4", "ipv6"] {
        assert!(
            m.lines()
                .any(|l| l == format!("uplinkd_source_address_present{{family=\"{f}\"}} 0")),
            "{m}"
        );
    }
    let gone: Vec<Value> = a
        .logged_events()
        .into_iter()
        .filter(|e| e["kind"] == "source_address" && e["present"] == false)
        .collect();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(a
        .log_text()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("source_missing")));
    let out = a.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("source_missing"), "{text}");

    for f in Family::ALL {
        let nodad: &[&str] = if f == Family::V6 { &["nodad"] } else { &[] };
        let mut args = vec!["addr", "add"];
        let c = cidr(f);
        args.extend([c.as_str(), "dev", "lo"]);
        args.extend(nodad);
        lab.ip(&srv, &args).unwrap();
    }
    for f in Family::ALL {
        let s = wait_source(&a, f.name(), true);
        assert!(s["reason"].is_null(), "{s}");
        wait_routes_with(&lab, &a, f, Some(service(f)));
    }
    let back = a
        .logged_events()
        .into_iter()
        .filter(|e| e["kind"] == "source_address" && e["present"] == true)
        .count();
    assert_eq!(back, 2);
    // No failover came of it.
    assert!(a.switches(Family::V4).len() <= 1 && a.switches(Family::V6).len() <= 1);
}

fn wait_log(a: &Agent, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + S(10);
    loop {
        let log = a.log_text();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {count} x {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reload sets, changes or removes the source: the routes follow; a
/// source that is not on the host is refused and nothing changes.
#[test]
fn a_reload_sets_the_source_and_refuses_one_not_on_the_host() {
    let lab = Lab::build(&uplink_lab::LabSpec {
        service_source: false,
        ..uplink_lab::LabSpec::default()
    })
    .unwrap();
    let mut a = settled(&lab, "");
    for f in Family::ALL {
        wait_routes_with(&lab, &a, f, None);
    }
    let hup = |a: &mut Agent| {
        a.child
            .as_mut()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGHUP)
    };
    let with = |extra: &str| lab.config_toml(extra);
    // Not on the host: refused, naming the key; routes unchanged.
    std::fs::write(
        a.config_path(),
        with("[agent]\nsource4 = \"198.18.0.99\"\n"),
    )
    .unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload refused", 1);
    assert!(
        log.contains("agent.source4: service address 198.18.0.99 is not an address of this host"),
        "{log}"
    );
    wait_routes_with(&lab, &a, Family::V4, None);
    // On the host: applied, the routes carry it.
    std::fs::write(
        a.config_path(),
        with(&format!(
            "[agent]\nsource4 = \"{}\"\nsource6 = \"{}\"\n",
            service(Family::V4),
            service(Family::V6)
        )),
    )
    .unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload applied", 1);
    assert!(log.contains("agent.source4 unset -> 198.18.0.1"), "{log}");
    for f in Family::ALL {
        wait_routes_with(&lab, &a, f, Some(service(f)));
    }
    let m = a.client().metrics().unwrap();
    assert!(
        m.contains("uplinkd_source_address_present{family=\"ipv4\"} 1"),
        "{m}"
    );
    // Removed again: the routes lose it, and the metric its series.
    std::fs::write(a.config_path(), with("")).unwrap();
    hup(&mut a);
    wait_log(&a, "reload applied", 2);
    for f in Family::ALL {
        wait_routes_with(&lab, &a, f, None);
    }
    let m = a.client().metrics().unwrap();
    assert!(!m.contains("uplinkd_source_address_present{"), "{m}");
    assert!(a.switches(Family::V4).len() <= 1);
}

#[test]
fn start_is_refused_without_the_service_address() {
    let lab = lab();
    lab.ip(
        &lab.server_ns(),
        &[
            "addr",
            "del",
            &format!("{}/32", service(Family::V4)),
            "dev",
            "lo",
        ],
    )
    .unwrap();
    let config = lab.write_config("").unwrap();
    let out = lab
        .command(
            &lab.server_ns(),
            &[BIN, "--config", config.to_str().unwrap()],
        )
        .unwrap()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("agent.source4") && err.contains("198.18.0.1 is not an address of this host"),
        "{err}"
    );
    // No route was installed.
    assert!(lab.default_routes(Family::V4).unwrap().is_empty());
}

#[test]
fn check_refuses_a_source_of_the_wrong_family() {
    let dir = std::env::temp_dir().join(format!("uplinkd-e2e-src-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("u.toml");
    std::fs::write(
        &path,
        "[agent]\nsource4 = \"2001:db8:0:1::1\"\n[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\ngateway4 = \"198.18.1.1\"\n[[transit]]\nname = \"t\"\ntargets = [\"198.19.0.1\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("agent.source4")
            && err.contains(
                "2001:db8:0:1::1 is an IPv6 address; agent.source4 takes an IPv4 address"
            ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
