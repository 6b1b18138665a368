//! The counters passive suspicion reads (see `uplinkd_core::suspicion`):
//! the namespace's TCP counters (`/proc/net/snmp` Tcp, `/proc/net/netstat`
//! TcpExt) and the uplinks' packet counters (`/proc/net/dev`).
//!
//! Cheap by construction: the three files are opened once, from the
//! calling thread's network namespace (`/proc/thread-self/net/...`: a
//! `/proc/net` file opened from a thread belongs to that thread's namespace,
//! and stays so while open), and re-read with `pread` at offset 0 (a
//! seq_file regenerates its text on a read from the start) into buffers
//! allocated once, only as far as the lines wanted (one `pread` each, where
//! reading to the end took two). Read by the carrier poller thread every
//! few of its ticks ([`CounterTap::tick`]): no wake-up of its own. The TCP counters (the
//! costly file: ~120 per-CPU sums, ~4 µs here, more than the rest
//! together) are read again only when the uplinks sent more than the
//! agent's own packets (its forwarding-plane echoes and the loop's probes)
//! since they were last read: every TCP signal needs segments sent, and a
//! segment sent through an uplink moves its packet counter. An idle server
//! reads them once a second, a busy one at every reading. The
//! samples wait in a buffer the loop drains on each turn; the loop is
//! woken early only when a sample could matter (nothing received since the
//! last sample while something was sent, or new retransmission timeouts):
//! in the steady state, busy or idle, the counters add no wake-up of the
//! loop.
//!
//! Each reading also says which uplinks carry traffic ([`Traffic`]):
//! packets sent besides the agent's own (its echoes, and the loop's probes
//! counted by the loop as it sends them). The echo streams run at their
//! idle rate on an interface that carried none for [`TRAFFIC_HOLD`] (see
//! `uplinkd_core::echo`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::suspicion::{LinkCounters, TcpCounters};

/// Frames the agent sends through each interface besides the loop's probes
/// (the forwarding-plane echoes), counted by their sender: they are
/// neither TCP (the TCP counters need not be read again for them) nor
/// traffic (the rx_stall rule counts them as the agent's own, like the
/// probes).
#[derive(Debug, Default)]
pub struct OwnFrames(Mutex<Vec<(String, u64)>>);

impl OwnFrames {
    /// `n` more frames sent through `interface`.
    pub fn add(&self, interface: &str, n: u64) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match v.iter_mut().find(|(i, _)| i == interface) {
            Some((_, c)) => *c += n,
            None => v.push((interface.to_string(), n)),
        }
    }

    /// Frames sent through `interface` so far.
    pub fn get(&self, interface: &str) -> u64 {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .find(|(i, _)| i == interface)
            .map_or(0, |(_, c)| *c)
    }
}

/// When each uplink interface last carried traffic (packets sent besides
/// the agent's own), by the counter readings (CLOCK_MONOTONIC).
#[derive(Debug, Default)]
pub struct Traffic(Mutex<Vec<(String, Duration)>>);

/// An interface that carried no traffic for this long is idle.
pub const TRAFFIC_HOLD: Duration = Duration::from_secs(1);

impl Traffic {
    /// `interface` carried traffic in the reading at `at`.
    pub fn saw(&self, interface: &str, at: Duration) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match v.iter_mut().find(|(i, _)| i == interface) {
            Some((_, t)) => *t = (*t).max(at),
            None => v.push((interface.to_string(), at)),
        }
    }

    /// Whether `interface` carried no traffic over the [`TRAFFIC_HOLD`]
    /// before `at`. One never read is not idle (the full rate, the safe
    /// side): every interface counts as busy at its first reading.
    pub fn idle(&self, interface: &str, at: Duration) -> bool {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .find(|(i, _)| i == interface)
            .is_some_and(|(_, t)| at.saturating_sub(*t) >= TRAFFIC_HOLD)
    }
}

/// One reading, sent to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSample {
    /// When it was read (CLOCK_MONOTONIC).
    pub at: Duration,
    pub tcp: Option<TcpCounters>,
    /// (interface, counters) of the interfaces asked for that exist.
    pub links: Vec<(String, LinkCounters)>,
}

