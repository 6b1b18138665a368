//! The packets both probers speak, built and parsed in one place: ICMP and
//! ICMPv6 echo (RFC 792, RFC 4443 §4), ARP over Ethernet (RFC 826; probes
//! per RFC 5227), IPv6 neighbour solicitation and advertisement (RFC 4861
//! §4.3, §4.4), the Internet checksum (RFC 1071) with the ICMPv6
//! pseudo-header (RFC 8200 §8.1), and the classic BPF programs that let the
//! kernel drop what cannot be ours before it is queued.
//!
//! Builders write fixed arrays (the routed prober's echo allocates nothing)
//! or whole Ethernet frames for the bond members' packet sockets. Parsers
//! take whatever bytes a socket returned and answer `None` for anything
//! short, truncated or of another kind; they never panic and never index
//! past what they checked.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use crate::config::Family;
use crate::core::ProbeId;

/// ICMP echo request and reply types: RFC 792.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMPv6 echo request and reply types: RFC 4443 §4.1, §4.2.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// Neighbour solicitation and advertisement types: RFC 4861 §4.3, §4.4.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// ND option types: source / target link-layer address (RFC 4861 §4.6.1).
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
/// IP protocol numbers (IANA): ICMP and ICMPv6.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// EtherTypes: include/uapi/linux/if_ether.h.
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Destination MAC, source MAC, EtherType (IEEE 802.3).
pub const ETH_HEADER_LEN: usize = 14;
/// ARP hardware type Ethernet and operations: RFC 826.
const ARPHRD_ETHER: u16 = 1;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
/// Ethernet header + ARP for IPv4 over Ethernet (RFC 826).
pub const ARP_LEN: usize = ETH_HEADER_LEN + 28;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

/// Echo header (type, code, checksum, identifier, sequence): RFC 792 / RFC 4443.
pub const ECHO_HEADER_LEN: usize = 8;
/// Our payload: the per-process token, then the probe id (big endian).
pub const PAYLOAD_LEN: usize = 16;
/// An echo request or reply carrying our payload.
pub const ECHO_LEN: usize = ECHO_HEADER_LEN + PAYLOAD_LEN;

// ---------------------------------------------------------------------------
// Payload
// ---------------------------------------------------------------------------

/// The payload of probe `id`: `token ‖ id` (big endian).
pub fn encode_payload(token: &[u8; 8], id: ProbeId) -> [u8; PAYLOAD_LEN] {
    let mut p = [0; PAYLOAD_LEN];
    p[..8].copy_from_slice(token);
    p[8..].copy_from_slice(&id.0.to_be_bytes());
    p
}

/// The probe id an echoed payload carries, if it is exactly one of ours
/// (`token ‖ id`); `None` for a wrong token, length or anything else.
pub fn decode_payload(token: &[u8; 8], payload: &[u8]) -> Option<ProbeId> {
    if payload.len() != PAYLOAD_LEN || payload[..8] != token[..] {
        return None;
    }
    let id: [u8; 8] = payload[8..].try_into().ok()?;
    Some(ProbeId(u64::from_be_bytes(id)))
}

// ---------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with
/// zero) to a running one's-complement sum. 64 bits cannot overflow for any
/// packet a socket returns.
fn sum_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        sum += u64::from(*b) << 8;
    }
    sum
}

