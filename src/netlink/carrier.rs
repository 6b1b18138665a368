//! The fast carrier poller.
//!
//! Why poll: the kernel's linkwatch handles link-state changes of ordinary
//! devices at most once per second, globally, whenever other interfaces on
//! the host are changing state, so RTM_NEWLINK events (and the kernel's own
//! `ignore_routes_with_linkdown` fallback) can be up to 1 s late. But
//! `IFLA_CARRIER` in an RTM_GETLINK answer is `netif_carrier_ok()` read live
//! (net/core/rtnetlink.c, rtnl_fill_ifinfo), so polling it every few
//! milliseconds sees a carrier loss within one period. Bonding's miimon polls
//! for the same reason.
//!
//! Shape: one std thread that does nothing else (the daemon's loop wakes
//! only when it sends a sample), no runtime, no allocation per poll. Every
//! `interval`, for each interface, one ETHTOOL_GLINK ioctl, and only when
//! that differs from the last answer (or the interface is missing) a full
//! RTM_GETLINK by name (so a deleted and re-created interface is found again
//! without any cache), with `IFLA_EXT_MASK = RTEXT_FILTER_SKIP_STATS` so the
//! answer leaves out the 64-bit counters. The daemon marks the interfaces
//! that carry a default route "hot"; the others are read every Nth poll
//! only ([`spawn_carrier_poller_hot`]). Samples are sent only on change, plus
//! once at start for each interface. Sleeps are absolute
//! (`clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`) on multiples of the
//! interval, so the period does not drift with the work done in it and the
//! daemon's loop, which rounds its own timers to the same grid, wakes on
//! the same timer interrupt; a period that is overrun entirely is skipped,
//! not made up for with a burst.
//!
//! Side effect: while the poller reads a device, the kernel's delayed link
//! event for it tends to come as soon as the read (answering GETLINK appears
//! to run the device's pending linkwatch work, `linkwatch_sync_dev()` in
//! recent kernels) instead of up to a second late. Nothing here relies on it:
//! older kernels do not do it. `tests/netlink.rs`
//! (`carrier_poller_is_fast_while_another_interface_flaps`) shows it on the
//! running kernel; figures belong in bench/.
//!
//! Namespace: the socket is opened by [`spawn_carrier_poller`] on the calling
//! thread, so it belongs to the network namespace of that thread (the poller
//! thread would inherit it too). Create the poller from a thread inside the
//! namespace you mean.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::counters::CounterTap;
use super::NetlinkError;

/// One observation of an interface, sent when it differs from the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierSample {
    /// The configured interface name (as given to the poller).
    pub interface: String,
    /// Its current ifindex; `None` when absent.
    pub ifindex: Option<u32>,
    /// The interface exists.
    pub present: bool,
    /// IFF_UP.
    pub admin_up: bool,
    /// IFLA_CARRIER, forced false when not admin up (the kernel already
    /// reports 0 for a device that is not running).
    pub carrier: bool,
    /// When it was read (CLOCK_MONOTONIC): the daemon's
    /// loop handles it at this instant, however late it takes it in.
    pub at: Duration,
}

// include/uapi/linux/netlink.h, rtnetlink.h, if_link.h.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_CARRIER: u16 = 33;
/// RTEXT_FILTER_SKIP_STATS: leave IFLA_STATS/IFLA_STATS64 out of the answer.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFF_UP: u32 = 1;

