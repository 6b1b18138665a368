//! The benchmark's traffic: a paced UDP stream from the server to the sink,
//! and the outage a user would feel.
//!
//! Method: the sender in the server namespace sends
//! sequence-numbered datagrams at a fixed rate (10,000/s by default), paced
//! against absolute deadlines, on an ordinary *blocking*, *unconnected* UDP
//! socket with `sendto`, so the kernel looks the route up for every datagram
//! (a connected socket would cache it) and a sender stuck behind a dead
//! neighbour queue really stalls, as an application would. The receiver in
//! the inet namespace records which sequence numbers arrived. The outage is
//! the longest run of missing sequence numbers times the interval.
//!
//! Sequence numbers are time slots: datagram `n` belongs to the instant
//! `start + n × interval`. A sender that is late by at most `max_lateness`
//! (scheduler jitter) catches up by sending the overdue datagrams at once; a
//! sender blocked for longer skips the slots it missed, which then count as
//! missing. Without that rule a 3 s stall in `sendto` would be hidden by a
//! burst of catch-up datagrams afterwards.
//!
//! Both ends run on their own std threads that entered their namespace with
//! `setns` (see [`super::netns`]): a thread's network namespace is its own.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{netns, LabError, SINK_V4, SINK_V6};
use uplinkd_core::config::Family;

/// What to send.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub family: Family,
    /// Datagrams per second.
    pub rate: u32,
    /// The sender stops by itself after this long (a forgotten stream is
    /// bounded); the receiver's bitmap is sized for it.
    pub max_duration: Duration,
    /// A sender later than this behind its schedule skips the missed slots
    /// (they count as lost) instead of bursting them out late.
    pub max_lateness: Duration,
    /// UDP payload bytes (>= 16: token and sequence number).
    pub payload_len: usize,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            family: Family::V4,
            rate: 10_000,
            max_duration: Duration::from_secs(120),
            max_lateness: Duration::from_millis(20),
            payload_len: 64,
        }
    }
}

impl StreamSpec {
    pub fn v4() -> Self {
        Self::default()
    }
    pub fn v6() -> Self {
        StreamSpec {
            family: Family::V6,
            ..Self::default()
        }
    }
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / u64::from(self.rate.max(1)))
    }
}

/// The result of one stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub family: Family,
    /// Time between two sequence numbers.
    pub interval: Duration,
    /// Sequence numbers issued (time slots elapsed): the denominator of loss.
    pub sent: u64,
    /// Datagrams `sendto` accepted.
    pub transmitted: u64,
    /// `sendto` failures (e.g. ENETUNREACH while no route exists).
    pub send_errors: u64,
    /// The first `sendto` error, for the record.
    pub first_send_error: Option<String>,
    /// Slots skipped because the sender was blocked longer than `max_lateness`.
    pub skipped: u64,
    /// Each run of skipped slots, and why the sender was late.
    pub stalls: Vec<Stall>,
    /// Distinct sequence numbers received.
    pub received: u64,
    /// Datagrams received more than once.
    pub duplicates: u64,
    /// The longest run of missing sequence numbers × `interval`.
    pub longest_gap: Duration,
    /// Every run of missing sequence numbers: (first missing, count).
    pub gaps: Vec<(u64, u64)>,
}

/// A run of slots the sender skipped because it fell behind its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stall {
    pub first_seq: u64,
    pub count: u64,
    /// The sender slept inside `sendto` (a voluntary context switch during a
    /// slow call: e.g. its socket buffer held by a dead neighbour's queue):
    /// a real outage, as an application would suffer it. false: it was late
    /// without sleeping in `sendto`, i.e. it was preempted or not scheduled
    /// (an overloaded measuring host): a measurement artifact.
    pub in_sendto: bool,
}

impl StreamReport {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// The gaps that are not just the sender being descheduled: gaps not
    /// entirely made of slots skipped in stalls with `in_sendto == false`.
    pub fn network_gaps(&self) -> Vec<(u64, u64)> {
        self.gaps
            .iter()
            .copied()
            .filter(|&(first, count)| {
                !self.stalls.iter().any(|st| {
                    !st.in_sendto
                        && st.first_seq <= first
                        && first + count <= st.first_seq + st.count
                })
            })
            .collect()
    }
}

struct SenderResult {
    slots: u64,
    transmitted: u64,
    send_errors: u64,
    first_send_error: Option<String>,
    skipped: u64,
    stalls: Vec<Stall>,
}

