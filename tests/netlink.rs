//! The netlink adapters against the real kernel. Needs root.
//!
//! Every test runs in its own network namespace: a std thread that calls
//! `unshare(CLONE_NEWNET)` and then runs a current-thread tokio runtime. The
//! `ip` commands it spawns inherit that thread's namespace, and everything
//! dies with the thread. Only 198.18.0.0/15 and 2001:db8::/32 are used.
//! Nothing here touches the root namespace (one test only *reads* /proc from
//! a root-namespace thread to compare).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{unshare, CloneFlags};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use uplinkd::config::Family;
use uplinkd::netlink::{
    spawn_carrier_poller, spawn_carrier_poller_hot, spawn_monitor, spawn_monitor_with,
    uplink_sysctls, Actuator, CarrierSample, MonitorOptions, NetEvent, RouteInfo, RTPROT_UPLINKD,
};

const MAIN: u32 = 254;
/// Upper bound on any single test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

/// Run `f` in a fresh network namespace on its own thread with a
/// current-thread runtime. Panics (assertion failures) propagate.
fn in_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) (are we root?)");
        ip("link set lo up");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(TEST_TIMEOUT, f())
                .await
                .expect("test body timed out");
        });
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// Run `ip <args>` (split on whitespace) and return stdout; panics on failure.
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ip_json(args: &str) -> Vec<Value> {
    let s = ip(&format!("-j {args}"));
    if s.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&s)
        .unwrap_or_else(|e| panic!("ip -j {args}: {e}: {s}"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A veth pair `a` <-> `b`, both up, with optional addresses on `a`, and
/// wait until both ends are operationally up (veth carrier-on is lazy).
fn veth(a: &str, b: &str, v4: Option<&str>, v6: Option<&str>) {
    ip(&format!("link add {a} type veth peer name {b}"));
    if let Some(addr) = v4 {
        ip(&format!("addr add {addr} dev {a}"));
    }
    if let Some(addr) = v6 {
        ip(&format!("-6 addr add {addr} dev {a} nodad"));
    }
    ip(&format!("link set {a} up"));
    ip(&format!("link set {b} up"));
    wait_oper_up(a);
    wait_oper_up(b);
}

fn wait_oper_up(dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = ip_json(&format!("link show dev {dev}"));
        if l.first().and_then(|l| l["operstate"].as_str()) == Some("UP") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dev} never became operationally up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Default routes in `table` at `metric` as `ip -j` shows them.
fn ip_defaults(family: Family, table: u32, metric: u32) -> Vec<Value> {
    let fam = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    ip_json(&format!("{fam} route show default table {table}"))
        .into_iter()
        .filter(|r| r["metric"].as_u64().unwrap_or(0) == u64::from(metric))
        .collect()
}

/// Wait (bounded) for an event matching `pred`; returns it and the events
/// seen before it.
async fn wait_event<T: std::fmt::Debug>(
    rx: &mut UnboundedReceiver<T>,
    within: Duration,
    what: &str,
    mut pred: impl FnMut(&T) -> bool,
) -> (T, Vec<T>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return (ev, before),
            Ok(Some(ev)) => before.push(ev),
            Ok(None) => panic!("channel closed while waiting for {what}; saw {before:#?}"),
            Err(_) => panic!("no {what} within {within:?}; saw {before:#?}"),
        }
    }
}

fn gw4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, last))
}

fn gw6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last))
}

// ---------------------------------------------------------------- actuator

