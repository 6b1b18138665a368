//! The pure core with bond members: a mixed server (a bond of two members
//! plus a routed uplink), driven by a small simulation that answers the
//! core's probes from a model of the network. The bond members follow the
//! same rules as routes; when the whole bond is unusable the default route
//! moves to the routed uplink, and back after `failback_after`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use uplinkd::config::*;
use uplinkd::core::*;
use uplinkd::status::{BondStatus, Change, GatewayMode, Reason};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn member(name: &str, ifname: &str, probe4: Option<&str>) -> UplinkConfig {
    UplinkConfig {
        name: name.into(),
        interface: ifname.into(),
        gateway4: Some("198.18.1.1".parse().unwrap()),
        gateway6: None,
        bond: Some("bond0".into()),
        probe_address4: probe4.map(|p| p.parse().unwrap()),
        probe_address6: None,
        gateway_probe: Default::default(),
    }
}

fn config(probe_addresses: bool) -> Config {
    let text = r#"
[agent]
socket = "/run/uplinkd-test.sock"
[policy]
failback_after = "5s"
[[uplink]]
name = "x"
interface = "eth0"
gateway4 = "198.18.1.1"
[[transit]]
name = "transit-a"
targets = ["198.19.0.1"]
[[transit]]
name = "transit-b"
targets = ["198.19.0.2"]
"#;
    let mut cfg = uplinkd::config::parse(text, "test").expect("valid");
    let (a, b) = if probe_addresses {
        (Some("198.18.1.10"), Some("198.18.1.11"))
    } else {
        (None, None)
    };
    cfg.uplinks = vec![
        member("member-a", "eth0", a),
        member("member-b", "eth1", b),
        UplinkConfig {
            name: "routed".into(),
            interface: "eth2".into(),
            gateway4: Some("198.18.2.1".parse().unwrap()),
            gateway6: None,
            bond: None,
            probe_address4: None,
            probe_address6: None,
            // ICMP: the routed uplink is the bond's fallback here (its
            // echo stream is tested in tests/core_scenarios.rs); the bond
            // members' echo streams are what is tested here.
            gateway_probe: uplinkd::config::GatewayProbe::Icmp,
        },
    ];
    cfg
}

#[derive(Default, Clone)]
struct Net {
    carrier_down: [bool; 3],
    gw_dead: [bool; 3],
    upstream_dead: [bool; 3],
    /// The gateway behind the uplink stops forwarding: its forwarding-plane
    /// echoes are lost, it still answers ARP / pings.
    fwd_dead: [bool; 3],
}

