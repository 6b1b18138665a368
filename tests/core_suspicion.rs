//! Passive suspicion in the pure core: a small discrete-event simulation
//! answers the core's probes and models the server's own TCP traffic, whose
//! counters (and the uplinks' interface counters) are fed to the core every
//! `SAMPLE` as the daemon's poller does; we assert on the actions.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use uplinkd::config::*;
use uplinkd::core::suspicion::{Counters, LinkCounters, TcpCounters};
use uplinkd::core::*;
use uplinkd::status::Change;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How often the daemon reads the counters (every 4th tick of 4 ms).
const SAMPLE: Duration = Duration::from_millis(16);

fn config(suspicion: bool) -> Config {
    Config {
        agent: AgentConfig::default(),
        policy: PolicyConfig {
            failback_after: PolicyConfig::DEFAULT_FAILBACK_AFTER,
            quorum: PolicyConfig::default_quorum(4),
            damping: DampingConfig::default(),
        },
        probe: ProbeConfig {
            suspicion,
            ..ProbeConfig::default()
        },
        uplinks: ["primary", "secondary"]
            .iter()
            .enumerate()
            .map(|(i, n)| UplinkConfig {
                name: n.to_string(),
                interface: format!("eth{i}"),
                gateway4: Some(format!("198.18.{}.1", i + 1).parse().unwrap()),
                gateway6: Some(format!("2001:db8:{}::1", i + 1).parse().unwrap()),
                bond: None,
                probe_address4: None,
                probe_address6: None,
                gateway_probe: Default::default(),
            })
            .collect(),
        transits: (1..=4)
            .map(|i| TransitConfig {
                name: format!("transit-{}", (b'a' + i as u8 - 1) as char),
                targets: vec![
                    format!("198.19.0.{i}").parse().unwrap(),
                    format!("2001:db8:ff::{i}").parse().unwrap(),
                ],
            })
            .collect(),
        hooks: Default::default(),
        metrics: Default::default(),
    }
}

/// The server's TCP traffic, per millisecond, through the uplink carrying IPv4.
#[derive(Clone, Debug)]
struct Traffic {
    /// Segments sent per ms while the flow makes progress.
    out_per_ms: u32,
    /// Random loss of every segment, both ways (0.02 = 2 %).
    loss: f64,
    /// Not TCP (e.g. QUIC over UDP): only the interface counters see it.
    udp: bool,
}

#[derive(Clone, Debug, Default)]
struct Net {
    /// (uplink) everything beyond the gateway silently dropped, since when.
    upstream_dead: [Option<Duration>; 2],
    traffic: Option<Traffic>,
}

