//! Probes through one bond member, active or backup, on packet sockets bound
//! to the member itself. The bond itself is read and set by
//! [`crate::netlink::bond`].
//!
//! Tick-driven like the routed prober ([`super::Prober`]): plain non-blocking
//! sockets registered with no reactor; the daemon calls
//! [`MemberProber::send`] when the core asks for a probe and
//! [`MemberProber::poll`] on its tick. `poll` first reads every frame queued
//! on the sockets that have probes in flight, then expires the probes past
//! their deadline. Round-trip times and lateness are judged on the kernel's
//! receive timestamp (`SO_TIMESTAMPNS`) against CLOCK_REALTIME read just
//! before the send, so a reply that reached the kernel in time is a reply
//! however late the agent reads it (a slow or loaded machine, a software
//! emulated VM), and an expired probe never races its own reply.
//!
//! Per member (opened lazily, reopened on error or when the MACs change):
//! - an ARP socket (ETH_P_ARP): RFC 5227 probes for the IPv4 gateway, and the
//!   answers to the gateway's ARP requests for the member's probe address;
//! - an IPv4 socket (ETH_P_IP, with a BPF filter on the probe MAC): ICMP
//!   echo replies to transit probes;
//! - an IPv6 socket (ETH_P_IPV6, BPF: the probe MAC, or the solicited-node
//!   group of the probe address): neighbour advertisements from the IPv6
//!   gateway, neighbour solicitations for the probe address (answered), and
//!   echo replies to transit probes;
//! - per family, while the auto trial runs, a socket for its round
//!   forwarding-plane echoes. In echo mode a member's echoes run as a
//!   stream on the carrier poller's tick ([`super::echo_stream`]), which
//!   sends to the gateway's MAC learned here ([`MemberProber::gateway_mac`])
//!   and relies on the ARP / NS answers given here: the ARP and IPv6
//!   sockets are read on every `poll`, with or without probes in flight.
//!
//! ## What can be proven through a backup member
//! In active-backup the kernel drops ordinary traffic received on the
//! backup member (bond_should_deliver_exact_match), so an ICMP echo bound to
//! it never gets its reply. A packet socket bound to the member still sees
//! every frame it receives (the bonding driver's ARP validation relies on
//! the same). Every probe leaves from the member's *probe MAC*: its
//! permanent MAC, or, when that is the bond's MAC (the first member
//! enslaved lends its MAC to the bond), a locally administered MAC derived
//! from it; so the switches learn that MAC, never the bond's, on the backup
//! path (no MAC flapping). Replies to it are accepted with
//! PACKET_ADD_MEMBERSHIP (PACKET_MR_UNICAST).
//! - carrier: the member's own carrier (the carrier poller, as for routes);
//! - gateway (IPv4): an ARP probe (RFC 5227 section 2.1.1: ARP request with
//!   sender IP 0.0.0.0). A Linux (or any RFC 5227) gateway answers a probe
//!   for its address with a reply to the sender's MAC and, because the
//!   sender IP is zero, learns nothing from it (net/ipv4/arp.c,
//!   arp_process: "sip == 0" is answered and consumed before any neighbour
//!   update): the gateway's neighbour entry for the server is never touched.
//! - gateway (IPv6): a neighbour solicitation from the link-local address
//!   of the probe MAC (fe80::EUI-64, never one of the server's addresses,
//!   since the probe MAC is never the bond's), with the probe MAC as source
//!   link-layer option, to the gateway's solicited-node group (unicast once
//!   its MAC is known). The answer is unicast to the probe MAC; the gateway
//!   learns only that link-local address.
//! - transits, with a dedicated probe address per member and family
//!   (`probe_address4` / `probe_address6`, never configured on the host):
//!   an ICMP echo from it to each transit target, sent to the gateway's MAC
//!   as resolved on this member. The gateway resolves the probe address by
//!   ARP / NS on the member's path; the prober answers with the probe MAC.
//!   This proves the switch and gateway router behind the member and that
//!   router's upstream, active or backup, so the transit quorum applies to
//!   members as to routed uplinks. Without a probe address, transits are
//!   not probed through the member (from the server's own address the reply
//!   would move the gateway's neighbour entry and the switches' entry for
//!   the bond's MAC to the backup path), and status says so per member.

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::core::{ProbeId, ProbeKind, ProbeOutcome, ProbeRequest};

use super::echo::{self, Parsed, ARRIVAL_TTL};
use super::packet::{
    arp_probe_frame, arp_reply_frame, attach_filter, decode_payload, dst_mac_filter,
    dst_mac_or_solicited_filter, echo4_frame, echo6_frame, encode_payload, link_local, na_frame,
    ns_frame, parse_arp, parse_echo_reply, parse_ethernet, parse_icmpv6, parse_ipv4, parse_nd,
    solicited_mac, solicited_node, ARP_REPLY, ARP_REQUEST, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6,
    ICMPV6_ECHO_REPLY, IPPROTO_ICMP, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT,
};
use super::reflect::{Paths, Verdict};
use super::{realtime_ns, recv_timestamped, reply_outcome};
use crate::config::Family;
use crate::netlink::BondSample;
use tracing::{debug, info, warn};

