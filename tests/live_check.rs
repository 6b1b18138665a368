//! `uplinkd --check --live`: the configuration checked against the host,
//! run as the unit runs it (`ip netns exec NS uplinkd --check --live`) in a
//! network namespace each test builds: veth interfaces `eth0` (198.18.1.2/24,
//! 2001:db8:1::2/64) and `eth1` (198.18.2.2/24, 2001:db8:2::2/64), whose
//! peers stay in the namespace. Every failure's message is asserted, with
//! the file and line of the key to change. Needs root (namespaces).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_uplinkd");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/uplinkd.toml");
/// `--check --live`: the file is valid, the host does not fit it.
const EXIT_HOST_PROBLEMS: i32 = 3;

/// A network namespace with the two uplink interfaces; removed on drop.
struct Netns {
    name: String,
    dir: tempfile::TempDir,
}

impl Netns {
    /// With the two uplink interfaces.
    fn new() -> Netns {
        let ns = Netns::bare();
        for (dev, k) in [("eth0", 1), ("eth1", 2)] {
            let peer = format!("peer{k}");
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            ns.ip(&["addr", "add", &format!("198.18.{k}.2/24"), "dev", dev]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("2001:db8:{k}::2/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["link", "set", &peer, "up"]);
        }
        ns
    }

    /// Only the loopback interface.
    fn bare() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ulc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Netns {
            name,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// `ip -n NS args...`, which must succeed.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Writes `text` as the main configuration file; returns its path.
    fn config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("uplinkd.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `ip netns exec NS uplinkd --config PATH --check --live`.
    fn check_live(&self, config: &Path) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, BIN, "--config"])
            .arg(config)
            .args(["--check", "--live"])
            .output()
            .expect("run uplinkd --check --live")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().expect(prog);
    assert!(out.status.success(), "{prog} {args:?}: {out:?}");
}

/// `uplinkd --config PATH --check` (the file alone), outside the namespace.
fn file_check(path: &Path) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(path)
        .arg("--check")
        .output()
        .expect("run uplinkd --check")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A configuration for the namespace: `uplinks` is the `[[uplink]]` part.
fn config_text(ns: &Netns, uplinks: &str) -> String {
    format!(
        "[agent]\nsocket = \"{}\"\n\n{uplinks}\n[[transit]]\nname = \"transit-a\"\ntargets = [\"198.19.0.1\", \"2001:db8:ff::1\"]\n",
        ns.dir.path().join("uplinkd.sock").display()
    )
}

const UPLINKS: &str = r#"
[[uplink]]
name = "primary"
interface = "eth0"
gateway4 = "198.18.1.1"
gateway6 = "2001:db8:1::1"

[[uplink]]
name = "secondary"
interface = "eth1"
gateway4 = "198.18.2.1"
gateway6 = "2001:db8:2::1"
"#;

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
        + 1
}

/// The check failed for the host (not for the file) and printed `lines`
/// (each a substring of one line of stderr); returns stderr.
fn fails_with(out: &Output, lines: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(EXIT_HOST_PROBLEMS), "{out:?}");
    for want in lines {
        assert!(
            err.lines().any(|l| l.contains(want)),
            "no line containing {want:?} in:\n{err}"
        );
    }
    assert!(
        err.contains(&format!("{} problem(s) on this host", lines.len())),
        "{err}"
    );
    err
}

#[test]
fn a_config_that_fits_the_host_passes() {
    let ns = Netns::new();
    let path = ns.config(&config_text(&ns, UPLINKS));
    let out = ns.check_live(&path);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configuration is valid and fits this host"),
        "{out:?}"
    );
    // The file check alone never looks at the host.
    assert!(file_check(&path).status.success());
}

#[test]
fn a_missing_interface_fails_naming_the_uplink_file_and_line() {
    let ns = Netns::new();
    let text = config_text(&ns, &UPLINKS.replace("\"eth1\"", "\"upbx\""));
    let path = ns.config(&text);
    let line = line_of(&text, "\"upbx\"");
    fails_with(
        &ns.check_live(&path),
        &[&format!(
            "{}:{line}:13: uplink[1].interface: uplink \"secondary\": interface \"upbx\" does not exist on this host; fix the name (`ip link` lists the interfaces) or create the interface",
            path.display()
        )],
    );
    // Without --live the file alone is checked, and it is valid.
    assert!(file_check(&path).status.success());
}

