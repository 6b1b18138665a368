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
//!   echo replies to transit probes.
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

use super::{attach_filter, bpf, kernel_rtt, realtime_ns, recv_timestamped};
use crate::netlink::BondSample;

// include/uapi/linux/if_ether.h
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
/// Ethernet header + ARP for IPv4 over Ethernet (RFC 826).
pub const ARP_LEN: usize = 14 + 28;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const ICMP6_ECHO: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
const ND_NS: u8 = 135;
const ND_NA: u8 = 136;
/// Placeholder destination of an echo whose gateway MAC is not known yet.
const UNRESOLVED: [u8; 6] = [0; 6];
/// Echo payload: the per-process token and the probe id.
const PAYLOAD: usize = 16;

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
    /// Echo to this target with this sequence number.
    Echo(IpAddr, u16),
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
    pending: Vec<Pending>,
    /// Transit echoes waiting for the gateway's MAC: (probe, frame with the
    /// destination MAC left to fill, gateway, socket).
    parked: Vec<(Pending, Vec<u8>, IpAddr, RawFd)>,
    /// Gateway MACs as last seen in a reply on this member.
    gw4: HashMap<Ipv4Addr, [u8; 6]>,
    gw6: HashMap<Ipv6Addr, [u8; 6]>,
    seq: u16,
}

