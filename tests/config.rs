//! Config parsing and validation: the shipped example, the key list, and
//! every class of error with its location.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use uplinkd::config::{
    self as config, known_keys, AgentConfig, ConfigError, ConfigErrors, DampingConfig,
    PolicyConfig, ProbeConfig,
};

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/uplinkd.toml");

fn example_text() -> String {
    std::fs::read_to_string(EXAMPLE_PATH).expect("read config/uplinkd.toml")
}

/// Every leaf key of the typed config, dotted; `uplink.x` / `transit.x` are
/// keys of each `[[uplink]]` / `[[transit]]`. Maintained by hand on purpose:
/// adding a key to the parser without adding it here (and to the example)
/// fails `key_list_matches_parser`.
const KEYS: &[&str] = &[
    "agent.socket",
    "agent.socket_group",
    "agent.route_metric",
    "agent.kernel_fallback",
    "agent.remove_competing_routes",
    "agent.table_base",
    "agent.fwmark_base",
    "agent.source4",
    "agent.source6",
    "agent.rule_priority",
    "agent.mode",
    "policy.failback_after",
    "policy.quorum",
    "policy.damping.threshold",
    "policy.damping.window",
    "policy.damping.hold",
    "policy.damping.max_hold",
    "probe.carrier_interval",
    "probe.gateway_interval",
    "probe.gateway_fast_interval",
    "probe.gateway_dead_after",
    "probe.gateway_min_misses",
    "probe.gateway_rise",
    "probe.gateway_timeout",
    "probe.echo_interval",
    "probe.echo_dead_after",
    "probe.echo_idle_interval",
    "probe.transit_interval",
    "probe.transit_fast_interval",
    "probe.transit_timeout",
    "probe.transit_fall",
    "probe.transit_rise",
    "probe.standby_slowdown",
    "probe.suspicion",
    "probe.suspicion_window",
    "probe.suspicion_segments",
    "probe.suspicion_timeouts",
    "probe.suspicion_burst_interval",
    "probe.suspicion_holdoff",
    "uplink.name",
    "uplink.interface",
    "uplink.gateway4",
    "uplink.gateway6",
    "uplink.bond",
    "uplink.probe_address4",
    "uplink.probe_address6",
    "uplink.gateway_probe",
    "transit.name",
    "transit.targets",
    "hooks.on_active_change",
    "hooks.on_health_change",
    "hooks.timeout",
    "metrics.http",
    "metrics.listen",
];

/// A minimal valid config: the sections every file needs.
const MINIMAL_UPLINKS: &str = r#"
[[uplink]]
name = "primary"
interface = "eth0"
gateway4 = "192.0.2.1"
gateway6 = "2001:db8:1::1"

[[uplink]]
name = "secondary"
interface = "eth1"
gateway4 = "198.51.100.1"
"#;
const MINIMAL_TRANSITS: &str = r#"
[[transit]]
name = "transit-a"
targets = ["203.0.113.1", "2001:db8:ff::1"]
"#;

fn minimal() -> String {
    format!("{MINIMAL_UPLINKS}{MINIMAL_TRANSITS}")
}

fn errors(text: &str) -> ConfigErrors {
    match config::parse(text, "test.toml") {
        Ok(c) => panic!("expected errors, parsed {c:#?}"),
        Err(e) => e,
    }
}

/// The single error for `key`, failing loudly otherwise.
fn error_for<'a>(errs: &'a ConfigErrors, key: &str) -> &'a ConfigError {
    let found: Vec<_> = errs.iter().filter(|e| e.key == key).collect();
    assert_eq!(found.len(), 1, "expected one error for {key}, got:\n{errs}");
    found[0]
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        + 1
}

