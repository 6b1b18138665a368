//! What one agent's probing costs in the steady state (every target
//! answers, each family's default route on its preferred uplink): the
//! echo rates the schedule (`engine/schedule.rs`) settles on, derived from
//! the configuration, so the documentation can quote them and a test can
//! hold the schedule to them.
//!
//! The rules they follow: a gateway is probed once per `gateway_interval`
//! round, the far (transit) targets each once per `transit_interval` on
//! their own phase; an uplink that carries no default route of a family
//! (a standby) is probed `standby_slowdown` times less often for that
//! family. Suspicion (a missed or late reply) probes faster for a moment;
//! that is not the steady state and not counted here.

use std::time::Duration;

use crate::config::{Config, Family, ProbeConfig};

/// Echo requests per second in the steady state, per probed address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SteadyRates {
    /// To the gateway of the uplink that carries the family's default route.
    pub gateway_active: f64,
    /// To the gateway of an uplink that does not (a standby), per family.
    pub gateway_standby: f64,
    /// To one transit target through the uplink that carries its family's route.
    pub transit_active: f64,
    /// To one transit target through a standby.
    pub transit_standby: f64,
}

/// Echo requests per second one server sends in the steady state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerRates {
    /// To the gateways, every uplink and family.
    pub gateway: f64,
    /// To the transit targets, through every uplink.
    pub transit: f64,
}

fn per_second(every: Duration) -> f64 {
    if every.is_zero() {
        0.0
    } else {
        1.0 / every.as_secs_f64()
    }
}

impl ProbeConfig {
    /// The steady echo rate to each probed address.
    pub fn steady_rates(&self) -> SteadyRates {
        let slow = self.standby_slowdown.max(1);
        SteadyRates {
            gateway_active: per_second(self.gateway_interval),
            gateway_standby: per_second(self.gateway_interval * slow),
            transit_active: per_second(self.transit_interval),
            transit_standby: per_second(self.transit_interval * slow),
        }
    }
}