/// The open files and their buffers.
#[derive(Debug)]
pub struct CounterReader {
    snmp: Option<File>,
    netstat: Option<File>,
    dev: Option<File>,
    buf: Vec<u8>,
    interfaces: Vec<String>,
    /// RetransSegs at the last read of netstat, and what it said then.
    ext: Option<(u64, u64, u64)>,
    /// Frames the agent sent through the uplinks that are not TCP (the
    /// forwarding-plane echoes), counted by their sender.
    own_tx: Option<Arc<OwnFrames>>,
    /// The last reading of the TCP counters: when, what it said, and the
    /// uplinks' packets sent and the agent's own then.
    tcp_read: Option<TcpRead>,
    /// The loop's probes sent through each uplink, counted by the loop.
    loop_tx: Option<Arc<OwnFrames>>,
    /// Each uplink's packets sent besides the agent's own (cumulative) at
    /// the start of its current span, and when (see [`traffic_step`]).
    spans: Vec<(String, i64, Duration)>,
    traffic: Arc<Traffic>,
}

#[derive(Debug, Clone, Copy)]
struct TcpRead {
    at: Duration,
    tcp: Option<TcpCounters>,
    tx: u64,
    own: u64,
}

/// The TCP counters are read again when the uplinks sent at least this
/// many packets besides the agent's echoes since they were last read (a
/// lone probe, an ARP or ND answer, are not TCP) ...
const OTHER_TX: u64 = 2;
/// ... or when they are this old.
const TCP_MAX_AGE: Duration = Duration::from_secs(1);

/// The files, relative to `/proc/thread-self/net` (see the module docs).
const PROC_NET: &str = "/proc/thread-self/net";

impl CounterReader {
    /// Open the files from the calling thread's namespace. A file that
    /// cannot be opened is left out (its counters read as absent).
    pub fn new(interfaces: Vec<String>) -> CounterReader {
        let open = |name: &str| File::open(format!("{PROC_NET}/{name}")).ok();
        CounterReader {
            snmp: open("snmp"),
            netstat: open("netstat"),
            dev: open("dev"),
            buf: vec![0; 16 << 10],
            interfaces,
            ext: None,
            own_tx: None,
            tcp_read: None,
            loop_tx: None,
            spans: Vec::new(),
            traffic: Arc::new(Traffic::default()),
        }
    }