struct Sim {
    core: Core,
    now: Duration,
    net: Net,
    rng: StdRng,
    pending: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    route: [Option<UplinkId>; 2],
    log: Vec<(Duration, Action)>,
    /// Feed counter samples every `SAMPLE`.
    sampling: bool,
    next_sample: Duration,
    tcp: TcpCounters,
    links: [LinkCounters; 2],
    /// Transit probes sent, per (uplink, target).
    transit_probes: BTreeMap<(UplinkId, IpAddr), u64>,
    /// Up to where the traffic model has run.
    traffic_at: Duration,
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let mut s = Sim {
            core: Core::new(cfg, Duration::ZERO),
            now: Duration::ZERO,
            net: Net::default(),
            rng: StdRng::seed_from_u64(14),
            pending: BTreeMap::new(),
            seq: 0,
            route: [None, None],
            log: Vec::new(),
            sampling: false,
            next_sample: Duration::ZERO,
            tcp: TcpCounters::default(),
            links: Default::default(),
            transit_probes: BTreeMap::new(),
            traffic_at: Duration::ZERO,
        };
        for u in 0..2 {
            s.feed(Event::Carrier {
                uplink: u,
                up: true,
                present: true,
                source: CarrierSource::Netlink,
            });
        }
        for f in Family::ALL {
            s.feed(Event::DefaultRoute {
                family: f,
                via: RouteVia::Absent,
            });
        }
        s
    }

    fn feed(&mut self, ev: Event) {
        let actions = self.core.handle_all(self.now, [ev]);
        for a in actions {
            self.apply(&a);
            self.log.push((self.now, a));
        }
    }

    fn dead(&self, u: UplinkId) -> bool {
        self.net.upstream_dead[u].is_some_and(|t| self.now >= t)
    }

    fn apply(&mut self, a: &Action) {
        match a {
            Action::Probe(p) => {
                let u = p.uplink;
                self.links[u].tx_packets += 1;
                let alive = match p.kind {
                    // The router answers and forwards: only the upstream dies here.
                    ProbeKind::Gateway | ProbeKind::Echo => true,
                    ProbeKind::Transit(_) => {
                        *self.transit_probes.entry((u, p.target)).or_default() += 1;
                        !self.dead(u)
                    }
                };
                self.seq += 1;
                if alive {
                    let rtt = Duration::from_micros(200);
                    self.links[u].rx_packets += 1;
                    self.pending.insert(
                        (self.now + rtt, self.seq),
                        Event::ProbeDone {
                            id: p.id,
                            outcome: ProbeOutcome::Reply { rtt },
                        },
                    );
                } else {
                    self.pending.insert(
                        (self.now + p.timeout, self.seq),
                        Event::ProbeDone {
                            id: p.id,
                            outcome: ProbeOutcome::Timeout,
                        },
                    );
                }
            }
            Action::SetDefaultRoute { family, uplink } => {
                self.route[family.index()] = Some(*uplink);
            }
            Action::VerifyRoute { family } => {
                let via = match self.route[family.index()] {
                    Some(u) => RouteVia::Uplink(u),
                    None => RouteVia::Absent,
                };
                self.seq += 1;
                self.pending.insert(
                    (self.now, self.seq),
                    Event::DefaultRoute {
                        family: *family,
                        via,
                    },
                );
            }
            _ => {}
        }
    }

    /// Run the traffic model up to `now`, a millisecond at a time: a flow
    /// that sends `out_per_ms` segments and gets one ACK for two back; a
    /// lost segment is retransmitted (by fast retransmit mostly, by a tail
    /// loss probe 1 in 4 times and by a timeout 1 in 20). Through a dead
    /// upstream nothing comes back: the window drains in the first 10 ms,
    /// then a loss probe at 80 ms and timeouts doubling from 290 ms (as
    /// measured in the lab, issue 14).
    fn traffic(&mut self) {
        let tcp_before = self.tcp;
        self.traffic_tcp();
        if self.net.traffic.as_ref().is_some_and(|t| t.udp) {
            self.tcp = tcp_before;
        }
    }

    fn traffic_tcp(&mut self) {
        while self.traffic_at + ms(1) <= self.now {
            self.traffic_at += ms(1);
            let t = self.traffic_at;
            let Some(tr) = self.net.traffic.clone() else {
                continue;
            };
            let Some(u) = self.route[0] else { continue };
            match self.net.upstream_dead[u] {
                Some(d) if t >= d => {
                    let since = (t - d).as_millis();
                    let out = if since < 10 {
                        tr.out_per_ms as u64
                    } else if since == 80 {
                        self.tcp.loss_probes += 1;
                        self.tcp.retrans_segs += 1;
                        1
                    } else if since == 290 || since == 870 || since == 2030 {
                        self.tcp.timeouts += 1;
                        self.tcp.retrans_segs += 1;
                        1
                    } else {
                        0
                    };
                    self.tcp.out_segs += out;
                    self.links[u].tx_packets += out;
                }
                _ => {
                    let mut out = 0u64;
                    let mut inn = 0u64;
                    for i in 0..tr.out_per_ms {
                        out += 1;
                        if self.rng.random::<f64>() < tr.loss {
                            self.tcp.retrans_segs += 1;
                            out += 1;
                            let r = self.rng.random::<f64>();
                            if r < 0.05 {
                                self.tcp.timeouts += 1;
                            } else if r < 0.30 {
                                self.tcp.loss_probes += 1;
                            }
                        }
                        if i % 2 == 0 && self.rng.random::<f64>() >= tr.loss {
                            inn += 1;
                        }
                    }
                    self.tcp.out_segs += out;
                    self.tcp.in_segs += inn;
                    self.links[u].tx_packets += out;
                    self.links[u].rx_packets += inn;
                }
            }
        }
    }

    fn run_until(&mut self, until: Duration) {
        for _ in 0..100_000_000 {
            let p = self.pending.keys().next().map(|k| k.0);
            let d = self.core.next_deadline();
            let s = self.sampling.then_some(self.next_sample);
            let next = [p, d, s].into_iter().flatten().min().unwrap_or(until);
            if next > until {
                self.now = until;
                self.traffic();
                return;
            }
            self.now = self.now.max(next);
            self.traffic();
            if p == Some(next) {
                let key = *self.pending.keys().next().unwrap();
                let ev = self.pending.remove(&key).unwrap();
                self.feed(ev);
            } else if s == Some(next) {
                self.next_sample += SAMPLE;
                let c = Counters {
                    at: self.now,
                    tcp: Some(self.tcp),
                    links: vec![(0, self.links[0]), (1, self.links[1])],
                };
                self.feed(Event::Counters(c));
            } else {
                self.feed(Event::Tick);
            }
        }
        panic!("simulation did not converge");
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until)
    }

    fn switches(&self) -> Vec<(Duration, Family, UplinkId)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::SetDefaultRoute { family, uplink } => Some((*t, *family, *uplink)),
                _ => None,
            })
            .collect()
    }

    fn reports(&self) -> Vec<(Duration, Change)> {
        self.log
            .iter()
            .filter_map(|(t, a)| match a {
                Action::Report(c) => Some((*t, c.clone())),
                _ => None,
            })
            .collect()
    }

    fn suspicions(&self) -> Vec<(Duration, String, String)> {
        self.reports()
            .into_iter()
            .filter_map(|(t, c)| match c {
                Change::Suspicion { uplink, source, .. } => Some((t, uplink, source)),
                _ => None,
            })
            .collect()
    }
}