/// Placeholder destination of an echo whose gateway MAC is not known yet.
const UNRESOLVED: [u8; 6] = [0; 6];

/// Frames read per socket per poll at most (a flood cannot stall the loop).
const MAX_RECV_PER_POLL: usize = 64;

/// What one member is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub interface: String,
    /// Dedicated addresses for transit probes through this member (never
    /// configured on the host): the gateway resolves them to the member's
    /// probe MAC, which the agent answers for.
    pub probe4: Option<Ipv4Addr>,
    pub probe6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum What {
    /// ARP probe for this gateway.
    Arp(Ipv4Addr),
    /// Neighbour solicitation for this gateway.
    Ns(Ipv6Addr),
    /// Echo to this target with this sequence number, sent with this TTL /
    /// hop limit (a reply whose arrival TTL follows it is reflected).
    Echo(IpAddr, u16, u8),
    /// Forwarding-plane echo of the gateway (see [`super::echo`]) from the
    /// member's probe address to itself, by uplink, family and sequence:
    /// the auto trial's (echo mode runs a stream instead).
    Fwd {
        uplink: usize,
        family: Family,
        seq: u32,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    id: ProbeId,
    what: What,
    sent: Instant,
    sent_rt: Option<i64>,
    timeout: Duration,
}

#[derive(Default)]
struct Member {
    spec: Option<MemberSpec>,
    ifindex: u32,
    src: [u8; 6],
    arp: Option<OwnedFd>,
    ip4: Option<OwnedFd>,
    ip6: Option<OwnedFd>,
    /// Forwarding-plane echoes coming back (UDP to the probe address,
    /// port 3785, and ICMP redirects to it; kernel-filtered), per family.
    fwd: [Option<OwnedFd>; 2],
    fwd_seq: u32,
    /// ICMP redirects the gateway answered our echoes with, per family.
    redirects: [u64; 2],
    warned_redirect: bool,
    warned_ttl: bool,
    pending: Vec<Pending>,
    /// Transit echoes waiting for the gateway's MAC: (probe, frame with the
    /// destination MAC left to fill, gateway, socket).
    parked: Vec<(Pending, Vec<u8>, IpAddr, RawFd)>,
    /// Gateway MACs as last seen in a reply on this member.
    gw4: HashMap<Ipv4Addr, [u8; 6]>,
    gw6: HashMap<Ipv6Addr, [u8; 6]>,
    seq: u16,
    /// The TTL each transit's echoes are sent with, and the reflection
    /// check of their replies, as for routed probes.
    paths: Paths,
}

impl Member {
    fn close(&mut self) {
        // Parked echoes hold a socket about to close: they get no reply.
        let parked: Vec<Pending> = self.parked.drain(..).map(|(p, ..)| p).collect();
        self.pending.extend(parked);
        self.arp = None;
        self.ip4 = None;
        self.ip6 = None;
        self.fwd = [None, None];
    }
}

/// Sends gateway and transit probes through bond members; see the module docs.
pub struct MemberProber {
    members: HashMap<String, Member>,
    /// Per member: its permanent MAC and the bond's MAC, from the bond poller.
    macs: HashMap<String, ([u8; 6], Option<[u8; 6]>)>,
    /// Outcomes decided by `send` (errors), handed out by the next `poll`.
    ready: Vec<(ProbeId, ProbeOutcome)>,
    token: [u8; 8],
    ident: u16,
}

impl MemberProber {
    pub fn new(specs: Vec<MemberSpec>) -> Self {
        let mut members = HashMap::new();
        for s in specs {
            members.insert(
                s.interface.clone(),
                Member {
                    spec: Some(s),
                    ..Default::default()
                },
            );
        }
        MemberProber {
            members,
            macs: HashMap::new(),
            ready: Vec::new(),
            token: rand::random(),
            ident: rand::random(),
        }
    }

    /// Learn the MACs of a bond's members (from a [`BondSample`]).
    pub fn update(&mut self, s: &BondSample) {
        for (m, perm) in &s.perm_mac {
            let v = (*perm, s.mac);
            if self.macs.get(m) != Some(&v) {
                self.macs.insert(m.clone(), v);
                if let Some(mem) = self.members.get_mut(m) {
                    mem.close(); // reopened with the new source MAC
                }
            }
        }
    }

    /// ICMP redirects the gateway answered `member`'s forwarding-plane
    /// echoes of `family` with.
    pub fn redirects(&self, member: &str, family: Family) -> u64 {
        self.members
            .get(member)
            .map_or(0, |m| m.redirects[family.index()])
    }

    /// The source MAC used on `member`, once known.
    pub fn source_mac(&self, member: &str) -> Option<[u8; 6]> {
        self.macs.get(member).map(|(p, b)| probe_mac(*p, *b))
    }

    /// `gateway`'s MAC as last learned on `member` (an answer to our ARP
    /// probe or NS there), if known: where the member's echo stream
    /// sends (see [`super::echo_stream`]).
    pub fn gateway_mac(&self, member: &str, gateway: IpAddr) -> Option<[u8; 6]> {
        let m = self.members.get(member)?;
        match gateway {
            IpAddr::V4(g) => m.gw4.get(&g).copied(),
            IpAddr::V6(g) => m.gw6.get(&g).copied(),
        }
    }

    /// What `member`'s echo stream to `gateway` sends with: (its probe
    /// MAC, the gateway's MAC learned on it), once both are known.
    pub fn echo_macs(&self, member: &str, gateway: IpAddr) -> Option<([u8; 6], [u8; 6])> {
        self.source_mac(member)
            .zip(self.gateway_mac(member, gateway))
    }

    /// Close `member`'s socket of the auto trial's echoes of `family`: the
    /// echo stream took over (each packet socket on the member gets a copy
    /// of every echo). Echoes still in flight through it time out.
    pub fn close_echoes(&mut self, member: &str, family: Family) {
        if let Some(m) = self.members.get_mut(member) {
            m.fwd[family.index()] = None;
        }
    }

    /// True when something is in flight (the caller polls on its tick anyway).
    pub fn busy(&self) -> bool {
        !self.ready.is_empty()
            || self
                .members
                .values()
                .any(|m| !m.pending.is_empty() || !m.parked.is_empty())
    }

    /// Send one probe through `member`: the gateway (ARP or NS) or, for a
    /// transit, an echo from the member's probe address to `req.target` via
    /// `gateway`'s MAC as learned on this member.
    pub fn send(&mut self, member: &str, gateway: Option<IpAddr>, req: ProbeRequest) {
        let src = self.source_mac(member);
        let r = self.try_send(member, src, gateway, &req);
        if let Err(e) = r {
            if let Some(m) = self.members.get_mut(member) {
                m.close();
            }
            self.ready.push((req.id, ProbeOutcome::Error(e)));
        }
    }

    fn try_send(
        &mut self,
        member: &str,
        src: Option<[u8; 6]>,
        gateway: Option<IpAddr>,
        req: &ProbeRequest,
    ) -> Result<(), String> {
        let ifindex = nix::net::if_::if_nametoindex(member)
            .map_err(|e| format!("probe via {member}: {e}"))?;
        let Some(src) = src else {
            return Err(format!(
                "probe via {member}: not (yet) a member of its bond (no permanent MAC known)"
            ));
        };
        let m = self.members.entry(member.to_string()).or_default();
        if m.ifindex != ifindex || m.src != src {
            m.close();
            m.ifindex = ifindex;
            m.src = src;
        }
        let spec = m.spec.clone().unwrap_or(MemberSpec {
            interface: member.to_string(),
            probe4: None,
            probe6: None,
        });
        let (what, frame): (What, Vec<u8>) = match (req.kind, req.target) {
            (ProbeKind::Echo, gw) => {
                // From the member's probe address to itself, in a frame
                // from the probe MAC to the gateway's MAC as learned on
                // this member: the gateway routes it back to the probe
                // address, which it resolves (ARP / NS, answered by `poll`)
                // to the probe MAC, never to the bond's.
                let (from, dst) = match gw {
                    IpAddr::V4(g) => (
                        spec.probe4.map(IpAddr::V4),
                        m.gw4.get(&g).copied().unwrap_or(UNRESOLVED),
                    ),
                    IpAddr::V6(g) => (
                        spec.probe6.map(IpAddr::V6),
                        m.gw6.get(&g).copied().unwrap_or(UNRESOLVED),
                    ),
                };
                let from = from.ok_or_else(|| {
                    format!(
                        "forwarding-plane echo via {member}: no probe_address{} configured (a member echoes from its own probe address)",
                        if gw.is_ipv4() { 4 } else { 6 }
                    )
                })?;
                m.fwd_seq = m.fwd_seq.wrapping_add(1);
                let payload =
                    echo::echo_payload(&self.token, req.id, req.uplink, req.family, m.fwd_seq);
                (
                    What::Fwd {
                        uplink: req.uplink,
                        family: req.family,
                        seq: m.fwd_seq,
                    },
                    echo::echo_frame(src, dst, from, &payload),
                )
            }
            (ProbeKind::Gateway, IpAddr::V4(gw)) => {
                let dst = m.gw4.get(&gw).copied().unwrap_or([0xff; 6]);
                (What::Arp(gw), arp_probe_frame(src, dst, gw).to_vec())
            }
            (ProbeKind::Gateway, IpAddr::V6(gw)) => {
                let dst = m
                    .gw6
                    .get(&gw)
                    .copied()
                    .unwrap_or_else(|| solicited_mac(&gw));
                let dip = if m.gw6.contains_key(&gw) {
                    gw
                } else {
                    solicited_node(&gw)
                };
                (What::Ns(gw), ns_frame(src, dst, link_local(src), dip, gw))
            }
            (ProbeKind::Transit(_), target) => {
                let gw = gateway.ok_or_else(|| {
                    format!("transit probe via {member}: the member has no gateway of this family")
                })?;
                m.seq = m.seq.wrapping_add(1);
                let seq = m.seq;
                let ttl = m.paths.send_ttl(target);
                let payload = encode_payload(&self.token, req.id);
                match (target, gw) {
                    (IpAddr::V4(t), IpAddr::V4(g)) => {
                        let from = spec.probe4.ok_or_else(|| {
                            format!("transit probe via {member}: no probe_address4 configured")
                        })?;
                        let dst = m.gw4.get(&g).copied().unwrap_or(UNRESOLVED);
                        (
                            What::Echo(target, seq, ttl),
                            echo4_frame(src, dst, from, t, self.ident, seq, ttl, &payload),
                        )
                    }
                    (IpAddr::V6(t), IpAddr::V6(g)) => {
                        let from = spec.probe6.ok_or_else(|| {
                            format!("transit probe via {member}: no probe_address6 configured")
                        })?;
                        let dst = m.gw6.get(&g).copied().unwrap_or(UNRESOLVED);
                        (
                            What::Echo(target, seq, ttl),
                            echo6_frame(src, dst, from, t, self.ident, seq, ttl, &payload),
                        )
                    }
                    _ => return Err("transit probe: family mismatch".into()),
                }
            }
        };
        let uc = (libc::PACKET_MR_UNICAST as u16, src);
        let fd = match what {
            What::Fwd { family, .. } => {
                // The socket that answers the gateway's ARP requests / NS
                // for the probe address, then the one the echoes come back on.
                let addr = match family {
                    Family::V4 => {
                        open_lazily(&mut m.arp, member, ifindex, ETH_P_ARP, None, &[uc])?;
                        IpAddr::V4(spec.probe4.expect("checked above"))
                    }
                    Family::V6 => {
                        let f = dst_mac_or_solicited_filter(src, spec.probe6);
                        let mut acc = vec![uc];
                        if let Some(p) = spec.probe6 {
                            acc.push((libc::PACKET_MR_MULTICAST as u16, solicited_mac(&p)));
                        }
                        open_lazily(&mut m.ip6, member, ifindex, ETH_P_IPV6, Some(&f), &acc)?;
                        IpAddr::V6(spec.probe6.expect("checked above"))
                    }
                };
                let proto = match family {
                    Family::V4 => ETH_P_IP,
                    Family::V6 => ETH_P_IPV6,
                };
                let f = echo::echo_filter(addr);
                open_lazily(
                    &mut m.fwd[family.index()],
                    member,
                    ifindex,
                    proto,
                    Some(&f),
                    &[uc],
                )?
            }
            What::Arp(_) => open_lazily(&mut m.arp, member, ifindex, ETH_P_ARP, None, &[uc])?,
            What::Ns(_) | What::Echo(IpAddr::V6(_), ..) => {
                let f = dst_mac_or_solicited_filter(src, spec.probe6);
                let mut acc = vec![uc];
                if let Some(p) = spec.probe6 {
                    acc.push((libc::PACKET_MR_MULTICAST as u16, solicited_mac(&p)));
                }
                open_lazily(&mut m.ip6, member, ifindex, ETH_P_IPV6, Some(&f), &acc)?
            }
            What::Echo(IpAddr::V4(_), ..) => {
                // Replies come to the probe MAC; the gateway's ARP requests
                // for the probe address arrive on the ARP socket.
                open_lazily(&mut m.arp, member, ifindex, ETH_P_ARP, None, &[uc])?;
                let f = dst_mac_filter(src);
                open_lazily(&mut m.ip4, member, ifindex, ETH_P_IP, Some(&f), &[uc])?
            }
        };
        let sent = Instant::now();
        let sent_rt = realtime_ns();
        if frame[0..6] == UNRESOLVED {
            // The gateway's MAC on this member is not known yet (at start,
            // or after it stopped answering): ask for it now and send the
            // echo when the answer comes (`poll`), within the probe's timeout.
            let ask = match gateway {
                Some(IpAddr::V4(g)) => {
                    let afd = open_lazily(&mut m.arp, member, ifindex, ETH_P_ARP, None, &[uc])?;
                    (afd, arp_probe_frame(src, [0xff; 6], g).to_vec())
                }
                Some(IpAddr::V6(g)) => (
                    fd,
                    ns_frame(
                        src,
                        solicited_mac(&g),
                        link_local(src),
                        solicited_node(&g),
                        g,
                    ),
                ),
                None => return Err("transit probe: no gateway".into()),
            };
            // SAFETY: valid fd and a live buffer of the stated length.
            unsafe {
                libc::send(
                    ask.0,
                    ask.1.as_ptr().cast(),
                    ask.1.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            m.parked.push((
                Pending {
                    id: req.id,
                    what,
                    sent,
                    sent_rt,
                    timeout: req.timeout,
                },
                frame,
                gateway.expect("checked above"),
                fd,
            ));
            return Ok(());
        }
        // SAFETY: valid fd and a live buffer of the stated length.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(format!(
                "probe via {member}: send: {}",
                io::Error::last_os_error()
            ));
        }
        m.pending.push(Pending {
            id: req.id,
            what,
            sent,
            sent_rt,
            timeout: req.timeout,
        });
        Ok(())
    }

    /// Probes sent (or parked, or failed) whose outcome `poll` has not
    /// returned yet.
    pub fn in_flight(&self) -> usize {
        let members: usize = self
            .members
            .values()
            .map(|m| m.pending.len() + m.parked.len())
            .sum();
        members + self.ready.len()
    }

    /// Read what arrived, answer ARP/NS for the probe addresses, report the
    /// replies, then expire the probes past their deadline.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(ProbeId, ProbeOutcome)>) {
        out.append(&mut self.ready);
        let mut buf = [0u8; 1600];
        let token = self.token;
        let ident = self.ident;
        for (name, m) in self.members.iter_mut() {
            // With nothing in flight the ARP and IPv6 sockets are read all
            // the same: the gateway's ARP requests / NS for the probe
            // address are answered on the loop's next turn (the member's
            // echo stream comes back through that entry, and sends no
            // probe through here that would have them read).
            if m.pending.is_empty() && m.parked.is_empty() && m.arp.is_none() && m.ip6.is_none() {
                continue;
            }
            let spec = m.spec.clone();
            let probe4 = spec.as_ref().and_then(|s| s.probe4);
            let probe6 = spec.as_ref().and_then(|s| s.probe6);
            let mut failed = None;
            for which in 0..5 {
                let fd = match which {
                    0 => m.arp.as_ref(),
                    1 => m.ip4.as_ref(),
                    2 => m.ip6.as_ref(),
                    3 => m.fwd[0].as_ref(),
                    _ => m.fwd[1].as_ref(),
                }
                .map(|f| f.as_raw_fd());
                let Some(fd) = fd else { continue };
                for _ in 0..MAX_RECV_PER_POLL {
                    let (len, rx) = match recv(fd, &mut buf) {
                        Ok(Some(x)) => x,
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(format!("probe socket on {name}: recv: {e}"));
                            break;
                        }
                    };
                    let frame = &buf[..len.min(buf.len())];
                    let hit = match which {
                        0 => on_arp(m, fd, frame, probe4),
                        1 => on_ip4(frame, m.src, probe4, ident, &token),
                        2 => on_ip6(m, fd, frame, probe6, ident, &token),
                        3 => on_fwd(m, name, frame, Family::V4, probe4.map(IpAddr::V4), &token),
                        _ => on_fwd(m, name, frame, Family::V6, probe6.map(IpAddr::V6), &token),
                    };
                    let Some(hit) = hit else { continue };
                    let Some(i) = m.pending.iter().position(|p| matches_pending(p, &hit)) else {
                        continue;
                    };
                    if let (What::Echo(target, _, sent), Hit::Echo { ttl, .. }) =
                        (m.pending[i].what, &hit)
                    {
                        if reflected(&mut m.paths, name, target, sent, *ttl) {
                            continue; // the probe stays in flight
                        }
                    }
                    let p = m.pending.remove(i);
                    out.push((p.id, reply_outcome(p.sent, p.sent_rt, p.timeout, rx, now)));
                }
            }
            if let Some(e) = failed {
                m.close();
                for p in m.pending.drain(..) {
                    out.push((p.id, ProbeOutcome::Error(e.clone())));
                }
                continue;
            }
            // Parked echoes whose gateway MAC is now known leave; those
            // past their deadline time out.
            let mut i = 0;
            while i < m.parked.len() {
                let gw = m.parked[i].2;
                let mac = match gw {
                    IpAddr::V4(g) => m.gw4.get(&g).copied(),
                    IpAddr::V6(g) => m.gw6.get(&g).copied(),
                };
                if let Some(mac) = mac {
                    let (p, mut frame, _, fd) = m.parked.remove(i);
                    frame[0..6].copy_from_slice(&mac);
                    // SAFETY: valid fd and a live buffer of the stated length.
                    let n = unsafe {
                        libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT)
                    };
                    if n < 0 {
                        out.push((
                            p.id,
                            ProbeOutcome::Error(format!(
                                "probe via {name}: send: {}",
                                io::Error::last_os_error()
                            )),
                        ));
                    } else {
                        m.pending.push(p);
                    }
                } else if m.parked[i].0.sent + m.parked[i].0.timeout <= now {
                    let (p, ..) = m.parked.remove(i);
                    out.push((p.id, ProbeOutcome::Timeout));
                } else {
                    i += 1;
                }
            }
            // Every queued frame was read: what is still pending past its
            // deadline got no reply in time.
            let mut i = 0;
            while i < m.pending.len() {
                let p = &m.pending[i];
                if p.sent + p.timeout <= now {
                    let p = m.pending.remove(i);
                    // A unicast that found nothing: ask everybody next time
                    // (the gateway's MAC may have changed).
                    match p.what {
                        What::Arp(g) => {
                            m.gw4.remove(&g);
                        }
                        What::Ns(g) => {
                            m.gw6.remove(&g);
                        }
                        What::Echo(..) | What::Fwd { .. } => {}
                    }
                    out.push((p.id, ProbeOutcome::Timeout));
                } else {
                    i += 1;
                }
            }
        }
    }
}

