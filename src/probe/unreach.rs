//! ICMP destination-unreachable messages about our own packets: a router
//! that lost its upstream (route withdrawn) says so at once, long before a
//! probe times out. Passive suspicion (`uplinkd_core::suspicion`) takes one
//! from the active gateway as a reason to confirm with a probe burst.
//!
//! Validated here: an unreachable counts only if the packet it quotes was
//! ours, i.e. the quoted header's source is one of this namespace's
//! addresses (anybody can send an unreachable; one that does not quote our
//! packet is ignored). The core then checks that it came from the active
//! gateway. Raw sockets with a kernel filter (`ICMP_FILTER`,
//! `ICMP6_FILTER`) that passes only destination unreachable, so the probes'
//! echo replies never reach this thread; read by a thread of its own, which
//! blocks in `recv` (no polling) and hands at most one message per
//! [`MIN_GAP`] per sender to the loop.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::Family;

/// An unreachable that quotes one of our packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub family: Family,
    /// Who sent it (the router).
    pub from: IpAddr,
    /// When it was read (CLOCK_MONOTONIC).
    pub at: Duration,
}

/// ICMP type 3 (RFC 792), ICMPv6 type 1 (RFC 4443 §3.1).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP6_DST_UNREACH: u8 = 1;
/// linux/icmp.h: ICMP_FILTER on SOL_RAW; a set bit blocks that type.
const SOL_RAW: libc::c_int = 255;
const ICMP_FILTER: libc::c_int = 1;
/// linux/icmpv6.h: ICMPV6_FILTER on IPPROTO_ICMPV6; a set bit blocks.
const ICMPV6_FILTER: libc::c_int = 1;
/// One unreachable per sender per this reaches the loop: a flood costs no
/// more than this (the core bounds the bursts itself).
pub const MIN_GAP: Duration = Duration::from_millis(10);
/// `recv` wakes at least this often to see the stop flag: the threads'
/// only wake-ups while no unreachable arrives (one a second each; they end
/// at most this long after the daemon).
const STOP_CHECK: Duration = Duration::from_secs(1);

/// The source of the packet quoted by an ICMP destination unreachable
/// (`icmp`: the ICMP message from its type byte on), if it is one.
pub fn quoted_source(family: Family, icmp: &[u8]) -> Option<IpAddr> {
    match family {
        Family::V4 => {
            if icmp.first() != Some(&ICMP_DEST_UNREACH) {
                return None;
            }
            let inner = icmp.get(8..)?;
            if inner.first()? >> 4 != 4 {
                return None;
            }
            let b: [u8; 4] = inner.get(12..16)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        Family::V6 => {
            if icmp.first() != Some(&ICMP6_DST_UNREACH) {
                return None;
            }
            let inner = icmp.get(8..)?;
            if inner.first()? >> 4 != 6 {
                return None;
            }
            let b: [u8; 16] = inner.get(8..24)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
    }
}

/// Whether `a` is an address of this namespace.
fn is_ours(a: IpAddr) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut it| {
        it.any(|i| {
            i.address.as_ref().is_some_and(|s| {
                s.as_sockaddr_in().map(|x| IpAddr::V4(x.ip())) == Some(a)
                    || s.as_sockaddr_in6().map(|x| IpAddr::V6(x.ip())) == Some(a)
            })
        })
    })
}

fn open(family: Family) -> std::io::Result<Socket> {
    let s = match family {
        Family::V4 => Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?,
        Family::V6 => Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?,
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
    let r = match family {
        Family::V4 => {
            let mask: u32 = !(1u32 << ICMP_DEST_UNREACH);
            unsafe { libc::setsockopt(fd, SOL_RAW, ICMP_FILTER, (&mask as *const u32).cast(), 4) }
        }
        Family::V6 => {
            let mut filter = [u32::MAX; 8];
            filter[(ICMP6_DST_UNREACH >> 5) as usize] &= !(1u32 << (ICMP6_DST_UNREACH & 31));
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_ICMPV6,
                    ICMPV6_FILTER,
                    filter.as_ptr().cast(),
                    32,
                )
            }
        }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.set_read_timeout(Some(STOP_CHECK))?;
    Ok(s)
}

