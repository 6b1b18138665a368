//! End-to-end: `uplinkctl` as a monitoring plugin (`check`) and for daily
//! use (the why of a held-back uplink, the drain guard, error hints),
//! against the real daemon in the lab.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use uplink_lab::Uplink;
use uplinkd::status::{Status, UplinkState};

const S: fn(u64) -> Duration = Duration::from_secs;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `uplinkctl --socket <socket> args...` with no daemon around.
fn ctl_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run uplinkctl")
}

/// The plugin's exit code and its one line of output.
fn plugin(o: &Output) -> (i32, String) {
    let out = stdout(o);
    assert_eq!(out.lines().count(), 1, "one line of output: {out:?}");
    (o.status.code().expect("exited"), out.trim_end().to_string())
}

fn check(a: &Agent, args: &[&str]) -> (i32, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    plugin(&a.ctl(&all))
}

fn on(s: &Status, uplink: &str) -> bool {
    s.active.ipv4.as_deref() == Some(uplink) && s.active.ipv6.as_deref() == Some(uplink)
}

fn all_transits_reachable(s: &Status) -> bool {
    s.uplinks
        .iter()
        .all(|u| u.transits.iter().all(|t| t.reachable == Some(true)))
}

#[test]
fn check_exit_codes_follow_the_monitoring_plugin_api() {
    let lab = lab();
    let mut a = settled(&lab, "");
    a.wait_for("every transit reachable", S(15), all_transits_reachable);

    // On the preferred uplink, all healthy: OK, with performance data.
    let (code, line) = check(&a, &["--warn-rtt", "500", "--crit-rtt", "1000"]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("UPLINKD OK - ipv4 on primary, ipv6 on primary | "),
        "{line}"
    );
    let perf = line.split_once(" | ").unwrap().1;
    for want in [
        "'primary_gw4_rtt'=",
        "'primary_gw6_loss'=0.0%;",
        "'secondary_transit4_rtt'=",
        "'secondary_transit6_up'=4;;;0;4",
        "'ipv4_since_switch'=",
        "'ipv6_since_switch'=",
    ] {
        assert!(perf.contains(want), "{want} not in {perf}");
    }
    // The thresholds are on the active uplink's series.
    assert!(perf.contains("ms;500;1000;0 'primary_gw4_loss'"), "{perf}");

    // A carrier failover: WARNING, then CRITICAL once it lasted too long.
    lab.carrier_down(Uplink::Primary).unwrap();
    a.wait_for("on secondary", S(10), |s| on(s, "secondary"));
    let (code, line) = check(&a, &["--failover-critical-after", "2s"]);
    eprintln!("{line}");
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("UPLINKD WARNING - ipv4 on secondary, not primary, for "),
        "{line}"
    );
    assert!(line.contains("primary unhealthy (carrier"), "{line}");
    std::thread::sleep(S(3));
    let (code, line) = check(&a, &["--failover-critical-after", "2s"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("(over 2s)"), "{line}");

    // Both uplinks dead: fail static, CRITICAL.
    lab.gateway_dead(Uplink::Secondary).unwrap();
    a.wait_for("fail static", S(10), |s| {
        s.fail_static.ipv4 && s.fail_static.ipv6
    });
    let (code, line) = check(&a, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("UPLINKD CRITICAL - ipv4 FAIL STATIC on secondary (no usable uplink)"),
        "{line}"
    );

    // The daemon stopped (its socket removed): CRITICAL.
    let child = a.child.take().unwrap();
    child.terminate(S(5)).unwrap();
    assert!(!a.socket.exists(), "the daemon removed its socket");
    let (code, line) = check(&a, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("UPLINKD CRITICAL - no status from uplinkd: connect to uplinkd at"),
        "{line}"
    );
    // And `status` says what to do about it.
    let o = a.ctl(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is uplinkd running? (systemctl status uplinkd)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_usage_errors_are_unknown() {
    let socket = Path::new("/nonexistent/uplinkd.sock");
    for args in [
        &["check", "--bogus"][..],
        &["check", "--warn-loss", "150"],
        &["check", "--crit-rtt", "-1"],
        &["check", "--failover-critical-after", "soon"],
        &["check", "extra"],
    ] {
        let (code, line) = plugin(&ctl_at(socket, args));
        assert_eq!(code, 3, "{args:?}: {line}");
        assert!(line.starts_with("UPLINKD UNKNOWN - "), "{args:?}: {line}");
    }
    // Help is not an error; other commands keep clap's usage exit code.
    assert_eq!(ctl_at(socket, &["check", "--help"]).status.code(), Some(0));
    assert_eq!(
        ctl_at(socket, &["status", "--bogus"]).status.code(),
        Some(2)
    );
    // No daemon behind the socket: CRITICAL for the plugin.
    let (code, line) = plugin(&ctl_at(socket, &["check"]));
    assert_eq!(code, 2, "{line}");
}

#[test]
fn connection_errors_say_what_to_do() {
    // No daemon: the socket is missing.
    let o = ctl_at(Path::new("/nonexistent/uplinkd.sock"), &["status"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("No such file or directory"), "{e}");
    assert!(
        e.contains("uplinkctl: is uplinkd running? (systemctl status uplinkd)"),
        "{e}"
    );

    // A socket this user may not use: join its group.
    let dir = tempfile::Builder::new()
        .prefix("uplinkctl-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = dir.path().join("uplinkd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    let group = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("group nogroup");
    nix::unistd::chown(&socket, None, Some(group.gid)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=100", "--clear-groups", "--"])
        .arg(CTL)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)");
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("Permission denied"), "{e}");
    assert!(
        e.contains("uplinkctl: join group nogroup (sudo adduser $USER nogroup, then log in again) or use sudo"),
        "{e}"
    );
}

#[test]
fn held_back_uplink_says_why_and_drain_guards_the_last_usable_uplink() {
    let lab = lab();
    let a = settled(&lab, "[policy]\nfailback_after = \"6s\"");
    a.wait_for("every transit reachable", S(15), all_transits_reachable);

    // Back from a failover, the primary waits out failback_after, and says so.
    lab.carrier_down(Uplink::Primary).unwrap();
    a.wait_for("on secondary", S(10), |s| on(s, "secondary"));
    lab.carrier_up(Uplink::Primary).unwrap();
    let s = a.wait_for("primary healthy", S(15), |s| {
        s.uplinks[0].state == UplinkState::Healthy
    });
    let left = s.uplinks[0].families.ipv4.as_ref().unwrap().failback_in_ms;
    assert!(
        left.is_some_and(|ms| ms > 0 && ms <= 6000),
        "failback_in_ms {left:?}"
    );
    let o = a.ctl(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    eprintln!("{table}");
    // The families became usable at their own instants: one line each, or
    // one for both.
    assert!(
        table.contains("primary is healthy but not active for ipv4, ipv6: failback in ")
            || (table.contains("primary is healthy but not active for ipv4: failback in ")
                && table.contains("primary is healthy but not active for ipv6: failback in ")),
        "{table}"
    );
    // A failover alone, every uplink healthy: still a WARNING for the plugin.
    let (code, line) = check(&a, &[]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("UPLINKD WARNING - ipv4 on secondary, not primary, for "),
        "{line}"
    );
    let o = a.ctl(&["status", "--verbose"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = stdout(&o);
    eprintln!("{v}");
    assert!(
        v.contains("\nuplink primary\n") && v.contains("\nuplink secondary\n"),
        "{v}"
    );
    assert!(v.contains("not active: failback in "), "{v}");
    a.wait_for("failback", S(15), |s| on(s, "primary"));
    assert!(!stdout(&a.ctl(&["status"])).contains("not active"));

    // The secondary dies: draining the primary would leave nothing usable.
    lab.carrier_down(Uplink::Secondary).unwrap();
    a.wait_for("secondary unhealthy", S(10), |s| {
        s.uplinks[1].state == UplinkState::Unhealthy
    });
    let o = a.ctl(&["drain", "primary"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains(
            "not draining primary is the last usable uplink for ipv4 and ipv6 (secondary: carrier"
        ),
        "{e}"
    );
    assert!(e.contains("Pass --force to drain it anyway"), "{e}");
    let s = a.status().unwrap();
    assert!(!s.uplinks[0].drained, "refused, yet drained");
    assert!(!s.fail_static.ipv4 && !s.fail_static.ipv6);

    // With --force it is done, and the families fail static as announced.
    let o = a.ctl(&["drain", "primary", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = a.wait_for("fail static", S(5), |s| {
        s.fail_static.ipv4 && s.fail_static.ipv6
    });
    assert!(s.uplinks[0].drained && on(&s, "primary"), "{s:#?}");
}