/// What a received frame answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hit {
    Arp(Ipv4Addr),
    Na(Ipv6Addr),
    Echo {
        from: IpAddr,
        seq: u16,
        id: ProbeId,
        /// Arrival TTL / hop limit.
        ttl: u8,
    },
    /// A forwarding-plane echo with our token, forwarded exactly once.
    Fwd {
        id: ProbeId,
        uplink: usize,
        family: usize,
        seq: u32,
    },
}

fn matches_pending(p: &Pending, h: &Hit) -> bool {
    match (p.what, h) {
        (What::Arp(g), Hit::Arp(x)) => g == *x,
        (What::Ns(g), Hit::Na(x)) => g == *x,
        (What::Echo(t, s, _), Hit::Echo { from, seq, id, .. }) => {
            t == *from && s == *seq && p.id == *id
        }
        (
            What::Fwd {
                uplink,
                family,
                seq,
            },
            Hit::Fwd {
                id,
                uplink: u,
                family: f,
                seq: s,
            },
        ) => p.id == *id && uplink == *u && family.index() == *f && seq == *s,
        _ => false,
    }
}

fn on_arp(m: &mut Member, fd: RawFd, f: &[u8], probe4: Option<Ipv4Addr>) -> Option<Hit> {
    let a = parse_arp(f)?;
    match a.op {
        ARP_REQUEST => {
            // The gateway resolving our probe address: answer with the probe
            // MAC (the member's permanent MAC, never the bond's).
            if Some(a.tip) == probe4 && a.sip != Ipv4Addr::UNSPECIFIED {
                let r = arp_reply_frame(m.src, a.sha, a.tip, a.sip);
                // SAFETY: valid fd, live buffer.
                unsafe { libc::send(fd, r.as_ptr().cast(), r.len(), libc::MSG_DONTWAIT) };
            }
            None
        }
        // A valid reply to our probe: target hardware address = our MAC.
        ARP_REPLY if a.tha == m.src => {
            m.gw4.insert(a.sip, a.sha);
            Some(Hit::Arp(a.sip))
        }
        _ => None,
    }
}

