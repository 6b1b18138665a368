//! Keeping the kernel's managed default route to the decision.
//!
//! Before a family's first decision the route found in the kernel is
//! adopted: the first decision starts from it. After that, a route that
//! differs from the decision is put back, but only when an authoritative
//! dump says so: a multicast event may describe a state from before the
//! agent's own last change, so a mismatch seen there only asks for a dump.
//! Members of one bond share one route.
//!
//! Another writer (a DHCP client, networkd, NetworkManager, a script) may
//! rewrite the route over and over. Restoring at once each time would make
//! the agent a second source of churn and flood the log, so a restore that
//! follows the previous one within [`FIGHT_WINDOW`] starts a fight: restores
//! back off (doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]), one
//! `Fighting` change reports its start, and one its end once the other
//! writer has been quiet for [`FIGHT_WINDOW`].
//!
//! A default route of another owner with a lower metric than ours wins in
//! the kernel without touching ours; the daemon finds those and the core
//! reports them (and asks to delete them if so configured).

use std::time::Duration;

use super::Core;
use crate::config::Family;
use crate::status::{Change, CompetingRoute};
use crate::{Action, Now, RouteVia};

/// Two restores this close together mean another writer keeps changing the
/// route; the same quiet time ends the fight.
const FIGHT_WINDOW: Duration = Duration::from_secs(5);
/// The delay of the first restore inside a fight (the one before it was
/// immediate).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest delay between two restores while the fight goes on.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Per family: the restores of the managed route, and the fight with
/// another writer.
#[derive(Debug, Clone, Default)]
pub(super) struct RouteGuard {
    /// When the route was last restored: a mismatch soon after is a fight.
    last_restore: Option<Now>,
    /// The delay of the next restore after the last one (zero: at once).
    backoff: Duration,
    /// A restore waiting for its backoff.
    restore_at: Option<Now>,
    /// When another writer's route was last seen: the fight ends after
    /// [`FIGHT_WINDOW`] without one.
    last_foreign: Option<Now>,
    /// The other writer (its route and protocol) while a fight goes on.
    fighting: Option<String>,
    /// Restores during the current fight (reported when it ends).
    restores: u32,
    /// The competing default route last reported.
    competing: Option<CompetingRoute>,
    /// The kernel refused the last change: the restores until the route is
    /// seen in place again are not reported one by one (the first was).
    refused: bool,
}

impl Core {
    pub(super) fn on_route(
        &mut self,
        now: Now,
        family: Family,
        via: RouteVia,
        authoritative: bool,
        out: &mut Vec<Action>,
    ) {
        let d = &mut self.fam[family.index()];
        if !d.decided {
            // Adopt what we find: the first decision starts from it.
            if !authoritative {
                return;
            }
            d.route_known = true;
            d.active = match via {
                RouteVia::Uplink(u) => Some(u),
                _ => None,
            };
            return;
        }
        let Some(active) = d.active else {
            return;
        };
        let same = matches!(via, RouteVia::Uplink(u) if self.same_route(u, active));
        let d = &mut self.fam[family.index()];
        if same {
            d.verify_pending = false;
            d.guard.refused = false;
            return;
        }
        if !authoritative {
            // Events may describe a state from before our own last change;
            // ask for the kernel's current view before acting.
            if !d.verify_pending {
                d.verify_pending = true;
                out.push(Action::VerifyRoute { family });
            }
            return;
        }
        d.verify_pending = false;
        let found = match via {
            RouteVia::Absent => "no route".to_string(),
            RouteVia::Uplink(u) => format!("route via {}", self.cfg.uplinks[u].name),
            RouteVia::Foreign(s) => s,
        };
        let g = &mut self.fam[family.index()].guard;
        g.last_foreign = Some(now);
        if g.restore_at.is_some() {
            // Already due once the backoff is over.
            return;
        }
        match g.last_restore {
            Some(last) if now.saturating_sub(last) < FIGHT_WINDOW => {
                if g.fighting.is_none() {
                    g.fighting = Some(found.clone());
                    g.restores = 0;
                    out.push(Action::Report(Change::Fighting {
                        family: family.name().into(),
                        with: found,
                        active: true,
                        restores: 0,
                    }));
                }
                g.backoff = match g.backoff.is_zero() {
                    true => FIRST_BACKOFF,
                    false => (g.backoff * 2).min(MAX_BACKOFF),
                };
                let at = last + g.backoff;
                match at <= now {
                    true => self.restore(now, family, active, None, out),
                    false => self.fam[family.index()].guard.restore_at = Some(at),
                }
            }
            _ => {
                g.backoff = Duration::ZERO;
                self.restore(now, family, active, Some(found), out);
            }
        }
    }

