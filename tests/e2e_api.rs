//! End-to-end: the socket API, `uplinkctl`, hooks and metrics, against the
//! real daemon in the lab's namespaces.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use uplink_lab::{StreamSpec, Uplink};
use uplinkd::config::Family;

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn on(s: &uplinkd::status::Status, v4: &str, v6: &str) -> bool {
    s.active.ipv4.as_deref() == Some(v4) && s.active.ipv6.as_deref() == Some(v6)
}

fn all_transits_known(s: &uplinkd::status::Status) -> bool {
    s.uplinks
        .iter()
        .all(|u| u.transits.iter().all(|t| t.reachable == Some(true)))
}

/// A raw connection for line requests.
struct Conn {
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(a: &Agent) -> Conn {
        let s = UnixStream::connect(&a.socket).expect("connect");
        s.set_read_timeout(Some(S(5))).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }
    /// Send raw bytes (a newline is not added) and read one answer line.
    fn ask_raw(&mut self, bytes: &[u8]) -> Value {
        self.reader.get_mut().write_all(bytes).unwrap();
        self.line().expect("an answer")
    }
    fn ask(&mut self, req: &str) -> Value {
        self.ask_raw(format!("{req}\n").as_bytes())
    }
    fn line(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))),
        }
    }
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {v}"))
}

// ---------------------------------------------------------------------------

