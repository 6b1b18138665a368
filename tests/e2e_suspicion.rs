//! Passive suspicion end to end (issue 14): the real daemon in the lab's
//! server namespace, a TCP flow from the server to a listener beyond the
//! transits (the sink on `inet`), and an upstream that dies behind a live
//! gateway. Assertions are on behaviour (reasons, evidence, counts), never
//! on timing.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use uplink_lab::{Lab, StreamSpec, Uplink};
use uplinkd::config::Family;

const S: fn(u64) -> Duration = Duration::from_secs;

/// The logged uplink_health evidence of `uplink` going unhealthy for `family`.
fn unhealthy_evidence(a: &Agent, uplink: &str, family: Family) -> Vec<String> {
    a.logged_events()
        .into_iter()
        .filter(|e| {
            e["kind"] == "uplink_health"
                && e["uplink"] == uplink
                && e["family"] == family.name()
                && e["state"] == "unhealthy"
        })
        .map(|e| e["evidence"].as_str().unwrap_or("").to_string())
        .collect()
}

fn suspicions(a: &Agent, uplink: usize, source: &str) -> u64 {
    let s = a.status().expect("status");
    s.uplinks[uplink]
        .suspicion
        .by_source
        .get(source)
        .copied()
        .unwrap_or(0)
}

/// Settled, and every transit target reachable through both uplinks (a
/// target with no verdict yet is judged only after a whole interval).
fn judged(lab: &Lab, overrides: &str) -> Agent {
    let a = settled(lab, overrides);
    a.wait_for("every transit judged reachable", S(10), |s| {
        s.uplinks
            .iter()
            .all(|u| u.transits.iter().all(|t| t.reachable == Some(true)))
    });
    a
}

#[test]
fn tcp_flow_through_a_silently_blackholed_upstream_switches_on_suspicion() {
    let lab = lab();
    let a = judged(&lab, "");
    let _flow = lab.tcp_flow(Family::V4).unwrap();
    std::thread::sleep(S(3));
    let s = a.status().unwrap();
    assert_eq!(
        s.uplinks[0].suspicion.bursts, 0,
        "no burst while the flow is healthy: {:?}",
        s.uplinks[0].suspicion
    );
    lab.upstream_dead(Uplink::Primary).unwrap();
    wait_route(&lab, &a, Family::V4, Uplink::Secondary, S(10));
    let sw = a.switches(Family::V4);
    let (_, _, reason) = sw
        .iter()
        .find(|(_, to, _)| to.as_deref() == Some("secondary"))
        .expect("switched to secondary")
        .clone();
    assert!(
        reason.starts_with("quorum+suspicion_"),
        "the switch names the suspicion: {reason}\n{}",
        a.log_text()
    );
    let ev = unhealthy_evidence(&a, "primary", Family::V4);
    assert!(
        ev.iter()
            .any(|e| e.contains("confirmed after a suspicion") && e.contains("unanswered")),
        "the evidence names the suspicion and the burst's result: {ev:?}"
    );
    let s = a.status().unwrap();
    assert!(s.uplinks[0].suspicion.bursts >= 1);
    assert!(s.uplinks[0].suspicion.burst_probes >= 4);
}

#[test]
fn withdrawn_upstream_answers_with_unreachables_and_the_switch_names_them() {
    let lab = lab();
    let a = judged(&lab, "");
    lab.upstream_withdrawn(Uplink::Primary).unwrap();
    wait_route(&lab, &a, Family::V4, Uplink::Secondary, S(10));
    wait_route(&lab, &a, Family::V6, Uplink::Secondary, S(10));
    for f in Family::ALL {
        let sw = a.switches(f);
        let (_, _, reason) = sw
            .iter()
            .find(|(_, to, _)| to.as_deref() == Some("secondary"))
            .expect("switched to secondary")
            .clone();
        assert_eq!(reason, "quorum+suspicion_icmp_unreachable", "{f}");
    }
    assert!(suspicions(&a, 0, "icmp_unreachable") >= 1);
    lab.upstream_restored(Uplink::Primary).unwrap();
}

#[test]
fn random_tcp_loss_on_a_healthy_path_does_not_switch() {
    let lab = lab();
    let a = judged(&lab, "");
    lab.tcp_loss(Uplink::Primary, 50).unwrap();
    let flow = lab.tcp_flow(Family::V4).unwrap();
    let before = a.switches(Family::V4).len();
    std::thread::sleep(S(20));
    let s = a.status().unwrap();
    drop(flow);
    eprintln!("20 s of 2 % TCP loss: {:?}", s.uplinks[0].suspicion);
    assert_eq!(a.switches(Family::V4).len(), before, "no switch");
    assert_eq!(active(&s, Family::V4), Some("primary"));
    assert!(
        s.uplinks[0].suspicion.bursts <= 1,
        "no burst storm: {:?}",
        s.uplinks[0].suspicion
    );
    lab.clear_tcp_loss(Uplink::Primary).unwrap();
}