#[test]
fn replace_default_route_is_atomic_and_idempotent_v4() {
    in_netns(|| async {
        veth("u0", "u0p", Some("198.18.1.2/24"), None);
        let act = Actuator::new().await.unwrap();
        let idx = act.ifindex("u0").await.unwrap().expect("u0 exists");
        assert_eq!(act.ifindex("nosuch0").await.unwrap(), None);

        // A monitor watches: a replace must never show as delete + add.
        let (tx, mut rx) = unbounded_channel();
        let _mon = spawn_monitor(tx).await.unwrap();
        wait_event(&mut rx, Duration::from_secs(5), "DumpDone", |e| {
            *e == NetEvent::DumpDone
        })
        .await;

        for _ in 0..2 {
            act.replace_default_route(Family::V4, gw4(1), idx, 10, MAIN, RTPROT_UPLINKD)
                .await
                .unwrap();
            let r = ip_defaults(Family::V4, MAIN, 10);
            assert_eq!(r.len(), 1, "{r:#?}");
            assert_eq!(r[0]["gateway"], "198.18.1.1");
            assert_eq!(r[0]["dev"], "u0");
        }
        act.replace_default_route(Family::V4, gw4(3), idx, 10, MAIN, RTPROT_UPLINKD)
            .await
            .unwrap();
        let r = ip_defaults(Family::V4, MAIN, 10);
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0]["gateway"], "198.18.1.3");
        assert_eq!(r[0]["protocol"].to_string().trim_matches('"'), "85");

        let (_, before) = wait_event(&mut rx, Duration::from_secs(5), "route via .3", |e| {
            matches!(e, NetEvent::Route { route, removed: false } if route.gateway == Some(gw4(3)))
        })
        .await;
        assert!(
            !before.iter().any(|e| matches!(e,
                NetEvent::Route { route, removed: true } if route.dst_len == 0 && route.metric == 10)),
            "replace showed up as a delete: {before:#?}"
        );

        // What the actuator reads back.
        let routes = act.default_routes(Family::V4, MAIN).await.unwrap();
        assert_eq!(
            routes,
            vec![RouteInfo {
                family: Family::V4,
                table: MAIN,
                dst_len: 0,
                metric: 10,
                gateway: Some(gw4(3)),
                oif: Some(idx),
                protocol: RTPROT_UPLINKD,
            }]
        );

        // Tables > 255 (RTA_TABLE) and a second metric in the same table.
        act.replace_default_route(Family::V4, gw4(1), idx, 10, 1000, RTPROT_UPLINKD)
            .await
            .unwrap();
        act.replace_default_route(Family::V4, gw4(1), idx, 11, MAIN, RTPROT_UPLINKD)
            .await
            .unwrap();
        assert_eq!(ip_defaults(Family::V4, 1000, 10).len(), 1);
        assert_eq!(ip_defaults(Family::V4, MAIN, 10).len(), 1);
        assert_eq!(ip_defaults(Family::V4, MAIN, 11).len(), 1);
        assert_eq!(act.default_routes(Family::V4, 1000).await.unwrap().len(), 1);

        // Errors name the object and the cause.
        let e = act
            .replace_default_route(Family::V4, gw4(1), 999_999, 10, MAIN, RTPROT_UPLINKD)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "replace ipv4 default route via 198.18.1.1 ifindex 999999 metric 10 table 254: "
            ),
            "{e}"
        );
        let e = act
            .replace_default_route(
                Family::V4,
                IpAddr::V4(Ipv4Addr::new(198, 19, 9, 9)),
                idx,
                10,
                MAIN,
                RTPROT_UPLINKD,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("replace ipv4 default route via 198.19.9.9 dev u0 metric 10 table 254: "),
            "{e}"
        );
        eprintln!("example error: {e}");
        // Refused before reaching the kernel.
        assert!(act
            .replace_default_route(Family::V4, gw6(1), idx, 10, MAIN, RTPROT_UPLINKD)
            .await
            .is_err());
        assert!(act
            .replace_default_route(Family::V4, gw4(1), idx, 0, MAIN, RTPROT_UPLINKD)
            .await
            .is_err());
    });
}

#[test]
fn replace_default_route_is_atomic_and_idempotent_v6() {
    in_netns(|| async {
        veth("u0", "u0p", None, Some("2001:db8:1::2/64"));
        let act = Actuator::new().await.unwrap();
        let idx = act.ifindex("u0").await.unwrap().unwrap();
        for _ in 0..2 {
            act.replace_default_route(Family::V6, gw6(1), idx, 10, MAIN, RTPROT_UPLINKD)
                .await
                .unwrap();
            let r = ip_defaults(Family::V6, MAIN, 10);
            assert_eq!(r.len(), 1, "{r:#?}");
            assert_eq!(r[0]["gateway"], "2001:db8:1::1");
        }
        act.replace_default_route(Family::V6, gw6(3), idx, 10, MAIN, RTPROT_UPLINKD)
            .await
            .unwrap();
        let r = ip_defaults(Family::V6, MAIN, 10);
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0]["gateway"], "2001:db8:1::3");
        // The explicit metric stuck (IPv6 would have made 0 into 1024).
        assert!(ip_defaults(Family::V6, MAIN, 1024).is_empty());
        let routes = act.default_routes(Family::V6, MAIN).await.unwrap();
        assert_eq!(routes.len(), 1, "{routes:#?}");
        assert_eq!(routes[0].metric, 10);
        assert_eq!(routes[0].gateway, Some(gw6(3)));
        assert_eq!(routes[0].protocol, RTPROT_UPLINKD);

        act.replace_default_route(Family::V6, gw6(1), idx, 10, 1000, RTPROT_UPLINKD)
            .await
            .unwrap();
        assert_eq!(ip_defaults(Family::V6, 1000, 10).len(), 1);
    });
}

#[test]
fn delete_default_route_is_idempotent() {
    in_netns(|| async {
        veth("u0", "u0p", Some("198.18.1.2/24"), Some("2001:db8:1::2/64"));
        let act = Actuator::new().await.unwrap();
        let idx = act.ifindex("u0").await.unwrap().unwrap();
        for (fam, gw) in [(Family::V4, gw4(1)), (Family::V6, gw6(1))] {
            // Nothing there yet: fine.
            act.delete_default_route(fam, 10, MAIN).await.unwrap();
            act.replace_default_route(fam, gw, idx, 10, MAIN, RTPROT_UPLINKD)
                .await
                .unwrap();
            // A neighbour at another metric must survive.
            act.replace_default_route(fam, gw, idx, 20, MAIN, RTPROT_UPLINKD)
                .await
                .unwrap();
            act.delete_default_route(fam, 10, MAIN).await.unwrap();
            act.delete_default_route(fam, 10, MAIN).await.unwrap();
            assert!(ip_defaults(fam, MAIN, 10).is_empty());
            assert_eq!(ip_defaults(fam, MAIN, 20).len(), 1);
            // Metric 0 would mean "any" to the kernel: refused.
            assert!(act.delete_default_route(fam, 0, MAIN).await.is_err());
            assert_eq!(ip_defaults(fam, MAIN, 20).len(), 1);
        }
    });
}

