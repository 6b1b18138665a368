//! The event source: link and route changes as [`NetEvent`]s.
//!
//! Two sockets, as DESIGN.md asks: a multicast socket subscribed to
//! RTNLGRP_LINK, the IPv4/IPv6 address groups (the service addresses of
//! `agent.source4`/`source6` come and go), RTNLGRP_IPV4_ROUTE and
//! RTNLGRP_IPV6_ROUTE, and RTNLGRP_IPV4_RULE and RTNLGRP_IPV6_RULE for
//! deleted rules (read by our own loop), and a request socket (an
//! rtnetlink [`Handle`]) for dumps.
//!
//! Order of work: subscribe first, then dump links, addresses, IPv4 routes
//! and IPv6 routes, so a change racing with the dump is never missed (it shows up as
//! an event after the dump). While a dump runs, multicast events are read
//! and held back, then delivered after `DumpDone`; a held-back event may be
//! older than the dump, but it is always followed by any newer one, so the
//! consumer's state is right once the queue is drained.
//!
//! Losses: the kernel drops multicast messages when our receive buffer is
//! full and then fails the next `recvmsg` with ENOBUFS. We read the socket
//! ourselves (not through netlink-proto) so that this, a truncated datagram
//! and a message we cannot decode are all handled the same way: emit
//! [`NetEvent::Resync`], re-dump everything, emit `DumpDone`. Never a
//! silent miss. (For reference, netlink-proto 0.14 turns ENOBUFS into a
//! synthetic `NetlinkPayload::Overrun` message on its unsolicited-message
//! channel, but it drops messages it fails to decode with only a log line.)
//!
//! Namespace: both sockets are opened by [`spawn_monitor`] in the network
//! namespace of the thread polling it (the caller, when awaited directly).
//! The task then runs on the caller's tokio runtime (current_thread is
//! fine; the timer must be enabled).

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::route::{RouteFlags, RouteMessage};
use netlink_packet_route::rule::RuleAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use rtnetlink::Handle;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::UnboundedSender;

use super::request::Dump;
use super::{address_event, link_info, route_info, NetEvent, NetlinkError, REQUEST_TIMEOUT};

// include/uapi/linux/rtnetlink.h, enum rtnetlink_groups.
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;
const RTNLGRP_IPV4_RULE: u32 = 8;
const RTNLGRP_IPV6_RULE: u32 = 19;

/// Dump attempts (with doubling backoff from 100 ms) before the monitor
/// gives up and reports `NetEvent::Failed`.
const DUMP_ATTEMPTS: u32 = 5;
/// A dump the kernel flagged NLM_F_DUMP_INTR (the table changed meanwhile)
/// is repeated at most this many times; the events that interrupted it are
/// delivered anyway, so the last one is still usable.
const DUMP_INTR_RETRIES: u32 = 3;
/// Largest datagram buffer we grow to after a truncated read.
const MAX_DATAGRAM: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// Receive buffer of the multicast socket, in bytes (the kernel doubles
    /// it for bookkeeping). Set with SO_RCVBUFFORCE when we may (root), so
    /// net.core.rmem_max does not cap it; else SO_RCVBUF.
    pub recv_buffer: usize,
    /// Bound on every dump request (on the wait for each part of the answer).
    pub request_timeout: Duration,
    /// Events held back while a dump runs; beyond this they are dropped and
    /// treated like an overrun (another resync).
    pub max_held_events: usize,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            // Several thousand link/route messages: a whole interface flap
            // storm fits while the runtime is busy elsewhere.
            recv_buffer: 4 << 20,
            request_timeout: REQUEST_TIMEOUT,
            max_held_events: 100_000,
        }
    }
}

/// The running monitor. Dropping it stops the monitor.
pub struct MonitorHandle {
    task: tokio::task::JoinHandle<()>,
    request_conn: tokio::task::JoinHandle<()>,
    recv_buffer: usize,
}

impl MonitorHandle {
    /// Stop the monitor (also done on drop).
    pub fn stop(&self) {
        self.task.abort();
        self.request_conn.abort();
    }