    /// The files that could not be opened (their counters read as absent).
    pub fn missing(&self) -> Vec<String> {
        [
            ("snmp", self.snmp.is_none()),
            ("netstat", self.netstat.is_none()),
            ("dev", self.dev.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| format!("{PROC_NET}/{n}"))
        .collect()
    }

    /// Read everything now (the TCP counters only if they could have
    /// changed, see the module docs).
    pub fn read(&mut self, at: Duration) -> CounterSample {
        let mut links = Vec::new();
        if let Some(f) = &self.dev {
            let wanted = &self.interfaces;
            if let Ok(n) = pread_until(f, &mut self.buf, |b| has_interfaces(b, wanted)) {
                parse_dev(&self.buf[..n], &self.interfaces, &mut links);
            }
        }
        if let Some(own) = &self.own_tx {
            for (name, l) in &mut links {
                l.own_tx = own.get(name);
            }
        }
        let loop_tx = |name: &str| self.loop_tx.as_ref().map_or(0, |f| f.get(name));
        let mut own = 0;
        let mut spans = Vec::with_capacity(links.len());
        for name in &self.interfaces {
            let Some((_, l)) = links.iter().find(|(n, _)| n == name) else {
                // Not read: the full rate, the safe side.
                self.traffic.saw(name, at);
                continue;
            };
            let mine = l.own_tx + loop_tx(name);
            own += mine;
            let other = l.tx_packets as i64 - mine as i64;
            let span = self
                .spans
                .iter()
                .find(|(n, ..)| n == name)
                .map(|&(_, o, t)| (o, t));
            let (traffic, (o, t)) = traffic_step(span, other, at);
            if traffic {
                self.traffic.saw(name, at);
            }
            spans.push((name.clone(), o, t));
        }
        self.spans = spans;
        let tx: u64 = links.iter().map(|(_, l)| l.tx_packets).sum();
        let complete = links.len() == self.interfaces.len();
        let tcp = match self.tcp_read {
            Some(r) if !tcp_due(&r, at, tx, own, complete) => r.tcp,
            _ => {
                let tcp = self.read_tcp();
                self.tcp_read = Some(TcpRead { at, tcp, tx, own });
                tcp
            }
        };
        CounterSample { at, tcp, links }
    }

    fn read_tcp(&mut self) -> Option<TcpCounters> {
        let mut tcp = None;
        if let Some(f) = &self.snmp {
            if let Ok(n) = pread_until(f, &mut self.buf, |b| has_section(b, b"Tcp:")) {
                tcp = parse_snmp_tcp(&self.buf[..n]);
            }
        }
        if let (Some(t), Some(f)) = (tcp.as_mut(), &self.netstat) {
            // The costly file (TcpExt sums ~120 per-CPU counters: ~50 µs
            // here, the rest together ~40 µs), read only when a segment was
            // retransmitted since the last reading: a timeout always
            // retransmits, and so does a loss probe but for one sending new
            // data, which waits for the next retransmission to be counted.
            match self.ext {
                Some((retrans, lp, to)) if retrans == t.retrans_segs => {
                    (t.loss_probes, t.timeouts) = (lp, to);
                }
                _ => {
                    if let Ok(n) = pread_until(f, &mut self.buf, |b| has_section(b, b"TcpExt:")) {
                        if let Some((lp, to)) = parse_netstat_tcpext(&self.buf[..n]) {
                            t.loss_probes = lp;
                            t.timeouts = to;
                            self.ext = Some((t.retrans_segs, lp, to));
                        }
                    }
                }
            }
        }
        tcp
    }
}

/// One reading of an uplink that has sent `other` packets besides the
/// agent's own so far (cumulative: a probe counted a moment before it
/// leaves is not taken for traffic at the next reading), at `at`, in the
/// span that started at `span` (that count, then): whether it carried
/// traffic, and the span from now on. Traffic is at least `OTHER_TX`
/// packets besides the agent's own within one span of at most
/// `TRAFFIC_HOLD` (a lone ARP or ND answer now and then is not traffic);
/// it starts a new span, as does a span that ends quiet. The first reading
/// counts as traffic (the safe side); a count gone down (echoes the kernel
/// refused, an interface created again) starts a new span.
fn traffic_step(
    span: Option<(i64, Duration)>,
    other: i64,
    at: Duration,
) -> (bool, (i64, Duration)) {
    match span {
        None => (true, (other, at)),
        Some((o, _)) if other < o => (false, (other, at)),
        Some((o, _)) if other - o >= OTHER_TX as i64 => (true, (other, at)),
        Some((_, t)) if at.saturating_sub(t) >= TRAFFIC_HOLD => (false, (other, at)),
        Some(span) => (false, span),
    }
}

/// Whether the TCP counters are to be read again at `at`, the uplinks
/// having sent `tx` packets in all and the agent `own` (echoes and probes), since
/// `last` (`complete`: every uplink's counters were found; a count gone
/// down is an interface created again).
fn tcp_due(last: &TcpRead, at: Duration, tx: u64, own: u64, complete: bool) -> bool {
    !complete
        || tx < last.tx
        || at.saturating_sub(last.at) >= TCP_MAX_AGE
        || tx.saturating_sub(last.tx) >= own.saturating_sub(last.own) + OTHER_TX
}

/// The file from offset 0 into `buf`, up to the first read after which
/// its complete lines satisfy `enough` (then only those count), or to its
/// end: the length read. A `/proc/net` file is generated anew on each read
/// from a new offset, so the read that would find the end costs as much as
/// the first one (`single_open` files render everything again): when the
/// first read already holds what is wanted, the second one is never made.
/// `buf` only grows (no clearing or zeroing per read).
fn pread_until(
    f: &File,
    buf: &mut Vec<u8>,
    enough: impl Fn(&[u8]) -> bool,
) -> std::io::Result<usize> {
    let mut len = 0;
    loop {
        if buf.len() - len < 4096 {
            if buf.len() >= 1 << 20 {
                return Ok(len); // a runaway file: what was read
            }
            buf.resize(buf.len() + (16 << 10), 0);
        }
        match f.read_at(&mut buf[len..], len as u64) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let lines = buf[..len]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if enough(&buf[..lines]) {
            return Ok(lines);
        }
    }
}

/// Both lines (names, values) of the `prefix` section are in `buf`.
fn has_section(buf: &[u8], prefix: &[u8]) -> bool {
    buf.split(|&b| b == b'\n')
        .filter(|l| l.starts_with(prefix))
        .nth(1)
        .is_some()
}

/// Every one of `interfaces` has its line in `buf` (a `/proc/net/dev`).
fn has_interfaces(buf: &[u8], interfaces: &[String]) -> bool {
    std::str::from_utf8(buf)
        .is_ok_and(|text| dev_lines(text, interfaces).count() >= interfaces.len())
}

/// The lines of `interfaces` in a `/proc/net/dev` text: (name, counters).
fn dev_lines<'a>(
    text: &'a str,
    interfaces: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    text.lines().skip(2).filter_map(|line| {
        let (name, rest) = line.split_once(':')?;
        let name = name.trim();
        interfaces.iter().any(|i| i == name).then_some((name, rest))
    })
}