#[test]
fn example_parses_with_documented_defaults() {
    let c = config::load(Path::new(EXAMPLE_PATH)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.agent, AgentConfig::default());
    assert_eq!(
        c.agent,
        AgentConfig {
            socket: PathBuf::from("/run/uplinkd/uplinkd.sock"),
            socket_group: None,
            route_metric: 10,
            kernel_fallback: true,
            remove_competing_routes: false,
            table_base: 1000,
            fwmark_base: 1000,
            rule_priority: 1000,
            mode: uplinkd::config::AgentMode::Enforce,
            source4: None,
            source6: None,
        }
    );
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    assert_eq!(
        c.policy,
        PolicyConfig {
            failback_after: s(30),
            quorum: 2, // ceil(4 / 2)
            damping: DampingConfig {
                threshold: 3,
                window: s(600),
                hold: s(60),
                max_hold: s(600),
            },
        }
    );
    assert_eq!(c.policy.damping, DampingConfig::default());
    assert_eq!(
        c.probe,
        ProbeConfig {
            carrier_interval: ms(4),
            gateway_interval: ms(48),
            gateway_fast_interval: ms(4),
            gateway_dead_after: ms(60),
            gateway_min_misses: 8,
            gateway_rise: 3,
            gateway_timeout: ms(8),
            echo_interval: ms(12),
            echo_dead_after: ms(12),
            echo_idle_interval: ms(48),
            transit_interval: s(1),
            transit_fast_interval: ms(50),
            transit_timeout: ms(200),
            transit_fall: 4,
            transit_rise: 2,
            standby_slowdown: 2,
            suspicion: true,
            suspicion_window: ms(40),
            suspicion_segments: 8,
            suspicion_timeouts: 4,
            suspicion_burst_interval: ms(10),
            suspicion_holdoff: s(1),
        }
    );
    assert_eq!(c.probe, ProbeConfig::default());
    assert_eq!(c.uplinks.len(), 2);
    assert_eq!(c.uplinks[0].name, "primary");
    assert_eq!(c.uplinks[0].interface, "eth0");
    assert_eq!(c.uplinks[0].gateway4, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(
        c.uplinks[0].gateway6,
        Some("2001:db8:1::1".parse::<Ipv6Addr>().unwrap())
    );
    assert_eq!(c.uplinks[1].name, "secondary");
    assert_eq!(c.transits.len(), 4);
    for t in &c.transits {
        assert!(t.targets.iter().any(IpAddr::is_ipv4), "{t:?}");
        assert!(t.targets.iter().any(IpAddr::is_ipv6), "{t:?}");
    }
}

/// Defaults apply to everything left out; the example spelling them out
/// yields the same config as a file that omits them.
#[test]
fn omitted_sections_take_defaults() {
    let c = config::parse(&minimal(), "min.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.agent, AgentConfig::default());
    assert_eq!(c.probe, ProbeConfig::default());
    assert_eq!(c.policy.damping, DampingConfig::default());
    assert_eq!(c.policy.failback_after, Duration::from_secs(30));
    assert_eq!(c.policy.quorum, 1);
    assert_eq!(c.uplinks[1].gateway6, None);

    // The example's uplinks and transits with no settings at all give the
    // same config as the example: it spells out exactly the defaults.
    let example = config::load(Path::new(EXAMPLE_PATH)).unwrap();
    let text = example_text();
    let tail = &text[text.find("\n[[uplink]]").unwrap()..];
    let bare = config::parse(tail, "bare.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bare, example);
}

#[test]
fn default_quorum_is_half_rounded_up() {
    assert_eq!(PolicyConfig::default_quorum(1), 1);
    assert_eq!(PolicyConfig::default_quorum(2), 1);
    assert_eq!(PolicyConfig::default_quorum(3), 2);
    assert_eq!(PolicyConfig::default_quorum(4), 2);
    assert_eq!(PolicyConfig::default_quorum(5), 3);
}

/// A valid value for each key, used to set it alone.
fn sample(key: &str) -> &'static str {
    match key.rsplit('.').next().unwrap() {
        "socket" => r#""/run/x.sock""#,
        "socket_group" => r#""adm""#,
        "kernel_fallback" => "false",
        "remove_competing_routes" => "true",
        "mode" => r#""observe""#,
        "source4" => r#""198.18.0.1""#,
        "source6" => r#""2001:db8:0:1::1""#,
        "quorum" => "1",
        "route_metric" | "table_base" | "fwmark_base" | "rule_priority" => "2000",
        "threshold" | "gateway_min_misses" | "gateway_rise" | "transit_fall" | "transit_rise" => {
            "7"
        }
        "standby_slowdown" => "3",
        "suspicion" => "false",
        "suspicion_segments" | "suspicion_timeouts" => "12",
        "suspicion_window" => r#""80ms""#,
        "suspicion_burst_interval" => r#""20ms""#,
        "suspicion_holdoff" => r#""5s""#,
        "window" | "max_hold" | "failback_after" | "transit_interval" => r#""20m""#,
        "hold" => r#""2m""#,
        "carrier_interval" | "gateway_timeout" => r#""2ms""#,
        "gateway_fast_interval" => r#""6ms""#,
        "gateway_interval" => r#""30ms""#,
        "gateway_dead_after" => r#""100ms""#,
        "echo_interval" => r#""4ms""#,
        "echo_dead_after" => r#""24ms""#,
        "echo_idle_interval" => r#""96ms""#,
        "transit_fast_interval" | "transit_timeout" => r#""100ms""#,
        "on_active_change" | "on_health_change" => r#"["/bin/true"]"#,
        "timeout" => r#""3s""#,
        "http" => "true",
        "listen" => r#""[::1]:9100""#,
        other => panic!("no sample for {other}"),
    }
}

/// The text of a valid config with exactly `key` set (besides the required
/// uplink/transit entries).
fn with_key(key: &str, value: &str) -> String {
    let (section, name) = key.rsplit_once('.').unwrap();
    match section {
        "uplink" | "transit" => {
            // Override inside the first entry of the list (TOML forbids a
            // duplicate key, so rebuild the entry).
            let mut text = minimal();
            let header = format!("[[{section}]]\n");
            let at = text.find(&header).unwrap() + header.len();
            let entry_end = text[at..].find("\n\n").map_or(text.len(), |i| at + i);
            let entry: String = text[at..entry_end]
                .lines()
                .filter(|l| !l.starts_with(&format!("{name} ")))
                .map(|l| format!("{l}\n"))
                .collect();
            text.replace_range(at..entry_end, &format!("{entry}{name} = {value}"));
            text
        }
        _ => format!("[{section}]\n{name} = {value}\n{}", minimal()),
    }
}

#[test]
fn key_list_matches_parser() {
    // What the parser declares it accepts is exactly this list...
    let mut declared = known_keys();
    declared.sort();
    let mut ours: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    ours.sort();
    assert_eq!(declared, ours);

    for key in KEYS {
        let (_, name) = key.rsplit_once('.').unwrap();
        let value = match *key {
            "uplink.name" => r#""main""#,
            "uplink.interface" => r#""bond0.100""#,
            "uplink.gateway4" => r#""192.0.2.254""#,
            "uplink.gateway6" => r#""fe80::1""#,
            "uplink.bond" => r#""bond1""#,
            // Only bond members have a probe address.
            "uplink.probe_address4" => "\"192.0.2.77\"\nbond = \"bond1\"",
            "uplink.probe_address6" => "\"2001:db8:1::77\"\nbond = \"bond1\"",
            "uplink.gateway_probe" => r#""echo""#,
            "transit.name" => r#""t1""#,
            "transit.targets" => r#"["198.51.100.77"]"#,
            _ => sample(key),
        };
        // ...each key, set alone, is accepted...
        let text = with_key(key, value);
        if let Err(e) = config::parse(&text, "key.toml") {
            panic!("{key} = {value} rejected:\n{e}\n---\n{text}");
        }
        // ...and a misspelling of it is rejected, with its dotted key.
        let misspelt = with_key(&format!("{key}x"), value);
        let errs = errors(&misspelt);
        assert!(
            errs.iter()
                .any(|e| e.key.ends_with(&format!("{name}x")) && e.message.contains("unknown key")),
            "{key}x: {errs}"
        );
    }
}

#[test]
fn example_mentions_every_key() {
    let text = example_text();
    for key in KEYS {
        let (section, name) = key.rsplit_once('.').unwrap();
        let header = match section {
            "uplink" | "transit" => format!("[[{section}]]"),
            _ => format!("[{section}]"),
        };
        assert!(text.contains(&header), "example lacks {header}");
        let after = &text[text.find(&header).unwrap()..];
        let set = after.lines().any(|l| {
            l.starts_with(&format!("{name} = ")) || l.starts_with(&format!("# {name} = "))
        });
        assert!(set, "example does not set (or show commented) {key}");
        // List entries have no defaults: their keys are explained in a comment.
        if matches!(section, "uplink" | "transit") {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("#   {name} "))),
                "example does not explain {key}"
            );
        }
    }
}

