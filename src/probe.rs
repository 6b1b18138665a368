//! The prober: sends the ICMP/ICMPv6 echoes the core asks for, each through
//! the uplink it names, and reports exactly one outcome per request. It
//! decides nothing: counting misses, timers and verdicts belong to the core.
//!
//! One socket per (uplink, family), opened lazily on the first probe. It is
//! bound to the uplink's interface (`SO_BINDTODEVICE`) and marked with the
//! uplink's fwmark (`SO_MARK`), so the policy rule `fwmark X lookup T` routes
//! the probe through that uplink's own gateway even when two uplinks share an
//! interface, and a far target never silently leaves through the current
//! default route instead of the uplink under test.
//!
//! Sockets come from [`surge_ping::AsyncSocket`] (DGRAM "ping" socket when
//! `net.ipv4.ping_group_range` admits our gid, RAW otherwise). Matching is
//! ours, not surge-ping's `Client`/`Pinger`: surge-ping 0.9.1 decodes a reply
//! into an `IcmpPacket` that does not carry the echoed payload, and a reply
//! must prove it answers *our* probe (design note: "validate every reply so
//! stray or spoofed replies never keep a dead path up"). A reply counts only
//! if it comes from the target, is an echo reply (type 0 / 129, code 0), has
//! our identifier (RAW; the kernel demultiplexes DGRAM sockets by it), our
//! sequence number, and a payload of exactly the per-process random token
//! followed by the probe id.
//!
//! Each socket has one driver task that sends, receives and expires its
//! probes; the steady state allocates nothing per probe (the pending table and
//! the job queue reuse their storage, the packet is built on the stack).
//!
//! Threads and namespaces: sockets are opened in [`Prober::send`], on the
//! calling thread, so they belong to that thread's network namespace. `send`
//! must run inside a tokio runtime (current-thread is fine): the driver task
//! is started with `tokio::spawn`.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use surge_ping::{AsyncSocket, ICMP};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tracing::debug;

use crate::config::Family;
use crate::core::{ProbeId, ProbeOutcome, ProbeRequest, UplinkId};

/// Where the prober reports `(probe id, outcome)`.
pub type OutcomeSender = UnboundedSender<(ProbeId, ProbeOutcome)>;

/// What the prober needs to know about one uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUplink {
    /// The interface probes are bound to (`SO_BINDTODEVICE`): replies are only
    /// accepted when they arrive on it, and the route lookup is restricted to it.
    pub interface: String,
    /// `SO_MARK` of the uplink's probe sockets: selects the uplink's own
    /// routing table (and so its gateway) through the `fwmark` policy rule.
    /// 0 = leave unmarked.
    pub fwmark: u32,
}

/// The kind of ICMP socket an uplink's probes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// An unprivileged "ping" socket (`SOCK_DGRAM`, `IPPROTO_ICMP[V6]`): the
    /// kernel owns the identifier and delivers only replies carrying it.
    Dgram,
    /// A raw socket (needs CAP_NET_RAW): sees every echo reply on the
    /// interface, so the identifier is ours and checked here.
    Raw,
}

/// Sends echoes through uplinks; see the module documentation.
pub struct Prober {
    uplinks: Vec<ProbeUplink>,
    /// `slots[uplink][family.index()]`.
    slots: Vec<[Slot; 2]>,
}

#[derive(Default)]
struct Slot {
    client: Option<Client>,
    /// Last sequence number used; per (uplink, family), wraps at 2^16. It
    /// survives a socket being reopened, so a late reply to the old socket's
    /// probe cannot match a new one.
    seq: u16,
}

/// Handle to one socket's driver task.
struct Client {
    jobs: UnboundedSender<Job>,
    /// Set by the driver when the socket failed (send or receive error); the
    /// next probe opens a fresh socket. This is how a socket bound to an
    /// interface that was deleted and recreated (new ifindex) gets replaced.
    broken: Arc<AtomicBool>,
    kind: SocketKind,
}

struct Job {
    id: ProbeId,
    seq: u16,
    target: IpAddr,
    timeout: Duration,
    tx: OutcomeSender,
}

impl Prober {
    /// Cheap: no socket is opened until the first probe of an (uplink, family).
    /// `uplinks[i]` is uplink `i` of the requests.
    pub fn new(uplinks: Vec<ProbeUplink>) -> Self {
        let slots = uplinks.iter().map(|_| Default::default()).collect();
        Prober { uplinks, slots }
    }