/// The values of the `prefix` section of a snmp-style file (a header line
/// of names, then a line of values, both starting with `prefix`), by name.
fn section<'a>(text: &'a str, prefix: &str) -> Option<(Vec<&'a str>, Vec<&'a str>)> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    Some((names, values))
}

fn value(names: &[&str], values: &[&str], name: &str) -> Option<u64> {
    let i = names.iter().position(|n| *n == name)?;
    values.get(i)?.parse().ok()
}

/// `/proc/net/snmp`: the Tcp line's InSegs, OutSegs and RetransSegs.
pub fn parse_snmp_tcp(buf: &[u8]) -> Option<TcpCounters> {
    let text = std::str::from_utf8(buf).ok()?;
    let (n, v) = section(text, "Tcp:")?;
    Some(TcpCounters {
        in_segs: value(&n, &v, "InSegs")?,
        out_segs: value(&n, &v, "OutSegs")?,
        retrans_segs: value(&n, &v, "RetransSegs")?,
        loss_probes: 0,
        timeouts: 0,
    })
}

/// `/proc/net/netstat`: TcpExt's TCPLossProbes and TCPTimeouts.
pub fn parse_netstat_tcpext(buf: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(buf).ok()?;
    let (n, v) = section(text, "TcpExt:")?;
    Some((
        value(&n, &v, "TCPLossProbes").unwrap_or(0),
        value(&n, &v, "TCPTimeouts")?,
    ))
}

/// `/proc/net/dev`: rx and tx packets of each of `interfaces` present.
pub fn parse_dev(buf: &[u8], interfaces: &[String], out: &mut Vec<(String, LinkCounters)>) {
    let Ok(text) = std::str::from_utf8(buf) else {
        return;
    };
    for (name, rest) in dev_lines(text, interfaces) {
        // rx: bytes packets errs drop fifo frame compressed multicast;
        // tx: bytes packets ...
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 10 {
            out.push((
                name.to_string(),
                LinkCounters {
                    rx_packets: f[1],
                    tx_packets: f[9],
                    own_tx: 0,
                },
            ));
        }
    }
}

/// Counter readings handed from the poller thread to the loop.
#[derive(Debug)]
pub struct CounterTap {
    reader: Mutex<CounterReader>,
    /// Read every this many poller ticks.
    every: u64,
    samples: Mutex<Vec<CounterSample>>,
    /// Woken when a sample could matter (see the module docs).
    wake: tokio::sync::Notify,
    /// Cost: readings and the time spent in them.
    reads: AtomicU64,
    read_ns: AtomicU64,
}

/// Readings kept while the loop does not take them (it takes them on every
/// turn; this only bounds memory if it stalls).
const MAX_PENDING: usize = 1024;

impl CounterTap {
    /// Open the files from the calling thread's namespace.
    pub fn new(interfaces: Vec<String>, every: u32) -> CounterTap {
        CounterTap {
            reader: Mutex::new(CounterReader::new(interfaces)),
            every: u64::from(every.max(1)),
            samples: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            reads: AtomicU64::new(0),
            read_ns: AtomicU64::new(0),
        }
    }

    /// The files that could not be opened.
    pub fn missing(&self) -> Vec<String> {
        self.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .missing()
    }

    /// Read these interfaces' counters from now on (a reload).
    pub fn set_interfaces(&self, interfaces: Vec<String>) {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        r.interfaces = interfaces;
        r.tcp_read = None;
        r.spans.clear();
    }