#[test]
fn ensure_rule_is_idempotent() {
    in_netns(|| async {
        let act = Actuator::new().await.unwrap();
        for fam in Family::ALL {
            let flag = match fam {
                Family::V4 => "-4",
                Family::V6 => "-6",
            };
            let ours = || {
                ip_json(&format!("{flag} rule show"))
                    .into_iter()
                    .filter(|r| r["priority"].as_u64() == Some(5000))
                    .collect::<Vec<_>>()
            };
            for _ in 0..3 {
                act.ensure_rule(fam, 0x100, 1000, 5000).await.unwrap();
            }
            let r = ours();
            assert_eq!(r.len(), 1, "{r:#?}");
            assert_eq!(r[0]["fwmark"], "0x100");
            assert_eq!(r[0]["table"], "1000");
            // A different mark at the same priority is a different rule.
            act.ensure_rule(fam, 0x101, 1001, 5000).await.unwrap();
            assert_eq!(ours().len(), 2);
            act.delete_rule(fam, 0x100, 1000, 5000).await.unwrap();
            act.delete_rule(fam, 0x100, 1000, 5000).await.unwrap();
            let r = ours();
            assert_eq!(r.len(), 1, "{r:#?}");
            assert_eq!(r[0]["fwmark"], "0x101");
            act.delete_rule(fam, 0x101, 1001, 5000).await.unwrap();
            assert!(ours().is_empty());
        }
    });
}

