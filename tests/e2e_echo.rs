//! End-to-end: the forwarding-plane echo as the gateway probe
//! (`gateway_probe`), with the real daemon in the lab. The lab's routers are
//! Linux namespaces; nft rules in a router's namespace make it stop
//! forwarding, police what is addressed to itself, or drop src = dst packets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use uplink_lab::{Lab, Uplink};
use uplinkd::config::Family;
use uplinkd::status::{GatewayMode, Reason, Status};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Both uplinks with `gateway_probe = setting`.
fn overrides(setting: &str) -> String {
    let mut s = String::new();
    for u in Uplink::ALL {
        s += &format!(
            "[[uplink]]\nname = \"{}\"\ninterface = \"{}\"\ngateway4 = \"{}\"\ngateway6 = \"{}\"\ngateway_probe = \"{setting}\"\n",
            u.name(),
            u.interface(),
            u.gateway(Family::V4),
            u.gateway(Family::V6),
        );
    }
    s
}

/// Run `nft <command>` in `uplink`'s router namespace.
fn nft(lab: &Lab, uplink: Uplink, command: &str) {
    lab.exec(&lab.router_ns(uplink), &["nft", command])
        .unwrap_or_else(|e| panic!("nft {command}: {e}"));
}

fn metrics_text(a: &Agent) -> String {
    a.client().metrics().expect("metrics")
}

fn mode(s: &Status, uplink: usize, f: Family) -> Option<GatewayMode> {
    let gp = match f {
        Family::V4 => &s.uplinks[uplink].gateway_probe.ipv4,
        Family::V6 => &s.uplinks[uplink].gateway_probe.ipv6,
    };
    gp.as_ref().map(|g| g.mode)
}

fn all_echo(s: &Status) -> bool {
    (0..2).all(|u| {
        Family::ALL
            .iter()
            .all(|f| mode(s, u, *f) == Some(GatewayMode::Echo))
    })
}

/// Settled on the primary with every gateway probed by echoes.
fn settled_echo(lab: &Lab, setting: &str) -> Agent {
    let a = settled(lab, &overrides(setting));
    a.wait_for("echo mode everywhere", S(10), all_echo);
    a
}

#[test]
fn auto_uses_echo_on_a_router_that_loops_it() {
    let lab = lab();
    let a = settled_echo(&lab, "auto");
    let s = a.status().unwrap();
    let gp = s.uplinks[0].gateway_probe.ipv4.as_ref().unwrap();
    assert_eq!(gp.setting, "auto");
    let text = metrics_text(&a);
    assert!(
        text.contains("uplinkd_gateway_probe_mode{uplink=\"primary\",family=\"ipv4\",mode=\"echo\",setting=\"auto\"} 1"),
        "{text}"
    );
    // A Linux router answers hairpinned echoes with ICMP redirects (and
    // still forwards them): counted in status and metrics.
    let s = a.wait_for("redirects counted", S(10), |s| {
        s.uplinks[0]
            .gateway_probe
            .ipv4
            .as_ref()
            .is_some_and(|g| g.redirects > 0)
    });
    let n = s.uplinks[0].gateway_probe.ipv4.as_ref().unwrap().redirects;
    let text = metrics_text(&a);
    assert!(
        text.lines().any(|l| l
            .starts_with("uplinkd_gateway_redirects_total{uplink=\"primary\",family=\"ipv4\"}")
            && !l.ends_with(" 0")),
        "{n} redirects in status; metrics:\n{text}"
    );
    assert!(a.log_text().contains("ICMP redirects"), "warned once");
    // The server never accepts the redirects a hairpinning router sends.
    let v = lab
        .exec(
            &lab.server_ns(),
            &["sysctl", "-n", "net.ipv4.conf.eth0.accept_redirects"],
        )
        .unwrap();
    assert_eq!(v.trim(), "0");
}

/// (a) The router stops forwarding but its CPU still answers pings: the
/// echoes find it, and the reason names the forwarding.
#[test]
fn router_that_stops_forwarding_but_answers_pings_is_left() {
    let lab = lab();
    let a = settled_echo(&lab, "echo");
    lab.forwarding_dead(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let s = a.wait_for("forwarding reason", S(5), |s| {
        s.uplinks[0]
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::Forwarding { .. }))
    });
    // It still answers pings (the slow ICMP check says so).
    let check = a.wait_for("icmp check answered", S(5), |s| {
        s.uplinks[0]
            .gateway_probe
            .ipv4
            .as_ref()
            .and_then(|g| g.icmp_check.as_ref())
            .and_then(|c| c.reachable)
            == Some(true)
    });
    drop(check);
    assert!(
        a.switches(Family::V4)
            .iter()
            .any(|(_, to, r)| to.as_deref() == Some("secondary") && r.contains("forwarding")),
        "{:?}\n{s:?}",
        a.switches(Family::V4)
    );
}

