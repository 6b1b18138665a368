//! The forwarding-plane echo streams, run on the carrier poller's tick.
//!
//! In echo mode the gateway is probed by a stream of echoes, not by rounds
//! of the loop: on every tick of the carrier poller thread (4 ms, the
//! wake-up it already has) the streams' packet sockets are drained without
//! blocking, each stream is judged ([`EchoRun`], the same pure rule the
//! core's scenarios run), and the next echoes leave: one per
//! `echo_interval` (every third tick) through the uplink carrying the
//! family's traffic, one every `gateway_interval` through a standby, and a
//! few more per tick while one is missing (the hurry, see
//! `uplinkd_core::echo`); the first one at `echo_idle_interval` while its
//! interface carries no traffic ([`Traffic`], from the counter tap's
//! readings just before on the same tick). The loop is woken only when a
//! stream changes ([`EchoNews`]: late, stopped, back): in the steady state
//! the echoes cost no wake-up of the loop and no thread of their own.
//!
//! Few system calls per tick: every echo of the tick, all streams
//! together, leaves in one `sendmmsg` on a send-only packet socket, and the
//! streams' steady echoes fall on the same ticks (numbered by the poller),
//! so the other ticks send nothing. A stream's socket has a receive ring
//! ([`super::rx_ring`]): reading what came back is a look at shared
//! memory, no system call (without a ring, one `recvmmsg` for up to 16
//! frames). It is read only while one of its echoes is outstanding, and
//! every 12th tick otherwise. In the steady state that is one `sendmmsg`
//! every third tick, where one `sendto` per echo and one `recvfrom` per
//! frame and per socket that found nothing would be about a dozen per tick.
//!
//! The frames and their validation are the echo prober's
//! ([`super::echo`]): src = dst = the uplink's own address, UDP to port
//! 3785, sent with TTL / hop limit 255 in a frame to the gateway's MAC;
//! counted only with the per-process token, the stream's identity (uplink,
//! family) and a sequence number it sent and has not yet counted, arriving
//! with 254 on the packet socket bound to the uplink it left.
//!
//! A bond member's stream ([`Source::Member`]) runs the same way through
//! the member itself, active or backup: from the member's probe MAC and
//! probe address (src = dst = the probe address), to the gateway's MAC as
//! the member prober learned it on that member (ARP / ND), read back on a
//! packet socket bound to the member with membership for the probe MAC.
//! The member prober keeps answering the gateway's ARP / NS for the probe
//! address, so the bond's MAC is never a source on the backup's path.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::echo::ARRIVAL_TTL;
use super::echo::{decode_echo, echo_frame, echo_payload, frame_dest, parse_echo, Parsed, Sock};
use super::member::packet_socket;
use super::rx_ring::RxRing;
use crate::config::Family;
use crate::core::echo::{EchoNews, EchoRun, EchoSpec, EchoState};
use crate::core::{ProbeId, UplinkId};
use crate::netlink::counters::{OwnFrames, Traffic};

/// The probe id the stream echoes carry (the core's probe ids start at 1,
/// so a round echo of the auto trial is never taken for a stream's).
const STREAM_ID: ProbeId = ProbeId(0);
/// Without a socket (our address or the gateway's MAC not known yet), one
/// is opened again at most every this many ticks (48 ms at 4 ms).
const OPEN_EVERY_TICKS: u64 = 12;
/// A stream that stopped looks up our address and the gateway's MAC again
/// (a new router, a renumbered uplink) at most every this many ticks.
const REOPEN_EVERY_TICKS: u64 = 125;
/// At most this many frames are read from one socket per tick.
const MAX_RECV_PER_TICK: usize = 64;
/// Frames read by one `recvmmsg`.
const RECV_BATCH: usize = 16;
/// Frames longer than this are cut (an echo is under 100 bytes, a redirect
/// quoting one under 250).
const FRAME_MAX: usize = 256;
/// A stream with no echo outstanding (nothing can come back) is drained
/// only every this many ticks (anything else the filter lets in).
const DRAIN_EVERY_TICKS: u64 = 12;