#[test]
fn unknown_key_has_line_and_dotted_key() {
    let text = format!("{}\n[[uplink]]\nname = \"third\"\ninterface = \"eth2\"\ngateway4 = \"192.0.2.9\"\ngatway6 = \"2001:db8::9\"\n", minimal());
    let errs = errors(&text);
    let e = error_for(&errs, "uplink[2].gatway6");
    assert_eq!(e.line, Some(line_of(&text, "gatway6")));
    assert_eq!(e.column, Some(1));
    assert_eq!(e.origin, "test.toml");
    assert!(e.message.contains("unknown key"), "{e}");
    assert!(e.message.contains("gateway6"), "lists the valid keys: {e}");
    let shown = errs.to_string();
    assert!(
        shown.starts_with(&format!(
            "test.toml:{}:1: uplink[2].gatway6: unknown key",
            line_of(&text, "gatway6")
        )),
        "{shown}"
    );

    let text = format!("[agnet]\nsocket = \"/x\"\n{}", minimal());
    let errs = errors(&text);
    assert_eq!(error_for(&errs, "agnet").line, Some(1));
}

#[test]
fn wrong_types_are_all_reported() {
    let text = format!(
        "[agent]\nroute_metric = \"10\"\nkernel_fallback = 1\n[probe]\ntransit_fall = 2.5\n{}",
        minimal()
    );
    let errs = errors(&text);
    assert!(error_for(&errs, "agent.route_metric")
        .message
        .contains("expected an integer"));
    assert_eq!(error_for(&errs, "agent.kernel_fallback").line, Some(3));
    assert!(error_for(&errs, "probe.transit_fall")
        .message
        .contains("float"));
}

#[test]
fn bad_duration_shows_the_humantime_error() {
    let text = format!(
        "[policy]\nfailback_after = \"30 sec onds\"\n[probe]\ntransit_timeout = \"0s\"\n{}",
        minimal()
    );
    let errs = errors(&text);
    let e = error_for(&errs, "policy.failback_after");
    assert_eq!(e.line, Some(2));
    assert_eq!(e.column, Some(18));
    assert!(e.message.contains("invalid duration"), "{e}");
    let humantime_msg = humantime::parse_duration("30 sec onds")
        .unwrap_err()
        .to_string();
    assert!(e.message.contains(&humantime_msg), "{e}");
    let e = error_for(&errs, "probe.transit_timeout");
    assert!(e.message.contains("greater than zero"), "{e}");
    assert_eq!(errs.len(), 2, "{errs}");
}

#[test]
fn bad_addresses() {
    let text = r#"
[[uplink]]
name = "a"
interface = "eth0"
gateway4 = "2001:db8::1"
gateway6 = "ff02::1"

[[uplink]]
name = "b"
interface = "eth1"
gateway4 = "192.0.2.0/24"

[[uplink]]
name = "c"
interface = "eth2"
gateway4 = "255.255.255.255"

[[transit]]
name = "t"
targets = ["127.0.0.1", "0.0.0.0", "224.0.0.1", "::", "::1", "not-an-ip", "203.0.113.1"]
"#;
    let errs = errors(text);
    let e = error_for(&errs, "uplink[0].gateway4");
    assert!(e.message.contains("not an IPv4 address"), "{e}");
    assert_eq!(e.line, Some(5));
    assert!(error_for(&errs, "uplink[0].gateway6")
        .message
        .contains("multicast"));
    assert!(error_for(&errs, "uplink[1].gateway4")
        .message
        .contains("prefix length"));
    assert!(error_for(&errs, "uplink[2].gateway4")
        .message
        .contains("broadcast"));
    for (i, what) in [
        "loopback",
        "unspecified",
        "multicast",
        "unspecified",
        "loopback",
        "not an IP",
    ]
    .iter()
    .enumerate()
    {
        let e = error_for(&errs, &format!("transit[0].targets[{i}]"));
        assert!(e.message.contains(what), "{e}");
        assert_eq!(e.line, Some(line_of(text, "targets")));
    }
    assert!(errs.iter().all(|e| e.key != "transit[0].targets[6]"));
}

#[test]
fn duplicate_names_and_targets() {
    let text = r#"
[[uplink]]
name = "same"
interface = "eth0"
gateway4 = "192.0.2.1"

[[uplink]]
name = "same"
interface = "eth1"
gateway4 = "198.51.100.1"

[[transit]]
name = "t"
targets = ["203.0.113.1"]

[[transit]]
name = "t"
targets = ["203.0.113.2", "203.0.113.1"]
"#;
    let errs = errors(text);
    let e = error_for(&errs, "uplink[1].name");
    assert_eq!(e.line, Some(8));
    assert!(
        e.message.contains("duplicate uplink name") && e.message.contains("line 3"),
        "{e}"
    );
    let e = error_for(&errs, "transit[1].name");
    assert_eq!(e.line, Some(17));
    assert!(error_for(&errs, "transit[1].targets[1]")
        .message
        .contains("listed twice"));
}

#[test]
fn bad_names_and_interfaces() {
    let text = r#"
[[uplink]]
name = "has space"
interface = "eth0:1"
gateway4 = "192.0.2.1"

[[uplink]]
name = ""
interface = "averyveryverylongifname"
gateway4 = "198.51.100.1"

[[uplink]]
name = "abcdefghijabcdefghijabcdefghijabc"
interface = ".."
gateway4 = "198.51.100.2"

[[transit]]
name = "t/1"
targets = ["203.0.113.1"]
"#;
    let errs = errors(text);
    for key in [
        "uplink[0].name",
        "uplink[0].interface",
        "uplink[1].name",
        "uplink[1].interface",
        "uplink[2].name",
        "uplink[2].interface",
        "transit[0].name",
    ] {
        error_for(&errs, key);
    }
    assert_eq!(errs.len(), 7, "{errs}");
}

