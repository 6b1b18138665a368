//! The prober: sends the ICMP/ICMPv6 echoes the core asks for, each through
//! the uplink it names, and reports exactly one outcome per request. It
//! decides nothing: counting misses, timers and verdicts belong to the core.
//! [`member`] probes through bond members on packet sockets; both build and
//! parse their packets with [`packet`].
//!
//! # Why not an echo library
//!
//! The daemon's prober is its own rather than `surge-ping` (which the lab's
//! pinger uses) because the probe path has no reactor: sends and receives
//! happen on the loop's poll-driven round, where surge-ping needs a tokio
//! runtime and a receive task per socket. It needs a kernel reply filter (cBPF
//! on the identifier) so a raw socket queues only its own replies, and the
//! kernel's receive timestamps (`SO_TIMESTAMPNS`) so a reply read a round late
//! still has its true round-trip time. Every socket also carries its uplink's
//! mark and device binding, set when it is opened.
//!
//! # Tick-driven, no reactor
//!
//! Every thread wake-up costs CPU, so the prober never wakes anyone: its
//! sockets are plain non-blocking sockets that are registered with no
//! reactor (tokio, epoll, anything). The daemon's loop
//! calls [`Prober::send`] when the core asks for a probe and
//! [`Prober::poll`] on its periodic tick (and at [`Prober::next_deadline`]);
//! `poll` reads whatever replies the kernel has queued meanwhile. No runtime
//! is needed.
//!
//! A reply can wait in its socket for up to one tick before `poll` reads it,
//! so the round-trip time is not "when poll saw it" but the kernel's receive
//! timestamp (`SO_TIMESTAMPNS`, CLOCK_REALTIME, taken when the packet entered
//! the stack; see the kernel's Documentation/networking/timestamping.rst)
//! minus CLOCK_REALTIME read just before `sendto`. Lateness is judged the same
//! way: a reply the kernel received after the probe's timeout is a `Timeout`,
//! however early `poll` reads it, and one received in time is a `Reply` even
//! if `poll` runs after the deadline (queued replies are read before expiring).
//!
//! # Sockets
//!
//! One socket per (uplink, family) for gateway echoes and one for transit
//! echoes (so that a socket with one probe in flight is readable exactly
//! when that probe was answered: [`Prober::watch_fd`]), opened lazily by the
//! first probe, on the calling thread (so it belongs to that thread's network namespace). It is
//! bound to the uplink's interface (`SO_BINDTODEVICE`) and marked with the
//! uplink's fwmark (`SO_MARK`), so the policy rule `fwmark X lookup T` routes
//! the probe through that uplink's own gateway even when two uplinks share an
//! interface, and a far target never silently leaves through the current
//! default route instead of the uplink under test. A DGRAM "ping" socket is
//! used when `net.ipv4.ping_group_range` admits our gid, RAW otherwise.
//!
//! A socket that fails (send or receive error, e.g. ENODEV once its interface
//! is deleted: a socket keeps the old ifindex even when an interface of the
//! same name comes back) is replaced by the next probe. The failed socket is
//! kept, and still read, until the probes sent through it are reported.
//!
//! # Validation
//!
//! A reply must prove it answers *our* probe (design note: "validate every
//! reply so stray or spoofed replies never keep a dead path up"). It counts
//! only if it comes from the target, is an echo reply (type 0 / 129, code 0),
//! has our identifier (RAW; the kernel demultiplexes DGRAM sockets by it), our
//! sequence number (per (uplink, family), wrapping), and a payload of exactly
//! the per-process random token followed by the probe id.
//!
//! That stops whoever does not see our requests. A box on the path that does
//! (and copies them back as replies) can repeat all of it, so probes to each
//! target alternate their TTL / hop limit, and a reply whose arrival TTL
//! (`IP_RECVTTL`, `IPV6_RECVHOPLIMIT`: read by the same `recvmsg`) follows the
//! TTL we sent is rejected as reflected; see [`reflect`]. Setting the TTL
//! costs a `setsockopt` before the `sendto` when it changes (in practice
//! every probe); no receive and no wake-up.
//!
//! # Cost
//!
//! The steady state allocates nothing per probe: the tables reuse their
//! storage, packets are built and received in fixed stack buffers, outcomes go
//! into the caller's vector. `poll` reads only sockets with probes in flight
//! (one `recvmsg` returning EAGAIN when nothing arrived), at most
//! [`MAX_RECV_PER_POLL`] datagrams per socket per call; with nothing in
//! flight it makes no system call at all. A socket left idle is emptied by
//! the `send` that ends its idleness (a RAW socket queues every echo reply on
//! its interface meanwhile, and a full receive buffer would drop ours).