struct ReceiverResult {
    seen: Vec<u64>, // bitmap
    received: u64,
    duplicates: u64,
}

/// A running stream; [`UdpStream::stop`] ends it and reports. Dropping it
/// without `stop` stops and joins both threads.
pub struct UdpStream {
    spec: StreamSpec,
    started: Instant,
    stop_sender: Arc<AtomicBool>,
    stop_receiver: Arc<AtomicBool>,
    sent_so_far: Arc<AtomicU64>,
    received_so_far: Arc<AtomicU64>,
    sender: Option<JoinHandle<SenderResult>>,
    receiver: Option<JoinHandle<ReceiverResult>>,
}

/// The receiver keeps reading this long after the last datagram once the
/// sender stopped (datagrams still in flight), at most `DRAIN_MAX`.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
const DRAIN_MAX: Duration = Duration::from_millis(500);
/// Receive buffer: 8 MiB holds ~0.5 s of this stream even if the receiver
/// thread is descheduled, so the receiver never causes the loss it measures.
const RCVBUF: libc::c_int = 8 << 20;
/// Bound for the threads' setup.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

fn set_rcvbuf_force(sock: &UdpSocket, bytes: libc::c_int) -> std::io::Result<()> {
    // SO_RCVBUFFORCE (root) ignores net.core.rmem_max, which is not ours to
    // change.
    // SAFETY: valid fd, pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl UdpStream {
    /// Starts a stream from `server_ns` to the sink in `inet_ns`. Returns
    /// once both ends are set up and the first datagram is due.
    pub(crate) fn start(
        server_ns: &str,
        inet_ns: &str,
        spec: &StreamSpec,
    ) -> Result<UdpStream, LabError> {
        if spec.payload_len < 16 || spec.payload_len > 1400 {
            return Err(LabError::Invalid(format!(
                "stream payload_len {} outside 16..=1400",
                spec.payload_len
            )));
        }
        if spec.rate == 0 || spec.rate > 1_000_000 {
            return Err(LabError::Invalid(format!(
                "stream rate {} outside 1..=1000000",
                spec.rate
            )));
        }
        let spec = spec.clone();
        let interval = spec.interval();
        let max_slots = (spec.max_duration.as_nanos() / interval.as_nanos()) as u64;
        let sink: IpAddr = match spec.family {
            Family::V4 => IpAddr::V4(SINK_V4),
            Family::V6 => IpAddr::V6(SINK_V6),
        };
        let token: u64 = rand::random();
        let stop_sender = Arc::new(AtomicBool::new(false));
        let stop_receiver = Arc::new(AtomicBool::new(false));
        let sent_so_far = Arc::new(AtomicU64::new(0));
        let received_so_far = Arc::new(AtomicU64::new(0));

        // Receiver first: the sender needs its port.
        let (rtx, rrx) = mpsc::channel::<Result<u16, LabError>>();
        let receiver = {
            let ns = inet_ns.to_string();
            let stop = stop_receiver.clone();
            let count = received_so_far.clone();
            let max_wait = spec.max_duration + Duration::from_secs(10);
            std::thread::Builder::new()
                .name("lab-udp-rx".into())
                .spawn(move || {
                    let setup = || -> Result<UdpSocket, LabError> {
                        netns::enter(&ns)?;
                        let io = |what: &str| {
                            let what = what.to_string();
                            move |source| LabError::Io { what, source }
                        };
                        let sock = UdpSocket::bind(SocketAddr::new(sink, 0))
                            .map_err(io("bind stream receiver to the sink"))?;
                        set_rcvbuf_force(&sock, RCVBUF).map_err(io("SO_RCVBUFFORCE"))?;
                        sock.set_read_timeout(Some(Duration::from_millis(10)))
                            .map_err(io("set receiver timeout"))?;
                        Ok(sock)
                    };
                    let sock = match setup() {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = rtx.send(Err(e));
                            return ReceiverResult {
                                seen: Vec::new(),
                                received: 0,
                                duplicates: 0,
                            };
                        }
                    };
                    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
                    let _ = rtx.send(Ok(port));
                    receive(&sock, token, max_slots, &stop, &count, max_wait)
                })
                .map_err(|source| LabError::Io {
                    what: "spawn stream receiver thread".into(),
                    source,
                })?
        };
        let port = match rrx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = receiver.join();
                return Err(e);
            }
            Err(_) => {
                stop_receiver.store(true, Ordering::SeqCst);
                return Err(LabError::Timeout {
                    what: "stream receiver setup".into(),
                    timeout: SETUP_TIMEOUT,
                });
            }
        };

        let (stx, srx) = mpsc::channel::<Result<Instant, LabError>>();
        let sender = {
            let ns = server_ns.to_string();
            let stop = stop_sender.clone();
            let count = sent_so_far.clone();
            let spec = spec.clone();
            std::thread::Builder::new()
                .name("lab-udp-tx".into())
                .spawn(move || {
                    let setup = || -> Result<UdpSocket, LabError> {
                        netns::enter(&ns)?;
                        let any: IpAddr = match spec.family {
                            Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                            Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                        };
                        // Unbound source address, unconnected: route lookup
                        // (and source selection) per datagram.
                        UdpSocket::bind(SocketAddr::new(any, 0)).map_err(|source| LabError::Io {
                            what: "create stream sender socket".into(),
                            source,
                        })
                    };
                    match setup() {
                        Ok(sock) => {
                            let start = Instant::now() + Duration::from_millis(1);
                            let _ = stx.send(Ok(start));
                            send(
                                &sock,
                                SocketAddr::new(sink, port),
                                token,
                                &spec,
                                start,
                                max_slots,
                                &stop,
                                &count,
                            )
                        }
                        Err(e) => {
                            let _ = stx.send(Err(e));
                            SenderResult {
                                slots: 0,
                                transmitted: 0,
                                send_errors: 0,
                                first_send_error: None,
                                skipped: 0,
                                stalls: Vec::new(),
                            }
                        }
                    }
                })
                .map_err(|source| LabError::Io {
                    what: "spawn stream sender thread".into(),
                    source,
                })?
        };
        let started = match srx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                stop_receiver.store(true, Ordering::SeqCst);
                let _ = sender.join();
                let _ = receiver.join();
                return Err(e);
            }
            Err(_) => {
                stop_sender.store(true, Ordering::SeqCst);
                stop_receiver.store(true, Ordering::SeqCst);
                return Err(LabError::Timeout {
                    what: "stream sender setup".into(),
                    timeout: SETUP_TIMEOUT,
                });
            }
        };
        Ok(UdpStream {
            spec,
            started,
            stop_sender,
            stop_receiver,
            sent_so_far,
            received_so_far,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Time since the first datagram was due.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// (sequence numbers issued, datagrams received) so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.sent_so_far.load(Ordering::Relaxed),
            self.received_so_far.load(Ordering::Relaxed),
        )
    }

    /// Stops the sender, lets datagrams in flight arrive (bounded), stops the
    /// receiver and reports.
    pub fn stop(mut self) -> StreamReport {
        self.finish()
    }

    fn finish(&mut self) -> StreamReport {
        self.stop_sender.store(true, Ordering::SeqCst);
        let s = self
            .sender
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or(SenderResult {
                slots: 0,
                transmitted: 0,
                send_errors: 0,
                first_send_error: Some("sender thread panicked".into()),
                skipped: 0,
                stalls: Vec::new(),
            });
        self.stop_receiver.store(true, Ordering::SeqCst);
        let r = self
            .receiver
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or(ReceiverResult {
                seen: Vec::new(),
                received: 0,
                duplicates: 0,
            });
        let interval = self.spec.interval();
        let gaps = gaps(&r.seen, s.slots);
        let longest = gaps.iter().map(|g| g.1).max().unwrap_or(0);
        StreamReport {
            family: self.spec.family,
            interval,
            sent: s.slots,
            transmitted: s.transmitted,
            send_errors: s.send_errors,
            first_send_error: s.first_send_error,
            skipped: s.skipped,
            stalls: s.stalls,
            received: r.received,
            duplicates: r.duplicates,
            longest_gap: interval * u32::try_from(longest).unwrap_or(u32::MAX),
            gaps,
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        if self.sender.is_some() || self.receiver.is_some() {
            let _ = self.finish();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn send(
    sock: &UdpSocket,
    to: SocketAddr,
    token: u64,
    spec: &StreamSpec,
    start: Instant,
    max_slots: u64,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> SenderResult {
    let interval = spec.interval();
    let interval_ns = interval.as_nanos();
    let mut buf = vec![0u8; spec.payload_len];
    buf[..8].copy_from_slice(&token.to_be_bytes());
    let mut r = SenderResult {
        slots: 0,
        transmitted: 0,
        send_errors: 0,
        first_send_error: None,
        skipped: 0,
        stalls: Vec::new(),
    };
    let mut seq: u64 = 0;
    // Whether the previous sendto was slow *and slept*: tells a block in
    // the kernel from a sender that simply was not scheduled (preemption is
    // an involuntary context switch, sleeping a voluntary one).
    let mut last_send_blocked = false;
    while seq < max_slots && !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_nanos((u128::from(seq) * interval_ns) as u64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > spec.max_lateness {
            // Blocked for longer than jitter explains: the slots in between
            // were never sent (the user's traffic would have waited too).
            let behind = now - start - spec.max_lateness;
            let resume = ((behind.as_nanos() / interval_ns) as u64).min(max_slots);
            if resume > seq {
                r.skipped += resume - seq;
                r.stalls.push(Stall {
                    first_seq: seq,
                    count: resume - seq,
                    in_sendto: last_send_blocked,
                });
                seq = resume;
                if seq >= max_slots {
                    break;
                }
            }
        }
        buf[8..16].copy_from_slice(&seq.to_be_bytes());
        let slept_before = voluntary_switches();
        let t = Instant::now();
        let res = sock.send_to(&buf, to);
        last_send_blocked =
            t.elapsed() > spec.max_lateness / 2 && voluntary_switches() > slept_before;
        match res {
            Ok(_) => r.transmitted += 1,
            Err(e) => {
                r.send_errors += 1;
                if r.first_send_error.is_none() {
                    r.first_send_error = Some(format!("seq {seq}: {e}"));
                }
            }
        }
        seq += 1;
        count.store(seq, Ordering::Relaxed);
    }
    r.slots = seq;
    r
}

/// Voluntary context switches of the calling thread so far.
fn voluntary_switches() -> libc::c_long {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: RUSAGE_THREAD fills the struct we pass; on error it is zeroed.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: initialised by getrusage (or zeroed).
    unsafe { ru.assume_init() }.ru_nvcsw
}

fn receive(
    sock: &UdpSocket,
    token: u64,
    max_slots: u64,
    stop: &AtomicBool,
    count: &AtomicU64,
    max_wait: Duration,
) -> ReceiverResult {
    let mut seen = vec![0u64; (max_slots as usize).div_ceil(64)];
    let mut received = 0u64;
    let mut duplicates = 0u64;
    let mut buf = [0u8; 2048];
    let hard_deadline = Instant::now() + max_wait;
    let mut last_rx = Instant::now();
    let mut stop_seen: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= hard_deadline {
            break;
        }
        if stop_seen.is_none() && stop.load(Ordering::SeqCst) {
            stop_seen = Some(now);
        }
        if let Some(t) = stop_seen {
            if now.duration_since(last_rx) >= DRAIN_QUIET || now.duration_since(t) >= DRAIN_MAX {
                break;
            }
        }
        match sock.recv(&mut buf) {
            Ok(n) if n >= 16 => {
                if u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")) != token {
                    continue;
                }
                last_rx = Instant::now();
                let seq = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
                if seq >= max_slots {
                    continue;
                }
                let (w, b) = ((seq / 64) as usize, seq % 64);
                if seen[w] & (1 << b) != 0 {
                    duplicates += 1;
                } else {
                    seen[w] |= 1 << b;
                    received += 1;
                    count.store(received, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => {} // timeout (checks the flags) or a transient error
        }
    }
    ReceiverResult {
        seen,
        received,
        duplicates,
    }
}

/// Runs of missing sequence numbers in `0..slots`.
fn gaps(seen: &[u64], slots: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut run_start: Option<u64> = None;
    for seq in 0..slots {
        let got = seen
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0);
        match (got, run_start) {
            (false, None) => run_start = Some(seq),
            (true, Some(s)) => {
                out.push((s, seq - s));
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        out.push((s, slots - s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::gaps;

    #[test]
    fn gap_runs() {
        // bits 0,1,4,5 set of 8 slots -> missing 2..4 and 6..8
        let seen = vec![0b0011_0011u64];
        assert_eq!(gaps(&seen, 8), vec![(2, 2), (6, 2)]);
        assert_eq!(gaps(&seen, 2), vec![]);
        assert_eq!(gaps(&[], 3), vec![(0, 3)]);
    }
}
