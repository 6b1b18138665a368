//! The forwarding-plane echo: a gateway probe that the router's forwarding
//! path answers, not its CPU (the echo function of BFD, RFC 5880 §6.4 and
//! RFC 5881 §4, with nothing configured on the router).
//!
//! Per (uplink, family) one packet socket bound to the uplink's interface
//! sends a UDP datagram to port [`ECHO_PORT`] whose source *and* destination
//! are the uplink's own address, in an Ethernet frame to the gateway's MAC
//! (from the kernel's neighbour table), with TTL / hop limit 255. The router
//! routes it like any packet to our address: straight back, one hop, so it
//! arrives with 254. The kernel would drop it on arrival (a local source
//! address is a martian unless `accept_local` is set), so the same packet
//! socket reads it, with a kernel filter (cBPF) that passes only UDP to our
//! address and the echo port (and ICMP redirects to our address, counted),
//! and `PACKET_IGNORE_OUTGOING` so our own transmissions are not queued.
//!
//! Validation: the payload is the per-process random token and the probe id
//! (as the ICMP prober's), followed by the probe's identity: uplink, family
//! and sequence number; the arrival TTL / hop limit must be exactly 254
//! (forwarded exactly once: a forger on the link, or our frame reflected by
//! a switch, carries something else), and the packet socket is bound to
//! the uplink, so it arrived on the interface it left. Outcomes, timeouts
//! and round-trip times (kernel receive timestamps) work as in the ICMP
//! prober ([`super::Prober`]): tick-driven, no reactor.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::member::open_packet;
use super::packet::{
    bpf, checksum, decode_payload, encode_payload, ETH_HEADER_LEN, ETH_P_IP, ETH_P_IPV6,
    PAYLOAD_LEN,
};
use super::{realtime_ns, recv_timestamped, reply_outcome, ProbeUplink};
use crate::config::Family;
use crate::core::{ProbeId, ProbeOutcome, ProbeRequest, UplinkId};

/// The BFD echo port (RFC 5881 §4: "BFD Echo packets MUST be transmitted
/// in UDP packets with destination UDP port 3785").
pub const ECHO_PORT: u16 = 3785;
/// Sent with the largest TTL / hop limit; forwarded once, it arrives with one less.
pub const SEND_TTL: u8 = 255;
pub const ARRIVAL_TTL: u8 = SEND_TTL - 1;
/// Payload: token ‖ probe id (16 bytes), then uplink (2), family (1), 0 (1), sequence (4).
pub(super) const ECHO_PAYLOAD_LEN: usize = PAYLOAD_LEN + 8;
const UDP_LEN: usize = 8 + ECHO_PAYLOAD_LEN;
/// ICMP redirect (RFC 792) and ICMPv6 redirect (RFC 4861 §4.5).
pub(super) const ICMP_REDIRECT: u8 = 5;
const ICMPV6_REDIRECT: u8 = 137;
/// After this many consecutive lost echoes the socket is reopened, which
/// looks up our address and the gateway's MAC again (a new router, a
/// renumbered uplink), at most once per [`REOPEN_EVERY`].
const REOPEN_AFTER_MISSES: u32 = 3;
const REOPEN_EVERY: Duration = Duration::from_millis(500);

/// Sends forwarding-plane echoes; see the module documentation.
pub struct EchoProber {
    uplinks: Vec<ProbeUplink>,
    slots: Vec<[Slot; 2]>,
    ready: Vec<(ProbeId, ProbeOutcome)>,
    token: [u8; 8],
}

#[derive(Default)]
struct Slot {
    sock: Option<Sock>,
    pending: Vec<Pending>,
    seq: u32,
    misses: u32,
    opened_at: Option<Instant>,
    /// ICMP redirects the router answered our echoes with.
    redirects: u64,
    warned_redirect: bool,
    warned_ttl: bool,
}

pub(super) struct Sock {
    pub(super) fd: OwnedFd,
    pub(super) ifindex: u32,
    pub(super) mac: [u8; 6],
    pub(super) gw_mac: [u8; 6],
    pub(super) addr: IpAddr,
    /// IPv6: a UDP socket on our address and the echo port that drops
    /// everything (see [`absorber`]).
    _absorb: Option<OwnedFd>,
}