/// Where a stream's echoes leave from, and so how its socket is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A routed uplink: its own address and MAC, and the gateway's MAC
    /// from the kernel's neighbour table, looked up at each open.
    Routed,
    /// A bond member: its probe address, probe MAC and the gateway's MAC
    /// as learned on the member, given by the loop (see
    /// [`EchoStreams::set_member_macs`]); without both MACs the stream has
    /// no socket (its echoes count as lost, as a routed stream's without
    /// the gateway's MAC).
    Member {
        addr: IpAddr,
        probe_mac: Option<[u8; 6]>,
        gw_mac: Option<[u8; 6]>,
    },
}

impl Source {
    /// Open the socket of a stream through `interface` to `gateway`.
    fn open(&self, interface: &str, family: Family, gateway: IpAddr) -> Result<Sock, String> {
        match *self {
            Source::Routed => Sock::open(interface, family, gateway),
            Source::Member {
                addr,
                probe_mac: Some(probe_mac),
                gw_mac: Some(gw_mac),
            } => Sock::open_member(interface, family, probe_mac, addr, gw_mac),
            Source::Member {
                probe_mac: None, ..
            } => Err(format!(
                "{interface}: its probe MAC is not known yet (not yet read from its bond)"
            )),
            Source::Member { gw_mac: None, .. } => Err(format!(
                "gateway {gateway}'s MAC not (yet) learned on {interface}"
            )),
        }
    }
}

/// What the loop is told: a change of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamNews {
    pub uplink: UplinkId,
    pub family: Family,
    pub news: EchoNews,
    /// When the newest echo was read back (CLOCK_MONOTONIC), if one was.
    pub last_back: Option<Duration>,
}

struct Stream {
    uplink: UplinkId,
    family: Family,
    interface: String,
    gateway: IpAddr,
    source: Source,
    run: EchoRun,
    /// Ticks since the stream started.
    ticks: u64,
    sock: Option<Sock>,
    /// `sock`'s receive ring, where it could be set up (else `recvmmsg`).
    ring: Option<RxRing>,
    /// The tick of the last attempt to open a socket.
    opened_at: Option<u64>,
    last_back: Option<Duration>,
    /// Echoes sent at the last sending tick, and those back since.
    last_batch: u32,
    back_since: u32,
    /// Recent loss (moving average over about 64 sending ticks), and totals.
    loss: f64,
    sent_total: u64,
    back_total: u64,
    redirects: u64,
    warned_redirect: bool,
    warned_ttl: bool,
}

#[derive(Default)]
struct Inner {
    streams: Vec<Stream>,
    /// Redirects of streams no longer running, per (uplink, family index).
    redirects_done: Vec<(UplinkId, usize, u64)>,
    tick: Duration,
    /// The socket every stream's echoes leave by, in one `sendmmsg` per
    /// tick: a packet socket of protocol 0, which receives nothing; opened
    /// on the poller thread (its network namespace).
    tx: Option<OwnedFd>,
    /// This tick's echoes: where each leaves, and its frame.
    batch: Vec<(libc::sockaddr_ll, Vec<u8>)>,
    /// Which interfaces carry traffic (the counter tap's readings, on the
    /// same thread just before): the streams run at their idle rate on the
    /// others. None: every stream at its full rate.
    traffic: Option<Arc<Traffic>>,
}

/// The streams, shared by the loop (which sets them as the core asks) and
/// the carrier poller thread (which runs them); see the module docs.
pub struct EchoStreams {
    inner: Mutex<Inner>,
    news: Mutex<Vec<StreamNews>>,
    wake: tokio::sync::Notify,
    token: [u8; 8],
    /// Cost: ticks with a stream, echoes sent, and the time spent.
    ticks: AtomicU64,
    sent: AtomicU64,
    tick_ns: AtomicU64,
    /// Frames handed to the kernel, per interface (see [`EchoStreams::frames`]).
    frames: Arc<OwnFrames>,
}

