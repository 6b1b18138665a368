//! `Core::reconfigure`: a new configuration applied to a running core as a
//! difference (SIGHUP), in a small discrete-event simulation that answers
//! the core's probes by uplink *name* (indices move when uplinks do).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use uplinkd::config::*;
use uplinkd::core::*;
use uplinkd::status::{Change, Status, UplinkState};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn uplink(name: &str, ifname: &str, n: u8) -> UplinkConfig {
    UplinkConfig {
        name: name.into(),
        interface: ifname.into(),
        gateway4: Some(format!("198.18.{n}.1").parse().unwrap()),
        gateway6: Some(format!("2001:db8:{n}::1").parse().unwrap()),
        bond: None,
        probe_address4: None,
        probe_address6: None,
        // ICMP rounds: this simulation does not run the echo streams of
        // echo mode (tests/core_scenarios.rs does), and a reload is about
        // the rest of the state.
        gateway_probe: uplinkd::config::GatewayProbe::Icmp,
    }
}

fn transit(i: u8) -> TransitConfig {
    TransitConfig {
        name: format!("transit-{}", (b'a' + i - 1) as char),
        targets: vec![
            format!("198.19.0.{i}").parse().unwrap(),
            format!("2001:db8:ff::{i}").parse().unwrap(),
        ],
    }
}

fn config() -> Config {
    Config {
        agent: AgentConfig::default(),
        policy: PolicyConfig {
            failback_after: s(30),
            quorum: PolicyConfig::default_quorum(4),
            damping: DampingConfig::default(),
        },
        probe: ProbeConfig::default(),
        uplinks: vec![uplink("primary", "eth0", 1), uplink("secondary", "eth1", 2)],
        transits: (1..=4).map(transit).collect(),
        hooks: Default::default(),
        metrics: Default::default(),
    }
}

