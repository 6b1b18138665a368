//! A TCP connection from the server to the sink, for the way back: a
//! connection needs its replies (ACKs) to reach the server, so it survives a
//! failover only if its source address is routed to the server through
//! every uplink (the service address), not only through the dead one.
//!
//! The client in the server namespace connects to a listener on the sink
//! (inet's loopback) with the source the server's routes give it (or a
//! chosen one), and writes a small chunk every [`TcpSpec::interval`]; the
//! listener counts the bytes and remembers when each read returned. The
//! longest delivery stall is the longest time between two reads that
//! delivered bytes (while the writer kept writing).
//!
//! Sockets are created by threads that entered their namespace (see
//! [`super::netns`]); once created, a socket stays in its namespace
//! whichever thread uses it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{netns, sink, Lab, LabError};
use uplinkd_core::config::Family;

/// What to send.
#[derive(Debug, Clone)]
pub struct TcpSpec {
    pub family: Family,
    /// Bind the client to this address (None: the source the route gives).
    pub bind: Option<IpAddr>,
    /// One chunk every this long.
    pub interval: Duration,
    /// Bytes per chunk.
    pub chunk: usize,
    /// The writer stops by itself after this long.
    pub max_duration: Duration,
}

impl Default for TcpSpec {
    fn default() -> Self {
        TcpSpec {
            family: Family::V4,
            bind: None,
            interval: Duration::from_millis(2),
            chunk: 64,
            max_duration: Duration::from_secs(300),
        }
    }
}

#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    stop: AtomicBool,
    /// Instants of the reads that delivered bytes: (first, last, longest gap).
    reads: Mutex<Option<(Instant, Instant, Duration)>>,
}

/// A running connection; stopped on drop.
pub struct TcpFlow {
    local: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpFlow {
    /// Connect and start writing; returns once the connection is up.
    pub fn start(lab: &Lab, spec: &TcpSpec) -> Result<TcpFlow, LabError> {
        Self::start_in(&lab.server_ns(), &lab.inet_ns(), sink(spec.family), spec)
    }

    /// [`TcpFlow::start`] between any two namespaces: the client in
    /// `client_ns`, the listener on `sink_addr` in `sink_ns`.
    pub fn start_in(
        client_ns: &str,
        sink_ns: &str,
        sink_addr: IpAddr,
        spec: &TcpSpec,
    ) -> Result<TcpFlow, LabError> {
        let io = |what: &str, source: std::io::Error| LabError::Io {
            what: what.to_string(),
            source,
        };
        let listener =
            netns::in_netns(sink_ns, || TcpListener::bind(SocketAddr::new(sink_addr, 0)))?
                .map_err(|e| io("bind the TCP sink", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| io("TCP sink address", e))?
            .port();
        let bind = spec.bind;
        let client = netns::in_netns(client_ns, move || -> std::io::Result<TcpStream> {
            let dst = SocketAddr::new(sink_addr, port);
            match bind {
                None => TcpStream::connect_timeout(&dst, Duration::from_secs(5)),
                Some(src) => {
                    let domain = match src {
                        IpAddr::V4(_) => socket2::Domain::IPV4,
                        IpAddr::V6(_) => socket2::Domain::IPV6,
                    };
                    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
                    s.bind(&SocketAddr::new(src, 0).into())?;
                    s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
                    Ok(s.into())
                }
            }
        })?
        .map_err(|e| io("connect to the TCP sink from the server", e))?;
        let (mut server_side, _) = listener.accept().map_err(|e| io("accept", e))?;
        let local = client.local_addr().map_err(|e| io("client address", e))?;
        let _ = client.set_nodelay(true);
        let _ = client.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = server_side.set_read_timeout(Some(Duration::from_millis(100)));
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        let sh = shared.clone();
        let (interval, chunk, max) = (spec.interval, spec.chunk, spec.max_duration);
        threads.push(std::thread::spawn(move || {
            let mut client = client;
            let buf = vec![0x55u8; chunk];
            let t0 = Instant::now();
            let mut next = t0;
            while !sh.stop.load(Ordering::Relaxed) && t0.elapsed() < max {
                // A write that times out (the send buffer is full while the
                // path is dead) is tried again: the bytes still count once.
                match client.write(&buf) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        }));
        let sh = shared.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while !sh.stop.load(Ordering::Relaxed) {
                match server_side.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let now = Instant::now();
                        sh.delivered.fetch_add(n as u64, Ordering::Relaxed);
                        let mut r = sh.reads.lock().unwrap_or_else(|p| p.into_inner());
                        *r = Some(match *r {
                            None => (now, now, Duration::ZERO),
                            Some((first, last, gap)) => (first, now, gap.max(now - last)),
                        });
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }));
        Ok(TcpFlow {
            local,
            shared,
            threads,
        })
    }

    /// The client's address (its source address is what the way back needs).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Bytes the sink has received so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// When the sink last received bytes.
    pub fn last_delivery(&self) -> Option<Instant> {
        self.reads().map(|(_, last, _)| last)
    }

    /// The longest time between two deliveries so far.
    pub fn longest_stall(&self) -> Duration {
        self.reads().map_or(Duration::ZERO, |(_, _, gap)| gap)
    }

    /// Forget the stalls so far (e.g. those before a failure was injected).
    pub fn reset_stall(&self) {
        let mut r = self.shared.reads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((first, last, _)) = *r {
            *r = Some((first, last, Duration::ZERO));
        }
    }

    fn reads(&self) -> Option<(Instant, Instant, Duration)> {
        *self.shared.reads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until at least `bytes` more than `from` were delivered; false
    /// after `timeout`.
    pub fn wait_delivered(&self, from: u64, bytes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.delivered() >= from + bytes {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stop both ends; the sockets close.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for TcpFlow {
    fn drop(&mut self) {
        self.halt();
    }
}