    /// The task ended (stopped, failed, or its receiver was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The multicast socket's receive buffer as the kernel reports it
    /// (SO_RCVBUF, i.e. twice what was set).
    pub fn recv_buffer(&self) -> usize {
        self.recv_buffer
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start the monitor with [`MonitorOptions::default`].
pub async fn spawn_monitor(tx: UnboundedSender<NetEvent>) -> Result<MonitorHandle, NetlinkError> {
    spawn_monitor_with(tx, MonitorOptions::default()).await
}

/// Start the monitor: subscribe, then dump (links, v4 routes, v6 routes),
/// `DumpDone`, then events as they come.
pub async fn spawn_monitor_with(
    tx: UnboundedSender<NetEvent>,
    options: MonitorOptions,
) -> Result<MonitorHandle, NetlinkError> {
    let mc = Multicast::open(options.recv_buffer)?;
    let recv_buffer = mc.recv_buffer();
    let (conn, handle, _unsolicited) = rtnetlink::new_connection()
        .map_err(|e| NetlinkError::io("open rtnetlink request socket for the monitor", e))?;
    let request_conn = tokio::spawn(conn);
    let task = tokio::spawn(async move {
        let mut monitor = Monitor {
            mc,
            handle,
            tx,
            options,
        };
        if let Err(e) = monitor.run().await {
            tracing::error!(error = %e, "netlink monitor stopped");
            let _ = monitor.tx.send(NetEvent::Failed {
                error: e.to_string(),
            });
        }
    });
    Ok(MonitorHandle {
        task,
        request_conn,
        recv_buffer,
    })
}

/// The multicast socket, read by hand so every loss is visible.
struct Multicast {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
}

/// What one read from the multicast socket produced, besides events.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Ok,
    /// Messages were lost (ENOBUFS, truncation, undecodable message).
    Lost(&'static str),
}

impl Multicast {
    fn open(recv_buffer: usize) -> Result<Self, NetlinkError> {
        let op = "open rtnetlink multicast socket";
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::io(op, e))?;
        set_recv_buffer(&sock, recv_buffer)
            .map_err(|e| NetlinkError::io("set monitor socket receive buffer", e))?;
        let groups = [
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV6_ROUTE,
            RTNLGRP_IPV4_RULE,
            RTNLGRP_IPV6_RULE,
        ]
        .iter()
        .fold(0u32, |acc, g| acc | (1 << (g - 1)));
        sock.bind(&SocketAddr::new(0, groups)).map_err(|e| {
            NetlinkError::io("subscribe to link, address, route and rule groups", e)
        })?;
        sock.set_non_blocking(true)
            .map_err(|e| NetlinkError::io(op, e))?;
        // SAFETY: `Socket` owns its descriptor, closes it only on drop, and
        // always returns the same one from as_raw_fd().
        let fd = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }
            .map_err(|e| NetlinkError::io(op, e.into()))?;
        Ok(Multicast {
            fd,
            buf: vec![0; 64 << 10],
        })
    }

    fn recv_buffer(&self) -> usize {
        self.fd.get_ref().get_rx_buf_sz().unwrap_or(0)
    }