/// A forwarding-plane echo back on the member (the socket's kernel filter
/// passes only UDP to the probe address and port 3785, and ICMP redirects
/// to it): ours (token) and forwarded exactly once (arrival TTL / hop
/// limit 254; a forger on the link, or our own frame reflected, carries
/// something else). Redirects are counted.
fn on_fwd(
    m: &mut Member,
    member: &str,
    f: &[u8],
    family: Family,
    addr: Option<IpAddr>,
    token: &[u8; 8],
) -> Option<Hit> {
    match echo::parse_echo(f, family, addr?)? {
        Parsed::Redirect => {
            m.redirects[family.index()] += 1;
            if !m.warned_redirect {
                m.warned_redirect = true;
                warn!(member, family = %family,
                    "the gateway answers forwarding-plane echoes with ICMP redirects: turn redirects off on the router's interface toward this server (Linux: net.ipv4.conf.<if>.send_redirects=0; IPv6 routers: no ipv6 redirects), or set gateway_probe = \"icmp\"");
            }
            None
        }
        Parsed::Echo { ttl, payload } => {
            let (id, uplink, fam, seq) = echo::decode_echo(token, payload)?;
            if ttl != ARRIVAL_TTL {
                if !m.warned_ttl {
                    m.warned_ttl = true;
                    info!(member, family = %family, ttl,
                        "forwarding-plane echo rejected: arrival TTL is not 254 (not forwarded exactly once)");
                }
                return None;
            }
            Some(Hit::Fwd {
                id,
                uplink,
                family: fam,
                seq,
            })
        }
    }
}

