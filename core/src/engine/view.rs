//! The status the engine publishes: the one [`Status`] type the socket
//! serves, `uplinkctl` prints and the tests assert on, built from the
//! engine's state at `now`. Nothing here decides: the reasons shown are the
//! health verdicts plus the selection's own (drained, damped), and a bond
//! member's entry says what each check proves through that member.

use std::net::IpAddr;

use super::Core;
use crate::config::{AgentMode, Family};

/// What observe mode changes on the host, as status says it.
pub const OBSERVE_INSTALLS: &str =
    "observe mode: routes, sysctls and bond members are left as they are; \
only each uplink's probe table and fwmark rule are installed (they route only uplinkd's own marked \
probes); transit probes through a standby uplink need loose rp_filter on it, which is not set";
use crate::status::{
    BondMemberStatus, FamilyStatus, MemberCheck, ObserveStatus, PerFamily, Reason, Status,
    TransitStatus, UplinkState, UplinkStatus,
};
use crate::{Now, UplinkId};

impl Core {
    pub fn status(&self, now: Now) -> Status {
        let active = |f: Family| self.fam[f.index()].active.map(|a| self.name(a));
        Status {
            active: PerFamily {
                ipv4: active(Family::V4),
                ipv6: active(Family::V6),
            },
            fail_static: PerFamily {
                ipv4: self.fam[0].fail_static,
                ipv6: self.fam[1].fail_static,
            },
            decided: self.decided(),
            uplinks: (0..self.uplinks.len())
                .map(|i| self.uplink_status(i, now))
                .collect(),
            bonds: self.bonds.iter().map(|b| b.status.clone()).collect(),
            competing_route: PerFamily {
                ipv4: self.competing(Family::V4),
                ipv6: self.competing(Family::V6),
            },
            fighting: PerFamily {
                ipv4: self.fighting(Family::V4),
                ipv6: self.fighting(Family::V6),
            },
            source: PerFamily {
                ipv4: self.source_status(Family::V4),
                ipv6: self.source_status(Family::V6),
            },
            mode: self.cfg.agent.mode.name().into(),
            observe: (self.cfg.agent.mode == AgentMode::Observe).then(|| ObserveStatus {
                would_route: PerFamily {
                    ipv4: active(Family::V4),
                    ipv6: active(Family::V6),
                },
                installs: OBSERVE_INSTALLS.into(),
            }),
        }
    }

    fn uplink_status(&self, i: UplinkId, now: Now) -> UplinkStatus {
        let u = &self.uplinks[i];
        let damped_ms = u
            .damped_until
            .filter(|t| *t > now)
            .map(|t| (t - now).as_millis() as u64);
        let fam_status = |fi: usize| {
            u.fams[fi].as_ref().map(|f| {
                let mut reasons = f.reasons.clone();
                if u.drained {
                    reasons.push(Reason::Drained);
                }
                if let Some(ms) = damped_ms {
                    reasons.push(Reason::Damped { remaining_ms: ms });
                }
                let state = match f.usable {
                    None => UplinkState::Unknown,
                    Some(_) if !reasons.is_empty() => UplinkState::Unhealthy,
                    Some(_) => UplinkState::Healthy,
                };
                FamilyStatus {
                    state,
                    reasons,
                    healthy_for_ms: f
                        .usable_since
                        .map(|t| now.saturating_sub(t).as_millis() as u64),
                    failback_in_ms: self.eligible_since(i, f).map(|t| {
                        self.cfg
                            .policy
                            .failback_after
                            .saturating_sub(now.saturating_sub(t))
                            .as_millis() as u64
                    }),
                }
            })
        };
        let families = PerFamily {
            ipv4: fam_status(0),
            ipv6: fam_status(1),
        };
        let fs: Vec<&FamilyStatus> = [&families.ipv4, &families.ipv6]
            .into_iter()
            .flatten()
            .collect();
        let state = if fs.iter().any(|f| f.state == UplinkState::Unknown) {
            UplinkState::Unknown
        } else if fs.iter().all(|f| f.state == UplinkState::Healthy) {
            UplinkState::Healthy
        } else if fs.iter().any(|f| f.state == UplinkState::Healthy) {
            UplinkState::Degraded
        } else {
            UplinkState::Unhealthy
        };
        let mut reasons: Vec<Reason> = Vec::new();
        for f in &fs {
            for r in &f.reasons {
                if !reasons.contains(r) {
                    reasons.push(r.clone());
                }
            }
        }
        let mut transits = Vec::new();
        for (fi, f) in u.fams.iter().enumerate() {
            let Some(f) = f else { continue };
            for (t, targets) in f.transits.iter().enumerate() {
                for x in targets {
                    let s = x.status(now);
                    transits.push(TransitStatus {
                        name: self.cfg.transits[t].name.clone(),
                        family: Family::ALL[fi].name().into(),
                        target: x.addr,
                        reachable: s.reachable,
                        rtt_ms: s.rtt_ms,
                        loss: s.loss,
                    });
                }
            }
        }
        UplinkStatus {
            name: self.name(i),
            interface: self.cfg.uplinks[i].interface.clone(),
            state,
            carrier: u.carrier == Some(true),
            drained: u.drained,
            reasons,
            flaps: super::selection::worst_flaps(u),
            damped_ms,
            families,
            gateway: PerFamily {
                ipv4: u.fams[0].as_ref().map(|f| f.gateway.status(now)),
                ipv6: u.fams[1].as_ref().map(|f| f.gateway.status(now)),
            },
            gateway_probe: PerFamily {
                ipv4: u.fams[0]
                    .as_ref()
                    .map(|f| probe_status(&self.cfg.uplinks[i], f, now)),
                ipv6: u.fams[1]
                    .as_ref()
                    .map(|f| probe_status(&self.cfg.uplinks[i], f, now)),
            },
            transits,
            bond: self.member_status(i),
            suspicion: crate::status::SuspicionStatus {
                by_source: crate::suspicion::Source::ALL
                    .iter()
                    .zip(u.suspicions)
                    .map(|(s, n)| (s.name().to_string(), n))
                    .collect(),
                bursts: u.bursts,
                burst_probes: u.burst_probes,
            },
        }
    }