use std::io;
use std::mem::{size_of, size_of_val, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use crate::config::Family;
use crate::core::{ProbeId, ProbeKind, ProbeOutcome, ProbeRequest, UplinkId};

pub mod echo;
pub mod echo_stream;
pub mod member;
pub mod packet;
mod reflect;
mod rx_ring;
pub use echo::EchoProber;
pub mod unreach;
pub use member::{MemberProber, MemberSpec};

use packet::{
    attach_filter, decode_payload, echo_request, encode_payload, ident_filter, parse_echo_reply,
    parse_ipv4, Echo, ICMPV6_ECHO_REPLY, ICMP_ECHO_REPLY, IPPROTO_ICMP,
};
use reflect::{Paths, Verdict};

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

/// At most this many datagrams are read from one socket in one `poll`, so a
/// flood of echo replies (a RAW socket sees everyone's on its interface)
/// cannot hold the daemon's loop; the rest wait for the next tick.
pub const MAX_RECV_PER_POLL: usize = 256;

/// A kernel RTT longer than the monotonic time since the send plus this is
/// not believed: CLOCK_REALTIME was stepped meanwhile, and the RTT falls back
/// to the monotonic time until `poll` (an overestimate by at most one tick).
const CLOCK_STEP_SLACK: Duration = Duration::from_millis(100);

/// When a socket could not be drained within [`MAX_RECV_PER_POLL`], a probe
/// past its deadline is still reported as `Timeout` this long after it, even
/// if the datagrams read so far do not prove its reply is not queued: a
/// sustained flood must not keep probes unanswered for ever.
const FLOOD_GRACE: Duration = Duration::from_secs(1);

/// Sends echoes through uplinks; see the module documentation.
///
/// Not thread-safe by design (`&mut self`): one owner, the daemon's loop.
pub struct Prober {
    uplinks: Vec<ProbeUplink>,
    /// `slots[uplink][slot_index(family, kind)]`: gateway echoes and transit
    /// echoes go out on sockets of their own, so that "a reply is queued"
    /// on a socket with one probe in flight answers for that probe (see
    /// [`Prober::watch_fd`]).
    slots: Vec<[Slot; SLOTS]>,
    /// Outcomes decided by `send` (errors), handed out by the next `poll`.
    ready: Vec<(ProbeId, ProbeOutcome)>,
    /// When the oldest entry of `ready` was recorded: `next_deadline` asks
    /// for a `poll` from then on.
    ready_since: Option<Instant>,
    /// The per-process payload token.
    token: [u8; 8],
    /// Generation of the next socket opened (tells a probe's socket apart
    /// from its replacement).
    next_gen: u64,
}

#[derive(Default)]
struct Slot {
    /// The socket new probes are sent on.
    sock: Option<Sock>,
    /// Failed sockets that still have probes in flight: read until those are
    /// reported, then closed. Empty (and unallocated) in the steady state.
    retired: Vec<Sock>,
    /// Probes in flight on this slot's sockets.
    pending: Vec<Pending>,
    /// Last sequence number used; per (uplink, family), wraps at 2^16. It
    /// survives a socket being reopened, so a late reply to the old socket's
    /// probe cannot match a new one.
    seq: u16,
    /// The TTL each target's probes are sent with, and the reflection check
    /// of their replies (per target, surviving a reopened socket).
    paths: Paths,
}

struct Sock {
    socket: Socket,
    gen: u64,
    /// For the logs.
    uplink: UplinkId,
    kind: SocketKind,
    /// Our identifier (RAW only; a ping socket's is the kernel's).
    ident: u16,
    /// IPv6 scope (ifindex) for link-local targets.
    scope_id: u32,
    /// Only replies to this socket's echoes can be queued: a ping socket
    /// (the kernel matches the identifier) or a raw socket with the
    /// identifier filter attached. Then nothing needs emptying before a send.
    own_only: bool,
    /// A send or receive failed: the next probe opens a fresh socket.
    broken: bool,
    /// False after a receive error: nothing more is read from it.
    readable: bool,
    /// The last drain read everything that was queued (hit EAGAIN).
    drained: bool,
    /// TTL / hop limit the socket sends with now (0: the kernel's default).
    ttl: u8,
    /// Kernel receive time (CLOCK_REALTIME, ns) of the last datagram the last
    /// drain read: every reply received before it has been read too.
    last_rx: Option<i64>,
}

struct Pending {
    id: ProbeId,
    seq: u16,
    target: IpAddr,
    /// Generation of the socket it was sent on.
    gen: u64,
    /// TTL / hop limit it was sent with: a reply whose arrival TTL follows
    /// it is the request reflected ([`reflect`]).
    ttl: u8,
    /// The caller's `now` at send.
    sent: Instant,
    /// CLOCK_REALTIME (ns) just before `sendto`, to compare with the kernel's
    /// receive timestamp.
    sent_rt: Option<i64>,
    timeout: Duration,
    deadline: Instant,
}

impl Prober {
    /// Cheap: no socket is opened until the first probe of an (uplink, family).
    /// `uplinks[i]` is uplink `i` of the requests.
    pub fn new(uplinks: Vec<ProbeUplink>) -> Self {
        let slots = uplinks.iter().map(|_| Default::default()).collect();
        Prober {
            uplinks,
            slots,
            ready: Vec::new(),
            ready_since: None,
            token: *token(),
            next_gen: 0,
        }
    }

    /// Send one echo through `req.uplink` to `req.target` now (a non-blocking
    /// `sendto`; opens the socket first if needed). Later `poll` returns
    /// exactly one `(req.id, outcome)`: `Reply { rtt }` for a valid reply
    /// that the kernel received within `req.timeout`, `Timeout` otherwise,
    /// `Error` if it could not be sent (the message names uplink, interface,
    /// target and cause; returned by the very next `poll`).
    ///
    /// `now` is the caller's monotonic clock; the deadline is `now + timeout`.
    /// Call on a thread in the network namespace the uplinks live in.
    pub fn send(&mut self, now: Instant, req: ProbeRequest) {
        let family = Family::of(&req.target);
        let Some(uplink) = self.uplinks.get(req.uplink) else {
            let msg = format!(
                "echo to {} via uplink {}: no such uplink (the prober has {})",
                req.target,
                req.uplink,
                self.uplinks.len()
            );
            self.fail(now, req.id, msg);
            return;
        };
        if family != req.family {
            let msg = format!(
                "echo to {} via uplink {} ({}): target is not an {} address",
                req.target, req.uplink, uplink.interface, req.family
            );
            self.fail(now, req.id, msg);
            return;
        }
        let slot = &mut self.slots[req.uplink][slot_index(family, req.kind)];
        if slot.sock.as_ref().is_some_and(|s| s.broken) {
            if let Some(old) = slot.sock.take() {
                if slot.pending.iter().any(|p| p.gen == old.gen) {
                    slot.retired.push(old);
                }
            }
        }
        let sock = match &mut slot.sock {
            Some(sock) => {
                if !sock.own_only && !slot.pending.iter().any(|p| p.gen == sock.gen) {
                    // Idle since the last poll that read it, so nothing reads
                    // it meanwhile; a RAW socket may have queued everyone's
                    // echo replies since. Empty it, or a full receive buffer
                    // could drop this probe's reply.
                    drain(
                        sock,
                        family,
                        &self.token,
                        &mut slot.pending,
                        &mut slot.paths,
                        now,
                        &mut self.ready,
                    );
                }
                sock
            }
            empty => match Sock::open(req.uplink, uplink, family, req.kind, self.next_gen) {
                Ok(sock) => {
                    self.next_gen += 1;
                    debug!(
                        uplink = req.uplink,
                        interface = %uplink.interface,
                        family = %family,
                        kind = ?sock.kind,
                        fwmark = uplink.fwmark,
                        "opened probe socket"
                    );
                    empty.insert(sock)
                }
                Err(e) => {
                    let msg = format!(
                        "echo to {} via uplink {} ({}): open ICMP socket: {}",
                        req.target, req.uplink, uplink.interface, e
                    );
                    self.fail(now, req.id, msg);
                    return;
                }
            },
        };
        slot.seq = slot.seq.wrapping_add(1);
        let ttl = slot.paths.send_ttl(req.target);
        let payload = encode_payload(&self.token, req.id);
        let packet = echo_request(family, sock.ident, slot.seq, &payload);
        let dst = match req.target {
            IpAddr::V6(ip) if is_unicast_link_local(&ip) => {
                SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, sock.scope_id))
            }
            ip => SocketAddr::new(ip, 0),
        };
        // Before the send: on a fast local path the reply can be received
        // (and timestamped) before `sendto` even returns.
        let sent_rt = realtime_ns();
        match sock
            .set_ttl(family, ttl)
            .and_then(|()| sock.socket.send_to(&packet, &SockAddr::from(dst)))
        {
            Ok(_) => slot.pending.push(Pending {
                id: req.id,
                seq: slot.seq,
                target: req.target,
                gen: sock.gen,
                ttl,
                sent: now,
                sent_rt,
                timeout: req.timeout,
                deadline: now + req.timeout,
            }),
            Err(e) => {
                // Whatever the cause, a fresh socket costs little and also
                // cures a binding to a deleted interface (stale ifindex);
                // only a full send buffer says nothing about the socket.
                if e.kind() != io::ErrorKind::WouldBlock {
                    sock.broken = true;
                }
                let msg = format!(
                    "echo to {} via uplink {} ({}): {}",
                    req.target, req.uplink, uplink.interface, e
                );
                self.fail(now, req.id, msg);
            }
        }
    }

    /// Read every reply already queued on the sockets with probes in flight
    /// (non-blocking, at most [`MAX_RECV_PER_POLL`] per socket), match and
    /// validate them, and expire the probes whose deadline is `<= now` and
    /// whose reply cannot be among the datagrams still queued. Appends
    /// `(id, outcome)` to `out`; each probe id is reported exactly once.
    /// Never blocks, never allocates unless `out` must grow.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<(ProbeId, ProbeOutcome)>) {
        out.append(&mut self.ready);
        self.ready_since = None;
        for slots in &mut self.slots {
            for (i, slot) in slots.iter_mut().enumerate() {
                let family = slot_family(i);
                if slot.pending.is_empty() {
                    continue;
                }
                let Slot {
                    sock,
                    retired,
                    pending,
                    paths,
                    ..
                } = slot;
                for s in sock.iter_mut().chain(retired.iter_mut()) {
                    if pending.iter().any(|p| p.gen == s.gen) {
                        drain(s, family, &self.token, pending, paths, now, out);
                    }
                }
                expire(pending, sock.as_ref(), retired, now, out);
                retired.retain(|s| pending.iter().any(|p| p.gen == s.gen));
            }
        }
    }

    /// When `poll` should run next at the latest: the earliest deadline of a
    /// probe in flight, or the time an `Error` was recorded if one is waiting.
    /// `None` when nothing is in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        let probes = self
            .slots
            .iter()
            .flatten()
            .flat_map(|s| s.pending.iter().map(|p| p.deadline))
            .min();
        match (probes, self.ready_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Probes sent whose outcome `poll` has not returned yet.
    pub fn in_flight(&self) -> usize {
        let pending: usize = self.slots.iter().flatten().map(|s| s.pending.len()).sum();
        pending + self.ready.len()
    }

    /// The kind of socket currently open for (uplink, family), if any (the
    /// gateway's, else the transits').
    pub fn socket_kind(&self, uplink: UplinkId, family: Family) -> Option<SocketKind> {
        let slots = self.slots.get(uplink)?;
        [ProbeKind::Gateway, ProbeKind::Transit(0)]
            .into_iter()
            .find_map(|k| slots[slot_index(family, k)].sock.as_ref())
            .map(|s| s.kind)
    }

    /// The socket whose readiness tells whether the one probe in flight
    /// through (uplink, family) of this kind has been answered: `Some` only
    /// when exactly one probe is in flight on that slot, on its current
    /// socket, which queues nothing but replies to its own echoes (a ping
    /// socket, or a raw one with the identifier filter), and no error is
    /// waiting to be reported. "Readable" then means a reply to that probe
    /// is queued (or, rarely, a late one to an earlier probe: `poll` sorts
    /// them out). Another thread may `poll(2)` the descriptor meanwhile; it
    /// stays open until a later `send` or `poll` of this prober.
    pub fn watch_fd(&self, uplink: UplinkId, family: Family, kind: ProbeKind) -> Option<RawFd> {
        if !self.ready.is_empty() {
            return None;
        }
        let slot = &self.slots.get(uplink)?[slot_index(family, kind)];
        let sock = slot.sock.as_ref()?;
        let one = slot.pending.len() == 1 && slot.pending[0].gen == sock.gen;
        (one && slot.retired.is_empty() && sock.own_only && sock.readable && !sock.broken)
            .then(|| sock.socket.as_raw_fd())
    }

    fn fail(&mut self, now: Instant, id: ProbeId, msg: String) {
        self.ready.push((id, ProbeOutcome::Error(msg)));
        self.ready_since.get_or_insert(now);
    }
}