fn on_ip4(
    f: &[u8],
    ours: [u8; 6],
    probe4: Option<Ipv4Addr>,
    ident: u16,
    token: &[u8; 8],
) -> Option<Hit> {
    let probe4 = probe4?;
    let eth = parse_ethernet(f)?;
    if eth.dst != ours || eth.ethertype != ETH_P_IP {
        return None;
    }
    let ip = parse_ipv4(eth.payload)?;
    if ip.protocol != IPPROTO_ICMP || ip.dst != probe4 {
        return None;
    }
    echo_hit(
        Family::V4,
        IpAddr::V4(ip.src),
        ip.ttl,
        ip.payload,
        ident,
        token,
    )
}

fn echo_hit(
    family: Family,
    from: IpAddr,
    ttl: u8,
    icmp: &[u8],
    ident: u16,
    token: &[u8; 8],
) -> Option<Hit> {
    let echo = parse_echo_reply(family, icmp)?;
    if echo.ident != ident {
        return None;
    }
    let id = decode_payload(token, echo.payload)?;
    Some(Hit::Echo {
        from,
        seq: echo.seq,
        id,
        ttl,
    })
}

/// Whether the echo reply from `target` to a probe sent with TTL `sent`,
/// arrived with `arrival`, is the request reflected (logged; see
/// [`super::reflect`]).
fn reflected(paths: &mut Paths, member: &str, target: IpAddr, sent: u8, arrival: u8) -> bool {
    match paths.judge(target, sent, Some(arrival)) {
        Verdict::Reflected { first: true, other } => {
            warn!(member, %target, sent, arrival, other,
                "echo replies rejected: their TTL follows the TTL we send, so something on the path reflects our requests");
            true
        }
        Verdict::Reflected {
            first: false,
            other,
        } => {
            debug!(member, %target, sent, arrival, other, "reflected echo reply rejected");
            true
        }
        Verdict::Accept { recovered } => {
            if recovered {
                info!(member, %target, arrival, "echo replies no longer reflected");
            }
            false
        }
    }
}

