//! Bond members: the adapters for uplinks that are members (ports) of an
//! active-backup bond. They decide nothing.
//!
//! - [`spawn_bond_poller`]: reads each managed bond and its members over
//!   rtnetlink (RTM_GETLINK by name) every few milliseconds and reports
//!   changes: the driver's active member (IFLA_BOND_ACTIVE_SLAVE), the
//!   bond's settings (mode, miimon, arp_interval, primary, primary_reselect)
//!   and which members are enslaved, with their permanent MAC
//!   (IFLA_BOND_SLAVE_PERM_HWADDR). Polled, like the carrier, because link
//!   events can be a second late on a busy host.
//! - [`set_active`]: RTM_NEWLINK on the bond with IFLA_BOND_ACTIVE_SLAVE.
//! - [`ArpProber`]: the gateway check through one member, active or backup.
//!
//! ## What can be proven through a backup member
//! In active-backup the kernel drops ordinary traffic received on the
//! backup member (bond_should_deliver_exact_match), so an ICMP echo bound to
//! it never gets its reply. A packet socket bound to the member still sees
//! every frame it receives (the bonding driver's ARP validation relies on
//! the same), so:
//! - carrier: the member's own carrier (the carrier poller, as for routes);
//! - gateway (IPv4): an ARP probe (RFC 5227 section 2.1.1: ARP request with
//!   sender IP 0.0.0.0) sent on the member itself. A Linux (or any RFC 5227)
//!   gateway answers a probe for its address with a reply to the sender's
//!   MAC and, because the sender IP is zero, learns nothing from it
//!   (net/ipv4/arp.c, arp_process: "sip == 0" is answered and consumed
//!   before any neighbour update): the gateway's neighbour entry for the
//!   server is never touched. The source MAC is the member's permanent MAC,
//!   so the switches learn that MAC, never the bond's, on the backup path
//!   (no MAC flapping). When the permanent MAC *is* the bond's MAC (the
//!   first member enslaved lends its MAC to the bond), a locally
//!   administered MAC derived from it is used instead, for the same reason.
//!   The reply goes to that MAC, which the member is told to accept
//!   (PACKET_ADD_MEMBERSHIP, PACKET_MR_UNICAST).
//! - transits: not probed per member; the quorum does not apply to bond
//!   members (status shows which checks cover each uplink).
//! - IPv6 gateway: not probed per member yet (the config rejects gateway6
//!   on bond members).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_route::link::{
    BondMode, BondPrimaryReselect, InfoBond, InfoBondPort, InfoData, InfoKind, InfoPortData,
    LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::Handle;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

use crate::core::{ProbeId, ProbeOutcome, ProbeRequest};
use crate::status::BondStatus;