/// Sockets per uplink: (family, gateway or transit).
const SLOTS: usize = 4;

fn slot_index(family: Family, kind: ProbeKind) -> usize {
    family.index() * 2 + usize::from(matches!(kind, ProbeKind::Transit(_)))
}

fn slot_family(i: usize) -> Family {
    Family::ALL[i / 2]
}

impl Sock {
    fn open(
        uplink: UplinkId,
        cfg: &ProbeUplink,
        family: Family,
        kind_of_probes: ProbeKind,
        gen: u64,
    ) -> io::Result<Sock> {
        let (domain, proto) = match family {
            Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
            Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        // DGRAM first (EACCES when our gid is outside
        // net.ipv4.ping_group_range), RAW otherwise (needs CAP_NET_RAW).
        let (socket, kind) = match Socket::new(domain, Type::DGRAM.nonblocking(), Some(proto)) {
            Ok(s) => (s, SocketKind::Dgram),
            Err(dgram) => match Socket::new(domain, Type::RAW.nonblocking(), Some(proto)) {
                Ok(s) => (s, SocketKind::Raw),
                Err(raw) => {
                    return Err(io::Error::new(
                        raw.kind(),
                        format!("ping socket: {dgram}; raw socket: {raw}"),
                    ))
                }
            },
        };
        // Fails with ENODEV if the interface does not exist.
        socket.bind_device(Some(cfg.interface.as_bytes()))?;
        if cfg.fwmark != 0 {
            socket.set_mark(cfg.fwmark).map_err(|e| {
                io::Error::new(e.kind(), format!("set SO_MARK {}: {e}", cfg.fwmark))
            })?;
        }
        let fd = socket.as_raw_fd();
        let ident = match kind {
            // Gateway and transit sockets of an uplink differ in the low
            // bit, so their identifier filters never pass each other's.
            SocketKind::Raw => {
                rand::random::<u16>() & !1 | slot_index(family, kind_of_probes) as u16 & 1
            }
            SocketKind::Dgram => 0, // the kernel sets it
        };
        let own_only = match kind {
            SocketKind::Dgram => true,
            SocketKind::Raw => {
                install_echo_reply_filter(fd, family);
                match attach_filter(fd, &ident_filter(family, ident)) {
                    Ok(()) => true,
                    Err(e) => {
                        debug!(interface = %cfg.interface, error = %e, "identifier filter not attached");
                        false
                    }
                }
            }
        };
        if let Err(e) = set_int_opt(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1) {
            // Then RTTs are measured up to the `poll` that reads the reply.
            debug!(interface = %cfg.interface, error = %e, "SO_TIMESTAMPNS not set");
        }
        // The arrival TTL of every datagram, with it (ip(7), ipv6(7)).
        let (level, name) = match family {
            Family::V4 => (libc::IPPROTO_IP, libc::IP_RECVTTL),
            Family::V6 => (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT),
        };
        if let Err(e) = set_int_opt(fd, level, name, 1) {
            // Then reflected replies cannot be told from the target's.
            warn!(interface = %cfg.interface, error = %e, "arrival TTL not available: reflected echo replies will not be detected");
        }
        // IPv6 link-local targets (a gateway is often fe80::1) need the scope.
        let scope_id = match family {
            Family::V4 => 0,
            Family::V6 => {
                nix::net::if_::if_nametoindex(cfg.interface.as_str()).map_err(io::Error::from)?
            }
        };
        Ok(Sock {
            socket,
            gen,
            uplink,
            kind,
            ident,
            scope_id,
            own_only,
            broken: false,
            readable: true,
            drained: true,
            last_rx: None,
            ttl: 0,
        })
    }

    /// Send with TTL / hop limit `ttl` from now on. A socket option, not a
    /// control message on the send: IPv6 ping sockets ignored an
    /// `IPV6_HOPLIMIT` control message until 2022 (`ping_v6_sendmsg` then
    /// had only a TODO to call `ip6_datagram_send_ctl`), while the options
    /// work on every kernel and socket kind (ip(7) `IP_TTL`, ipv6(7)
    /// `IPV6_UNICAST_HOPS`).
    fn set_ttl(&mut self, family: Family, ttl: u8) -> io::Result<()> {
        if self.ttl == ttl {
            return Ok(());
        }
        let (level, name) = match family {
            Family::V4 => (libc::IPPROTO_IP, libc::IP_TTL),
            Family::V6 => (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
        };
        set_int_opt(self.socket.as_raw_fd(), level, name, libc::c_int::from(ttl))
            .map_err(|e| io::Error::new(e.kind(), format!("set TTL {ttl}: {e}")))?;
        self.ttl = ttl;
        Ok(())
    }
}

/// Read what is queued on `sock` (at most [`MAX_RECV_PER_POLL`] datagrams)
/// and report the probes in `pending` that the replies answer.
fn drain(
    sock: &mut Sock,
    family: Family,
    token: &[u8; 8],
    pending: &mut Vec<Pending>,
    paths: &mut Paths,
    now: Instant,
    out: &mut Vec<(ProbeId, ProbeOutcome)>,
) {
    sock.last_rx = None;
    sock.drained = true;
    if !sock.readable {
        return;
    }
    let mut buf = [0u8; RECV_BUF_LEN];
    for _ in 0..MAX_RECV_PER_POLL {
        match recv(sock.socket.as_raw_fd(), &mut buf) {
            Ok(None) => return,
            Ok(Some(dgram)) => {
                if dgram.rx.is_some() {
                    sock.last_rx = dgram.rx;
                }
                if !dgram.truncated {
                    on_packet(
                        sock,
                        family,
                        token,
                        &buf[..dgram.len],
                        &dgram,
                        pending,
                        paths,
                        now,
                        out,
                    );
                }
                if !pending.iter().any(|p| p.gen == sock.gen) {
                    // Every probe on it answered: whatever else is queued
                    // (late replies) waits for the next drain, which saves
                    // the receive that would only say "nothing more".
                    sock.drained = false;
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!(uplink = sock.uplink, family = %family, error = %e,
                    "probe socket receive failed; reopening on the next probe");
                sock.readable = false;
                sock.broken = true;
                return;
            }
        }
    }
    sock.drained = false;
}

#[allow(clippy::too_many_arguments)]
fn on_packet(
    sock: &Sock,
    family: Family,
    token: &[u8; 8],
    buf: &[u8],
    dgram: &Datagram,
    pending: &mut Vec<Pending>,
    paths: &mut Paths,
    now: Instant,
    out: &mut Vec<(ProbeId, ProbeOutcome)>,
) {
    let Some(Echo {
        ident,
        seq,
        payload,
    }) = echo_reply(buf, family, sock.kind)
    else {
        return;
    };
    if sock.kind == SocketKind::Raw && ident != sock.ident {
        return; // another socket's (or host's) echo on this interface
    }
    let Some(id) = decode_payload(token, payload) else {
        debug!(uplink = sock.uplink, from = %dgram.from, seq, "echo reply without our token ignored");
        return;
    };
    let Some(i) = pending
        .iter()
        .position(|p| p.gen == sock.gen && p.id == id && p.seq == seq && p.target == dgram.from)
    else {
        debug!(uplink = sock.uplink, from = %dgram.from, seq, id = id.0,
            "unexpected, late or duplicate echo reply ignored");
        return;
    };
    let (target, sent) = (pending[i].target, pending[i].ttl);
    match paths.judge(target, sent, dgram.ttl) {
        Verdict::Reflected { first, other } => {
            // The probe stays in flight: the target's own reply may follow.
            if first {
                warn!(uplink = sock.uplink, %target, sent, arrival = dgram.ttl, other,
                    "echo replies rejected: their TTL follows the TTL we send, so something on the path reflects our requests");
            } else {
                debug!(uplink = sock.uplink, %target, sent, arrival = dgram.ttl, other,
                    "reflected echo reply rejected");
            }
            return;
        }
        Verdict::Accept { recovered: true } => {
            info!(uplink = sock.uplink, %target, arrival = dgram.ttl,
                "echo replies no longer reflected");
        }
        Verdict::Accept { recovered: false } => {}
    }
    let p = pending.swap_remove(i);
    out.push((
        p.id,
        reply_outcome(p.sent, p.sent_rt, p.timeout, dgram.rx, now),
    ));
}

/// What a reply received at `rx` (kernel timestamp, if any) or `now` says
/// of a probe sent at `sent` / `sent_rt`: a reply within its timeout, or
/// one that came too late (a timeout). Every prober judges replies so.
pub(crate) fn reply_outcome(
    sent: Instant,
    sent_rt: Option<i64>,
    timeout: Duration,
    rx: Option<i64>,
    now: Instant,
) -> ProbeOutcome {
    let rtt =
        kernel_rtt(sent, sent_rt, rx, now).unwrap_or_else(|| now.saturating_duration_since(sent));
    if rtt <= timeout {
        ProbeOutcome::Reply { rtt }
    } else {
        ProbeOutcome::Timeout
    }
}

/// Kernel receive time `rx` minus send time `sent_rt` (both CLOCK_REALTIME
/// ns), if both are known and believable against the monotonic `sent`.
pub(crate) fn kernel_rtt(
    sent: Instant,
    sent_rt: Option<i64>,
    rx: Option<i64>,
    now: Instant,
) -> Option<Duration> {
    let d = rx?.checked_sub(sent_rt?)?;
    let d = Duration::from_nanos(u64::try_from(d).ok()?);
    (d <= now.saturating_duration_since(sent) + CLOCK_STEP_SLACK).then_some(d)
}

/// Report `Timeout` for the probes past their deadline whose reply cannot be
/// among the datagrams still queued on their socket.
fn expire(
    pending: &mut Vec<Pending>,
    sock: Option<&Sock>,
    retired: &[Sock],
    now: Instant,
    out: &mut Vec<(ProbeId, ProbeOutcome)>,
) {
    let mut i = 0;
    while i < pending.len() {
        let p = &pending[i];
        let overdue = p.deadline <= now && {
            let s = sock
                .filter(|s| s.gen == p.gen)
                .or_else(|| retired.iter().find(|s| s.gen == p.gen));
            match s {
                None => true,
                Some(s) if s.drained => true,
                Some(s) => {
                    // Replies queue in arrival order: once one received
                    // after the deadline was read, this reply is not queued.
                    let past = s.last_rx.zip(p.sent_rt).is_some_and(|(rx, sent)| {
                        rx.saturating_sub(sent) > p.timeout.as_nanos() as i64
                    });
                    past || now >= p.deadline + FLOOD_GRACE
                }
            }
        };
        if overdue {
            let p = pending.swap_remove(i);
            out.push((p.id, ProbeOutcome::Timeout));
        } else {
            i += 1;
        }
    }
}

/// One datagram as `recv` saw it (its bytes are in the caller's buffer).
struct Datagram {
    len: usize,
    /// The datagram did not fit the buffer (so it is not one of ours).
    truncated: bool,
    from: IpAddr,
    /// Kernel receive timestamp, CLOCK_REALTIME ns.
    rx: Option<i64>,
    /// Arrival TTL / hop limit (`IP_TTL` / `IPV6_HOPLIMIT` control message).
    ttl: Option<u8>,
}

/// What one `recvmsg` returned.
pub(crate) struct Received {
    /// Bytes of the datagram (or frame) read into the buffer.
    pub len: usize,
    /// Bytes of the sender's address the kernel wrote.
    pub namelen: libc::socklen_t,
    /// `msg_flags` (e.g. `MSG_TRUNC`).
    pub flags: libc::c_int,
    /// Kernel receive timestamp (`SO_TIMESTAMPNS`), CLOCK_REALTIME ns.
    pub rx: Option<i64>,
    /// Arrival TTL / hop limit, on IP sockets that asked for it
    /// (`IP_RECVTTL`, `IPV6_RECVHOPLIMIT`); `None` on packet sockets.
    pub ttl: Option<u8>,
}

/// One non-blocking `recvmsg` into `buf`, the sender's address into `addr`,
/// with the kernel's receive time: `Ok(None)` when nothing is queued. Shared
/// by the ICMP prober and the bond members' packet sockets.
pub(crate) fn recv_timestamped<A>(
    fd: RawFd,
    buf: &mut [u8],
    addr: &mut MaybeUninit<A>,
) -> io::Result<Option<Received>> {
    // u64 for cmsghdr alignment; room for a timespec and a TTL cmsg and more.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = addr.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<A>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points at live buffers of the stated
    // lengths for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let (mut rx, mut ttl) = (None, None);
    // SAFETY: `msg` describes the control buffer the kernel filled; the CMSG
    // macros stay within `msg_controllen`, and the data is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            match (c.cmsg_level, c.cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    rx = Some(timespec_ns(&ts));
                }
                // Both an int (ip_cmsg_recv_ttl; RFC 3542 §6.3).
                (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let v: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    ttl = u8::try_from(v).ok();
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(Received {
        len: n as usize,
        namelen: msg.msg_namelen,
        flags: msg.msg_flags,
        rx,
        ttl,
    }))
}

/// One non-blocking `recvmsg`: `Ok(None)` when nothing is queued.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    let mut addr = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let Some(r) = recv_timestamped(fd, buf, &mut addr)? else {
        return Ok(None);
    };
    // SAFETY: the kernel wrote `namelen` bytes of a socket address (or
    // left the zeroed storage, which `sockaddr_ip` rejects).
    let from = unsafe { sockaddr_ip(addr.assume_init_ref(), r.namelen) };
    let Some(from) = from else {
        return Ok(Some(Datagram {
            len: 0,
            truncated: true,
            from: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            rx: None,
            ttl: None,
        }));
    };
    Ok(Some(Datagram {
        len: r.len,
        truncated: r.flags & libc::MSG_TRUNC != 0,
        from,
        rx: r.rx,
        ttl: r.ttl,
    }))
}