impl Member {
    fn close(&mut self) {
        // Parked echoes hold a socket about to close: they get no reply.
        let parked: Vec<Pending> = self.parked.drain(..).map(|(p, ..)| p).collect();
        self.pending.extend(parked);
        self.arp = None;
        self.ip4 = None;
        self.ip6 = None;
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

    /// The source MAC used on `member`, once known.
    pub fn source_mac(&self, member: &str) -> Option<[u8; 6]> {
        self.macs.get(member).map(|(p, b)| probe_mac(*p, *b))
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
                let mut payload = [0u8; PAYLOAD];
                payload[..8].copy_from_slice(&self.token);
                payload[8..].copy_from_slice(&req.id.0.to_be_bytes());
                match (target, gw) {
                    (IpAddr::V4(t), IpAddr::V4(g)) => {
                        let from = spec.probe4.ok_or_else(|| {
                            format!("transit probe via {member}: no probe_address4 configured")
                        })?;
                        let dst = m.gw4.get(&g).copied().unwrap_or(UNRESOLVED);
                        (
                            What::Echo(target, seq),
                            echo4_frame(src, dst, from, t, self.ident, seq, &payload),
                        )
                    }
                    (IpAddr::V6(t), IpAddr::V6(g)) => {
                        let from = spec.probe6.ok_or_else(|| {
                            format!("transit probe via {member}: no probe_address6 configured")
                        })?;
                        let dst = m.gw6.get(&g).copied().unwrap_or(UNRESOLVED);
                        (
                            What::Echo(target, seq),
                            echo6_frame(src, dst, from, t, self.ident, seq, &payload),
                        )
                    }
                    _ => return Err("transit probe: family mismatch".into()),
                }
            }
        };
        let uc = (libc::PACKET_MR_UNICAST as u16, src);
        let fd = match what {
            What::Arp(_) => open_lazily(&mut m.arp, member, ifindex, ETH_P_ARP, None, &[uc])?,
            What::Ns(_) | What::Echo(IpAddr::V6(_), _) => {
                let f = filter6(src, spec.probe6);
                let mut acc = vec![uc];
                if let Some(p) = spec.probe6 {
                    acc.push((libc::PACKET_MR_MULTICAST as u16, solicited_mac(&p)));
                }
                open_lazily(&mut m.ip6, member, ifindex, ETH_P_IPV6, Some(&f), &acc)?
            }
            What::Echo(IpAddr::V4(_), _) => {
                // Replies come to the probe MAC; the gateway's ARP requests
                // for the probe address arrive on the ARP socket.
                open_lazily(&mut m.arp, member, ifindex, ETH_P_ARP, None, &[uc])?;
                let f = filter_mac(src);
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
            if m.pending.is_empty() && m.parked.is_empty() {
                continue;
            }
            let spec = m.spec.clone();
            let probe4 = spec.as_ref().and_then(|s| s.probe4);
            let probe6 = spec.as_ref().and_then(|s| s.probe6);
            let mut failed = None;
            for which in 0..3 {
                let fd = match which {
                    0 => m.arp.as_ref(),
                    1 => m.ip4.as_ref(),
                    _ => m.ip6.as_ref(),
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
                        _ => on_ip6(m, fd, frame, probe6, ident, &token),
                    };
                    let Some(hit) = hit else { continue };
                    let Some(i) = m.pending.iter().position(|p| matches_pending(p, &hit)) else {
                        continue;
                    };
                    let p = m.pending.remove(i);
                    let rtt = kernel_rtt(p.sent, p.sent_rt, rx, now)
                        .unwrap_or_else(|| now.saturating_duration_since(p.sent));
                    out.push((
                        p.id,
                        if rtt <= p.timeout {
                            ProbeOutcome::Reply { rtt }
                        } else {
                            ProbeOutcome::Timeout
                        },
                    ));
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
                        What::Echo(..) => {}
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
    Echo { from: IpAddr, seq: u16, id: u64 },
}

fn matches_pending(p: &Pending, h: &Hit) -> bool {
    match (p.what, h) {
        (What::Arp(g), Hit::Arp(x)) => g == *x,
        (What::Ns(g), Hit::Na(x)) => g == *x,
        (What::Echo(t, s), Hit::Echo { from, seq, id }) => t == *from && s == *seq && p.id.0 == *id,
        _ => false,
    }
}

fn on_arp(m: &mut Member, fd: RawFd, f: &[u8], probe4: Option<Ipv4Addr>) -> Option<Hit> {
    if f.len() < ARP_LEN || f[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let a = &f[14..];
    if a[0..2] != ARPHRD_ETHER.to_be_bytes() || a[2..4] != 0x0800u16.to_be_bytes() {
        return None;
    }
    let op = u16::from_be_bytes([a[6], a[7]]);
    let sha: [u8; 6] = a[8..14].try_into().ok()?;
    let sip = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
    let tip = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
    if op == ARPOP_REQUEST {
        // The gateway resolving our probe address: answer with the probe
        // MAC (the member's permanent MAC, never the bond's).
        if Some(tip) == probe4 && sip != Ipv4Addr::UNSPECIFIED {
            let r = arp_reply_frame(m.src, sha, tip, sip);
            // SAFETY: valid fd, live buffer.
            unsafe { libc::send(fd, r.as_ptr().cast(), r.len(), libc::MSG_DONTWAIT) };
        }
        return None;
    }
    let target = parse_arp_reply_any(f, m.src)?;
    let _ = sip;
    m.gw4.insert(target.0, target.1);
    Some(Hit::Arp(target.0))
}

fn on_ip4(
    f: &[u8],
    ours: [u8; 6],
    probe4: Option<Ipv4Addr>,
    ident: u16,
    token: &[u8; 8],
) -> Option<Hit> {
    let probe4 = probe4?;
    if f.len() < 14 + 20 + 8 + PAYLOAD || f[0..6] != ours || f[12..14] != ETH_P_IP.to_be_bytes() {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 1 || ip.len() < ihl + 8 + PAYLOAD {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let icmp = &ip[ihl..];
    if dst != probe4 || icmp[0] != ICMP_ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    echo_hit(IpAddr::V4(src), icmp, ident, token)
}

fn echo_hit(from: IpAddr, icmp: &[u8], ident: u16, token: &[u8; 8]) -> Option<Hit> {
    if u16::from_be_bytes([icmp[4], icmp[5]]) != ident || icmp.len() < 8 + PAYLOAD {
        return None;
    }
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    let p = &icmp[8..8 + PAYLOAD];
    if p[..8] != token[..] {
        return None;
    }
    let id = u64::from_be_bytes(p[8..16].try_into().ok()?);
    Some(Hit::Echo { from, seq, id })
}

fn on_ip6(
    m: &mut Member,
    fd: RawFd,
    f: &[u8],
    probe6: Option<Ipv6Addr>,
    ident: u16,
    token: &[u8; 8],
) -> Option<Hit> {
    if f.len() < 14 + 40 + 8 || f[12..14] != ETH_P_IPV6.to_be_bytes() {
        return None;
    }
    let ip = &f[14..];
    // Only ICMPv6 directly after the fixed header (ND and echo never carry
    // extension headers from a sane router).
    if ip[0] >> 4 != 6 || ip[6] != 58 {
        return None;
    }
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip.len() < 40 + plen || plen < 8 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
    let icmp = &ip[40..40 + plen];
    if icmp6_checksum(&src, &dst, icmp) != 0 {
        return None;
    }
    let eth_src: [u8; 6] = f[6..12].try_into().ok()?;
    match icmp[0] {
        ND_NA if ip[7] == 255 && icmp.len() >= 24 && dst == link_local(m.src) => {
            let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
            // The gateway's MAC: its target link-layer option, else the
            // frame's source.
            let mac = nd_option(&icmp[24..], 2).unwrap_or(eth_src);
            m.gw6.insert(target, mac);
            Some(Hit::Na(target))
        }
        ND_NS if ip[7] == 255 && icmp.len() >= 24 => {
            let target = Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?);
            if Some(target) == probe6 && !src.is_unspecified() {
                let to = nd_option(&icmp[24..], 1).unwrap_or(eth_src);
                let r = na_frame(m.src, to, target, src);
                // SAFETY: valid fd, live buffer.
                unsafe { libc::send(fd, r.as_ptr().cast(), r.len(), libc::MSG_DONTWAIT) };
            }
            None
        }
        ICMP6_ECHO_REPLY if Some(dst) == probe6 && icmp[1] == 0 => {
            echo_hit(IpAddr::V6(src), icmp, ident, token)
        }
        _ => None,
    }
}

/// The link-layer address in the first ND option of `kind` (1 source, 2 target).
fn nd_option(mut opts: &[u8], kind: u8) -> Option<[u8; 6]> {
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == kind && len >= 8 {
            return opts[2..8].try_into().ok();
        }
        opts = &opts[len..];
    }
    None
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

fn eth(dst: [u8; 6], src: [u8; 6], ty: u16, f: &mut Vec<u8>) {
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ty.to_be_bytes());
}

/// RFC 5227 ARP probe: "who has `target`", sender IP 0.0.0.0.
pub fn arp_probe_frame(src: [u8; 6], dst: [u8; 6], target: Ipv4Addr) -> [u8; ARP_LEN] {
    arp_frame(
        ARPOP_REQUEST,
        src,
        dst,
        src,
        Ipv4Addr::UNSPECIFIED,
        [0; 6],
        target,
    )
}

fn arp_reply_frame(src: [u8; 6], to: [u8; 6], ours: Ipv4Addr, their: Ipv4Addr) -> [u8; ARP_LEN] {
    arp_frame(ARPOP_REPLY, src, to, src, ours, to, their)
}

fn arp_frame(
    op: u16,
    src: [u8; 6],
    dst: [u8; 6],
    sha: [u8; 6],
    sip: Ipv4Addr,
    tha: [u8; 6],
    tip: Ipv4Addr,
) -> [u8; ARP_LEN] {
    let mut f = [0u8; ARP_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&sip.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tip.octets());
    f
}

/// A valid reply to our probe: op reply, target hw = our MAC.
/// Returns the sender (gateway) IP and MAC.
fn parse_arp_reply_any(frame: &[u8], ours: [u8; 6]) -> Option<(Ipv4Addr, [u8; 6])> {
    if frame.len() < ARP_LEN || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let a = &frame[14..];
    if a[0..2] != ARPHRD_ETHER.to_be_bytes()
        || a[2..4] != 0x0800u16.to_be_bytes()
        || a[4] != 6
        || a[5] != 4
        || a[6..8] != ARPOP_REPLY.to_be_bytes()
        || a[18..24] != ours
    {
        return None;
    }
    Some((
        Ipv4Addr::new(a[14], a[15], a[16], a[17]),
        a[8..14].try_into().ok()?,
    ))
}

/// A valid reply to our probe for `target`; returns the gateway's MAC.
pub fn parse_arp_reply(frame: &[u8], ours: [u8; 6], target: Ipv4Addr) -> Option<[u8; 6]> {
    parse_arp_reply_any(frame, ours).and_then(|(ip, mac)| (ip == target).then_some(mac))
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut s = csum_add(0, &src.octets());
    s = csum_add(s, &dst.octets());
    s = csum_add(s, &(icmp.len() as u32).to_be_bytes());
    s = csum_add(s, &[0, 0, 0, 58]);
    csum_fold(csum_add(s, icmp))
}

fn echo4_frame(
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv4Addr,
    to: Ipv4Addr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![ICMP_ECHO, 0, 0, 0];
    icmp.extend_from_slice(&ident.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = csum_fold(csum_add(0, &icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&seq.to_be_bytes()); // id
    ip.extend_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip.extend_from_slice(&[64, 1, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let c = csum_fold(csum_add(0, &ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(14 + ip.len() + icmp.len());
    eth(dst, src, ETH_P_IP, &mut f);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

fn ip6_frame(
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv6Addr,
    to: Ipv6Addr,
    hops: u8,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let c = icmp6_checksum(&from, &to, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    eth(dst, src, ETH_P_IPV6, &mut f);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, hops]);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&to.octets());
    f.extend_from_slice(&icmp);
    f
}

fn echo6_frame(
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv6Addr,
    to: Ipv6Addr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![ICMP6_ECHO, 0, 0, 0];
    icmp.extend_from_slice(&ident.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    ip6_frame(src, dst, from, to, 64, icmp)
}

/// Neighbour solicitation for `target` from the probe MAC's own link-local
/// address (never the server's: the probe MAC is never the bond's), with
/// the probe MAC as source link-layer option, so the answer is unicast to
/// the probe MAC on this member's path.
fn ns_frame(src: [u8; 6], dst: [u8; 6], from: Ipv6Addr, to: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![ND_NS, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src);
    ip6_frame(src, dst, from, to, 255, icmp)
}

/// Solicited neighbour advertisement for our probe address.
fn na_frame(src: [u8; 6], to_mac: [u8; 6], ours: Ipv6Addr, to: Ipv6Addr) -> Vec<u8> {
    // Solicited + override.
    let mut icmp = vec![ND_NA, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&ours.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&src);
    ip6_frame(src, to_mac, ours, to, 255, icmp)
}

/// fe80::/64 with the modified EUI-64 of `mac`.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    Ipv6Addr::from(a)
}

fn solicited_node(a: &Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn solicited_mac(a: &Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, 0xff, o[13], o[14], o[15]]
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

/// cBPF: accept frames whose destination MAC is `mac`.
fn filter_mac(mac: [u8; 6]) -> Vec<libc::sock_filter> {
    let hi = u32::from(u16::from_be_bytes([mac[0], mac[1]]));
    let lo = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    vec![
        bpf(0x20, 0, 0, 2),  // ld [2]
        bpf(0x15, 0, 3, lo), // jeq lo ? next : reject
        bpf(0x28, 0, 0, 0),  // ldh [0]
        bpf(0x15, 0, 1, hi), // jeq hi ? accept : reject
        bpf(0x06, 0, 0, 0x0004_0000),
        bpf(0x06, 0, 0, 0),
    ]
}

/// cBPF: the probe MAC, or the solicited-node group of the probe address.
fn filter6(mac: [u8; 6], probe6: Option<Ipv6Addr>) -> Vec<libc::sock_filter> {
    let hi = u32::from(u16::from_be_bytes([mac[0], mac[1]]));
    let lo = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    let g = probe6
        .map(|a| solicited_mac(&a))
        .unwrap_or(solicited_mac(&Ipv6Addr::UNSPECIFIED));
    let glo = u32::from_be_bytes([g[2], g[3], g[4], g[5]]);
    vec![
        bpf(0x20, 0, 0, 2),           // 0: ld [2]
        bpf(0x15, 0, 2, lo),          // 1: jeq lo ? 2 : 4
        bpf(0x28, 0, 0, 0),           // 2: ldh [0]
        bpf(0x15, 3, 4, hi),          // 3: jeq hi ? 7 : 8
        bpf(0x15, 0, 3, glo),         // 4: jeq glo ? 5 : 8
        bpf(0x28, 0, 0, 0),           // 5: ldh [0]
        bpf(0x15, 0, 1, 0x3333),      // 6: jeq 3333 ? 7 : 8
        bpf(0x06, 0, 0, 0x0004_0000), // 7: accept
        bpf(0x06, 0, 0, 0),           // 8: reject
    ]
}

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
fn open_packet(
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
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(err("socket"));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
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

/// One non-blocking `recvmsg`: the frame's length and kernel receive time.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Option<i64>)>> {
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
    use super::*;

    #[test]
    fn probe_frame_is_rfc5227_and_reply_is_matched() {
        let src = [0x02, 1, 2, 3, 4, 5];
        let gw: Ipv4Addr = "198.18.1.1".parse().unwrap();
        let f = arp_probe_frame(src, [0xff; 6], gw);
        assert_eq!(&f[28..32], &[0, 0, 0, 0], "sender IP is zero");
        assert_eq!(&f[22..28], &src);
        let gmac = [0x0a, 9, 9, 9, 9, 9];
        let r = arp_frame(ARPOP_REPLY, gmac, src, gmac, gw, src, Ipv4Addr::UNSPECIFIED);
        assert_eq!(parse_arp_reply(&r, src, gw), Some(gmac));
        assert_eq!(parse_arp_reply(&r, [0x02, 0, 0, 0, 0, 0], gw), None);
        assert_eq!(
            parse_arp_reply(&r, src, "198.18.1.2".parse().unwrap()),
            None
        );
    }

    #[test]
    fn echo4_checksums_verify_and_reply_is_matched() {
        let src = [0x02, 1, 2, 3, 4, 5];
        let token = [7u8; 8];
        let mut payload = [0u8; PAYLOAD];
        payload[..8].copy_from_slice(&token);
        payload[8..].copy_from_slice(&42u64.to_be_bytes());
        let from: Ipv4Addr = "198.18.1.10".parse().unwrap();
        let to: Ipv4Addr = "198.19.0.1".parse().unwrap();
        let f = echo4_frame(src, [9; 6], from, to, 77, 5, &payload);
        assert_eq!(csum_fold(csum_add(0, &f[14..34])), 0, "IP header checksum");
        assert_eq!(csum_fold(csum_add(0, &f[34..])), 0, "ICMP checksum");
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
                id: 42
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
    fn ns_is_valid_icmpv6_from_the_probe_link_local() {
        let src = [0x02, 1, 2, 3, 4, 5];
        let gw: Ipv6Addr = "2001:db8:1::1".parse().unwrap();
        let ll = link_local(src);
        assert_eq!(ll, "fe80::1:2ff:fe03:405".parse::<Ipv6Addr>().unwrap());
        let f = ns_frame(src, solicited_mac(&gw), ll, solicited_node(&gw), gw);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[14 + 24..14 + 40]).unwrap());
        assert_eq!(dst, "ff02::1:ff00:1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(icmp6_checksum(&ll, &dst, &f[54..]), 0);
        assert_eq!(nd_option(&f[54 + 24..], 1), Some(src));
    }

    #[test]
    fn filters_have_consistent_jumps() {
        for prog in [filter_mac([1; 6]), filter6([1; 6], None)] {
            for (i, ins) in prog.iter().enumerate() {
                if ins.code == 0x15 {
                    assert!(i + 1 + (ins.jt as usize) < prog.len());
                    assert!(i + 1 + (ins.jf as usize) < prog.len());
                }
            }
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