/// Shortest accepted interval. Below this the poller is a busy loop.
const MIN_INTERVAL: Duration = crate::config::CARRIER_INTERVAL_MIN;
/// The stop flag is checked at least this often, even with long intervals.
const MAX_SLEEP_CHUNK: Duration = Duration::from_millis(100);
/// Receive buffer for one answer; a GETLINK answer without stats and VF
/// info is a few KiB at most.
const ANSWER_BUF: usize = 32 << 10;
/// At most this many stale datagrams (answers to timed-out requests) are
/// skipped while waiting for the current answer.
const MAX_STALE: usize = 16;
/// Repeated poll errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Start the poller thread for `interfaces` (names), sampling every
/// `interval`, until `stop` is set or the receiver of `tx` is dropped.
///
/// The socket is opened here, on the calling thread, in that thread's
/// network namespace (see the module docs).
pub fn spawn_carrier_poller(
    interfaces: Vec<String>,
    interval: Duration,
    tx: UnboundedSender<CarrierSample>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, NetlinkError> {
    let all = Arc::new(AtomicU64::new(u64::MAX));
    spawn_carrier_poller_hot(interfaces, interval, (all, 1), None, Vec::new(), tx, stop)
}

/// [`spawn_carrier_poller`], reading every `interval` only the "hot"
/// interfaces: bit `i` of `hot.0` set for `interfaces[i]` (those carrying
/// traffic; the caller updates it at any time). The others are read every
/// `hot.1`-th poll. Interfaces past the 64th are always hot. With `watch`,
/// each poll also runs [`ReplyWatch::check`] at the poll's grid time; and
/// each of `hooks` (the counter tap, which reads every few polls; the
/// forwarding-plane echo streams) at the same time, before the check.
pub fn spawn_carrier_poller_hot(
    interfaces: Vec<String>,
    interval: Duration,
    hot: (Arc<AtomicU64>, u32),
    watch: Option<Arc<ReplyWatch>>,
    hooks: Vec<Arc<dyn TickHook>>,
    tx: UnboundedSender<CarrierSample>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, NetlinkError> {
    if interval < MIN_INTERVAL {
        return Err(NetlinkError::Invalid {
            op: "start carrier poller".into(),
            reason: format!("interval {interval:?} is below {MIN_INTERVAL:?}"),
        });
    }
    let first = interfaces.first().map(String::as_str).unwrap_or("none");
    let name = truncate(&format!("carrier:{first}"), 15);
    let reader = CarrierReader::new(interfaces)?;
    std::thread::Builder::new()
        .name(name)
        .spawn(move || run(reader, interval, hot, (watch.as_deref(), &hooks), &stop, tx))
        .map_err(|e| NetlinkError::io("spawn carrier poller thread", e))
}

fn run(
    mut reader: CarrierReader,
    interval: Duration,
    (hot, cold_every): (Arc<AtomicU64>, u32),
    (watch, hooks): (Option<&ReplyWatch>, &[Arc<dyn TickHook>]),
    stop: &AtomicBool,
    tx: UnboundedSender<CarrierSample>,
) {
    // Polls on multiples of `interval` of CLOCK_MONOTONIC, which the
    // daemon's loop aligns its timers to as well.
    let mut next = {
        let now = monotonic_now();
        let n = interval.as_nanos().max(1);
        Duration::from_nanos((now.as_nanos().div_ceil(n) * n) as u64)
    };
    let mut polls: u64 = 0;
    let mut out = Vec::new();
    let cold_every = u64::from(cold_every.max(1));
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        let mask = match polls % cold_every {
            0 => u64::MAX,
            _ => hot.load(Ordering::Relaxed),
        };
        reader.read_masked(mask, &mut out);
        for s in out.drain(..) {
            if tx.send(s).is_err() {
                return;
            }
        }
        for h in hooks {
            h.tick(polls, next);
        }
        if let Some(w) = watch {
            w.check(next);
        }
        polls += 1;
        next += interval;
        let now = monotonic_now();
        if next < now {
            // We fell a whole period behind (suspended, starved): skip the
            // missed polls rather than run them back to back.
            next = now;
        }
        sleep_until(next, stop);
    }
    tracing::debug!(polls, cpu = ?thread_cpu_time(), "carrier poller stopped");
}

/// Work that rides the poller's tick (no thread or wake-up of its own):
/// called on every poll with the poll count and its grid time
/// (CLOCK_MONOTONIC).
pub trait TickHook: Send + Sync {
    fn tick(&self, polls: u64, at: Duration);
}

impl TickHook for CounterTap {
    fn tick(&self, polls: u64, at: Duration) {
        CounterTap::tick(self, polls, at)
    }
}

/// Reply checks that the daemon's loop hands to the poller thread while it
/// sleeps, so that it does not wake up only to find the replies it expected.
///
/// A probe round is one wake-up of the loop to send; without this, a second
/// one a poll later reads the replies, which are nearly always there. With
/// it, the loop lists the sockets that each have exactly one probe in
/// flight, with the time the core would look at that probe's reply (see
/// `Core::reply_checks`), and sleeps until its next real deadline. At that
/// time the poller `poll(2)`s those sockets (no read: the loop reads them
/// later, with the kernel's receive timestamps): all readable, the entries
/// are dropped; one not readable (or in error), the loop is woken at once,
/// as it would have been without a watch.
#[derive(Debug)]
pub struct ReplyWatch {
    /// Earliest due time of an entry (CLOCK_MONOTONIC ns); `u64::MAX` when
    /// there is none (then a poll costs one atomic load).
    earliest: AtomicU64,
    /// (socket, due time in CLOCK_MONOTONIC ns).
    entries: std::sync::Mutex<Vec<(RawFd, u64)>>,
    woke: tokio::sync::Notify,
}

impl Default for ReplyWatch {
    fn default() -> Self {
        ReplyWatch {
            earliest: AtomicU64::new(u64::MAX),
            entries: Default::default(),
            woke: Default::default(),
        }
    }
}

/// At most this many sockets are checked in one `poll(2)`; a watch with
/// more due at once wakes the loop instead.
const WATCH_MAX: usize = 16;

impl ReplyWatch {
    /// Replace the entries: (socket, due time on CLOCK_MONOTONIC). The
    /// sockets must stay open until the next `set` or `clear`.
    pub fn set(&self, entries: impl IntoIterator<Item = (RawFd, Duration)>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.clear();
        e.extend(
            entries
                .into_iter()
                .map(|(fd, due)| (fd, u64::try_from(due.as_nanos()).unwrap_or(u64::MAX - 1))),
        );
        let earliest = e.iter().map(|x| x.1).min().unwrap_or(u64::MAX);
        self.earliest.store(earliest, Ordering::Release);
    }

    /// No more checks (the loop is awake and reads for itself).
    pub fn clear(&self) {
        if self.earliest.load(Ordering::Acquire) != u64::MAX {
            self.set([]);
        }
    }

    /// Resolves when a check found a reply missing (or at once if one did
    /// since the last call).
    pub async fn missing(&self) {
        self.woke.notified().await
    }

    /// Check the entries due by `now` (CLOCK_MONOTONIC). Returns true if it
    /// woke the loop (and dropped every entry).
    pub fn check(&self, now: Duration) -> bool {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        if self.earliest.load(Ordering::Acquire) > now {
            return false;
        }
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; WATCH_MAX];
        let mut n = 0;
        let mut answered = true;
        for &(fd, _) in e.iter().filter(|x| x.1 <= now) {
            if n == WATCH_MAX {
                answered = false;
                break;
            }
            fds[n] = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
        if answered && n > 0 {
            // Timeout 0: only asks what is queued now.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, 0) };
            let bad = libc::POLLERR | libc::POLLNVAL | libc::POLLHUP;
            answered = r >= 0
                && fds[..n]
                    .iter()
                    .all(|p| p.revents & libc::POLLIN != 0 && p.revents & bad == 0);
        }
        if answered {
            e.retain(|x| x.1 > now);
            let earliest = e.iter().map(|x| x.1).min().unwrap_or(u64::MAX);
            self.earliest.store(earliest, Ordering::Release);
            false
        } else {
            e.clear();
            self.earliest.store(u64::MAX, Ordering::Release);
            drop(e);
            self.woke.notify_one();
            true
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The RTM_GETLINK request for one interface; only the sequence number
/// (bytes 8..12) changes between polls.
fn getlink_request(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set below
    b.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    b.extend_from_slice(&[0u8; IFINFOMSG_LEN]); // AF_UNSPEC, ifindex 0: look up by name
    push_attr(
        &mut b,
        IFLA_EXT_MASK,
        &RTEXT_FILTER_SKIP_STATS.to_ne_bytes(),
    );
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    push_attr(&mut b, IFLA_IFNAME, &cname);
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b
}

fn push_attr(b: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    while b.len() % 4 != 0 {
        b.push(0);
    }
}

fn open_socket(recv_timeout: Duration) -> std::io::Result<OwnedFd> {
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // nl_pid 0: the kernel picks our port id; no multicast groups.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: recv_timeout.as_secs() as libc::time_t,
        tv_usec: recv_timeout.subsec_micros() as libc::suseconds_t,
    };
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    ifindex: Option<u32>,
    admin_up: bool,
    carrier: bool,
}

/// The kernel's answer to one GETLINK.
#[derive(Debug)]
enum Answer {
    Link(State),
    /// ENODEV: no such interface.
    Absent,
    /// No answer within the receive timeout.
    Timeout,
    Error(std::io::Error),
}

/// Reads the live carrier of a fixed set of interfaces on demand, on the
/// calling thread: what the daemon calls from its loop on every tick, and
/// what the poller thread calls every interval.
///
/// Each read first asks ETHTOOL_GLINK (one ioctl, ~1 µs: `netif_running() &&
/// get_link()`, i.e. `netif_carrier_ok()` for most drivers) and falls back to
/// a full RTM_GETLINK (~6 µs) when the answer differs from the last one, the
/// driver has no `get_link`, or the interface is missing, so ifindex and
/// admin state in a sample are always from the full answer.
pub struct CarrierReader {
    sock: OwnedFd,
    ioctl_sock: Option<OwnedFd>,
    interfaces: Vec<String>,
    requests: Vec<Vec<u8>>,
    last: Vec<Option<State>>,
    /// Per interface: ETHTOOL_GLINK works for it.
    glink: Vec<bool>,
    buf: Vec<u8>,
    seq: u32,
    last_error_log: Option<Instant>,
}

impl CarrierReader {
    /// Open the sockets on the calling thread (its network namespace).
    pub fn new(interfaces: Vec<String>) -> Result<Self, NetlinkError> {
        let mut requests = Vec::with_capacity(interfaces.len());
        for name in &interfaces {
            if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
                return Err(NetlinkError::Invalid {
                    op: format!("start carrier reader for {name:?}"),
                    reason: "not a valid interface name".into(),
                });
            }
            requests.push(getlink_request(name));
        }
        let sock = open_socket(Duration::from_millis(100))
            .map_err(|e| NetlinkError::io("open carrier netlink socket", e))?;
        let ioctl_sock = {
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let n = interfaces.len();
        Ok(CarrierReader {
            sock,
            ioctl_sock,
            interfaces,
            requests,
            last: vec![None; n],
            glink: vec![true; n],
            buf: vec![0; ANSWER_BUF],
            seq: 0,
            last_error_log: None,
        })
    }

    /// Read every interface; push a sample for each one that changed since
    /// the last read (every interface on the first read).
    pub fn read_changes(&mut self, out: &mut Vec<CarrierSample>) {
        self.read_masked(u64::MAX, out)
    }

    /// [`Self::read_changes`] for the interfaces whose bit is set in `mask`
    /// (bit `i` for interface `i`; those past the 64th are always read).
    pub fn read_masked(&mut self, mask: u64, out: &mut Vec<CarrierSample>) {
        for i in 0..self.interfaces.len() {
            if i < 64 && mask & (1 << i) == 0 {
                continue;
            }
            if let Some(s) = self.read_one(i) {
                out.push(s);
            }
        }
    }

    /// ETHTOOL_GLINK (include/uapi/linux/ethtool.h): Some(link) or None when
    /// it cannot answer (no such device, no get_link, no socket).
    fn glink(&mut self, i: usize) -> Option<bool> {
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        const ETHTOOL_GLINK: u32 = 0x0000000a;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        if !self.glink[i] {
            return None;
        }
        let fd = self.ioctl_sock.as_ref()?.as_raw_fd();
        let mut ev = EthtoolValue {
            cmd: ETHTOOL_GLINK,
            data: 0,
        };
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(self.interfaces[i].as_bytes()) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut ev as *mut EthtoolValue).cast();
        let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) {
                self.glink[i] = false;
            }
            return None;
        }
        Some(ev.data != 0)
    }

    /// Read interface `i`; the sample if it changed.
    fn read_one(&mut self, i: usize) -> Option<CarrierSample> {
        if let (Some(last), Some(link)) = (self.last[i], self.glink(i)) {
            if last.ifindex.is_some() && last.carrier == link {
                return None;
            }
        }
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        self.requests[i][8..12].copy_from_slice(&seq.to_ne_bytes());
        let fd = self.sock.as_raw_fd();
        let answer = match send_all(fd, &self.requests[i]) {
            Ok(()) => read_answer(fd, seq, &mut self.buf),
            Err(e) => Answer::Error(e),
        };
        let state = match answer {
            Answer::Link(s) => s,
            Answer::Absent => State {
                ifindex: None,
                admin_up: false,
                carrier: false,
            },
            Answer::Timeout => {
                self.log_error(i, "no answer to RTM_GETLINK");
                return None;
            }
            Answer::Error(e) => {
                self.log_error(i, &e.to_string());
                return None;
            }
        };
        if state.ifindex.is_some() {
            // A re-created interface may have a driver with get_link.
            self.glink[i] =
                self.glink[i] || self.last[i].is_none_or(|l| l.ifindex != state.ifindex);
        }
        if self.last[i] == Some(state) {
            return None;
        }
        self.last[i] = Some(state);
        Some(CarrierSample {
            interface: self.interfaces[i].clone(),
            ifindex: state.ifindex,
            present: state.ifindex.is_some(),
            admin_up: state.admin_up,
            carrier: state.carrier,
            at: monotonic_now(),
        })
    }

    fn log_error(&mut self, i: usize, what: &str) {
        let now = Instant::now();
        if self
            .last_error_log
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_EVERY)
        {
            return;
        }
        self.last_error_log = Some(now);
        tracing::warn!(
            interface = %self.interfaces[i],
            error = what,
            "carrier poll failed (logged at most every {ERROR_LOG_EVERY:?})"
        );
    }
}

