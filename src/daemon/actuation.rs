//! The actuation task: applies the loop's route work to the kernel, in
//! order, and reports back. It never waits for time to pass: a failed
//! change is reported, and the loop decides when to look again (see
//! `retry`), so a later change never queues behind a retry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::{AgentMode, Config, Family};
use crate::core::{RouteVia, UplinkId};
use crate::netlink::actuate::{protocol_name, Actuator, RTPROT_UPLINKD};
use crate::netlink::{sysctl, NetlinkError, RouteInfo};
use crate::probe::ProbeUplink;

/// The kernel's main routing table (RT_TABLE_MAIN, include/uapi/linux/rtnetlink.h).
pub(super) const RT_TABLE_MAIN: u32 = 254;

/// Work for the actuation task; executed in order.
#[derive(Debug)]
pub(super) enum Work {
    /// Point the managed default route of `family` at `uplink`.
    SetRoute {
        family: Family,
        uplink: UplinkId,
        /// Given back with a failure (see `Retries::queued`).
        ticket: u64,
    },
    Flush {
        uplink: UplinkId,
        family: Family,
    },
    /// Restart resolution of the uplink's gateway of `family` if its
    /// neighbour entry is INCOMPLETE or FAILED (the gateway answers again).
    Refresh {
        uplink: UplinkId,
        family: Family,
    },
    /// Read the kernel's managed default route of `family` (answered with
    /// `Done::Route`).
    Verify {
        family: Family,
        /// Given back with a failure (see `Retries::queued`).
        ticket: u64,
    },
    /// (Re)install per-uplink tables, rules, kernel fallback routes, sysctls.
    Ensure,
    /// A new configuration (SIGHUP): remove what the old one installed and
    /// the new one does not use, then work with the new one.
    Reconfigure(Box<Layout>, Vec<Stale>),
    /// Answer `Done::Barrier` once everything queued before is done.
    Barrier,
    /// Delete another owner's default route (`agent.remove_competing_routes`).
    DeleteRoute(RouteInfo),
    /// The service address of `family` came or went (see [`Sources`]):
    /// replace the managed default route and the kernel fallback routes
    /// with the same ones carrying the source, or none while it is missing.
    Resource {
        family: Family,
    },
}

/// Per family (`Family::index`): whether the configured service address
/// (`agent.source4`/`source6`) is a usable local address, as the loop last
/// saw it; shared with the actuation task, which gives the routes of the
/// main table that source only while it is (the kernel refuses a
/// preferred source that is not local, and an IPv4 route whose source
/// leaves is deleted with it).
pub(super) type Sources = Arc<[std::sync::atomic::AtomicBool; 2]>;

/// The preferred source of `family`'s main-table default routes now.
fn source_of(cfg: &Config, sources: &Sources, family: Family) -> Option<IpAddr> {
    cfg.agent
        .source(family)
        .filter(|_| sources[family.index()].load(std::sync::atomic::Ordering::Relaxed))
}

/// Replace a main-table default route with `source` as its preferred
/// source; if the kernel refuses that source (it left the host before the
/// loop heard of it), install the route without one: a route without a
/// source beats no route. The loop puts the source back when the address
/// returns.
#[allow(clippy::too_many_arguments)]
async fn replace_main(
    act: &Actuator,
    family: Family,
    gw: IpAddr,
    idx: u32,
    metric: u32,
    source: Option<IpAddr>,
) -> Result<(), NetlinkError> {
    let r = act
        .replace_default_route_from(
            family,
            gw,
            idx,
            metric,
            RT_TABLE_MAIN,
            RTPROT_UPLINKD,
            source,
        )
        .await;
    match (r, source) {
        (Err(e), Some(_)) => {
            warn!(error = %e, "source refused; installing the route without it");
            act.replace_default_route(family, gw, idx, metric, RT_TABLE_MAIN, RTPROT_UPLINKD)
                .await
        }
        (r, _) => r,
    }
}

/// The configuration the actuation task works with, and each uplink's slot:
/// uplink `i` probes with mark `fwmark_base + slots[i]` through table
/// `table_base + slots[i]`. An uplink kept by a reload keeps its slot, so
/// its probes never pass through another uplink's table.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub cfg: Arc<Config>,
    /// Per uplink: its slot (see above).
    pub slots: Vec<u32>,
    /// Counts reloads: a route read under an older layout names uplinks by
    /// their old indices and is ignored.
    pub gen: u64,
}