    /// Wait for one datagram and append its events to `out`. Cancel-safe:
    /// the only await is the readiness wait, before anything is read.
    async fn read(&mut self, out: &mut VecDeque<NetEvent>) -> Result<Read, NetlinkError> {
        loop {
            // ERROR readiness too: a pending ENOBUFS is reported as EPOLLERR.
            let mut guard = self
                .fd
                .ready(Interest::READABLE | Interest::ERROR)
                .await
                .map_err(|e| NetlinkError::io("wait on rtnetlink multicast socket", e))?;
            let buf = &mut self.buf;
            let res = guard.try_io(|fd| {
                // MSG_TRUNC: return the datagram's real length even if it
                // did not fit, so truncation is detectable.
                let n = unsafe {
                    libc::recv(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            let n = match res {
                Err(_would_block) => continue,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        return Ok(Read::Lost("receive buffer overrun (ENOBUFS)"))
                    }
                    Some(libc::EINTR) => continue,
                    _ => return Err(NetlinkError::io("read rtnetlink multicast socket", e)),
                },
            };
            if n > self.buf.len() {
                let grown = n.next_power_of_two().min(MAX_DATAGRAM);
                self.buf.resize(grown, 0);
                return Ok(Read::Lost("datagram larger than the read buffer"));
            }
            return Ok(parse_datagram(&self.buf[..n], out));
        }
    }
}

/// SO_RCVBUFFORCE (needs CAP_NET_ADMIN; ignores net.core.rmem_max), else SO_RCVBUF.
fn set_recv_buffer(sock: &Socket, bytes: usize) -> std::io::Result<()> {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
}

/// Decode every netlink message of one multicast datagram.
fn parse_datagram(mut data: &[u8], out: &mut VecDeque<NetEvent>) -> Read {
    let mut result = Read::Ok;
    while !data.is_empty() {
        let len = match NetlinkBuffer::new_checked(data) {
            Ok(b) => b.length() as usize,
            Err(_) => return Read::Lost("malformed netlink datagram"),
        };
        let aligned = (len + 3) & !3;
        let this = &data[..len];
        data = &data[aligned.min(data.len())..];
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(this) {
            Ok(m) => {
                if let NetlinkPayload::InnerMessage(inner) = m.payload {
                    if let Some(ev) = event_of(inner) {
                        out.push_back(ev);
                    }
                }
            }
            Err(e) => {
                // Keep decoding the rest, but the consumer must resync: the
                // message we could not read may have been the one that mattered.
                tracing::warn!(error = %e, "undecodable rtnetlink message; resyncing");
                result = Read::Lost("undecodable rtnetlink message");
            }
        }
    }
    result
}

/// The event for one rtnetlink message, if it is one we report.
fn event_of(msg: RouteNetlinkMessage) -> Option<NetEvent> {
    match msg {
        // AF_BRIDGE link messages describe bridge-port state, and an AF_BRIDGE
        // RTM_DELLINK means "left the bridge", not "gone": only AF_UNSPEC ones
        // describe the interface itself.
        RouteNetlinkMessage::NewLink(l) if l.header.interface_family == AddressFamily::Unspec => {
            Some(NetEvent::Link(link_info(&l)))
        }
        RouteNetlinkMessage::DelLink(l) if l.header.interface_family == AddressFamily::Unspec => {
            let info = link_info(&l);
            Some(NetEvent::LinkRemoved {
                ifindex: info.ifindex,
                name: info.name,
            })
        }
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r)
            if r.header.flags.contains(RouteFlags::Cloned) =>
        {
            // IPv6 route-cache exceptions (PMTU, redirects): not routes.
            None
        }
        RouteNetlinkMessage::NewAddress(a) => address_event(&a, false),
        RouteNetlinkMessage::DelAddress(a) => address_event(&a, true),
        RouteNetlinkMessage::NewRoute(r) => route_info(&r).map(|route| NetEvent::Route {
            route,
            removed: false,
        }),
        RouteNetlinkMessage::DelRoute(r) => route_info(&r).map(|route| NetEvent::Route {
            route,
            removed: true,
        }),
        RouteNetlinkMessage::DelRule(r) => {
            let mut table = r.header.table as u32;
            let mut protocol = 0;
            for a in &r.attributes {
                match a {
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::Protocol(p) => protocol = u8::from(*p),
                    _ => {}
                }
            }
            Some(NetEvent::RuleRemoved { table, protocol })
        }
        _ => None,
    }
}

struct Monitor {
    mc: Multicast,
    handle: Handle,
    tx: UnboundedSender<NetEvent>,
    options: MonitorOptions,
}

/// The receiver is gone: stop quietly.
struct ReceiverGone;

impl Monitor {
    async fn run(&mut self) -> Result<(), NetlinkError> {
        let mut events = VecDeque::new();
        let mut need_dump = true;
        loop {
            if need_dump {
                match self.dump_until_consistent(&mut events).await? {
                    Ok(()) => need_dump = false,
                    Err(ReceiverGone) => return Ok(()),
                }
            }
            // Normal operation: deliver events as they come.
            let read = self.mc.read(&mut events).await?;
            if self.deliver(&mut events).is_err() {
                return Ok(());
            }
            if let Read::Lost(why) = read {
                tracing::warn!(reason = why, "rtnetlink events lost; resyncing");
                if self.tx.send(NetEvent::Resync).is_err() {
                    return Ok(());
                }
                need_dump = true;
            }
        }
    }

    fn deliver(&self, events: &mut VecDeque<NetEvent>) -> Result<(), ReceiverGone> {
        while let Some(ev) = events.pop_front() {
            self.tx.send(ev).map_err(|_| ReceiverGone)?;
        }
        Ok(())
    }