struct Pending {
    id: ProbeId,
    seq: u32,
    sent: Instant,
    sent_rt: Option<i64>,
    timeout: Duration,
    deadline: Instant,
}

impl EchoProber {
    pub fn new(uplinks: Vec<ProbeUplink>) -> Self {
        let slots = uplinks.iter().map(|_| Default::default()).collect();
        EchoProber {
            uplinks,
            slots,
            ready: Vec::new(),
            token: *super::token(),
        }
    }

    /// Probes sent whose outcome `poll` has not returned yet.
    pub fn in_flight(&self) -> usize {
        self.ready.len()
            + self
                .slots
                .iter()
                .flatten()
                .map(|s| s.pending.len())
                .sum::<usize>()
    }

    /// The socket whose readiness tells whether the one echo in flight
    /// through (uplink, family) came back (see `Prober::watch_fd`): `Some`
    /// only when exactly one is in flight there and no error waits. The
    /// kernel filter queues only echoes to our address (and the rare
    /// redirect, which at worst delays noticing a loss by one round).
    pub fn watch_fd(&self, uplink: UplinkId, family: Family) -> Option<RawFd> {
        if !self.ready.is_empty() {
            return None;
        }
        let slot = &self.slots.get(uplink)?[family.index()];
        let sock = slot.sock.as_ref()?;
        (slot.pending.len() == 1).then(|| sock.fd.as_raw_fd())
    }

    /// Close the socket of (uplink, family): the echo stream took over
    /// (each packet socket on the interface gets a copy of every echo).
    /// Echoes still in flight through it time out (the core ignores them).
    pub fn close(&mut self, uplink: UplinkId, family: Family) {
        if let Some(s) = self.slots.get_mut(uplink) {
            s[family.index()].sock = None;
        }
    }

    /// Redirects counted per (uplink, family), for status and metrics.
    pub fn redirects(&self, uplink: UplinkId, family: Family) -> u64 {
        self.slots
            .get(uplink)
            .map_or(0, |s| s[family.index()].redirects)
    }

