//! Keeping the kernel's managed default route to the decision.
//!
//! Before a family's first decision the route found in the kernel is
//! adopted: the first decision starts from it. After that, a route that
//! differs from the decision is put back, but only when an authoritative
//! dump says so: a multicast event may describe a state from before the
//! agent's own last change, so a mismatch seen there only asks for a dump.
//! Members of one bond share one route.

use super::Core;
use crate::config::Family;
use crate::status::Change;
use crate::{Action, RouteVia};

impl Core {
    pub(super) fn on_route(
        &mut self,
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
        out.push(Action::SetDefaultRoute {
            family,
            uplink: active,
        });
        out.push(Action::Report(Change::RouteRestored {
            family: family.name().into(),
            uplink: self.cfg.uplinks[active].name.clone(),
            found,
        }));
    }
}