impl EchoStreams {
    /// Streams run on a tick of `tick` (the carrier interval).
    pub fn new(tick: Duration) -> EchoStreams {
        EchoStreams {
            inner: Mutex::new(Inner {
                tick,
                ..Default::default()
            }),
            news: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            token: *super::token(),
            ticks: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            tick_ns: AtomicU64::new(0),
            frames: Arc::new(OwnFrames::default()),
        }
    }

    /// The echo frames sent so far, per interface (the counter tap tells
    /// them from TCP's packets and from traffic by it).
    pub fn frames(&self) -> Arc<OwnFrames> {
        self.frames.clone()
    }

    /// Run the streams at their idle rate on the interfaces `traffic`
    /// says are idle (see `uplinkd_core::echo`).
    pub fn set_traffic(&self, traffic: Arc<Traffic>) {
        self.lock().traffic = Some(traffic);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The poller's tick changed (a reload).
    pub fn set_tick(&self, tick: Duration) {
        self.lock().tick = tick;
    }

    /// Run the stream through `uplink`'s gateway of `family` as `spec`
    /// says (None: stop it). A running stream to the same gateway keeps
    /// its judge unless `fresh`.
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &self,
        uplink: UplinkId,
        family: Family,
        interface: &str,
        gateway: IpAddr,
        source: Source,
        spec: Option<EchoSpec>,
        fresh: bool,
    ) {
        let mut inner = self.lock();
        let i = inner
            .streams
            .iter()
            .position(|s| s.uplink == uplink && s.family == family);
        match (spec, i) {
            (None, Some(i)) => {
                let s = inner.streams.swap_remove(i);
                inner
                    .redirects_done
                    .push((uplink, family.index(), s.redirects));
            }
            (None, None) => {}
            (Some(spec), Some(i))
                if !fresh
                    && inner.streams[i].gateway == gateway
                    && inner.streams[i].interface == interface =>
            {
                let s = &mut inner.streams[i];
                if s.source != source {
                    s.set_source(source);
                }
                s.run.respec(spec);
            }
            (Some(spec), i) => {
                let redirects = i.map_or(0, |i| inner.streams[i].redirects);
                let s = Stream {
                    uplink,
                    family,
                    interface: interface.to_string(),
                    gateway,
                    source,
                    run: EchoRun::new(spec),
                    ticks: 0,
                    sock: None,
                    ring: None,
                    opened_at: None,
                    last_back: None,
                    last_batch: 0,
                    back_since: 0,
                    loss: 0.0,
                    sent_total: 0,
                    back_total: 0,
                    redirects,
                    warned_redirect: redirects > 0,
                    warned_ttl: false,
                };
                match i {
                    Some(i) => inner.streams[i] = s,
                    None => inner.streams.push(s),
                }
            }
        }
    }

    /// A bond member's probe MAC or the gateway's MAC learned on it, for
    /// the stream of (uplink, family) if it runs from a member: a change
    /// opens its socket again at its next sending tick.
    pub fn set_member_macs(
        &self,
        uplink: UplinkId,
        family: Family,
        probe_mac: [u8; 6],
        gw_mac: [u8; 6],
    ) {
        let mut inner = self.lock();
        let Some(s) = inner
            .streams
            .iter_mut()
            .find(|s| s.uplink == uplink && s.family == family)
        else {
            return;
        };
        if let Source::Member { addr, .. } = s.source {
            let source = Source::Member {
                addr,
                probe_mac: Some(probe_mac),
                gw_mac: Some(gw_mac),
            };
            if s.source != source {
                s.set_source(source);
            }
        }
    }