    /// When `poll` must run at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .flat_map(|s| s.pending.iter().map(|p| p.deadline))
            .min()
    }

    /// Send one echo through `req.uplink` (`req.target` is its gateway).
    /// `poll` reports exactly one outcome for it.
    pub fn send(&mut self, now: Instant, req: ProbeRequest) {
        let Some(up) = self.uplinks.get(req.uplink) else {
            self.ready.push((
                req.id,
                ProbeOutcome::Error(format!(
                    "forwarding-plane echo via uplink {}: no such uplink",
                    req.uplink
                )),
            ));
            return;
        };
        let slot = &mut self.slots[req.uplink][req.family.index()];
        // No socket yet (or the last open failed): try now, a neighbour
        // dump costs little. One that lost echoes: look our address and
        // the gateway's MAC up again, at most every REOPEN_EVERY.
        let stale = slot.sock.is_some()
            && slot.misses >= REOPEN_AFTER_MISSES
            && slot.opened_at.is_none_or(|t| now >= t + REOPEN_EVERY);
        if slot.sock.is_none() || stale {
            slot.opened_at = Some(now);
            slot.misses = 0;
            match Sock::open(&up.interface, req.family, req.target) {
                Ok(s) => {
                    debug!(interface = %up.interface, family = %req.family, addr = %s.addr,
                        gw_mac = ?s.gw_mac, "opened forwarding-plane echo socket");
                    slot.sock = Some(s);
                }
                Err(e) => {
                    slot.sock = None;
                    self.ready.push((
                        req.id,
                        ProbeOutcome::Error(format!(
                            "forwarding-plane echo via {} ({}) to gateway {}: {e}",
                            up.interface, req.family, req.target
                        )),
                    ));
                    return;
                }
            }
        }
        let Some(sock) = slot.sock.as_ref() else {
            self.ready
                .push((req.id, ProbeOutcome::Error("no echo socket".into())));
            return;
        };
        slot.seq = slot.seq.wrapping_add(1);
        let payload = echo_payload(&self.token, req.id, req.uplink, req.family, slot.seq);
        let frame = echo_frame(sock.mac, sock.gw_mac, sock.addr, &payload);
        let sent_rt = realtime_ns();
        match send_frame(&sock.fd, sock.ifindex, sock.gw_mac, req.family, &frame) {
            Ok(()) => slot.pending.push(Pending {
                id: req.id,
                seq: slot.seq,
                sent: now,
                sent_rt,
                timeout: req.timeout,
                deadline: now + req.timeout,
            }),
            Err(e) => {
                slot.misses = REOPEN_AFTER_MISSES;
                self.ready.push((
                    req.id,
                    ProbeOutcome::Error(format!(
                        "forwarding-plane echo via {} ({}): send: {e}",
                        up.interface, req.family
                    )),
                ));
            }
        }
    }

    /// Read the echoes queued, then expire the probes past their deadline.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(ProbeId, ProbeOutcome)>) {
        out.append(&mut self.ready);
        for (uplink, slots) in self.slots.iter_mut().enumerate() {
            for (fi, slot) in slots.iter_mut().enumerate() {
                let family = Family::ALL[fi];
                if slot.pending.is_empty() {
                    continue;
                }
                if let Some(sock) = slot.sock.as_ref() {
                    let mut buf = [0u8; 256];
                    for _ in 0..super::MAX_RECV_PER_POLL {
                        let mut sll = MaybeUninit::<libc::sockaddr_ll>::zeroed();
                        let r = match recv_timestamped(sock.fd.as_raw_fd(), &mut buf, &mut sll) {
                            Ok(Some(r)) => r,
                            Ok(None) => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(_) => break,
                        };
                        // SAFETY: the kernel wrote a sockaddr_ll (or left zeros).
                        if unsafe { sll.assume_init_ref() }.sll_pkttype == libc::PACKET_OUTGOING {
                            continue;
                        }
                        let frame = &buf[..r.len.min(buf.len())];
                        match parse_echo(frame, family, sock.addr) {
                            Some(Parsed::Redirect) => {
                                slot.redirects += 1;
                                if !slot.warned_redirect {
                                    slot.warned_redirect = true;
                                    warn!(uplink, family = %family,
                                        "the gateway answers forwarding-plane echoes with ICMP redirects: turn redirects off on the router's interface toward this server (Linux: net.ipv4.conf.<if>.send_redirects=0; IPv6 routers: no ipv6 redirects), or set gateway_probe = \"icmp\"; this host does not accept them");
                                }
                            }
                            Some(Parsed::Echo { ttl, payload }) => {
                                let Some((id, u, f, seq)) = decode_echo(&self.token, payload)
                                else {
                                    debug!(uplink, family = %family, "echo without our token ignored");
                                    continue;
                                };
                                if u != uplink || f != fi || ttl != ARRIVAL_TTL {
                                    if ttl != ARRIVAL_TTL && !slot.warned_ttl {
                                        slot.warned_ttl = true;
                                        info!(uplink, family = %family, ttl,
                                            "forwarding-plane echo rejected: arrival TTL is not 254 (not forwarded exactly once)");
                                    }
                                    continue;
                                }
                                let Some(i) =
                                    slot.pending.iter().position(|p| p.id == id && p.seq == seq)
                                else {
                                    continue;
                                };
                                let p = slot.pending.swap_remove(i);
                                slot.misses = 0;
                                out.push((
                                    p.id,
                                    reply_outcome(p.sent, p.sent_rt, p.timeout, r.rx, now),
                                ));
                            }
                            None => {}
                        }
                    }
                }
                let mut i = 0;
                while i < slot.pending.len() {
                    if slot.pending[i].deadline <= now {
                        let p = slot.pending.swap_remove(i);
                        slot.misses += 1;
                        out.push((p.id, ProbeOutcome::Timeout));
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }
}

impl Sock {
    pub(super) fn open(interface: &str, family: Family, gateway: IpAddr) -> Result<Sock, String> {
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .map_err(|e| format!("interface {interface}: {e}"))?;
        let addr = own_address(interface, family)
            .ok_or_else(|| format!("{interface} has no {family} address to echo to"))?;
        let mac = own_mac(interface)?;
        let gw_mac = neighbour_mac(ifindex, gateway)
            .map_err(|e| format!("gateway's MAC: {e}"))?
            .ok_or_else(|| {
                format!("gateway {gateway} not (yet) in the neighbour table of {interface}")
            })?;
        let mut sock = Sock::bound(interface, ifindex, family, mac, gw_mac, addr, &[])?;
        sock._absorb = absorber(addr);
        Ok(sock)
    }

    /// The socket of a bond member's echoes (see [`super::member`]): from
    /// its probe MAC and probe address (never configured on the host, so
    /// nothing is delivered locally and no absorber is needed) to the
    /// gateway's MAC as the member prober learned it on the member. The
    /// echoes come back to the probe MAC, which bonding did not give the
    /// member: received with PACKET_MR_UNICAST membership for it.
    pub(super) fn open_member(
        member: &str,
        family: Family,
        probe_mac: [u8; 6],
        addr: IpAddr,
        gw_mac: [u8; 6],
    ) -> Result<Sock, String> {
        let ifindex = nix::net::if_::if_nametoindex(member)
            .map_err(|e| format!("interface {member}: {e}"))?;
        let accept = [(libc::PACKET_MR_UNICAST as u16, probe_mac)];
        Sock::bound(member, ifindex, family, probe_mac, gw_mac, addr, &accept)
    }

    /// The packet socket bound to `interface` that reads the echoes to
    /// `addr` (kernel-filtered), `accept` as for [`open_packet`].
    fn bound(
        interface: &str,
        ifindex: u32,
        family: Family,
        mac: [u8; 6],
        gw_mac: [u8; 6],
        addr: IpAddr,
        accept: &[(u16, [u8; 6])],
    ) -> Result<Sock, String> {
        let proto = match family {
            Family::V4 => ETH_P_IP,
            Family::V6 => ETH_P_IPV6,
        };
        let filter = echo_filter(addr);
        let fd = open_packet(interface, ifindex, proto, Some(&filter), accept)?;
        // Our own transmissions are not queued (Linux 4.20); the receive
        // path also skips PACKET_OUTGOING for older kernels.
        let one: libc::c_int = 1;
        // SAFETY: valid fd and a live c_int.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                23, /* PACKET_IGNORE_OUTGOING */
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        Ok(Sock {
            fd,
            ifindex,
            mac,
            gw_mac,
            addr,
            _absorb: None,
        })
    }
}

/// IPv6 delivers a returning echo locally too (IPv4 drops it as a martian
/// source first): with no socket on the echo port, the kernel answers each
/// with an ICMPv6 port unreachable to itself, which costs a wake-up of the
/// unreachable listener (measured: ~280/s at 500 echoes/s) and of the loop.
/// A UDP socket bound to our address and the port, whose kernel filter
/// drops every datagram, takes them silently. None if the port is taken
/// (a BFD daemon's socket absorbs them just as well) or the address is not
/// usable yet.
fn absorber(addr: IpAddr) -> Option<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let IpAddr::V6(a) = addr else {
        return None;
    };
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).ok()?;
    s.set_only_v6(true).ok()?;
    super::packet::attach_filter(s.as_raw_fd(), &[bpf(0x06, 0, 0, 0)]).ok()?;
    s.bind(&std::net::SocketAddrV6::new(a, ECHO_PORT, 0, 0).into())
        .ok()?;
    Some(s.into())
}

