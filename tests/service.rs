//! The daemon as a systemd service, end to end in the lab: SIGHUP reload
//! (a good configuration applied as a difference, a bad one refused with
//! every error while the running one stays in force) and the sd_notify
//! protocol (READY after the route, WATCHDOG pings, RELOADING, STOPPING)
//! against a fake NOTIFY_SOCKET.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use uplink_lab::{Lab, LabChild, Uplink};
use uplinkd::config::Family;
use uplinkd::status::{Status, UplinkState};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Wait until the daemon's log contains `needle` `count` times.
fn wait_log(a: &Agent, needle: &str, count: usize, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = a.log_text();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {count} x {needle:?} in the log after {timeout:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hup(a: &mut Agent) {
    a.child.as_mut().expect("running").signal(Signal::SIGHUP);
}

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
        + 1
}

fn healthy_for_ms(s: &Status, uplink: usize) -> u64 {
    s.uplinks[uplink]
        .families
        .ipv4
        .as_ref()
        .and_then(|f| f.healthy_for_ms)
        .expect("healthy")
}

/// The daemon's metrics text (via uplinkctl).
fn metrics(a: &Agent) -> String {
    let out = a.ctl(&["metrics"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Replies counted for the primary's IPv4 gateway.
fn primary_gateway_replies(m: &str) -> f64 {
    m.lines()
        .find(|l| {
            l.starts_with("uplinkd_probes_total{")
                && l.contains("uplink=\"primary\"")
                && l.contains("target=\"gateway\"")
                && l.contains("family=\"ipv4\"")
                && l.contains("result=\"reply\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no primary gateway reply counter in\n{m}"))
}

/// `ip -o monitor route` in the server namespace, into a file.
struct RouteMonitor {
    /// Killed when dropped.
    _child: LabChild,
    out: std::path::PathBuf,
}

impl RouteMonitor {
    fn start(lab: &Lab) -> RouteMonitor {
        let out = lab.dir().join("route-monitor.txt");
        let file = std::fs::File::create(&out).unwrap();
        let mut cmd = lab
            .command(&lab.server_ns(), &["ip", "-o", "monitor", "route"])
            .unwrap();
        cmd.stdin(Stdio::null()).stdout(file).stderr(Stdio::null());
        let child = LabChild::new(cmd.spawn().expect("ip monitor"), "ip monitor route");
        // Give it time to subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        RouteMonitor { _child: child, out }
    }

    /// What it printed so far.
    fn text(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.out)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

/// Changes of the managed default routes (main table, the agent's metric 10).
fn managed_default_changes(monitor: &str) -> Vec<&str> {
    monitor
        .lines()
        .filter(|l| {
            let l = l.trim_start_matches("Deleted ").trim_end();
            l.starts_with("default")
                && !l.contains(" table ")
                && (l.contains(" metric 10 ") || l.ends_with(" metric 10"))
        })
        .collect()
}

#[test]
fn sighup_applies_a_good_config_as_a_difference_and_refuses_a_bad_one() {
    let lab = lab();
    let mut a = settled(&lab, "");
    // Let the probe history build up a little.
    std::thread::sleep(S(2));
    let before = a.status().unwrap();
    let before_at = Instant::now();
    let h0 = healthy_for_ms(&before, 0);
    let mut events = a.subscribe();
    let monitor = RouteMonitor::start(&lab);

    // A harmless change: failback_after, and a hook.
    let hook_out = lab.dir().join("hook-ran");
    let good = format!(
        "[policy]\nfailback_after = \"20s\"\n[hooks]\non_active_change = [\"echo $UPLINKD_TO >> {}\"]\n",
        hook_out.display()
    );
    lab.write_config(&good).unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload applied", 1, S(10));
    assert!(
        log.contains("policy.failback_after 30s -> 20s; hooks changed"),
        "summary of the changes in the log:\n{log}"
    );
    // Right after: still healthy, history kept (verdicts known, not reset).
    let after = a.status().unwrap();
    assert_eq!(after.active.ipv4.as_deref(), Some("primary"));
    assert_eq!(after.active.ipv6.as_deref(), Some("primary"));
    for u in &after.uplinks {
        assert_eq!(u.state, UplinkState::Healthy, "{u:?}");
        assert!(
            u.transits.iter().all(|t| t.reachable == Some(true)),
            "transit verdicts kept: {u:?}"
        );
        let gw = u.gateway.ipv4.as_ref().unwrap();
        assert!(gw.rtt_ms.is_some(), "gateway rtt kept: {gw:?}");
    }
    let h1 = healthy_for_ms(&after, 0);
    assert!(
        h1 >= h0 + before_at.elapsed().as_millis() as u64 - 200,
        "primary healthy since before the reload: {h0} ms then {h1} ms"
    );
    // Some time for anything that would move to move.
    std::thread::sleep(S(2));
    let seen = monitor.text();
    assert!(
        managed_default_changes(&seen).is_empty(),
        "the default route did not change:\n{seen}"
    );
    for f in Family::ALL {
        assert!(route_via(&lab, f, Uplink::Primary), "{f} still via primary");
    }
    while let Some(ev) = events.next(Duration::from_millis(200)) {
        assert_ne!(ev["kind"], "active_changed", "no switch on reload: {ev}");
        assert_ne!(
            ev["kind"], "uplink_health",
            "no health change on reload: {ev}"
        );
    }

    // Each bad file below would also change failback_after (to 3 s) and
    // replace the hook by one writing elsewhere: after the refusals, the
    // 20 s and the reloaded hook must still be in force.
    let good_text = std::fs::read_to_string(a.config_path()).unwrap();
    let bad_hook_out = lab.dir().join("refused-hook-ran");
    let with_bad_changes = |text: &str| {
        let t = text
            .replacen("failback_after = \"20s\"", "failback_after = \"3s\"", 1)
            .replacen(
                &hook_out.display().to_string(),
                &bad_hook_out.display().to_string(),
                1,
            );
        assert_ne!(t, text);
        t
    };
    let before_refusals = a.status().unwrap();
    let before_refusals_at = Instant::now();
    // A syntax error: refused with its place, nothing changes.
    let broken = with_bad_changes(&good_text).replacen("[policy]", "[policy", 1);
    std::fs::write(a.config_path(), &broken).unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload refused", 1, S(10));
    let path = a.config_path().display().to_string();
    let at = format!("{path}:{}:", line_of(&broken, "[policy"));
    assert!(log.contains(&at), "syntax error at {at} logged:\n{log}");

    // Two invalid values: both reported with their lines.
    let invalid = with_bad_changes(&good_text)
        .replacen("failback_after = \"3s\"", "failback_after = \"soon\"", 1)
        .replacen("failback_after = \"20s\"", "failback_after = \"soon\"", 1)
        .replacen(
            &format!("gateway4 = \"{}\"", Uplink::Secondary.gateway(Family::V4)),
            "gateway4 = \"198.18.300.1\"",
            1,
        );
    assert_ne!(invalid, good_text);
    std::fs::write(a.config_path(), &invalid).unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload refused", 2, S(10));
    for needle in ["failback_after = \"soon\"", "198.18.300.1"] {
        let at = format!("{path}:{}:", line_of(&invalid, needle));
        assert!(log.contains(&at), "error at {at} ({needle}) logged:\n{log}");
    }

    // Valid, but a key that needs a restart: refused as a whole, saying so.
    let restart =
        with_bad_changes(&good_text).replacen("[agent]\n", "[agent]\nroute_metric = 20\n", 1);
    assert_ne!(restart, good_text);
    std::fs::write(a.config_path(), &restart).unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload refused", 3, S(10));
    assert!(
        log.contains("changing agent.route_metric requires a restart"),
        "{log}"
    );

    // Still running on the last good configuration, its health state kept
    // over the refusals (from status): same choice, same verdicts, the
    // primary healthy without a break.
    let s = a.status().expect("still serving");
    assert_eq!(s.active, before_refusals.active);
    for (u, b) in s.uplinks.iter().zip(&before_refusals.uplinks) {
        assert_eq!(u.state, UplinkState::Healthy, "{u:?}");
        assert_eq!(u.state, b.state);
        assert!(
            u.transits.iter().all(|t| t.reachable == Some(true)),
            "transit verdicts kept: {u:?}"
        );
    }
    let (h0, h1) = (healthy_for_ms(&before_refusals, 0), healthy_for_ms(&s, 0));
    assert!(
        h1 >= h0 + before_refusals_at.elapsed().as_millis() as u64 - 200,
        "primary healthy since before the refusals: {h0} ms then {h1} ms"
    );
    // A failover happens and runs the hook of the last good configuration
    // (not the refused files' one).
    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let deadline = Instant::now() + S(5);
    while !std::fs::read_to_string(&hook_out).is_ok_and(|t| t.contains("secondary")) {
        assert!(
            Instant::now() < deadline,
            "the reloaded hook ran on failover"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !bad_hook_out.exists(),
        "a refused file's hook ran: {:?}",
        std::fs::read_to_string(&bad_hook_out)
    );
    // failback_after is still the reloaded 20 s (neither a refused file's
    // 3 s nor the initial 30 s): the failback comes when the primary has
    // been healthy that long, as its status says at the failback.
    lab.carrier_up(Uplink::Primary).unwrap();
    let back = a.wait_for("failback", S(60), |s| {
        s.active.ipv4.as_deref() == Some("primary")
    });
    let healthy = healthy_for_ms(&back, 0);
    eprintln!("failback once the primary was healthy for {healthy} ms");
    assert!(
        (20_000..30_000).contains(&healthy),
        "failback once the primary was healthy for {healthy} ms (failback_after 20 s)"
    );
    // The monitor does see a change of the managed route (so its silence
    // over the reload meant something).
    let deadline = Instant::now() + S(5);
    while managed_default_changes(&monitor.text()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the monitor saw the failover:\n{}",
            monitor.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reload_removing_and_re_adding_the_standby_uplink() {
    let lab = lab();
    let mut a = settled(&lab, "");
    let ns = lab.server_ns();
    let installed = |what: &str| -> String {
        match what {
            "rules" => lab.exec(&ns, &["ip", "rule", "show"]).unwrap(),
            "table" => lab
                .exec(&ns, &["ip", "route", "show", "table", "1001"])
                .unwrap(),
            _ => lab.exec(&ns, &["ip", "route", "show", "default"]).unwrap(),
        }
    };
    // Per-uplink table and rule of the secondary (slot 1), and its kernel
    // fallback route (metric 12), as the agent installs them.
    let deadline = Instant::now() + S(5);
    while !(installed("rules").contains("lookup 1001")
        && installed("table").contains("198.18.2.1")
        && installed("main").contains("metric 12"))
    {
        assert!(
            Instant::now() < deadline,
            "secondary's table/rule/fallback installed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let monitor = RouteMonitor::start(&lab);
    let m = metrics(&a);
    assert!(m.contains("uplink=\"secondary\""), "{m}");
    let replies = primary_gateway_replies(&m);
    assert!(replies > 0.0);
    let primary_only = format!(
        "[[uplink]]\nname = \"primary\"\ninterface = \"eth0\"\ngateway4 = \"{}\"\ngateway6 = \"{}\"\n",
        Uplink::Primary.gateway(Family::V4),
        Uplink::Primary.gateway(Family::V6)
    );
    lab.write_config(&primary_only).unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload applied", 1, S(10));
    assert!(log.contains("changes=uplink secondary removed"), "{log}");
    let s = a.wait_for("secondary gone", S(5), |s| s.uplinks.len() == 1);
    assert_eq!(s.active.ipv4.as_deref(), Some("primary"));
    assert_eq!(s.uplinks[0].state, UplinkState::Healthy);
    // What the agent installed for it is removed.
    let deadline = Instant::now() + S(5);
    while installed("rules").contains("lookup 1001")
        || installed("table").contains("198.18.2.1")
        || installed("main").contains("metric 12")
    {
        assert!(
            Instant::now() < deadline,
            "secondary's table/rule/fallback removed:\n{}\n{}\n{}",
            installed("rules"),
            installed("table"),
            installed("main")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Metrics follow: nothing left of the secondary, the primary's counters kept.
    let m = metrics(&a);
    assert!(!m.contains("uplink=\"secondary\""), "{m}");
    assert!(primary_gateway_replies(&m) >= replies, "{m}");
    // Controls know the uplinks of the running configuration.
    let out = a.ctl(&["drain", "secondary"]);
    assert!(!out.status.success(), "drain of a removed uplink refused");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no uplink named")
            || String::from_utf8_lossy(&out.stderr).contains("no uplink named"),
        "{out:?}"
    );
    // Back again: probed, healthy, its table and rule back; the route never moved.
    lab.write_config("").unwrap();
    hup(&mut a);
    let log = wait_log(&a, "reload applied", 2, S(10));
    assert!(log.contains("changes=uplink secondary added"), "{log}");
    a.wait_for("secondary healthy again", S(10), |s| {
        s.uplinks.len() == 2 && s.uplinks[1].state == UplinkState::Healthy
    });
    let deadline = Instant::now() + S(5);
    while !(installed("rules").contains("lookup 1001")
        && installed("table").contains("198.18.2.1")
        && installed("main").contains("metric 12"))
    {
        assert!(
            Instant::now() < deadline,
            "secondary's table/rule/fallback back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = monitor.text();
    assert!(
        managed_default_changes(&seen).is_empty(),
        "the default route did not change:\n{seen}"
    );
    assert!(
        a.switches(Family::V4).len() == 1,
        "{:?}",
        a.switches(Family::V4)
    );
    let m = metrics(&a);
    assert!(
        m.lines().any(|l| l.starts_with("uplinkd_probes_total{")
            && l.contains("uplink=\"secondary\"")
            && l.contains("result=\"reply\"")
            && !l.ends_with(" 0")),
        "the re-added uplink's probes are counted:\n{m}"
    );
    let out = a.ctl(&["drain", "secondary"]);
    assert!(out.status.success(), "{out:?}");
    a.wait_for("secondary drained", S(5), |s| s.uplinks[1].drained);
    let out = a.ctl(&["undrain", "secondary"]);
    assert!(out.status.success(), "{out:?}");
    // And it still fails over to the re-added uplink.
    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
}

/// A fake service manager: the daemon's notifications, as they arrive.
struct Notifications {
    sock: UnixDatagram,
    /// (when received, message)
    got: Vec<(Instant, String)>,
}

impl Notifications {
    fn bind(path: &std::path::Path) -> Notifications {
        let sock = UnixDatagram::bind(path).expect("bind notify socket");
        Notifications {
            sock,
            got: Vec::new(),
        }
    }

    /// Receive until a message containing `line` (as a whole line) arrives;
    /// `check` runs on arrival. Panics after `timeout`.
    fn until(&mut self, line: &str, timeout: Duration, check: impl Fn()) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok(n) = self.sock.recv(&mut buf) else {
                break;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            self.got.push((Instant::now(), msg.clone()));
            if msg.lines().any(|l| l == line) {
                check();
                return msg;
            }
        }
        panic!("no {line:?} within {timeout:?}; got {:?}", self.got);
    }

    fn count(&self, line: &str, since: Instant) -> usize {
        self.got
            .iter()
            .filter(|(t, m)| *t >= since && m.lines().any(|l| l == line))
            .count()
    }
}

#[test]
fn sd_notify_ready_after_the_route_then_watchdog_reloading_and_stopping() {
    let lab = lab();
    let path = lab.dir().join("notify.sock");
    let mut n = Notifications::bind(&path);
    let p = path.display().to_string();
    // 400 ms: the daemon pings every 100 ms.
    let mut a = Agent::start_with_env(
        &lab,
        "",
        &[("NOTIFY_SOCKET", p.as_str()), ("WATCHDOG_USEC", "400000")],
    );
    n.until("READY=1", S(15), || {
        for f in Family::ALL {
            assert!(
                route_via(&lab, f, Uplink::Primary),
                "{f} default route installed when READY=1 arrives: {:?}",
                lab.default_routes(f)
            );
        }
    });
    let ready_at = Instant::now();
    assert!(
        n.got
            .iter()
            .any(|(_, m)| m.contains("STATUS=ipv4 via primary, ipv6 via primary")),
        "status line: {:?}",
        n.got
    );
    // Pings keep coming from the loop (every 100 ms; 3 of them by a
    // generous deadline, the rate is not what is tested).
    let deadline = ready_at + S(10);
    while Instant::now() < deadline && n.count("WATCHDOG=1", ready_at) < 3 {
        let _ = n.sock.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 4096];
        if let Ok(k) = n.sock.recv(&mut buf) {
            n.got
                .push((Instant::now(), String::from_utf8_lossy(&buf[..k]).into()));
        }
    }
    let pings = n.count("WATCHDOG=1", ready_at);
    assert!(pings >= 3, "{pings} watchdog pings in 10 s: {:?}", n.got);

    // Reload: RELOADING=1, then READY=1 again.
    hup(&mut a);
    let msg = n.until("RELOADING=1", S(5), || {});
    assert!(msg.contains("MONOTONIC_USEC="), "{msg}");
    n.until("READY=1", S(10), || {});

    // A status line follows a failover.
    lab.carrier_down(Uplink::Primary).unwrap();
    n.until(
        "STATUS=ipv4 via secondary, ipv6 via secondary",
        S(10),
        || {},
    );

    // SIGTERM: STOPPING=1.
    a.child.as_mut().unwrap().signal(Signal::SIGTERM);
    n.until("STOPPING=1", S(5), || {});
}