struct Sim {
    core: Core,
    now: Duration,
    /// Uplink names whose carrier is down.
    down: HashSet<String>,
    pending: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    /// The kernel's route per family, by uplink name.
    route: [Option<String>; 2],
    log: Vec<(Duration, Action)>,
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let mut sim = Sim {
            core: Core::new(cfg, Duration::ZERO),
            now: Duration::ZERO,
            down: HashSet::new(),
            pending: BTreeMap::new(),
            seq: 0,
            route: [None, None],
            log: Vec::new(),
        };
        sim.carriers();
        for f in Family::ALL {
            sim.feed(Event::DefaultRoute {
                family: f,
                via: RouteVia::Absent,
            });
        }
        sim
    }

    fn name(&self, u: UplinkId) -> String {
        self.core.config().uplinks[u].name.clone()
    }

    /// Report every uplink's carrier (as the daemon's reader does after a reload).
    fn carriers(&mut self) {
        for u in 0..self.core.config().uplinks.len() {
            let up = !self.down.contains(&self.name(u));
            self.feed(Event::Carrier {
                uplink: u,
                up,
                present: true,
                source: CarrierSource::Poll,
            });
        }
    }

    fn feed(&mut self, ev: Event) {
        let actions = self.core.handle(self.now, ev);
        self.apply_all(actions);
    }

    fn apply_all(&mut self, actions: Vec<Action>) {
        for a in actions {
            self.apply(&a);
            self.log.push((self.now, a));
        }
    }

    fn answer(&mut self, at: Duration, ev: Event) {
        self.seq += 1;
        self.pending.insert((at, self.seq), ev);
    }

    fn apply(&mut self, a: &Action) {
        match a {
            Action::Probe(p) => {
                let alive = !self.down.contains(&self.name(p.uplink));
                let (at, outcome) = if alive {
                    let rtt = Duration::from_micros(300);
                    (self.now + rtt, ProbeOutcome::Reply { rtt })
                } else {
                    (self.now + p.timeout, ProbeOutcome::Timeout)
                };
                self.answer(at, Event::ProbeDone { id: p.id, outcome });
            }
            Action::SetDefaultRoute { family, uplink } => {
                self.route[family.index()] = Some(self.name(*uplink));
            }
            Action::VerifyRoute { family } => {
                let via = match &self.route[family.index()] {
                    Some(n) => match self.core.config().uplinks.iter().position(|u| &u.name == n) {
                        Some(i) => RouteVia::Uplink(i),
                        None => RouteVia::Foreign(n.clone()),
                    },
                    None => RouteVia::Absent,
                };
                let f = *family;
                self.answer(self.now, Event::DefaultRoute { family: f, via });
            }
            _ => {}
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..10_000_000 {
            let next_pending = self.pending.keys().next().map(|k| k.0);
            let next = match (next_pending, self.core.next_deadline()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(until),
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            if next_pending == Some(next) {
                let key = *self.pending.keys().next().unwrap();
                let ev = self.pending.remove(&key).unwrap();
                self.feed(ev);
            } else {
                self.feed(Event::Tick);
            }
        }
        panic!("simulation did not converge");
    }

    fn carrier(&mut self, name: &str, up: bool) {
        if up {
            self.down.remove(name);
        } else {
            self.down.insert(name.into());
        }
        let u = self
            .core
            .config()
            .uplinks
            .iter()
            .position(|u| u.name == name)
            .unwrap();
        self.feed(Event::Carrier {
            uplink: u,
            up,
            present: true,
            source: CarrierSource::Poll,
        });
    }

    fn reconfigure(&mut self, new: Config) -> String {
        let (actions, summary) = self.core.reconfigure(self.now, new).expect("applied");
        self.apply_all(actions);
        self.carriers();
        summary
    }

    fn status(&self) -> Status {
        self.core.status(self.now)
    }

    fn active(&self) -> [Option<String>; 2] {
        Family::ALL.map(|f| self.core.active(f).map(|u| self.name(u)))
    }

    /// Route changes and active changes since `from` (an index into the log).
    fn switches_since(&self, from: usize) -> Vec<String> {
        self.log[from..]
            .iter()
            .filter_map(|(t, a)| match a {
                Action::SetDefaultRoute { family, uplink } => Some(format!(
                    "{:?} {family} -> {}",
                    t,
                    self.core
                        .config()
                        .uplinks
                        .get(*uplink)
                        .map_or("?".into(), |u| u.name.clone())
                )),
                Action::Report(Change::ActiveChanged {
                    family, to, reason, ..
                }) => Some(format!("{t:?} {family} active -> {to:?} ({reason})")),
                _ => None,
            })
            .collect()
    }

    fn settled() -> Sim {
        let mut sim = Sim::new(config());
        sim.run_for(s(5));
        let both = |x: &str| [Some(x.to_string()), Some(x.to_string())];
        assert_eq!(sim.active(), both("primary"));
        assert_eq!(sim.route, both("primary"));
        sim
    }
}

fn uplink_status<'a>(st: &'a Status, name: &str) -> &'a uplinkd::status::UplinkStatus {
    st.uplinks.iter().find(|u| u.name == name).unwrap()
}

fn healthy_for(st: &Status, name: &str) -> u64 {
    uplink_status(st, name)
        .families
        .ipv4
        .as_ref()
        .unwrap()
        .healthy_for_ms
        .unwrap()
}

#[test]
fn unchanged_config_changes_nothing() {
    let mut sim = Sim::settled();
    let before = sim.status();
    let (actions, summary) = sim.core.reconfigure(sim.now, config()).unwrap();
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(summary, "no change");
    assert_eq!(sim.status(), before, "state kept as it was");
}