    /// Send one echo through `req.uplink` to `req.target`; later exactly one
    /// `(req.id, outcome)` goes to `tx`: `Reply { rtt }` for a valid reply
    /// within `req.timeout`, `Timeout` otherwise, `Error` if it could not be
    /// sent (the message names uplink, interface, target and cause).
    ///
    /// Must be called inside a tokio runtime, on a thread in the network
    /// namespace the uplinks live in (sockets are opened here).
    pub fn send(&mut self, req: ProbeRequest, tx: OutcomeSender) {
        let family = Family::of(&req.target);
        let Some(uplink) = self.uplinks.get(req.uplink) else {
            let msg = format!(
                "echo to {} via uplink {}: no such uplink (the prober has {})",
                req.target,
                req.uplink,
                self.uplinks.len()
            );
            let _ = tx.send((req.id, ProbeOutcome::Error(msg)));
            return;
        };
        if family != req.family {
            let msg = format!(
                "echo to {} via uplink {} ({}): target is not an {} address",
                req.target, req.uplink, uplink.interface, req.family
            );
            let _ = tx.send((req.id, ProbeOutcome::Error(msg)));
            return;
        }
        let slot = &mut self.slots[req.uplink][family.index()];
        if slot
            .client
            .as_ref()
            .is_some_and(|c| c.broken.load(Ordering::Relaxed) || c.jobs.is_closed())
        {
            // The old driver still reports its probes in flight, then exits.
            slot.client = None;
        }
        let client = match &mut slot.client {
            Some(client) => client,
            empty => match Client::open(req.uplink, uplink, family) {
                Ok(client) => empty.insert(client),
                Err(e) => {
                    let msg = format!(
                        "echo to {} via uplink {} ({}): open ICMP socket: {}",
                        req.target, req.uplink, uplink.interface, e
                    );
                    let _ = tx.send((req.id, ProbeOutcome::Error(msg)));
                    return;
                }
            },
        };
        slot.seq = slot.seq.wrapping_add(1);
        let job = Job {
            id: req.id,
            seq: slot.seq,
            target: req.target,
            timeout: req.timeout,
            tx,
        };
        if let Err(mpsc::error::SendError(job)) = client.jobs.send(job) {
            // The driver is gone (its runtime is shutting down).
            slot.client = None;
            let msg = format!(
                "echo to {} via uplink {} ({}): probe socket task has stopped",
                job.target, req.uplink, uplink.interface
            );
            let _ = job.tx.send((job.id, ProbeOutcome::Error(msg)));
        }
    }

    /// The kind of socket currently open for (uplink, family), if any.
    pub fn socket_kind(&self, uplink: UplinkId, family: Family) -> Option<SocketKind> {
        let client = self.slots.get(uplink)?[family.index()].client.as_ref()?;
        Some(client.kind)
    }
}

impl Client {
    fn open(uplink: UplinkId, cfg: &ProbeUplink, family: Family) -> io::Result<Client> {
        // AsyncSocket::new registers with the reactor and panics outside a
        // runtime; make that an ordinary error.
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let kind = match family {
            Family::V4 => ICMP::V4,
            Family::V6 => ICMP::V6,
        };
        let config = surge_ping::Config::builder()
            .kind(kind)
            .interface(&cfg.interface)
            .build();
        // DGRAM first, RAW if the gid is outside net.ipv4.ping_group_range;
        // binds to the interface (fails with ENODEV if it does not exist).
        let socket = AsyncSocket::new(&config)?;
        let kind = if socket.get_type() == socket2::Type::RAW {
            SocketKind::Raw
        } else {
            SocketKind::Dgram
        };
        let fd = socket.get_native_sock();
        if cfg.fwmark != 0 {
            // SAFETY: `fd` belongs to `socket`, which outlives this borrow.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            socket2::SockRef::from(&borrowed)
                .set_mark(cfg.fwmark)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("set SO_MARK {}: {e}", cfg.fwmark))
                })?;
        }
        if kind == SocketKind::Raw {
            install_echo_reply_filter(fd, family);
        }
        // IPv6 link-local targets (a gateway is often fe80::1) need the scope.
        let scope_id = match family {
            Family::V4 => 0,
            Family::V6 => {
                nix::net::if_::if_nametoindex(cfg.interface.as_str()).map_err(io::Error::from)?
            }
        };
        let broken = Arc::new(AtomicBool::new(false));
        let (jobs, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            socket,
            kind,
            family,
            ident: match kind {
                SocketKind::Raw => rand::random(),
                SocketKind::Dgram => 0, // the kernel sets it
            },
            scope_id,
            token: *token(),
            uplink,
            interface: cfg.interface.clone(),
            broken: broken.clone(),
        };
        tokio::spawn(driver.run(rx));
        debug!(
            uplink,
            interface = %cfg.interface,
            family = %family,
            kind = ?kind,
            fwmark = cfg.fwmark,
            "opened probe socket"
        );
        Ok(Client { jobs, broken, kind })
    }
}