    /// The loop's probes, counted per interface by the loop as it sends
    /// them: not traffic.
    pub fn set_loop_tx(&self, frames: Arc<OwnFrames>) {
        self.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .loop_tx = Some(frames);
    }

    /// Which uplinks carry traffic, by the readings (see [`Traffic`]).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .traffic
            .clone()
    }

    /// The frames the agent itself sends through the uplinks that are not
    /// TCP (the forwarding-plane echoes: [`crate::probe::echo_stream::EchoStreams::frames`]):
    /// they do not make the TCP counters worth reading again.
    pub fn set_own_tx(&self, frames: Arc<OwnFrames>) {
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).own_tx = Some(frames);
    }

    /// Called by the poller on each tick `polls` at `at` (CLOCK_MONOTONIC).
    pub fn tick(&self, polls: u64, at: Duration) {
        if polls % self.every != 0 {
            return;
        }
        let t = Instant::now();
        let s = self
            .reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(at);
        self.read_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let wake = q.last().is_some_and(|last| matters(last, &s));
        if q.len() >= MAX_PENDING {
            q.remove(0);
        }
        q.push(s);
        drop(q);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The readings taken since the last call, oldest first.
    pub fn take(&self, out: &mut Vec<CounterSample>) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut q);
    }

    /// Resolves when a reading could matter.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// (readings, mean cost of one) so far.
    pub fn cost(&self) -> (u64, Duration) {
        let n = self.reads.load(Ordering::Relaxed);
        let ns = self.read_ns.load(Ordering::Relaxed);
        (n, Duration::from_nanos(ns.checked_div(n).unwrap_or(0)))
    }
}

/// An interface that sent at least this many packets between two readings
/// and received none wakes the loop: fewer is the agent's own probes, whose
/// replies fall in the next reading (a gateway probe and its reply
/// straddle readings every few rounds).
const LINK_WAKE_TX: u64 = 4;