#[test]
fn changed_failback_after_applies_to_a_failback_in_progress() {
    let mut sim = Sim::settled();
    sim.carrier("primary", false);
    sim.run_for(s(1));
    assert_eq!(sim.active()[0].as_deref(), Some("secondary"));
    sim.carrier("primary", true);
    sim.run_for(s(3));
    assert_eq!(
        sim.active()[0].as_deref(),
        Some("secondary"),
        "30 s not over"
    );
    let h = healthy_for(&sim.status(), "primary");
    assert!(h > 0 && h < 3000, "primary healthy again for {h} ms");
    let mut cfg = config();
    cfg.policy.failback_after = s(5);
    let mark = sim.log.len();
    let summary = sim.reconfigure(cfg);
    assert!(
        summary.contains("policy.failback_after 30s -> 5s"),
        "{summary}"
    );
    // The failback comes once the primary has been healthy for 5 s (the
    // time before the reload counts), not 30 s.
    sim.run_for(ms(5000 - h - 200));
    assert_eq!(sim.active()[0].as_deref(), Some("secondary"), "not yet 5 s");
    sim.run_for(ms(400));
    assert_eq!(sim.active()[0].as_deref(), Some("primary"));
    let sw = sim.switches_since(mark);
    assert!(
        sw.iter()
            .any(|l| l.contains("active -> Some(\"primary\") (failback)")),
        "{sw:?}"
    );
}

#[test]
fn added_transit_is_probed_and_the_rest_keeps_its_history() {
    let mut sim = Sim::settled();
    let before = sim.status();
    let mut cfg = config();
    cfg.transits.push(TransitConfig {
        name: "transit-e".into(),
        targets: vec!["198.19.0.5".parse().unwrap()],
    });
    let mark = sim.log.len();
    let summary = sim.reconfigure(cfg);
    assert_eq!(summary, "transit transit-e added");
    // Probed through both uplinks at once.
    let probed: Vec<UplinkId> = sim.log[mark..]
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Probe(p) if p.kind == ProbeKind::Transit(4) => Some(p.uplink),
            _ => None,
        })
        .collect();
    assert!(probed.contains(&0) && probed.contains(&1), "{probed:?}");
    // Nothing else moved: the old targets' statistics are the same.
    let after = sim.status();
    for name in ["primary", "secondary"] {
        let (b, a) = (uplink_status(&before, name), uplink_status(&after, name));
        assert_eq!(b.state, a.state);
        assert_eq!(b.gateway, a.gateway);
        for t in &b.transits {
            assert!(a.transits.contains(t), "{name}: {t:?} kept");
        }
        assert_eq!(healthy_for(&before, name), healthy_for(&after, name));
    }
    sim.run_for(s(2));
    let st = sim.status();
    let e = uplink_status(&st, "primary")
        .transits
        .iter()
        .find(|t| t.name == "transit-e")
        .unwrap()
        .clone();
    assert_eq!(e.reachable, Some(true));
    assert!(sim.switches_since(mark).is_empty());
}

#[test]
fn removed_standby_uplink_leaves_the_active_one_alone() {
    let mut sim = Sim::settled();
    let before = sim.status();
    let mut cfg = config();
    cfg.uplinks.truncate(1);
    let mark = sim.log.len();
    let summary = sim.reconfigure(cfg);
    assert_eq!(summary, "uplink secondary removed");
    sim.run_for(s(3));
    assert!(
        sim.switches_since(mark).is_empty(),
        "{:?}",
        sim.switches_since(mark)
    );
    let st = sim.status();
    assert_eq!(st.uplinks.len(), 1);
    assert_eq!(st.active.ipv4.as_deref(), Some("primary"));
    assert_eq!(
        healthy_for(&st, "primary"),
        healthy_for(&before, "primary") + 3000,
        "primary's health history kept"
    );
    // No probe goes through the removed uplink any more.
    assert!(sim.log[mark..]
        .iter()
        .all(|(_, a)| !matches!(a, Action::Probe(p) if p.uplink != 0)));
}

#[test]
fn removed_active_uplink_fails_over_by_the_normal_rules() {
    let mut sim = Sim::settled();
    let mut cfg = config();
    cfg.uplinks.remove(0);
    let mark = sim.log.len();
    sim.reconfigure(cfg);
    sim.run_for(ms(100));
    let both = |x: &str| [Some(x.to_string()), Some(x.to_string())];
    assert_eq!(sim.active(), both("secondary"));
    assert_eq!(sim.route, both("secondary"));
    let sw = sim.switches_since(mark);
    assert!(
        sw.iter()
            .any(|l| l.contains("ipv4 active -> Some(\"secondary\") (reconfigured)")),
        "{sw:?}"
    );
}