/// Start one thread per family listening from the calling thread's
/// namespace, until `stop` is set or `tx` is closed. A family whose socket
/// cannot be opened (no CAP_NET_RAW) is skipped and named in the result.
pub fn spawn_listeners(
    tx: UnboundedSender<Unreachable>,
    stop: Arc<AtomicBool>,
) -> Vec<(Family, std::io::Error)> {
    let mut errors = Vec::new();
    for family in Family::ALL {
        let sock = match open(family) {
            Ok(s) => s,
            Err(e) => {
                errors.push((family, e));
                continue;
            }
        };
        let (tx, stop) = (tx.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("unreach:{}", family.name()))
            .spawn(move || listen(family, sock, tx, &stop));
        if let Err(e) = spawned {
            errors.push((family, e));
        }
    }
    errors
}

fn listen(family: Family, sock: Socket, tx: UnboundedSender<Unreachable>, stop: &AtomicBool) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let mut last: HashMap<IpAddr, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue; // the timeout (stop check) or a transient error
        };
        // SAFETY: recv_from initialised the first n bytes.
        let pkt: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
        let (icmp, from) = match family {
            // A raw IPv4 socket gets the IP header too.
            Family::V4 => {
                let ihl = pkt.first().map_or(0, |b| usize::from(b & 0xf) * 4);
                let Some(src) = from.as_socket_ipv4().map(|a| IpAddr::V4(*a.ip())) else {
                    continue;
                };
                (pkt.get(ihl..).unwrap_or(&[]), src)
            }
            Family::V6 => {
                let Some(src) = from.as_socket_ipv6().map(|a| IpAddr::V6(*a.ip())) else {
                    continue;
                };
                (pkt, src)
            }
        };
        let Some(quoted) = quoted_source(family, icmp) else {
            continue;
        };
        if !is_ours(quoted) {
            tracing::debug!(%from, %quoted, "ICMP unreachable about a packet not ours: ignored");
            continue;
        }
        let now = Instant::now();
        if last
            .get(&from)
            .is_some_and(|t| now.duration_since(*t) < MIN_GAP)
        {
            continue;
        }
        if last.len() > 1024 {
            last.clear();
        }
        last.insert(from, now);
        let at = crate::netlink::carrier::monotonic_now();
        if tx.send(Unreachable { family, from, at }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_quoted_source() {
        // Type 3 code 0, checksum, unused; then a quoted IPv4 header
        // 198.18.1.2 -> 198.19.0.1 (UDP).
        let mut m = vec![3, 0, 0, 0, 0, 0, 0, 0];
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend([198, 18, 1, 2, 198, 19, 0, 1]);
        m.extend(&ip);
        m.extend([0u8; 8]);
        assert_eq!(
            quoted_source(Family::V4, &m),
            Some("198.18.1.2".parse().unwrap())
        );
        // An echo reply is not an unreachable; a truncated one says nothing.
        m[0] = 0;
        assert_eq!(quoted_source(Family::V4, &m), None);
        assert_eq!(
            quoted_source(Family::V4, &[3, 0, 0, 0, 0, 0, 0, 0, 0x45]),
            None
        );
        // ICMPv6 type 1 quoting 2001:db8:1::2 -> 2001:db8:ff::1.
        let mut m6 = vec![1, 0, 0, 0, 0, 0, 0, 0, 0x60, 0, 0, 0, 0, 8, 17, 64];
        m6.extend("2001:db8:1::2".parse::<Ipv6Addr>().unwrap().octets());
        m6.extend("2001:db8:ff::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(
            quoted_source(Family::V6, &m6),
            Some("2001:db8:1::2".parse().unwrap())
        );
    }
}