#[test]
fn missing_gateway_and_missing_keys() {
    let text = r#"
[[uplink]]
name = "a"
interface = "eth0"

[[uplink]]
gateway4 = "192.0.2.1"

[[transit]]
name = "t"

[[transit]]
name = "u"
targets = []
"#;
    let errs = errors(text);
    let e = error_for(&errs, "uplink[0].gateway4");
    assert!(e.message.contains("at least one gateway"), "{e}");
    assert_eq!(e.line, Some(2), "points at the [[uplink]] header: {e}");
    assert_eq!(error_for(&errs, "uplink[1].name").line, Some(6));
    error_for(&errs, "uplink[1].interface");
    assert_eq!(error_for(&errs, "transit[0].targets").line, Some(9));
    assert_eq!(error_for(&errs, "transit[1].targets").line, Some(14));
}

#[test]
fn no_uplinks_no_transits() {
    let errs = errors("[agent]\nroute_metric = 5\n");
    let e = error_for(&errs, "uplink");
    assert_eq!(e.line, None);
    error_for(&errs, "transit");
    assert_eq!(
        errs.errors[0].to_string(),
        format!("test.toml: uplink: {}", errs.errors[0].message)
    );
}

#[test]
fn quorum_out_of_range() {
    for q in ["0", "2", "-1"] {
        let text = format!("[policy]\nquorum = {q}\n{}", minimal());
        let errs = errors(&text);
        let e = error_for(&errs, "policy.quorum");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("1..=1"), "{e}");
    }
    let text = format!("[policy]\nquorum = 1\n{}", minimal());
    assert_eq!(config::parse(&text, "q").unwrap().policy.quorum, 1);
}

#[test]
fn shared_interface_needs_different_gateways() {
    let ok = r#"
[[uplink]]
name = "a"
interface = "bond0"
gateway4 = "192.0.2.1"
[[uplink]]
name = "b"
interface = "bond0"
gateway4 = "192.0.2.2"
[[transit]]
name = "t"
targets = ["203.0.113.1"]
"#;
    config::parse(ok, "ok").unwrap();
    let bad = ok.replace("192.0.2.2", "192.0.2.1");
    let errs = errors(&bad);
    let e = error_for(&errs, "uplink[1].gateway4");
    assert!(e.message.contains("same interface"), "{e}");
    assert_eq!(errs.len(), 1, "{errs}");
}

#[test]
fn integer_ranges_and_relations() {
    let text = format!(
        r#"[agent]
route_metric = 0
table_base = 252
fwmark_base = 0
rule_priority = 32766
[policy.damping]
threshold = 0
hold = "20m"
[probe]
gateway_fast_interval = "70ms"
gateway_dead_after = "20ms"
transit_fast_interval = "2s"
gateway_rise = 0
{}"#,
        minimal()
    );
    let errs = errors(&text);
    let expect = [
        ("agent.route_metric", 2, "out of range"),
        ("agent.table_base", 3, "reserved table 253"),
        ("agent.fwmark_base", 4, "out of range"),
        ("agent.rule_priority", 5, "out of range"),
        ("policy.damping.threshold", 7, "out of range"),
        ("policy.damping.hold", 8, "max_hold"),
        ("probe.gateway_fast_interval", 10, "gateway_interval"),
        ("probe.gateway_dead_after", 11, "gateway_interval"),
        ("probe.transit_fast_interval", 12, "transit_interval"),
        ("probe.gateway_rise", 13, "out of range"),
    ];
    for (key, line, what) in expect {
        let e = error_for(&errs, key);
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains(what), "{e}");
    }
    assert_eq!(errs.len(), expect.len(), "{errs}");
    // Sorted in text order.
    let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);

    // gateway_timeout > gateway_dead_after, and the boundary values.
    let text = format!("[probe]\ngateway_timeout = \"61ms\"\n{}", minimal());
    error_for(&errors(&text), "probe.gateway_timeout");
    let text = format!(
        "[agent]\nroute_metric = {}\ntable_base = 256\n{}",
        u32::MAX - 64,
        minimal()
    );
    config::parse(&text, "edge").unwrap_or_else(|e| panic!("{e}"));
    let text = format!("[agent]\nroute_metric = {}\n{}", u32::MAX - 63, minimal());
    error_for(&errors(&text), "agent.route_metric");
    // 2 uplinks from 253 ... touches 253 and 254; 251 + 2 = 251, 252: fine.
    let text = format!("[agent]\ntable_base = 251\n{}", minimal());
    config::parse(&text, "edge").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn several_problems_are_all_reported() {
    let text = r#"
[agent]
socket = "relative.sock"
colour = "blue"

[[uplink]]
name = "a"
interface = "eth0"
gateway4 = "192.0.2.1"
flavour = 1

[[transit]]
name = "t"
targets = ["203.0.113.1"]
"#;
    // Unknown keys and bad values are reported in one run, in text order.
    let errs = errors(text);
    let socket = error_for(&errs, "agent.socket");
    assert_eq!(socket.line, Some(3));
    assert_eq!(error_for(&errs, "agent.colour").line, Some(4));
    assert_eq!(error_for(&errs, "uplink[0].flavour").line, Some(10));
    assert_eq!(errs.len(), 3, "{errs}");
    assert_eq!(errs.to_string().lines().count(), 3);

    // A value of the wrong type is reported once, not again as "missing",
    // and does not make a default take part in the relation checks.
    let text = format!(
        "[probe]\ngateway_interval = 3\ngateway_fast_interval = \"50ms\"\n{}",
        minimal().replacen("name = \"primary\"", "name = 7", 1)
    );
    let errs = errors(&text);
    error_for(&errs, "probe.gateway_interval");
    assert!(error_for(&errs, "uplink[0].name")
        .message
        .contains("expected a string"));
    assert_eq!(errs.len(), 2, "{errs}");

    // ...and so are value errors across sections.
    let text = r#"
[agent]
socket = "relative.sock"
[policy]
failback_after = "soon"
quorum = 3
[probe]
transit_rise = 0
[[uplink]]
name = "a"
interface = "eth0"
gateway4 = "192.0.2.300"
[[uplink]]
name = "a"
interface = "eth 1"
[[transit]]
name = "t"
targets = ["203.0.113.1"]
"#;
    let errs = errors(text);
    for key in [
        "agent.socket",
        "policy.failback_after",
        "policy.quorum",
        "probe.transit_rise",
        "uplink[0].gateway4",
        "uplink[1].name",
        "uplink[1].interface",
        "uplink[1].gateway4",
    ] {
        error_for(&errs, key);
    }
    assert_eq!(errs.len(), 8, "{errs}");
    let shown = errs.to_string();
    assert_eq!(shown.lines().count(), 8, "{shown}");
    for line in shown.lines() {
        assert!(line.starts_with("test.toml:"), "{line}");
    }
}