/// Where a frame of `family` to `gw_mac` leaves on `ifindex`.
pub(super) fn frame_dest(ifindex: u32, gw_mac: [u8; 6], family: Family) -> libc::sockaddr_ll {
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = match family {
        Family::V4 => ETH_P_IP,
        Family::V6 => ETH_P_IPV6,
    }
    .to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&gw_mac);
    sll
}

pub(super) fn send_frame(
    fd: &OwnedFd,
    ifindex: u32,
    gw_mac: [u8; 6],
    family: Family,
    frame: &[u8],
) -> io::Result<()> {
    let sll = frame_dest(ifindex, gw_mac, family);
    // SAFETY: valid fd, buffer and sockaddr_ll of the stated size.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn echo_payload(
    token: &[u8; 8],
    id: ProbeId,
    uplink: UplinkId,
    family: Family,
    seq: u32,
) -> [u8; ECHO_PAYLOAD_LEN] {
    let mut p = [0u8; ECHO_PAYLOAD_LEN];
    p[..PAYLOAD_LEN].copy_from_slice(&encode_payload(token, id));
    p[PAYLOAD_LEN..PAYLOAD_LEN + 2].copy_from_slice(&(uplink as u16).to_be_bytes());
    p[PAYLOAD_LEN + 2] = family.index() as u8;
    p[PAYLOAD_LEN + 4..].copy_from_slice(&seq.to_be_bytes());
    p
}