/// ICMP echo request/reply types: RFC 792 (8/0) and RFC 4443 §4 (128/129).
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Echo header (type, code, checksum, identifier, sequence): RFC 792 / RFC 4443.
const ECHO_HEADER_LEN: usize = 8;
/// Our payload: the per-process token, then the probe id (big endian).
pub const PAYLOAD_LEN: usize = 16;
const ECHO_LEN: usize = ECHO_HEADER_LEN + PAYLOAD_LEN;
/// Big enough for any reply we accept (IPv4 header with options + echo), and
/// anything truncated to it is longer than what we accept, so never matches.
const RECV_BUF_LEN: usize = 256;
/// After this many packets in a row, queued probes are sent before the next.
const MAX_PACKET_STREAK: u32 = 64;

/// The random token every probe of this process carries.
fn token() -> &'static [u8; 8] {
    static TOKEN: OnceLock<[u8; 8]> = OnceLock::new();
    TOKEN.get_or_init(rand::random)
}

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

/// An echo reply as received: (identifier, sequence, payload).
type EchoReply<'a> = (u16, u16, &'a [u8]);

/// Parse what an ICMP socket returned into an echo reply, or `None` for
/// anything else. A RAW IPv4 socket returns the IP header too; DGRAM IPv4 and
/// both IPv6 kinds return the ICMP message alone.
fn parse_echo_reply(buf: &[u8], family: Family, kind: SocketKind) -> Option<EchoReply<'_>> {
    let (icmp, reply_type) = match (family, kind) {
        (Family::V4, SocketKind::Raw) => {
            let first = *buf.first()?;
            let ihl = usize::from(first & 0x0f) * 4;
            if first >> 4 != 4 || ihl < 20 {
                return None;
            }
            (buf.get(ihl..)?, ICMP_ECHO_REPLY)
        }
        (Family::V4, SocketKind::Dgram) => (buf, ICMP_ECHO_REPLY),
        (Family::V6, _) => (buf, ICMPV6_ECHO_REPLY),
    };
    if icmp.len() < ECHO_HEADER_LEN || icmp[0] != reply_type || icmp[1] != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    Some((ident, seq, &icmp[ECHO_HEADER_LEN..]))
}