    /// Stop every stream (a reload: they name uplinks by index).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.streams.clear();
        inner.redirects_done.clear();
    }

    /// Redirects the gateway answered this stream's echoes with.
    pub fn redirects(&self, uplink: UplinkId, family: Family) -> u64 {
        let inner = self.lock();
        let running: u64 = inner
            .streams
            .iter()
            .filter(|s| s.uplink == uplink && s.family == family)
            .map(|s| s.redirects)
            .sum();
        let done: u64 = inner
            .redirects_done
            .iter()
            .filter(|r| r.0 == uplink && r.1 == family.index())
            .map(|r| r.2)
            .sum();
        running + done
    }

    /// (recent loss, when the newest echo came back (CLOCK_MONOTONIC),
    /// echoes sent, echoes back) of the stream of (uplink, family).
    pub fn stats(
        &self,
        uplink: UplinkId,
        family: Family,
    ) -> Option<(f64, Option<Duration>, u64, u64)> {
        let inner = self.lock();
        let s = inner
            .streams
            .iter()
            .find(|s| s.uplink == uplink && s.family == family)?;
        Some((s.loss, s.last_back, s.sent_total, s.back_total))
    }

    /// Whether the stream of (uplink, family) runs at its idle rate now.
    pub fn idle_rate(&self, uplink: UplinkId, family: Family) -> bool {
        self.lock()
            .streams
            .iter()
            .any(|s| s.uplink == uplink && s.family == family && s.run.slow())
    }

    /// The news since the last call, oldest first.
    pub fn take(&self, out: &mut Vec<StreamNews>) {
        out.append(&mut self.news.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Resolves when a stream changed.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// (ticks with a stream, echoes sent, mean cost of such a tick).
    pub fn cost(&self) -> (u64, u64, Duration) {
        let n = self.ticks.load(Ordering::Relaxed);
        let ns = self.tick_ns.load(Ordering::Relaxed);
        (
            n,
            self.sent.load(Ordering::Relaxed),
            Duration::from_nanos(ns.checked_div(n).unwrap_or(0)),
        )
    }

    /// Tick `polls` of the poller (counted from its start), at `at`
    /// (CLOCK_MONOTONIC): drain, judge, send. The steady echoes leave on
    /// ticks numbered by `polls`, so every stream's fall on the same ticks
    /// (one `sendmmsg`, and the other ticks send nothing).
    pub fn tick(&self, polls: u64, at: Duration) {
        let mut inner = self.lock();
        if inner.streams.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let tick = inner.tick;
        let traffic = inner.traffic.clone();
        // Drain and judge every stream first, and tell the loop at once:
        // nothing below may delay a stop.
        let mut news = Vec::new();
        for s in &mut inner.streams {
            if s.run.outstanding() > 0 || s.ticks % DRAIN_EVERY_TICKS == 0 {
                s.drain(&self.token, at);
            }
            if let Some(t) = &traffic {
                // Before its echoes are due (see `EchoRun::set_idle`).
                s.run.set_idle(t.idle(&s.interface, at));
            }
            if let Some(n) = s.run.judge() {
                if matches!(n, EchoNews::Stopped { .. }) {
                    // Looked up again only if it stays stopped a while.
                    s.opened_at = Some(s.ticks);
                }
                news.push(StreamNews {
                    uplink: s.uplink,
                    family: s.family,
                    news: n,
                    last_back: s.last_back,
                });
            }
        }
        if !news.is_empty() {
            self.news
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&mut news);
            self.wake.notify_one();
        }
        // Sockets to open, opened without the lock (the loop's `set` must
        // not wait) and between judging and sending: a lookup of our
        // address and the gateway's MAC is a netlink dump, which waits for
        // the kernel's RTNL lock whenever routes or links change anywhere
        // on the host (measured: 12 ms each while the bench injected a
        // fault, which held up the stop of the other family's stream).
        let due: Vec<(UplinkId, Family, String, IpAddr, Source)> = inner
            .streams
            .iter_mut()
            .filter_map(|s| {
                let due = s.run.due(polls, tick) > 0 && s.open_due();
                due.then(|| {
                    let source = s.source.clone();
                    (s.uplink, s.family, s.interface.clone(), s.gateway, source)
                })
            })
            .collect();
        if !due.is_empty() {
            drop(inner);
            let opened: Vec<_> = due
                .into_iter()
                .map(|(u, f, i, g, src)| {
                    let r = src.open(&i, f, g);
                    (u, f, g, src, r)
                })
                .collect();
            inner = self.lock();
            for (u, f, g, src, r) in opened {
                if let Some(s) = inner
                    .streams
                    .iter_mut()
                    .find(|s| s.uplink == u && s.family == f && s.gateway == g && s.source == src)
                {
                    s.install(r);
                }
            }
        }
        let mut sent = 0u64;
        let mut batch = std::mem::take(&mut inner.batch);
        batch.clear();
        for s in &mut inner.streams {
            let n = s.run.due(polls, tick);
            if n > 0 {
                s.account(n);
                let before = batch.len();
                for _ in 0..n {
                    let seq = s.run.send();
                    sent += 1;
                    // Without a socket: counted as sent, and so as lost.
                    batch.extend(s.frame(&self.token, seq));
                }
                // Counted before the send, as a probe is (a frame the
                // kernel refuses, its interface down, moves no counter).
                self.frames.add(&s.interface, (batch.len() - before) as u64);
            }
            s.ticks += 1;
        }
        if !batch.is_empty() {
            if inner.tx.is_none() {
                // Protocol 0, never bound: it receives nothing; each
                // frame names its interface and protocol.
                inner.tx = packet_socket()
                    .map_err(|e| warn!(error = %e, "forwarding-plane echoes: no socket to send by"))
                    .ok();
            }
            if let Some(fd) = &inner.tx {
                send_batch(fd, &batch);
            }
        }
        inner.batch = batch;
        drop(inner);
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.sent.fetch_add(sent, Ordering::Relaxed);
        self.tick_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

impl crate::netlink::carrier::TickHook for EchoStreams {
    fn tick(&self, polls: u64, at: Duration) {
        EchoStreams::tick(self, polls, at)
    }
}

impl Stream {
    /// Before sending `n`: the last batch's loss into the moving average.
    fn account(&mut self, n: u32) {
        if self.last_batch > 0 {
            let lost = self.last_batch.saturating_sub(self.back_since);
            let sample = f64::from(lost) / f64::from(self.last_batch);
            self.loss += (sample - self.loss) / 64.0;
        }
        self.last_batch = n;
        self.back_since = 0;
        self.sent_total += u64::from(n);
    }

    /// A socket is to be opened now: there is none (at most every
    /// `OPEN_EVERY_TICKS`), or the stream stopped a while ago (every
    /// `REOPEN_EVERY_TICKS`, counted from the stop).
    fn open_due(&mut self) -> bool {
        let every = match (&self.sock, self.run.state) {
            (None, _) => OPEN_EVERY_TICKS,
            (Some(_), EchoState::Stopped) => REOPEN_EVERY_TICKS,
            _ => return false,
        };
        if self
            .opened_at
            .is_some_and(|t| self.ticks < t.saturating_add(every))
        {
            return false;
        }
        self.opened_at = Some(self.ticks);
        true
    }

    /// Another source (a member's MACs learned or changed): the socket is
    /// opened again at the next sending tick; the judge keeps running.
    fn set_source(&mut self, source: Source) {
        self.source = source;
        self.set_sock(None);
        self.opened_at = None;
    }

    fn install(&mut self, r: Result<Sock, String>) {
        match r {
            Ok(s) => {
                debug!(interface = %self.interface, family = %self.family, addr = %s.addr,
                    gw_mac = ?s.gw_mac, "opened forwarding-plane echo stream socket");
                self.set_sock(Some(s));
            }
            Err(e) => {
                let had = self.sock.is_some();
                self.set_sock(None);
                if had || self.ticks == 0 {
                    debug!(interface = %self.interface, family = %self.family, error = %e,
                        "forwarding-plane echo stream: no socket (retried)");
                }
            }
        }
    }

    /// Use `sock` from now on, with a receive ring where the kernel gives
    /// one (the frames it queued before the ring are dropped: none can be
    /// an echo of this socket's).
    fn set_sock(&mut self, sock: Option<Sock>) {
        self.ring = None;
        self.sock = sock;
        let Some(s) = &self.sock else {
            return;
        };
        match RxRing::attach(&s.fd) {
            Ok(r) => {
                recv_all(s.fd.as_raw_fd(), |_, _| {});
                self.ring = Some(r);
            }
            Err(e) => debug!(interface = %self.interface, family = %self.family, error = %e,
                "forwarding-plane echo stream: no receive ring, read by recvmmsg"),
        }
    }

    /// The frame of echo `seq` and where it leaves (None without a socket).
    fn frame(&self, token: &[u8; 8], seq: u32) -> Option<(libc::sockaddr_ll, Vec<u8>)> {
        let sock = self.sock.as_ref()?;
        let payload = echo_payload(token, STREAM_ID, self.uplink, self.family, seq);
        Some((
            frame_dest(sock.ifindex, sock.gw_mac, self.family),
            echo_frame(sock.mac, sock.gw_mac, sock.addr, &payload),
        ))
    }

    /// Read every frame queued (from the receive ring, or without blocking,
    /// `RECV_BATCH` per `recvmmsg`) and count the valid echoes.
    fn drain(&mut self, token: &[u8; 8], at: Duration) {
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        let fd = sock.fd.as_raw_fd();
        let addr = sock.addr;
        let mut ring = self.ring.take();
        let mut take = |frame: &[u8], pkttype: u8| {
            if pkttype != libc::PACKET_OUTGOING {
                self.count(token, frame, addr, at);
            }
        };
        match ring.as_mut() {
            Some(r) => r.drain(MAX_RECV_PER_TICK, &mut take),
            None => recv_all(fd, &mut take),
        }
        self.ring = ring;
    }

    /// One frame read back: a redirect, or one of our echoes.
    fn count(&mut self, token: &[u8; 8], frame: &[u8], addr: IpAddr, at: Duration) {
        match parse_echo(frame, self.family, addr) {
            Some(Parsed::Redirect) => {
                self.redirects += 1;
                if !self.warned_redirect {
                    self.warned_redirect = true;
                    warn!(uplink = self.uplink, family = %self.family,
                        "the gateway answers forwarding-plane echoes with ICMP redirects: turn redirects off on the router's interface toward this server (Linux: net.ipv4.conf.<if>.send_redirects=0; IPv6 routers: no ipv6 redirects), or set gateway_probe = \"icmp\"; this host does not accept them");
                }
            }
            Some(Parsed::Echo { ttl, payload }) => {
                let Some((id, u, f, seq)) = decode_echo(token, payload) else {
                    return; // not our token
                };
                if id != STREAM_ID || u != self.uplink || f != self.family.index() {
                    return;
                }
                if ttl != ARRIVAL_TTL {
                    if !self.warned_ttl {
                        self.warned_ttl = true;
                        info!(uplink = self.uplink, family = %self.family, ttl,
                            "forwarding-plane echo rejected: arrival TTL is not 254 (not forwarded exactly once)");
                    }
                    return;
                }
                if self.run.back(seq) {
                    self.last_back = Some(at);
                    self.back_since += 1;
                    self.back_total += 1;
                }
            }
            None => {}
        }
    }
}

/// Send every frame of `batch` with `sendmmsg`, past any that fails (an
/// interface gone down fails its frames only).
fn send_batch(fd: &OwnedFd, batch: &[(libc::sockaddr_ll, Vec<u8>)]) {
    let mut iovs: Vec<libc::iovec> = batch
        .iter()
        .map(|(_, f)| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: all-zero msghdrs are valid; each is pointed at a live
    // sockaddr_ll and iovec below.
    let mut msgs: Vec<libc::mmsghdr> = batch
        .iter()
        .zip(iovs.iter_mut())
        .map(|((sll, _), iov)| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (sll as *const libc::sockaddr_ll as *mut libc::sockaddr_ll).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut i = 0;
    // Each round sends at least one frame or skips the one that failed.
    for _ in 0..=msgs.len() {
        if i >= msgs.len() {
            break;
        }
        let rest = &mut msgs[i..];
        // SAFETY: valid fd; `rest` points at live headers, names and buffers.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            i += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        let ifindex = batch[i].0.sll_ifindex;
        debug!(ifindex, error = %e, "forwarding-plane echo not sent");
        i += 1;
    }
}

/// Hand each frame queued on `fd` (at most `MAX_RECV_PER_TICK`, read
/// without blocking, `RECV_BATCH` per `recvmmsg`) to `f` with its packet
/// type.
fn recv_all(fd: libc::c_int, mut f: impl FnMut(&[u8], u8)) {
    let mut bufs = [[0u8; FRAME_MAX]; RECV_BATCH];
    let mut got = [(0usize, 0u8); RECV_BATCH];
    for _ in 0..MAX_RECV_PER_TICK / RECV_BATCH {
        let n = recv_batch(fd, &mut bufs, &mut got);
        for (buf, &(len, pkttype)) in bufs.iter().zip(&got[..n]) {
            f(&buf[..len.min(FRAME_MAX)], pkttype);
        }
        if n < RECV_BATCH {
            break;
        }
    }
}

/// One `recvmmsg` without blocking into `bufs`: how many frames were read
/// (0 when none is queued), each one's (length, packet type) in `got`.
fn recv_batch(
    fd: libc::c_int,
    bufs: &mut [[u8; FRAME_MAX]; RECV_BATCH],
    got: &mut [(usize, u8); RECV_BATCH],
) -> usize {
    // SAFETY: all-zero sockaddr_lls and msghdrs are valid.
    let mut slls: [libc::sockaddr_ll; RECV_BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
    for ((m, iov), (buf, sll)) in msgs
        .iter_mut()
        .zip(iovs.iter_mut())
        .zip(bufs.iter_mut().zip(slls.iter_mut()))
    {
        iov.iov_base = buf.as_mut_ptr().cast();
        iov.iov_len = FRAME_MAX;
        m.msg_hdr.msg_name = (sll as *mut libc::sockaddr_ll).cast();
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    for _ in 0..3 {
        // SAFETY: valid fd; every header points at live buffers of the
        // stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return 0;
        }
        let n = n as usize;
        for (g, (m, sll)) in got.iter_mut().zip(msgs.iter().zip(&slls)).take(n) {
            *g = (m.msg_len as usize, sll.sll_pkttype);
        }
        return n;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EchoSpec {
        let p = crate::config::ProbeConfig::default();
        EchoSpec::new(p.echo_interval, &p)
    }

    fn source(probe_mac: Option<[u8; 6]>, gw_mac: Option<[u8; 6]>) -> Source {
        Source::Member {
            addr: "198.18.1.10".parse().unwrap(),
            probe_mac,
            gw_mac,
        }
    }

    #[test]
    fn a_member_stream_gets_its_macs_and_keeps_its_judge() {
        let streams = EchoStreams::new(Duration::from_millis(4));
        let gw: IpAddr = "198.18.1.1".parse().unwrap();
        streams.set(
            1,
            Family::V4,
            "eth1",
            gw,
            source(None, None),
            Some(spec()),
            false,
        );
        // Without the MACs: no socket (the echoes count as lost).
        let err = source(None, None)
            .open("eth1", Family::V4, gw)
            .err()
            .unwrap();
        assert!(err.contains("probe MAC"), "{err}");
        let err = source(Some([2; 6]), None)
            .open("eth1", Family::V4, gw)
            .err()
            .unwrap();
        assert!(err.contains("198.18.1.1"), "{err}");
        {
            let mut inner = streams.lock();
            let s = &mut inner.streams[0];
            s.run.send();
            s.opened_at = Some(0);
        }
        // Learned: the socket is opened again at once, the judge runs on.
        streams.set_member_macs(1, Family::V4, [2; 6], [4; 6]);
        {
            let inner = streams.lock();
            let s = &inner.streams[0];
            assert_eq!(s.source, source(Some([2; 6]), Some([4; 6])));
            assert_eq!(s.opened_at, None);
            assert_eq!(s.run.outstanding(), 1, "same judge");
        }
        // Another stream's family, or a routed stream: untouched.
        streams.set_member_macs(1, Family::V6, [6; 6], [8; 6]);
        streams.set(
            0,
            Family::V4,
            "eth0",
            gw,
            Source::Routed,
            Some(spec()),
            false,
        );
        streams.set_member_macs(0, Family::V4, [6; 6], [8; 6]);
        let inner = streams.lock();
        assert_eq!(inner.streams.len(), 2);
        assert_eq!(inner.streams[1].source, Source::Routed);
    }
}