fn on_ip6(
    m: &mut Member,
    fd: RawFd,
    f: &[u8],
    probe6: Option<Ipv6Addr>,
    ident: u16,
    token: &[u8; 8],
) -> Option<Hit> {
    let eth = parse_ethernet(f)?;
    if eth.ethertype != ETH_P_IPV6 {
        return None;
    }
    let ip = parse_icmpv6(eth.payload)?;
    let icmp = ip.payload;
    match icmp[0] {
        ND_NEIGHBOR_ADVERT if ip.hop_limit == 255 && ip.dst == link_local(m.src) => {
            let na = parse_nd(icmp)?;
            // The gateway's MAC: its target link-layer option, else the
            // frame's source.
            m.gw6.insert(na.target, na.link_addr.unwrap_or(eth.src));
            Some(Hit::Na(na.target))
        }
        ND_NEIGHBOR_SOLICIT if ip.hop_limit == 255 => {
            let ns = parse_nd(icmp)?;
            if Some(ns.target) == probe6 && !ip.src.is_unspecified() {
                let to = ns.link_addr.unwrap_or(eth.src);
                let r = na_frame(m.src, to, ns.target, ip.src);
                // SAFETY: valid fd, live buffer.
                unsafe { libc::send(fd, r.as_ptr().cast(), r.len(), libc::MSG_DONTWAIT) };
            }
            None
        }
        ICMPV6_ECHO_REPLY if Some(ip.dst) == probe6 => echo_hit(
            Family::V6,
            IpAddr::V6(ip.src),
            ip.hop_limit,
            icmp,
            ident,
            token,
        ),
        _ => None,
    }
}

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

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