/// Folds the carries back in and complements (RFC 1071 §4.1).
fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data` (RFC 1071): of the IPv4 header and of
/// ICMP messages. Over data that carries a correct checksum it is 0.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum_words(0, data))
}

/// The ICMPv6 checksum of `icmp` sent from `src` to `dst`: the Internet
/// checksum over the IPv6 pseudo-header (RFC 8200 §8.1: source, destination,
/// upper-layer length, next header 58) and the message. 0 over a message
/// that carries a correct checksum.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut s = sum_words(0, &src.octets());
    s = sum_words(s, &dst.octets());
    // A slice longer than u32::MAX cannot reach here from a socket; saturate
    // rather than wrap if it ever did (the checksum then simply fails).
    let len = u32::try_from(icmp.len()).unwrap_or(u32::MAX);
    s = sum_words(s, &len.to_be_bytes());
    s = sum_words(s, &[0, 0, 0, IPPROTO_ICMPV6]);
    fold(sum_words(s, icmp))
}

// ---------------------------------------------------------------------------
// ICMP / ICMPv6 echo
// ---------------------------------------------------------------------------

/// An echo reply as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo<'a> {
    pub ident: u16,
    pub seq: u16,
    pub payload: &'a [u8],
}

/// The echo request carrying `payload`. The IPv4 checksum is filled in
/// (a ping socket recomputes it anyway); the ICMPv6 one is left 0: it covers
/// the pseudo-header, so the kernel fills it for ICMPv6 sockets (RFC 3542
/// §3.1) and [`echo6_frame`] fills it for a frame. A ping socket also
/// overwrites the identifier with its own.
pub fn echo_request(
    family: Family,
    ident: u16,
    seq: u16,
    payload: &[u8; PAYLOAD_LEN],
) -> [u8; ECHO_LEN] {
    let mut p = [0; ECHO_LEN];
    p[0] = match family {
        Family::V4 => ICMP_ECHO_REQUEST,
        Family::V6 => ICMPV6_ECHO_REQUEST,
    };
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[ECHO_HEADER_LEN..].copy_from_slice(payload);
    if family == Family::V4 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The echo reply in an ICMP (`family` V4) or ICMPv6 message, or `None` for
/// anything else (requests, errors, a non-zero code, too short). The
/// checksum is not verified here: sockets have done it, and
/// [`parse_icmpv6`] does it for frames.
pub fn parse_echo_reply(family: Family, icmp: &[u8]) -> Option<Echo<'_>> {
    let reply = match family {
        Family::V4 => ICMP_ECHO_REPLY,
        Family::V6 => ICMPV6_ECHO_REPLY,
    };
    match icmp {
        [ty, 0, _, _, i0, i1, s0, s1, payload @ ..] if *ty == reply => Some(Echo {
            ident: u16::from_be_bytes([*i0, *i1]),
            seq: u16::from_be_bytes([*s0, *s1]),
            payload,
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// IPv4, IPv6, Ethernet
// ---------------------------------------------------------------------------

/// The fields of an IPv4 packet the probers look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// Time to live as it arrived: what tells a reply reflected by a box on
    /// the path from the target's own (see the prober's `reflect`).
    pub ttl: u8,
    /// The payload up to the header's total length (Ethernet pads short
    /// frames; the padding is not part of the packet).
    pub payload: &'a [u8],
}

/// Parses an IPv4 packet (header with any options); `None` unless the
/// version is 4 and both header and total length fit.
pub fn parse_ipv4(packet: &[u8]) -> Option<Ipv4<'_>> {
    let first = *packet.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < IPV4_HEADER_LEN || packet.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    Some(Ipv4 {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        protocol: packet[9],
        ttl: packet[8],
        payload: packet.get(ihl..total)?,
    })
}

/// The fields of an IPv6 packet the probers look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6<'a> {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub hop_limit: u8,
    /// The payload up to the header's payload length.
    pub payload: &'a [u8],
}

/// Parses an IPv6 packet's fixed header; `None` unless the version is 6 and
/// the payload length fits.
pub fn parse_ipv6(packet: &[u8]) -> Option<Ipv6<'_>> {
    let header: &[u8; IPV6_HEADER_LEN] = packet.get(..IPV6_HEADER_LEN)?.try_into().ok()?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let src: [u8; 16] = header[8..24].try_into().ok()?;
    let dst: [u8; 16] = header[24..40].try_into().ok()?;
    Some(Ipv6 {
        src: Ipv6Addr::from(src),
        dst: Ipv6Addr::from(dst),
        next_header: header[6],
        hop_limit: header[7],
        payload: packet.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + len)?,
    })
}

/// An IPv6 packet whose payload is an ICMPv6 message directly after the
/// fixed header (neither neighbour discovery nor echo carries extension
/// headers from a sane router) of at least a header's length, with a
/// correct checksum; `None` otherwise.
pub fn parse_icmpv6(packet: &[u8]) -> Option<Ipv6<'_>> {
    let ip = parse_ipv6(packet)?;
    (ip.next_header == IPPROTO_ICMPV6
        && ip.payload.len() >= ECHO_HEADER_LEN
        && icmpv6_checksum(&ip.src, &ip.dst, ip.payload) == 0)
        .then_some(ip)
}

/// An Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet<'a> {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
    pub payload: &'a [u8],
}

pub fn parse_ethernet(frame: &[u8]) -> Option<Ethernet<'_>> {
    let header: &[u8; ETH_HEADER_LEN] = frame.get(..ETH_HEADER_LEN)?.try_into().ok()?;
    Some(Ethernet {
        dst: header[0..6].try_into().ok()?,
        src: header[6..12].try_into().ok()?,
        ethertype: u16::from_be_bytes([header[12], header[13]]),
        payload: &frame[ETH_HEADER_LEN..],
    })
}

fn push_ethernet(f: &mut Vec<u8>, dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
}

/// The frame of an ICMP echo request from `from` to `to`, from MAC `src` to
/// MAC `dst`: IPv4 with DF, TTL `ttl`, the sequence number as IP identifier.
#[allow(clippy::too_many_arguments)]
pub fn echo4_frame(
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv4Addr,
    to: Ipv4Addr,
    ident: u16,
    seq: u16,
    ttl: u8,
    payload: &[u8; PAYLOAD_LEN],
) -> Vec<u8> {
    let icmp = echo_request(Family::V4, ident, seq, payload);
    let total = (IPV4_HEADER_LEN + icmp.len()) as u16;
    let mut ip = [0u8; IPV4_HEADER_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes()); // identification
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = ttl;
    ip[9] = IPPROTO_ICMP;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&to.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(ETH_HEADER_LEN + ip.len() + icmp.len());
    push_ethernet(&mut f, dst, src, ETH_P_IP);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An IPv6 frame carrying ICMPv6 message `icmp`, its checksum filled in.
fn icmpv6_frame(
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv6Addr,
    to: Ipv6Addr,
    hops: u8,
    icmp: &mut [u8],
) -> Vec<u8> {
    icmp[2..4].fill(0);
    let c = icmpv6_checksum(&from, &to, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(ETH_HEADER_LEN + IPV6_HEADER_LEN + icmp.len());
    push_ethernet(&mut f, dst, src, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[IPPROTO_ICMPV6, hops]);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&to.octets());
    f.extend_from_slice(icmp);
    f
}

/// The frame of an ICMPv6 echo request from `from` to `to`, hop limit `hops`.
#[allow(clippy::too_many_arguments)]
pub fn echo6_frame(
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv6Addr,
    to: Ipv6Addr,
    ident: u16,
    seq: u16,
    hops: u8,
    payload: &[u8; PAYLOAD_LEN],
) -> Vec<u8> {
    let mut icmp = echo_request(Family::V6, ident, seq, payload);
    icmpv6_frame(src, dst, from, to, hops, &mut icmp)
}

// ---------------------------------------------------------------------------
// Neighbour discovery (RFC 4861)
// ---------------------------------------------------------------------------

/// Neighbour solicitation for `target` from `from` (hop limit 255, as RFC
/// 4861 §7.1.1 requires), with `src` as source link-layer option so the
/// answer is unicast to that MAC.
pub fn ns_frame(
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv6Addr,
    to: Ipv6Addr,
    target: Ipv6Addr,
) -> Vec<u8> {
    nd_frame(
        ND_NEIGHBOR_SOLICIT,
        0,
        ND_OPT_SOURCE_LL,
        src,
        dst,
        from,
        to,
        target,
    )
}

/// Solicited neighbour advertisement (flags solicited + override) for
/// `ours`, with `src` as target link-layer option.
pub fn na_frame(src: [u8; 6], to_mac: [u8; 6], ours: Ipv6Addr, to: Ipv6Addr) -> Vec<u8> {
    nd_frame(
        ND_NEIGHBOR_ADVERT,
        0x60,
        ND_OPT_TARGET_LL,
        src,
        to_mac,
        ours,
        to,
        ours,
    )
}

#[allow(clippy::too_many_arguments)]
fn nd_frame(
    ty: u8,
    flags: u8,
    option: u8,
    src: [u8; 6],
    dst: [u8; 6],
    from: Ipv6Addr,
    to: Ipv6Addr,
    target: Ipv6Addr,
) -> Vec<u8> {
    let mut icmp = [0u8; 32];
    icmp[0] = ty;
    icmp[4] = flags;
    icmp[8..24].copy_from_slice(&target.octets());
    icmp[24] = option;
    icmp[25] = 1; // option length in units of 8 octets
    icmp[26..32].copy_from_slice(&src);
    icmpv6_frame(src, dst, from, to, 255, &mut icmp)
}

/// A neighbour solicitation or advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nd {
    /// The address solicited or advertised.
    pub target: Ipv6Addr,
    /// The sender's link-layer address, if it gave one: the source
    /// link-layer option of a solicitation, the target link-layer option of
    /// an advertisement.
    pub link_addr: Option<[u8; 6]>,
}

/// The solicitation or advertisement in ICMPv6 message `icmp`, `None` for
/// any other message or a short one.
pub fn parse_nd(icmp: &[u8]) -> Option<Nd> {
    let option = match *icmp.first()? {
        ND_NEIGHBOR_SOLICIT => ND_OPT_SOURCE_LL,
        ND_NEIGHBOR_ADVERT => ND_OPT_TARGET_LL,
        _ => return None,
    };
    let target: [u8; 16] = icmp.get(8..24)?.try_into().ok()?;
    Some(Nd {
        target: Ipv6Addr::from(target),
        link_addr: nd_option(&icmp[24..], option),
    })
}

/// The link-layer address in the first ND option of `kind`.
fn nd_option(mut opts: &[u8], kind: u8) -> Option<[u8; 6]> {
    while opts.len() >= 8 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        if opts[0] == kind {
            return opts[2..8].try_into().ok();
        }
        opts = &opts[len..];
    }
    None
}

/// fe80::/64 with the modified EUI-64 of `mac` (RFC 4291 appendix A).
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

/// The solicited-node multicast group of `a` (RFC 4291 §2.7.1).
pub fn solicited_node(a: &Ipv6Addr) -> Ipv6Addr {
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

/// The Ethernet multicast MAC of `a`'s solicited-node group (RFC 2464 §7).
pub fn solicited_mac(a: &Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, 0xff, o[13], o[14], o[15]]
}

// ---------------------------------------------------------------------------
// ARP (RFC 826, RFC 5227)
// ---------------------------------------------------------------------------

/// RFC 5227 ARP probe: "who has `target`", sender IP 0.0.0.0.
pub fn arp_probe_frame(src: [u8; 6], dst: [u8; 6], target: Ipv4Addr) -> [u8; ARP_LEN] {
    arp_frame(
        ARP_REQUEST,
        src,
        dst,
        src,
        Ipv4Addr::UNSPECIFIED,
        [0; 6],
        target,
    )
}

/// The answer to `to`'s request for `ours`: `ours` is at `src`.
pub fn arp_reply_frame(
    src: [u8; 6],
    to: [u8; 6],
    ours: Ipv4Addr,
    their: Ipv4Addr,
) -> [u8; ARP_LEN] {
    arp_frame(ARP_REPLY, src, to, src, ours, to, their)
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
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&sip.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tip.octets());
    f
}

/// An ARP message for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    /// Sender hardware and protocol address.
    pub sha: [u8; 6],
    pub sip: Ipv4Addr,
    /// Target hardware and protocol address.
    pub tha: [u8; 6],
    pub tip: Ipv4Addr,
}

/// The ARP message in Ethernet frame `frame`; `None` for anything but ARP
/// for IPv4 over Ethernet.
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let eth = parse_ethernet(frame)?;
    let a: &[u8; 28] = eth.payload.get(..28)?.try_into().ok()?;
    if eth.ethertype != ETH_P_ARP
        || a[0..2] != ARPHRD_ETHER.to_be_bytes()
        || a[2..4] != ETH_P_IP.to_be_bytes()
        || a[4] != 6
        || a[5] != 4
    {
        return None;
    }
    Some(Arp {
        op: u16::from_be_bytes([a[6], a[7]]),
        sha: a[8..14].try_into().ok()?,
        sip: Ipv4Addr::new(a[14], a[15], a[16], a[17]),
        tha: a[18..24].try_into().ok()?,
        tip: Ipv4Addr::new(a[24], a[25], a[26], a[27]),
    })
}

/// A valid reply to our probe for `target` (op reply, target hardware
/// address `ours`, sender `target`); returns the gateway's MAC.
pub fn parse_arp_reply(frame: &[u8], ours: [u8; 6], target: Ipv4Addr) -> Option<[u8; 6]> {
    let a = parse_arp(frame)?;
    (a.op == ARP_REPLY && a.tha == ours && a.sip == target).then_some(a.sha)
}

// ---------------------------------------------------------------------------
// Kernel filters (classic BPF, SO_ATTACH_FILTER)
// ---------------------------------------------------------------------------

/// One cBPF instruction.
pub(crate) fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Accept the whole packet (up to 256 KiB) / drop it.
const ACCEPT: u32 = 0x0004_0000;
const REJECT: u32 = 0;

/// Attaches cBPF program `f` to socket `fd` (SO_ATTACH_FILTER).
pub(crate) fn attach_filter(fd: RawFd, f: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: f.len() as u16,
        filter: f.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: valid fd; `prog` points at `f`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// cBPF for a raw ICMP socket: accept only messages with identifier `ident`
/// (which the socket's ICMP type filter narrows to echo replies). A raw
/// IPv4 socket's filter sees the IP header (its length from IHL); a raw
/// ICMPv6 socket's sees the ICMPv6 header first.
pub fn ident_filter(family: Family, ident: u16) -> Vec<libc::sock_filter> {
    let ident = u32::from(ident);
    let mut f = match family {
        // ldxb 4*([0]&0xf); ldh [x+4]
        Family::V4 => vec![bpf(0xb1, 0, 0, 0), bpf(0x48, 0, 0, 4)],
        // ldh [4]
        Family::V6 => vec![bpf(0x28, 0, 0, 4)],
    };
    f.extend([
        bpf(0x15, 0, 1, ident), // jeq ident ? accept : reject
        bpf(0x06, 0, 0, ACCEPT),
        bpf(0x06, 0, 0, REJECT),
    ]);
    f
}

/// The high 16 and low 32 bits of a MAC, as cBPF compares them.
fn mac_words(mac: [u8; 6]) -> (u32, u32) {
    (
        u32::from(u16::from_be_bytes([mac[0], mac[1]])),
        u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
    )
}

/// cBPF for a packet socket: accept frames whose destination MAC is `mac`.
pub fn dst_mac_filter(mac: [u8; 6]) -> Vec<libc::sock_filter> {
    let (hi, lo) = mac_words(mac);
    vec![
        bpf(0x20, 0, 0, 2),  // ld [2]
        bpf(0x15, 0, 3, lo), // jeq lo ? next : reject
        bpf(0x28, 0, 0, 0),  // ldh [0]
        bpf(0x15, 0, 1, hi), // jeq hi ? accept : reject
        bpf(0x06, 0, 0, ACCEPT),
        bpf(0x06, 0, 0, REJECT),
    ]
}

/// cBPF for a packet socket: accept frames to `mac` or to the solicited-node
/// group of `probe6` (where the gateway's solicitations for it arrive).
pub fn dst_mac_or_solicited_filter(
    mac: [u8; 6],
    probe6: Option<Ipv6Addr>,
) -> Vec<libc::sock_filter> {
    let (hi, lo) = mac_words(mac);
    let group = solicited_mac(&probe6.unwrap_or(Ipv6Addr::UNSPECIFIED));
    let (group_hi, group_lo) = mac_words(group);
    vec![
        bpf(0x20, 0, 0, 2),        // 0: ld [2]
        bpf(0x15, 0, 2, lo),       // 1: jeq lo ? 2 : 4
        bpf(0x28, 0, 0, 0),        // 2: ldh [0]
        bpf(0x15, 3, 4, hi),       // 3: jeq hi ? 7 : 8
        bpf(0x15, 0, 3, group_lo), // 4: jeq group lo ? 5 : 8
        bpf(0x28, 0, 0, 0),        // 5: ldh [0]
        bpf(0x15, 0, 1, group_hi), // 6: jeq 3333 ? 7 : 8
        bpf(0x06, 0, 0, ACCEPT),   // 7: accept
        bpf(0x06, 0, 0, REJECT),   // 8: reject
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    const MAC: [u8; 6] = [0x02, 1, 2, 3, 4, 5];
    const GW_MAC: [u8; 6] = [0x0a, 9, 9, 9, 9, 9];

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn payload_round_trips() {
        let p = encode_payload(&TOKEN, ProbeId(0x0102_0304_0506_0708));
        assert_eq!(
            decode_payload(&TOKEN, &p),
            Some(ProbeId(0x0102_0304_0506_0708))
        );
    }

    #[test]
    fn payload_with_wrong_token_is_not_ours() {
        let p = encode_payload(&TOKEN, ProbeId(7));
        let other = [1, 2, 3, 4, 5, 6, 7, 9];
        assert_eq!(decode_payload(&other, &p), None);
        let mut flipped = p;
        flipped[0] ^= 0x80;
        assert_eq!(decode_payload(&TOKEN, &flipped), None);
    }

    #[test]
    fn payload_of_wrong_length_is_not_ours() {
        let p = encode_payload(&TOKEN, ProbeId(7));
        assert_eq!(decode_payload(&TOKEN, &p[..15]), None);
        let mut longer = p.to_vec();
        longer.push(0);
        assert_eq!(decode_payload(&TOKEN, &longer), None);
        assert_eq!(decode_payload(&TOKEN, &[]), None);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // An odd length pads the last byte with zero.
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // The classic example header (192.168.0.1 -> 192.168.0.199, UDP),
        // whose checksum is b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn known_icmpv6_checksum() {
        // Echo request fe80::1 -> fe80::2, id 0x1234, seq 1, payload "abcd":
        // pseudo-header words fe80 0001 fe80 0002 000c 003a (zeros left out)
        // and message words 8000 1234 0001 6162 6364 sum to 3_5444, folded
        // 5447, complemented abb8.
        let src = v6("fe80::1");
        let dst = v6("fe80::2");
        let mut msg = [128, 0, 0, 0, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd'];
        assert_eq!(icmpv6_checksum(&src, &dst, &msg), KNOWN_ICMPV6);
        msg[2..4].copy_from_slice(&KNOWN_ICMPV6.to_be_bytes());
        assert_eq!(icmpv6_checksum(&src, &dst, &msg), 0);
        // Swapping the addresses keeps the sum; another address does not.
        assert_eq!(icmpv6_checksum(&dst, &src, &msg), 0);
        assert_ne!(icmpv6_checksum(&src, &v6("fe80::3"), &msg), 0);
    }

    const KNOWN_ICMPV6: u16 = 0xabb8;

    #[test]
    fn echo_request_round_trips_as_a_reply() {
        for family in Family::ALL {
            let payload = encode_payload(&TOKEN, ProbeId(42));
            let mut p = echo_request(family, 0xbeef, 9, &payload);
            if family == Family::V4 {
                assert_eq!(p[0], ICMP_ECHO_REQUEST);
                assert_eq!(checksum(&p), 0, "a correct checksum sums to zero");
            } else {
                assert_eq!(p[0], ICMPV6_ECHO_REQUEST);
            }
            assert!(parse_echo_reply(family, &p).is_none(), "a request");
            p[0] = match family {
                Family::V4 => ICMP_ECHO_REPLY,
                Family::V6 => ICMPV6_ECHO_REPLY,
            };
            let e = parse_echo_reply(family, &p).unwrap();
            assert_eq!((e.ident, e.seq), (0xbeef, 9));
            assert_eq!(decode_payload(&TOKEN, e.payload), Some(ProbeId(42)));
            p[1] = 1;
            assert!(parse_echo_reply(family, &p).is_none(), "non-zero code");
        }
    }

    #[test]
    fn echo4_frame_parses_back_with_valid_checksums() {
        let payload = encode_payload(&TOKEN, ProbeId(42));
        let (from, to) = (v4("198.18.1.10"), v4("198.19.0.1"));
        let f = echo4_frame(MAC, GW_MAC, from, to, 77, 5, 64, &payload);
        assert_eq!(checksum(&f[14..34]), 0, "IP header checksum");
        assert_eq!(checksum(&f[34..]), 0, "ICMP checksum");
        let eth = parse_ethernet(&f).unwrap();
        assert_eq!((eth.dst, eth.src, eth.ethertype), (GW_MAC, MAC, ETH_P_IP));
        // Ethernet pads a short frame; the padding is not the packet's.
        let mut padded = eth.payload.to_vec();
        padded.extend_from_slice(&[0, 0]);
        let ip = parse_ipv4(&padded).unwrap();
        assert_eq!((ip.src, ip.dst, ip.protocol), (from, to, IPPROTO_ICMP));
        assert_eq!(ip.ttl, 64);
        assert_eq!(ip.payload.len(), ECHO_LEN);
        assert_eq!(ip.payload[0], ICMP_ECHO_REQUEST);
    }

    #[test]
    fn echo6_frame_parses_back_with_valid_checksum() {
        let payload = encode_payload(&TOKEN, ProbeId(43));
        let (from, to) = (v6("2001:db8:1::10"), v6("2001:db8:ff::1"));
        let f = echo6_frame(MAC, GW_MAC, from, to, 77, 6, 255, &payload);
        let eth = parse_ethernet(&f).unwrap();
        assert_eq!(eth.ethertype, ETH_P_IPV6);
        let ip = parse_icmpv6(eth.payload).expect("valid checksum");
        assert_eq!((ip.src, ip.dst, ip.hop_limit), (from, to, 255));
        let mut reply = ip.payload.to_vec();
        reply[0] = ICMPV6_ECHO_REPLY;
        let e = parse_echo_reply(Family::V6, &reply).unwrap();
        assert_eq!((e.ident, e.seq), (77, 6));
        assert_eq!(decode_payload(&TOKEN, e.payload), Some(ProbeId(43)));
        // One flipped bit anywhere in the message fails the checksum.
        let mut bad = eth.payload.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert!(parse_icmpv6(&bad).is_none());
    }

    #[test]
    fn ns_and_na_round_trip() {
        let gw = v6("2001:db8:1::1");
        let ll = link_local(MAC);
        assert_eq!(ll, v6("fe80::1:2ff:fe03:405"));
        let f = ns_frame(MAC, solicited_mac(&gw), ll, solicited_node(&gw), gw);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
        let ip = parse_icmpv6(parse_ethernet(&f).unwrap().payload).unwrap();
        assert_eq!(ip.dst, v6("ff02::1:ff00:1"));
        assert_eq!(ip.hop_limit, 255);
        assert_eq!(ip.payload[0], ND_NEIGHBOR_SOLICIT);
        assert_eq!(
            parse_nd(ip.payload),
            Some(Nd {
                target: gw,
                link_addr: Some(MAC)
            })
        );

        let probe = v6("2001:db8:1::99");
        let f = na_frame(MAC, GW_MAC, probe, gw);
        let eth = parse_ethernet(&f).unwrap();
        assert_eq!(eth.dst, GW_MAC);
        let ip = parse_icmpv6(eth.payload).unwrap();
        assert_eq!((ip.src, ip.dst), (probe, gw));
        assert_eq!(ip.payload[0], ND_NEIGHBOR_ADVERT);
        assert_eq!(ip.payload[4], 0x60, "solicited + override");
        assert_eq!(
            parse_nd(ip.payload),
            Some(Nd {
                target: probe,
                link_addr: Some(MAC)
            })
        );
    }

    #[test]
    fn nd_options_are_walked_safely() {
        let mut icmp = vec![ND_NEIGHBOR_ADVERT, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&v6("2001:db8::1").octets());
        // A nonce-like option first, then the target link-layer address.
        icmp.extend_from_slice(&[14, 1, 0, 0, 0, 0, 0, 0]);
        icmp.extend_from_slice(&[ND_OPT_TARGET_LL, 1]);
        icmp.extend_from_slice(&GW_MAC);
        assert_eq!(parse_nd(&icmp).unwrap().link_addr, Some(GW_MAC));
        // Zero-length option: stop, no address.
        icmp[25] = 0;
        assert_eq!(parse_nd(&icmp).unwrap().link_addr, None);
        // Length past the end.
        icmp[25] = 9;
        assert_eq!(parse_nd(&icmp).unwrap().link_addr, None);
    }

    #[test]
    fn arp_probe_is_rfc5227_and_reply_is_matched() {
        let gw = v4("198.18.1.1");
        let f = arp_probe_frame(MAC, [0xff; 6], gw);
        assert_eq!(&f[28..32], &[0, 0, 0, 0], "sender IP is zero");
        assert_eq!(&f[22..28], &MAC);
        let a = parse_arp(&f).unwrap();
        assert_eq!(
            a,
            Arp {
                op: ARP_REQUEST,
                sha: MAC,
                sip: Ipv4Addr::UNSPECIFIED,
                tha: [0; 6],
                tip: gw
            }
        );
        let r = arp_frame(
            ARP_REPLY,
            GW_MAC,
            MAC,
            GW_MAC,
            gw,
            MAC,
            Ipv4Addr::UNSPECIFIED,
        );
        assert_eq!(parse_arp_reply(&r, MAC, gw), Some(GW_MAC));
        assert_eq!(parse_arp_reply(&r, [0x02, 0, 0, 0, 0, 0], gw), None);
        assert_eq!(parse_arp_reply(&r, MAC, v4("198.18.1.2")), None);
        assert_eq!(parse_arp_reply(&f, MAC, gw), None, "a request");

        let probe = v4("198.18.1.99");
        let r = arp_reply_frame(MAC, GW_MAC, probe, gw);
        assert_eq!(parse_arp_reply(&r, GW_MAC, probe), Some(MAC));
    }

    #[test]
    fn filters_have_consistent_jumps() {
        for prog in [
            ident_filter(Family::V4, 7),
            ident_filter(Family::V6, 7),
            dst_mac_filter([1; 6]),
            dst_mac_or_solicited_filter([1; 6], None),
            dst_mac_or_solicited_filter([1; 6], Some(v6("2001:db8::1"))),
        ] {
            assert_eq!(prog.last().map(|i| i.code), Some(0x06), "ends in ret");
            for (i, ins) in prog.iter().enumerate() {
                if ins.code == 0x15 {
                    assert!(i + 1 + (ins.jt as usize) < prog.len());
                    assert!(i + 1 + (ins.jf as usize) < prog.len());
                }
            }
        }
    }

    /// Every parser on `bytes`: none may panic.
    fn parse_everything(bytes: &[u8]) {
        for family in Family::ALL {
            let _ = parse_echo_reply(family, bytes);
        }
        let _ = parse_ipv4(bytes);
        let _ = parse_ipv6(bytes);
        let _ = parse_icmpv6(bytes);
        let _ = parse_ethernet(bytes);
        let _ = parse_nd(bytes);
        let _ = parse_arp(bytes);
        let _ = parse_arp_reply(bytes, MAC, v4("198.18.1.1"));
        let _ = decode_payload(&TOKEN, bytes);
        let _ = checksum(bytes);
        let _ = icmpv6_checksum(&Ipv6Addr::LOCALHOST, &Ipv6Addr::LOCALHOST, bytes);
        if let Some(eth) = parse_ethernet(bytes) {
            parse_everything_below_ethernet(eth.payload);
        }
    }

    fn parse_everything_below_ethernet(bytes: &[u8]) {
        if let Some(ip) = parse_ipv4(bytes) {
            let _ = parse_echo_reply(Family::V4, ip.payload);
        }
        if let Some(ip) = parse_ipv6(bytes) {
            let _ = parse_echo_reply(Family::V6, ip.payload);
            let _ = parse_nd(ip.payload);
        }
    }

    #[test]
    fn malformed_input_never_panics() {
        let payload = encode_payload(&TOKEN, ProbeId(1));
        let gw6 = v6("2001:db8:1::1");
        let valid: Vec<Vec<u8>> = vec![
            echo_request(Family::V4, 1, 2, &payload).to_vec(),
            echo_request(Family::V6, 1, 2, &payload).to_vec(),
            echo4_frame(
                MAC,
                GW_MAC,
                v4("198.18.1.10"),
                v4("198.19.0.1"),
                1,
                2,
                64,
                &payload,
            ),
            echo6_frame(MAC, GW_MAC, gw6, gw6, 1, 2, 64, &payload),
            ns_frame(MAC, GW_MAC, link_local(MAC), solicited_node(&gw6), gw6),
            na_frame(MAC, GW_MAC, gw6, gw6),
            arp_probe_frame(MAC, [0xff; 6], v4("198.18.1.1")).to_vec(),
        ];
        for v in &valid {
            // Every truncation, with and without the Ethernet header.
            for n in 0..=v.len() {
                parse_everything(&v[..n]);
                parse_everything(v.get(ETH_HEADER_LEN..n).unwrap_or(&[]));
            }
            // Every byte set to the values that steer parsers most.
            for i in 0..v.len() {
                for b in [0x00, 0x01, 0x08, 0x0f, 0x45, 0x4f, 0x60, 0x80, 0xff] {
                    let mut m = v.clone();
                    m[i] = b;
                    parse_everything(&m);
                    parse_everything(&m[ETH_HEADER_LEN.min(m.len())..]);
                }
            }
        }
        // And plain noise of every short length.
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            for _ in 0..20 {
                let noise: Vec<u8> = (0..len)
                    .map(|_| {
                        // xorshift32: deterministic, no dependency.
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x as u8
                    })
                    .collect();
                parse_everything(&noise);
            }
        }
    }
}