    /// For a bond member: what each check proves through it (see src/bond.rs).
    fn member_status(&self, i: UplinkId) -> Option<BondMemberStatus> {
        let c = &self.cfg.uplinks[i];
        let bond = c.bond.clone()?;
        let active = self
            .bond_index(&bond)
            .is_some_and(|b| self.bonds[b].status.active.as_deref() == Some(c.interface.as_str()));
        let mut checks = vec![MemberCheck {
            check: "carrier".into(),
            probed: true,
            how: format!("{}'s own carrier, polled", c.interface),
        }];
        if let Some(gw) = c.gateway4 {
            checks.push(MemberCheck {
                check: "gateway4".into(),
                probed: true,
                how: format!(
                    "ARP probe for {gw} sent on {} (packet socket; RFC 5227 sender 0.0.0.0, the member's permanent MAC): proves this member's own path to the gateway, active or backup, without touching the gateway's neighbour entry or the switches' entry for the bond's MAC",
                    c.interface
                ),
            });
        }
        if let Some(gw) = c.gateway6 {
            checks.push(MemberCheck {
                check: "gateway6".into(),
                probed: true,
                how: format!(
                    "neighbour solicitation for {gw} sent on {} (packet socket) from the link-local address of the member's probe MAC, never the server's: proves this member's own path to the gateway, active or backup; the gateway learns only that link-local address",
                    c.interface
                ),
            });
        }
        for (check, fam, addr) in [
            ("transits4", Family::V4, c.probe_address4.map(IpAddr::V4)),
            ("transits6", Family::V6, c.probe_address6.map(IpAddr::V6)),
        ] {
            if c.gateway(fam).is_none() {
                continue;
            }
            checks.push(match addr {
                Some(a) => MemberCheck {
                    check: check.into(),
                    probed: true,
                    how: format!(
                        "echo to each transit target sent on {} from the dedicated probe address {a} with the member's probe MAC, to the gateway's MAC as resolved on this member; the gateway resolves {a} to that MAC (the agent answers for it): proves the gateway behind this member and its upstream, active or backup; the transit quorum applies",
                        c.interface
                    ),
                },
                None => MemberCheck {
                    check: check.into(),
                    probed: false,
                    how: format!(
                        "not probed through this member (no probe_address{}): the kernel drops ordinary traffic a backup member receives, and the server's own address would move the gateway's neighbour entry; the transit quorum does not apply",
                        fam.name().trim_start_matches("ipv")
                    ),
                },
            });
        }
        Some(BondMemberStatus {
            enslaved: self.uplinks[i].enslaved.unwrap_or(false),
            bond,
            active,
            checks,
        })
    }
}

/// How a family's gateway is probed, for the status.
fn probe_status(
    c: &crate::config::UplinkConfig,
    f: &super::UplinkFamily,
    now: crate::Now,
) -> crate::status::GatewayProbeStatus {
    crate::status::GatewayProbeStatus {
        setting: c.gateway_probe.name().into(),
        mode: f.mode,
        icmp_check: (f.mode == crate::status::GatewayMode::Echo && f.check.first_sent.is_some())
            .then(|| f.check.status(now)),
        redirects: 0,
        echo_idle: false,
    }
}