fn open_lazily(
    slot: &mut Option<OwnedFd>,
    member: &str,
    ifindex: u32,
    proto: u16,
    filter: Option<&[libc::sock_filter]>,
    accept: &[(u16, [u8; 6])],
) -> Result<RawFd, String> {
    if slot.is_none() {
        *slot = Some(open_packet(member, ifindex, proto, filter, accept)?);
    }
    Ok(slot.as_ref().expect("just set").as_raw_fd())
}

/// `accept`: (PACKET_MR_UNICAST or PACKET_MR_MULTICAST, address) the member
/// must receive although they are not its own (the probe MAC: bonding gives
/// every member the bond's MAC; the solicited-node group of a probe address).
pub(super) fn open_packet(
    member: &str,
    ifindex: u32,
    proto: u16,
    filter: Option<&[libc::sock_filter]>,
    accept: &[(u16, [u8; 6])],
) -> Result<OwnedFd, String> {
    let err = |what: &str| {
        format!(
            "packet socket (0x{proto:04x}) on {member}: {what}: {}",
            io::Error::last_os_error()
        )
    };
    // Protocol 0 until bound: nothing is queued before the filter is on.
    let fd = packet_socket()
        .map_err(|e| format!("packet socket (0x{proto:04x}) on {member}: socket: {e}"))?;
    let raw = fd.as_raw_fd();
    if let Some(f) = filter {
        if attach_filter(raw, f).is_err() {
            return Err(err("SO_ATTACH_FILTER"));
        }
    }
    let one: libc::c_int = 1;
    // SAFETY: valid fd and a live c_int.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: valid fd and sockaddr_ll of the stated size.
    let rc = unsafe {
        libc::bind(
            raw,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(err("bind"));
    }
    for (ty, mac) in accept {
        // SAFETY: an all-zero packet_mreq is valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = ifindex as i32;
        mreq.mr_type = *ty;
        mreq.mr_alen = 6;
        mreq.mr_address[..6].copy_from_slice(mac);
        // SAFETY: valid fd and a live packet_mreq.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                size_of::<libc::packet_mreq>() as u32,
            )
        };
        if rc < 0 {
            return Err(err("PACKET_ADD_MEMBERSHIP"));
        }
    }
    Ok(fd)
}

/// A raw packet socket of protocol 0, non-blocking: it queues nothing
/// until bound to a protocol, and sends frames that name their interface
/// and protocol.
pub(super) fn packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One non-blocking `recvmsg`: the frame's length and kernel receive time.
pub(super) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Option<i64>)>> {
    let mut addr = MaybeUninit::<libc::sockaddr_ll>::zeroed();
    let Some(r) = recv_timestamped(fd, buf, &mut addr)? else {
        return Ok(None);
    };
    // SAFETY: the kernel wrote a sockaddr_ll (or left the zeroed one).
    let pkttype = unsafe { addr.assume_init_ref() }.sll_pkttype;
    if pkttype == libc::PACKET_OUTGOING {
        return Ok(Some((0, None)));
    }
    Ok(Some((r.len, r.rx)))
}