/// (b) The router polices everything addressed to itself (pings, ND, ARP,
/// the rest) down to 1/s while forwarding everything: no switch in echo mode.
#[test]
fn router_policing_its_own_pings_causes_no_switch() {
    let lab = lab();
    let a = settled_echo(&lab, "auto");
    // Every class addressed to the router (pings, ND, ARP, the rest) at 1/s.
    lab.police_self(Uplink::Primary, 1).unwrap();
    let start = Instant::now();
    while start.elapsed() < S(20) {
        std::thread::sleep(Duration::from_millis(500));
        let s = a.status().unwrap();
        assert_eq!(
            s.active.ipv4.as_deref(),
            Some("primary"),
            "{s:?}\n{}",
            a.log_text()
        );
        assert_eq!(
            s.active.ipv6.as_deref(),
            Some("primary"),
            "{s:?}\n{}",
            a.log_text()
        );
    }
    assert_eq!(a.switches(Family::V4).len(), 1, "only the initial choice");
    assert_eq!(a.switches(Family::V6).len(), 1, "only the initial choice");
}

/// (c) A router that drops packets whose source is their destination:
/// auto falls back to ICMP, says so, and does not fail over.
#[test]
fn router_dropping_src_eq_dst_makes_auto_fall_back_to_icmp() {
    let lab = lab();
    let u = Uplink::Primary;
    nft(&lab, u, "add table inet echotest");
    nft(
        &lab,
        u,
        "add chain inet echotest pre { type filter hook prerouting priority -300; policy accept; }",
    );
    let (a4, a6) = (u.server_addr(Family::V4), u.server_addr(Family::V6));
    nft(
        &lab,
        u,
        &format!("add rule inet echotest pre ip saddr {a4} ip daddr {a4} drop"),
    );
    nft(
        &lab,
        u,
        &format!("add rule inet echotest pre ip6 saddr {a6} ip6 daddr {a6} drop"),
    );
    let a = settled(&lab, &overrides("auto"));
    let s = a.wait_for("primary fell back to icmp", S(10), |s| {
        Family::ALL
            .iter()
            .all(|f| mode(s, 0, *f) == Some(GatewayMode::Icmp))
            && Family::ALL
                .iter()
                .all(|f| mode(s, 1, *f) == Some(GatewayMode::Echo))
    });
    assert_eq!(s.active.ipv4.as_deref(), Some("primary"));
    assert_eq!(s.active.ipv6.as_deref(), Some("primary"));
    let log = a.log_text();
    assert!(log.contains("gateway_probe"), "the log says so:\n{log}");
    let text = metrics_text(&a);
    assert!(
        text.contains("uplinkd_gateway_probe_mode{uplink=\"primary\",family=\"ipv4\",mode=\"icmp\",setting=\"auto\"} 1"),
        "{text}"
    );
}

/// (d) Only IPv6 breaks on the echo path: only IPv6 moves.
#[test]
fn ipv6_alone_broken_on_the_echo_path_moves_only_ipv6() {
    let lab = lab();
    let a = settled_echo(&lab, "echo");
    nft(&lab, Uplink::Primary, "add table inet echotest");
    nft(
        &lab,
        Uplink::Primary,
        "add chain inet echotest fchain { type filter hook forward priority 0; policy accept; }",
    );
    nft(
        &lab,
        Uplink::Primary,
        "add rule inet echotest fchain meta nfproto ipv6 udp dport 3785 drop",
    );
    wait_route(&lab, &a, Family::V6, Uplink::Secondary, S(5));
    let s = a.wait_for("v6 on secondary", S(5), |s| {
        s.active.ipv6.as_deref() == Some("secondary")
    });
    assert_eq!(s.active.ipv4.as_deref(), Some("primary"));
    assert!(s.uplinks[0]
        .reasons
        .iter()
        .any(|r| matches!(r, Reason::Forwarding { family } if family == "ipv6")));
    assert!(route_via(&lab, Family::V4, Uplink::Primary));
}

/// A forger on the router's link that sees our echoes: for each one it
/// sends back (1) the frame itself, turned around at layer 2 with its TTL
/// untouched (255: a reflection, right token), and (2) a copy with the
/// expected TTL 254 but a wrong token. Python, on a packet socket; ends
/// after `seconds`.
const FORGER: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[2])
def fix4(ip):
    ip = bytearray(ip); ip[10:12] = b'\0\0'
    c = sum(struct.unpack('!10H', bytes(ip[:20])))
    while c >> 16: c = (c & 0xffff) + (c >> 16)
    ip[10:12] = struct.pack('!H', ~c & 0xffff); return bytes(ip)