/// An ICMP destination unreachable (code 1, host) sent from `ns` to `to`,
/// quoting a UDP datagram from `quoted_src` to a transit target.
fn send_unreachable(lab: &Lab, ns: &str, to: IpAddr, quoted_src: [u8; 4]) {
    let mut m = vec![3u8, 1, 0, 0, 0, 0, 0, 0];
    let mut ip = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 17, 0, 0];
    ip.extend(quoted_src);
    ip.extend([198, 19, 0, 1]);
    m.extend(&ip);
    m.extend([0x30, 0x39, 0x30, 0x39, 0, 16, 0, 0]);
    let mut sum: u32 = m
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    m[2..4].copy_from_slice(&ck.to_be_bytes());
    lab.in_ns(ns, || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .expect("raw socket");
        s.send_to(&m, &SocketAddr::new(to, 0).into())
            .expect("send unreachable");
    })
    .unwrap();
}

#[test]
fn forged_unreachable_not_quoting_our_packet_is_ignored() {
    let lab = lab();
    let a = judged(&lab, "");
    let router = lab.router_ns(Uplink::Primary);
    let server = Uplink::Primary.server_addr(Family::V4);
    // From the gateway itself, but quoting a packet that is not ours.
    for _ in 0..5 {
        send_unreachable(&lab, &router, server, [198, 18, 99, 99]);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(S(1));
    assert_eq!(suspicions(&a, 0, "icmp_unreachable"), 0, "forged: ignored");
    // The control: the same message quoting our own address counts (one
    // suspicion, one burst, no switch: the transits answer).
    let IpAddr::V4(ours) = server else {
        unreachable!()
    };
    send_unreachable(&lab, &router, server, ours.octets());
    a.wait_for("the genuine unreachable counted", S(5), |s| {
        s.uplinks[0]
            .suspicion
            .by_source
            .get("icmp_unreachable")
            .is_some_and(|n| *n >= 1)
    });
    std::thread::sleep(S(1));
    let s = a.status().unwrap();
    assert_eq!(active(&s, Family::V4), Some("primary"), "no switch");
    assert!(s.uplinks[0].suspicion.bursts >= 1);
    // Counted in the metrics too.
    let m = a.client().metrics().expect("metrics");
    let sample = |prefix: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
    };
    assert_eq!(
        sample("uplinkd_suspicions_total{uplink=\"primary\",source=\"icmp_unreachable\"}"),
        1
    );
    assert_eq!(
        sample("uplinkd_suspicions_total{uplink=\"primary\",source=\"tcp_stall\"}"),
        0
    );
    assert!(sample("uplinkd_suspicion_burst_probes_total{uplink=\"primary\"}") >= 4);
}

#[test]
fn steady_transit_probes_are_the_same_with_suspicion_on_and_off() {
    // Two labs side by side, one agent with suspicion on and one with it
    // off, each with a TCP flow and a UDP stream, counted over the same 10 s: the host's
    // load (which can delay a reply past its overdue check and start an
    // ordinary burst, on or off) is then the same for both.
    let labs = [lab(), lab()];
    let counts: Vec<(u64, u64)> = std::thread::scope(|sc| {
        let hs: Vec<_> = labs
            .iter()
            .zip(["[probe]\nsuspicion = true", "[probe]\nsuspicion = false"])
            .map(|(lab, overrides)| {
                sc.spawn(move || {
                    let a = judged(lab, overrides);
                    let flow = lab.tcp_flow(Family::V4).unwrap();
                    // And a one-way UDP stream (the bench's): it sends and
                    // never receives, which is no stall.
                    let stream = lab
                        .udp_stream(&StreamSpec {
                            family: Family::V4,
                            rate: 2000,
                            max_duration: S(30),
                            ..StreamSpec::default()
                        })
                        .unwrap();
                    std::thread::sleep(S(2));
                    let n = lab.count_transit_probes(0, S(10)).unwrap();
                    drop(flow);
                    stream.stop();
                    let s = a.status().unwrap();
                    (n, s.uplinks[0].suspicion.burst_probes)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "echo requests at transit-a in 10 s (count, suspicion burst probes): on {:?}, off {:?}",
        counts[0], counts[1]
    );
    // No suspicion, no extra probe.
    assert_eq!(counts[0].1, 0, "suspicion bursts with a healthy flow");
    assert_eq!(counts[1].1, 0);
    // 2 families x (1/s through the primary + 0.5/s through the standby):
    // 30 in 10 s, give or take the probes on the window's edges.
    assert!(counts[0].0 >= 26 && counts[1].0 >= 26, "{counts:?}");
    assert!(counts[0].0.abs_diff(counts[1].0) <= 4, "{counts:?}");
}