impl Layout {
    fn table(&self, i: UplinkId) -> u32 {
        self.cfg.agent.table_base + self.slots[i]
    }
    fn fwmark(&self, i: UplinkId) -> u32 {
        self.cfg.agent.fwmark_base + self.slots[i]
    }
    /// Tables `table_base .. table_base + table_span()` may be ours.
    pub fn table_span(&self) -> u32 {
        self.slots.iter().max().map_or(0, |m| m + 1)
    }
    /// What the agent installs besides the active route: per-uplink table
    /// routes and rules (family, slot), kernel fallback routes (family, metric).
    pub fn installed(&self) -> Vec<Stale> {
        let mut v = Vec::new();
        for (i, u) in self.cfg.uplinks.iter().enumerate() {
            for f in Family::ALL {
                if u.gateway(f).is_none() {
                    continue;
                }
                v.push(Stale::Slot(f, self.slots[i]));
                if self.cfg.agent.kernel_fallback {
                    v.push(Stale::Fallback(
                        f,
                        self.cfg.agent.route_metric + 1 + i as u32,
                    ));
                }
            }
        }
        v
    }
}

/// Something an older configuration installed that the current one does not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stale {
    /// The probe table route and the rule of a slot.
    Slot(Family, u32),
    /// A kernel fallback route in the main table at this metric.
    Fallback(Family, u32),
}

/// Results of the actuation task, back to the loop.
#[derive(Debug)]
pub(super) enum Done {
    /// The kernel's managed default route of `family`, read under the
    /// layout of generation `gen`.
    Route {
        family: Family,
        via: RouteVia,
        gen: u64,
    },
    /// The route change (`refused`) or read with `ticket` failed.
    SetFailed {
        family: Family,
        ticket: u64,
        refused: bool,
    },
    Barrier,
}

/// Shared with the actuation task: interface name -> ifindex as last seen.
pub(super) type Ifindexes = Arc<std::sync::Mutex<HashMap<String, u32>>>;

/// What a default route at the managed metric points at. Only a route the
/// agent installed (its protocol) counts as via an uplink: one another
/// writer put there is foreign even through an uplink's gateway, and its
/// description names that writer.
pub(super) fn route_via(cfg: &Config, ifindexes: &Ifindexes, r: &RouteInfo) -> RouteVia {
    let map = ifindexes.lock().unwrap();
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if r.protocol == RTPROT_UPLINKD
            && u.gateway(r.family).is_some()
            && r.gateway == u.gateway(r.family)
            && r.oif.is_some()
            && r.oif == map.get(u.route_interface()).copied()
        {
            return RouteVia::Uplink(i);
        }
    }
    RouteVia::Foreign(format!(
        "route via {} dev {} proto {}",
        r.gateway.map_or("-".to_string(), |g| g.to_string()),
        dev_name(&map, r.oif),
        protocol_name(r.protocol)
    ))
}

/// An interface's name if it is one of ours, else `ifindex N`.
pub(super) fn dev_name(map: &HashMap<String, u32>, oif: Option<u32>) -> String {
    let Some(oif) = oif else {
        return "-".into();
    };
    map.iter()
        .find(|(_, i)| **i == oif)
        .map_or(format!("ifindex {oif}"), |(n, _)| n.clone())
}

