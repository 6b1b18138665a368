//! A small ICMP echo client for the lab's own checks, so the lab needs no
//! `ping` binary (iputils is often missing in containers).
//!
//! It uses RAW sockets (the lab runs as root, CAP_NET_RAW), so it does not
//! depend on `net.ipv4.ping_group_range` in the namespace, which the lab
//! deliberately leaves alone in the server namespace (the daemon's concern).
//! Every reply is validated: source address, identifier, sequence and a
//! random payload token, so stray replies (e.g. the daemon's own probes in
//! the same namespace) are never counted.
//!
//! These functions work in the *calling thread's* network namespace; use
//! them through [`super::Lab::ping`] and friends, which run them on a thread
//! inside the right namespace.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvfrom, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};

/// How to send echo requests.
#[derive(Debug, Clone)]
pub struct PingOpts {
    /// Bind the socket to this device (SO_BINDTODEVICE), like `ping -I eth0`.
    pub device: Option<String>,
    /// Use this source address (must be local), which also selects policy
    /// routing rules `from <source>`.
    pub source: Option<IpAddr>,
    /// Give up after this long.
    pub timeout: Duration,
    /// For [`ping_here`]: resend an echo request this often until a reply.
    pub interval: Duration,
}

impl Default for PingOpts {
    fn default() -> Self {
        PingOpts {
            device: None,
            source: None,
            timeout: Duration::from_secs(2),
            interval: Duration::from_millis(200),
        }
    }
}

impl PingOpts {
    /// Bound to `device` (e.g. "eth0"), with a timeout.
    pub fn via(device: &str, timeout: Duration) -> Self {
        PingOpts {
            device: Some(device.to_string()),
            timeout,
            ..Default::default()
        }
    }
    /// With a timeout and no binding.
    pub fn timeout(timeout: Duration) -> Self {
        PingOpts {
            timeout,
            ..Default::default()
        }
    }
}

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128; // RFC 4443 4.1
const ECHO_REPLY_V6: u8 = 129; // RFC 4443 4.2

struct Pinger {
    sock: Socket,
    dst: IpAddr,
    ident: u16,
    token: u64,
}

/// RFC 1071 internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Waits up to `wait` for `sock` to become readable.
fn wait_readable(sock: &Socket, wait: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    match rc {
        r if r > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

impl Pinger {
    fn new(dst: IpAddr, opts: &PingOpts) -> io::Result<Pinger> {
        let sock = match dst {
            IpAddr::V4(_) => Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?,
            IpAddr::V6(_) => Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?,
        };
        if let Some(dev) = &opts.device {
            sock.bind_device(Some(dev.as_bytes()))?;
        }
        if let Some(src) = opts.source {
            sock.bind(&SocketAddr::new(src, 0).into())?;
        }
        sock.set_nonblocking(true)?;
        Ok(Pinger {
            sock,
            dst,
            ident: rand::random(),
            token: rand::random(),
        })
    }

    fn send(&self, seq: u16) -> io::Result<()> {
        let mut pkt = Vec::with_capacity(24);
        let ty = if self.dst.is_ipv4() {
            ECHO_REQUEST_V4
        } else {
            ECHO_REQUEST_V6
        };
        pkt.extend_from_slice(&[ty, 0, 0, 0]);
        pkt.extend_from_slice(&self.ident.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&self.token.to_be_bytes());
        pkt.extend_from_slice(&(seq as u64).to_be_bytes());
        if self.dst.is_ipv4() {
            // The kernel fills in the ICMPv6 checksum (RFC 3542 3.1), not the
            // ICMPv4 one.
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        self.sock
            .send_to(&pkt, &SocketAddr::new(self.dst, 0).into())
            .map(|_| ())
    }

    /// Waits until `deadline` for one valid reply; returns its sequence.
    fn recv(&self, deadline: Instant) -> io::Result<Option<u16>> {
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // ppoll, not SO_RCVTIMEO: the latter counts in jiffies (4 ms at
            // HZ=250), far coarser than a burst's spacing.
            if !wait_readable(&self.sock, deadline - now)? {
                continue;
            }
            let (n, from) = match recvfrom::<SockaddrStorage>(self.sock.as_raw_fd(), &mut buf) {
                Ok(r) => r,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let pkt = &buf[..n];
            let (icmp, src): (&[u8], Option<IpAddr>) = match self.dst {
                IpAddr::V4(_) => {
                    // RAW IPv4 sockets deliver the IP header too.
                    if pkt.len() < 20 {
                        continue;
                    }
                    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
                    if pkt.len() < ihl {
                        continue;
                    }
                    let src = IpAddr::from([pkt[12], pkt[13], pkt[14], pkt[15]]);
                    (&pkt[ihl..], Some(src))
                }
                IpAddr::V6(_) => (
                    pkt,
                    from.and_then(|a| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip()))),
                ),
            };
            if src != Some(self.dst) || icmp.len() < 24 {
                continue;
            }
            let want = if self.dst.is_ipv4() {
                ECHO_REPLY_V4
            } else {
                ECHO_REPLY_V6
            };
            if icmp[0] != want || icmp[1] != 0 {
                continue;
            }
            let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
            let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
            let token = u64::from_be_bytes(icmp[8..16].try_into().expect("8 bytes"));
            if ident != self.ident || token != self.token {
                continue;
            }
            return Ok(Some(seq));
        }
    }
}

/// Pings `dst` from the calling thread's namespace, resending every
/// `opts.interval`, until a valid reply (its round-trip time from the latest
/// request) or `opts.timeout` (None). Send errors (e.g. "network
/// unreachable") count as no reply.
pub fn ping_here(dst: IpAddr, opts: &PingOpts) -> io::Result<Option<Duration>> {
    let p = Pinger::new(dst, opts)?;
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let interval = opts.interval.max(Duration::from_millis(1));
    let mut seq: u16 = 0;
    loop {
        let sent_at = Instant::now();
        if sent_at >= deadline {
            return Ok(None);
        }
        let sent = p.send(seq).is_ok();
        let until = (sent_at + interval).min(deadline);
        if sent {
            if let Some(_s) = p.recv(until)? {
                return Ok(Some(sent_at.elapsed()));
            }
        } else {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        seq = seq.wrapping_add(1);
    }
}

/// Sends `count` echo requests `spacing` apart, waits up to `opts.timeout`
/// after the last, and returns how many distinct requests were answered.
pub fn burst_here(
    dst: IpAddr,
    opts: &PingOpts,
    count: u16,
    spacing: Duration,
) -> io::Result<usize> {
    let p = Pinger::new(dst, opts)?;
    let mut answered = HashSet::new();
    for seq in 0..count {
        // A failed send is an unanswered request.
        let _ = p.send(seq);
        let until = Instant::now() + spacing;
        while let Some(s) = p.recv(until)? {
            answered.insert(s);
        }
    }
    let deadline = Instant::now() + opts.timeout;
    while answered.len() < count as usize {
        match p.recv(deadline)? {
            Some(s) => {
                answered.insert(s);
            }
            None => break,
        }
    }
    Ok(answered.len())
}

#[cfg(test)]
mod tests {
    use super::checksum;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of 0001 f203 f4f5 f6f7 = ddf2 (one's complement 220d)
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }
}