#[test]
fn a_gateway_outside_its_interface_subnet_fails_until_an_on_link_route_covers_it() {
    let ns = Netns::new();
    let text = config_text(&ns, &UPLINKS.replace("198.18.2.1", "198.18.9.1"));
    let path = ns.config(&text);
    let line = line_of(&text, "198.18.9.1");
    fails_with(
        &ns.check_live(&path),
        &[&format!(
            "{}:{line}:12: uplink[1].gateway4: uplink \"secondary\": gateway4 198.18.9.1 is not on-link through eth1: no ipv4 address of eth1 has a prefix containing it (eth1 has 198.18.2.2/24) and no route through eth1 covers it; fix the gateway, give eth1 an address in the gateway's subnet, or add an on-link route (`ip route add 198.18.9.1/32 dev eth1`)",
            path.display()
        )],
    );
    // What the message suggests makes it pass.
    ns.ip(&["route", "add", "198.18.9.1/32", "dev", "eth1"]);
    let out = ns.check_live(&path);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_ipv6_link_local_gateway_is_on_link() {
    let ns = Netns::new();
    let text = config_text(&ns, &UPLINKS.replace("2001:db8:2::1", "fe80::1"));
    // Always on-link, even without a link-local address or route on eth1.
    ns.ip(&["-6", "addr", "flush", "dev", "eth1", "scope", "link"]);
    let _ = Command::new("ip")
        .args([
            "-n",
            &ns.name,
            "-6",
            "route",
            "del",
            "fe80::/64",
            "dev",
            "eth1",
        ])
        .output();
    let out = ns.check_live(&ns.config(&text));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_shipped_example_fails_on_its_placeholder_interfaces() {
    let ns = Netns::bare();
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let line0 = line_of(&example, "interface = \"eth0\"");
    let line1 = line_of(&example, "interface = \"eth1\"");
    fails_with(
        &ns.check_live(Path::new(EXAMPLE)),
        &[
            &format!("{EXAMPLE}:{line0}:13: uplink[0].interface: uplink \"primary\": interface \"eth0\" does not exist on this host"),
            &format!("{EXAMPLE}:{line1}:13: uplink[1].interface: uplink \"secondary\": interface \"eth1\" does not exist on this host"),
        ],
    );
}

#[test]
fn a_competing_lower_metric_default_route_fails() {
    let ns = Netns::new();
    let text = config_text(&ns, UPLINKS);
    let path = ns.config(&text);
    // Ours (protocol 85) and higher metrics do not compete.
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.1.1",
        "dev",
        "eth0",
        "metric",
        "10",
        "proto",
        "85",
    ]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.2.1",
        "dev",
        "eth1",
        "metric",
        "100",
        "proto",
        "dhcp",
    ]);
    let out = ns.check_live(&path);
    assert!(out.status.success(), "{out:?}");
    // A DHCP client's route at metric 0 wins over the managed one.
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.18.1.1",
        "dev",
        "eth0",
        "metric",
        "0",
        "proto",
        "dhcp",
    ]);
    fails_with(
        &ns.check_live(&path),
        &[&format!(
            "{}: agent.route_metric: the ipv4 default route `default via 198.18.1.1 dev eth0 proto dhcp metric 0` (not made by uplinkd) has a lower metric than the managed route's (10), so traffic follows it whatever uplinkd decides; remove it or give it a metric above 10",
            path.display()
        )],
    );
    // Written in the file, the key's line is named.
    let text = text.replace("[agent]\n", "[agent]\nroute_metric = 20\n");
    let path = ns.config(&text);
    // Ours at 10 still does not compete, the DHCP route at 100 neither.
    fails_with(
        &ns.check_live(&path),
        &[&format!(
            "{}:2:16: agent.route_metric: the ipv4 default route `default via 198.18.1.1 dev eth0 proto dhcp metric 0`",
            path.display()
        )],
    );
}

#[test]
fn every_problem_is_listed_in_one_run() {
    let ns = Netns::new();
    let uplinks = UPLINKS
        .replace("\"eth1\"", "\"upbx\"")
        .replace("198.18.1.1", "198.18.9.1");
    let path = ns.config(&config_text(&ns, &uplinks));
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:1::1",
        "dev",
        "eth0",
        "metric",
        "1",
        "proto",
        "static",
    ]);
    fails_with(
        &ns.check_live(&path),
        &[
            "uplink[0].gateway4: uplink \"primary\": gateway4 198.18.9.1 is not on-link through eth0",
            "uplink[1].interface: uplink \"secondary\": interface \"upbx\" does not exist",
            "agent.route_metric: the ipv6 default route `default via 2001:db8:1::1 dev eth0 proto static metric 1`",
        ],
    );
}

/// A bond named by a member must exist and be a bond. (The member-of
/// checks need the bonding driver, which this host's kernel may lack: they
/// are unit tests of `config::live`.)
#[test]
fn a_bond_must_exist_and_be_a_bond() {
    let ns = Netns::new();
    let member = |name: &str, interface: &str, bond: &str| {
        format!(
            "[[uplink]]\nname = \"{name}\"\ninterface = \"{interface}\"\nbond = \"{bond}\"\ngateway4 = \"198.18.1.1\"\n\n"
        )
    };
    let text = config_text(
        &ns,
        &[
            member("member-a", "eth0", "bond9"),
            member("member-b", "eth1", "eth0"),
        ]
        .concat(),
    );
    fails_with(
        &ns.check_live(&ns.config(&text)),
        &[
            "uplink[0].bond: uplink \"member-a\": bond \"bond9\" does not exist on this host; fix the name or create the active-backup bond (with \"eth0\" as a member)",
            "uplink[1].bond: uplink \"member-b\": \"eth0\" is not a bond (its kind is veth); name the bond \"eth1\" is a member of",
        ],
    );
}

#[test]
fn a_problem_in_a_drop_in_names_the_drop_in() {
    let ns = Netns::new();
    let path = ns.config(&config_text(&ns, UPLINKS));
    let dir = ns.dir.path().join("uplinkd.d");
    std::fs::create_dir(&dir).unwrap();
    let drop_in = dir.join("50-host.toml");
    let text = UPLINKS.replace("\"eth0\"", "\"ens9\"");
    std::fs::write(&drop_in, &text).unwrap();
    let line = line_of(&text, "\"ens9\"");
    fails_with(
        &ns.check_live(&path),
        &[&format!(
            "{}:{line}:13: uplink[0].interface: uplink \"primary\": interface \"ens9\" does not exist",
            drop_in.display()
        )],
    );
}

/// The socket group is looked up by the file check itself, so the live
/// check refuses a missing one too (as an invalid file: exit status 2).
#[test]
fn a_missing_socket_group_fails() {
    let ns = Netns::new();
    let text = config_text(&ns, UPLINKS).replace(
        "[agent]\n",
        "[agent]\nsocket_group = \"no-such-group-ulc\"\n",
    );
    let path = ns.config(&text);
    let out = ns.check_live(&path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains(&format!(
            "{}:2:16: agent.socket_group: group \"no-such-group-ulc\" does not exist on this host",
            path.display()
        )),
        "{out:?}"
    );
}