pub(super) async fn actuate_loop(
    mut layout: Layout,
    act: Actuator,
    ifindexes: Ifindexes,
    sources: Sources,
    mut rx: mpsc::UnboundedReceiver<Work>,
    done: mpsc::UnboundedSender<Done>,
) {
    let metric = layout.cfg.agent.route_metric;
    while let Some(w) = rx.recv().await {
        let cfg = layout.cfg.clone();
        match w {
            Work::SetRoute {
                family,
                uplink,
                ticket,
            } => {
                let u = &cfg.uplinks[uplink];
                let Some(gw) = u.gateway(family) else {
                    continue;
                };
                let idx = ifindex(&act, &ifindexes, u.route_interface()).await;
                let t0 = std::time::Instant::now();
                let res = match idx {
                    Some(idx) => {
                        let src = source_of(&cfg, &sources, family);
                        replace_main(&act, family, gw, idx, metric, src).await
                    }
                    None => Err(NetlinkError::Invalid {
                        op: format!(
                            "set {family} default route via {} ({})",
                            u.name, u.interface
                        ),
                        reason: "interface not found".into(),
                    }),
                };
                match res {
                    Ok(()) => info!(
                        family = %family, uplink = %u.name, gateway = %gw,
                        micros = t0.elapsed().as_micros() as u64,
                        "default route replaced"
                    ),
                    Err(e) => {
                        error!(error = %e, "route change failed; will check again");
                        let _ = done.send(Done::SetFailed {
                            family,
                            ticket,
                            refused: true,
                        });
                    }
                }
            }
            Work::Flush { uplink, family } => {
                let u = &cfg.uplinks[uplink];
                if let Some(idx) = ifindex(&act, &ifindexes, u.route_interface()).await {
                    match act.flush_neighbours(idx, family).await {
                        Ok(n) => {
                            debug!(uplink = %u.name, %family, flushed = n, "neighbours flushed")
                        }
                        Err(e) => warn!(error = %e, "neighbour flush failed"),
                    }
                }
            }
            Work::Refresh { uplink, family } => {
                let u = &cfg.uplinks[uplink];
                if let (Some(gw), Some(idx)) = (
                    u.gateway(family),
                    ifindex(&act, &ifindexes, u.route_interface()).await,
                ) {
                    match act.refresh_neighbour(idx, gw).await {
                        Ok(n) => debug!(uplink = %u.name, %gw, refreshed = n, "gateway neighbour"),
                        Err(e) => warn!(error = %e, "gateway neighbour refresh failed"),
                    }
                }
            }
            Work::Verify { family, ticket } => {
                match act.default_routes(family, RT_TABLE_MAIN).await {
                    Ok(routes) => {
                        let via = routes
                            .iter()
                            .find(|r| r.dst_len == 0 && r.metric == metric)
                            .map_or(RouteVia::Absent, |r| route_via(&cfg, &ifindexes, r));
                        let _ = done.send(Done::Route {
                            family,
                            via,
                            gen: layout.gen,
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "route dump failed; will read it again");
                        let _ = done.send(Done::SetFailed {
                            family,
                            ticket,
                            refused: false,
                        });
                    }
                }
            }
            Work::Ensure => ensure(&layout, &act, &ifindexes, &sources).await,
            Work::Resource { family } => {
                if cfg.agent.mode == AgentMode::Observe {
                    continue;
                }
                let src = source_of(&cfg, &sources, family);
                match act.default_routes(family, RT_TABLE_MAIN).await {
                    Ok(routes) => {
                        // The managed route as it is (any uplink: the loop's
                        // own changes are queued in order before this).
                        let ours = routes.iter().find(|r| {
                            r.metric == metric && r.protocol == RTPROT_UPLINKD && r.dst_len == 0
                        });
                        if let Some((gw, idx)) = ours.and_then(|r| Some((r.gateway?, r.oif?))) {
                            match replace_main(&act, family, gw, idx, metric, src).await {
                                Ok(()) => info!(%family, source = ?src, "default route source set"),
                                Err(e) => warn!(error = %e, "default route source not set"),
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "route dump failed; source not set"),
                }
                ensure(&layout, &act, &ifindexes, &sources).await;
            }
            Work::Reconfigure(new, stale) => {
                layout = *new;
                remove_stale(&layout, &act, &stale).await;
            }
            Work::Barrier => {
                let _ = done.send(Done::Barrier);
            }
            Work::DeleteRoute(r) => match act.delete_foreign_default_route(&r).await {
                Ok(()) => {
                    info!(family = %r.family, metric = r.metric, "competing default route deleted")
                }
                Err(e) => warn!(error = %e, "competing default route not deleted"),
            },
        }
    }
}

async fn ifindex(act: &Actuator, map: &Ifindexes, name: &str) -> Option<u32> {
    if let Some(i) = map.lock().unwrap().get(name).copied() {
        return Some(i);
    }
    match act.ifindex(name).await {
        Ok(Some(i)) => {
            map.lock().unwrap().insert(name.to_string(), i);
            Some(i)
        }
        _ => None,
    }
}

/// Install what the agent needs besides the active route; idempotent.
async fn ensure(layout: &Layout, act: &Actuator, ifindexes: &Ifindexes, sources: &Sources) {
    let cfg = &layout.cfg;
    let a = &cfg.agent;
    // Observe mode installs only the probe tables and rules: they route
    // nothing but the agent's own marked probes. Sysctls and the main
    // table's fallback routes change how the host routes: left alone.
    let observe = a.mode == AgentMode::Observe;
    // Each sysctl's value before the agent first changed it, beside the
    // socket, for `uplinkd --cleanup`.
    let originals = sysctl::Originals::new(
        a.socket
            .parent()
            .unwrap_or(std::path::Path::new("/run"))
            .join(sysctl::ORIGINALS_FILE),
    );
    for (i, u) in cfg.uplinks.iter().enumerate() {
        let sysctls = match observe {
            true => Ok(()),
            false => sysctl::uplink_sysctls_recorded(&u.interface, Some(&originals)),
        };
        if let Err(e) = sysctls {
            debug!(error = %e, uplink = %u.name, "uplink sysctls not set (interface missing?)");
        }
        let Some(idx) = ifindex(act, ifindexes, u.route_interface()).await else {
            debug!(uplink = %u.name, "interface missing; will retry when it appears");
            continue;
        };
        for f in Family::ALL {
            let Some(gw) = u.gateway(f) else { continue };
            // The probe tables keep the uplink's own address as source (no
            // src): a probe must leave from the address of the uplink it
            // tests, so that its reply comes back through that uplink.
            let mut results: Vec<(String, Result<(), NetlinkError>)> = vec![
                (
                    "probe table route".into(),
                    act.replace_default_route(
                        f,
                        gw,
                        idx,
                        a.route_metric,
                        layout.table(i),
                        RTPROT_UPLINKD,
                    )
                    .await,
                ),
                (
                    "probe rule".into(),
                    act.ensure_rule(f, layout.fwmark(i), layout.table(i), a.rule_priority)
                        .await,
                ),
            ];
            if a.kernel_fallback && !observe {
                let src = source_of(cfg, sources, f);
                results.push((
                    "kernel fallback route".into(),
                    replace_main(act, f, gw, idx, a.route_metric + 1 + i as u32, src).await,
                ));
            }
            for (what, r) in results {
                if let Err(e) = r {
                    warn!(uplink = %u.name, family = %f, error = %e, "{what} not installed");
                }
            }
        }
    }
}

/// The prober's view of each uplink under `layout`.
pub(super) fn probe_uplinks(layout: &Layout) -> Vec<ProbeUplink> {
    layout
        .cfg
        .uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| ProbeUplink {
            interface: u.interface.clone(),
            fwmark: layout.fwmark(i),
        })
        .collect()
}

/// The layout for `cfg` after a reload from `old`: an uplink kept as it was
/// (same name, interface, gateways, bond) keeps its slot; others take the
/// lowest free ones.
pub(super) fn relayout(old: &Layout, cfg: Arc<Config>) -> Layout {
    let kept: Vec<Option<u32>> = cfg
        .uplinks
        .iter()
        .map(|u| {
            old.cfg
                .uplinks
                .iter()
                .position(|o| o == u)
                .map(|i| old.slots[i])
        })
        .collect();
    let mut used: Vec<u32> = kept.iter().flatten().copied().collect();
    let slots = kept
        .into_iter()
        .map(|k| {
            k.unwrap_or_else(|| {
                let free = (0..).find(|s| !used.contains(s)).unwrap_or(0);
                used.push(free);
                free
            })
        })
        .collect();
    Layout {
        cfg,
        slots,
        gen: old.gen + 1,
    }
}

/// Delete what an older configuration installed and `layout` does not use.
async fn remove_stale(layout: &Layout, act: &Actuator, stale: &[Stale]) {
    let a = &layout.cfg.agent;
    for s in stale {
        let r = match *s {
            Stale::Slot(f, slot) => {
                let table = a.table_base + slot;
                let r1 = act.delete_default_route(f, a.route_metric, table).await;
                let r2 = act
                    .delete_rule(f, a.fwmark_base + slot, table, a.rule_priority)
                    .await;
                r1.and(r2)
            }
            Stale::Fallback(f, metric) => act.delete_default_route(f, metric, RT_TABLE_MAIN).await,
        };
        match r {
            Ok(()) => debug!(?s, "removed what the old configuration installed"),
            Err(e) => {
                warn!(?s, error = %e, "could not remove what the old configuration installed")
            }
        }
    }
}