/// Whether `s` after `last` could change a decision: segments sent and none
/// received, new timeouts or loss probes, or an interface that sent and
/// received nothing. The loop takes every reading anyway; this only says
/// whether it must do so now.
fn matters(last: &CounterSample, s: &CounterSample) -> bool {
    if let (Some(a), Some(b)) = (last.tcp, s.tcp) {
        if (b.out_segs > a.out_segs && b.in_segs == a.in_segs)
            || b.timeouts > a.timeouts
            || b.loss_probes > a.loss_probes
        {
            return true;
        }
    }
    s.links.iter().any(|(name, l)| {
        last.links
            .iter()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, o)| {
                // The agent's echoes: one out, and one back if answered.
                let own = l.own_tx.saturating_sub(o.own_tx);
                let tx = l.tx_packets.saturating_sub(o.tx_packets);
                let rx = l.rx_packets.saturating_sub(o.rx_packets);
                tx >= own + LINK_WAKE_TX && rx <= own
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_files() {
        let snmp = b"Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\nTcp: 1 200 120000 -1 10 2 0 0 1 1234 5678 9 0 3 0\nUdp: InDatagrams\nUdp: 5\n";
        let t = parse_snmp_tcp(snmp).unwrap();
        assert_eq!((t.in_segs, t.out_segs, t.retrans_segs), (1234, 5678, 9));
        let netstat = b"TcpExt: SyncookiesSent TCPTimeouts TCPLossProbes\nTcpExt: 0 7 11\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_netstat_tcpext(netstat), Some((11, 7)));
        let dev = b"Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:    100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  upa: 5000      40    0    0    0     0          0         0     7000      55    0    0    0     0       0          0\n";
        let mut out = Vec::new();
        parse_dev(dev, &["upa".into(), "upb".into()], &mut out);
        assert_eq!(
            out,
            vec![(
                "upa".to_string(),
                LinkCounters {
                    rx_packets: 40,
                    tx_packets: 55,
                    own_tx: 0
                }
            )]
        );
    }

    /// Prints the cost of one reading (`--nocapture`); asserts only that
    /// the tap reads on every `every`-th tick and keeps what it read.
    #[test]
    fn the_tap_reads_every_few_ticks_and_measures_its_cost() {
        let tap = CounterTap::new(vec!["lo".into()], 4);
        for i in 0..4000u64 {
            tap.tick(i, Duration::from_millis(4 * i));
        }
        let mut got = Vec::new();
        tap.take(&mut got);
        assert_eq!(got.len(), 1000);
        let (n, mean) = tap.cost();
        assert_eq!(n, 1000);
        eprintln!("one reading (snmp + dev, netstat when retransmitting): {mean:?} (mean of {n})");
        let mut r = CounterReader::new(vec!["lo".into()]);
        let t = Instant::now();
        for i in 0..1000u64 {
            r.ext = None;
            r.read(Duration::from_millis(i));
        }
        eprintln!("one reading with netstat: {:?}", t.elapsed() / 1000);
    }

    #[test]
    fn tcp_counters_are_read_again_only_when_more_than_the_echoes_left() {
        let ms = Duration::from_millis;
        let last = TcpRead {
            at: ms(100),
            tcp: None,
            tx: 1000,
            own: 500,
        };
        // 40 echoes and nothing else: the counters cannot have moved.
        assert!(!tcp_due(&last, ms(116), 1040, 540, true));
        // One packet more (a lone probe, an ARP answer): still not.
        assert!(!tcp_due(&last, ms(116), 1041, 540, true));
        // Two more: maybe TCP.
        assert!(tcp_due(&last, ms(116), 1042, 540, true));
        // Without echoes (ICMP mode): two packets.
        assert!(tcp_due(&last, ms(116), 1002, 500, true));
        // A second old, an uplink's counters missing: read.
        assert!(tcp_due(&last, ms(1100), 1000, 500, true));
        assert!(!tcp_due(&last, ms(1099), 1000, 500, true));
        assert!(tcp_due(&last, ms(116), 1000, 500, false));
        // An interface re-created (its counter back to 0): read.
        assert!(tcp_due(&last, ms(116), 10, 540, true));
    }

    #[test]
    fn a_read_stops_at_the_first_chunk_that_holds_the_lines_wanted() {
        // Longer than one read (the buffer holds 16 KiB): the wanted
        // section first, then filler.
        let mut text = String::from("Tcp: InSegs OutSegs\nTcp: 1 2\n");
        while text.len() < 48 << 10 {
            text.push_str("Udp: InDatagrams NoPorts InErrors OutDatagrams\n");
        }
        let path = std::env::temp_dir().join(format!("uplinkd-pread-{}", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let f = File::open(&path).unwrap();
        let mut buf = vec![0; 16 << 10];
        let n = pread_until(&f, &mut buf, |b| has_section(b, b"Tcp:")).unwrap();
        assert!(n < text.len(), "stopped after the first read");
        assert!(buf[..n].ends_with(b"\n"), "complete lines only");
        assert!(text.as_bytes().starts_with(&buf[..n]));
        // Not there: read to the end.
        let n = pread_until(&f, &mut buf, |b| has_section(b, b"Icmp:")).unwrap();
        assert_eq!(&buf[..n], text.as_bytes());
        std::fs::remove_file(&path).unwrap();

        let dev = b"Inter-| Receive\n face |bytes\n    lo: 1 2\n  upa: 3 4\n";
        assert!(has_interfaces(dev, &["upa".into(), "lo".into()]));
        assert!(!has_interfaces(dev, &["upa".into(), "upb".into()]));
        assert!(!has_interfaces(b"  up: 1\n", &["upa".into()]));
        assert!(!has_section(b"Tcp: InSegs\n", b"Tcp:"));
    }

    #[test]
    fn reads_this_namespace() {
        let mut r = CounterReader::new(vec!["lo".into()]);
        let s = r.read(Duration::ZERO);
        assert!(
            s.tcp.is_some(),
            "Tcp counters of /proc/thread-self/net/snmp"
        );
        assert_eq!(s.links.len(), 1, "lo in /proc/thread-self/net/dev");
        assert_eq!(s.links[0].1.own_tx, 0);
        // The echoes' sender's count, per interface, with each reading.
        let own = Arc::new(OwnFrames::default());
        own.add("lo", 5);
        own.add("eth9", 2);
        own.add("lo", 1);
        r.own_tx = Some(own.clone());
        let s = r.read(Duration::from_millis(16));
        assert_eq!(s.links[0].1.own_tx, 6);
        // Only the interfaces read count (as their packets do).
        assert_eq!(s.links.iter().map(|(_, l)| l.own_tx).sum::<u64>(), 6);
    }
}