struct Sim {
    core: Core,
    now: Duration,
    net: Net,
    pending: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    log: Vec<(Duration, Action)>,
    /// The driver's active member.
    active: String,
    /// The echo streams the core asked for, by (uplink, family index),
    /// run on each step as the daemon's poller thread runs them: (judge,
    /// ticks run, when the newest echo came back).
    streams: BTreeMap<(usize, usize), (echo::EchoRun, u64, Option<Duration>)>,
    /// Echoes sent by the streams, per uplink.
    echoes: [u64; 3],
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let mut s = Sim {
            core: Core::new(cfg, Duration::ZERO),
            now: Duration::ZERO,
            net: Net::default(),
            pending: BTreeMap::new(),
            seq: 0,
            log: Vec::new(),
            active: "eth0".into(),
            streams: BTreeMap::new(),
            echoes: [0; 3],
        };
        for u in 0..3 {
            s.feed(Event::Carrier {
                uplink: u,
                up: true,
                present: true,
                source: CarrierSource::Netlink,
            });
        }
        s.bond();
        s.feed(Event::DefaultRoute {
            family: Family::V4,
            via: RouteVia::Absent,
        });
        s.feed(Event::DefaultRoute {
            family: Family::V6,
            via: RouteVia::Absent,
        });
        s
    }

    fn bond(&mut self) {
        let st = BondStatus {
            name: "bond0".into(),
            present: true,
            active: Some(self.active.clone()),
            mode: Some("active-backup".into()),
            miimon_ms: Some(100),
            arp_interval_ms: Some(0),
            enslaved: vec!["eth0".into(), "eth1".into()],
            ..Default::default()
        };
        self.feed(Event::Bond(st));
    }

    fn feed(&mut self, ev: Event) {
        let actions = self.core.handle(self.now, ev);
        let mut bond_changed = false;
        for a in actions {
            match &a {
                Action::Probe(req) => {
                    let u = req.uplink;
                    let ok = !self.net.carrier_down[u]
                        && !self.net.gw_dead[u]
                        && match req.kind {
                            ProbeKind::Gateway => true,
                            // The echo comes back from the gateway itself.
                            ProbeKind::Echo => !self.net.fwd_dead[u],
                            ProbeKind::Transit(_) => {
                                !self.net.upstream_dead[u] && !self.net.fwd_dead[u]
                            }
                        };
                    let at = self.now + if ok { ms(1) } else { req.timeout };
                    let outcome = if ok {
                        ProbeOutcome::Reply { rtt: ms(1) }
                    } else {
                        ProbeOutcome::Timeout
                    };
                    self.seq += 1;
                    self.pending.insert(
                        (at, self.seq),
                        Event::ProbeDone {
                            id: req.id,
                            outcome,
                        },
                    );
                }
                Action::SetBondActive { uplink, .. } => {
                    self.active = format!("eth{uplink}");
                    bond_changed = true;
                }
                Action::EchoStream {
                    uplink,
                    family,
                    spec,
                    fresh,
                    ..
                } => {
                    let key = (*uplink, family.index());
                    match (spec, self.streams.get_mut(&key)) {
                        (None, _) => {
                            self.streams.remove(&key);
                        }
                        (Some(spec), Some(st)) if !fresh => st.0.respec(*spec),
                        (Some(spec), _) => {
                            self.streams
                                .insert(key, (echo::EchoRun::new(*spec), 0, None));
                        }
                    }
                }
                Action::SetDefaultRoute { family, uplink } => {
                    self.seq += 1;
                    self.pending.insert(
                        (self.now + ms(1), self.seq),
                        Event::DefaultRoute {
                            family: *family,
                            via: RouteVia::Uplink(*uplink),
                        },
                    );
                }
                _ => {}
            }
            self.log.push((self.now, a));
        }
        if bond_changed {
            self.bond();
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let next_tick = self.now + ms(5);
            while let Some((&(t, k), _)) = self.pending.iter().next() {
                if t > next_tick {
                    break;
                }
                let ev = self.pending.remove(&(t, k)).unwrap();
                self.now = self.now.max(t);
                self.feed(ev);
            }
            self.now = next_tick;
            self.stream_tick();
            self.feed(Event::Tick);
        }
    }

    /// One tick of the echo streams: each judged (its news to the core),
    /// then its echoes sent, back at once unless the model loses them.
    fn stream_tick(&mut self) {
        let tick = self.core.config().probe.carrier_interval;
        let keys: Vec<(usize, usize)> = self.streams.keys().copied().collect();
        for (u, fi) in keys {
            let st = self.streams.get_mut(&(u, fi)).expect("listed");
            let (news, last_back) = (st.0.judge(), st.2);
            if let Some(news) = news {
                self.feed(Event::Echo {
                    uplink: u,
                    family: Family::ALL[fi],
                    news,
                    last_back,
                });
            }
            // The news may have made the core stop it.
            let Some((run, ticks, last_back)) = self.streams.get_mut(&(u, fi)) else {
                continue;
            };
            {
                for _ in 0..run.due(*ticks, tick) {
                    let seq = run.send();
                    self.echoes[u] += 1;
                    let n = &self.net;
                    if !n.carrier_down[u] && !n.gw_dead[u] && !n.fwd_dead[u] && run.back(seq) {
                        *last_back = Some(self.now);
                    }
                }
            }
            *ticks += 1;
        }
    }

    fn active(&self) -> Option<String> {
        self.core
            .active(Family::V4)
            .map(|u| self.core.config().uplinks[u].name.clone())
    }

    fn since(&self, t: Duration) -> impl Iterator<Item = &Action> {
        self.log
            .iter()
            .filter(move |(at, _)| *at >= t)
            .map(|(_, a)| a)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn mixed_server_member_then_routed_uplink_then_back() {
    let mut s = Sim::new(config(false));
    s.run_for(ms(2000));
    assert_eq!(s.active().as_deref(), Some("member-a"));
    assert_eq!(s.active, "eth0");

    // The gateway through member-a dies: the bond moves to eth1; the route
    // (via the bond, same gateway) stays on the bond.
    s.net.gw_dead[0] = true;
    let t = s.now;
    s.run_for(ms(2000));
    assert_eq!(s.active().as_deref(), Some("member-b"));
    assert_eq!(s.active, "eth1");
    assert!(s
        .since(t)
        .any(|a| matches!(a, Action::SetBondActive { uplink: 1, .. })));

    // The gateway through member-b dies too: the whole bond is unusable,
    // the default route moves to the routed uplink.
    s.net.gw_dead[1] = true;
    let t = s.now;
    s.run_for(ms(2000));
    assert_eq!(s.active().as_deref(), Some("routed"));
    assert!(s.since(t).any(|a| matches!(
        a,
        Action::SetDefaultRoute {
            family: Family::V4,
            uplink: 2
        }
    )));
    assert!(
        !s.since(t)
            .any(|a| matches!(a, Action::SetBondActive { .. })),
        "no member is chosen while the whole bond is dead"
    );

    // member-a recovers: back to the bond (its preferred member) only after
    // failback_after (5 s here).
    s.net.gw_dead[0] = false;
    let t = s.now;
    s.run_for(ms(3000));
    assert_eq!(s.active().as_deref(), Some("routed"), "no early failback");
    s.run_for(ms(4000));
    assert_eq!(s.active().as_deref(), Some("member-a"));
    assert_eq!(s.active, "eth0");
    assert!(s.since(t).any(|a| matches!(
        a,
        Action::Report(Change::ActiveChanged { reason, .. }) if reason == "failback"
    )));
}

#[test]
fn member_upstream_failure_counts_only_with_a_probe_address() {
    // With probe addresses the transits are probed through each member and
    // the quorum moves the bond off a member whose upstream is dead.
    let mut s = Sim::new(config(true));
    s.run_for(ms(3000));
    assert_eq!(s.active, "eth0");
    s.net.upstream_dead[0] = true;
    s.run_for(ms(8000));
    assert_eq!(s.active().as_deref(), Some("member-b"));
    assert_eq!(s.active, "eth1");
    let st = s.core.status(s.now);
    assert!(
        st.uplinks[0]
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::Quorum { .. })),
        "{:?}",
        st.uplinks[0].reasons
    );
    let checks = &st.uplinks[1].bond.as_ref().unwrap().checks;
    assert!(checks.iter().any(|c| c.check == "transits4" && c.probed));
    assert!(st.uplinks[1]
        .transits
        .iter()
        .any(|t| t.target == ip("198.19.0.1") && t.reachable == Some(true)));

    // Without probe addresses the members' transits are not probed: the
    // same failure is invisible to them (and status says so).
    let mut s = Sim::new(config(false));
    s.run_for(ms(3000));
    s.net.upstream_dead[0] = true;
    s.run_for(ms(8000));
    assert_eq!(s.active, "eth0");
    let st = s.core.status(s.now);
    assert!(st.uplinks[0].transits.is_empty());
    let checks = &st.uplinks[0].bond.as_ref().unwrap().checks;
    assert!(checks.iter().any(|c| c.check == "transits4" && !c.probed));
}

