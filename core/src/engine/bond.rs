//! Which member of a managed active-backup bond is active, and why it moved.
//!
//! For a bond member, "the route goes via this uplink" means "this member is
//! the bond's active one": the decision of the member's lead family picks
//! it, and the agent asks the driver for it. The driver may also move by
//! itself (its link or ARP monitor, primary reselection, an operator): each
//! bond read is compared with the agent's choice, a move of the driver's own
//! is reported with its cause as far as it can be told, and the agent's
//! choice is put back while it is still usable.

use super::Core;
use crate::config::Family;
use crate::status::{BondStatus, Change};
use crate::{Action, UplinkId};

impl Core {
    /// The family whose decision picks a bond member's active member: IPv4
    /// when the member has an IPv4 gateway, else IPv6.
    pub(super) fn lead_family(&self, i: UplinkId) -> Family {
        if self.cfg.uplinks[i].gateway4.is_some() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// `a` and `b` put the same route in the kernel (members of one bond).
    pub(super) fn same_route(&self, a: UplinkId, b: UplinkId) -> bool {
        let (x, y) = (&self.cfg.uplinks[a], &self.cfg.uplinks[b]);
        a == b
            || (x.bond.is_some()
                && x.bond == y.bond
                && x.gateway4 == y.gateway4
                && x.gateway6 == y.gateway6)
    }

    pub(super) fn bond_index(&self, name: &str) -> Option<usize> {
        self.bonds.iter().position(|b| b.status.name == name)
    }

    fn member_by_interface(&self, bond: &str, ifname: &str) -> Option<UplinkId> {
        self.cfg
            .uplinks
            .iter()
            .position(|u| u.bond.as_deref() == Some(bond) && u.interface == ifname)
    }

    /// Ask the driver to make member `t` active (and remember the choice).
    pub(super) fn choose_member(&mut self, t: UplinkId, reason: &str, out: &mut Vec<Action>) {
        let Some(bond) = self.cfg.uplinks[t].bond.clone() else {
            return;
        };
        let Some(bi) = self.bond_index(&bond) else {
            return;
        };
        let from = self.bonds[bi].status.active.clone();
        self.bonds[bi].chosen = Some(t);
        self.bonds[bi].status.chosen = Some(self.cfg.uplinks[t].interface.clone());
        out.push(Action::SetBondActive {
            bond: bond.clone(),
            uplink: t,
        });
        let to = Some(self.cfg.uplinks[t].interface.clone());
        if from != to {
            out.push(Action::Report(Change::Bond {
                bond,
                from,
                to,
                by: "agent".into(),
                cause: reason.to_string(),
                warnings: Vec::new(),
            }));
        }
    }

    pub(super) fn on_bond(&mut self, st: BondStatus, out: &mut Vec<Action>) {
        let Some(bi) = self.bond_index(&st.name) else {
            return;
        };
        for i in 0..self.uplinks.len() {
            let u = &self.cfg.uplinks[i];
            if u.bond.as_deref() == Some(st.name.as_str()) {
                self.uplinks[i].enslaved = Some(st.present && st.enslaved.contains(&u.interface));
            }
        }
        let old = std::mem::take(&mut self.bonds[bi].status);
        let first = !self.bonds[bi].seen;
        self.bonds[bi].seen = true;
        let mut st = st;
        st.chosen = old.chosen.clone();
        self.bonds[bi].status = st.clone();
        if (first || old.warnings != st.warnings) && (!st.warnings.is_empty() || !first) {
            {
                out.push(Action::Report(Change::Bond {
                    bond: st.name.clone(),
                    from: None,
                    to: None,
                    by: "settings".into(),
                    cause: format!(
                        "mode {}, miimon {}, arp_interval {}, primary {}, primary_reselect {}",
                        st.mode.as_deref().unwrap_or("?"),
                        st.miimon_ms.map_or("?".into(), |v| v.to_string()),
                        st.arp_interval_ms.map_or("?".into(), |v| v.to_string()),
                        st.primary.as_deref().unwrap_or("none"),
                        st.primary_reselect.as_deref().unwrap_or("?"),
                    ),
                    warnings: st.warnings.clone(),
                }));
            }
        }
        if old.active == st.active || first {
            return;
        }
        let chosen = self.bonds[bi].chosen;
        let chosen_if = chosen.map(|c| self.cfg.uplinks[c].interface.clone());
        if st.active == chosen_if {
            return; // our own change, now applied
        }
        // The driver moved by itself: say why, as far as we can tell.
        let cause = match old
            .active
            .as_deref()
            .and_then(|a| self.member_by_interface(&st.name, a))
        {
            Some(m) if self.uplinks[m].enslaved == Some(false) => {
                format!("{} left the bond", self.cfg.uplinks[m].interface)
            }
            Some(m) if self.uplinks[m].carrier == Some(false) => format!(
                "carrier loss on {} (the driver's link monitor)",
                self.cfg.uplinks[m].interface
            ),
            _ if st.primary.is_some() && st.active == st.primary => format!(
                "the driver's primary/primary_reselect ({})",
                st.primary_reselect.as_deref().unwrap_or("?")
            ),
            _ => "the driver's own choice (link or ARP monitor, or an operator)".into(),
        };
        out.push(Action::Report(Change::Bond {
            bond: st.name.clone(),
            from: old.active.clone(),
            to: st.active.clone(),
            by: "driver".into(),
            cause,
            warnings: Vec::new(),
        }));
        // Put our choice back if it is still good; else the selection
        // moves on its own evidence.
        if let Some(c) = chosen {
            let fi = self.lead_family(c).index();
            if self.candidate(c, fi) && self.uplinks[c].carrier == Some(true) {
                self.choose_member(c, "the agent's choice is still usable", out);
            }
        }
    }

    /// A route via a bond names the bond, not a member: before the first
    /// decision, adopt the member the driver has active.
    pub(super) fn adopt_driver_member(&mut self, fi: usize) {
        if let Some(a) = self.fam[fi].active {
            if let Some(b) = self.cfg.uplinks[a].bond.clone() {
                let driver = self
                    .bond_index(&b)
                    .and_then(|bi| self.bonds[bi].status.active.clone())
                    .and_then(|m| self.member_by_interface(&b, &m));
                if let Some(m) = driver.filter(|m| self.same_route(a, *m)) {
                    self.fam[fi].active = Some(m);
                }
            }
        }
    }

    /// Kept a bond member the agent has not chosen yet (adopted at start):
    /// make the choice explicit, so the driver's own moves are noticed.
    pub(super) fn claim_adopted_member(
        &mut self,
        t: UplinkId,
        family: Family,
        out: &mut Vec<Action>,
    ) {
        let unchosen = self.cfg.uplinks[t]
            .bond
            .as_deref()
            .and_then(|b| self.bond_index(b))
            .is_some_and(|bi| self.bonds[bi].chosen.is_none());
        if unchosen && self.lead_family(t) == family {
            self.choose_member(t, "adopted", out);
        }
    }
}