#[test]
fn flush_neighbours_removes_dynamic_entries_and_releases_senders() {
    in_netns(|| async {
        veth("u0", "u0p", Some("198.18.1.2/24"), Some("2001:db8:1::2/64"));
        ip("neigh add 198.18.1.10 lladdr 02:00:00:00:00:0a dev u0 nud reachable");
        ip("neigh add 198.18.1.11 lladdr 02:00:00:00:00:0b dev u0 nud stale");
        ip("neigh add 198.18.1.12 lladdr 02:00:00:00:00:0c dev u0 nud permanent");
        ip("-6 neigh add 2001:db8:1::10 lladdr 02:00:00:00:00:0a dev u0 nud reachable");

        // A sender stuck on an unresolved neighbour (nobody answers ARP for
        // .20): its datagrams sit in the neighbour queue and hold its send
        // buffer, so a small-buffer socket soon gets EAGAIN.
        let sock = UdpSocket::bind("198.18.1.2:0").unwrap();
        set_sndbuf(&sock, 4096);
        sock.set_nonblocking(true).unwrap();
        let mut sent = 0;
        let blocked = loop {
            match sock.send_to(&[0u8; 1000], "198.18.1.20:9") {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(e) => panic!("send: {e}"),
            }
            if sent > 1000 {
                break false;
            }
        };
        assert!(blocked, "sender never blocked on the unresolved neighbour");

        let act = Actuator::new().await.unwrap();
        let idx = act.ifindex("u0").await.unwrap().unwrap();
        let n = act.flush_neighbours(idx, Family::V4).await.unwrap();
        assert_eq!(n, 3, "reachable, stale and the incomplete .20");
        // The queued datagrams were freed with the entry: the sender can go on
        // now, not ~3 s later when resolution would have failed.
        let t = Instant::now();
        let resumed = loop {
            if sock.send_to(&[0u8; 1000], "198.18.1.20:9").is_ok() {
                break true;
            }
            if t.elapsed() > Duration::from_millis(500) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(resumed, "sender still blocked after the flush");

        let left: Vec<String> = ip_json("-4 neigh show dev u0")
            .iter()
            .map(|n| n["dst"].as_str().unwrap().to_string())
            .collect();
        assert!(left.contains(&"198.18.1.12".to_string()), "{left:?}");
        assert!(!left.contains(&"198.18.1.10".to_string()), "{left:?}");
        assert!(!left.contains(&"198.18.1.11".to_string()), "{left:?}");
        let v6 = ip("-6 neigh show dev u0");
        assert!(v6.contains("2001:db8:1::10"), "v4 flush touched v6: {v6}");
        act.flush_neighbours(idx, Family::V6).await.unwrap();
        assert!(!ip("-6 neigh show dev u0").contains("2001:db8:1::10"));
        // Nothing left to flush is fine.
        act.flush_neighbours(idx, Family::V6).await.unwrap();
    });
}

fn set_sndbuf(sock: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

// ---------------------------------------------------------------- monitor

#[test]
fn monitor_dumps_then_reports_changes() {
    in_netns(|| async {
        veth("m0", "m0p", Some("198.18.1.2/24"), Some("2001:db8:1::2/64"));
        ip("route add default via 198.18.1.1 dev m0 metric 10");
        ip("-6 route add default via 2001:db8:1::1 dev m0 metric 10");
        let (tx, mut rx) = unbounded_channel();
        let mon = spawn_monitor(tx).await.unwrap();
        // SO_RCVBUFFORCE as root: not capped by net.core.rmem_max.
        assert!(mon.recv_buffer() >= 8 << 20, "rcvbuf {}", mon.recv_buffer());

        let (_, dump) = wait_event(&mut rx, Duration::from_secs(5), "DumpDone", |e| {
            *e == NetEvent::DumpDone
        })
        .await;
        let m0 = dump
            .iter()
            .find_map(|e| match e {
                NetEvent::Link(l) if l.name == "m0" => Some(l.clone()),
                _ => None,
            })
            .expect("m0 in the dump");
        assert!(m0.admin_up && m0.carrier && m0.oper_up, "{m0:?}");
        for (fam, gw) in [(Family::V4, gw4(1)), (Family::V6, gw6(1))] {
            assert!(
                dump.iter()
                    .any(|e| matches!(e, NetEvent::Route { route, removed: false }
                    if route.family == fam && route.dst_len == 0 && route.metric == 10
                        && route.gateway == Some(gw) && route.oif == Some(m0.ifindex)
                        && route.table == MAIN)),
                "no {fam} default route in the dump: {dump:#?}"
            );
        }
        assert!(!dump.contains(&NetEvent::Resync));

        // Carrier loss on the peer: m0 loses carrier (the event may take up
        // to ~1 s: linkwatch).
        ip("link set m0p down");
        wait_event(&mut rx, Duration::from_secs(5), "m0 carrier down", |e| {
            matches!(e, NetEvent::Link(l) if l.name == "m0" && !l.carrier && l.admin_up && !l.oper_up)
        })
        .await;
        ip("route replace default via 198.18.1.3 dev m0 metric 10");
        wait_event(&mut rx, Duration::from_secs(5), "route via .3", |e| {
            matches!(e, NetEvent::Route { route, removed: false }
                if route.dst_len == 0 && route.gateway == Some(gw4(3)) && route.metric == 10)
        })
        .await;
        ip("-6 route del default via 2001:db8:1::1 dev m0 metric 10");
        wait_event(&mut rx, Duration::from_secs(5), "v6 default removed", |e| {
            matches!(e, NetEvent::Route { route, removed: true }
                if route.family == Family::V6 && route.dst_len == 0 && route.metric == 10)
        })
        .await;
        ip("link add x0 type veth peer name x0p"); // (this kernel has no dummy driver)
        let (ev, _) = wait_event(
            &mut rx,
            Duration::from_secs(5),
            "x0 appears",
            |e| matches!(e, NetEvent::Link(l) if l.name == "x0"),
        )
        .await;
        let NetEvent::Link(x0) = ev else {
            unreachable!()
        };
        ip("link del x0");
        wait_event(&mut rx, Duration::from_secs(5), "x0 removed", |e| {
            *e == NetEvent::LinkRemoved {
                ifindex: x0.ifindex,
                name: "x0".into(),
            }
        })
        .await;
        assert!(!mon.is_finished());
    });
}

/// Force a real overrun: a tiny receive buffer, and the runtime thread busy
/// (a blocking `ip -batch` of 400 link flaps) so nobody reads the socket.
/// The kernel drops messages and fails the next read with ENOBUFS; the
/// monitor must say Resync, re-dump, say DumpDone, and end up right.
#[test]
fn monitor_overrun_resyncs() {
    in_netns(|| async {
        ip("link add d0 type veth peer name d0p");
        ip("link set d0p up");
        ip("addr add 198.18.2.1/24 dev d0");
        let (tx, mut rx) = unbounded_channel();
        let opts = MonitorOptions {
            recv_buffer: 1, // the kernel's minimum
            ..MonitorOptions::default()
        };
        let mon = spawn_monitor_with(tx, opts).await.unwrap();
        eprintln!("tiny monitor rcvbuf: {} bytes", mon.recv_buffer());
        wait_event(&mut rx, Duration::from_secs(5), "first DumpDone", |e| {
            *e == NetEvent::DumpDone
        })
        .await;

        // Blocks this (the runtime's only) thread: no reads meanwhile.
        let mut batch = String::new();
        for _ in 0..200 {
            batch.push_str("link set d0 up\nlink set d0 down\n");
        }
        batch.push_str("link set d0 up\n");
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());

        let (_, before) = wait_event(&mut rx, Duration::from_secs(5), "Resync", |e| {
            *e == NetEvent::Resync
        })
        .await;
        eprintln!(
            "{} events delivered before the overrun was noticed",
            before.len()
        );
        let (_, redump) = wait_event(
            &mut rx,
            Duration::from_secs(5),
            "DumpDone after Resync",
            |e| *e == NetEvent::DumpDone,
        )
        .await;
        // The re-dump holds d0 in its final state (up).
        let d0 = redump
            .iter()
            .rev()
            .find_map(|e| match e {
                NetEvent::Link(l) if l.name == "d0" => Some(l.clone()),
                _ => None,
            })
            .expect("d0 in the re-dump");
        assert!(d0.admin_up, "{d0:?}");
        // Whatever follows (held-back events, maybe more resyncs) must leave
        // d0 up too: drain for a moment and check the last word.
        let mut last = d0;
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            if let NetEvent::Link(l) = e {
                if l.name == "d0" {
                    last = l;
                }
            }
        }
        assert!(last.admin_up, "{last:?}");
        assert!(!mon.is_finished());
    });
}

// ---------------------------------------------------------------- carrier