    /// Put the managed route back on `active`; `found` (what was there) is
    /// reported unless a fight is on (its restores are counted instead).
    fn restore(
        &mut self,
        now: Now,
        family: Family,
        active: usize,
        found: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let g = &mut self.fam[family.index()].guard;
        g.last_restore = Some(now);
        out.push(Action::SetDefaultRoute {
            family,
            uplink: active,
        });
        let found = found.filter(|_| !g.refused);
        match (&g.fighting, found) {
            (Some(_), _) | (None, None) => g.restores += 1,
            (None, Some(found)) => out.push(Action::Report(Change::RouteRestored {
                family: family.name().into(),
                uplink: self.cfg.uplinks[active].name.clone(),
                found,
            })),
        }
    }

    /// The kernel refused the latest route change of `family`: the route
    /// was not put in, so nobody changed it after us (see `Event::RouteRefused`).
    pub(super) fn on_refused(&mut self, family: Family) {
        let g = &mut self.fam[family.index()].guard;
        g.last_restore = None;
        g.refused = true;
    }

    /// A deadline passed: a restore whose backoff is over, a fight that
    /// has gone quiet.
    pub(super) fn route_timers(&mut self, now: Now, out: &mut Vec<Action>) {
        for family in Family::ALL {
            let d = &mut self.fam[family.index()];
            if d.guard.restore_at.is_some_and(|t| t <= now) {
                d.guard.restore_at = None;
                if let Some(active) = d.active {
                    self.restore(now, family, active, None, out);
                }
            }
            let g = &mut self.fam[family.index()].guard;
            let quiet = g
                .last_foreign
                .is_none_or(|t| now.saturating_sub(t) >= FIGHT_WINDOW);
            if g.restore_at.is_none() && quiet {
                g.backoff = Duration::ZERO;
                if let Some(with) = g.fighting.take() {
                    out.push(Action::Report(Change::Fighting {
                        family: family.name().into(),
                        with,
                        active: false,
                        restores: g.restores,
                    }));
                }
            }
        }
    }

    /// The instants `route_timers` has work at.
    pub(super) fn route_deadlines(&self, consider: &mut impl FnMut(Now)) {
        for d in &self.fam {
            if let Some(t) = d.guard.restore_at {
                consider(t);
            }
            if let (Some(_), Some(t)) = (&d.guard.fighting, d.guard.last_foreign) {
                consider(t + FIGHT_WINDOW);
            }
        }
    }

    /// The other writer in a fight over `family`'s route, if any.
    pub(super) fn fighting(&self, family: Family) -> Option<String> {
        self.fam[family.index()].guard.fighting.clone()
    }

    /// The competing default route reported for `family`, if any.
    pub(super) fn competing(&self, family: Family) -> Option<CompetingRoute> {
        self.fam[family.index()].guard.competing.clone()
    }

    /// The daemon's view of the competing default routes of `family` changed.
    pub(super) fn on_competing(
        &mut self,
        family: Family,
        route: Option<CompetingRoute>,
        out: &mut Vec<Action>,
    ) {
        let remove = self.cfg.agent.remove_competing_routes;
        let g = &mut self.fam[family.index()].guard;
        if g.competing == route {
            return;
        }
        let old = std::mem::replace(&mut g.competing, route.clone());
        match route {
            Some(route) => {
                if remove {
                    out.push(Action::RemoveRoute {
                        family,
                        route: route.clone(),
                    });
                }
                out.push(Action::Report(Change::CompetingRoute {
                    family: family.name().into(),
                    route,
                    present: true,
                    removed: remove,
                }));
            }
            None => {
                if let Some(route) = old {
                    out.push(Action::Report(Change::CompetingRoute {
                        family: family.name().into(),
                        route,
                        present: false,
                        removed: false,
                    }));
                }
            }
        }
    }
}
