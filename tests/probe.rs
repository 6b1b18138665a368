//! End-to-end tests of the prober in network namespaces.
//!
//! Every test runs on its own thread that has unshared a fresh network
//! namespace (the "server"); routers are `ip netns add` namespaces with
//! per-test unique names, deleted by a guard even on panic. Nothing touches
//! the root namespace; only 198.18.0.0/15 and 2001:db8::/32 are used.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};
use socket2::{Domain, Protocol, Socket, Type};
use uplinkd::config::Family;
use uplinkd::core::{ProbeId, ProbeKind, ProbeOutcome, ProbeRequest};
use uplinkd::probe::packet::{checksum, parse_ipv4, ICMP_ECHO_REQUEST};
use uplinkd::probe::{ProbeUplink, Prober, SocketKind};

// ---------------------------------------------------------------- harness

/// Counts heap allocations made by the current thread (for the cost test).
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn thread_allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Run a command (in the calling thread's network namespace), panic on failure.
fn run(cmd: &str) {
    run_args(&cmd.split_whitespace().collect::<Vec<_>>());
}

fn run_args(args: &[&str]) {
    let cmd = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("`{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `ip netns add` namespaces, deleted on drop (also when the test panics).
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn new() -> Self {
        Netns { names: Vec::new() }
    }

    /// A fresh router namespace: `lo` up, no IPv6 DAD (addresses usable at
    /// once), ARP answered only for addresses of the asking interface (so a
    /// probe that is not routed through this router's gateway address cannot
    /// reach its far target by an on-link ARP for it).
    fn add(&mut self, test: &str, role: &str) -> String {
        let name = format!("uplinkd-probe-{}-{test}-{role}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&format!("ip netns add {name}"));
        self.names.push(name.clone());
        run(&format!("ip -n {name} link set lo up"));
        run(&format!(
            "ip netns exec {name} sysctl -qw net.ipv6.conf.all.accept_dad=0 \
             net.ipv6.conf.default.accept_dad=0 net.ipv4.conf.all.arp_ignore=1"
        ));
        name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Run `body` on a new plain thread (no async runtime: the prober needs
/// none) inside a private network namespace (the server); re-raise its panic.
fn in_private_netns<F>(body: F)
where
    F: FnOnce() + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let mine = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let main = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(mine, main, "refusing to run outside a private netns");
        run("ip link set lo up");
        run("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        // Loose reverse-path filter: replies to probes routed by mark arrive
        // on an uplink that is not the main table's way back.
        run("sysctl -qw net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2");
        body();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Router `i` (1 or 2) behind server interface `uplink`: owns 198.18.i.1,
/// 2001:db8:i::1 and fe80::1 on the link, and far target 198.19.0.i /
/// 2001:db8:ff::i on its lo. The server gets 198.18.i.10 / 2001:db8:i::10,
/// table 999+i with the router as default gateway, and `fwmark 999+i` rules.
fn add_router_uplink(ns: &mut Netns, test: &str, i: u8, uplink: &str) -> String {
    let r = ns.add(test, &format!("r{i}"));
    run(&format!(
        "ip link add {uplink} type veth peer name eth0 netns {r}"
    ));
    router_addresses(
        &r,
        &format!("198.18.{i}.1/24"),
        &format!("2001:db8:{i}::1/64"),
        i,
    );
    run(&format!("ip -n {r} addr add fe80::1/64 dev eth0 nodad"));
    run(&format!("ip link set {uplink} up"));
    run(&format!("ip addr add 198.18.{i}.10/24 dev {uplink}"));
    run(&format!(
        "ip addr add 2001:db8:{i}::10/64 dev {uplink} nodad"
    ));
    let table = 999 + u32::from(i);
    run(&format!(
        "ip route add default via 198.18.{i}.1 dev {uplink} table {table}"
    ));
    run(&format!(
        "ip -6 route add default via 2001:db8:{i}::1 dev {uplink} table {table}"
    ));
    run(&format!(
        "ip rule add fwmark {table} lookup {table} pref 100"
    ));
    run(&format!(
        "ip -6 rule add fwmark {table} lookup {table} pref 100"
    ));
    r
}

/// Router side of a link: `eth0` up with the given addresses, far target
/// `i` on lo.
fn router_addresses(r: &str, v4: &str, v6: &str, i: u8) {
    run(&format!("ip -n {r} link set eth0 up"));
    run(&format!("ip -n {r} addr add {v4} dev eth0"));
    run(&format!("ip -n {r} addr add {v6} dev eth0 nodad"));
    run(&format!("ip -n {r} addr add 198.19.0.{i}/32 dev lo"));
    run(&format!("ip -n {r} addr add 2001:db8:ff::{i}/128 dev lo"));
}

/// Two uplinks `upa` (mark/table 1000, router 1) and `upb` (1001, router 2);
/// the main table's default routes point at uplink A only.
fn two_uplinks(test: &str) -> (Netns, Vec<String>) {
    let mut ns = Netns::new();
    let ra = add_router_uplink(&mut ns, test, 1, "upa");
    let rb = add_router_uplink(&mut ns, test, 2, "upb");
    run("ip route add default via 198.18.1.1 dev upa");
    run("ip -6 route add default via 2001:db8:1::1 dev upa");
    (ns, vec![ra, rb])
}

fn two_prober() -> Prober {
    Prober::new(vec![
        ProbeUplink {
            interface: "upa".into(),
            fwmark: 1000,
        },
        ProbeUplink {
            interface: "upb".into(),
            fwmark: 1001,
        },
    ])
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> ProbeId {
    ProbeId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

fn request(id: ProbeId, uplink: usize, target: IpAddr, timeout: Duration) -> ProbeRequest {
    ProbeRequest {
        id,
        uplink,
        family: Family::of(&target),
        kind: ProbeKind::Gateway,
        target,
        timeout,
    }
}

/// The daemon's loop in miniature: `poll` every millisecond until `want`
/// outcomes are in (bounded by `limit`). Returns them with the time each
/// was returned.
fn poll_until(
    p: &mut Prober,
    want: usize,
    limit: Duration,
) -> Vec<(ProbeId, ProbeOutcome, Instant)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut out = Vec::new();
    while got.len() < want {
        assert!(
            start.elapsed() < limit,
            "only {} of {want} outcomes within {limit:?}: {got:?}",
            got.len()
        );
        std::thread::sleep(ms(1));
        let now = Instant::now();
        p.poll(now, &mut out);
        got.extend(out.drain(..).map(|(id, o)| (id, o, now)));
    }
    got
}

/// Send one probe and poll for its outcome; check that exactly one arrives.
/// Returns the outcome and the time from send to outcome.
fn probe(
    p: &mut Prober,
    uplink: usize,
    target: &str,
    timeout: Duration,
) -> (ProbeOutcome, Duration) {
    let target: IpAddr = target.parse().unwrap();
    let id = next_id();
    let start = Instant::now();
    p.send(start, request(id, uplink, target, timeout));
    assert!(p.next_deadline().is_some_and(|d| d <= start + timeout));
    let mut got = poll_until(p, 1, timeout + Duration::from_secs(2));
    let (got, outcome, at) = got.pop().unwrap();
    assert_eq!(got, id, "outcome for another probe");
    // Nothing of this probe is left to report, now or later.
    assert_eq!(
        p.in_flight(),
        0,
        "probe to {target} still in flight after its outcome"
    );
    assert_eq!(p.next_deadline(), None);
    let mut more = Vec::new();
    p.poll(Instant::now(), &mut more);
    assert!(more.is_empty(), "more than one outcome: {more:?}");
    (outcome, at - start)
}

#[track_caller]
fn assert_reply(o: &ProbeOutcome, what: &str) {
    assert!(
        matches!(o, ProbeOutcome::Reply { .. }),
        "{what}: expected a reply, got {o:?}"
    );
}

#[track_caller]
fn assert_timeout(o: &ProbeOutcome, what: &str) {
    assert_eq!(*o, ProbeOutcome::Timeout, "{what}");
}

/// Admit root's gid to unprivileged ICMP sockets (in this netns only), so
/// the prober gets DGRAM sockets instead of RAW ones.
fn admit_root_to_ping_sockets() {
    run_args(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 0"]);
}

// ------------------------------------------------------------------ tests

fn gateway_replies(dgram: bool) {
    let name = if dgram { "gw-dgram" } else { "gw-raw" };
    let (_ns, _routers) = two_uplinks(name);
    if dgram {
        admit_root_to_ping_sockets();
    }
    let want = if dgram {
        SocketKind::Dgram
    } else {
        SocketKind::Raw
    };
    let mut p = two_prober();
    for (uplink, gw4, gw6) in [
        (0, "198.18.1.1", "2001:db8:1::1"),
        (1, "198.18.2.1", "2001:db8:2::1"),
    ] {
        for gw in [gw4, gw6, "fe80::1"] {
            let (o, _) = probe(&mut p, uplink, gw, Duration::from_secs(2));
            assert_reply(&o, &format!("gateway {gw} via uplink {uplink}"));
        }
        assert_eq!(p.socket_kind(uplink, Family::V4), Some(want));
        assert_eq!(p.socket_kind(uplink, Family::V6), Some(want));
    }
    // Sequence numbers advance per (uplink, family) and many probes in flight
    // at once are each answered once.
    let mut ids = Vec::new();
    let now = Instant::now();
    for k in 0..50u32 {
        let target: IpAddr = if k % 2 == 0 {
            "198.18.1.1"
        } else {
            "2001:db8:2::1"
        }
        .parse()
        .unwrap();
        let id = next_id();
        ids.push(id);
        p.send(
            now,
            request(id, (k % 2) as usize, target, Duration::from_secs(2)),
        );
    }
    assert_eq!(p.in_flight(), 50);
    let mut got: Vec<ProbeId> = poll_until(&mut p, 50, Duration::from_secs(5))
        .into_iter()
        .map(|(id, o, _)| {
            assert_reply(&o, "burst");
            id
        })
        .collect();
    assert_eq!(p.in_flight(), 0);
    got.sort();
    assert_eq!(got, ids);
}

#[test]
fn gateway_echo_v4_v6_raw_socket() {
    in_private_netns(|| gateway_replies(false));
}

#[test]
fn gateway_echo_v4_v6_dgram_socket() {
    in_private_netns(|| gateway_replies(true));
}

/// Far targets: each is reachable only through its own router. A probe bound
/// to an uplink must leave through that uplink whatever the main table says.
#[test]
fn far_target_is_probed_through_the_requested_uplink() {
    in_private_netns(|| {
        let (_ns, _routers) = two_uplinks("far");
        let mut p = two_prober();
        let t = ms(400);
        for (a, b) in [
            ("198.19.0.1", "198.19.0.2"),
            ("2001:db8:ff::1", "2001:db8:ff::2"),
        ] {
            let (o, _) = probe(&mut p, 0, a, t);
            assert_reply(&o, &format!("{a} via uplink A"));
            let (o, _) = probe(&mut p, 1, a, t);
            assert_timeout(
                &o,
                &format!("{a} via uplink B must not be reached through A"),
            );
            // The main default route points at A; the mark still selects B.
            let (o, _) = probe(&mut p, 1, b, t);
            assert_reply(&o, &format!("{b} via uplink B"));
            let (o, _) = probe(&mut p, 0, b, t);
            assert_timeout(&o, &format!("{b} via uplink A"));
        }
    });
}

/// Without the mark the kernel would use the main table (default via A) or,
/// bound to B, treat the target as on-link: both fail. So the reply through
/// B proves SO_MARK is set. (Checked here with a prober whose mark is 0.)
#[test]
fn unmarked_probe_does_not_reach_far_target_of_other_uplink() {
    in_private_netns(|| {
        let (_ns, _routers) = two_uplinks("nomark");
        let mut p = Prober::new(vec![ProbeUplink {
            interface: "upb".into(),
            fwmark: 0,
        }]);
        let (o, _) = probe(&mut p, 0, "198.18.2.1", ms(1000));
        assert_reply(&o, "gateway B unmarked");
        let (o, _) = probe(&mut p, 0, "198.19.0.2", ms(300));
        assert!(
            !matches!(o, ProbeOutcome::Reply { .. }),
            "unmarked far probe got {o:?}"
        );
    });
}

/// Both uplinks share one interface (br0, with the two routers on the
/// bridge); only the mark tells their gateways apart. Each router answers for
/// its own far target only (no forwarding).
#[test]
fn shared_interface_mark_selects_the_gateway() {
    in_private_netns(|| {
        let test = "shared";
        let mut ns = Netns::new();
        run("ip link add br0 type bridge mcast_snooping 0");
        run("ip link set br0 up");
        run("ip addr add 198.18.3.10/24 dev br0");
        run("ip addr add 2001:db8:3::10/64 dev br0 nodad");
        for i in [1u8, 2] {
            let r = ns.add(test, &format!("r{i}"));
            let port = format!("p{i}");
            run(&format!(
                "ip link add {port} type veth peer name eth0 netns {r}"
            ));
            run(&format!("ip link set {port} master br0"));
            run(&format!("ip link set {port} up"));
            router_addresses(
                &r,
                &format!("198.18.3.{i}/24"),
                &format!("2001:db8:3::{i}/64"),
                i,
            );
            let table = 999 + u32::from(i);
            run(&format!(
                "ip route add default via 198.18.3.{i} dev br0 table {table}"
            ));
            run(&format!(
                "ip -6 route add default via 2001:db8:3::{i} dev br0 table {table}"
            ));
            run(&format!(
                "ip rule add fwmark {table} lookup {table} pref 100"
            ));
            run(&format!(
                "ip -6 rule add fwmark {table} lookup {table} pref 100"
            ));
        }
        // The main table points at router 1. Loose rp_filter still wants a
        // route back to the reply's source in the (unmarked) main lookup:
        // without any, the far targets' replies would be dropped.
        run("ip route add default via 198.18.3.1 dev br0");
        run("ip -6 route add default via 2001:db8:3::1 dev br0");
        let mut p = Prober::new(vec![
            ProbeUplink {
                interface: "br0".into(),
                fwmark: 1000,
            },
            ProbeUplink {
                interface: "br0".into(),
                fwmark: 1001,
            },
        ]);
        let t = ms(1000);
        for gw in ["198.18.3.1", "2001:db8:3::1"] {
            let (o, _) = probe(&mut p, 0, gw, t);
            assert_reply(&o, gw);
        }
        for gw in ["198.18.3.2", "2001:db8:3::2"] {
            let (o, _) = probe(&mut p, 1, gw, t);
            assert_reply(&o, gw);
        }
        let t = ms(400);
        for (a, b) in [
            ("198.19.0.1", "198.19.0.2"),
            ("2001:db8:ff::1", "2001:db8:ff::2"),
        ] {
            let (o, _) = probe(&mut p, 0, a, t);
            assert_reply(&o, &format!("{a} via mark 1000"));
            let (o, _) = probe(&mut p, 1, b, t);
            assert_reply(&o, &format!("{b} via mark 1001"));
            let (o, _) = probe(&mut p, 1, a, t);
            assert_timeout(&o, &format!("{a} via mark 1001"));
            let (o, _) = probe(&mut p, 0, b, t);
            assert_timeout(&o, &format!("{b} via mark 1000"));
        }
    });
}

/// A router that stops answering yields `Timeout`, reported at the timeout.
#[test]
fn timeout_when_the_router_stops_answering() {
    in_private_netns(|| {
        let (_ns, routers) = two_uplinks("drop");
        let ra = &routers[0];
        let mut p = two_prober();
        let t = ms(300);
        for gw in ["198.18.1.1", "2001:db8:1::1"] {
            let (o, _) = probe(&mut p, 0, gw, ms(1000));
            assert_reply(&o, gw);
        }
        // The server's neighbour entries stay valid, so the echoes still
        // reach the router, which no longer owns the addresses (and does not
        // forward): silence.
        run(&format!("ip -n {ra} addr del 198.18.1.1/24 dev eth0"));
        run(&format!("ip -n {ra} addr del 2001:db8:1::1/64 dev eth0"));
        for gw in ["198.18.1.1", "2001:db8:1::1"] {
            let (o, took) = probe(&mut p, 0, gw, t);
            assert_timeout(&o, gw);
            assert!(
                took >= t - ms(5) && took <= t + ms(250),
                "{gw}: timeout reported after {took:?}"
            );
        }
        // Uplink B is unaffected, and A answers again once the router does.
        let (o, _) = probe(&mut p, 1, "198.18.2.1", ms(1000));
        assert_reply(&o, "gateway B");
        run(&format!("ip -n {ra} addr add 198.18.1.1/24 dev eth0"));
        let (o, _) = probe(&mut p, 0, "198.18.1.1", ms(1000));
        assert_reply(&o, "gateway A back");
        // A link that goes down on the router side: no reply either.
        run(&format!("ip -n {ra} link set eth0 down"));
        let (o, _) = probe(&mut p, 0, "198.18.1.1", t);
        assert!(
            !matches!(o, ProbeOutcome::Reply { .. }),
            "router link down: got {o:?}"
        );
    });
}

#[test]
fn error_when_the_interface_does_not_exist() {
    in_private_netns(|| {
        let mut p = Prober::new(vec![ProbeUplink {
            interface: "nosuch0".into(),
            fwmark: 1000,
        }]);
        for target in ["198.18.9.1", "2001:db8:9::1"] {
            // A long timeout: an error held until it (as a timeout would
            // be) takes 10 s; one reported at once takes far less.
            let (o, took) = probe(&mut p, 0, target, ms(10_000));
            let ProbeOutcome::Error(msg) = o else {
                panic!("expected an error, got {o:?}");
            };
            for part in ["uplink 0", "nosuch0", target, "No such device"] {
                assert!(msg.contains(part), "{msg:?} does not name {part:?}");
            }
            assert!(
                took < ms(5_000),
                "error should be immediate, not at the timeout: took {took:?}"
            );
        }
        // An uplink the prober does not know is an error too, not a panic.
        let (o, _) = probe(&mut p, 3, "198.18.9.1", ms(500));
        assert!(
            matches!(o, ProbeOutcome::Error(ref m) if m.contains("uplink 3")),
            "{o:?}"
        );
    });
}

/// An interface deleted and recreated (new ifindex): the socket bound to the
/// old one is replaced and probing works again.
#[test]
fn socket_is_reopened_after_the_interface_is_recreated() {
    in_private_netns(|| {
        let test = "recreate";
        let (_ns, routers) = two_uplinks(test);
        let ra = &routers[0];
        let mut p = two_prober();
        let recreate = || {
            run(&format!(
                "ip link add upa type veth peer name eth0 netns {ra}"
            ));
            run(&format!("ip -n {ra} link set eth0 up"));
            run(&format!("ip -n {ra} addr add 198.18.1.1/24 dev eth0"));
            run(&format!(
                "ip -n {ra} addr add 2001:db8:1::1/64 dev eth0 nodad"
            ));
            run("ip link set upa up");
            run("ip addr add 198.18.1.10/24 dev upa");
            run("ip addr add 2001:db8:1::10/64 dev upa nodad");
            run("ip route add default via 198.18.1.1 dev upa table 1000");
            run("ip -6 route add default via 2001:db8:1::1 dev upa table 1000");
        };
        for gw in ["198.18.1.1", "2001:db8:1::1"] {
            let (o, _) = probe(&mut p, 0, gw, ms(1000));
            assert_reply(&o, gw);
        }
        // Deleted, probed while gone (an error naming the cause), recreated.
        run("ip link del upa");
        for gw in ["198.18.1.1", "2001:db8:1::1"] {
            let (o, _) = probe(&mut p, 0, gw, ms(300));
            assert!(
                matches!(o, ProbeOutcome::Error(ref m) if m.contains("upa")),
                "{gw} while deleted: {o:?}"
            );
        }
        recreate();
        for gw in ["198.18.1.1", "2001:db8:1::1"] {
            let (o, _) = probe(&mut p, 0, gw, ms(1000));
            assert_reply(&o, &format!("{gw} after recreation"));
        }
        // Deleted and recreated between two probes: the stale socket's
        // failure reopens it; at most one probe is lost.
        run("ip link del upa");
        recreate();
        for gw in ["198.18.1.1", "2001:db8:1::1"] {
            let (first, _) = probe(&mut p, 0, gw, ms(1000));
            println!("{gw}: first probe after silent recreation: {first:?}");
            if !matches!(first, ProbeOutcome::Reply { .. }) {
                assert!(matches!(first, ProbeOutcome::Error(_)), "{gw}: {first:?}");
                let (o, _) = probe(&mut p, 0, gw, ms(1000));
                assert_reply(&o, &format!("{gw} after silent recreation"));
            }
        }
    });
}

// ------------------------------------------------- spoofed / stray replies

/// How the fake responder answers an echo request.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(u8)]
enum Answer {
    Correct = 0,
    WrongToken = 1,
    WrongProbeId = 2,
    WrongSequence = 3,
    WrongSource = 4,
    /// Correct, but sent 30 ms after the request arrived.
    Delayed30ms = 5,
}

/// A user-space echo responder in router namespace `ns` (whose kernel echo
/// is switched off), answering IPv4 echo requests as `mode` says.
fn spawn_responder(ns: String, mode: Arc<AtomicU8>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let h = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
        let raw = || Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        let rx: UdpSocket = raw().into();
        rx.set_read_timeout(Some(ms(50))).unwrap();
        let spoof = raw();
        spoof
            .bind(&SocketAddr::from((Ipv4Addr::new(198, 19, 0, 1), 0)).into())
            .unwrap();
        let spoof: UdpSocket = spoof.into();
        r.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok((n, from)) = rx.recv_from(&mut buf) else {
                continue;
            };
            let Some(ip) = parse_ipv4(&buf[..n]) else {
                continue;
            };
            let icmp = ip.payload;
            if icmp.len() < 8 || icmp[0] != ICMP_ECHO_REQUEST {
                continue;
            }
            let mut reply = icmp.to_vec();
            reply[0] = 0;
            let mode = mode.load(Ordering::SeqCst);
            let last = reply.len() - 1;
            match mode {
                m if m == Answer::WrongToken as u8 => reply[8] ^= 1,
                m if m == Answer::WrongProbeId as u8 => reply[last] ^= 1,
                m if m == Answer::WrongSequence as u8 => reply[7] = reply[7].wrapping_add(1),
                m if m == Answer::Delayed30ms as u8 => std::thread::sleep(ms(30)),
                _ => {}
            }
            reply[2] = 0;
            reply[3] = 0;
            let sum = checksum(&reply);
            reply[2..4].copy_from_slice(&sum.to_be_bytes());
            let sock = if mode == Answer::WrongSource as u8 {
                &spoof
            } else {
                &rx
            };
            sock.send_to(&reply, from).unwrap();
        }
    });
    while !ready.load(Ordering::SeqCst) {
        assert!(!h.is_finished(), "responder failed to start");
        std::thread::sleep(ms(5));
    }
    h
}

/// Replies with a wrong token, probe id, sequence or source do not count;
/// the same responder answering correctly does (RAW and DGRAM sockets).
#[test]
fn spoofed_or_stray_replies_do_not_count() {
    in_private_netns(|| {
        let (_ns, routers) = two_uplinks("spoof");
        let ra = routers[0].clone();
        run(&format!(
            "ip netns exec {ra} sysctl -qw net.ipv4.icmp_echo_ignore_all=1"
        ));
        let mode = Arc::new(AtomicU8::new(Answer::Correct as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = StopOnDrop(stop.clone());
        let responder = spawn_responder(ra, mode.clone(), stop.clone());
        for dgram in [false, true] {
            if dgram {
                admit_root_to_ping_sockets();
            }
            let mut p = two_prober();
            for answer in [
                Answer::Correct,
                Answer::WrongToken,
                Answer::WrongProbeId,
                Answer::WrongSequence,
                Answer::WrongSource,
                Answer::Correct,
            ] {
                mode.store(answer as u8, Ordering::SeqCst);
                let (o, _) = probe(&mut p, 0, "198.18.1.1", ms(400));
                let what = format!("{answer:?} (dgram: {dgram})");
                if answer == Answer::Correct {
                    assert_reply(&o, &what);
                } else {
                    assert_timeout(&o, &what);
                }
            }
            let want = if dgram {
                SocketKind::Dgram
            } else {
                SocketKind::Raw
            };
            assert_eq!(p.socket_kind(0, Family::V4), Some(want));
        }
        stop.store(true, Ordering::SeqCst);
        responder.join().unwrap();
    });
}

// ------------------------------------------------------------------- cost

/// Kernel receive time, not poll time: a reply read 100 ms after the send
/// (and after its 50 ms deadline) still counts, with its true RTT (below the
/// deadline, far below the 100 ms after which it was read). The budgets are
/// wide so a loaded machine does not delay the veth round trip past them.
#[test]
fn rtt_is_measured_from_the_kernel_receive_time() {
    in_private_netns(|| {
        let (_ns, _routers) = two_uplinks("rtt");
        for dgram in [false, true] {
            if dgram {
                admit_root_to_ping_sockets();
            }
            let mut p = two_prober();
            for gw in ["198.18.1.1", "2001:db8:1::1", "fe80::1"] {
                // Resolves the neighbour first, which a 10 ms budget may not cover.
                let (o, _) = probe(&mut p, 0, gw, ms(1000));
                assert_reply(&o, gw);
                for _ in 0..5 {
                    let id = next_id();
                    let sent = Instant::now();
                    p.send(sent, request(id, 0, gw.parse().unwrap(), ms(50)));
                    std::thread::sleep(ms(100));
                    let mut out = Vec::new();
                    let now = Instant::now();
                    p.poll(now, &mut out);
                    let what =
                        format!("{gw} (dgram: {dgram}) read {:?} after the send", now - sent);
                    assert_eq!(out.len(), 1, "{what}: {out:?}");
                    assert_eq!(out[0].0, id);
                    let ProbeOutcome::Reply { rtt } = out[0].1 else {
                        panic!("{what}: expected a reply, got {:?}", out[0].1);
                    };
                    assert!(rtt < ms(50), "{what}: rtt {rtt:?}");
                    assert_eq!(p.in_flight(), 0);
                }
            }
        }
    });
}

/// A reply the kernel receives 30 ms after the send: with a 10 ms timeout it
/// is a `Timeout` although it is already queued when `poll` first runs after
/// the deadline... and with a 100 ms timeout its RTT is ~30 ms, not the 60 ms
/// after which `poll` read it.
#[test]
fn lateness_is_judged_by_kernel_time() {
    in_private_netns(|| {
        let (_ns, routers) = two_uplinks("late");
        let ra = routers[0].clone();
        run(&format!(
            "ip netns exec {ra} sysctl -qw net.ipv4.icmp_echo_ignore_all=1"
        ));
        let mode = Arc::new(AtomicU8::new(Answer::Correct as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = StopOnDrop(stop.clone());
        let responder = spawn_responder(ra, mode.clone(), stop.clone());
        for dgram in [false, true] {
            if dgram {
                admit_root_to_ping_sockets();
            }
            let mut p = two_prober();
            let (o, _) = probe(&mut p, 0, "198.18.1.1", ms(1000));
            assert_reply(&o, "undelayed");
            mode.store(Answer::Delayed30ms as u8, Ordering::SeqCst);
            for (timeout, late) in [(ms(10), true), (ms(100), false)] {
                let what = format!("timeout {timeout:?} (dgram: {dgram})");
                let id = next_id();
                let sent = Instant::now();
                p.send(sent, request(id, 0, "198.18.1.1".parse().unwrap(), timeout));
                std::thread::sleep(ms(60));
                let mut out = Vec::new();
                let read_at = Instant::now();
                p.poll(read_at, &mut out);
                assert_eq!(out.len(), 1, "{what}: {out:?}");
                assert_eq!(out[0].0, id);
                if late {
                    assert_timeout(&out[0].1, &what);
                } else {
                    let ProbeOutcome::Reply { rtt } = out[0].1 else {
                        panic!("{what}: expected a reply, got {:?}", out[0].1);
                    };
                    // The kernel's time: at least the responder's 30 ms
                    // delay, and short of when `poll` read it (60 ms or more
                    // after the send, later on a loaded machine).
                    let read = read_at - sent;
                    assert!(
                        rtt >= ms(30) && rtt < read,
                        "{what}: rtt {rtt:?}, read {read:?} after the send"
                    );
                }
            }
            mode.store(Answer::Correct as u8, Ordering::SeqCst);
            // The late reply is not held against the next probe.
            std::thread::sleep(ms(50));
            let (o, _) = probe(&mut p, 0, "198.18.1.1", ms(1000));
            assert_reply(&o, "after the delayed ones");
        }
        stop.store(true, Ordering::SeqCst);
        responder.join().unwrap();
    });
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// -------------------------------------------------------- no wake-ups

/// The socket fds this thread can see.
fn socket_fds() -> Vec<i32> {
    let mut fds = Vec::new();
    for e in std::fs::read_dir("/proc/thread-self/fd").unwrap().flatten() {
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        if link.to_string_lossy().starts_with("socket:") {
            if let Ok(fd) = e.file_name().to_string_lossy().parse() {
                fds.push(fd);
            }
        }
    }
    fds
}

/// Every fd registered with any epoll instance of the process (from the
/// `tfd:` lines of the epoll fds' fdinfo).
fn epoll_registered_fds() -> Vec<i32> {
    let mut fds = Vec::new();
    for e in std::fs::read_dir("/proc/thread-self/fd").unwrap().flatten() {
        let link = std::fs::read_link(e.path()).unwrap_or_default();
        if !link.to_string_lossy().contains("eventpoll") {
            continue;
        }
        let info_path = format!(
            "/proc/thread-self/fdinfo/{}",
            e.file_name().to_string_lossy()
        );
        let info = std::fs::read_to_string(info_path).unwrap_or_default();
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("tfd:") {
                if let Some(Ok(fd)) = rest.split_whitespace().next().map(str::parse) {
                    fds.push(fd);
                }
            }
        }
    }
    fds
}

/// The prober needs no runtime, and its sockets are registered nowhere, so
/// a reply never wakes a thread: only the caller's tick reads them.
#[test]
fn prober_needs_no_runtime_and_registers_no_fd() {
    in_private_netns(|| {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "this test must run outside any tokio runtime"
        );
        let (_ns, _routers) = two_uplinks("noreactor");
        let before = socket_fds();
        let mut p = two_prober();
        for (uplink, gw) in [(0, "198.18.1.1"), (1, "2001:db8:2::1")] {
            let (o, _) = probe(&mut p, uplink, gw, ms(1000));
            assert_reply(&o, gw);
        }
        let mine: Vec<i32> = socket_fds()
            .into_iter()
            .filter(|fd| !before.contains(fd))
            .collect();
        assert!(mine.len() >= 2, "the prober's sockets: {mine:?}");
        let registered = epoll_registered_fds();
        for fd in &mine {
            assert!(
                !registered.contains(fd),
                "socket fd {fd} is registered with an epoll instance"
            );
        }
    });
}

// ------------------------------------------------------------------- cost

/// Steady state costs no heap allocation per probe, and little CPU: this
/// thread does all of it (send, the kernel's delivery to the router and
/// back where it runs in this thread's softirq, and poll).
#[test]
fn cost_per_probe() {
    in_private_netns(|| {
        let (_ns, _routers) = two_uplinks("cost");
        let mut p = two_prober();
        let targets: [(usize, IpAddr); 4] = [
            (0, "198.18.1.1".parse().unwrap()),
            (1, "198.18.2.1".parse().unwrap()),
            (0, "2001:db8:1::1".parse().unwrap()),
            (1, "2001:db8:2::1".parse().unwrap()),
        ];
        let mut out = Vec::with_capacity(64);
        let mut next = 0u64;
        // Thread CPU spent inside `send` and inside `poll`.
        let in_send = Cell::new(Duration::ZERO);
        let in_poll = Cell::new(Duration::ZERO);
        // One round: a probe per socket, then the daemon's tick (every 2 ms
        // here) until all four are answered.
        let mut round = |p: &mut Prober, out: &mut Vec<(ProbeId, ProbeOutcome)>| {
            let now = Instant::now();
            let cpu0 = thread_cpu();
            for (uplink, target) in targets {
                next += 1;
                p.send(
                    now,
                    request(ProbeId(next), uplink, target, Duration::from_secs(2)),
                );
            }
            in_send.set(in_send.get() + (thread_cpu() - cpu0));
            let mut done = 0;
            for _ in 0..1000 {
                std::thread::sleep(ms(2));
                let cpu0 = thread_cpu();
                p.poll(Instant::now(), out);
                in_poll.set(in_poll.get() + (thread_cpu() - cpu0));
                for (_, o) in out.drain(..) {
                    assert!(matches!(o, ProbeOutcome::Reply { .. }), "{o:?}");
                    done += 1;
                }
                if done == targets.len() {
                    return;
                }
            }
            panic!("round not answered within 2 s");
        };
        // Warm up: open the sockets, resolve neighbours, grow the tables.
        for _ in 0..50 {
            round(&mut p, &mut out);
        }
        let rounds = 500;
        let (send0, poll0) = (in_send.get(), in_poll.get());
        let cpu0 = thread_cpu();
        let allocs0 = thread_allocs();
        let wall0 = Instant::now();
        for _ in 0..rounds {
            round(&mut p, &mut out);
        }
        let (send_cpu, poll_cpu) = (in_send.get() - send0, in_poll.get() - poll0);
        let n = (rounds * targets.len()) as f64;
        let allocs = thread_allocs() - allocs0;
        let cpu = thread_cpu() - cpu0;
        let wall = wall0.elapsed();
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
        println!(
            "{n} probes: {:.3} allocations/probe; CPU/probe: {:.1} µs in send (incl. the \
             veth round trip, which the kernel runs in the sender's softirq here), {:.1} µs in \
             poll, {:.1} µs total on the thread (incl. the test's own sleeps and clock \
             reads); wall {wall:?}",
            allocs as f64 / n,
            us(send_cpu),
            us(poll_cpu),
            us(cpu)
        );
        assert!(
            (allocs as f64) / n < 0.01,
            "{allocs} allocations for {n} probes"
        );

        // The tick itself: nothing in flight (no syscall at all), then one
        // probe in flight on each of the four sockets, unanswered (one
        // recvmsg per socket, EAGAIN).
        let ticks = 20_000;
        let per_tick = |p: &mut Prober, out: &mut Vec<(ProbeId, ProbeOutcome)>| {
            let cpu0 = thread_cpu();
            for _ in 0..ticks {
                p.poll(Instant::now(), out);
            }
            (thread_cpu() - cpu0).as_secs_f64() * 1e6 / f64::from(ticks)
        };
        assert_eq!(p.in_flight(), 0);
        let idle = per_tick(&mut p, &mut out);
        let now = Instant::now();
        for (k, target) in [
            "198.18.1.99",
            "198.18.2.99",
            "2001:db8:1::99",
            "2001:db8:2::99",
        ]
        .into_iter()
        .enumerate()
        {
            next += 1;
            let req = request(
                ProbeId(next),
                k % 2,
                target.parse().unwrap(),
                Duration::from_secs(60),
            );
            p.send(now, req);
        }
        let waiting = per_tick(&mut p, &mut out);
        assert!(out.is_empty(), "{out:?}");
        println!(
            "poll: {idle:.2} µs CPU with nothing in flight, {waiting:.2} µs with a probe in \
             flight on each of 4 sockets"
        );
    });
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a live timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wait until `fd` is readable (bounded); true if it became readable.
fn readable_within(fd: std::os::fd::RawFd, within: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = within.as_millis() as libc::c_int;
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r == 1 && p.revents & libc::POLLIN != 0
}

fn transit_request(uplink: usize, target: &str) -> ProbeRequest {
    let target: IpAddr = target.parse().unwrap();
    ProbeRequest {
        kind: ProbeKind::Transit(0),
        ..request(next_id(), uplink, target, ms(2000))
    }
}

/// The daemon's loop sleeps past a reply check when the probe's socket is
/// readable (src/daemon.rs, `ReplyWatch`): a socket handed out by
/// `watch_fd` must be readable when, and only when, its one probe has been
/// answered, gateway and transit echoes each on a socket of their own.
fn watch_fd_means_answered(dgram: bool) {
    let (_ns, routers) = two_uplinks(if dgram { "watch-dgram" } else { "watch-raw" });
    if dgram {
        admit_root_to_ping_sockets();
    }
    let mut p = two_prober();
    let mut out = Vec::new();
    for (gw, far) in [
        ("198.18.1.1", "198.19.0.1"),
        ("2001:db8:1::1", "2001:db8:ff::1"),
    ] {
        let f = Family::of(&gw.parse().unwrap());
        let g = next_id();
        p.send(Instant::now(), request(g, 0, gw.parse().unwrap(), ms(2000)));
        let t = transit_request(0, far);
        let tid = t.id;
        p.send(Instant::now(), t);
        let fg = p
            .watch_fd(0, f, ProbeKind::Gateway)
            .expect("gateway socket watchable");
        let ft = p
            .watch_fd(0, f, ProbeKind::Transit(0))
            .expect("transit socket watchable");
        assert_ne!(fg, ft, "{f}: gateway and transit echoes share a socket");
        assert_eq!(
            p.watch_fd(1, f, ProbeKind::Gateway),
            None,
            "nothing in flight on B"
        );
        assert!(
            readable_within(fg, ms(1000)),
            "{f}: gateway reply not queued"
        );
        assert!(
            readable_within(ft, ms(1000)),
            "{f}: transit reply not queued"
        );
        // Read on the next round, the replies still count as replies.
        std::thread::sleep(ms(50));
        p.poll(Instant::now(), &mut out);
        let mut got: Vec<ProbeId> = out
            .drain(..)
            .map(|(id, o)| {
                assert_reply(&o, "read late");
                id
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![g, tid]);
        assert_eq!(
            p.watch_fd(0, f, ProbeKind::Gateway),
            None,
            "nothing in flight"
        );
        // Two probes in flight on one socket: readable says nothing about
        // the second, so it is not watchable.
        for _ in 0..2 {
            p.send(
                Instant::now(),
                request(next_id(), 0, gw.parse().unwrap(), ms(2000)),
            );
        }
        assert_eq!(p.watch_fd(0, f, ProbeKind::Gateway), None, "two in flight");
        poll_until(&mut p, 2, Duration::from_secs(3));
    }
    // A silent gateway: its socket stays unreadable even while the transit
    // socket of the same uplink and family gets its reply.
    let ra = &routers[0];
    // The router gives up the gateway address but still routes back to
    // the server (the far target's replies leave from its lo address).
    run(&format!("ip -n {ra} addr del 198.18.1.1/24 dev eth0"));
    run(&format!(
        "ip -n {ra} route add 198.18.1.0/24 dev eth0 src 198.19.0.1"
    ));
    let g = next_id();
    p.send(
        Instant::now(),
        request(g, 0, "198.18.1.1".parse().unwrap(), ms(300)),
    );
    p.send(Instant::now(), transit_request(0, "198.19.0.1"));
    let fg = p.watch_fd(0, Family::V4, ProbeKind::Gateway).unwrap();
    let ft = p.watch_fd(0, Family::V4, ProbeKind::Transit(0)).unwrap();
    assert!(readable_within(ft, ms(1000)), "transit reply not queued");
    assert!(
        !readable_within(fg, ms(100)),
        "silent gateway's socket readable"
    );
    let got = poll_until(&mut p, 2, Duration::from_secs(3));
    let (_, o, _) = got.iter().find(|(id, _, _)| *id == g).unwrap();
    assert_timeout(o, "silent gateway");
}

#[test]
fn watch_fd_is_readable_when_its_probe_is_answered_raw_socket() {
    in_private_netns(|| watch_fd_means_answered(false));
}

#[test]
fn watch_fd_is_readable_when_its_probe_is_answered_dgram_socket() {
    in_private_netns(|| watch_fd_means_answered(true));
}

// ------------------------------------------------------ on-path reflector

/// The far target of the reflector test, in a namespace of its own behind
/// the gateway (so the gateway's namespace is a box on the path).
const REFLECTED: [&str; 2] = ["198.19.0.9", "2001:db8:ff::9"];

/// Server `upa` (mark/table 1000) — router r1 (the gateway, forwarding) —
/// `tgt` holding the far targets [`REFLECTED`] on its lo. Returns the
/// namespaces and the router's name.
fn reflector_topology(test: &str) -> (Netns, String) {
    let mut ns = Netns::new();
    let r = add_router_uplink(&mut ns, test, 1, "upa");
    // Loose rp_filter wants a route back to the far target's address.
    run("ip route add default via 198.18.1.1 dev upa");
    run("ip -6 route add default via 2001:db8:1::1 dev upa");
    let t = ns.add(test, "tgt");
    run(&format!(
        "ip -n {r} link add eth1 type veth peer name eth0 netns {t}"
    ));
    run(&format!(
        "ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
    ));
    for (ns_name, v4, v6) in [
        (&r, "198.18.9.1/24", "2001:db8:9::1/64"),
        (&t, "198.18.9.2/24", "2001:db8:9::2/64"),
    ] {
        let dev = if *ns_name == r { "eth1" } else { "eth0" };
        run(&format!("ip -n {ns_name} link set {dev} up"));
        run(&format!("ip -n {ns_name} addr add {v4} dev {dev}"));
        run(&format!("ip -n {ns_name} addr add {v6} dev {dev} nodad"));
    }
    run(&format!("ip -n {t} addr add {}/32 dev lo", REFLECTED[0]));
    run(&format!("ip -n {t} addr add {}/128 dev lo", REFLECTED[1]));
    run(&format!("ip -n {t} route add default via 198.18.9.1"));
    run(&format!("ip -n {t} -6 route add default via 2001:db8:9::1"));
    reach_target(&r, true);
    (ns, r)
}

/// In router `r`: route the far targets to `tgt`, or (dead) into a
/// blackhole, which drops the requests silently: the target never sees them.
fn reach_target(r: &str, alive: bool) {
    for (target, len, via) in [
        (REFLECTED[0], 32, "198.18.9.2"),
        (REFLECTED[1], 128, "2001:db8:9::2"),
    ] {
        let how = if alive {
            format!("{target}/{len} via {via}")
        } else {
            format!("blackhole {target}/{len}")
        };
        run(&format!("ip -n {r} route replace {how}"));
    }
}

/// A reflector on router `ns`'s server-facing `eth0`: while `on`, every
/// echo request to a [`REFLECTED`] address that arrives there is turned
/// around as is (MACs and addresses exchanged, type 8 -> 0 / 128 -> 129,
/// checksum fixed: identifier, sequence, payload and TTL / hop limit stay
/// the request's) and sent back out of `eth0`, from a packet socket.
fn spawn_reflector(ns: String, on: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    use uplinkd::probe::packet::{icmpv6_checksum, parse_ethernet, parse_ipv6};
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let h = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
        let ifindex = nix::net::if_::if_nametoindex("eth0").unwrap();
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is closed when the thread ends.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex as i32;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: valid fd, live structs of the stated sizes.
        unsafe {
            let len = std::mem::size_of_val(&sll) as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), len),
                0
            );
            let tvlen = std::mem::size_of_val(&tv) as libc::socklen_t;
            let tvp = (&tv as *const libc::timeval).cast();
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tvp, tvlen);
        }
        r.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 || !on.load(Ordering::SeqCst) {
                continue;
            }
            let frame = &buf[..n as usize];
            let Some(eth) = parse_ethernet(frame) else {
                continue;
            };
            let mut out = frame.to_vec();
            let ip = &mut out[14..];
            let request = if let Some(v4) = parse_ipv4(eth.payload) {
                v4.protocol == 1
                    && v4.dst.to_string() == REFLECTED[0]
                    && v4.payload.first() == Some(&ICMP_ECHO_REQUEST)
            } else if let Some(v6) = parse_ipv6(eth.payload) {
                v6.next_header == 58
                    && v6.dst.to_string() == REFLECTED[1]
                    && v6.payload.first() == Some(&128)
            } else {
                false
            };
            if !request {
                continue;
            }
            // Exchange the addresses; the IPv4 header checksum stays right.
            let (at, len) = if ip[0] >> 4 == 4 { (12, 4) } else { (8, 16) };
            let src = ip[at..at + len].to_vec();
            ip.copy_within(at + len..at + 2 * len, at);
            ip[at + len..at + 2 * len].copy_from_slice(&src);
            if ip[0] >> 4 == 4 {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let icmp = &mut ip[ihl..];
                icmp[0] = 0;
                icmp[2..4].fill(0);
                let sum = checksum(icmp);
                icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            } else {
                let v6 = parse_ipv6(ip).unwrap();
                let (s, d, plen) = (v6.src, v6.dst, v6.payload.len());
                let icmp = &mut ip[40..40 + plen];
                icmp[0] = 129;
                icmp[2..4].fill(0);
                let sum = icmpv6_checksum(&s, &d, icmp);
                icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            }
            let (dst, src) = (eth.src, eth.dst);
            out[0..6].copy_from_slice(&dst);
            out[6..12].copy_from_slice(&src);
            // SAFETY: valid fd and buffer.
            unsafe { libc::send(fd, out.as_ptr().cast(), out.len(), 0) };
        }
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(fd) };
    });
    while !ready.load(Ordering::SeqCst) {
        assert!(!h.is_finished(), "reflector failed to start");
        std::thread::sleep(ms(5));
    }
    h
}

/// A box on the path that copies echo requests back as replies (payload and
/// sequence verbatim) must not keep a dead target up: with the real target
/// unreachable and the reflector on, at most one reflected reply counts
/// (the first cannot be told from a route change) and then every probe
/// times out; once the reflector is gone and the target is back, its replies
/// count at once. RAW and DGRAM sockets, IPv4 and IPv6.
#[test]
fn reflected_echo_replies_do_not_keep_a_dead_target_up() {
    in_private_netns(|| {
        let (_ns, r) = reflector_topology("reflect");
        let on = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = StopOnDrop(stop.clone());
        let reflector = spawn_reflector(r.clone(), on.clone(), stop.clone());
        let t = ms(300);
        for dgram in [false, true] {
            if dgram {
                admit_root_to_ping_sockets();
            }
            let mut p = Prober::new(vec![ProbeUplink {
                interface: "upa".into(),
                fwmark: 1000,
            }]);
            for target in REFLECTED {
                let what = |phase: &str| format!("{target} (dgram: {dgram}): {phase}");
                for _ in 0..4 {
                    let (o, _) = probe(&mut p, 0, target, ms(1000));
                    assert_reply(&o, &what("target alive"));
                }
                reach_target(&r, false);
                let (o, _) = probe(&mut p, 0, target, t);
                assert_timeout(&o, &what("target dead"));
                on.store(true, Ordering::SeqCst);
                let start = Instant::now();
                let mut seen = Vec::new();
                while seen
                    .iter()
                    .rev()
                    .take_while(|o| **o == ProbeOutcome::Timeout)
                    .count()
                    < 4
                {
                    assert!(
                        seen.len() < 10 && start.elapsed() < Duration::from_secs(10),
                        "{}: a reflector keeps the dead target up: {seen:?}",
                        what("reflected")
                    );
                    seen.push(probe(&mut p, 0, target, t).0);
                }
                let replies = seen
                    .iter()
                    .filter(|o| matches!(o, ProbeOutcome::Reply { .. }));
                assert!(replies.count() <= 1, "{}: {seen:?}", what("reflected"));
                println!("{}: {seen:?}", what("reflected"));
                on.store(false, Ordering::SeqCst);
                reach_target(&r, true);
                for _ in 0..4 {
                    let (o, _) = probe(&mut p, 0, target, ms(1000));
                    assert_reply(&o, &what("target back"));
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        reflector.join().unwrap();
    });
}