/// Issue 13: a member with a probe address is probed by forwarding-plane
/// echoes (auto finds out), the backup too; one without stays on ARP. A
/// gateway that stops forwarding behind the active member (it still
/// answers ARP) moves the bond, with the reason `forwarding`. Once in echo
/// mode a member's echoes run as a stream on the poller's tick, as a
/// routed uplink's (fast through the active member, at the gateway
/// interval through the backup), so the move follows within the stream's
/// `echo_dead_after`, not the gateway timers' `gateway_dead_after`.
#[test]
fn members_echo_from_their_probe_address_and_a_forwarding_dead_gateway_moves_the_bond() {
    let mut s = Sim::new(config(true));
    s.run_for(ms(3000));
    assert_eq!(s.active, "eth0");
    let st = s.core.status(s.now);
    for i in 0..2 {
        let gp = st.uplinks[i].gateway_probe.ipv4.as_ref().unwrap();
        assert_eq!(gp.mode, GatewayMode::Echo, "{}: {gp:?}", st.uplinks[i].name);
    }
    // The auto trial's round echoes went through the backup too...
    assert!(s.log.iter().any(|(_, a)| matches!(a,
        Action::Probe(r) if r.uplink == 1 && r.kind == ProbeKind::Echo)));
    // ...then each member's stream took over: fast through the active
    // member, slow through the backup, and no more rounds.
    let p = s.core.config().probe.clone();
    let every = |u: usize| s.streams.get(&(u, 0)).map(|st| st.0.spec.every);
    assert_eq!(every(0), Some(p.echo_interval));
    assert_eq!(every(1), Some(p.gateway_interval));
    let t = s.now;
    let echoes = s.echoes;
    s.run_for(ms(500));
    assert!(
        !s.since(t).any(|a| matches!(a,
            Action::Probe(r) if r.uplink < 2 && r.kind == ProbeKind::Echo)),
        "no round echoes in echo mode"
    );
    // One per `echo_interval` (12 ms: every third tick, and this model
    // ticks every 5 ms): 33 in 500 ms.
    assert!(s.echoes[0] - echoes[0] >= 30, "{:?} {echoes:?}", s.echoes);
    assert!(s.echoes[1] > echoes[1], "{:?}", s.echoes);

    s.net.fwd_dead[0] = true;
    let t = s.now;
    s.run_for(ms(3000));
    assert_eq!(s.active, "eth1");
    let moved = s
        .log
        .iter()
        .find(|(at, a)| *at >= t && matches!(a, Action::SetBondActive { uplink: 1, .. }))
        .map(|(at, _)| *at - t)
        .expect("the bond moved");
    println!("bond moved {moved:?} after the fault");
    // The issue's bound (50 ms): the stream stops `echo_dead_after` (12 ms)
    // after its first lost echo left; the gateway timers would take
    // `gateway_dead_after` (60 ms) and more.
    assert!(
        moved <= ms(50),
        "bond moved {moved:?} after the gateway stopped forwarding"
    );
    let st = s.core.status(s.now);
    assert!(
        st.uplinks[0]
            .reasons
            .iter()
            .any(|r| matches!(r, Reason::Forwarding { .. })),
        "{:?}",
        st.uplinks[0].reasons
    );
    assert!(s.log.iter().any(|(_, a)| matches!(a,
        Action::Report(Change::Bond { to: Some(to), cause, .. })
            if to == "eth1" && cause.starts_with("forwarding"))));

    // Without probe addresses: ARP only (mode icmp), no echo sent.
    let mut s = Sim::new(config(false));
    s.run_for(ms(3000));
    let st = s.core.status(s.now);
    for i in 0..2 {
        let gp = st.uplinks[i].gateway_probe.ipv4.as_ref().unwrap();
        assert_eq!(gp.mode, GatewayMode::Icmp, "{}: {gp:?}", st.uplinks[i].name);
    }
    assert!(!s.log.iter().any(|(_, a)| matches!(a,
        Action::Probe(r) if r.uplink < 2 && r.kind == ProbeKind::Echo)));
}