/// The echo request for probe `id`. The checksum is ours only for RAW IPv4:
/// the kernel fills it for ping sockets and for ICMPv6 raw sockets (RFC 3542 §3.1),
/// and a ping socket also overwrites the identifier with its own.
fn build_echo(
    family: Family,
    kind: SocketKind,
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
    if family == Family::V4 && kind == SocketKind::Raw {
        let sum = internet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A RAW socket sees every ICMP message arriving on its interface (echo
/// requests, other hosts' replies, errors); let the kernel pass only echo
/// replies. An optimisation: every reply is validated anyway, so a failure
/// here is only logged.
fn install_echo_reply_filter(fd: RawFd, family: Family) {
    // linux/icmp.h: ICMP_FILTER on SOL_RAW, a u32 mask of types to *drop*.
    const ICMP_FILTER: libc::c_int = 1;
    // linux/icmpv6.h: ICMPV6_FILTER on SOL_ICMPV6, 256 bits, set = block
    // (same semantics as RFC 3542 §3.2 ICMP6_FILTER_SETBLOCKALL / SETPASS).
    const ICMPV6_FILTER: libc::c_int = 1;
    let rc = match family {
        Family::V4 => {
            let mask: u32 = !(1u32 << ICMP_ECHO_REPLY);
            // SAFETY: valid fd, pointer and length of a live u32.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_RAW,
                    ICMP_FILTER,
                    (&mask as *const u32).cast(),
                    std::mem::size_of::<u32>() as libc::socklen_t,
                )
            }
        }
        Family::V6 => {
            let mut filter = [u32::MAX; 8];
            let t = usize::from(ICMPV6_ECHO_REPLY);
            filter[t >> 5] &= !(1u32 << (t & 31));
            // SAFETY: valid fd, pointer and length of a live [u32; 8].
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_ICMPV6,
                    ICMPV6_FILTER,
                    filter.as_ptr().cast(),
                    std::mem::size_of_val(&filter) as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        debug!(family = %family, error = %io::Error::last_os_error(), "ICMP type filter not installed");
    }
}

fn is_unicast_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

struct Pending {
    id: ProbeId,
    seq: u16,
    target: IpAddr,
    sent: Instant,
    deadline: Instant,
    tx: OutcomeSender,
}

/// Owns one socket: sends the jobs, matches replies, expires the rest.
struct Driver {
    socket: AsyncSocket,
    kind: SocketKind,
    family: Family,
    /// Our identifier (RAW only; a ping socket's is the kernel's).
    ident: u16,
    /// IPv6 scope (ifindex) for link-local targets.
    scope_id: u32,
    token: [u8; 8],
    uplink: UplinkId,
    interface: String,
    broken: Arc<AtomicBool>,
}

impl Driver {
    /// Runs until the `Client` is gone and every probe in flight is reported.
    async fn run(self, mut jobs: UnboundedReceiver<Job>) {
        let mut pending: Vec<Pending> = Vec::new();
        let mut buf = [0u8; RECV_BUF_LEN];
        let mut jobs_open = true;
        let mut recv_ok = true;
        // Packets handled in a row; bounds how long a stream of replies (or
        // of other echo replies a RAW socket sees) can hold back new probes.
        let mut streak = 0u32;
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        while jobs_open || !pending.is_empty() {
            let next = pending.iter().map(|p| p.deadline).min();
            if let Some(at) = next {
                if Instant::now() >= at {
                    // Also when the timer arm is starved by a packet stream.
                    expire(&mut pending, Instant::now());
                    continue;
                }
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
            }
            if streak >= MAX_PACKET_STREAK {
                streak = 0;
                while let Ok(job) = jobs.try_recv() {
                    self.send(job, &mut pending).await;
                }
            }
            tokio::select! {
                // Replies first: one that is already queued must not lose
                // against its own deadline just because the timer fired too,
                // and its RTT must not include the sending of a burst.
                biased;
                r = self.socket.recv_from(&mut buf), if recv_ok => match r {
                    Ok((n, from)) => {
                        streak += 1;
                        self.on_packet(&buf[..n], from.ip(), &mut pending);
                    }
                    Err(e) => {
                        debug!(uplink = self.uplink, interface = %self.interface, error = %e,
                            "probe socket receive failed; reopening on the next probe");
                        recv_ok = false;
                        self.broken.store(true, Ordering::Relaxed);
                    }
                },
                job = jobs.recv(), if jobs_open => {
                    streak = 0;
                    match job {
                        Some(job) => self.send(job, &mut pending).await,
                        None => jobs_open = false,
                    }
                }
                () = &mut sleep, if next.is_some() => {
                    streak = 0;
                    expire(&mut pending, Instant::now());
                }
            }
        }
    }

    async fn send(&self, job: Job, pending: &mut Vec<Pending>) {
        let payload = encode_payload(&self.token, job.id);
        let mut packet = build_echo(self.family, self.kind, self.ident, job.seq, &payload);
        let dst = match job.target {
            IpAddr::V6(ip) if is_unicast_link_local(&ip) => {
                SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, self.scope_id))
            }
            ip => SocketAddr::new(ip, 0),
        };
        let sent = Instant::now();
        match self.socket.send_to(&mut packet, &dst).await {
            Ok(_) => pending.push(Pending {
                id: job.id,
                seq: job.seq,
                target: job.target,
                sent,
                deadline: sent + job.timeout,
                tx: job.tx,
            }),
            Err(e) => {
                // Whatever the cause, a fresh socket costs little and also
                // cures a binding to a deleted interface (stale ifindex).
                self.broken.store(true, Ordering::Relaxed);
                let msg = format!(
                    "echo to {} via uplink {} ({}): {}",
                    job.target, self.uplink, self.interface, e
                );
                let _ = job.tx.send((job.id, ProbeOutcome::Error(msg)));
            }
        }
    }

    fn on_packet(&self, buf: &[u8], from: IpAddr, pending: &mut Vec<Pending>) {
        let Some((ident, seq, payload)) = parse_echo_reply(buf, self.family, self.kind) else {
            return;
        };
        if self.kind == SocketKind::Raw && ident != self.ident {
            return; // another socket's (or host's) echo on this interface
        }
        let Some(id) = decode_payload(&self.token, payload) else {
            debug!(uplink = self.uplink, %from, seq, "echo reply without our token ignored");
            return;
        };
        let Some(i) = pending
            .iter()
            .position(|p| p.id == id && p.seq == seq && p.target == from)
        else {
            debug!(uplink = self.uplink, %from, seq, id = id.0, "unexpected, late or duplicate echo reply ignored");
            return;
        };
        let p = pending.swap_remove(i);
        let now = Instant::now();
        let outcome = if now <= p.deadline {
            ProbeOutcome::Reply { rtt: now - p.sent }
        } else {
            ProbeOutcome::Timeout
        };
        let _ = p.tx.send((p.id, outcome));
    }
}