/// (probe id, uplink, family index, sequence) of one of our payloads.
pub(super) fn decode_echo(token: &[u8; 8], p: &[u8]) -> Option<(ProbeId, usize, usize, u32)> {
    if p.len() != ECHO_PAYLOAD_LEN {
        return None;
    }
    let id = decode_payload(token, &p[..PAYLOAD_LEN])?;
    let uplink = usize::from(u16::from_be_bytes([p[PAYLOAD_LEN], p[PAYLOAD_LEN + 1]]));
    let fam = usize::from(p[PAYLOAD_LEN + 2]);
    let seq = u32::from_be_bytes(p[PAYLOAD_LEN + 4..].try_into().ok()?);
    Some((id, uplink, fam, seq))
}

/// The Ethernet frame of one echo: src = dst = `addr`, UDP to [`ECHO_PORT`].
pub fn echo_frame(mac: [u8; 6], gw_mac: [u8; 6], addr: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER_LEN + 40 + UDP_LEN);
    f.extend_from_slice(&gw_mac);
    f.extend_from_slice(&mac);
    let mut udp = [0u8; UDP_LEN];
    udp[0..2].copy_from_slice(&ECHO_PORT.to_be_bytes()); // source port: RFC 5881 leaves it to us
    udp[2..4].copy_from_slice(&ECHO_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(UDP_LEN as u16).to_be_bytes());
    udp[8..8 + payload.len()].copy_from_slice(payload);
    match addr {
        IpAddr::V4(a) => {
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + UDP_LEN) as u16).to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = SEND_TTL;
            ip[9] = 17;
            ip[12..16].copy_from_slice(&a.octets());
            ip[16..20].copy_from_slice(&a.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            // UDP checksum: pseudo-header + datagram (optional in IPv4; set anyway).
            let c = udp_checksum(&a.octets(), &a.octets(), &udp);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        IpAddr::V6(a) => {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(UDP_LEN as u16).to_be_bytes());
            ip[6] = 17;
            ip[7] = SEND_TTL;
            ip[8..24].copy_from_slice(&a.octets());
            ip[24..40].copy_from_slice(&a.octets());
            let c = udp_checksum(&a.octets(), &a.octets(), &udp);
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
    }
    f.extend_from_slice(&udp);
    f
}

/// UDP checksum over the pseudo-header (RFC 768; RFC 8200 §8.1) and `udp`.
fn udp_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut b = Vec::with_capacity(40 + udp.len());
    b.extend_from_slice(src);
    b.extend_from_slice(dst);
    if src.len() == 4 {
        b.extend_from_slice(&[0, 17]);
        b.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    } else {
        b.extend_from_slice(&(udp.len() as u32).to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 17]);
    }
    b.extend_from_slice(udp);
    match checksum(&b) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones
        c => c,
    }
}

pub(super) enum Parsed<'a> {
    Echo { ttl: u8, payload: &'a [u8] },
    Redirect,
}