/// Only the hot interfaces are read every interval; a cold one is read on
/// the first poll and every Nth one (here: not within the test), or at the
/// next poll once it turns hot.
#[test]
fn carrier_poller_reads_cold_interfaces_seldom() {
    in_netns(|| async {
        veth("h0", "h0p", None, None);
        veth("k0", "k0p", None, None);
        let (tx, mut rx) = unbounded_channel::<CarrierSample>();
        let stop = Arc::new(AtomicBool::new(false));
        let hot = Arc::new(AtomicU64::new(0b01)); // h0 hot, k0 cold
                                                  // Cold interfaces every 100,000th poll of 2 ms: not within the test.
        let thread = spawn_carrier_poller_hot(
            vec!["h0".into(), "k0".into()],
            Duration::from_millis(2),
            (hot.clone(), 100_000),
            None,
            Vec::new(),
            tx,
            stop.clone(),
        )
        .unwrap();
        let within = Duration::from_secs(1);
        // The first poll reads every interface.
        wait_event(&mut rx, within, "h0 initial", |s| {
            s.interface == "h0" && s.carrier
        })
        .await;
        wait_event(&mut rx, within, "k0 initial", |s| {
            s.interface == "k0" && s.carrier
        })
        .await;
        // Both peers down: the hot one is seen within a few polls, the cold
        // one not at all.
        ip("link set h0p down");
        ip("link set k0p down");
        let (s, seen) = wait_event(&mut rx, within, "h0 down", |s| s.interface == "h0").await;
        assert!(!s.carrier, "{s:?}");
        assert!(
            !seen.iter().any(|s| s.interface == "k0"),
            "cold k0 read early: {seen:?}"
        );
        let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(quiet.is_err(), "cold k0 read: {quiet:?}");
        // Made hot: read at the next poll.
        hot.store(0b11, Ordering::Relaxed);
        let (s, _) = wait_event(
            &mut rx,
            Duration::from_millis(500),
            "k0 down once hot",
            |s| s.interface == "k0",
        )
        .await;
        assert!(!s.carrier, "{s:?}");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    });
}

#[test]
fn carrier_poller_follows_peer_and_admin_state() {
    in_netns(|| async {
        veth("c0", "c0p", None, None);
        let (tx, mut rx) = unbounded_channel::<CarrierSample>();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_carrier_poller(
            vec!["c0".into(), "nosuch0".into()],
            Duration::from_millis(5),
            tx,
            stop.clone(),
        )
        .unwrap();
        let within = Duration::from_secs(1);
        let (first, _) = wait_event(&mut rx, within, "c0 initial", |s| s.interface == "c0").await;
        assert!(
            first.present && first.admin_up && first.carrier,
            "{first:?}"
        );
        let idx = first.ifindex.unwrap();
        let (missing, _) = wait_event(&mut rx, within, "nosuch0 initial", |s| {
            s.interface == "nosuch0"
        })
        .await;
        assert_eq!(
            missing,
            CarrierSample {
                interface: "nosuch0".into(),
                ifindex: None,
                present: false,
                admin_up: false,
                carrier: false,
                at: missing.at,
            }
        );

        // Peer down: carrier loss on c0, seen within a poll or two.
        let t = Instant::now();
        ip("link set c0p down");
        let (s, _) = wait_event(&mut rx, within, "carrier down", |s| s.interface == "c0").await;
        eprintln!(
            "carrier loss seen {:?} after starting `ip link set c0p down`",
            t.elapsed()
        );
        assert!(s.present && s.admin_up && !s.carrier, "{s:?}");
        ip("link set c0p up");
        let (s, _) = wait_event(&mut rx, within, "carrier up", |s| s.interface == "c0").await;
        assert!(s.carrier, "{s:?}");

        // Admin down on c0 itself: carrier is reported down too.
        ip("link set c0 down");
        let (s, _) = wait_event(&mut rx, within, "admin down", |s| s.interface == "c0").await;
        assert!(!s.admin_up && !s.carrier, "{s:?}");

        // Gone, then re-created under the same name with a new ifindex.
        ip("link del c0");
        let (s, _) = wait_event(&mut rx, within, "c0 gone", |s| s.interface == "c0").await;
        assert!(!s.present && s.ifindex.is_none(), "{s:?}");
        veth("c0", "c0p", None, None);
        let (s, _) = wait_event(&mut rx, within, "c0 back", |s| {
            s.interface == "c0" && s.carrier
        })
        .await;
        assert!(s.present && s.ifindex != Some(idx), "{s:?}");

        // Only changes are sent: nothing more while nothing changes.
        let quiet = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        assert!(quiet.is_err(), "unexpected sample {quiet:?}");

        stop.store(true, Ordering::Relaxed);
        let t = Instant::now();
        thread.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
    });
}

/// A network namespace held by a thread that runs `ip` commands for us in it.
/// Its id (`tid`) works wherever iproute2 takes `netns <pid>`.
struct NsExec {
    tx: Option<std::sync::mpsc::Sender<(String, std::sync::mpsc::Sender<()>)>>,
    tid: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsExec {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(String, std::sync::mpsc::Sender<()>)>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            while let Ok((cmd, done)) = rx.recv_timeout(TEST_TIMEOUT) {
                ip(&cmd);
                let _ = done.send(());
            }
        });
        let tid = tid_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        NsExec {
            tx: Some(tx),
            tid,
            thread: Some(thread),
        }
    }

    fn ip(&self, cmd: &str) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send((cmd.to_string(), done_tx))
            .unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("ip {cmd} in the other namespace failed"));
    }
}