#[test]
fn status_json_and_table_in_normal_operation_and_after_failover() {
    let lab = lab();
    let a = settled(&lab, "");
    a.wait_for("every transit reachable", S(15), all_transits_known);

    let o = a.ctl(&["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("status --json is JSON");
    assert_eq!(v["active"]["ipv4"], "primary");
    assert_eq!(v["active"]["ipv6"], "primary");
    let p = &v["uplinks"][0];
    assert_eq!(p["name"], "primary");
    assert_eq!(p["interface"], Uplink::Primary.interface());
    assert_eq!(p["state"], "healthy");
    assert_eq!(p["carrier"], true);
    assert_eq!(p["drained"], false);
    assert_eq!(p["reasons"], serde_json::json!([]));
    assert!(p["gateway"]["ipv4"]["address"].is_string(), "{p}");
    assert_eq!(p["gateway"]["ipv4"]["reachable"], true);
    let transits = p["transits"].as_array().unwrap();
    assert_eq!(transits.len(), 8, "4 transits x 2 families");
    for t in transits {
        assert!(t["name"].as_str().unwrap().starts_with("transit-"), "{t}");
        assert_eq!(t["reachable"], true, "{t}");
        assert!(t["rtt_ms"].as_f64().is_some(), "{t}");
        assert!(t["loss"].as_f64().is_some(), "{t}");
    }
    // The JSON is the shared status type.
    let _: uplinkd::status::Status = serde_json::from_value(v.clone()).unwrap();

    let table = stdout(&a.ctl(&["status"]));
    // Piped, the table is never cut (it fits a terminal's width only).
    assert!(!table.lines().any(|l| l.ends_with('~')), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("primary "))
        .expect("primary row");
    assert!(
        row.contains("healthy") && row.contains("v4,v6") && row.contains("8/8 up"),
        "{table}"
    );
    assert!(
        table.lines().next().unwrap().contains("ipv4: primary"),
        "{table}"
    );

    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    a.wait_for("on secondary", S(5), |s| on(s, "secondary", "secondary"));
    let v: Value = serde_json::from_str(&stdout(&a.ctl(&["status", "--json"]))).unwrap();
    assert_eq!(v["active"]["ipv4"], "secondary");
    assert_eq!(v["active"]["ipv6"], "secondary");
    let p = &v["uplinks"][0];
    assert_eq!(p["carrier"], false);
    assert_eq!(p["state"], "unhealthy");
    assert!(
        p["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "carrier"),
        "{p}"
    );
    let table = stdout(&a.ctl(&["status"]));
    eprintln!("{table}");
    let row = table.lines().find(|l| l.starts_with("primary ")).unwrap();
    assert!(row.contains("DOWN") && row.contains("carrier"), "{table}");
    let row = table.lines().find(|l| l.starts_with("secondary ")).unwrap();
    assert!(row.contains("v4,v6"), "{table}");
    // Piped, the table is never cut (it fits a terminal's width only).
    assert!(!table.lines().any(|l| l.ends_with('~')), "{table}");
}

#[test]
fn event_stream_reports_active_changed_within_the_failover() {
    let lab = lab();
    let a = settled(&lab, "");
    let mut es = a.subscribe();

    // uplinkctl events, read by a thread.
    let mut child = Command::new(CTL)
        .arg("--socket")
        .arg(&a.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let ctl_lines = |pred: &dyn Fn(&Value) -> bool, timeout: Duration| -> Value {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("uplinkctl events printed no such event within {timeout:?}");
    };
    // Make sure uplinkctl has subscribed: a harmless control publishes an event.
    let mut conn = Conn::open(&a);
    let deadline = Instant::now() + S(5);
    loop {
        assert_eq!(
            conn.ask(r#"{"request":"drain","uplink":"secondary"}"#)["ok"],
            true
        );
        assert_eq!(
            conn.ask(r#"{"request":"undrain","uplink":"secondary"}"#)["ok"],
            true
        );
        if rx.recv_timeout(MS(300)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uplinkctl events never printed anything"
        );
    }

    let t0 = Instant::now();
    lab.carrier_down(Uplink::Primary).unwrap();
    let evs = es.until("active_changed ipv4", S(5), |e| {
        e["kind"] == "active_changed" && e["family"] == "ipv4"
    });
    let dt = t0.elapsed();
    let ev = evs.last().unwrap().clone();
    assert_eq!(ev["from"], "primary");
    assert_eq!(ev["to"], "secondary");
    assert_eq!(ev["reason"], "carrier");
    // Live: it arrives by the `until` deadline above (5 s), not only when
    // something else happens; the figure is printed, and measured in the
    // benchmark.
    eprintln!("active_changed seen on the stream {dt:?} after the carrier loss");

    // Every event: seq (consecutive), time (RFC 3339), kind.
    let mut seq = es.last_seq;
    for e in &evs {
        let s = e["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {e}"));
        assert!(s > seq, "seq not increasing: {evs:#?}");
        seq = s;
        humantime::parse_rfc3339(e["time"].as_str().expect("time")).expect("RFC 3339 time");
        assert!(e["kind"].is_string(), "{e}");
    }
    let seqs: Vec<u64> = evs.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequence numbers have gaps: {seqs:?}"
    );
    // Health changes are events too.
    let more = es.until("ipv6 switch", S(5), |e| {
        e["kind"] == "active_changed" && e["family"] == "ipv6"
    });
    let kinds: Vec<&str> = evs
        .iter()
        .chain(more.iter())
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"carrier") || kinds.contains(&"uplink_health"),
        "{kinds:?}"
    );

    // uplinkctl events printed the same record.
    let printed = ctl_lines(
        &|v| v["kind"] == "active_changed" && v["family"] == "ipv4" && v["to"] == "secondary",
        S(5),
    );
    assert_eq!(printed, ev);
    // ...and the log line carries the same fields.
    let logged = a
        .logged_events()
        .into_iter()
        .find(|e| e["seq"] == ev["seq"])
        .expect("logged");
    assert_eq!(logged, ev);
    drop(child);
    let _ = reader.join();
}

/// Copy uplinkctl where an unprivileged user can run it (the lab directory).
fn unprivileged_ctl(lab: &uplink_lab::Lab) -> PathBuf {
    let ctl = lab.dir().join("uplinkctl");
    std::fs::copy(CTL, &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    ctl
}

/// Run uplinkctl as uid 65534 with primary group `gid` and no other groups.
fn ctl_as(ctl: &Path, socket: &Path, gid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .arg(ctl)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)")
}

#[test]
fn controls_refused_for_non_root_and_honoured_for_root() {
    let lab = lab();
    // Let other users reach the socket inside the lab's private directory.
    std::fs::set_permissions(lab.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let ctl = unprivileged_ctl(&lab);
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .map(|g| g.gid.as_raw())
        .unwrap_or(65534);
    let a = settled(
        &lab,
        &format!(
            "[agent]\nsocket_group = \"{}\"\n[policy]\nfailback_after = \"3s\"",
            {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(nogroup))
                    .unwrap()
                    .unwrap()
                    .name
            }
        ),
    );
    let meta = std::fs::metadata(&a.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), nogroup, "socket group");

    // A member of the socket's group reads status...
    let o = ctl_as(&ctl, &a.socket, nogroup, &["status"]);
    assert!(
        o.status.success(),
        "status as a group member: {}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("primary"));
    let o = ctl_as(&ctl, &a.socket, nogroup, &["metrics"]);
    assert!(
        o.status.success(),
        "metrics as a group member: {}",
        stderr(&o)
    );
    // ...a non-member cannot even connect (mode 0660)...
    let o = ctl_as(&ctl, &a.socket, 100, &["status"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    // ...and controls need root, checked with SO_PEERCRED; the refusal says why.
    for args in [
        &["drain", "primary"][..],
        &["undrain", "primary"],
        &["reprobe"],
    ] {
        let o = ctl_as(&ctl, &a.socket, nogroup, args);
        assert!(!o.status.success(), "{args:?} as uid 65534 was accepted");
        let e = stderr(&o);
        assert!(
            e.contains("require root") && e.contains("uid 65534"),
            "{args:?}: {e}"
        );
    }
    let s = a.status().unwrap();
    assert!(!s.uplinks[0].drained && on(&s, "primary", "primary"));
    assert!(route_via(&lab, Family::V4, Uplink::Primary));

    // Root drains the primary: traffic moves at once, without loss.
    let stream = lab
        .udp_stream(&StreamSpec {
            rate: 2000,
            max_duration: S(60),
            ..StreamSpec::v4()
        })
        .unwrap();
    std::thread::sleep(MS(300));
    let mut conn = Conn::open(&a);
    let t0 = Instant::now();
    let r = conn.ask(r#"{"request":"drain","uplink":"primary"}"#);
    assert_eq!(r["ok"], true, "{r}");
    let mut moved = None;
    while t0.elapsed() < S(5) {
        if route_via(&lab, Family::V4, Uplink::Secondary)
            && route_via(&lab, Family::V6, Uplink::Secondary)
        {
            moved = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(MS(2));
    }
    let moved = moved.expect("drain did not move the routes");
    eprintln!("drain: routes moved {moved:?} after the request (incl. polling `ip`)");
    assert!(moved < MS(500), "drain took {moved:?}");
    std::thread::sleep(MS(300));
    let report = stream.stop();
    assert!(
        report.longest_gap <= MS(20),
        "drain lost traffic: longest gap {:?}",
        report.longest_gap
    );
    let s = a.wait_for("drained in status", S(2), |s| s.uplinks[0].drained);
    assert!(on(&s, "secondary", "secondary"));
    assert!(s.uplinks[0]
        .reasons
        .contains(&uplinkd::status::Reason::Drained));
    assert!(a
        .switches(Family::V4)
        .iter()
        .any(|(_, to, r)| to.as_deref() == Some("secondary") && r == "drained"));

    // Root undrains: back on the primary only after failback_after (3 s).
    let o = a.ctl(&["undrain", "primary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t1 = Instant::now();
    std::thread::sleep(MS(2000));
    assert!(
        route_via(&lab, Family::V4, Uplink::Secondary),
        "failed back before failback_after"
    );
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Primary, S(10));
    }
    let back = t1.elapsed();
    assert!(back >= MS(2900), "failback after {back:?}");
    assert!(a
        .switches(Family::V4)
        .iter()
        .any(|(_, to, r)| to.as_deref() == Some("primary") && r == "failback"));

    let o = a.ctl(&["reprobe"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(a.status().is_ok());
}

#[test]
fn bad_requests_get_errors_and_the_daemon_keeps_serving() {
    let lab = lab();
    let a = settled(&lab, "");
    let mut c = Conn::open(&a);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json\n".to_vec(), "malformed JSON"),
        (
            b"{\"request\":\"bogus\"}\n".to_vec(),
            "unknown request \"bogus\"",
        ),
        (b"{\"request\":\"drain\"}\n".to_vec(), "missing \"uplink\""),
        (
            b"{\"request\":\"drain\",\"uplink\":\"nope\"}\n".to_vec(),
            "no uplink named \"nope\"",
        ),
        (
            b"{\"request\":\"status\",\"verbose\":1}\n".to_vec(),
            "unexpected field \"verbose\"",
        ),
        (
            b"{\"request\":7}\n".to_vec(),
            "\"request\" must be a string",
        ),
        (
            b"{\"uplink\":\"primary\"}\n".to_vec(),
            "missing \"request\"",
        ),
        (b"[1,2,3]\n".to_vec(), "must be a JSON object"),
        (b"\n".to_vec(), "empty request"),
        (vec![0xff, 0xfe, 0x00, 0x9c, b'\n'], "not UTF-8"),
        (vec![0x00, 0x01, 0x02, b'{', b'\n'], "control character"),
        (
            [vec![b'x'; 100_000], vec![b'\n']].concat(),
            "longer than 4096 bytes",
        ),
    ];
    for (bytes, expect) in &cases {
        let v = c.ask_raw(bytes);
        let e = error_of(&v);
        assert!(
            e.contains(expect),
            "{:?}...: {e:?} lacks {expect:?}",
            &bytes[..bytes.len().min(20)]
        );
        // The same connection still answers.
        let s = c.ask(r#"{"request":"status"}"#);
        assert!(s["active"].is_object(), "{s}");
    }
    // Random binary data (with newlines inside) gets errors, never a crash.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..20_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let lines = noise.iter().filter(|b| **b == b'\n').count();
    c.reader.get_mut().write_all(&noise).unwrap();
    c.reader.get_mut().write_all(b"\n").unwrap();
    for _ in 0..=lines {
        let v = c.line().expect("an answer per line");
        error_of(&v);
    }
    assert!(c.ask(r#"{"request":"status"}"#)["active"].is_object());

    // A line without end is cut off after 1 MiB, with an error, and closed.
    let mut d = Conn::open(&a);
    let big = vec![b'y'; 2 << 20];
    let _ = d.reader.get_mut().write_all(&big);
    let v = d.line().expect("an error before closing");
    assert!(error_of(&v).contains("without a newline"), "{v}");
    assert!(d.line().is_none(), "closed");

    // Subscribers that hang up free their place at once, even while no
    // event is published.
    for _ in 0..100 {
        let mut es = a.subscribe();
        es.reader
            .get_mut()
            .shutdown(std::net::Shutdown::Both)
            .unwrap();
    }
    std::thread::sleep(MS(100));
    assert!(c.ask(r#"{"request":"status"}"#)["active"].is_object());
    assert!(a.status().is_ok(), "places of closed subscribers not freed");

    // The client cap: beyond 64 connections, a new one is told and closed.
    let mut idle = Vec::new();
    let mut refused = None;
    for i in 0..80 {
        let s = UnixStream::connect(&a.socket).unwrap();
        s.set_read_timeout(Some(MS(100))).unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = (&s).read(&mut buf) {
            if n > 0 {
                refused = Some((i, String::from_utf8_lossy(&buf[..n]).into_owned()));
                break;
            }
        }
        idle.push(s);
    }
    let (i, msg) = refused.expect("no client cap");
    assert!(msg.contains("too many clients"), "{msg}");
    assert!(i <= 64, "refused only after {i} idle clients");
    drop(idle);
    a.wait_for("serving again after the idle clients left", S(5), |_| true);
    assert!(c.ask(r#"{"request":"status"}"#)["active"].is_object());
    let pid = a.child.as_ref().unwrap().pid();
    assert_eq!(exited(pid), None, "daemon alive");
}

#[test]
fn stuck_subscribers_do_not_stop_failovers_or_other_clients() {
    let lab = lab();
    let a = settled(&lab, "");
    // Subscribers that never read, one that never finishes its request, one idle.
    let stuck: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut s = UnixStream::connect(&a.socket).unwrap();
            s.write_all(b"{\"request\":\"events\"}\n").unwrap();
            s
        })
        .collect();
    let mut partial = UnixStream::connect(&a.socket).unwrap();
    partial.write_all(b"{\"request\":\"sta").unwrap();
    let _idle = UnixStream::connect(&a.socket).unwrap();

    // Flood the event stream: every drain/undrain of the standby is an event.
    let mut c = Conn::open(&a);
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..600 {
        let req = if i % 2 == 0 { "drain" } else { "undrain" };
        let t = Instant::now();
        let r = c.ask(&format!(r#"{{"request":"{req}","uplink":"secondary"}}"#));
        worst = worst.max(t.elapsed());
        assert_eq!(r["ok"], true, "{r}");
    }
    eprintln!("600 controls in {:?}, slowest {worst:?}", t0.elapsed());
    // A control that waited on a stuck subscriber would take the write
    // timeout (5 s, src/api.rs WRITE_TIMEOUT); the rest is load.
    assert!(worst < STUCK_WRITE_TIMEOUT, "a control took {worst:?}");

    // Other clients are served promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        a.status().expect("status");
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < STUCK_WRITE_TIMEOUT, "status took {slowest:?}");

    // A failover is not held up.
    let mut es = a.subscribe();
    let t1 = Instant::now();
    lab.carrier_down(Uplink::Primary).unwrap();
    es.until("active_changed", S(5), |e| e["kind"] == "active_changed");
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let dt = t1.elapsed();
    eprintln!("failover with stuck subscribers took {dt:?}");
    assert!(
        dt < STUCK_WRITE_TIMEOUT,
        "failover took {dt:?} with stuck subscribers"
    );

    // The stuck subscribers are dropped (within the write timeout), their
    // memory bounded: what they got is contiguous, then at most a notice.
    for (k, s) in stuck.into_iter().enumerate() {
        s.set_read_timeout(Some(S(15))).unwrap();
        let mut lines = BufReader::new(s).lines();
        let ack: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let mut expect = ack["last_seq"].as_u64().unwrap() + 1;
        let mut count = 0;
        let mut closed = false;
        for l in lines.by_ref() {
            let Ok(l) = l else { break };
            let v: Value = serde_json::from_str(&l).unwrap();
            if v["kind"] == "missed" {
                assert_eq!(v["first_seq"].as_u64(), Some(expect), "{v}");
                assert!(v["missed"].as_u64().unwrap() > 0);
                continue;
            }
            assert_eq!(v["seq"].as_u64(), Some(expect), "subscriber {k}: gap");
            expect += 1;
            count += 1;
        }
        if lines.next().is_none() {
            closed = true;
        }
        assert!(closed, "stuck subscriber {k} was not dropped");
        assert!(
            count < 1200,
            "subscriber {k} got everything: it was never behind"
        );
    }
    let m = stdout(&a.ctl(&["metrics"]));
    assert!(
        m.lines()
            .any(|l| l.starts_with("uplinkd_event_subscribers_dropped_total")),
        "{m}"
    );
    drop(partial);
    assert!(a.status().is_ok());
}

#[test]
fn hanging_hook_is_killed_at_its_timeout_while_failovers_go_on() {
    let lab = lab();
    let dir = lab.dir().display().to_string();
    let hook = format!(
        "echo $$ >> {dir}/hook.pids; cat > {dir}/hook-$UPLINKD_SEQ.json; env > {dir}/hook-$UPLINKD_SEQ.env; exec sleep 1000"
    );
    let a = settled(
        &lab,
        &format!("[hooks]\non_active_change = ['{hook}']\ntimeout = \"10s\""),
    );
    // The initial decisions started two hooks that hang. Fail over meanwhile.
    let t0 = Instant::now();
    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let dt = t0.elapsed();
    eprintln!("failover with hooks hanging took {dt:?}");

    let pids_file = lab.dir().join("hook.pids");
    let read_pids = || -> Vec<u32> {
        std::fs::read_to_string(&pids_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let deadline = Instant::now() + S(5);
    while read_pids().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(MS(20));
    }
    let pids = read_pids();
    assert_eq!(pids.len(), 4, "2 initial + 2 failover hook runs: {pids:?}");
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
            .unwrap_or(false)
    };
    // The failover did not wait for the hanging hooks: the initial ones
    // were still running when it was done (as are the failover's own; 10 s
    // timeout)...
    assert!(
        !log_has_kill(&a),
        "a hook was killed at its timeout before the failover was done:\n{}",
        a.log_text()
    );
    assert!(
        pids.iter().all(|p| alive(*p)),
        "hook killed before its timeout"
    );
    // ...and every one is killed (and reaped) at its timeout.
    let deadline = Instant::now() + S(20);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(MS(50));
    }
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "hooks survived their timeout"
    );
    let killed = a
        .log_text()
        .matches("hook still running at its timeout: killed")
        .count();
    assert_eq!(killed, 4, "{}", a.log_text());

    // The hook got the change as JSON on stdin and in its environment.
    let ev = a
        .logged_events()
        .into_iter()
        .find(|e| e["kind"] == "active_changed" && e["to"] == "secondary" && e["family"] == "ipv4")
        .unwrap();
    let seq = ev["seq"].as_u64().unwrap();
    let stdin: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir().join(format!("hook-{seq}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(stdin, ev);
    let env = std::fs::read_to_string(lab.dir().join(format!("hook-{seq}.env"))).unwrap();
    for kv in [
        "UPLINKD_KIND=active_changed",
        "UPLINKD_FAMILY=ipv4",
        "UPLINKD_FROM=primary",
        "UPLINKD_TO=secondary",
        "UPLINKD_REASON=carrier",
        &format!("UPLINKD_SEQ={seq}"),
    ] {
        assert!(env.lines().any(|l| l == kv), "hook env lacks {kv}:\n{env}");
    }
    let m = stdout(&a.ctl(&["metrics"]));
    let scrape = parse_metrics(&m);
    assert_eq!(
        value(&scrape, "uplinkd_hook_runs_total", &[("result", "timeout")]),
        Some(4.0)
    );
}

fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("metrics do not parse: {e}\n{text}"))
}

/// The value of the single sample of `name` whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?}: several samples {found:?}"
    );
    found.first().copied()
}

fn http_get(lab: &uplink_lab::Lab, path: &str) -> String {
    let path = path.to_string();
    lab.in_ns(&lab.server_ns(), move || {
        let mut s =
            std::net::TcpStream::connect("127.0.0.1:9469").expect("connect to metrics listener");
        s.set_read_timeout(Some(S(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

#[test]
fn metrics_parse_and_counters_move_after_a_failover() {
    let lab = lab();
    let a = settled(&lab, "[metrics]\nhttp = true");
    a.wait_for("every transit reachable", S(15), all_transits_known);

    let o = a.ctl(&["metrics"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let m = parse_metrics(&text);
    assert!(
        m.samples
            .iter()
            .any(|s| s.metric == "uplinkd_build_info" && s.labels.get("version").is_some()),
        "{text}"
    );
    for f in ["ipv4", "ipv6"] {
        assert_eq!(
            value(
                &m,
                "uplinkd_switches_total",
                &[("family", f), ("reason", "initial")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &m,
                "uplinkd_active",
                &[("family", f), ("uplink", "primary")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &m,
                "uplinkd_uplink_healthy",
                &[("family", f), ("uplink", "primary")]
            ),
            Some(1.0)
        );
        assert!(
            value(&m, "uplinkd_since_last_switch_seconds", &[("family", f)]).is_some(),
            "{text}"
        );
    }
    let gw_rtt = value(
        &m,
        "uplinkd_probe_rtt_seconds",
        &[
            ("uplink", "secondary"),
            ("target", "gateway"),
            ("family", "ipv4"),
        ],
    )
    .expect("gateway RTT histogram");
    assert!(gw_rtt > 0.0, "RTT histogram has observations");
    assert!(
        m.samples
            .iter()
            .filter(|s| s.metric == "uplinkd_transit_reachable")
            .count()
            == 16,
        "2 uplinks x 8 targets"
    );
    assert!(value(
        &m,
        "uplinkd_probe_loss_ratio",
        &[
            ("uplink", "primary"),
            ("target", "transit-a"),
            ("family", "ipv4")
        ]
    )
    .is_some());
    let replies = value(
        &m,
        "uplinkd_probes_total",
        &[
            ("uplink", "primary"),
            ("target", "gateway"),
            ("family", "ipv4"),
            ("result", "reply"),
        ],
    )
    .unwrap();
    assert!(replies > 0.0);
    assert_eq!(
        value(&m, "uplinkd_uplink_carrier", &[("uplink", "primary")]),
        Some(1.0)
    );

    // The same text over HTTP (on loopback in the server's namespace).
    let http = http_get(&lab, "/metrics");
    let (head, body) = http.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let hm = parse_metrics(body);
    assert_eq!(
        value(
            &hm,
            "uplinkd_switches_total",
            &[("family", "ipv4"), ("reason", "initial")]
        ),
        Some(1.0)
    );
    assert!(http_get(&lab, "/other").starts_with("HTTP/1.1 404"));

    lab.carrier_down(Uplink::Primary).unwrap();
    a.wait_for("on secondary", S(5), |s| on(s, "secondary", "secondary"));
    let m = parse_metrics(&stdout(&a.ctl(&["metrics"])));
    for f in ["ipv4", "ipv6"] {
        assert_eq!(
            value(
                &m,
                "uplinkd_switches_total",
                &[("family", f), ("reason", "carrier")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &m,
                "uplinkd_active",
                &[("family", f), ("uplink", "secondary")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &m,
                "uplinkd_active",
                &[("family", f), ("uplink", "primary")]
            ),
            Some(0.0)
        );
        let since = value(&m, "uplinkd_since_last_switch_seconds", &[("family", f)]).unwrap();
        assert!(since < 10.0, "{since}");
    }
    assert_eq!(
        value(&m, "uplinkd_uplink_carrier", &[("uplink", "primary")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "uplinkd_uplink_healthy",
            &[("family", "ipv4"), ("uplink", "primary")]
        ),
        Some(0.0)
    );
    assert!(value(&m, "uplinkd_events_total", &[("kind", "active_changed")]).unwrap() >= 4.0);
    let hm = parse_metrics(http_get(&lab, "/metrics").split_once("\r\n\r\n").unwrap().1);
    assert_eq!(
        value(
            &hm,
            "uplinkd_switches_total",
            &[("family", "ipv4"), ("reason", "carrier")]
        ),
        Some(1.0)
    );
}

/// The socket alone (no lab, no daemon): a subscriber that stops reading
/// while many events are published is told which ones it missed, and dropped.
#[test]
fn laggard_subscriber_is_told_what_it_missed_and_dropped() {
    use uplinkd::api;
    use uplinkd::status::{Change, EventRecord};

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[agent]
socket = "{}/api.sock"
[[uplink]]
name = "primary"
interface = "eth0"
gateway4 = "198.18.1.1"
[[transit]]
name = "t"
targets = ["198.19.0.1"]
"#,
        dir.path().display()
    );
    let cfg = uplinkd::config::parse(&text, "test").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = Arc::new(uplinkd::metrics::Metrics::new(&cfg));
        let events = api::Events::new(api::EVENT_BACKLOG)
            .with_outputs(metrics.clone(), uplinkd::hooks::Hooks::none());
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let _server = api::serve(&cfg, tx, events.clone(), metrics.clone())
            .await
            .unwrap();
        let path = cfg.agent.socket.clone();
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<u64>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let client = tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(path).unwrap();
            s.write_all(b"{\"request\":\"events\"}\n").unwrap();
            s.set_read_timeout(Some(S(20))).unwrap();
            let mut r = BufReader::new(s);
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let ack: Value = serde_json::from_str(&l).unwrap();
            ack_tx.send(ack["last_seq"].as_u64().unwrap()).unwrap();
            go_rx.recv().unwrap();
            r.lines()
                .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
                .collect::<Vec<_>>()
        });
        let last = tokio::task::spawn_blocking(move || ack_rx.recv().unwrap())
            .await
            .unwrap();
        assert_eq!(last, 0);
        for seq in 1..=3000u64 {
            events.publish(EventRecord {
                seq,
                time: "2026-11-25T00:00:00Z".into(),
                change: Change::Drained {
                    uplink: "primary".into(),
                    drained: seq % 2 == 0,
                },
                observe: false,
            });
            if seq % 8 == 0 {
                tokio::task::yield_now().await;
            }
        }
        go_tx.send(()).unwrap();
        let got = client.await.unwrap();
        let (notice, evs) = got.split_last().expect("something received");
        assert!(!evs.is_empty());
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "contiguous from 1");
        }
        assert_eq!(notice["kind"], "missed", "{notice}");
        assert_eq!(notice["first_seq"].as_u64(), Some(evs.len() as u64 + 1));
        assert!(notice["missed"].as_u64().unwrap() >= api::EVENT_BACKLOG as u64);
        assert!(evs.len() < 3000 - api::EVENT_BACKLOG);
    });
}

/// The socket alone: `events` with `since` replays what was kept after that
/// sequence number, then streams; a `since` older than what is kept is told
/// which events it missed.
#[test]
fn events_since_replays_recent_events() {
    use uplinkd::api;
    use uplinkd::status::{Change, EventRecord};

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nsocket = \"{}/api.sock\"\n[[uplink]]\nname = \"primary\"\ninterface = \"eth0\"\ngateway4 = \"198.18.1.1\"\n[[transit]]\nname = \"t\"\ntargets = [\"198.19.0.1\"]\n",
        dir.path().display()
    );
    let cfg = uplinkd::config::parse(&text, "test").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let metrics = Arc::new(uplinkd::metrics::Metrics::new(&cfg));
        let events = api::Events::new(api::EVENT_BACKLOG);
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let _server = api::serve(&cfg, tx, events.clone(), metrics).await.unwrap();
        let publish = |from: u64, to: u64| {
            for seq in from..=to {
                events.publish(EventRecord {
                    seq,
                    time: "2026-11-25T00:00:00Z".into(),
                    change: Change::Drained {
                        uplink: "primary".into(),
                        drained: true,
                    },
                    observe: false,
                });
            }
        };
        publish(1, 300);
        let path = cfg.agent.socket.clone();
        let read = move |req: &'static str, n: usize| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = UnixStream::connect(path).unwrap();
                s.set_read_timeout(Some(S(5))).unwrap();
                writeln!(s, "{req}").unwrap();
                BufReader::new(s)
                    .lines()
                    .take(n)
                    .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let got = read(r#"{"request":"events","since":297}"#, 4)
            .await
            .unwrap();
        assert_eq!(got[0]["last_seq"], 300);
        let seqs: Vec<u64> = got[1..]
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [298, 299, 300]);
        // 256 are kept (45..=300): since 10 missed 11..=44.
        let got = read(r#"{"request":"events","since":10}"#, 3).await.unwrap();
        assert_eq!(got.len(), 2, "notice, then closed: {got:?}");
        assert_eq!(got[1]["kind"], "missed");
        assert_eq!(got[1]["first_seq"], 11);
        assert_eq!(got[1]["last_seq"], 44);
    });
}

/// The API's write timeout for a subscriber that does not read
/// (src/api.rs `WRITE_TIMEOUT`): whatever waited on one would take this long.
const STUCK_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon logged that it killed a hook at its timeout.
fn log_has_kill(a: &Agent) -> bool {
    a.log_text()
        .contains("hook still running at its timeout: killed")
}

// ---------------------------------------------------------------------------
// Hardening: the socket's budgets, a second instance, hooks across reloads.
// ---------------------------------------------------------------------------

/// How long until `ask` succeeds, trying every 100 ms up to `limit` (None:
/// not within it), and the last error seen.
fn time_to_success(
    limit: Duration,
    ask: impl Fn() -> Result<(), String>,
) -> (Option<Duration>, String) {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < limit {
        match ask() {
            Ok(()) => return (Some(t0.elapsed()), last),
            Err(e) => last = e,
        }
        std::thread::sleep(MS(100));
    }
    (None, last)
}

/// The socket group's gid and name for unprivileged clients (nogroup).
fn nogroup() -> (u32, String) {
    let gid = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .map(|g| g.gid.as_raw())
        .unwrap_or(65534);
    let name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .unwrap()
        .unwrap()
        .name;
    (gid, name)
}

/// Subscribers that never read and a flood of idle connections take their
/// own budgets: `status` is still answered at once, to root and to a member
/// of the socket's group; the longest idle connection makes room and is
/// told why; a subscriber beyond its budget is told so.
#[test]
fn stuck_subscribers_and_idle_connections_leave_room_for_requests() {
    let lab = lab();
    std::fs::set_permissions(lab.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let ctl = unprivileged_ctl(&lab);
    let (gid, group) = nogroup();
    let a = settled(&lab, &format!("[agent]\nsocket_group = \"{group}\""));
    let root = || a.status().map(|_| ()).map_err(|e| e.to_string());
    let member = || {
        let o = ctl_as(&ctl, &a.socket, gid, &["status"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(stderr(&o))
        }
    };
    let subscribe = || {
        let mut s = UnixStream::connect(&a.socket).unwrap();
        let _ = s.write_all(b"{\"request\":\"events\"}\n");
        s
    };

    // 64 subscribers that never read (and no event to make a write time out).
    let stuck: Vec<UnixStream> = (0..64).map(|_| subscribe()).collect();
    std::thread::sleep(MS(300));
    let (root1, root1_err) = time_to_success(S(5), root);
    let (member1, member1_err) = time_to_success(S(5), member);
    eprintln!("64 stuck subscribers: status as root after {root1:?} ({root1_err}), as a member after {member1:?} ({member1_err})");
    drop(stuck);
    std::thread::sleep(MS(300));

    // 500 connections that never send anything.
    let idle: Vec<UnixStream> = (0..500)
        .map(|_| UnixStream::connect(&a.socket).unwrap())
        .collect();
    std::thread::sleep(MS(500));
    let (root2, root2_err) = time_to_success(S(70), root);
    let (member2, member2_err) = time_to_success(S(70), member);
    eprintln!("500 idle connections: status as root after {root2:?} ({root2_err}), as a member after {member2:?} ({member2_err})");

    for (what, t) in [
        ("root, 64 stuck subscribers", root1),
        ("member, 64 stuck subscribers", member1),
        ("root, 500 idle connections", root2),
        ("member, 500 idle connections", member2),
    ] {
        assert!(
            t.is_some_and(|t| t < MS(500)),
            "{what}: status answered after {t:?}"
        );
    }
    // The two statuses took the places of the two longest idle connections,
    // which were told why they are closed; the flood beyond the budget was
    // refused.
    let first_line = |s: &UnixStream| {
        s.set_read_timeout(Some(S(2))).unwrap();
        let mut l = String::new();
        let _ = BufReader::new(s).read_line(&mut l);
        l
    };
    let evicted = first_line(&idle[0]);
    assert!(evicted.contains("longest idle"), "{evicted:?}");
    let refused = first_line(&idle[499]);
    assert!(refused.contains("too many clients"), "{refused:?}");
    drop(idle);
    std::thread::sleep(MS(300));

    // The subscribers' own budget: the 65th is told, its connection carries on.
    let stuck: Vec<UnixStream> = (0..64).map(|_| subscribe()).collect();
    std::thread::sleep(MS(300));
    let mut c = Conn::open(&a);
    let v = c.ask(r#"{"request":"events"}"#);
    assert!(error_of(&v).contains("too many event subscribers"), "{v}");
    assert!(c.ask(r#"{"request":"status"}"#)["active"].is_object());
    drop(stuck);
    let m = parse_metrics(&stdout(&a.ctl(&["metrics"])));
    for reason in ["idle_evicted", "too_many_clients", "too_many_subscribers"] {
        assert!(
            value(&m, "uplinkd_api_refused_total", &[("reason", reason)]).is_some_and(|v| v >= 1.0),
            "no refusal counted as {reason}"
        );
    }
}

/// Runs a second `uplinkd` with `config` in the server's namespace for at
/// most `limit`: its exit status (None: still running, then stopped) and
/// its output.
fn second_uplinkd(
    lab: &uplink_lab::Lab,
    config: &Path,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let out = lab.dir().join("second.log");
    let log = std::fs::File::create(&out).unwrap();
    let mut child = lab
        .command(
            &lab.server_ns(),
            &[BIN, "--config", config.to_str().unwrap()],
        )
        .unwrap()
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(None) if Instant::now() < deadline => std::thread::sleep(MS(20)),
            Ok(s) => break s,
            Err(_) => break None,
        }
    };
    if status.is_none() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    (status, std::fs::read_to_string(&out).unwrap_or_default())
}

fn inode(p: &Path) -> Option<u64> {
    std::fs::metadata(p).map(|m| m.ino()).ok()
}

/// A second instance with the same configuration refuses to start, naming
/// the first, and leaves its socket alone; so it does when something else
/// listens on the socket. A stale socket (its owner killed) is replaced,
/// and an instance removes the socket file on exit only if it is still its.
#[test]
fn a_second_uplinkd_refuses_to_start_and_leaves_the_first_alone() {
    let lab = lab();
    let mut a = settled(&lab, "");
    let pid = a.child.as_ref().unwrap().pid();
    let first = inode(&a.socket);
    let t0 = Instant::now();
    let (status, out) = second_uplinkd(&lab, a.config_path(), S(5));
    eprintln!(
        "second instance: {status:?} after {:?}; socket inode {first:?} -> {:?}; first answers: {:?}",
        t0.elapsed(),
        inode(&a.socket),
        a.status().map(|_| ())
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "second instance: {status:?}\n{out}"
    );
    let expect = format!(
        "another uplinkd (pid {pid}) is running with socket {}",
        a.socket.display()
    );
    assert!(out.contains(&expect), "{out}");
    assert_eq!(
        inode(&a.socket),
        first,
        "the first instance's socket was replaced"
    );
    a.status().expect("the first instance still answers");
    for f in Family::ALL {
        assert!(route_via(&lab, f, Uplink::Primary));
    }

    // An instance killed outright leaves a stale socket: replaced as before.
    a.kill();
    assert!(a.socket.exists(), "a killed instance left no socket file");
    a.spawn(&lab);
    let lock = std::fs::read_to_string(uplinkd::api::lock_path(&a.socket)).unwrap();
    assert_eq!(lock.trim(), a.child.as_ref().unwrap().pid().to_string());

    // An instance removes the socket file on exit only while it is its own.
    std::fs::remove_file(&a.socket).unwrap();
    let other = std::os::unix::net::UnixListener::bind(&a.socket).unwrap();
    let other_inode = inode(&a.socket);
    a.child.take().unwrap().terminate(S(5)).unwrap();
    assert_eq!(
        inode(&a.socket),
        other_inode,
        "exit removed a socket file not its own"
    );

    // Something else that accepts on the socket (no lock held) is not
    // displaced either.
    let (status, out) = second_uplinkd(&lab, a.config_path(), S(5));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{out}");
    assert!(out.contains("accepts connections"), "{out}");
    assert_eq!(inode(&a.socket), other_inode);
    drop(other);
    std::fs::remove_file(&a.socket).unwrap();
}

/// Each reload that changes the hooks ends the hooks task it replaces once
/// that task's hooks are done (a hanging one at its timeout): after N
/// reloads, N tasks ended and one runs, and only the newest hook runs.
#[test]
fn reloads_that_change_hooks_leave_no_hooks_task_behind() {
    let lab = lab();
    let dir = lab.dir().display().to_string();
    let hooks = |k: usize| {
        format!("[hooks]\non_active_change = ['echo {k} >> {dir}/hook.runs; exec sleep 30']\ntimeout = \"1s\"")
    };
    let mut a = settled(&lab, &hooks(0));
    let runs = || {
        std::fs::read_to_string(lab.dir().join("hook.runs"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let wait_log = |a: &Agent, needle: &str, count: usize, limit: Duration| {
        let deadline = Instant::now() + limit;
        while a.log_text().matches(needle).count() < count && Instant::now() < deadline {
            std::thread::sleep(MS(20));
        }
        a.log_text().matches(needle).count()
    };
    // The first decisions started hook 0 twice; it hangs until its timeout.
    let deadline = Instant::now() + S(5);
    while runs().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(MS(20));
    }
    const N: usize = 5;
    for k in 1..=N {
        lab.write_config(&hooks(k)).unwrap();
        a.child
            .as_mut()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGHUP);
        assert_eq!(wait_log(&a, "reload applied", k, S(10)), k, "reload {k}");
    }
    let ended = wait_log(&a, "hooks task ended", N, S(5));
    let started = a.log_text().matches("hooks task started").count();
    eprintln!("after {N} reloads: {started} hooks tasks started, {ended} ended");
    assert_eq!((started, ended), (N + 1, N), "{}", a.log_text());
    // The first task ended only after its two hanging hooks were killed.
    let log = a.log_text();
    let first_ended = log
        .lines()
        .position(|l| l.contains("hooks task ended") && l.contains("echo 0 >>"))
        .expect("the first hooks task ended");
    let killed = log
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("hook still running at its timeout: killed"))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    assert_eq!(killed.len(), 2, "{log}");
    assert!(first_ended > killed[1], "{log}");

    // A failover runs the newest hook only.
    lab.carrier_down(Uplink::Primary).unwrap();
    let deadline = Instant::now() + S(5);
    while runs().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(MS(20));
    }
    std::thread::sleep(MS(300));
    let n = N.to_string();
    assert_eq!(runs(), ["0", "0", n.as_str(), n.as_str()]);
}
