//! The bond's netlink side: the adapters that read and set an active-backup
//! bond for the uplinks that are its members (ports). They decide nothing.
//!
//! - [`spawn_bond_poller`]: reads each managed bond's active member and
//!   member list from sysfs every few milliseconds (two small reads), and
//!   the whole bond and its members over rtnetlink (RTM_GETLINK by name)
//!   when that view changes and every 500 ms: the driver's active member
//!   (IFLA_BOND_ACTIVE_SLAVE), the bond's settings (mode, miimon,
//!   arp_interval, primary, primary_reselect) and which members are
//!   enslaved, with their permanent MAC (IFLA_BOND_SLAVE_PERM_HWADDR).
//!   Polled, like the carrier, because link events can be a second late on
//!   a busy host.
//! - [`set_active`]: RTM_NEWLINK on the bond with IFLA_BOND_ACTIVE_SLAVE.
//!
//! The gateway and transit checks through one member, active or backup, are
//! the probers' ([`crate::probe::MemberProber`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_route::link::{
    BondMode, BondPrimaryReselect, InfoBond, InfoBondPort, InfoData, InfoKind, InfoPortData,
    LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::Handle;
use tokio::sync::mpsc::UnboundedSender;

use super::REQUEST_TIMEOUT;
use crate::status::BondStatus;
use crate::task::AbortOnDrop;

/// One observation of a bond and its configured members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BondSample {
    pub bond: String,
    pub present: bool,
    pub ifindex: Option<u32>,
    /// Name of the driver's active member, if any.
    pub active: Option<String>,
    pub mode: Option<String>,
    pub miimon: Option<u32>,
    pub arp_interval: Option<u32>,
    /// Name of the configured primary member, if any.
    pub primary: Option<String>,
    pub primary_reselect: Option<String>,
    /// Configured members (by interface name) that are enslaved to this bond.
    pub enslaved: Vec<String>,
    /// Permanent MAC of each enslaved member.
    pub perm_mac: Vec<(String, [u8; 6])>,
    /// The bond's own MAC.
    pub mac: Option<[u8; 6]>,
}

impl BondSample {
    /// Loud warnings about settings that fight or weaken the agent, with what
    /// the agent does about each.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.present {
            w.push(format!(
                "bond {} does not exist: its members cannot be chosen",
                self.bond
            ));
            return w;
        }
        if let Some(m) = &self.mode {
            if m != "active-backup" {
                w.push(format!(
                    "bond {} is in mode {m}, not active-backup: the active member cannot be set; the agent only probes its members",
                    self.bond
                ));
            }
        }
        if self.miimon == Some(0) && self.arp_interval == Some(0) {
            w.push(format!(
                "bond {} has no link monitoring (miimon 0, arp_interval 0): the driver never fails over by itself; the agent still does (carrier poll and ARP probes per member)",
                self.bond
            ));
        }
        if let (Some(p), Some("always")) = (&self.primary, self.primary_reselect.as_deref()) {
            w.push(format!(
                "bond {} has primary {p} with primary_reselect=always: the driver takes {p} back whenever its link comes up, against the agent's choice; the agent sets its choice again (set primary_reselect=failure to avoid the fight)",
                self.bond
            ));
        }
        w
    }

    pub fn status(&self) -> BondStatus {
        BondStatus {
            name: self.bond.clone(),
            present: self.present,
            active: self.active.clone(),
            chosen: None,
            mode: self.mode.clone(),
            miimon_ms: self.miimon,
            arp_interval_ms: self.arp_interval,
            primary: self.primary.clone(),
            primary_reselect: self.primary_reselect.clone(),
            enslaved: self.enslaved.clone(),
            warnings: self.warnings(),
        }
    }
}