impl Drop for NsExec {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A veth pair `a` (here) <-> `b` (in `other`) with the same ifindex on both
/// ends. Such a veth is not a "stacked" device to linkwatch
/// (dev->ifindex == dev_get_iflink(dev)), so its carrier-down events get the
/// once-per-second rate limit of a physical NIC: the case DESIGN.md measured.
fn nic_like_veth(a: &str, b: &str, index: u32, other: &NsExec) {
    ip(&format!(
        "link add {a} index {index} type veth peer name {b} index {index} netns {}",
        other.tid
    ));
    ip(&format!("link set {a} up"));
    other.ip(&format!("link set {b} up"));
    wait_oper_up(a);
}

/// The reason the poller exists: with another interface flapping on the host
/// (a NIC-like veth pair toggled in separate namespaces; linkwatch is global),
/// the RTM_NEWLINK event for a carrier loss can be up to ~1 s late, while the
/// poll sees it within its period. Prints both latencies; asserts only on the
/// poll.
#[test]
fn carrier_poller_is_fast_while_another_interface_flaps() {
    let stop_noise = Arc::new(AtomicBool::new(false));
    let noise = {
        let stop = stop_noise.clone();
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            let other = NsExec::new();
            nic_like_veth("n0", "n0p", 60, &other);
            let deadline = Instant::now() + TEST_TIMEOUT;
            let mut up = false;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                up = !up;
                other.ip(&format!("link set n0p {}", if up { "up" } else { "down" }));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    in_netns(|| async {
        let peer = NsExec::new();
        nic_like_veth("f0", "f0p", 50, &peer);
        let (tx, mut rx) = unbounded_channel::<CarrierSample>();
        let (etx, mut erx) = unbounded_channel();
        let _mon = spawn_monitor(etx).await.unwrap();
        wait_event(&mut erx, Duration::from_secs(5), "DumpDone", |e| {
            *e == NetEvent::DumpDone
        })
        .await;
        let f0_down = |e: &NetEvent| matches!(e, NetEvent::Link(l) if l.name == "f0" && !l.carrier);
        let f0_up = |e: &NetEvent| matches!(e, NetEvent::Link(l) if l.name == "f0" && l.carrier);

        // Phase 1, events only (nobody polls f0).
        let mut event_only = Vec::new();
        for _ in 0..2 {
            let t = Instant::now();
            peer.ip("link set f0p down");
            let after_ip = t.elapsed();
            wait_event(
                &mut erx,
                Duration::from_secs(5),
                "event: carrier down",
                f0_down,
            )
            .await;
            event_only.push(t.elapsed().saturating_sub(after_ip));
            peer.ip("link set f0p up");
            wait_event(&mut erx, Duration::from_secs(5), "event: carrier up", f0_up).await;
        }

        // Phase 2, with the poller on f0.
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_carrier_poller(
            vec!["f0".into()],
            Duration::from_millis(2),
            tx,
            stop.clone(),
        )
        .unwrap();
        wait_event(&mut rx, Duration::from_secs(1), "initial", |s| s.carrier).await;
        let mut poll_lat = Vec::new();
        let mut event_lat = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            peer.ip("link set f0p down");
            let after_ip = t.elapsed();
            wait_event(&mut rx, Duration::from_secs(1), "poll: carrier down", |s| {
                !s.carrier
            })
            .await;
            poll_lat.push(t.elapsed().saturating_sub(after_ip));
            wait_event(
                &mut erx,
                Duration::from_secs(5),
                "event: carrier down",
                f0_down,
            )
            .await;
            event_lat.push(t.elapsed().saturating_sub(after_ip));
            peer.ip("link set f0p up");
            wait_event(&mut rx, Duration::from_secs(3), "poll: carrier up", |s| {
                s.carrier
            })
            .await;
            wait_event(&mut erx, Duration::from_secs(5), "event: carrier up", f0_up).await;
        }
        // Observed on 6.18: ~1 s for events alone; with the poller, the
        // event comes as fast as the poll (the GETLINK seems to make the
        // kernel run f0's pending linkwatch work at once).
        eprintln!(
            "carrier loss seen after `ip` returned, another interface flapping: \
             events only {event_only:?}; with poller: poll {poll_lat:?}, event {event_lat:?}"
        );
        // The poller saw every loss by itself within the `wait_event`
        // deadline (1 s) on its own channel; the latency is a figure, for
        // the benchmark.
        assert_eq!(poll_lat.len(), 3, "{poll_lat:?}");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    });
    stop_noise.store(true, Ordering::Relaxed);
    noise.join().unwrap();
}

/// CPU cost of the poller thread: 2 interfaces at 1 ms for 10 s.
#[test]
fn carrier_poller_cpu_cost() {
    in_netns(|| async {
        veth("cpu0", "cpu0p", None, None);
        veth("cpu1", "cpu1p", None, None);
        let (tx, mut rx) = unbounded_channel::<CarrierSample>();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_carrier_poller(
            vec!["cpu0".into(), "cpu1".into()],
            Duration::from_millis(1),
            tx,
            stop.clone(),
        )
        .unwrap();
        // The thread is named after its first interface.
        let tid = find_thread("carrier:cpu0");
        let cpu0 = thread_cpu_ns(tid);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cpu = thread_cpu_ns(tid) - cpu0;
        let wall = t0.elapsed();
        let (switches_v, switches_nv) = thread_switches(tid);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        let mut samples = 0;
        while rx.try_recv().is_ok() {
            samples += 1;
        }
        let pct = cpu as f64 / wall.as_nanos() as f64 * 100.0;
        eprintln!(
            "carrier poller, 2 interfaces @ 1 ms for {wall:?}: {:.1} ms CPU = {pct:.2}% of one core, \
             {:.1} us per period; {switches_v} voluntary / {switches_nv} involuntary switches; {samples} samples",
            cpu as f64 / 1e6,
            cpu as f64 / 1e3 / wall.as_millis() as f64,
        );
        assert_eq!(samples, 2, "only the initial samples: nothing changed");
        // Behaviour, not figures (those are the benchmark's): the poller
        // keeps polling (~10,000 periods; a loaded machine stretches the
        // sleeps, so a tenth is the floor) and sleeps between polls rather
        // than spinning: its CPU per wake-up is well under its 1 ms period.
        assert!(switches_v > 1_000, "{switches_v} sleeps in 10 s at 1 ms");
        let per_wakeup_us = cpu as f64 / 1e3 / switches_v as f64;
        assert!(
            per_wakeup_us < 500.0,
            "poller spins: {per_wakeup_us:.1} us of CPU per wake-up ({pct:.2}% of a core)"
        );
    });
}

fn find_thread(comm: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let c = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if c.trim() == comm {
                return e.file_name().to_str().unwrap().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no thread named {comm}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Nanoseconds on CPU (schedstat's first field: exact, not tick-sampled).
fn thread_cpu_ns(tid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn thread_switches(tid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0)
    };
    (
        get("voluntary_ctxt_switches:"),
        get("nonvoluntary_ctxt_switches:"),
    )
}

// ---------------------------------------------------------------- counters

/// The counter readings tell an uplink carrying traffic from an idle one
/// (the echo streams' idle rate): packets sent besides the agent's own
/// (its echoes and the loop's probes, each counted by its sender) are
/// traffic; the agent's own are not, nor is a lone packet. Ticks are
/// numbered, not slept (4 ms each on `at`).
#[test]
fn the_counters_tell_traffic_from_the_agents_own_packets() {
    use uplinkd::netlink::counters::{CounterTap, OwnFrames, TRAFFIC_HOLD};
    in_netns(|| async {
        let tap = CounterTap::new(vec!["lo".into()], 4);
        let echoes = Arc::new(OwnFrames::default());
        let probes = Arc::new(OwnFrames::default());
        tap.set_own_tx(echoes.clone());
        tap.set_loop_tx(probes.clone());
        let traffic = tap.traffic();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let ms = |i: u64| Duration::from_millis(4 * i);
        let hold = TRAFFIC_HOLD.as_millis() as u64 / 4;
        let mut i = 0u64;
        let mut run = |ticks: u64, per_tick: u64, counted: Option<&OwnFrames>| {
            for _ in 0..ticks {
                for _ in 0..per_tick {
                    if let Some(c) = counted {
                        c.add("lo", 1);
                    }
                    tx.send_to(b"x", to).unwrap();
                }
                tap.tick(i, ms(i));
                i += 1;
            }
            i
        };
        // The first reading counts as traffic; a quiet second later, idle.
        let t = run(1, 0, None);
        assert!(!traffic.idle("lo", ms(t)));
        let t = run(hold + 8, 0, None);
        assert!(traffic.idle("lo", ms(t)), "quiet for a second");
        // The agent's own packets, echoes or probes, a lot of them: idle.
        let t = run(hold, 3, Some(&echoes));
        assert!(traffic.idle("lo", ms(t)), "echoes are not traffic");
        let t = run(hold, 3, Some(&probes));
        assert!(traffic.idle("lo", ms(t)), "probes are not traffic");
        // One packet of someone else's: not yet.
        let t = run(1, 1, None);
        let t = run(8, 0, None).max(t);
        assert!(traffic.idle("lo", ms(t)), "a lone packet");
        // Traffic: seen at the next reading.
        let t = run(4, 1, None);
        assert!(!traffic.idle("lo", ms(t)), "traffic");
        // Idle again a second after it ends.
        let t = run(hold - 8, 0, None);
        assert!(!traffic.idle("lo", ms(t)), "held for a second");
        let t = run(16, 0, None);
        assert!(traffic.idle("lo", ms(t)));
        // One never read: not idle.
        assert!(!traffic.idle("nonesuch", ms(t)));
    });
}

// ---------------------------------------------------------------- sysctls

/// /proc/sys/net follows the *calling thread's* namespace (while /proc/self/net,
/// which /proc/net links to, follows the main thread's); uplink_sysctls
/// writes real paths, so a dotted interface name stays dotted.
#[test]
fn sysctls_follow_the_calling_threads_namespace() {
    // A thread in the root namespace, to look (read-only) from there. It must
    // be spawned from here: threads inherit their creator's namespace.
    let (ask_tx, ask_rx) = std::sync::mpsc::channel::<()>();
    let (ans_tx, ans_rx) = std::sync::mpsc::channel::<bool>();
    let root = std::thread::spawn(move || {
        if ask_rx.recv_timeout(TEST_TIMEOUT).is_ok() {
            let _ = ans_tx.send(std::path::Path::new("/proc/sys/net/ipv4/conf/sx0zq").exists());
        }
    });
    in_netns(move || async move {
        ip("link add up.1 type veth peer name up.1p");
        ip("link add sx0zq type veth peer name sx0zqp");
        uplink_sysctls("up.1").unwrap();
        // Read back by a child process (it inherits this thread's namespace).
        let cat = |p: &str| {
            let out = Command::new("cat")
                .arg(format!("/proc/sys/{p}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "cat {p}");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        assert_eq!(cat("net/ipv4/conf/up.1/rp_filter"), "2");
        assert_eq!(cat("net/ipv4/conf/up.1/ignore_routes_with_linkdown"), "1");
        assert_eq!(cat("net/ipv6/conf/up.1/ignore_routes_with_linkdown"), "1");
        // Untouched elsewhere.
        assert_eq!(cat("net/ipv4/conf/sx0zq/ignore_routes_with_linkdown"), "0");

        // This thread sees its namespace's interfaces under /proc/sys/net...
        assert!(std::path::Path::new("/proc/sys/net/ipv4/conf/sx0zq").exists());
        // ...and under /proc/thread-self/net, but /proc/self/net is the main
        // thread's (root) namespace.
        let thread_dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let self_dev = std::fs::read_to_string("/proc/self/net/dev").unwrap();
        assert!(thread_dev.contains("sx0zq:"), "{thread_dev}");
        assert!(
            !self_dev.contains("sx0zq:"),
            "/proc/self/net is the main thread's"
        );

        // A thread of this process in the root namespace does not see it
        // under /proc/sys/net, while it is there for us.
        ask_tx.send(()).unwrap();
        let seen_from_root = ans_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!seen_from_root);

        // A thread spawned from here is in this namespace too (inherited);
        // this is what the carrier poller thread relies on.
        let seen_from_child =
            std::thread::spawn(|| std::path::Path::new("/proc/sys/net/ipv4/conf/sx0zq").exists())
                .join()
                .unwrap();
        assert!(seen_from_child);

        let e = uplink_sysctls("nosuch0").unwrap_err().to_string();
        assert!(
            e.starts_with("set sysctl net/ipv4/conf/nosuch0/rp_filter = 2: "),
            "{e}"
        );
    });
    root.join().unwrap();
}

/// ARP requests for `target` received on `dev` since the last call, read
/// from a packet socket bound to it (nonblocking).
struct ArpWatch(std::os::fd::OwnedFd);

impl ArpWatch {
    fn new(dev: &str) -> ArpWatch {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ARP as u16).to_be();
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(dev).unwrap();
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(sll.sll_ifindex > 0, "no {dev}");
        let r = unsafe {
            use std::os::fd::AsRawFd;
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        ArpWatch(fd)
    }

    fn requests_for(&self, target: Ipv4Addr) -> usize {
        use std::os::fd::AsRawFd;
        let mut n = 0;
        let mut buf = [0u8; 128];
        loop {
            let len = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if len < 0 {
                return n;
            }
            // RFC 826 over Ethernet/IPv4: opcode at 6, target IP at 24.
            if len >= 28 && buf[6..8] == [0, 1] && buf[24..28] == target.octets() {
                n += 1;
            }
        }
    }
}

#[test]
fn refresh_neighbour_restarts_resolution_of_an_unresolved_gateway_at_once() {
    in_netns(|| async {
        // Nobody answers ARP for the gateway .1 on u0: its entry stays
        // INCOMPLETE, and the kernel asks again only once a second.
        veth("u0", "u0p", Some("198.18.1.2/24"), None);
        ip("neigh add 198.18.1.10 lladdr 02:00:00:00:00:0a dev u0 nud reachable");
        let gw = Ipv4Addr::new(198, 18, 1, 1);
        let arp = ArpWatch::new("u0p");
        let sock = UdpSocket::bind("198.18.1.2:0").unwrap();
        let send = || sock.send_to(&[0u8; 8], (gw, 9)).unwrap();
        let wait_request = |within: Duration| {
            let t = Instant::now();
            while t.elapsed() < within {
                if arp.requests_for(gw) > 0 {
                    return Some(t.elapsed());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        };
        send();
        assert!(
            wait_request(Duration::from_millis(100)).is_some(),
            "no first ARP request"
        );
        std::thread::sleep(Duration::from_millis(150));
        arp.requests_for(gw);
        // Another packet to it: queued on the INCOMPLETE entry, no request.
        send();
        assert_eq!(
            wait_request(Duration::from_millis(100)),
            None,
            "kernel re-asked early"
        );
        let state = |dst: &str| {
            ip_json("-4 neigh show dev u0")
                .iter()
                .find(|n| n["dst"].as_str() == Some(dst))
                .map(|n| n["state"].to_string())
        };
        assert!(
            state("198.18.1.1").is_some_and(|s| s.contains("INCOMPLETE")),
            "{:?}",
            state("198.18.1.1")
        );

        let act = Actuator::new().await.unwrap();
        let idx = act.ifindex("u0").await.unwrap().unwrap();
        assert!(act.refresh_neighbour(idx, IpAddr::V4(gw)).await.unwrap());
        assert_eq!(state("198.18.1.1"), None);
        // The next packet solicits at once, well before the kernel's retry.
        send();
        let asked = wait_request(Duration::from_millis(300));
        assert!(
            asked.is_some_and(|t| t < Duration::from_millis(50)),
            "ARP request after the refresh: {asked:?}"
        );
        // A resolved entry is left alone; none at all is fine.
        let other = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10));
        assert!(!act.refresh_neighbour(idx, other).await.unwrap());
        assert!(state("198.18.1.10").is_some());
        let none = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 99));
        assert!(!act.refresh_neighbour(idx, none).await.unwrap());
    });
}