/// Settled on the primary, with the traffic model and the counter samples
/// running for a few seconds.
fn settled(suspicion: bool, traffic: Option<Traffic>) -> Sim {
    let mut s = Sim::new(config(suspicion));
    s.net.traffic = traffic;
    s.sampling = true;
    s.run_for(Duration::from_secs(3));
    assert_eq!(s.route, [Some(0), Some(0)], "initial route on primary");
    s
}

fn flow() -> Option<Traffic> {
    Some(Traffic {
        out_per_ms: 10,
        loss: 0.0,
        udp: false,
    })
}

#[test]
fn blackhole_with_tcp_progress_stopping_switches_well_under_200ms() {
    let mut s = settled(true, flow());
    assert!(s.suspicions().is_empty(), "no suspicion while healthy");
    // Between two steady far probes, so the transit-only path would take
    // its usual ~600 ms.
    let t0 = s.now + ms(5);
    s.net.upstream_dead[0] = Some(t0);
    s.run_for(Duration::from_secs(3));
    let sw: Vec<_> = s.switches().into_iter().filter(|x| x.0 >= t0).collect();
    let v4 = sw
        .iter()
        .find(|x| x.1 == Family::V4)
        .expect("ipv4 switched");
    for (t, c) in s.reports().iter().filter(|x| x.0 >= t0) {
        eprintln!("{:?} {c:?}", *t - t0);
    }
    assert_eq!(v4.2, 1);
    assert!(v4.0 - t0 < ms(150), "switched after {:?}", v4.0 - t0);
    let susp = s.suspicions();
    assert_eq!(susp.len(), 1, "one suspicion, one burst: {susp:?}");
    assert_eq!(susp[0].1, "primary");
    assert_eq!(susp[0].2, "tcp_stall");
    // The switch names the suspicion, and the health change the burst's result.
    let reports = s.reports();
    let reason = reports
        .iter()
        .find_map(|(_, c)| match c {
            Change::ActiveChanged {
                family,
                to: Some(to),
                reason,
                ..
            } if family == "ipv4" && to == "secondary" => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(reason, "quorum+suspicion_tcp_stall");
    let evidence = reports
        .iter()
        .find_map(|(_, c)| match c {
            Change::UplinkHealth {
                uplink,
                family,
                evidence,
                ..
            } if uplink == "primary" && family == "ipv4" && evidence.contains("suspicion") => {
                Some(evidence.clone())
            }
            _ => None,
        })
        .expect("health change names the suspicion");
    assert!(
        evidence.contains("confirmed after a suspicion (tcp_stall)")
            && evidence.contains("unanswered"),
        "{evidence}"
    );
    let st = s.core.status(s.now);
    assert_eq!(st.uplinks[0].suspicion.by_source["tcp_stall"], 1);
    assert_eq!(st.uplinks[0].suspicion.bursts, 1);
    // 4 rounds to 4 targets of each family.
    assert_eq!(st.uplinks[0].suspicion.burst_probes, 2 * 4 * 4);
}

#[test]
fn blackhole_without_traffic_takes_the_transit_path_as_before() {
    // Same outage, no counters fed: no suspicion, the switch comes from
    // the steady probes and its reason is the quorum alone.
    let mut on = settled(true, None);
    let mut off = settled(false, None);
    for s in [&mut on, &mut off] {
        let t0 = s.now + ms(5);
        s.net.upstream_dead[0] = Some(t0);
        s.run_for(Duration::from_secs(3));
    }
    assert!(on.suspicions().is_empty());
    assert_eq!(on.switches(), off.switches(), "identical decisions");
    let sw = on.switches();
    assert_eq!(sw.last().unwrap().2, 1);
}

#[test]
fn withdrawn_upstream_icmp_unreachable_switches_fast() {
    let mut s = settled(true, None);
    let t0 = s.now + ms(5);
    s.net.upstream_dead[0] = Some(t0);
    s.run_until(t0 + ms(1));
    // The router answers our packets with unreachables; a forged one from
    // somebody else (not the active gateway) is ignored.
    s.feed(Event::Unreachable {
        family: Family::V4,
        from: "198.18.9.9".parse().unwrap(),
    });
    assert!(s.suspicions().is_empty(), "not from the active gateway");
    s.feed(Event::Unreachable {
        family: Family::V4,
        from: "198.18.1.1".parse().unwrap(),
    });
    s.run_for(Duration::from_secs(2));
    let v4 = s
        .switches()
        .into_iter()
        .find(|x| x.0 >= t0 && x.1 == Family::V4)
        .expect("switched");
    assert_eq!(v4.2, 1);
    assert!(v4.0 - t0 < ms(100), "switched after {:?}", v4.0 - t0);
    assert_eq!(s.suspicions()[0].2, "icmp_unreachable");
    let st = s.core.status(s.now);
    assert_eq!(st.uplinks[0].suspicion.by_source["icmp_unreachable"], 1);
}

#[test]
fn two_percent_loss_for_ten_minutes_no_burst_storm_no_switch() {
    let mut s = settled(
        true,
        Some(Traffic {
            out_per_ms: 10,
            loss: 0.02,
            udp: false,
        }),
    );
    s.run_for(Duration::from_secs(600));
    let after: Vec<_> = s
        .switches()
        .into_iter()
        .filter(|x| x.0 > ms(3000))
        .collect();
    assert!(after.is_empty(), "switched: {after:?}");
    let st = s.core.status(s.now);
    let bursts = st.uplinks[0].suspicion.bursts;
    assert!(bursts <= 10, "{bursts} bursts in 10 minutes");
    // The model has timeouts and loss probes in most windows: the rule
    // must not take them for a path failure while ACKs keep coming.
    assert_eq!(bursts, 0, "{:?}", s.suspicions());
}

#[test]
fn unreachables_every_10ms_on_a_healthy_path_cost_one_burst_per_second() {
    let mut s = settled(true, flow());
    let t0 = s.now;
    for _ in 0..1000 {
        s.feed(Event::Unreachable {
            family: Family::V4,
            from: "198.18.1.1".parse().unwrap(),
        });
        s.run_for(ms(10));
    }
    let secs = (s.now - t0).as_secs();
    let st = s.core.status(s.now);
    let u = &st.uplinks[0].suspicion;
    assert_eq!(u.by_source["icmp_unreachable"], 1000);
    assert!(u.bursts <= secs + 1, "{} bursts in {secs} s", u.bursts);
    assert!(u.bursts >= secs - 1, "{} bursts in {secs} s", u.bursts);
    assert!(s.switches().iter().all(|x| x.0 < t0), "no switch");
    // Only the suspected uplink's transits were burst: the standby got none.
    assert_eq!(st.uplinks[1].suspicion.burst_probes, 0);
}

#[test]
fn no_suspicion_no_extra_probe_in_60s() {
    // The steady far-target rate with suspicion on (and healthy traffic
    // counted) is exactly the one with it off.
    let mut on = settled(true, flow());
    let mut off = settled(false, flow());
    for s in [&mut on, &mut off] {
        s.transit_probes.clear();
        s.run_for(Duration::from_secs(60));
    }
    assert!(on.suspicions().is_empty(), "{:?}", on.suspicions());
    assert_eq!(on.transit_probes, off.transit_probes);
    // 1/s to each target through the primary, half that through the standby.
    let per: Vec<u64> = on
        .transit_probes
        .iter()
        .filter(|((u, _), _)| *u == 0)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(per.len(), 8);
    assert!(per.iter().all(|n| (59..=61).contains(n)), "{per:?}");
}

#[test]
fn a_one_way_stream_is_not_an_rx_stall() {
    // Packets go out, nothing but the probe replies ever comes back (a
    // UDP stream to a sink): no suspicion.
    let mut s = settled(true, None);
    for _ in 0..6000 {
        s.links[0].tx_packets += 10;
        s.run_for(ms(1));
    }
    assert!(s.suspicions().is_empty(), "{:?}", s.suspicions());
}

#[test]
fn udp_traffic_stopping_is_an_rx_stall() {
    udp_stall(false);
}

#[test]
fn the_echoes_do_not_hide_an_rx_stall() {
    // The same with the echo stream: the echoes keep coming back through a
    // router whose upstream died, and were they counted as traffic, the
    // interface would never look silent.
    udp_stall(true);
}

/// No TCP at all (QUIC, say): the active uplink's interface keeps sending
/// and stops receiving; `echoes`: with the forwarding-plane echo stream
/// beside the traffic.
fn udp_stall(echoes: bool) {
    let mut s = settled(
        true,
        Some(Traffic {
            out_per_ms: 10,
            loss: 0.0,
            udp: true,
        }),
    );
    for i in 0..300 {
        if echoes {
            echo(&mut s, i);
        }
        s.run_for(ms(1));
    }
    assert!(s.suspicions().is_empty(), "{:?}", s.suspicions());
    assert_eq!(s.tcp, TcpCounters::default(), "no TCP counted");
    let t0 = s.now + ms(5);
    s.net.upstream_dead[0] = Some(t0);
    // A UDP sender does not wait for acknowledgements: it keeps sending.
    for i in 0..300 {
        if echoes {
            echo(&mut s, i);
        }
        s.links[0].tx_packets += 10;
        s.run_for(ms(1));
    }
    let susp = s.suspicions();
    assert_eq!(susp.len(), 1, "{susp:?}");
    assert_eq!(susp[0].2, "rx_stall");
    let v4 = s
        .switches()
        .into_iter()
        .find(|x| x.0 >= t0 && x.1 == Family::V4)
        .expect("switched");
    assert!(v4.0 - t0 < ms(150), "switched after {:?}", v4.0 - t0);
}

/// The forwarding-plane echoes through the active uplink, one per family
/// every 12 ms (the default stream): each one out and, since the router
/// still forwards, one back, counted by the agent as its own.
fn echo(s: &mut Sim, ms_now: u64) {
    if ms_now % 12 == 0 {
        s.links[0].tx_packets += 2;
        s.links[0].rx_packets += 2;
        s.links[0].own_tx += 2;
    }
}

#[test]
fn a_one_way_stream_beside_the_echoes_is_not_an_rx_stall() {
    // Nothing but the echoes and the probe replies ever comes back: the
    // echoes are the agent's own, not a flow that stopped.
    let mut s = settled(true, None);
    for i in 0..6000 {
        echo(&mut s, i);
        s.links[0].tx_packets += 10;
        s.run_for(ms(1));
    }
    assert!(s.suspicions().is_empty(), "{:?}", s.suspicions());
}