#[test]
fn syntax_error_has_a_line() {
    let text = format!("{}\n[probe]\ntransit_fall = = 3\n", minimal());
    let errs = errors(&text);
    let e = &errs.errors[0];
    assert_eq!(e.line, Some(line_of(&text, "transit_fall")), "{errs}");
    assert!(e.column.is_some());
    assert_eq!(e.origin, "test.toml");

    // A key given twice is a TOML error too.
    let text = format!("[agent]\nroute_metric = 1\nroute_metric = 2\n{}", minimal());
    let errs = errors(&text);
    assert_eq!(errs.errors[0].line, Some(3), "{errs}");
}

#[test]
fn load_of_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let errs = config::load(&path).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs.errors[0].origin, path.display().to_string());
    assert_eq!(errs.errors[0].line, None);
    let shown = errs.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    assert!(shown.contains("cannot read"), "{shown}");
}

#[test]
fn load_reports_the_path_as_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, format!("[probe]\ngateway_rise = 0\n{}", minimal())).unwrap();
    let errs = config::load(&path).unwrap_err();
    assert_eq!(
        errs.to_string(),
        format!(
            "{}:2:16: probe.gateway_rise: {}",
            path.display(),
            errs.errors[0].message
        )
    );
}

#[test]
fn probe_addresses_only_on_bond_members_and_unique() {
    let routed = format!(
        "{}\n[[uplink]]\nname = \"third\"\ninterface = \"eth2\"\ngateway4 = \"192.0.2.9\"\nprobe_address4 = \"192.0.2.10\"\n",
        minimal()
    );
    let errs = errors(&routed);
    let e = error_for(&errs, "uplink[2].probe_address4");
    assert!(e.message.contains("only bond members"), "{e}");
    let members = format!(
        "{}\n[[uplink]]\nname = \"m1\"\ninterface = \"eth2\"\nbond = \"bond0\"\ngateway4 = \"192.0.2.9\"\nprobe_address4 = \"192.0.2.10\"\n\n[[uplink]]\nname = \"m2\"\ninterface = \"eth3\"\nbond = \"bond0\"\ngateway4 = \"192.0.2.9\"\nprobe_address4 = \"192.0.2.10\"\nprobe_address6 = \"2001:db8::10\"\n",
        minimal()
    );
    let errs = errors(&members);
    let e = error_for(&errs, "uplink[3].probe_address4");
    assert!(e.message.contains("own probe address"), "{e}");
    let e = error_for(&errs, "uplink[3].probe_address6");
    assert!(e.message.contains("gateway of its family"), "{e}");
}

#[test]
fn gateway_probe_values_and_bond_members() {
    let bad = format!(
        "{}\n[[uplink]]\nname = \"third\"\ninterface = \"eth2\"\ngateway4 = \"192.0.2.9\"\ngateway_probe = \"bfd\"\n",
        minimal()
    );
    let errs = errors(&bad);
    let e = error_for(&errs, "uplink[2].gateway_probe");
    assert!(e.message.contains("\"auto\", \"echo\", \"icmp\""), "{e}");
    let member = format!(
        "{}\n[[uplink]]\nname = \"m1\"\ninterface = \"eth2\"\nbond = \"bond0\"\ngateway4 = \"192.0.2.9\"\ngateway_probe = \"echo\"\n",
        minimal()
    );
    let errs = errors(&member);
    let e = error_for(&errs, "uplink[2].gateway_probe");
    assert!(
        e.message.contains("bond member") && e.message.contains("set probe_address4"),
        "{e}"
    );
    // With its probe address, a member echoes.
    let member = format!(
        "{}\n[[uplink]]\nname = \"m1\"\ninterface = \"eth2\"\nbond = \"bond0\"\ngateway4 = \"192.0.2.9\"\nprobe_address4 = \"192.0.2.10\"\ngateway_probe = \"echo\"\n",
        minimal()
    );
    let c = config::parse(&member, "test.toml").unwrap();
    assert_eq!(c.uplinks[2].gateway_probe, config::GatewayProbe::Echo);
    assert!(c.uplinks[2].can_echo(config::Family::V4));
    assert!(!c.uplinks[2].can_echo(config::Family::V6));
    let routed = format!(
        "{}\n[[uplink]]\nname = \"third\"\ninterface = \"eth2\"\ngateway4 = \"192.0.2.9\"\ngateway_probe = \"icmp\"\n",
        minimal()
    );
    let c = config::parse(&routed, "test.toml").unwrap();
    assert_eq!(c.uplinks[2].gateway_probe, config::GatewayProbe::Icmp);
    assert_eq!(
        c.uplinks[0].gateway_probe,
        config::GatewayProbe::Auto,
        "the default"
    );
}

// ---------------------------------------------------------------------------
// Ranges and host checks: what `uplinkd --check` accepts, the daemon runs
// (start and reload use the same parser).
// ---------------------------------------------------------------------------