fn send_all(fd: RawFd, req: &[u8]) -> std::io::Result<()> {
    loop {
        let n = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
        if n >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Receive until the answer to `seq` arrives (skipping stale answers to
/// earlier, timed-out requests), the receive timeout fires, or too many
/// stale datagrams were seen.
fn read_answer(fd: RawFd, seq: u32, buf: &mut [u8]) -> Answer {
    let mut stale = 0;
    while stale < MAX_STALE {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Answer::Timeout,
                Some(libc::EINTR) => continue,
                _ => return Answer::Error(e),
            }
        }
        match parse_answer(&buf[..n as usize], seq) {
            Some(a) => return a,
            None => stale += 1,
        }
    }
    Answer::Timeout
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The answer to `seq` in this datagram, `None` if it holds none.
fn parse_answer(data: &[u8], seq: u32) -> Option<Answer> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= data.len() {
        let len = u32_at(data, off) as usize;
        if len < NLMSG_HDRLEN || off + len > data.len() {
            return None;
        }
        let msg = &data[off..off + len];
        off += (len + 3) & !3;
        if u32_at(msg, 8) != seq {
            continue;
        }
        match u16_at(msg, 4) {
            NLMSG_ERROR if msg.len() >= NLMSG_HDRLEN + 4 => {
                let err = u32_at(msg, NLMSG_HDRLEN) as i32;
                return Some(match -err {
                    libc::ENODEV => Answer::Absent,
                    0 => Answer::Error(std::io::Error::other("unexpected ack")),
                    errno => Answer::Error(std::io::Error::from_raw_os_error(errno)),
                });
            }
            RTM_NEWLINK if msg.len() >= NLMSG_HDRLEN + IFINFOMSG_LEN => {
                let ifindex = u32_at(msg, NLMSG_HDRLEN + 4);
                let flags = u32_at(msg, NLMSG_HDRLEN + 8);
                let admin_up = flags & IFF_UP != 0;
                let mut carrier = false;
                let mut a = NLMSG_HDRLEN + IFINFOMSG_LEN;
                while a + 4 <= msg.len() {
                    let alen = u16_at(msg, a) as usize;
                    let kind = u16_at(msg, a + 2) & 0x3fff;
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    if kind == IFLA_CARRIER && alen >= 5 {
                        carrier = msg[a + 4] != 0;
                        break;
                    }
                    a += (alen + 3) & !3;
                }
                return Some(Answer::Link(State {
                    ifindex: Some(ifindex),
                    admin_up,
                    carrier: admin_up && carrier,
                }));
            }
            _ => {}
        }
    }
    None
}

/// CLOCK_MONOTONIC now (the clock of the poller's and the daemon's grid).
pub(crate) fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sleep until the absolute CLOCK_MONOTONIC instant `deadline`, in chunks of
/// at most [`MAX_SLEEP_CHUNK`] so `stop` is noticed promptly.
fn sleep_until(deadline: Duration, stop: &AtomicBool) {
    loop {
        let now = monotonic_now();
        if now >= deadline || stop.load(Ordering::Relaxed) {
            return;
        }
        let target = deadline.min(now + MAX_SLEEP_CHUNK);
        let ts = libc::timespec {
            tv_sec: target.as_secs() as libc::time_t,
            tv_nsec: target.subsec_nanos() as libc::c_long,
        };
        // Returns the error number directly; EINTR just loops.
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
    }
}

/// CPU time (user + system) of the calling thread (getrusage RUSAGE_THREAD).
pub fn thread_cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `missing()` has resolved (a permit is waiting).
    fn woke(w: &ReplyWatch) -> bool {
        use futures::FutureExt;
        w.missing().now_or_never().is_some()
    }

    #[test]
    fn reply_watch_wakes_only_for_a_reply_missing_when_due() {
        use std::os::unix::net::UnixDatagram;
        let ms = Duration::from_millis;
        let (a_tx, a) = UnixDatagram::pair().unwrap();
        let (b_tx, b) = UnixDatagram::pair().unwrap();
        let w = ReplyWatch::default();
        // Nothing watched: a check is one atomic load and wakes no one.
        assert!(!w.check(ms(1000)));
        assert!(!woke(&w));

        // Both answered by their due times: no wake-up, entries dropped.
        w.set([(a.as_raw_fd(), ms(4)), (b.as_raw_fd(), ms(12))]);
        assert!(!w.check(ms(0)), "nothing due yet");
        a_tx.send(b"reply").unwrap();
        assert!(!w.check(ms(4)), "a answered by 4 ms; b not due");
        b_tx.send(b"reply").unwrap();
        assert!(!w.check(ms(12)), "b answered by 12 ms");
        assert!(!woke(&w));
        assert_eq!(w.earliest.load(Ordering::Relaxed), u64::MAX);
        let mut buf = [0u8; 8];
        a.recv(&mut buf).unwrap();
        b.recv(&mut buf).unwrap();

        // One missing when due: the loop is woken once, the watch emptied.
        w.set([(a.as_raw_fd(), ms(20)), (b.as_raw_fd(), ms(20))]);
        a_tx.send(b"reply").unwrap();
        assert!(!w.check(ms(16)), "not due yet, even with b silent");
        assert!(w.check(ms(20)), "b has no reply at its check");
        assert!(woke(&w));
        assert!(!woke(&w), "one wake-up per missing reply");
        assert!(!w.check(ms(24)), "entries dropped after waking");

        // Cleared by the loop when it woke for something else.
        w.set([(b.as_raw_fd(), ms(28))]);
        w.clear();
        assert!(!w.check(ms(28)));
        assert!(!woke(&w));
    }

    #[test]
    fn request_layout() {
        let r = getlink_request("eth0");
        assert_eq!(u32_at(&r, 0) as usize, r.len());
        assert_eq!(u16_at(&r, 4), RTM_GETLINK);
        assert_eq!(r.len() % 4, 0);
        // header + ifinfomsg + ext mask (8) + "eth0\0" padded (4 + 8)
        assert_eq!(r.len(), 16 + 16 + 8 + 12);
    }

    #[test]
    fn parses_enodev_and_skips_stale() {
        let mut m = vec![0u8; 36];
        m[0..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[8..12].copy_from_slice(&7u32.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert!(matches!(parse_answer(&m, 7), Some(Answer::Absent)));
        assert!(parse_answer(&m, 8).is_none());
    }
}