    /// Dump until a dump completes with no loss on the multicast socket
    /// meanwhile; retry failed dumps with backoff. `held` receives the
    /// multicast events read during the dump and is delivered after DumpDone.
    async fn dump_until_consistent(
        &mut self,
        held: &mut VecDeque<NetEvent>,
    ) -> Result<Result<(), ReceiverGone>, NetlinkError> {
        let mut failures = 0u32;
        let mut interrupted = 0u32;
        loop {
            match self.dump_once(held).await {
                Ok(DumpResult::Done {
                    interrupted: intr,
                    lost,
                }) => {
                    if intr && interrupted < DUMP_INTR_RETRIES {
                        interrupted += 1;
                        tracing::debug!("rtnetlink dump interrupted by changes; repeating");
                        continue;
                    }
                    if self.tx.send(NetEvent::DumpDone).is_err() {
                        return Ok(Err(ReceiverGone));
                    }
                    if self.deliver(held).is_err() {
                        return Ok(Err(ReceiverGone));
                    }
                    match lost {
                        None => return Ok(Ok(())),
                        Some(why) => {
                            // Lost events during the dump: the dump itself
                            // may predate them, so do it again.
                            tracing::warn!(
                                reason = why,
                                "rtnetlink events lost during dump; resyncing"
                            );
                            if self.tx.send(NetEvent::Resync).is_err() {
                                return Ok(Err(ReceiverGone));
                            }
                            interrupted = 0;
                        }
                    }
                }
                Ok(DumpResult::ReceiverGone) => return Ok(Err(ReceiverGone)),
                Err(e) => {
                    failures += 1;
                    if failures >= DUMP_ATTEMPTS {
                        return Err(e);
                    }
                    let backoff = Duration::from_millis(100 << (failures - 1));
                    tracing::warn!(error = %e, ?backoff, "rtnetlink dump failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// One dump of links, IPv4 routes and IPv6 routes, sent straight to the
    /// consumer, reading the multicast socket into `held` meanwhile.
    async fn dump_once(
        &mut self,
        held: &mut VecDeque<NetEvent>,
    ) -> Result<DumpResult, NetlinkError> {
        let mut link_req = LinkMessage::default();
        link_req
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let mut v4 = RouteMessage::default();
        v4.header.address_family = AddressFamily::Inet;
        let mut v6 = RouteMessage::default();
        v6.header.address_family = AddressFamily::Inet6;
        let requests = [
            ("dump links", RouteNetlinkMessage::GetLink(link_req)),
            (
                "dump addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            ),
            ("dump ipv4 routes", RouteNetlinkMessage::GetRoute(v4)),
            ("dump ipv6 routes", RouteNetlinkMessage::GetRoute(v6)),
        ];
        let mut interrupted = false;
        let mut lost = None;
        for (op, req) in requests {
            let mut dump = Dump::start(&self.handle, req, self.options.request_timeout, op)?;
            loop {
                tokio::select! {
                    // Prefer the dump; read multicast only when it has data.
                    biased;
                    next = dump.next() => match next? {
                        Some(msg) => {
                            if let Some(ev) = event_of(msg) {
                                if self.tx.send(ev).is_err() {
                                    return Ok(DumpResult::ReceiverGone);
                                }
                            }
                        }
                        None => break,
                    },
                    read = self.mc.read(held) => {
                        if let Read::Lost(why) = read? {
                            lost = Some(why);
                        }
                        if held.len() > self.options.max_held_events {
                            held.clear();
                            lost = Some("too many events during dump");
                        }
                    }
                }
            }
            interrupted |= dump.interrupted;
        }
        Ok(DumpResult::Done { interrupted, lost })
    }
}

enum DumpResult {
    Done {
        interrupted: bool,
        lost: Option<&'static str>,
    },
    ReceiverGone,
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;

    fn datagram(msgs: &[RouteNetlinkMessage]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut nl = NetlinkMessage::new(
                NetlinkHeader::default(),
                NetlinkPayload::InnerMessage(m.clone()),
            );
            nl.finalize();
            let mut b = vec![0; nl.buffer_len()];
            nl.serialize(&mut b);
            out.extend_from_slice(&b);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        out
    }

    #[test]
    fn bridge_dellink_is_not_link_removal() {
        let mut l = LinkMessage::default();
        l.header.index = 7;
        l.header.interface_family = AddressFamily::Bridge;
        let mut out = VecDeque::new();
        assert_eq!(
            parse_datagram(
                &datagram(&[RouteNetlinkMessage::DelLink(l.clone())]),
                &mut out
            ),
            Read::Ok
        );
        assert!(out.is_empty());
        l.header.interface_family = AddressFamily::Unspec;
        l.attributes.push(LinkAttribute::IfName("up0".into()));
        parse_datagram(&datagram(&[RouteNetlinkMessage::DelLink(l)]), &mut out);
        assert_eq!(
            out.pop_front(),
            Some(NetEvent::LinkRemoved {
                ifindex: 7,
                name: "up0".into()
            })
        );
    }

    #[test]
    fn undecodable_message_means_lost() {
        let mut d = datagram(&[RouteNetlinkMessage::NewLink(LinkMessage::default())]);
        // Corrupt: claim an RTM_NEWROUTE with a truncated body.
        let mut bad = vec![0u8; 20];
        bad[0..4].copy_from_slice(&20u32.to_ne_bytes());
        bad[4..6].copy_from_slice(&24u16.to_ne_bytes()); // RTM_NEWROUTE
        d.extend_from_slice(&bad);
        let mut out = VecDeque::new();
        assert!(matches!(parse_datagram(&d, &mut out), Read::Lost(_)));
        // The decodable message before it still counts.
        assert_eq!(out.len(), 1);
    }
}