/// The one error of a minimal config with `[section]` `line` added.
fn refused(section: &str, line: &str, key: &str) -> ConfigError {
    let text = format!("[{section}]\n{line}\n{}", minimal());
    let errs = errors(&text);
    let e = error_for(&errs, key).clone();
    assert_eq!(e.line, Some(2), "{e}");
    assert_eq!(errs.len(), 1, "{errs}");
    e
}

#[test]
fn overflowing_durations_are_refused() {
    let huge = "\"18446744073709551615s\"";
    for (section, name) in [
        ("probe", "transit_timeout"),
        ("probe", "transit_interval"),
        ("probe", "carrier_interval"),
        ("probe", "gateway_dead_after"),
        ("policy", "failback_after"),
        ("policy.damping", "window"),
        ("policy.damping", "max_hold"),
        ("hooks", "timeout"),
    ] {
        let key = format!("{section}.{name}");
        let e = refused(section, &format!("{name} = {huge}"), &key);
        assert!(e.message.contains("out of range"), "{e}");
    }
}

#[test]
fn every_duration_has_a_documented_range() {
    let text = example_text();
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    let mut checked = 0;
    let mut check = |section: &str, keys: Vec<(&str, Duration, Duration)>| {
        let from = text.find(&format!("[{section}]\n")).expect("section");
        for (name, min, max) in keys {
            // The comment block above the key states its range.
            let at = from + text[from..].find(&format!("\n{name} = ")).expect(name);
            let block_start = text[..at].rfind("\n\n").unwrap_or(0);
            let range = format!("{}..={}", fmt(min), fmt(max));
            assert!(
                text[block_start..at].contains(&range),
                "config/uplinkd.toml does not document {section}.{name}'s range {range}"
            );
            checked += 1;
        }
    };
    fn durations<S>(keys: Vec<config::Key<S>>) -> Vec<(&'static str, Duration, Duration)> {
        keys.into_iter()
            .filter_map(|k| match k.kind {
                config::Kind::Duration { min, max, .. } => Some((k.name, min, max)),
                _ => None,
            })
            .collect()
    }
    check("probe", durations(ProbeConfig::keys()));
    check("policy", durations(PolicyConfig::keys()));
    check("policy.damping", durations(DampingConfig::keys()));
    check("hooks", durations(config::HooksConfig::keys()));
    assert_eq!(checked, 14 + 1 + 3 + 1);
    // A value just outside each range is refused, the bounds accepted.
    for (name, min, max) in durations(ProbeConfig::keys()) {
        let below = min.checked_sub(Duration::from_nanos(1)).unwrap();
        if !below.is_zero() {
            refused(
                "probe",
                &format!("{name} = \"{}\"", fmt(below)),
                &format!("probe.{name}"),
            );
        }
        refused(
            "probe",
            &format!("{name} = \"{}\"", fmt(max + Duration::from_nanos(1))),
            &format!("probe.{name}"),
        );
    }
}