impl Config {
    /// What this server sends in the steady state: each family routed
    /// through the first uplink (in order of preference) with a gateway of
    /// it, every other uplink with one a standby. Transits are not probed
    /// through a bond member without a probe address of the family.
    pub fn steady_rates(&self) -> ServerRates {
        let r = self.probe.steady_rates();
        let mut total = ServerRates {
            gateway: 0.0,
            transit: 0.0,
        };
        for f in Family::ALL {
            let targets = self
                .transits
                .iter()
                .map(|t| t.targets_of(f).count())
                .sum::<usize>() as f64;
            let with_gateway = self.uplinks.iter().filter(|u| u.gateway(f).is_some());
            for (k, u) in with_gateway.enumerate() {
                let active = k == 0;
                total.gateway += if active {
                    r.gateway_active
                } else {
                    r.gateway_standby
                };
                let member_unprobed = u.bond.is_some()
                    && match f {
                        Family::V4 => u.probe_address4.is_none(),
                        Family::V6 => u.probe_address6.is_none(),
                    };
                if !member_unprobed {
                    let each = if active {
                        r.transit_active
                    } else {
                        r.transit_standby
                    };
                    total.transit += targets * each;
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::net::IpAddr;

    use super::*;
    use crate::config::{PolicyConfig, TransitConfig, UplinkConfig};
    use crate::{Action, CarrierSource, Core, Event, ProbeKind, ProbeOutcome, RouteVia, UplinkId};

    /// The shipped defaults, 2 uplinks, 4 transits with an IPv4 and an IPv6
    /// target each: the example the documentation prices.
    fn config() -> Config {
        let uplink = |name: &str, i: u8| UplinkConfig {
            name: name.into(),
            interface: format!("eth{i}"),
            gateway4: Some(format!("198.18.{i}.1").parse().unwrap()),
            gateway6: Some(format!("2001:db8:{i}::1").parse().unwrap()),
            bond: None,
            probe_address4: None,
            probe_address6: None,
            // The rates priced here are the probes' rounds; in echo mode
            // (auto's choice where the router loops echoes) the same rounds
            // carry forwarding-plane echoes through the gateway, and the
            // router itself gets a ping every 2 s (README: control-plane budget).
            gateway_probe: crate::config::GatewayProbe::Icmp,
        };
        Config {
            agent: Default::default(),
            policy: PolicyConfig {
                failback_after: PolicyConfig::DEFAULT_FAILBACK_AFTER,
                quorum: PolicyConfig::default_quorum(4),
                damping: Default::default(),
            },
            probe: ProbeConfig::default(),
            uplinks: vec![uplink("primary", 1), uplink("secondary", 2)],
            transits: (1..=4)
                .map(|i| TransitConfig {
                    name: format!("t{i}"),
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

    /// Runs the core with every probe answered after 200 us and every route
    /// it sets installed; counts the probes sent from `from` to `to`, by
    /// (uplink, family, gateway or transit, address).
    fn probes_sent(
        cfg: Config,
        from: Duration,
        to: Duration,
    ) -> HashMap<(UplinkId, Family, bool, IpAddr), u64> {
        let rtt = Duration::from_micros(200);
        let mut core = Core::new(cfg.clone(), Duration::ZERO);
        let mut route: [Option<UplinkId>; 2] = [None, None];
        let mut pending: BTreeMap<(Duration, u64), Event> = BTreeMap::new();
        let mut seq = 0u64;
        let mut counts = HashMap::new();
        let mut now = Duration::ZERO;
        let mut events: Vec<Event> = (0..cfg.uplinks.len())
            .map(|u| Event::Carrier {
                uplink: u,
                up: true,
                present: true,
                source: CarrierSource::Netlink,
            })
            .chain(Family::ALL.map(|family| Event::DefaultRoute {
                family,
                via: RouteVia::Absent,
            }))
            .collect();
        while now < to {
            for a in core.handle_all(now, std::mem::take(&mut events)) {
                let mut later = |at: Duration, ev: Event| {
                    seq += 1;
                    pending.insert((at, seq), ev);
                };
                match a {
                    Action::Probe(p) => {
                        if now >= from {
                            let gateway = p.kind == ProbeKind::Gateway;
                            *counts
                                .entry((p.uplink, p.family, gateway, p.target))
                                .or_insert(0) += 1;
                        }
                        later(
                            now + rtt,
                            Event::ProbeDone {
                                id: p.id,
                                outcome: ProbeOutcome::Reply { rtt },
                            },
                        );
                    }
                    Action::SetDefaultRoute { family, uplink } => {
                        route[family.index()] = Some(uplink);
                        let via = RouteVia::Uplink(uplink);
                        later(now, Event::DefaultRoute { family, via });
                    }
                    _ => {}
                }
            }
            let next_reply = pending.keys().next().map(|k| k.0);
            let next = match (next_reply, core.next_deadline()) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(to),
            };
            now = now.max(next);
            let due: Vec<_> = pending.range(..(now, u64::MAX)).map(|(k, _)| *k).collect();
            events = due.iter().filter_map(|k| pending.remove(k)).collect();
            events.push(Event::Tick);
        }
        assert_eq!(route, [Some(0), Some(0)], "settled on the primary");
        counts
    }

    #[test]
    fn the_core_sends_the_steady_rates() {
        let cfg = config();
        let r = cfg.probe.steady_rates();
        let (from, secs) = (Duration::from_secs(10), 60u32);
        let counts = probes_sent(cfg.clone(), from, from + Duration::from_secs(secs.into()));
        let mut expected = 0usize;
        for (u, up) in cfg.uplinks.iter().enumerate() {
            for f in Family::ALL {
                let active = u == 0;
                let gateway = up.gateway(f).unwrap();
                let mut addresses = vec![(true, gateway)];
                for t in &cfg.transits {
                    addresses.extend(t.targets_of(f).map(|a| (false, a)));
                }
                for (is_gateway, a) in addresses {
                    expected += 1;
                    let rate = match (is_gateway, active) {
                        (true, true) => r.gateway_active,
                        (true, false) => r.gateway_standby,
                        (false, true) => r.transit_active,
                        (false, false) => r.transit_standby,
                    };
                    let got = counts.get(&(u, f, is_gateway, a)).copied().unwrap_or(0);
                    let want = rate * f64::from(secs);
                    // One probe more or less: where the window cuts the rounds.
                    assert!(
                        (got as f64 - want).abs() <= 1.0,
                        "{} {f} {a}: {got} probes in {secs} s, expected {want:.1}",
                        up.name
                    );
                }
            }
        }
        assert_eq!(counts.len(), expected, "probes to unexpected addresses");
        let total = cfg.steady_rates();
        let sent = |gw: bool| {
            counts
                .iter()
                .filter(|(k, _)| k.2 == gw)
                .map(|(_, n)| *n)
                .sum::<u64>() as f64
                / f64::from(secs)
        };
        assert!((sent(true) - total.gateway).abs() < 0.1, "{total:?}");
        assert!((sent(false) - total.transit).abs() < 0.1, "{total:?}");
    }

    #[test]
    fn the_shipped_defaults_cost_what_the_documentation_says() {
        let r = ProbeConfig::default().steady_rates();
        let round = |x: f64| (x * 100.0).round() / 100.0;
        assert_eq!(round(r.gateway_active), 20.83);
        assert_eq!(round(r.gateway_standby), 10.42);
        assert_eq!(r.transit_active, 1.0);
        assert_eq!(r.transit_standby, 0.5);
        let s = config().steady_rates();
        assert_eq!(round(s.gateway), 62.5);
        assert_eq!(round(s.transit), 12.0);
    }
}