fn expire(pending: &mut Vec<Pending>, now: Instant) {
    let mut i = 0;
    while i < pending.len() {
        if pending[i].deadline <= now {
            let p = pending.swap_remove(i);
            let _ = p.tx.send((p.id, ProbeOutcome::Timeout));
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

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
    fn token_is_stable_within_the_process() {
        assert_eq!(token(), token());
    }

    #[test]
    fn raw_v4_echo_has_valid_checksum() {
        let payload = encode_payload(&TOKEN, ProbeId(42));
        let p = build_echo(Family::V4, SocketKind::Raw, 0xbeef, 9, &payload);
        assert_eq!(p[0], 8);
        assert_eq!(internet_checksum(&p), 0, "a correct checksum sums to zero");
    }

    #[test]
    fn parses_raw_v4_reply_with_ip_header() {
        let payload = encode_payload(&TOKEN, ProbeId(42));
        let mut echo = build_echo(Family::V4, SocketKind::Raw, 0xbeef, 9, &payload);
        echo[0] = ICMP_ECHO_REPLY;
        let mut pkt = vec![0x46, 0, 0, 0]; // IHL 6: one option word
        pkt.resize(24, 0);
        pkt.extend_from_slice(&echo);
        let (ident, seq, got) = parse_echo_reply(&pkt, Family::V4, SocketKind::Raw).unwrap();
        assert_eq!((ident, seq), (0xbeef, 9));
        assert_eq!(decode_payload(&TOKEN, got), Some(ProbeId(42)));
        // The same bytes are not an echo reply to a DGRAM socket (no IP header).
        assert!(parse_echo_reply(&pkt, Family::V4, SocketKind::Dgram).is_none());
    }

    #[test]
    fn requests_and_errors_are_not_replies() {
        let payload = encode_payload(&TOKEN, ProbeId(1));
        let req = build_echo(Family::V6, SocketKind::Dgram, 0, 1, &payload);
        assert!(parse_echo_reply(&req, Family::V6, SocketKind::Dgram).is_none());
        let mut reply = req;
        reply[0] = ICMPV6_ECHO_REPLY;
        assert!(parse_echo_reply(&reply, Family::V6, SocketKind::Raw).is_some());
        reply[1] = 1; // nonzero code
        assert!(parse_echo_reply(&reply, Family::V6, SocketKind::Raw).is_none());
        let mut unreachable = req;
        unreachable[0] = 1; // ICMPv6 destination unreachable
        assert!(parse_echo_reply(&unreachable, Family::V6, SocketKind::Raw).is_none());
        assert!(parse_echo_reply(&[0, 0, 0], Family::V4, SocketKind::Dgram).is_none());
    }

    #[test]
    fn expire_reports_only_overdue_probes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let mk = |id, deadline| Pending {
            id: ProbeId(id),
            seq: 0,
            target: IpAddr::from([198, 18, 0, 1]),
            sent: now,
            deadline,
            tx: tx.clone(),
        };
        let mut pending = vec![
            mk(1, now),
            mk(2, now + Duration::from_secs(5)),
            mk(3, now - Duration::from_millis(1)),
        ];
        expire(&mut pending, now);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, ProbeId(2));
        let mut got = vec![rx.try_recv().unwrap(), rx.try_recv().unwrap()];
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(
            got,
            vec![
                (ProbeId(1), ProbeOutcome::Timeout),
                (ProbeId(3), ProbeOutcome::Timeout)
            ]
        );
    }
}