#[test]
fn carrier_interval_below_100us_is_refused() {
    let e = refused(
        "probe",
        "carrier_interval = \"1us\"",
        "probe.carrier_interval",
    );
    assert!(e.message.contains("100us"), "{e}");
    // 100 µs itself is the floor the carrier poller accepts.
    let text = format!(
        "[probe]\ncarrier_interval = \"100us\"\ngateway_fast_interval = \"1ms\"\n{}",
        minimal()
    );
    config::parse(&text, "floor").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn gateway_timeout_of_1ns_is_refused() {
    let e = refused(
        "probe",
        "gateway_timeout = \"1ns\"",
        "probe.gateway_timeout",
    );
    assert!(e.message.contains("out of range"), "{e}");
}

#[test]
fn transit_timeout_longer_than_transit_interval_is_refused() {
    let e = refused("probe", "transit_timeout = \"2s\"", "probe.transit_timeout");
    assert!(e.message.contains("transit_interval"), "{e}");
    let text = format!(
        "[probe]\ntransit_interval = \"300ms\"\ntransit_timeout = \"300ms\"\n{}",
        minimal()
    );
    config::parse(&text, "equal").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn ipv4_mapped_addresses_are_refused() {
    let text = minimal().replace("2001:db8:1::1", "::ffff:198.18.1.1");
    let errs = errors(&text);
    let e = error_for(&errs, "uplink[0].gateway6");
    assert!(e.message.contains("IPv4-mapped"), "{e}");
    assert_eq!(e.line, Some(line_of(&text, "::ffff:")));
    let text = minimal().replace("2001:db8:ff::1", "::ffff:203.0.113.9");
    let errs = errors(&text);
    assert!(error_for(&errs, "transit[0].targets[1]")
        .message
        .contains("IPv4-mapped"));
}

#[test]
fn a_source_must_be_a_unicast_address_of_its_family() {
    // Each family's service address in its own key, read as given.
    let ok = config::parse(
        &format!(
            "[agent]\nsource4 = \"198.18.0.1\"\nsource6 = \"2001:db8:0:1::1\"\n{}",
            minimal()
        ),
        "s.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.agent.source4, Some(Ipv4Addr::new(198, 18, 0, 1)));
    assert_eq!(ok.agent.source6, Some("2001:db8:0:1::1".parse().unwrap()));
    // The wrong family names the key it belongs in.
    let text = format!(
        "[agent]\nsource4 = \"2001:db8:0:1::1\"\nsource6 = \"198.18.0.1\"\n{}",
        minimal()
    );
    let errs = errors(&text);
    let e = error_for(&errs, "agent.source4");
    assert!(
        e.message.contains("is an IPv6 address") && e.message.contains("agent.source6"),
        "{e}"
    );
    assert_eq!(e.line, Some(2));
    let e = error_for(&errs, "agent.source6");
    assert!(
        e.message.contains("is an IPv4 address") && e.message.contains("agent.source4"),
        "{e}"
    );
    for (key, value, what) in [
        ("source4", "0.0.0.0", "unspecified"),
        ("source4", "224.0.0.1", "multicast"),
        ("source4", "198.18.0.0/15", "prefix length"),
        ("source6", "::", "unspecified"),
        ("source6", "ff02::1", "multicast"),
        ("source6", "::ffff:198.18.0.1", "IPv4-mapped"),
        ("source6", "not-an-address", "not an IPv6 address"),
    ] {
        let errs = errors(&with_key(&format!("agent.{key}"), &format!("\"{value}\"")));
        let e = error_for(&errs, &format!("agent.{key}"));
        assert!(e.message.contains(what), "{key} = {value}: {e}");
    }
}

/// `uplinkd --check` (the binary) refuses a source of the wrong family,
/// naming the key, and exits 2 like any invalid file.
#[test]
fn check_refuses_a_source_of_the_wrong_family() {
    let dir = std::env::temp_dir().join(format!("uplinkd-src-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("u.toml");
    let bin = env!("CARGO_BIN_EXE_uplinkd");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(bin)
            .args(["--check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let bad = check(&with_key("agent.source6", r#""198.18.0.1""#));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("agent.source6") && stderr.contains("is an IPv4 address"),
        "{stderr}"
    );
    let good = check(&with_key("agent.source6", r#""2001:db8:0:1::1""#));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_must_name_a_file() {
    for path in ["/", "/run/uplinkd/", "/run/..", "/run/."] {
        let e = refused("agent", &format!("socket = \"{path}\""), "agent.socket");
        assert!(e.message.contains("file name"), "{path}: {e}");
    }
}

#[test]
fn socket_group_must_exist() {
    let e = refused(
        "agent",
        "socket_group = \"no-such-group-uplinkd\"",
        "agent.socket_group",
    );
    assert!(e.message.contains("does not exist"), "{e}");
    let text = format!("[agent]\nsocket_group = \"root\"\n{}", minimal());
    let c = config::parse(&text, "root").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.agent.socket_group.as_deref(), Some("root"));
}

#[test]
fn long_values_are_quoted_short() {
    // 10 MB once; the other places quote through the same function, and a
    // 10 MB parse is slow in a debug build.
    let big = "x".repeat(10 << 20);
    let small = &big[..100 << 10];
    for (section, name, value) in [
        ("probe", "transit_timeout", big.as_str()),
        ("agent", "socket", small),
        ("agent", "socket_group", small),
        ("metrics", "listen", small),
    ] {
        let text = format!("[{section}]\n{name} = \"{value}\"\n{}", minimal());
        let shown = errors(&text).to_string();
        assert!(
            shown.len() < 1024,
            "{section}.{name}: {} bytes",
            shown.len()
        );
        assert!(shown.contains('…'), "{shown}");
    }
    let text = minimal().replacen("\"primary\"", &format!("\"{small}\""), 1);
    let text = text.replacen("\"eth0\"", &format!("\"{small}\""), 1);
    let text = text.replacen("\"192.0.2.1\"", &format!("\"{small}\""), 1);
    let shown = errors(&text).to_string();
    assert_eq!(
        shown.lines().count(),
        3,
        "{}",
        &shown[..shown.len().min(2000)]
    );
    assert!(shown.len() < 3 * 1024, "{} bytes", shown.len());
    // An unknown key as long is shortened too.
    let text = format!("[agent]\n{} = 1\n{}", "k".repeat(100 << 10), minimal());
    let shown = errors(&text).to_string();
    assert!(shown.len() < 2048, "{} bytes", shown.len());
}

// ---------------------------------------------------------------------------
// Drop-ins: <dir>/<stem>.d/*.toml, read in lexical order after the main file
// ---------------------------------------------------------------------------

/// A main file `uplinkd.toml` in a temporary directory, and its drop-ins in
/// `uplinkd.d/`.
struct DropIns {
    dir: tempfile::TempDir,
    main: PathBuf,
}

impl DropIns {
    fn new(main: &str) -> DropIns {
        let dir = tempfile::tempdir().unwrap();
        let main_path = dir.path().join("uplinkd.toml");
        std::fs::write(&main_path, main).unwrap();
        std::fs::create_dir(dir.path().join("uplinkd.d")).unwrap();
        DropIns {
            dir,
            main: main_path,
        }
    }

    /// Writes `uplinkd.d/<name>`; returns its path.
    fn add(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join("uplinkd.d").join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(&self) -> Result<config::Config, ConfigErrors> {
        config::load(&self.main)
    }
}

#[test]
fn drop_in_directory_is_next_to_the_file_named_after_its_stem() {
    assert_eq!(
        config::drop_in_dir(Path::new("/etc/uplinkd/uplinkd.toml")),
        Path::new("/etc/uplinkd/uplinkd.d")
    );
    assert_eq!(
        config::drop_in_dir(Path::new("/srv/edge.toml")),
        Path::new("/srv/edge.d")
    );
    // No directory at all is fine.
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("uplinkd.toml");
    std::fs::write(&main, minimal()).unwrap();
    config::load(&main).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_drop_in_overrides_a_key_and_tables_merge_key_by_key() {
    let d = DropIns::new(&format!(
        "[agent]\nroute_metric = 0\ntable_base = 2000\n\n[policy.damping]\nhold = \"2m\"\n{}",
        minimal()
    ));
    d.add(
        "50-host.toml",
        "[agent]\nroute_metric = 50\n\n[policy.damping]\nmax_hold = \"20m\"\n",
    );
    let c = d.load().unwrap_or_else(|e| panic!("{e}"));
    // Overridden by the drop-in (the main file's 0 is out of range, but
    // values are checked once, after the merge).
    assert_eq!(c.agent.route_metric, 50);
    // Kept from the main file: the drop-in's [agent] only adds its keys.
    assert_eq!(c.agent.table_base, 2000);
    assert_eq!(c.policy.damping.hold, Duration::from_secs(120));
    assert_eq!(c.policy.damping.max_hold, Duration::from_secs(1200));
    // The uplinks and transits the drop-in does not write stay.
    assert_eq!(c.uplinks.len(), 2);
    assert_eq!(c.transits.len(), 1);
}

#[test]
fn an_uplink_list_in_a_drop_in_replaces_the_whole_list() {
    let d = DropIns::new(&minimal());
    d.add(
        "50-host.toml",
        "[[uplink]]\nname = \"only\"\ninterface = \"ens3\"\ngateway4 = \"192.0.2.1\"\n",
    );
    let c = d.load().unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.uplinks.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["only"]);
    assert_eq!(c.uplinks[0].interface, "ens3");
    assert_eq!(c.transits.len(), 1, "[[transit]] is another list: kept");

    // A later drop-in replaces the earlier drop-in's list in turn.
    d.add(
        "60-host.toml",
        "[[uplink]]\nname = \"a\"\ninterface = \"ens4\"\ngateway4 = \"192.0.2.1\"\n\n\
         [[uplink]]\nname = \"b\"\ninterface = \"ens5\"\ngateway4 = \"198.51.100.1\"\n",
    );
    let c = d.load().unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.uplinks.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn drop_ins_are_read_in_lexical_order_of_their_names() {
    let d = DropIns::new(&minimal());
    // Lexical, not numeric: "9-late" sorts after "20-mid".
    d.add("9-late.toml", "[agent]\nroute_metric = 90\n");
    d.add(
        "10-early.toml",
        "[agent]\nroute_metric = 10\ntable_base = 3000\n",
    );
    d.add("20-mid.toml", "[agent]\nroute_metric = 20\n");
    let c = d.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.agent.route_metric, 90);
    assert_eq!(c.agent.table_base, 3000);
}

#[test]
fn only_toml_files_are_read_from_the_drop_in_directory() {
    let d = DropIns::new(&minimal());
    let garbage = "this is = not [ toml";
    d.add("README", garbage);
    d.add("50-host.toml.dpkg-old", garbage);
    d.add("50-host.toml~", garbage);
    d.add(".50-host.toml", garbage);
    std::fs::create_dir(d.dir.path().join("uplinkd.d/sub.toml")).unwrap();
    d.add("50-host.toml", "[agent]\nroute_metric = 42\n");
    let c = d.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.agent.route_metric, 42);
}

#[test]
fn an_error_in_a_drop_in_names_the_drop_in_and_its_line() {
    let d = DropIns::new(&format!("[policy.damping]\nhold = \"1m\"\n{}", minimal()));
    let host = d.add(
        "50-host.toml",
        "# per-host\n[probe]\ngateway_rise = 0\nno_such_key = 1\n\n[policy.damping]\nhold = \"20m\"\n",
    );
    let errs = d.load().unwrap_err();
    let shown = errs.to_string();
    // The shape check of each file: an unknown key in the drop-in.
    assert!(
        shown.contains(&format!(
            "{}:4:1: probe.no_such_key: unknown key",
            host.display()
        )),
        "{shown}"
    );
    let errs = {
        // Without the unknown key, the value checks run on the merge.
        std::fs::write(
            &host,
            "# per-host\n[probe]\ngateway_rise = 0\n\n[policy.damping]\nhold = \"20m\"\n",
        )
        .unwrap();
        d.load().unwrap_err()
    };
    let rise = error_for(&errs, "probe.gateway_rise");
    assert_eq!(
        (rise.origin.as_str(), rise.line, rise.column),
        (host.display().to_string().as_str(), Some(3), Some(16)),
        "{errs}"
    );
    // A rule between keys, broken by the drop-in's value.
    let hold = error_for(&errs, "policy.damping.hold");
    assert_eq!(
        hold.to_string(),
        format!(
            "{}:6:8: policy.damping.hold: policy.damping.hold (20m) must be <= policy.damping.max_hold (10m, the default): the hold doubles up to max_hold",
            host.display()
        )
    );

    // A syntax error names the drop-in too.
    std::fs::write(&host, "[agent\n").unwrap();
    let errs = d.load().unwrap_err();
    assert_eq!(errs.len(), 1, "{errs}");
    assert_eq!(errs.errors[0].origin, host.display().to_string());
    assert_eq!(errs.errors[0].line, Some(1));

    // An entry of a replacing list: its table is in the drop-in.
    std::fs::write(
        &host,
        "\n\n[[uplink]]\nname = \"only\"\ngateway4 = \"192.0.2.1\"\n",
    )
    .unwrap();
    let errs = d.load().unwrap_err();
    let missing = error_for(&errs, "uplink[0].interface");
    assert_eq!(
        (missing.origin.as_str(), missing.line),
        (host.display().to_string().as_str(), Some(3)),
        "{errs}"
    );
}

#[test]
fn errors_of_several_files_come_in_reading_order() {
    let d = DropIns::new(&format!("[probe]\ntransit_rise = 0\n{}", minimal()));
    let a = d.add("10-a.toml", "[probe]\n\ngateway_rise = 0\n");
    let b = d.add("20-b.toml", "[probe]\ntransit_fall = 0\n");
    let errs = d.load().unwrap_err();
    let places: Vec<(String, Option<usize>)> =
        errs.iter().map(|e| (e.origin.clone(), e.line)).collect();
    assert_eq!(
        places,
        [
            (d.main.display().to_string(), Some(2)),
            (a.display().to_string(), Some(3)),
            (b.display().to_string(), Some(2)),
        ]
    );
}

#[test]
fn origins_say_where_each_value_of_the_merge_is_written() {
    let d = DropIns::new(&minimal());
    let host = d.add("50-host.toml", "[agent]\n\nroute_metric = 7\n");
    let (_, origins) = config::load_with_origins(&d.main).unwrap_or_else(|e| panic!("{e}"));
    let at = |key: &str| {
        origins
            .get(key)
            .map(|p| (p.origin.clone(), p.line))
            .unwrap_or_else(|| panic!("no place for {key}"))
    };
    assert_eq!(at("agent.route_metric"), (host.display().to_string(), 3));
    let main = d.main.display().to_string();
    assert_eq!(
        at("uplink[1].interface"),
        (main.clone(), line_of(&minimal(), "\"eth1\""))
    );
    assert!(origins.get("agent.table_base").is_none(), "a default");
    // A problem about a default names the main file, without a line.
    assert_eq!(
        origins.error("agent.table_base", "x").to_string(),
        format!("{main}: agent.table_base: x")
    );
}
