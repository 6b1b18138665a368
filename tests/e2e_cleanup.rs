//! End-to-end: `uplinkd --cleanup` leaves the host as it was before the
//! agent first started (rules, every table's routes, the sysctls), keeps
//! what others made (also in uplinkd's tables), is refused while the agent
//! runs, and finds nothing the second time.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use uplink_lab::{Lab, Uplink};
use uplinkd::config::Family;

const S: fn(u64) -> Duration = Duration::from_secs;

/// The sysctls uplinkd sets on its uplinks, and the global ones it must
/// leave alone.
const SYSCTLS: &[&str] = &[
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv4.conf.eth0.rp_filter",
    "net.ipv4.conf.eth1.rp_filter",
    "net.ipv4.conf.eth0.ignore_routes_with_linkdown",
    "net.ipv4.conf.eth1.ignore_routes_with_linkdown",
    "net.ipv6.conf.eth0.ignore_routes_with_linkdown",
    "net.ipv6.conf.eth1.ignore_routes_with_linkdown",
];

/// `ip rule` and `ip route show table all` of both families and the
/// sysctls, in the server namespace: what the cleanup must put back.
fn host(lab: &Lab) -> String {
    let ns = lab.server_ns();
    let mut out = String::new();
    for fam in ["-4", "-6"] {
        out += &format!("== ip {fam} rule\n");
        out += &lab.ip(&ns, &[fam, "rule", "show"]).unwrap();
        out += &format!("== ip {fam} route show table all\n");
        out += &lab
            .ip(&ns, &[fam, "route", "show", "table", "all"])
            .unwrap();
    }
    let mut args = vec!["sysctl"];
    args.extend_from_slice(SYSCTLS);
    out + "== sysctl\n" + &lab.exec(&ns, &args).unwrap()
}

fn cleanup(lab: &Lab, config: &std::path::Path) -> Output {
    lab.command(
        &lab.server_ns(),
        &[BIN, "--cleanup", "--config", config.to_str().unwrap()],
    )
    .unwrap()
    .output()
    .expect("run uplinkd --cleanup")
}

fn text(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What another owner adds while the agent runs, in uplinkd's tables and
/// beside its rules; the cleanup must keep every one.
const FOREIGN: &[&[&str]] = &[
    // In uplinkd's probe table of the primary (1000), another protocol.
    &[
        "-4",
        "route",
        "add",
        "198.18.99.0/24",
        "via",
        "198.18.1.1",
        "dev",
        "eth0",
        "table",
        "1000",
        "proto",
        "static",
    ],
    // A default route in the secondary's probe table, at another metric.
    &[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:2::1",
        "dev",
        "eth1",
        "table",
        "1001",
        "metric",
        "50",
        "proto",
        "boot",
    ],
    // protocol 85, but in a table uplinkd never uses (below table_base).
    &[
        "-4",
        "route",
        "add",
        "198.18.98.0/24",
        "dev",
        "eth0",
        "table",
        "500",
        "proto",
        "85",
    ],
    // A rule just like uplinkd's (same mark and table), another owner's.
    &[
        "-4", "rule", "add", "fwmark", "0x3e8", "lookup", "1000", "priority", "1001", "proto",
        "static",
    ],
    &[
        "-6",
        "rule",
        "add",
        "from",
        "2001:db8:99::/64",
        "lookup",
        "1001",
        "priority",
        "900",
    ],
];

/// The `ip` command that removes the foreign object `add` made.
fn delete_of(add: &[&str]) -> Vec<String> {
    add.iter()
        .map(|a| if *a == "add" { "del" } else { a }.to_string())
        .collect()
}

#[test]
fn cleanup_leaves_the_host_as_before_the_first_start_and_keeps_what_others_made() {
    let lab = lab();
    let ns = lab.server_ns();
    // An original that differs from the all/default ones, to tell a
    // restore from a reset.
    lab.sysctl(&ns, &["net.ipv4.conf.eth1.rp_filter=1"])
        .unwrap();
    let before = host(&lab);

    let mut a = settled(&lab, "");
    let config = a.config_path().to_path_buf();
    let running = host(&lab);
    assert_ne!(before, running, "the agent changed nothing to clean up");
    assert!(
        running.contains("net.ipv4.conf.eth1.rp_filter = 2"),
        "{running}"
    );

    // Refused while the agent runs, and nothing removed.
    let o = cleanup(&lab, &config);
    assert!(
        !o.status.success(),
        "cleanup ran beside the agent: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is running"),
        "{}",
        text(&o)
    );
    assert_eq!(running, host(&lab), "a refused cleanup changed the host");

    for add in FOREIGN {
        lab.ip(&ns, add).unwrap();
    }

    // A crash, a restart (which finds uplinkd's own sysctl values in place:
    // the originals must survive it), then a clean stop.
    a.kill();
    a.spawn(&lab);
    a.wait_for("decided after the restart", S(10), |s| s.decided);
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Primary, S(5));
    }
    let st = a.child.take().unwrap().terminate(S(10)).unwrap();
    assert!(st.success(), "stop: {st:?}\n{}", a.log_text());

    let o = cleanup(&lab, &config);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    for what in [
        "removed ipv4 rule",
        "removed ipv6 rule",
        "removed ipv4 default via 198.18.1.1 dev eth0 table main metric 10 proto uplinkd",
        "removed ipv6 default",
        "table 1000",
        "restored net.ipv4.conf.eth1.rp_filter = 1 (uplinkd had set 2)",
    ] {
        assert!(said.contains(what), "no {what:?} in\n{}", text(&o));
    }

    let after = host(&lab);
    for add in FOREIGN {
        lab.ip(
            &ns,
            &delete_of(add)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap_or_else(|e| panic!("{add:?} did not survive the cleanup ({e}):\n{after}"));
    }
    assert_eq!(
        before,
        host(&lab),
        "after the cleanup (and removing the foreign objects), the host differs from before the start;\ncleanup said:\n{}",
        text(&o)
    );

    // Idempotent: the second run finds nothing.
    for add in FOREIGN {
        lab.ip(&ns, add).unwrap();
    }
    let with_foreign = host(&lab);
    let o = cleanup(&lab, &config);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "nothing of uplinkd's to clean up",
        "{}",
        text(&o)
    );
    assert_eq!(
        with_foreign,
        host(&lab),
        "the second cleanup changed the host"
    );
}

