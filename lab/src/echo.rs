//! The round trip: a paced request/response UDP stream from the server,
//! echoed by the sink. A reply must find its way back to the request's
//! source address, so this measures both directions: the request outage
//! (longest run of requests that never reached the sink, the one-way
//! figure) and the round-trip outage (longest run of requests whose reply
//! never came back).
//!
//! The client's socket is unbound and unconnected: the kernel looks the
//! route up for every datagram and takes its source from the route (the
//! service address when uplinkd sets one). Sequence numbers are time slots
//! as in [`super::UdpStream`]: a sender late by more than
//! [`EchoSpec::max_lateness`] skips the missed slots (they count as lost);
//! `skipped` says how many, so a loaded measuring host shows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{netns, sink, Lab, LabError};
use uplinkd_core::config::Family;

/// What to send.
#[derive(Debug, Clone)]
pub struct EchoSpec {
    pub family: Family,
    /// Requests per second.
    pub rate: u32,
    /// The sender stops by itself after this long.
    pub max_duration: Duration,
    /// A sender later than this behind its schedule skips the missed slots.
    pub max_lateness: Duration,
}

impl Default for EchoSpec {
    fn default() -> Self {
        EchoSpec {
            family: Family::V4,
            rate: 10_000,
            max_duration: Duration::from_secs(60),
            max_lateness: Duration::from_millis(20),
        }
    }
}

/// The result of one echo stream.
#[derive(Debug, Clone, Serialize)]
pub struct EchoReport {
    pub family: Family,
    /// Sequence numbers issued (time slots elapsed).
    pub sent: u64,
    /// Slots the sender skipped (late by more than `max_lateness`).
    pub skipped: u64,
    /// Distinct requests the sink received.
    pub requests_received: u64,
    /// Distinct replies the server received.
    pub replies_received: u64,
    /// Longest run of requests missing at the sink × interval, in ms.
    pub request_outage_ms: f64,
    /// Longest run of missing replies × interval, in ms.
    pub round_trip_outage_ms: f64,
}

/// A running echo stream; [`EchoStream::stop`] ends it and reports.
pub struct EchoStream {
    family: Family,
    interval: Duration,
    stop: Arc<AtomicBool>,
    slots: Arc<AtomicU64>,
    skipped: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<bool>>>,
    replies: Arc<Mutex<Vec<bool>>>,
    threads: Vec<JoinHandle<()>>,
}

/// After the sender stops, replies still in flight are awaited this long.
const DRAIN: Duration = Duration::from_millis(300);

fn io(what: &str) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        what: what.to_string(),
        source,
    }
}

fn mark(bitmap: &Mutex<Vec<bool>>, seq: u64) {
    let mut b = bitmap.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(x) = b.get_mut(seq as usize) {
        *x = true;
    }
}

/// (distinct received, longest run missing) among the first `n` slots.
fn count(bitmap: &Mutex<Vec<bool>>, n: u64) -> (u64, u64) {
    let b = bitmap.lock().unwrap_or_else(|p| p.into_inner());
    let (mut got, mut run, mut longest) = (0, 0, 0);
    for &x in b.iter().take(n as usize) {
        if x {
            got += 1;
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
    }
    (got, longest)
}

impl EchoStream {
    /// Start the echo server on the sink and the client on the server.
    pub fn start(lab: &Lab, spec: &EchoSpec) -> Result<EchoStream, LabError> {
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(spec.rate.max(1)));
        let slots_max = (spec.max_duration.as_nanos() / interval.as_nanos()) as usize + 1;
        let sink_addr = sink(spec.family);
        let echo = netns::in_netns(&lab.inet_ns(), || {
            UdpSocket::bind(SocketAddr::new(sink_addr, 0))
        })?
        .map_err(io("bind the echo server"))?;
        let port = echo.local_addr().map_err(io("echo server address"))?.port();
        let any: IpAddr = match spec.family {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        };
        let client = netns::in_netns(&lab.server_ns(), || {
            UdpSocket::bind(SocketAddr::new(any, 0))
        })?
        .map_err(io("bind the echo client"))?;
        let timeout = Some(Duration::from_millis(50));
        echo.set_read_timeout(timeout).map_err(io("echo timeout"))?;
        client
            .set_read_timeout(timeout)
            .map_err(io("client timeout"))?;
        let reader = client.try_clone().map_err(io("clone the echo client"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let slots = Arc::new(AtomicU64::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(vec![false; slots_max]));
        let replies = Arc::new(Mutex::new(vec![false; slots_max]));
        let mut threads = Vec::new();
        // The echo server: every request back to where it came from.
        {
            let (stop, requests) = (stop.clone(), requests.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut quiet_since = None;
                loop {
                    match echo.recv_from(&mut buf) {
                        Ok((n, from)) if n >= 8 => {
                            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                            mark(&requests, seq);
                            let _ = echo.send_to(&buf[..n], from);
                            quiet_since = None;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            if stop.load(Ordering::Relaxed) {
                                let t = *quiet_since.get_or_insert_with(Instant::now);
                                if t.elapsed() >= DRAIN {
                                    break;
                                }
                            }
                        }
                    }
                }
            }));
        }
        // The client's reader: which replies came back.
        {
            let (stop, replies) = (stop.clone(), replies.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut stopped_at = None;
                loop {
                    if let Ok((n, _)) = reader.recv_from(&mut buf) {
                        if n >= 8 {
                            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                            mark(&replies, seq);
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        let t = *stopped_at.get_or_insert_with(Instant::now);
                        if t.elapsed() >= DRAIN {
                            break;
                        }
                    }
                }
            }));
        }
        // The paced sender.
        {
            let (stop, slots, skipped) = (stop.clone(), slots.clone(), skipped.clone());
            let dst = SocketAddr::new(sink_addr, port);
            let max_lateness = spec.max_lateness;
            threads.push(std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut seq: u64 = 0;
                let mut buf = [0u8; 32];
                while !stop.load(Ordering::Relaxed) && (seq as usize) < slots_max {
                    let due = t0 + interval * seq as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                        continue;
                    }
                    if now - due > max_lateness {
                        // Late beyond the bound: skip to the current slot.
                        let current = ((now - t0).as_nanos() / interval.as_nanos()) as u64;
                        skipped.fetch_add(current - seq, Ordering::Relaxed);
                        seq = current;
                    }
                    buf[..8].copy_from_slice(&seq.to_be_bytes());
                    let _ = client.send_to(&buf, dst);
                    seq += 1;
                    slots.store(seq, Ordering::Relaxed);
                }
            }));
        }
        Ok(EchoStream {
            family: spec.family,
            interval,
            stop,
            slots,
            skipped,
            requests,
            replies,
            threads,
        })
    }

    /// Replies received among the slots so far (for "flowing again").
    pub fn replies_so_far(&self) -> u64 {
        count(&self.replies, self.slots.load(Ordering::Relaxed)).0
    }

    /// Stop, wait for the replies in flight, and report.
    pub fn stop(mut self) -> EchoReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let sent = self.slots.load(Ordering::Relaxed);
        let (requests_received, req_run) = count(&self.requests, sent);
        let (replies_received, rep_run) = count(&self.replies, sent);
        let ms = |run: u64| (self.interval * run as u32).as_secs_f64() * 1000.0;
        EchoReport {
            family: self.family,
            sent,
            skipped: self.skipped.load(Ordering::Relaxed),
            requests_received,
            replies_received,
            request_outage_ms: ms(req_run),
            round_trip_outage_ms: ms(rep_run),
        }
    }
}

impl Drop for EchoStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