#[test]
fn changed_gateway_of_standby_resets_only_its_state() {
    let mut sim = Sim::settled();
    let before = sim.status();
    let mut cfg = config();
    cfg.uplinks[1].gateway4 = Some("198.18.9.1".parse().unwrap());
    let mark = sim.log.len();
    let summary = sim.reconfigure(cfg);
    assert_eq!(
        summary,
        "uplink secondary changed (its state starts afresh)"
    );
    let st = sim.status();
    // The secondary starts afresh: unknown until probed.
    let sec = uplink_status(&st, "secondary");
    assert_eq!(sec.state, UplinkState::Unknown);
    assert_eq!(
        sec.gateway.ipv4.as_ref().unwrap().address,
        "198.18.9.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert!(sec.transits.iter().all(|t| t.reachable.is_none()));
    // The primary is untouched.
    assert_eq!(
        uplink_status(&st, "primary"),
        uplink_status(&before, "primary")
    );
    sim.run_for(s(2));
    let st = sim.status();
    assert_eq!(uplink_status(&st, "secondary").state, UplinkState::Healthy);
    assert!(sim.switches_since(mark).is_empty());
}

#[test]
fn changed_gateway_of_the_active_uplink_moves_to_the_other_then_back() {
    let mut sim = Sim::settled();
    let mut cfg = config();
    cfg.policy.failback_after = s(5);
    cfg.uplinks[0].gateway4 = Some("198.18.9.1".parse().unwrap());
    let mark = sim.log.len();
    sim.reconfigure(cfg);
    sim.run_for(ms(50));
    // The active uplink is a new one now (its gateway changed): traffic
    // moves to the healthy secondary, and back once the primary proved
    // itself for failback_after.
    assert_eq!(sim.active()[0].as_deref(), Some("secondary"));
    sim.run_for(s(8));
    assert_eq!(sim.active()[0].as_deref(), Some("primary"));
    let sw = sim.switches_since(mark);
    assert!(sw.iter().any(|l| l.contains("(reconfigured)")), "{sw:?}");
    assert!(sw.iter().any(|l| l.contains("(failback)")), "{sw:?}");
}

#[test]
fn reordered_uplinks_keep_their_state_and_fail_back_by_the_rule() {
    let mut sim = Sim::settled();
    let before = sim.status();
    let mut cfg = config();
    cfg.policy.failback_after = s(5);
    cfg.uplinks.swap(0, 1);
    let mark = sim.log.len();
    sim.reconfigure(cfg);
    for name in ["primary", "secondary"] {
        assert_eq!(
            healthy_for(&sim.status(), name),
            healthy_for(&before, name),
            "{name} kept"
        );
    }
    // The secondary is preferred now and healthy for more than 5 s already.
    sim.run_for(ms(10));
    assert_eq!(sim.active()[0].as_deref(), Some("secondary"));
    let sw = sim.switches_since(mark);
    assert!(sw.iter().any(|l| l.contains("(failback)")), "{sw:?}");
}

#[test]
fn restart_only_change_is_refused_and_nothing_applied() {
    let mut sim = Sim::settled();
    let before = sim.status();
    let mut cfg = config();
    cfg.agent.route_metric += 1;
    cfg.policy.failback_after = s(1);
    let err = sim.core.reconfigure(sim.now, cfg).unwrap_err();
    assert!(err.contains("agent.route_metric"), "{err}");
    assert_eq!(sim.core.config(), &config());
    assert_eq!(sim.status(), before);
}

/// The bond members' prober is built at start: making an uplink a bond
/// member (or changing a member's gateways or probe addresses) needs a
/// restart, says so, and applies nothing.
#[test]
fn bond_membership_change_is_refused() {
    let mut sim = Sim::settled();
    let before = sim.status();
    let mut cfg = config();
    cfg.uplinks[1].bond = Some("bond0".into());
    let err = sim.core.reconfigure(sim.now, cfg.clone()).unwrap_err();
    assert!(err.contains("uplink[].bond"), "{err}");
    assert_eq!(sim.core.config(), &config());
    assert_eq!(sim.status(), before);
}