while time.time() < end:
    try:
        f, a = s.recvfrom(2048)
    except socket.timeout:
        continue
    if a[2] == socket.PACKET_OUTGOING: continue
    et = f[12:14]; back = f[6:12] + f[0:6] + et
    if et == b'\x08\x00' and f[23] == 17 and f[26:30] == f[30:34] and f[36:38] == b'\x0e\xc9':
        ip = f[14:34]; udp = f[34:]
        s.send(back + ip + udp)
        ip2 = bytearray(ip); ip2[8] = 254
        udp2 = bytearray(udp); udp2[6:8] = b'\0\0'; udp2[8] ^= 0xff
        s.send(back + fix4(bytes(ip2)) + bytes(udp2))
    elif et == b'\x86\xdd' and f[20] == 17 and f[22:38] == f[38:54] and f[56:58] == b'\x0e\xc9':
        ip = f[14:54]; udp = f[54:]
        s.send(back + ip + udp)
        ip2 = bytearray(ip); ip2[7] = 254
        udp2 = bytearray(udp); udp2[8] ^= 0xff
        s.send(back + bytes(ip2) + bytes(udp2))
"#;

/// (e) Echo replies forged by another host on the link (reflected with the
/// wrong TTL, or with the right TTL and a wrong token) never keep a router
/// that stopped forwarding looking alive.
#[test]
fn forged_echoes_never_keep_a_dead_path_up() {
    let lab = lab();
    let a = settled_echo(&lab, "echo");
    let ns = lab.router_ns(Uplink::Primary);
    let mut forger = lab
        .spawn(
            &ns,
            &["python3", "-c", FORGER, uplink_lab::ROUTER_DOWNLINK, "30"],
        )
        .unwrap();
    // Let it start forging before the router stops forwarding.
    std::thread::sleep(Duration::from_millis(500));
    nft(&lab, Uplink::Primary, "add table inet echotest");
    nft(
        &lab,
        Uplink::Primary,
        "add chain inet echotest fchain { type filter hook forward priority 0; policy drop; }",
    );
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let s = a.status().unwrap();
    assert!(
        s.uplinks[0]
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::Forwarding { .. })),
        "{s:?}"
    );
    let log = a.log_text();
    assert!(
        log.contains("arrival TTL is not 254"),
        "the reflected echoes reached the agent and were refused:\n{log}"
    );
    forger.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = forger.terminate(S(2));
}

/// The stream through the uplink carrying the traffic runs at its idle
/// rate (`echo_idle_interval`, 48 ms) while the server sends nothing
/// besides the agent's own packets, and at the full rate (12 ms) while it
/// carries traffic: counted at the primary router, 2 s each.
#[test]
fn the_active_stream_slows_while_the_server_is_idle_and_not_with_traffic() {
    use uplink_lab::load::class;
    use uplink_lab::StreamSpec;
    let lab = lab();
    let a = settled_echo(&lab, "echo");
    let count = |what: &str| {
        lab.start_load_count().unwrap();
        std::thread::sleep(S(2));
        let loads = lab.read_load_count().unwrap();
        let ra = &loads[0];
        assert_eq!(ra.node, "ra");
        let n = [class::V4_ECHOES, class::V6_ECHOES].map(|c| ra.get(c).unwrap());
        eprintln!("{what}: echoes forwarded by the primary in 2 s (v4, v6): {n:?}");
        n
    };
    // The agent's own probes (transits, the slow ICMP check) are not
    // traffic: a second after the start's last packets (the new
    // interfaces' ND and MLD among them), the stream slows.
    std::thread::sleep(S(3));
    let idle = count("idle");
    // 200 datagrams/s through the primary: the full rate.
    let stream = lab
        .udp_stream(&StreamSpec {
            rate: 200,
            max_duration: S(30),
            ..StreamSpec::default()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let busy = count("with traffic");
    drop(stream.stop());
    // Idle: one every 48 ms (~42 in 2 s); busy: one every 12 ms (~167).
    for (i, b) in idle.iter().zip(&busy) {
        assert!(
            (20..=80).contains(i),
            "idle {idle:?}, with traffic {busy:?}"
        );
        assert!(*b >= 120, "idle {idle:?}, with traffic {busy:?}");
    }
    // And no switch either way.
    assert_eq!(a.switches(Family::V4).len(), 1, "only the initial choice");
    assert_eq!(a.switches(Family::V6).len(), 1, "only the initial choice");
    // Status says which rate the stream runs at.
    let s = a.status().unwrap();
    let gp = s.uplinks[0].gateway_probe.ipv4.as_ref().unwrap();
    assert!(!gp.echo_idle, "{gp:?}");
    a.wait_for("idle rate again, a second after the traffic", S(5), |s| {
        s.uplinks[0]
            .gateway_probe
            .ipv4
            .as_ref()
            .is_some_and(|g| g.echo_idle)
    });
}