#[test]
fn a_carrier_flap_is_one_failure_and_the_gateway_answers_before_reuse() {
    let mut s = Sim::new(config(false));
    s.run_for(ms(2000));
    assert_eq!(s.active, "eth0");
    // Carrier down for 40 ms, less than gateway_dead_after (every probe
    // through it lost meanwhile)...
    s.net.carrier_down[0] = true;
    s.feed(Event::Carrier {
        uplink: 0,
        up: false,
        present: true,
        source: CarrierSource::Poll,
    });
    s.run_for(ms(40));
    assert_eq!(s.active, "eth1");
    // ...then up again.
    s.net.carrier_down[0] = false;
    let t = s.now;
    s.feed(Event::Carrier {
        uplink: 0,
        up: true,
        present: true,
        source: CarrierSource::Poll,
    });
    let st = s.core.status(s.now);
    assert_ne!(
        st.uplinks[0].gateway.ipv4.as_ref().unwrap().reachable,
        Some(true),
        "the gateway's verdict from before the carrier loss is not trusted"
    );
    s.run_for(ms(1000));
    // No second failure from the probes lost while the carrier was down.
    let failures = s
        .since(t)
        .filter(|a| {
            matches!(a, Action::Report(Change::UplinkHealth { uplink, state, .. })
                if uplink == "member-a" && *state == uplinkd::status::UplinkState::Unhealthy)
        })
        .count();
    assert_eq!(failures, 0, "{:?}", s.since(t).collect::<Vec<_>>());
    let st = s.core.status(s.now);
    assert_eq!(st.uplinks[0].flaps, 1);
    assert_eq!(
        st.uplinks[0].gateway.ipv4.as_ref().unwrap().reachable,
        Some(true)
    );
}

/// A standby member's neighbours are the bond's: when it fails while the
/// active member carries the traffic through the bond, the bond's entries
/// are not flushed (the active member's traffic uses them). The routed
/// uplink, a standby on its own interface, is flushed once when it fails.
#[test]
fn failed_standby_member_does_not_flush_the_bonds_neighbours() {
    let mut s = Sim::new(config(false));
    s.run_for(ms(2000));
    assert_eq!(s.active().as_deref(), Some("member-a"));
    let t = s.now;
    s.net.gw_dead[1] = true;
    s.run_for(ms(3000));
    assert_eq!(s.active().as_deref(), Some("member-a"));
    assert_eq!(s.active, "eth0");
    let st = s.core.status(s.now);
    assert!(
        !st.uplinks[1].reasons.is_empty(),
        "member-b not found failed"
    );
    let flushes: Vec<&Action> = s
        .since(t)
        .filter(|a| matches!(a, Action::FlushNeighbours { .. }))
        .collect();
    assert!(flushes.is_empty(), "{flushes:?}");

    s.net.gw_dead[2] = true;
    s.run_for(ms(3000));
    let flushes: Vec<&Action> = s
        .since(t)
        .filter(|a| matches!(a, Action::FlushNeighbours { .. }))
        .collect();
    assert_eq!(
        flushes,
        [&Action::FlushNeighbours {
            uplink: 2,
            family: Family::V4
        }]
    );
}