/// An echo (UDP from and to `addr`, port [`ECHO_PORT`]) or a redirect to `addr`.
pub(super) fn parse_echo(frame: &[u8], family: Family, addr: IpAddr) -> Option<Parsed<'_>> {
    let ip = frame.get(ETH_HEADER_LEN..)?;
    let (src, dst, ttl, proto, l4): (IpAddr, IpAddr, u8, u8, &[u8]) = match family {
        Family::V4 => {
            if ip.len() < 20 || ip[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let s: [u8; 4] = ip[12..16].try_into().ok()?;
            let d: [u8; 4] = ip[16..20].try_into().ok()?;
            (
                Ipv4Addr::from(s).into(),
                Ipv4Addr::from(d).into(),
                ip[8],
                ip[9],
                ip.get(ihl..total)?,
            )
        }
        Family::V6 => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            (
                Ipv6Addr::from(s).into(),
                Ipv6Addr::from(d).into(),
                ip[7],
                ip[6],
                ip.get(40..40 + plen)?,
            )
        }
    };
    if dst != addr {
        return None;
    }
    match proto {
        1 if l4.first() == Some(&ICMP_REDIRECT) => Some(Parsed::Redirect),
        58 if l4.first() == Some(&ICMPV6_REDIRECT) => Some(Parsed::Redirect),
        17 if src == addr
            && l4.len() == UDP_LEN
            && u16::from_be_bytes([l4[2], l4[3]]) == ECHO_PORT =>
        {
            Some(Parsed::Echo {
                ttl,
                payload: &l4[8..],
            })
        }
        _ => None,
    }
}

/// cBPF: IPv4 or IPv6 to `addr` that is UDP to [`ECHO_PORT`] or an ICMP(v6)
/// redirect; everything else stays out of the socket.
pub(super) fn echo_filter(addr: IpAddr) -> Vec<libc::sock_filter> {
    const ACCEPT: u32 = 0x0004_0000;
    let port = u32::from(ECHO_PORT);
    match addr {
        IpAddr::V4(a) => {
            let a = u32::from(a);
            vec![
                bpf(0x20, 0, 0, 30),                       // 0: ld [30] (destination)
                bpf(0x15, 0, 12, a),                       // 1: jeq addr ? 2 : drop
                bpf(0x30, 0, 0, 23),                       // 2: ldb [23] (protocol)
                bpf(0x15, 0, 5, 17),                       // 3: jeq udp ? 4 : 9
                bpf(0x28, 0, 0, 20),                       // 4: ldh [20] (fragment)
                bpf(0x45, 8, 0, 0x1fff),                   // 5: jset offset ? drop : 6
                bpf(0xb1, 0, 0, 14),                       // 6: ldxb 4*([14]&0xf)
                bpf(0x48, 0, 0, 16),                       // 7: ldh [x+16] (dst port)
                bpf(0x15, 4, 5, port),                     // 8: jeq port ? accept : drop
                bpf(0x15, 0, 4, 1),                        // 9: jeq icmp ? 10 : drop
                bpf(0xb1, 0, 0, 14),                       // 10: ldxb 4*([14]&0xf)
                bpf(0x50, 0, 0, 14),                       // 11: ldb [x+14] (type)
                bpf(0x15, 0, 1, u32::from(ICMP_REDIRECT)), // 12: jeq 5 ? accept : drop
                bpf(0x06, 0, 0, ACCEPT),                   // 13
                bpf(0x06, 0, 0, 0),                        // 14
            ]
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            vec![
                bpf(0x20, 0, 0, 38),                         // 0: ld [38]
                bpf(0x15, 0, 14, w(0)),                      // 1
                bpf(0x20, 0, 0, 42),                         // 2
                bpf(0x15, 0, 12, w(4)),                      // 3
                bpf(0x20, 0, 0, 46),                         // 4
                bpf(0x15, 0, 10, w(8)),                      // 5
                bpf(0x20, 0, 0, 50),                         // 6
                bpf(0x15, 0, 8, w(12)),                      // 7
                bpf(0x30, 0, 0, 20),                         // 8: ldb [20] (next header)
                bpf(0x15, 0, 2, 17),                         // 9: udp ? 10 : 12
                bpf(0x28, 0, 0, 56),                         // 10: ldh [56] (dst port)
                bpf(0x15, 3, 4, port),                       // 11: port ? accept : drop
                bpf(0x15, 0, 3, 58),                         // 12: icmpv6 ? 13 : drop
                bpf(0x30, 0, 0, 54),                         // 13: ldb [54] (type)
                bpf(0x15, 0, 1, u32::from(ICMPV6_REDIRECT)), // 14
                bpf(0x06, 0, 0, ACCEPT),                     // 15
                bpf(0x06, 0, 0, 0),                          // 16
            ]
        }
    }
}