fn mode_name(m: &BondMode) -> String {
    match m {
        BondMode::BalanceRr => "balance-rr".into(),
        BondMode::ActiveBackup => "active-backup".into(),
        BondMode::BalanceXor => "balance-xor".into(),
        BondMode::Broadcast => "broadcast".into(),
        BondMode::Ieee8023Ad => "802.3ad".into(),
        BondMode::BalanceTlb => "balance-tlb".into(),
        BondMode::BalanceAlb => "balance-alb".into(),
        BondMode::Other(x) => format!("mode {x}"),
        other => format!("{other:?}"),
    }
}

fn reselect_name(r: &BondPrimaryReselect) -> String {
    match r {
        BondPrimaryReselect::Always => "always".into(),
        BondPrimaryReselect::Better => "better".into(),
        BondPrimaryReselect::Failure => "failure".into(),
        BondPrimaryReselect::Other(x) => format!("{x}"),
        other => format!("{other:?}"),
    }
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

async fn get_link(handle: &Handle, name: &str) -> Option<LinkMessage> {
    let req = handle.link().get().match_name(name.to_string()).execute();
    let first = tokio::time::timeout(REQUEST_TIMEOUT, Box::pin(req).next()).await;
    match first {
        Ok(Some(Ok(m))) => Some(m),
        _ => None,
    }
}

async fn get_link_index(handle: &Handle, index: u32) -> Option<LinkMessage> {
    let req = handle.link().get().match_index(index).execute();
    let first = tokio::time::timeout(REQUEST_TIMEOUT, Box::pin(req).next()).await;
    match first {
        Ok(Some(Ok(m))) => Some(m),
        _ => None,
    }
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Read one bond and its configured members.
pub async fn read_bond(handle: &Handle, bond: &str, members: &[String]) -> BondSample {
    let mut s = BondSample {
        bond: bond.to_string(),
        ..Default::default()
    };
    let Some(b) = get_link(handle, bond).await else {
        return s;
    };
    s.present = true;
    s.ifindex = Some(b.header.index);
    let mut active_idx = None;
    let mut primary_idx = None;
    for a in &b.attributes {
        match a {
            LinkAttribute::Address(mac) => s.mac = mac6(mac),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Bond(opts)) = i {
                        for o in opts {
                            match o {
                                InfoBond::Mode(m) => s.mode = Some(mode_name(m)),
                                InfoBond::ActivePort(p) => active_idx = Some(*p),
                                InfoBond::MiiMon(v) => s.miimon = Some(*v),
                                InfoBond::ArpInterval(v) => s.arp_interval = Some(*v),
                                InfoBond::Primary(p) => primary_idx = Some(*p),
                                InfoBond::PrimaryReselect(r) => {
                                    s.primary_reselect = Some(reselect_name(r))
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for m in members {
        let Some(l) = get_link(handle, m).await else {
            continue;
        };
        let enslaved = l
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == b.header.index));
        if !enslaved {
            continue;
        }
        s.enslaved.push(m.clone());
        if Some(l.header.index) == active_idx {
            s.active = Some(m.clone());
        }
        if Some(l.header.index) == primary_idx {
            s.primary = Some(m.clone());
        }
        for a in &l.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    if let LinkInfo::PortData(InfoPortData::BondPort(ps)) = i {
                        for p in ps {
                            if let InfoBondPort::PermHwaddr(mac) = p {
                                if let Some(mac) = mac6(mac) {
                                    s.perm_mac.push((m.clone(), mac));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // An active or primary member that is not one of ours: name it anyway.
    if s.active.is_none() {
        if let Some(i) = active_idx.filter(|i| *i != 0) {
            s.active = get_link_index(handle, i).await.as_ref().and_then(link_name);
        }
    }
    if s.primary.is_none() {
        if let Some(i) = primary_idx.filter(|i| *i != 0) {
            s.primary = get_link_index(handle, i).await.as_ref().and_then(link_name);
        }
    }
    s
}

/// Open an rtnetlink connection on the current thread's namespace.
pub fn connect() -> std::io::Result<(Handle, tokio::task::JoinHandle<()>)> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    Ok((handle, tokio::spawn(conn)))
}

/// Poll every bond (name -> its configured member interfaces) each
/// `interval`; send a sample when it changes (and once at start).
pub fn spawn_bond_poller(
    bonds: Vec<(String, Vec<String>)>,
    interval: Duration,
    tx: UnboundedSender<BondSample>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (handle, conn) = connect()?;
    Ok(tokio::spawn(async move {
        let _conn = AbortOnDrop(conn);
        let mut last: HashMap<String, BondSample> = HashMap::new();
        // The cheap view (sysfs: active member and members, two small reads)
        // every tick; the full netlink read when it changes, and every
        // FULL_READ_EVERY for the settings (or every SYSFS_MISSING_EVERY when
        // sysfs does not show the bond).
        let mut quick: HashMap<String, (Option<String>, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            for (bond, members) in &bonds {
                let view = sysfs_view(bond);
                let now = Instant::now();
                let due = match quick.get(bond) {
                    None => true,
                    Some((v, at)) => {
                        *v != view
                            || now.duration_since(*at)
                                >= if view.is_some() {
                                    FULL_READ_EVERY
                                } else {
                                    SYSFS_MISSING_EVERY
                                }
                    }
                };
                if !due {
                    continue;
                }
                quick.insert(bond.clone(), (view, now));
                let s = read_bond(&handle, bond, members).await;
                if last.get(bond) != Some(&s) {
                    last.insert(bond.clone(), s.clone());
                    if tx.send(s).is_err() {
                        return;
                    }
                }
            }
        }
    }))
}

/// Full netlink read of a bond at least this often (settings changes).
const FULL_READ_EVERY: Duration = Duration::from_millis(500);
/// Full read period when sysfs does not show the bond.
const SYSFS_MISSING_EVERY: Duration = Duration::from_millis(50);

/// The bond's active member and member list from sysfs (of the namespace
/// /sys was mounted for), or None when it is not there.
fn sysfs_view(bond: &str) -> Option<String> {
    let dir = format!("/sys/class/net/{bond}/bonding");
    let active = std::fs::read_to_string(format!("{dir}/active_slave")).ok()?;
    let slaves = std::fs::read_to_string(format!("{dir}/slaves")).ok()?;
    Some(format!("{}|{}", active.trim(), slaves.trim()))
}

/// Make `member` the active member of `bond` (IFLA_BOND_ACTIVE_SLAVE).
/// The kernel refuses unless the bond is active-backup (or tlb/alb) and the
/// member's link is up.
pub async fn set_active(handle: &Handle, bond: &str, member: &str) -> Result<(), String> {
    let op = format!("set active member of bond {bond} to {member}");
    let bidx = nix::net::if_::if_nametoindex(bond).map_err(|e| format!("{op}: {bond}: {e}"))?;
    let midx = nix::net::if_::if_nametoindex(member).map_err(|e| format!("{op}: {member}: {e}"))?;
    let mut msg = LinkMessage::default();
    msg.header.index = bidx;
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Bond),
        LinkInfo::Data(InfoData::Bond(vec![InfoBond::ActivePort(midx)])),
    ]));
    match tokio::time::timeout(REQUEST_TIMEOUT, handle.link().change(msg).execute()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{op}: {e}")),
        Err(_) => Err(format!("{op}: timed out after {REQUEST_TIMEOUT:?}")),
    }
}

/// Executes the agent's active-member choices in order, on its own
/// rtnetlink socket, and logs each result.
pub fn spawn_bond_actuator(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (handle, conn) = connect()?;
    Ok(tokio::spawn(async move {
        let _conn = AbortOnDrop(conn);
        while let Some((bond, member)) = rx.recv().await {
            let t0 = Instant::now();
            match set_active(&handle, &bond, &member).await {
                Ok(()) => tracing::info!(
                    %bond, %member, micros = t0.elapsed().as_micros() as u64,
                    "bond active member set"
                ),
                Err(e) => tracing::error!(error = %e, "bond active member not set"),
            }
        }
    }))
}