/// Bound on every request of the poller and setter.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

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
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            for (bond, members) in &bonds {
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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

// ---------------------------------------------------------------------------
// ARP probes through one member
// ---------------------------------------------------------------------------

/// include/uapi/linux/if_ether.h
const ETH_P_ARP: u16 = 0x0806;
/// include/uapi/linux/if_arp.h
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
/// Ethernet header + ARP for IPv4 over Ethernet (RFC 826).
const FRAME_LEN: usize = 14 + 28;

/// The source MAC of probes through a member: its permanent MAC, or, when
/// that is the bond's MAC, a locally administered one derived from it, so
/// the switches never learn the bond's MAC on a backup path.
pub fn probe_mac(perm: [u8; 6], bond_mac: Option<[u8; 6]>) -> [u8; 6] {
    if Some(perm) == bond_mac || perm == [0; 6] {
        let mut m = perm;
        // Locally administered, unicast (IEEE 802: bit 1 and bit 0 of octet 0).
        m[0] = (m[0] | 0x02) & !0x01;
        if Some(m) == bond_mac {
            m[5] ^= 0x01;
        }
        m
    } else {
        perm
    }
}

/// RFC 5227 ARP probe: "who has `target`", sender IP 0.0.0.0.
pub fn arp_probe_frame(src: [u8; 6], dst: [u8; 6], target: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&src);
    // sender IP 0.0.0.0 (f[28..32]); target hw unknown (f[32..38]).
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// A valid reply to our probe: op reply, sender IP = target, target hw = our MAC.
/// Returns the gateway's MAC.
pub fn parse_arp_reply(frame: &[u8], ours: [u8; 6], target: Ipv4Addr) -> Option<[u8; 6]> {
    if frame.len() < FRAME_LEN || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let a = &frame[14..];
    if a[0..2] != ARPHRD_ETHER.to_be_bytes()
        || a[2..4] != 0x0800u16.to_be_bytes()
        || a[4] != 6
        || a[5] != 4
        || a[6..8] != ARPOP_REPLY.to_be_bytes()
        || a[14..18] != target.octets()
        || a[18..24] != ours
    {
        return None;
    }
    mac6(&a[8..14])
}

struct MemberSock {
    ifindex: u32,
    fd: Arc<AsyncFd<OwnedFd>>,
    src: [u8; 6],
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for MemberSock {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Default)]
struct Pending {
    /// (gateway, probe, sent at, deadline) in send order.
    probes: Vec<(Ipv4Addr, ProbeId, Instant)>,
    /// The gateway's MAC as last seen in a reply, to unicast the next probe.
    gw_mac: HashMap<Ipv4Addr, [u8; 6]>,
}

type Reply = UnboundedSender<(ProbeId, ProbeOutcome)>;

/// Sends ARP probes through bond members and matches their replies.
#[derive(Default)]
pub struct ArpProber {
    socks: HashMap<String, MemberSock>,
    pending: HashMap<String, Arc<Mutex<Pending>>>,
    /// Per member: its permanent MAC and the bond's MAC, from the bond poller.
    macs: HashMap<String, ([u8; 6], Option<[u8; 6]>)>,
}

impl ArpProber {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learn the MACs of a bond's members (from a [`BondSample`]).
    pub fn update(&mut self, s: &BondSample) {
        for (m, perm) in &s.perm_mac {
            let v = (*perm, s.mac);
            if self.macs.get(m) != Some(&v) {
                self.macs.insert(m.clone(), v);
                self.socks.remove(m); // reopen with the new source MAC
            }
        }
    }

    /// The source MAC used on `member`, once known.
    pub fn source_mac(&self, member: &str) -> Option<[u8; 6]> {
        self.macs.get(member).map(|(p, b)| probe_mac(*p, *b))
    }

    /// Send one ARP probe for `req.target` out of `member`; the outcome goes
    /// to `tx` (a reply, a timeout, or an error).
    pub fn send(&mut self, member: &str, req: ProbeRequest, tx: Reply) {
        let std::net::IpAddr::V4(target) = req.target else {
            let _ = tx.send((
                req.id,
                ProbeOutcome::Error("IPv6 gateways are not probed through bond members".into()),
            ));
            return;
        };
        match self.send_v4(member, target, &req, &tx) {
            Ok(()) => {
                let pending = self.pending.get(member).cloned().expect("set by send_v4");
                let id = req.id;
                let timeout = req.timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let expired = {
                        let mut p = pending.lock().unwrap();
                        let before = p.probes.len();
                        p.probes.retain(|(_, i, _)| *i != id);
                        let gone = p.probes.len() != before;
                        if gone {
                            // Unicast to a MAC that may have changed found
                            // nothing: ask everybody next time.
                            p.gw_mac.remove(&target);
                        }
                        gone
                    };
                    if expired {
                        let _ = tx.send((id, ProbeOutcome::Timeout));
                    }
                });
            }
            Err(e) => {
                self.socks.remove(member);
                let _ = tx.send((req.id, ProbeOutcome::Error(e)));
            }
        }
    }

    fn send_v4(
        &mut self,
        member: &str,
        target: Ipv4Addr,
        req: &ProbeRequest,
        tx: &Reply,
    ) -> Result<(), String> {
        let ifindex = nix::net::if_::if_nametoindex(member)
            .map_err(|e| format!("ARP probe via {member}: {e}"))?;
        let Some(src) = self.source_mac(member) else {
            return Err(format!(
                "ARP probe via {member}: not (yet) a member of its bond (no permanent MAC known)"
            ));
        };
        if self
            .socks
            .get(member)
            .is_none_or(|s| s.ifindex != ifindex || s.src != src)
        {
            self.socks.remove(member);
            let pending = self.pending.entry(member.to_string()).or_default().clone();
            let sock = open_member(member, ifindex, src, pending, tx.clone())?;
            self.socks.insert(member.to_string(), sock);
        }
        let sock = self.socks.get(member).expect("just opened");
        let pending = self.pending.get(member).expect("set above").clone();
        let dst = {
            let mut p = pending.lock().unwrap();
            p.probes.push((target, req.id, Instant::now()));
            p.gw_mac.get(&target).copied().unwrap_or([0xff; 6])
        };
        let frame = arp_probe_frame(src, dst, target);
        let n = unsafe {
            libc::send(
                sock.fd.get_ref().as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            pending
                .lock()
                .unwrap()
                .probes
                .retain(|(_, i, _)| *i != req.id);
            return Err(format!("ARP probe via {member}: send: {e}"));
        }
        Ok(())
    }
}