/// The interface's first address of `family` (IPv6: global, not link-local).
fn own_address(interface: &str, family: Family) -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != interface {
            continue;
        }
        let Some(sa) = a.address else { continue };
        match family {
            Family::V4 => {
                if let Some(s) = sa.as_sockaddr_in() {
                    return Some(IpAddr::V4(s.ip()));
                }
            }
            Family::V6 => {
                if let Some(s) = sa.as_sockaddr_in6() {
                    let ip = s.ip();
                    if ip.segments()[0] & 0xffc0 != 0xfe80 {
                        return Some(IpAddr::V6(ip));
                    }
                }
            }
        }
    }
    None
}

fn own_mac(interface: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{interface}/address");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_mac(s.trim()).ok_or_else(|| format!("{path}: not a MAC: {}", s.trim()))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut it = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    it.next().is_none().then_some(m)
}

/// The link-layer address the kernel's neighbour table holds for `ip` on
/// `ifindex` (a synchronous RTM_GETNEIGH dump of that interface), if resolved.
fn neighbour_mac(ifindex: u32, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
    };
    use netlink_packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
    };
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_rcvtimeo(socket.as_raw_fd(), Duration::from_millis(200));
    let mut msg = NeighbourMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = ifindex;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetNeighbour(msg)),
    );
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut found = None;
    let mut rx = vec![0u8; 1 << 16];
    for _ in 0..64 {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("RTM_GETNEIGH: {e:?}")))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))
                    if n.header.ifindex == ifindex
                        && !matches!(
                            n.header.state,
                            NeighbourState::Incomplete | NeighbourState::Failed
                        ) =>
                {
                    let dst = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            Some(IpAddr::V4(*a))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            Some(IpAddr::V6(*a))
                        }
                        _ => None,
                    });
                    let lladdr = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                            <[u8; 6]>::try_from(&m[..]).ok()
                        }
                        _ => None,
                    });
                    if dst == Some(ip) && lladdr.is_some() {
                        found = lladdr;
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(found)
}

fn set_rcvtimeo(fd: RawFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd and a live timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 8] = [9, 8, 7, 6, 5, 4, 3, 2];

    fn roundtrip(addr: IpAddr, family: Family) {
        let payload = echo_payload(&TOKEN, ProbeId(42), 1, family, 7);
        let mut f = echo_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], addr, &payload);
        // As forwarded once: TTL 254.
        let ttl_at = ETH_HEADER_LEN + if family == Family::V4 { 8 } else { 7 };
        f[ttl_at] = ARRIVAL_TTL;
        let Some(Parsed::Echo { ttl, payload }) = parse_echo(&f, family, addr) else {
            panic!("not parsed");
        };
        assert_eq!(ttl, ARRIVAL_TTL);
        assert_eq!(
            decode_echo(&TOKEN, payload),
            Some((ProbeId(42), 1, family.index(), 7))
        );
        assert_eq!(
            decode_echo(&[0; 8], payload),
            None,
            "a wrong token is refused"
        );
        let other: IpAddr = match family {
            Family::V4 => "198.18.9.9".parse().unwrap(),
            Family::V6 => "2001:db8::9".parse().unwrap(),
        };
        assert!(
            parse_echo(&f, family, other).is_none(),
            "not to our address"
        );
    }

    #[test]
    fn echo_frames_parse_back() {
        roundtrip("198.18.1.2".parse().unwrap(), Family::V4);
        roundtrip("2001:db8:1::2".parse().unwrap(), Family::V6);
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = echo_frame(
            [0; 6],
            [0; 6],
            "198.18.1.2".parse().unwrap(),
            &[0; ECHO_PAYLOAD_LEN],
        );
        assert_eq!(checksum(&f[ETH_HEADER_LEN..ETH_HEADER_LEN + 20]), 0);
    }
}