#[cfg(test)]
mod tests {
    use super::super::packet::{checksum, ICMP_ECHO_REPLY};
    use super::*;

    #[test]
    fn echo4_checksums_verify_and_reply_is_matched() {
        let src = [0x02, 1, 2, 3, 4, 5];
        let token = [7u8; 8];
        let payload = encode_payload(&token, ProbeId(42));
        let from: Ipv4Addr = "198.18.1.10".parse().unwrap();
        let to: Ipv4Addr = "198.19.0.1".parse().unwrap();
        let f = echo4_frame(src, [9; 6], from, to, 77, 5, 64, &payload);
        assert_eq!(checksum(&f[14..34]), 0, "IP header checksum");
        assert_eq!(checksum(&f[34..]), 0, "ICMP checksum");
        // Turn it into the reply the target sends.
        let mut r = f.clone();
        r[0..6].copy_from_slice(&src);
        r[14 + 12..14 + 16].copy_from_slice(&to.octets());
        r[14 + 16..14 + 20].copy_from_slice(&from.octets());
        r[34] = ICMP_ECHO_REPLY;
        assert_eq!(
            on_ip4(&r, src, Some(from), 77, &token),
            Some(Hit::Echo {
                from: IpAddr::V4(to),
                seq: 5,
                id: ProbeId(42),
                ttl: 64,
            })
        );
        assert_eq!(on_ip4(&r, src, Some(from), 78, &token), None, "other ident");
        assert_eq!(
            on_ip4(&r, src, Some(from), 77, &[0; 8]),
            None,
            "other token"
        );
    }

    #[test]
    fn advertisement_from_the_gateway_teaches_its_mac() {
        let src = [0x02, 1, 2, 3, 4, 5];
        let gmac = [0x0a, 9, 9, 9, 9, 9];
        let gw: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let mut m = Member {
            src,
            ..Default::default()
        };
        // Solicited advertisement from the gateway to the probe link-local.
        let na = na_frame(gmac, src, gw, link_local(src));
        assert_eq!(
            on_ip6(&mut m, -1, &na, None, 77, &[0; 8]),
            Some(Hit::Na(gw))
        );
        assert_eq!(m.gw6.get(&gw), Some(&gmac));
        // The same advertisement to another address is not an answer to us.
        let mut other = Member {
            src: [0x02, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        assert_eq!(on_ip6(&mut other, -1, &na, None, 77, &[0; 8]), None);
        assert!(other.gw6.is_empty());
    }

    #[test]
    fn forwarding_plane_echo_is_ours_and_forwarded_once() {
        let src = [0x02, 1, 2, 3, 4, 5];
        let token = [7u8; 8];
        for addr in ["198.18.1.10", "2001:db8:1::10"] {
            let addr: IpAddr = addr.parse().unwrap();
            let family = if addr.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            };
            let ttl_at = 14 + if addr.is_ipv4() { 8 } else { 7 };
            let payload = echo::echo_payload(&token, ProbeId(42), 1, family, 9);
            let sent = echo::echo_frame(src, [9; 6], addr, &payload);
            let mut m = Member {
                src,
                ..Default::default()
            };
            // As sent (TTL 255): our own frame reflected, or a forger.
            assert_eq!(
                on_fwd(&mut m, "eth1", &sent, family, Some(addr), &token),
                None,
                "{addr}: TTL 255"
            );
            let mut back = sent.clone();
            back[ttl_at] = ARRIVAL_TTL;
            if addr.is_ipv4() {
                // The IPv4 header checksum is not checked; keep it right anyway.
                back[24..26].copy_from_slice(&[0, 0]);
                let c = checksum(&back[14..34]);
                back[24..26].copy_from_slice(&c.to_be_bytes());
            }
            assert_eq!(
                on_fwd(&mut m, "eth1", &back, family, Some(addr), &token),
                Some(Hit::Fwd {
                    id: ProbeId(42),
                    uplink: 1,
                    family: family.index(),
                    seq: 9
                }),
                "{addr}: forwarded once"
            );
            assert_eq!(
                on_fwd(&mut m, "eth1", &back, family, Some(addr), &[0; 8]),
                None,
                "{addr}: another token"
            );
            let pending = Pending {
                id: ProbeId(42),
                what: What::Fwd {
                    uplink: 1,
                    family,
                    seq: 9,
                },
                sent: Instant::now(),
                sent_rt: None,
                timeout: Duration::from_millis(10),
            };
            let hit = |uplink, seq| Hit::Fwd {
                id: ProbeId(42),
                uplink,
                family: family.index(),
                seq,
            };
            assert!(matches_pending(&pending, &hit(1, 9)));
            assert!(!matches_pending(&pending, &hit(0, 9)), "other uplink");
            assert!(!matches_pending(&pending, &hit(1, 8)), "other sequence");
        }
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
