//! A small ICMP echo client for the lab's own checks, so the lab needs no
//! `ping` binary (iputils is often missing in containers): `surge-ping` on
//! a current-thread tokio runtime.
//!
//! Network namespaces belong to threads, and a surge-ping client opens its
//! socket and spawns its receive task where it is created. [`ping_here`] and
//! [`burst_here`] therefore build their runtime on the calling thread and
//! create the client inside it: everything runs in the *calling thread's*
//! network namespace. Use them through [`super::Lab::ping`] and friends,
//! which run them on a thread inside the right namespace.
//!
//! The client uses RAW sockets (the lab runs as root, CAP_NET_RAW), so it
//! does not depend on `net.ipv4.ping_group_range` in the namespace, which
//! the lab deliberately leaves alone in the server namespace (the daemon's
//! concern). A reply counts only if surge-ping matches it to one of our
//! requests (source address, our random identifier, sequence) and it is an
//! echo reply: surge-ping hands the ICMP errors quoting a request (e.g.
//! destination unreachable) to the same waiter, and those are no answer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use surge_ping::{Client, Config, IcmpPacket, PingIdentifier, PingSequence, ICMP};
use tokio::task::JoinSet;
use tokio::time::Instant;

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

/// Echo request payload; replies are matched on identifier and sequence.
const PAYLOAD: [u8; 16] = [0; 16];
/// ICMP and ICMPv6 echo reply types (RFC 792, RFC 4443 §4.2).
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REPLY_V6: u8 = 129;

/// A runtime on the calling thread, so the sockets and the receive task
/// surge-ping creates in it belong to this thread's network namespace.
fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// An echo client for `dst` as `opts` say (device, source); call inside the
/// runtime (the client spawns its receive task on it).
fn client(dst: IpAddr, opts: &PingOpts) -> io::Result<Client> {
    let mut config = Config::builder()
        .sock_type_hint(socket2::Type::RAW)
        .kind(match dst {
            IpAddr::V4(_) => ICMP::V4,
            IpAddr::V6(_) => ICMP::V6,
        });
    if let Some(device) = &opts.device {
        config = config.interface(device);
    }
    if let Some(source) = opts.source {
        config = config.bind(SocketAddr::new(source, 0));
    }
    Client::new(&config.build())
}

fn is_echo_reply(packet: &IcmpPacket) -> bool {
    match packet {
        IcmpPacket::V4(p) => p.get_icmp_type().0 == ECHO_REPLY_V4 && p.get_icmp_code().0 == 0,
        IcmpPacket::V6(p) => p.get_icmpv6_type().0 == ECHO_REPLY_V6 && p.get_icmpv6_code().0 == 0,
    }
}

/// Sends echo request `seq` and waits until `until` for its reply: its
/// round-trip time, or None (no reply in time, an ICMP error, or a send
/// error such as "network unreachable").
async fn echo(
    client: Client,
    dst: IpAddr,
    ident: u16,
    seq: u16,
    until: Instant,
) -> Option<Duration> {
    let mut pinger = client.pinger(dst, PingIdentifier(ident)).await;
    pinger.timeout(until.saturating_duration_since(Instant::now()));
    match pinger.ping(PingSequence(seq), &PAYLOAD).await {
        Ok((packet, rtt)) if is_echo_reply(&packet) => Some(rtt),
        _ => None,
    }
}

/// Pings `dst` from the calling thread's namespace, resending every
/// `opts.interval`, until a valid reply to any of the requests (its
/// round-trip time) or `opts.timeout` (None). Send errors (e.g. "network
/// unreachable") count as no reply.
pub fn ping_here(dst: IpAddr, opts: &PingOpts) -> io::Result<Option<Duration>> {
    let interval = opts.interval.max(Duration::from_millis(1));
    runtime()?.block_on(async {
        let deadline = Instant::now() + opts.timeout;
        let client = client(dst, opts)?;
        let ident = rand::random();
        let mut waiting = JoinSet::new();
        let mut resend = tokio::time::interval(interval);
        let mut seq: u16 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = resend.tick() => {
                    waiting.spawn(echo(client.clone(), dst, ident, seq, deadline));
                    seq = seq.wrapping_add(1);
                }
                Some(answer) = waiting.join_next() => {
                    if let Ok(Some(rtt)) = answer {
                        return Ok(Some(rtt));
                    }
                }
            }
        }
    })
}

/// Sends `count` echo requests `spacing` apart, waits up to `opts.timeout`
/// after the last, and returns how many distinct requests were answered.
pub fn burst_here(
    dst: IpAddr,
    opts: &PingOpts,
    count: u16,
    spacing: Duration,
) -> io::Result<usize> {
    runtime()?.block_on(async {
        let client = client(dst, opts)?;
        let ident = rand::random();
        let start = Instant::now();
        let until = start + spacing * u32::from(count.saturating_sub(1)) + opts.timeout;
        let mut waiting = JoinSet::new();
        for seq in 0..count {
            // Between sends the receive task reads the replies so far.
            tokio::time::sleep_until(start + spacing * u32::from(seq)).await;
            waiting.spawn(echo(client.clone(), dst, ident, seq, until));
        }
        // One task per sequence number: each answered request counts once.
        let mut answered = 0;
        while let Some(answer) = waiting.join_next().await {
            answered += usize::from(matches!(answer, Ok(Some(_))));
        }
        Ok(answered)
    })
}