/// The IP address of a socket address the kernel returned.
///
/// # Safety
/// `len` bytes of `ss` must be initialised by the kernel.
unsafe fn sockaddr_ip(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<IpAddr> {
    let len = len as usize;
    match i32::from(ss.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says it is a sockaddr_in, and it fits.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says it is a sockaddr_in6, and it fits.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

// time_t and c_long are narrower than i64 on some 32-bit targets.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn timespec_ns(ts: &libc::timespec) -> i64 {
    (ts.tv_sec as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as i64)
}

/// CLOCK_REALTIME in ns: the clock of `SO_TIMESTAMPNS`.
pub(crate) fn realtime_ns() -> Option<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a live timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (rc == 0).then(|| timespec_ns(&ts))
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: valid fd, pointer and length of a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Big enough for any reply we accept (IPv4 header with options + echo), and
/// anything truncated to it is longer than what we accept, so never matches.
const RECV_BUF_LEN: usize = 256;

/// The random token every probe of this process carries.
fn token() -> &'static [u8; 8] {
    static TOKEN: OnceLock<[u8; 8]> = OnceLock::new();
    TOKEN.get_or_init(rand::random)
}

/// The echo reply in what an ICMP socket returned, or `None` for anything
/// else. A RAW IPv4 socket returns the IP header too; DGRAM IPv4 and both
/// IPv6 kinds return the ICMP message alone.
fn echo_reply(buf: &[u8], family: Family, kind: SocketKind) -> Option<Echo<'_>> {
    let icmp = match (family, kind) {
        (Family::V4, SocketKind::Raw) => {
            let ip = parse_ipv4(buf)?;
            if ip.protocol != IPPROTO_ICMP {
                return None;
            }
            ip.payload
        }
        _ => buf,
    };
    parse_echo_reply(family, icmp)
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
#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    #[test]
    fn token_is_stable_within_the_process() {
        assert_eq!(token(), token());
    }

    #[test]
    fn parses_raw_v4_reply_with_ip_header() {
        let payload = encode_payload(&TOKEN, ProbeId(42));
        let mut echo = echo_request(Family::V4, 0xbeef, 9, &payload);
        echo[0] = ICMP_ECHO_REPLY;
        // IHL 6: one option word; total length 48; protocol ICMP.
        let mut pkt = vec![0x46, 0, 0, 48, 0, 0, 0, 0, 64, IPPROTO_ICMP];
        pkt.resize(24, 0);
        pkt.extend_from_slice(&echo);
        let got = echo_reply(&pkt, Family::V4, SocketKind::Raw).unwrap();
        assert_eq!((got.ident, got.seq), (0xbeef, 9));
        assert_eq!(decode_payload(&TOKEN, got.payload), Some(ProbeId(42)));
        // The same bytes are not an echo reply to a DGRAM socket (no IP header).
        assert!(echo_reply(&pkt, Family::V4, SocketKind::Dgram).is_none());
    }

    #[test]
    fn requests_and_errors_are_not_replies() {
        let payload = encode_payload(&TOKEN, ProbeId(1));
        let req = echo_request(Family::V6, 0, 1, &payload);
        assert!(echo_reply(&req, Family::V6, SocketKind::Dgram).is_none());
        let mut reply = req;
        reply[0] = ICMPV6_ECHO_REPLY;
        assert!(echo_reply(&reply, Family::V6, SocketKind::Raw).is_some());
        reply[1] = 1; // nonzero code
        assert!(echo_reply(&reply, Family::V6, SocketKind::Raw).is_none());
        let mut unreachable = req;
        unreachable[0] = 1; // ICMPv6 destination unreachable
        assert!(echo_reply(&unreachable, Family::V6, SocketKind::Raw).is_none());
        assert!(echo_reply(&[0, 0, 0], Family::V4, SocketKind::Dgram).is_none());
    }

    fn pending(id: u64, gen: u64, sent: Instant, timeout: Duration) -> Pending {
        Pending {
            id: ProbeId(id),
            seq: 0,
            target: IpAddr::from([198, 18, 0, 1]),
            gen,
            ttl: 64,
            sent,
            sent_rt: Some(1_000_000_000),
            timeout,
            deadline: sent + timeout,
        }
    }

    #[test]
    fn expire_reports_only_overdue_probes() {
        let now = Instant::now();
        let t0 = now - Duration::from_secs(1);
        let mut pending = vec![
            pending(1, 0, t0, Duration::from_secs(1)),
            pending(2, 0, t0, Duration::from_secs(5)),
            pending(3, 0, t0, Duration::from_millis(999)),
        ];
        let mut out = Vec::new();
        expire(&mut pending, None, &[], now, &mut out);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id, ProbeId(2));
        out.sort_by_key(|(id, _)| *id);
        assert_eq!(
            out,
            vec![
                (ProbeId(1), ProbeOutcome::Timeout),
                (ProbeId(3), ProbeOutcome::Timeout)
            ]
        );
    }

    #[test]
    fn kernel_rtt_is_used_unless_the_clock_jumped() {
        let now = Instant::now();
        let p = pending(
            1,
            0,
            now - Duration::from_millis(20),
            Duration::from_secs(1),
        );
        let sent = p.sent_rt.unwrap();
        let rtt = |rx: i64| kernel_rtt(p.sent, p.sent_rt, Some(rx), now);
        assert_eq!(rtt(sent + 300_000), Some(Duration::from_micros(300)));
        assert_eq!(rtt(sent), Some(Duration::ZERO));
        // Received "before" it was sent, or long after: CLOCK_REALTIME stepped.
        assert_eq!(rtt(sent - 1), None);
        assert_eq!(rtt(sent + 10_000_000_000), None);
        assert_eq!(kernel_rtt(p.sent, p.sent_rt, None, now), None);
    }
}