/// Without a configuration file (a purge may run after it is gone): the
/// default socket's directory and table_base, and proto 85 finds the
/// routes and rules. Run in a network namespace of its own, with a tmpfs
/// over /run in a mount namespace of its own (the default socket's place).
#[test]
fn cleanup_works_without_a_configuration_file() {
    let script = r#"
        set -e
        mount -t tmpfs uplinkd-test /run
        ip link set lo up
        ip addr add 198.18.0.1/24 dev lo
        ip route add 198.18.10.0/24 via 198.18.0.1 proto 85 metric 10
        ip route add default via 198.18.0.1 table 1000 proto 85
        ip route add default via 198.18.0.1 table 1000 metric 5 proto static
        ip route add default via 198.18.0.1 table 999 proto 85
        ip rule add fwmark 0x3e8 lookup 1000 priority 1000 proto 85
        ip rule add fwmark 0x3e8 lookup 1000 priority 1001 proto static
        "$1" --cleanup --config /nonexistent/uplinkd.toml
        echo "== left"
        ip route show table all proto 85
        ip route show table 1000
        ip rule show
    "#;
    let out = std::process::Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            BIN,
        ])
        .output()
        .expect("run unshare");
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (said, left) = stdout.split_once("== left").expect(&text);
    for want in [
        "removed ipv4 rule 1000: fwmark 0x3e8 lookup 1000 proto uplinkd",
        "removed ipv4 default via 198.18.0.1 dev lo table 1000 metric 0 proto uplinkd",
        "removed ipv4 198.18.10.0/24 via 198.18.0.1 dev lo table main metric 10 proto uplinkd",
        "removed 2 route(s) and 1 rule(s), restored 0 sysctl(s)",
    ] {
        assert!(said.contains(want), "no {want:?} in\n{text}");
    }
    // Kept: proto 85 outside uplinkd's tables, and another owner's route
    // and rule in and for table 1000.
    for want in [
        // (listed by `ip route show table all proto 85`, which omits the proto)
        "default via 198.18.0.1 dev lo table 999",
        "default via 198.18.0.1 dev lo proto static metric 5",
        "fwmark 0x3e8 lookup 1000 proto static",
    ] {
        assert!(left.contains(want), "{want:?} did not survive:\n{text}");
    }
    assert!(
        !left.contains("priority 1000") && !left.contains("1000:\tfrom all fwmark"),
        "{text}"
    );
}