fn open_member(
    member: &str,
    ifindex: u32,
    src: [u8; 6],
    pending: Arc<Mutex<Pending>>,
    tx: Reply,
) -> Result<MemberSock, String> {
    let err = |what: &str| {
        format!(
            "ARP socket on {member}: {what}: {}",
            std::io::Error::last_os_error()
        )
    };
    let proto = ETH_P_ARP.to_be();
    // SAFETY: plain socket(2)/bind(2)/setsockopt(2) calls with valid arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto as libc::c_int,
        )
    };
    if fd < 0 {
        return Err(err("socket"));
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(err("bind"));
    }
    // Accept unicast frames to our probe MAC, which is not the member's
    // current address (bonding gives every member the bond's MAC).
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = ifindex as i32;
    mreq.mr_type = libc::PACKET_MR_UNICAST as u16;
    mreq.mr_alen = 6;
    mreq.mr_address[..6].copy_from_slice(&src);
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as u32,
        )
    };
    if rc < 0 {
        return Err(err("PACKET_ADD_MEMBERSHIP"));
    }
    // SAFETY: `fd` is an owned socket that lives inside the AsyncFd until it
    // is dropped; nothing else registers or closes it.
    let fd = Arc::new(
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| format!("ARP socket on {member}: {e}"))?,
    );
    let rfd = fd.clone();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        loop {
            let Ok(mut guard) = rfd.readable().await else {
                return;
            };
            loop {
                let n = unsafe {
                    libc::recv(
                        rfd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    guard.clear_ready();
                    break;
                }
                let frame = &buf[..n as usize];
                let mut p = pending.lock().unwrap();
                // The oldest probe to the gateway that answered.
                let hit = p
                    .probes
                    .iter()
                    .position(|(gw, _, _)| parse_arp_reply(frame, src, *gw).is_some());
                if let Some(i) = hit {
                    let (gw, id, sent) = p.probes.remove(i);
                    if let Some(mac) = parse_arp_reply(frame, src, gw) {
                        p.gw_mac.insert(gw, mac);
                    }
                    drop(p);
                    let _ = tx.send((
                        id,
                        ProbeOutcome::Reply {
                            rtt: sent.elapsed(),
                        },
                    ));
                }
            }
        }
    });
    Ok(MemberSock {
        ifindex,
        fd,
        src,
        reader,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_frame_is_rfc5227_and_reply_is_matched() {
        let src = [0x02, 1, 2, 3, 4, 5];
        let gw: Ipv4Addr = "198.18.1.1".parse().unwrap();
        let f = arp_probe_frame(src, [0xff; 6], gw);
        assert_eq!(&f[28..32], &[0, 0, 0, 0], "sender IP is zero");
        assert_eq!(&f[22..28], &src);
        // Build the reply a Linux gateway sends.
        let gmac = [0x0a, 9, 9, 9, 9, 9];
        let mut r = [0u8; FRAME_LEN];
        r[0..6].copy_from_slice(&src);
        r[6..12].copy_from_slice(&gmac);
        r[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        r[14..16].copy_from_slice(&1u16.to_be_bytes());
        r[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
        r[18] = 6;
        r[19] = 4;
        r[20..22].copy_from_slice(&2u16.to_be_bytes());
        r[22..28].copy_from_slice(&gmac);
        r[28..32].copy_from_slice(&gw.octets());
        r[32..38].copy_from_slice(&src);
        assert_eq!(parse_arp_reply(&r, src, gw), Some(gmac));
        assert_eq!(parse_arp_reply(&r, [0x02, 0, 0, 0, 0, 0], gw), None);
        assert_eq!(
            parse_arp_reply(&r, src, "198.18.1.2".parse().unwrap()),
            None
        );
    }

    #[test]
    fn probe_mac_never_is_the_bond_mac() {
        let bond = [0x52, 0x54, 0, 1, 2, 3];
        assert_ne!(probe_mac(bond, Some(bond)), bond);
        assert_eq!(probe_mac(bond, Some(bond))[0] & 0x03, 0x02);
        let other = [0x52, 0x54, 0, 9, 9, 9];
        assert_eq!(probe_mac(other, Some(bond)), other);
    }
}
