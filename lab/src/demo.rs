//! `uplink-lab demo`: the README's first command. Builds the lab, runs the
//! real `uplinkd` in the server namespace with the shipped defaults (only
//! what the lab requires changed, plus a short `failback_after` so the demo
//! fits in two minutes), shows its status live, plays the failures one by
//! one with a paced UDP stream (IPv4 and IPv6) through the server, and
//! prints a timeline of what the daemon did and the outage of every step.
//!
//! The pieces the benchmark shares (finding the daemon binary, running it in
//! the lab, reading its status and events, measuring a stream) live here
//! too: one way to run the daemon for the demo and the bench.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::{
    Family, Lab, LabChild, LabError, LabSpec, StreamReport, StreamSpec, UdpStream, Uplink,
};
use uplinkd::client::{Client, ClientError};
use uplinkd::proto::StreamLine;
use uplinkd_core::status::{Status, UplinkState};

type Result<T, E = LabError> = std::result::Result<T, E>;

fn invalid(msg: impl Into<String>) -> LabError {
    LabError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------
// Cancellation (Ctrl-C)
// ---------------------------------------------------------------------------

/// Set when the user asked us to stop (Ctrl-C, SIGTERM, SIGHUP). Every wait
/// in the demo and the bench checks it, so a run ends within a fraction of
/// a second and the lab is dropped (torn down) on the way out.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Err once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(invalid("interrupted"))
        } else {
            Ok(())
        }
    }
    /// Sleeps `d` in small steps, returning early (Err) when cancelled.
    pub fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        loop {
            self.check()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// Polls `f` every `every` until it returns true; Err after `timeout` or on
/// cancellation.
pub fn wait_until(
    cancel: &Cancel,
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        cancel.check()?;
        if f()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------
// Prerequisites and the daemon binary
// ---------------------------------------------------------------------------

/// [`super::check_prerequisites`], and on a fresh Debian/Ubuntu machine
/// where we are root, installs the missing tools with apt-get first.
pub fn ensure_prerequisites() -> Result<()> {
    let msg = match super::check_prerequisites() {
        Ok(()) => return Ok(()),
        Err(LabError::Missing(m)) => m,
        Err(e) => return Err(e),
    };
    let root = nix::unistd::geteuid().is_root();
    let apt = Command::new("apt-get")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut packages = Vec::new();
    for (needle, pkg) in [
        ("iproute2", "iproute2"),
        ("nftables", "nftables"),
        ("procps", "procps"),
    ] {
        if msg.contains(needle) {
            packages.push(pkg);
        }
    }
    if !root || !apt || packages.is_empty() {
        return Err(LabError::Missing(msg));
    }
    eprintln!(
        "uplink-lab: missing {}; installing with apt-get",
        packages.join(", ")
    );
    let run = |args: &[&str]| -> Result<()> {
        eprintln!("uplink-lab: apt-get {}", args.join(" "));
        let st = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map_err(|source| LabError::Io {
                what: "run apt-get".into(),
                source,
            })?;
        if st.success() {
            Ok(())
        } else {
            Err(invalid(format!("apt-get {} failed ({st})", args.join(" "))))
        }
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(packages.iter().copied());
    if run(&install).is_err() {
        // A fresh machine often has no package lists yet.
        run(&["update"])?;
        run(&install)?;
    }
    super::check_prerequisites()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The `uplinkd` binary to run: `explicit` if given, else the one next to
/// this executable (`target/<profile>/uplinkd`). When that one is missing
/// or older than this executable and the source tree this was built from is
/// still there, it is (re)built first with the same profile and target
/// directory, so `cargo run --release --bin uplink-lab -- demo` works on a
/// fresh checkout (cargo only builds the binary it runs).
pub fn find_uplinkd(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(invalid(format!("--uplinkd {}: no such file", p.display())));
        }
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().map_err(|source| LabError::Io {
        what: "find this executable".into(),
        source,
    })?;
    let sibling = me.with_file_name("uplinkd");
    let stale = match (mtime(&sibling), mtime(&me)) {
        (None, _) => true,
        (Some(d), Some(m)) => d < m,
        (Some(_), None) => false,
    };
    if !stale {
        return Ok(sibling);
    }
    // The workspace's manifest (this package lives in its `lab/` folder).
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let dir = me.parent().map(Path::to_path_buf);
    let built = match (&dir, manifest.is_file()) {
        (Some(dir), true) => {
            let profile = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("release")
                .to_string();
            let target_dir = dir.parent().unwrap_or(dir);
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut c = Command::new(&cargo);
            c.arg("build")
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--target-dir")
                .arg(target_dir)
                .args(["--bin", "uplinkd"]);
            match profile.as_str() {
                "debug" => {}
                "release" => {
                    c.arg("--release");
                }
                other => {
                    c.args(["--profile", other]);
                }
            }
            eprintln!(
                "uplink-lab: {} uplinkd ({profile}) next to {}",
                if sibling.exists() {
                    "rebuilding"
                } else {
                    "building"
                },
                me.display()
            );
            match c.stdin(Stdio::null()).status() {
                Ok(st) if st.success() => true,
                Ok(st) => {
                    eprintln!("uplink-lab: cargo build --bin uplinkd failed ({st})");
                    false
                }
                Err(e) => {
                    eprintln!("uplink-lab: cannot run cargo ({e})");
                    false
                }
            }
        }
        _ => false,
    };
    if sibling.is_file() {
        if !built {
            eprintln!(
                "uplink-lab: warning: using {}, which is older than this executable",
                sibling.display()
            );
        }
        Ok(sibling)
    } else {
        Err(LabError::Missing(format!(
            "the daemon binary {} (build both with `cargo build --release`, then run target/release/uplink-lab; or pass --uplinkd PATH)",
            sibling.display()
        )))
    }
}

// ---------------------------------------------------------------------------
// The daemon in the lab
// ---------------------------------------------------------------------------

/// One event record as the daemon published it, with its wall-clock time
/// parsed.
#[derive(Debug, Clone)]
pub struct Event {
    pub time: SystemTime,
    pub record: Value,
}

impl Event {
    pub fn kind(&self) -> &str {
        self.record["kind"].as_str().unwrap_or("")
    }
    /// Seconds of `self.time` after `t0` (negative if before).
    pub fn offset(&self, t0: SystemTime) -> f64 {
        secs_between(t0, self.time)
    }
}

/// `b - a` in seconds, signed.
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The real `uplinkd`, running in the lab's server namespace: started with
/// a config the lab generated, its log in the lab's directory, its events
/// collected from the socket's event stream. Terminated on drop.
pub struct Uplinkd {
    child: Option<LabChild>,
    pid: u32,
    pub socket: PathBuf,
    /// Reads its status and events, and drains and undrains for the bench.
    client: Client,
    pub log: PathBuf,
    pub config: PathBuf,
    /// Just before the process was spawned.
    pub spawned_wall: SystemTime,
    pub spawned: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    subscriber: Option<JoinHandle<()>>,
}

impl Uplinkd {
    /// Starts `bin` with the lab's config plus `overrides` (TOML, see
    /// [`Lab::config_toml`]) and waits (bounded) until its socket answers.
    pub fn start(lab: &Lab, bin: &Path, overrides: &str) -> Result<Uplinkd> {
        let config = lab.write_config(overrides)?;
        let socket = lab.socket_path();
        let log = lab.dir().join("uplinkd.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| LabError::Io {
                what: format!("open {}", log.display()),
                source,
            })?;
        let logf2 = logf.try_clone().map_err(|source| LabError::Io {
            what: format!("open {}", log.display()),
            source,
        })?;
        let bin_s = bin.to_string_lossy().to_string();
        let cfg_s = config.to_string_lossy().to_string();
        let mut cmd = lab.command(&lab.server_ns(), &[&bin_s, "--config", &cfg_s])?;
        cmd.env("UPLINKD_LOG", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2);
        let spawned_wall = SystemTime::now();
        let spawned = Instant::now();
        let child = cmd.spawn().map_err(|source| LabError::Io {
            what: format!("start {bin_s}"),
            source,
        })?;
        let pid = child.id();
        let mut d = Uplinkd {
            child: Some(LabChild::new(child, "uplinkd")),
            pid,
            client: Client::new(&socket).with_timeout(Duration::from_secs(5)),
            socket,
            log,
            config,
            spawned_wall,
            spawned,
            events: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            subscriber: None,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            d.check_alive()?;
            if d.status().is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("uplinkd's socket {} to answer", d.socket.display()),
                    timeout: Duration::from_secs(15),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        d.subscribe()?;
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Err with the end of the log if the daemon exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => return Err(invalid("uplinkd was stopped")),
        };
        match exited {
            None => Ok(()),
            Some(st) => Err(invalid(format!(
                "uplinkd exited ({st}); the end of its log {}:\n{}",
                self.log.display(),
                self.log_tail(30)
            ))),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The client of its socket (controls, metrics).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn status(&self) -> Result<Status> {
        Ok(self.client.status()?)
    }

    /// Polls the status (every 10 ms) until `pred` holds; returns it.
    pub fn wait_for(
        &mut self,
        cancel: &Cancel,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            cancel.check()?;
            self.check_alive()?;
            if let Ok(s) = self.status() {
                if pred(&s) {
                    return Ok(s);
                }
            }
            if Instant::now() >= deadline {
                let last = self
                    .status()
                    .map(|s| summary(&s))
                    .unwrap_or_else(|e| e.to_string());
                return Err(invalid(format!(
                    "timed out after {timeout:?} waiting for {what}; uplinkd: {last}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Subscribes to the event stream (replaying everything since the
    /// start) on a thread that collects the records.
    fn subscribe(&mut self) -> Result<()> {
        let mut sub = self.client.events(Some(0))?;
        // Wakes up to check the stop flag; a partial line is kept and
        // completed by the next read.
        sub.set_timeout(Some(Duration::from_millis(100)))?;
        let events = self.events.clone();
        let stop = self.stop.clone();
        let client = self.client.clone();
        let h = std::thread::Builder::new()
            .name("lab-events".into())
            .spawn(move || {
                // A daemon restarted on the same lab keeps counting its
                // sequence numbers (/run/uplinkd): asked for everything
                // since 0, it answers that the older ones are gone and ends
                // the stream; then read on from the ones it has.
                let mut resubscribed = 0;
                while !stop.load(Ordering::Relaxed) {
                    match sub.next_line() {
                        Ok(Some(StreamLine::Event(r))) => {
                            let Ok(t) = humantime::parse_rfc3339_weak(&r.time) else {
                                continue;
                            };
                            let Ok(record) = serde_json::to_value(&r) else {
                                continue;
                            };
                            if let Ok(mut e) = events.lock() {
                                e.push(Event { time: t, record });
                            }
                        }
                        // The daemon closes the stream after the notice.
                        Ok(Some(StreamLine::Missed(m))) if resubscribed < 3 => {
                            resubscribed += 1;
                            match client.events(Some(m.last_seq)) {
                                Ok(s)
                                    if s.set_timeout(Some(Duration::from_millis(100))).is_ok() =>
                                {
                                    sub = s
                                }
                                _ => return,
                            }
                        }
                        Ok(Some(StreamLine::Missed(_))) => {}
                        Err(e) if e.is_timeout() => {}
                        Err(ClientError::Decode { .. }) => {}
                        Ok(None) | Err(_) => return,
                    }
                }
            })
            .map_err(|source| LabError::Io {
                what: "spawn event reader".into(),
                source,
            })?;
        self.subscriber = Some(h);
        Ok(())
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The first `active_changed` of `family` to `to` at or after `since`.
    pub fn switch_after(&self, family: Family, to: &str, since: SystemTime) -> Option<Event> {
        self.events
            .lock()
            .ok()?
            .iter()
            .find(|e| {
                e.kind() == "active_changed"
                    && e.record["family"] == family.name()
                    && e.record["to"] == to
                    && e.time >= since
            })
            .cloned()
    }

    /// Waits (bounded) until that switch event arrived (events come a
    /// little after the status changes).
    pub fn wait_switch_event(
        &self,
        family: Family,
        to: &str,
        since: SystemTime,
        timeout: Duration,
    ) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.switch_after(family, to, since) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// (utime + stime) of the process, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid);
        let s = std::fs::read_to_string(&path).map_err(|source| LabError::Io {
            what: format!("read {path}"),
            source,
        })?;
        let fields: Vec<&str> = s
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of /proc/pid/stat (proc(5)),
        // i.e. 11 and 12 after the state.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (Some(u), Some(st)) = (ticks(11), ticks(12)) else {
            return Err(LabError::Parse {
                what: path,
                detail: s,
            });
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok((u + st) as f64 / hz)
    }

    /// From `/proc/<pid>/schedstat`: (time on a CPU in ns, number of
    /// times it ran). Measured by the scheduler's clock, unlike utime +
    /// stime, which are sampled at the kernel's tick.
    pub fn schedstat(&self) -> Option<(u64, u64)> {
        let threads = self.thread_schedstat()?;
        Some(threads.iter().fold((0, 0), |(n, k), t| (n + t.2, k + t.3)))
    }

    /// [`Self::schedstat`] per thread: (tid, name, ns on a CPU, times it
    /// ran). /proc/PID/schedstat is the main thread's alone.
    pub fn thread_schedstat(&self) -> Option<Vec<(u32, String, u64, u64)>> {
        let dir = std::fs::read_dir(format!("/proc/{}/task", self.pid)).ok()?;
        let mut out = Vec::new();
        for task in dir.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue; // ended meanwhile
            };
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let mut it = s.split_whitespace();
            let ns = it.next()?.parse::<u64>().ok()?;
            let _wait = it.next()?;
            let slices = it.next()?.parse::<u64>().ok()?;
            out.push((tid, name.trim().to_string(), ns, slices));
        }
        Some(out)
    }

    /// A `/proc/<pid>/status` field in kB (e.g. "VmHWM", "VmRSS").
    pub fn proc_status_kib(&self, key: &str) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(':')?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
    }

    /// SIGTERM, then SIGKILL after 3 s.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = c.terminate(Duration::from_secs(3));
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.subscriber.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Uplinkd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Active uplink of `family`.
pub fn active(s: &Status, family: Family) -> Option<&str> {
    match family {
        Family::V4 => s.active.ipv4.as_deref(),
        Family::V6 => s.active.ipv6.as_deref(),
    }
}

/// Both uplinks healthy, every transit target reachable through both.
pub fn settled(s: &Status) -> bool {
    s.uplinks.len() >= 2
        && s.uplinks.iter().all(|u| {
            u.state == UplinkState::Healthy && u.transits.iter().all(|t| t.reachable == Some(true))
        })
}

/// Both families on `uplink`.
pub fn on(s: &Status, uplink: Uplink) -> bool {
    Family::ALL
        .iter()
        .all(|f| active(s, *f) == Some(uplink.name()))
}

/// The uplink's state in the status, if listed.
pub fn state(s: &Status, uplink: Uplink) -> Option<UplinkState> {
    s.uplinks.get(uplink.index()).map(|u| u.state)
}

fn state_word(st: UplinkState) -> &'static str {
    match st {
        UplinkState::Unknown => "unknown",
        UplinkState::Healthy => "healthy",
        UplinkState::Degraded => "degraded",
        UplinkState::Unhealthy => "UNHEALTHY",
    }
}

/// One line: where each family goes, and each uplink's state and evidence.
pub fn summary(s: &Status) -> String {
    summary_with(s, true)
}

/// [`summary`], with or without round-trip times (without: changes only
/// when something that matters changes).
pub fn summary_with(s: &Status, rtt: bool) -> String {
    let mut out = format!(
        "v4 -> {}{}  v6 -> {}{}",
        s.active.ipv4.as_deref().unwrap_or("none"),
        if s.fail_static.ipv4 {
            " (FAIL STATIC)"
        } else {
            ""
        },
        s.active.ipv6.as_deref().unwrap_or("none"),
        if s.fail_static.ipv6 {
            " (FAIL STATIC)"
        } else {
            ""
        },
    );
    for u in &s.uplinks {
        let gw = |t: &Option<uplinkd_core::status::TargetStatus>| match t {
            Some(t) if t.reachable == Some(true) => t
                .rtt_ms
                .filter(|_| rtt)
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "up".into()),
            Some(t) if t.reachable == Some(false) => "DEAD".into(),
            Some(_) => "?".into(),
            None => "-".into(),
        };
        let up = u
            .transits
            .iter()
            .filter(|t| t.reachable == Some(true))
            .count();
        let mut reasons: Vec<String> = u
            .reasons
            .iter()
            .map(|r| match r {
                uplinkd_core::status::Reason::Carrier => "carrier".to_string(),
                uplinkd_core::status::Reason::Gateway { family } => format!("gateway {family}"),
                uplinkd_core::status::Reason::Forwarding { family } => {
                    format!("forwarding {family}")
                }
                uplinkd_core::status::Reason::Quorum { family, .. } => format!("quorum {family}"),
                uplinkd_core::status::Reason::QuorumEverywhere { family, .. } => {
                    format!("quorum {family} everywhere")
                }
                uplinkd_core::status::Reason::Damped { remaining_ms } => {
                    format!("damped {:.0}s", *remaining_ms as f64 / 1000.0)
                }
                uplinkd_core::status::Reason::Drained => "drained".to_string(),
                uplinkd_core::status::Reason::Missing => "missing".to_string(),
                uplinkd_core::status::Reason::NotInBond { bond } => format!("not in {bond}"),
            })
            .collect();
        reasons.dedup();
        out.push_str(&format!(
            " | {} {}{} carrier {} gw {}/{} transits {}/{} up",
            u.name,
            state_word(u.state),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            if u.carrier { "up" } else { "DOWN" },
            gw(&u.gateway.ipv4),
            gw(&u.gateway.ipv6),
            up,
            u.transits.len()
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// The longest gap that is a network outage: runs of missing datagrams that
/// are not entirely slots the sender skipped while it was not scheduled (on
/// a loaded 2-core box a descheduled sender is not a network outage; see
/// [`StreamReport::network_gaps`]).
pub fn network_gap(r: &StreamReport) -> Duration {
    let longest = r.network_gaps().iter().map(|g| g.1).max().unwrap_or(0);
    r.interval * u32::try_from(longest).unwrap_or(u32::MAX)
}

/// "12.3 ms" below a second, "6.75 s" above.
pub fn human_ms(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{:.2} s", x / 1000.0)
    } else {
        format!("{x:.1} ms")
    }
}

/// Datagrams lost in network gaps (see [`network_gap`]).
pub fn network_lost(r: &StreamReport) -> u64 {
    r.network_gaps().iter().map(|g| g.1).sum()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits (bounded) until the stream flows again: over a 100 ms window at
/// least half of the datagrams due arrived. Catches a sender stalled behind
/// a dead neighbour queue, which must be part of the measured outage.
pub fn wait_flowing(cancel: &Cancel, stream: &UdpStream, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let window = Duration::from_millis(100);
    loop {
        cancel.check()?;
        let (s0, r0) = stream.progress();
        std::thread::sleep(window);
        let (s1, r1) = stream.progress();
        let due = s1.saturating_sub(s0).max(1);
        // Slots issued also stall while the sender blocks: require both.
        if r1.saturating_sub(r0) * 2 >= due && s1 > s0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

// ---------------------------------------------------------------------------
// The console: step messages above a live status line
// ---------------------------------------------------------------------------

struct Console {
    tty: bool,
    t0: Instant,
    /// The live line currently shown (tty) or last printed (not a tty).
    live: Mutex<String>,
}

impl Console {
    fn stamp(&self) -> String {
        format!("[{:6.1}s]", self.t0.elapsed().as_secs_f64())
    }
    fn say(&self, msg: &str) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[K");
        }
        let _ = writeln!(out, "{} {msg}", self.stamp());
        if self.tty && !live.is_empty() {
            let _ = write!(out, "{}", clip(&live, 200));
        }
        let _ = out.flush();
    }
    fn live(&self, line: String) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stdout().lock();
        if self.tty {
            let cols = terminal_width();
            let _ = write!(
                out,
                "\r\x1b[K\x1b[2m{}\x1b[0m",
                clip(&format!("  status: {line}"), cols - 1)
            );
            *live = format!(
                "\x1b[2m{}\x1b[0m",
                clip(&format!("  status: {line}"), cols - 1)
            );
        } else if *live != line {
            let _ = writeln!(out, "{}   status: {line}", self.stamp());
            *live = line;
        }
        let _ = out.flush();
    }
    fn clear_live(&self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if self.tty {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
        }
        live.clear();
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize; on error we use 120.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col >= 40 {
        ws.ws_col as usize
    } else {
        120
    }
}

/// Refreshes the live status line every 250 ms until dropped.
struct LiveStatus {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveStatus {
    fn start(console: Arc<Console>, client: Client) -> LiveStatus {
        let tty = console.tty;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lab-live".into())
            .spawn(move || {
                while !s2.load(Ordering::Relaxed) {
                    let line = client
                        .status()
                        .map(|st| summary_with(&st, tty))
                        .unwrap_or_else(|_| "(no answer)".into());
                    console.live(line);
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
            .ok();
        LiveStatus { stop, thread }
    }
}

impl Drop for LiveStatus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------

/// `failback_after` in the demo (the shipped default is 30 s).
pub const DEMO_FAILBACK_AFTER: &str = "5s";
/// Flap damping threshold in the demo (the shipped default is 3 failures in
/// 10 minutes, then a 60 s hold): the demo fails the primary four times in
/// a minute on purpose.
pub const DEMO_DAMPING_THRESHOLD: u32 = 10;
/// Datagrams per second of each demo stream (one IPv4, one IPv6).
pub const DEMO_RATE: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct DemoOpts {
    pub uplinkd: Option<PathBuf>,
}

/// A demo action, for the timeline.
struct Mark {
    time: SystemTime,
    text: String,
}

/// One switch of a family seen in the daemon's events during a step.
#[derive(Debug, Clone, Serialize)]
pub struct StepSwitch {
    pub family: Family,
    /// The uplink the family moved to (its `active_changed` event).
    pub to: String,
    /// From the demo's injection to that event.
    pub after_ms: f64,
}

/// The outage one stream measured during a step.
#[derive(Debug, Clone, Serialize)]
pub struct StepOutage {
    pub family: Family,
    /// Longest network gap (see [`network_gap`]), in ms.
    pub outage_ms: f64,
    /// Longest gap of any kind (incl. sender descheduled), in ms.
    pub raw_ms: f64,
    pub lost: u64,
    pub sent: u64,
}

/// The TCP connection of one family (opened before the first failure, from
/// the service address) during a step.
#[derive(Debug, Clone, Serialize)]
pub struct StepTcp {
    pub family: Family,
    /// It delivered new bytes after the step (within [`TCP_DEADLINE`]).
    pub delivering: bool,
    /// The longest time without delivery during the step, in ms.
    pub stall_ms: f64,
}

/// How long a step waits for the TCP connections to deliver again after
/// the streams flow.
pub const TCP_DEADLINE: Duration = Duration::from_secs(10);

/// What one step of the demo did and measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoStep {
    pub title: String,
    /// Where both families must end up after the step.
    pub expect: Uplink,
    /// The first switch of each family toward `expect` after the step's
    /// injection (one per family when the step worked).
    pub switches: Vec<StepSwitch>,
    /// Fail static seen (both families) during the step.
    pub fail_static: bool,
    /// Switches while in fail static (must be 0: no flapping between dead
    /// uplinks).
    pub switches_while_static: Option<usize>,
    /// One per family (IPv4, IPv6).
    pub outages: Vec<StepOutage>,
    /// The TCP connection of each family, opened before the first step.
    pub tcp: Vec<StepTcp>,
    /// What happened, in words.
    pub text: String,
    pub note: String,
}

/// What the demo did: every step, in order.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The namespaces the demo's lab had (all removed when it returns).
    pub namespaces: Vec<String>,
    pub first_decision_ms: Option<f64>,
    pub steps: Vec<DemoStep>,
    /// The whole demo (lab build to teardown), in seconds.
    pub duration_s: f64,
}

struct Demo<'a> {
    lab: &'a Lab,
    d: Uplinkd,
    /// One TCP connection per family from the server to the sink, opened
    /// before the first failure and kept through every step.
    tcp: Vec<(Family, crate::TcpFlow)>,
    cancel: &'a Cancel,
    console: Arc<Console>,
    t0: SystemTime,
    marks: Vec<Mark>,
    results: Vec<DemoStep>,
}

/// What a step's action reports back to [`Demo::measured`].
struct Outcome {
    expect: Uplink,
    switches: Vec<StepSwitch>,
    fail_static: bool,
    switches_while_static: Option<usize>,
    text: String,
}

impl Demo<'_> {
    fn mark(&mut self, text: impl Into<String>) -> SystemTime {
        let text = text.into();
        let time = SystemTime::now();
        self.console.say(&format!(">> {text}"));
        self.marks.push(Mark { time, text });
        time
    }

    /// Starts one stream per family, waits 300 ms, runs `act` (which
    /// injects and waits for its outcome), waits until both streams flow
    /// again (bounded) and 300 ms more, and stops them.
    fn measured(
        &mut self,
        title: &str,
        note: &str,
        act: impl FnOnce(&mut Self) -> Result<Outcome>,
    ) -> Result<()> {
        let mut streams = Vec::new();
        for f in Family::ALL {
            streams.push(self.lab.udp_stream(&StreamSpec {
                family: f,
                rate: DEMO_RATE,
                ..StreamSpec::default()
            })?);
        }
        for (_, t) in &self.tcp {
            t.reset_stall();
        }
        self.cancel.sleep(Duration::from_millis(300))?;
        let o = act(self)?;
        for s in &streams {
            wait_flowing(self.cancel, s, Duration::from_secs(8))?;
        }
        self.cancel.sleep(Duration::from_millis(300))?;
        // The TCP connections deliver again: new bytes after the step.
        let tcp: Vec<StepTcp> = self
            .tcp
            .iter()
            .map(|(family, t)| {
                let now = t.delivered();
                let delivering = t.wait_delivered(now, 4096, TCP_DEADLINE);
                StepTcp {
                    family: *family,
                    delivering,
                    stall_ms: ms(t.longest_stall()),
                }
            })
            .collect();
        let outages: Vec<StepOutage> = streams
            .into_iter()
            .zip(Family::ALL)
            .map(|(s, family)| {
                let r = s.stop();
                StepOutage {
                    family,
                    outage_ms: ms(network_gap(&r)),
                    raw_ms: ms(r.longest_gap),
                    lost: network_lost(&r),
                    sent: r.sent,
                }
            })
            .collect();
        let line = outages
            .iter()
            .map(|x| {
                format!(
                    "{} outage {} ({} of {} lost)",
                    fam_short(x.family),
                    human_ms(x.outage_ms),
                    x.lost,
                    x.sent
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let tcp_line = tcp
            .iter()
            .map(|t| match t.delivering {
                true => format!(
                    "{} delivering (longest stall {})",
                    fam_short(t.family),
                    human_ms(t.stall_ms)
                ),
                false => format!("{} STOPPED", fam_short(t.family)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        self.console.say(&format!(
            "   {}; {line}; TCP opened before the first failure: {tcp_line}",
            o.text
        ));
        self.results.push(DemoStep {
            title: title.to_string(),
            expect: o.expect,
            switches: o.switches,
            fail_static: o.fail_static,
            switches_while_static: o.switches_while_static,
            outages,
            tcp,
            text: o.text,
            note: note.to_string(),
        });
        Ok(())
    }

    /// Waits until both families are on `to` (status) and returns the
    /// switches from the daemon's events, timed from `since`.
    fn wait_on(
        &mut self,
        to: Uplink,
        since: SystemTime,
        timeout: Duration,
        what: &str,
    ) -> Result<Outcome> {
        self.d.wait_for(self.cancel, what, timeout, |s| on(s, to))?;
        let mut parts = Vec::new();
        let mut switches = Vec::new();
        for f in Family::ALL {
            match self
                .d
                .wait_switch_event(f, to.name(), since, Duration::from_secs(2))
            {
                Some(e) => {
                    let after_ms = secs_between(since, e.time) * 1000.0;
                    parts.push(format!("{} {}", fam_short(f), human_ms(after_ms)));
                    switches.push(StepSwitch {
                        family: f,
                        to: to.name().to_string(),
                        after_ms,
                    });
                }
                None => parts.push(format!("{} ?", fam_short(f))),
            }
        }
        Ok(Outcome {
            expect: to,
            switches,
            fail_static: false,
            switches_while_static: None,
            text: format!("on {} after {}", to.name(), parts.join(", ")),
        })
    }
}

fn fam_short(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

/// Runs the demo and returns what every step measured. `cancel` is set on
/// Ctrl-C; the lab is torn down on every way out (also on an error or a
/// panic: the [`Lab`] and the daemon are dropped).
pub fn run_demo(opts: &DemoOpts, cancel: &Cancel) -> Result<DemoReport> {
    let tty = std::io::stdout().is_terminal();
    let t_start = Instant::now();
    println!("uplinkd demo: a dual-homed server, two routers, four transit providers and a sink,");
    println!("built in network namespaces (nothing outside them is touched; removed at the end).");
    ensure_prerequisites()?;
    let bin = find_uplinkd(opts.uplinkd.as_deref())?;
    cancel.check()?;
    let build_time = t_start.elapsed();
    let t_start = Instant::now();
    let console = Arc::new(Console {
        tty,
        t0: t_start,
        live: Mutex::new(String::new()),
    });
    console.say("building the lab...");
    let lab = Lab::build(&LabSpec::default())?;
    let namespaces = lab.namespaces();
    cancel.check()?;
    console.say(&format!(
        "lab {} built: server {} with eth0 (primary, gateway {} / {}) and eth1 (secondary, gateway {} / {})",
        lab.prefix().trim_end_matches('-'),
        lab.server_ns(),
        Uplink::Primary.gateway(Family::V4),
        Uplink::Primary.gateway(Family::V6),
        Uplink::Secondary.gateway(Family::V4),
        Uplink::Secondary.gateway(Family::V6),
    ));
    let overrides = format!(
        "[policy]\nfailback_after = \"{DEMO_FAILBACK_AFTER}\"\n[policy.damping]\nthreshold = {DEMO_DAMPING_THRESHOLD}\n"
    );
    console.say(&format!(
        "starting {} with the shipped defaults (config/uplinkd.toml), except: the lab's socket, interfaces, gateways and transit targets; failback_after = \"{DEMO_FAILBACK_AFTER}\" instead of the default 30s, and damping threshold = {DEMO_DAMPING_THRESHOLD} instead of 3 (3 failures in 10 min hold an uplink down 60 s; the demo fails the primary 4 times on purpose), so the demo fits in two minutes",
        bin.display()
    ));
    let d = Uplinkd::start(&lab, &bin, &overrides)?;
    console.say(&format!(
        "uplinkd running (pid {}), config {}, log {}",
        d.pid(),
        d.config.display(),
        d.log.display()
    ));
    let mut demo = Demo {
        lab: &lab,
        t0: d.spawned_wall,
        d,
        tcp: Vec::new(),
        cancel,
        console: console.clone(),
        marks: Vec::new(),
        results: Vec::new(),
    };
    let mut first_decision_ms = None;
    let outcome = (|| -> Result<()> {
        let live = LiveStatus::start(
            console.clone(),
            demo.d.client().clone().with_timeout(Duration::from_secs(2)),
        );
        let s = demo
            .d
            .wait_for(cancel, "the first decision", Duration::from_secs(20), |s| {
                s.decided && on(s, Uplink::Primary)
            })?;
        let fd = demo.d.spawned.elapsed().as_secs_f64() * 1000.0;
        first_decision_ms = Some(fd);
        console.say(&format!(
            "first decision {fd:.0} ms after start: {}",
            summary(&s)
        ));
        demo.d.wait_for(
            cancel,
            "both uplinks healthy, every transit reachable through both",
            Duration::from_secs(20),
            settled,
        )?;
        console.say(&format!(
            "both uplinks healthy, every transit reachable through both; each step below runs a paced UDP stream (IPv4 and IPv6, {DEMO_RATE} datagrams/s each) from the server to the sink; outage = longest run of lost datagrams"
        ));
        for f in Family::ALL {
            let t = crate::TcpFlow::start(
                &lab,
                &crate::TcpSpec {
                    family: f,
                    ..crate::TcpSpec::default()
                },
            )?;
            console.say(&format!(
                "TCP connection {} -> sink opened ({}: the service address the routes carry as source); it must keep delivering after every step",
                t.local_addr(),
                fam_short(f)
            ));
            demo.tcp.push((f, t));
        }

        // 1. Carrier loss, and failback.
        demo.measured("primary carrier loss", "", |d| {
            let t = d.mark("primary loses carrier (router a's port goes down)");
            d.lab.carrier_down(Uplink::Primary)?;
            d.wait_on(
                Uplink::Secondary,
                t,
                Duration::from_secs(10),
                "failover to secondary",
            )
        })?;
        demo.measured("primary carrier back, failback", "make-before-break", |d| {
            let t = d.mark(format!(
                "primary carrier back; failback once healthy for {DEMO_FAILBACK_AFTER}"
            ));
            d.lab.carrier_up(Uplink::Primary)?;
            d.wait_on(
                Uplink::Primary,
                t,
                Duration::from_secs(30),
                "failback to primary",
            )
        })?;

        // 2. Dead gateway with carrier up.
        demo.measured("primary gateway dead", "carrier stays up", |d| {
            let t = d.mark("primary gateway dead (router a drops everything; carrier stays up)");
            d.lab.gateway_dead(Uplink::Primary)?;
            d.wait_on(
                Uplink::Secondary,
                t,
                Duration::from_secs(10),
                "failover to secondary",
            )
        })?;
        demo.measured(
            "primary gateway alive, failback",
            "make-before-break",
            |d| {
                let t = d.mark("primary gateway alive again");
                d.lab.gateway_alive(Uplink::Primary)?;
                d.wait_on(
                    Uplink::Primary,
                    t,
                    Duration::from_secs(30),
                    "failback to primary",
                )
            },
        )?;

        // 3. Dead upstream with the gateway alive.
        demo.measured(
            "primary upstream dead",
            "gateway answers; transit quorum fails",
            |d| {
                let t = d.mark("primary upstream dead (router a answers but reaches no transit)");
                d.lab.upstream_dead(Uplink::Primary)?;
                d.wait_on(
                    Uplink::Secondary,
                    t,
                    Duration::from_secs(15),
                    "failover to secondary",
                )
            },
        )?;
        demo.measured(
            "primary upstream back, failback",
            "make-before-break",
            |d| {
                let t = d.mark("primary upstream alive again");
                d.lab.upstream_alive(Uplink::Primary)?;
                d.wait_on(
                    Uplink::Primary,
                    t,
                    Duration::from_secs(30),
                    "failback to primary",
                )
            },
        )?;

        // 4. Both dead: fail static, then recovery.
        demo.measured("primary gateway dead again", "", |d| {
            let t = d.mark("primary gateway dead again");
            d.lab.gateway_dead(Uplink::Primary)?;
            d.wait_on(
                Uplink::Secondary,
                t,
                Duration::from_secs(10),
                "failover to secondary",
            )
        })?;
        demo.measured(
            "secondary dead too (fail static), then primary back",
            "outage = the time with no healthy uplink (expected)",
            |d| {
                let t = d.mark("secondary gateway dead too: no healthy uplink left");
                d.lab.gateway_dead(Uplink::Secondary)?;
                let s = d.d.wait_for(d.cancel, "fail static", Duration::from_secs(10), |s| {
                    s.fail_static.ipv4 && s.fail_static.ipv6
                })?;
                let held = format!(
                    "FAIL STATIC after {:.0} ms, routes kept on {}",
                    secs_between(t, SystemTime::now()) * 1000.0,
                    active(&s, Family::V4).unwrap_or("none")
                );
                d.console.say(&format!("   {held}; holding 3 s (no flapping between dead uplinks)"));
                d.cancel.sleep(Duration::from_secs(3))?;
                let switches = d
                    .d
                    .events()
                    .iter()
                    .filter(|e| e.kind() == "active_changed" && e.time >= t)
                    .count();
                let t2 = d.mark("primary gateway alive again: traffic moves as soon as it is healthy (failback_after does not apply: nothing else is healthy)");
                d.lab.gateway_alive(Uplink::Primary)?;
                let mut back = d.wait_on(Uplink::Primary, t2, Duration::from_secs(10), "recovery onto primary")?;
                back.fail_static = true;
                back.switches_while_static = Some(switches);
                back.text = format!("{held}, {switches} switches while static; {}", back.text);
                Ok(back)
            },
        )?;
        demo.mark("secondary gateway alive again");
        demo.lab.gateway_alive(Uplink::Secondary)?;
        demo.d.wait_for(
            cancel,
            "everything healthy again",
            Duration::from_secs(20),
            settled,
        )?;
        let s = demo.d.status()?;
        console.say(&format!("all healthy again: {}", summary(&s)));
        drop(live);
        console.clear_live();
        Ok(())
    })();
    console.clear_live();
    if let Err(e) = &outcome {
        eprintln!("uplink-lab: demo stopped: {e}");
    }
    print_timeline(&demo);
    print_results(&demo.results);
    let log = demo.d.log.clone();
    let log_copy = std::env::temp_dir().join("uplink-lab-demo-uplinkd.log");
    let results = std::mem::take(&mut demo.results);
    demo.d.stop();
    let _ = std::fs::copy(&log, &log_copy);
    println!();
    println!(
        "daemon log kept in {} (the lab is removed now)",
        log_copy.display()
    );
    lab.destroy()?;
    let duration = t_start.elapsed();
    println!(
        "done in {:.0} s{}; nothing left behind",
        duration.as_secs_f64(),
        if build_time > Duration::from_secs(5) {
            format!(
                " (plus {:.0} s to check and build uplinkd)",
                build_time.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    outcome.map(|()| DemoReport {
        namespaces,
        first_decision_ms,
        steps: results,
        duration_s: duration.as_secs_f64(),
    })
}

/// One line for an event of the daemon.
fn describe(e: &Value) -> Option<String> {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
    let reasons = |v: &Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let k = r["kind"].as_str().unwrap_or("?");
                        match r["family"].as_str() {
                            Some(f) => format!("{k} {f}"),
                            None => k.to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    Some(match e["kind"].as_str()? {
        "active_changed" => format!(
            "SWITCH {}: {} -> {} (reason: {})",
            s("family"),
            s("from"),
            s("to"),
            s("reason")
        ),
        "uplink_health" => format!("{} {} is {}{}", s("uplink"), s("family"), s("state"), {
            let r = reasons(&e["reasons"]);
            if r.is_empty() {
                String::new()
            } else {
                format!(" ({r})")
            }
        }),
        "carrier" => format!(
            "{} carrier {} (seen by {})",
            s("uplink"),
            if e["up"] == true { "up" } else { "DOWN" },
            s("source")
        ),
        "gateway" => format!(
            "{} gateway {} {} ({})",
            s("uplink"),
            s("address"),
            if e["reachable"] == true {
                "answers"
            } else {
                "DEAD"
            },
            s("evidence")
        ),
        "transit" => format!(
            "{} transit {} {} {}",
            s("uplink"),
            s("transit"),
            s("target"),
            if e["reachable"] == true {
                "reachable"
            } else {
                "unreachable"
            }
        ),
        "fail_static" => format!(
            "{} {} ({})",
            s("family"),
            if e["active"] == true {
                "FAIL STATIC: no healthy uplink, routes kept"
            } else {
                "out of fail static"
            },
            s("evidence")
        ),
        "damped" => format!(
            "{} damped for {} ms after {} flaps",
            s("uplink"),
            e["hold_ms"],
            e["flaps"]
        ),
        "drained" => format!("{} drained={}", s("uplink"), e["drained"]),
        "adopted" => match e["uplink"].as_str() {
            Some(u) => format!("{} adopted the existing default route via {u}", s("family")),
            None => format!("{}: no default route to adopt", s("family")),
        },
        "route_restored" => format!(
            "{} route restored via {} (found {})",
            s("family"),
            s("uplink"),
            s("found")
        ),
        other => format!("{other} {e}"),
    })
}

fn print_timeline(demo: &Demo) {
    let t0 = demo.t0;
    let mut lines: Vec<(SystemTime, String)> = demo
        .marks
        .iter()
        .map(|m| (m.time, format!(">> {}", m.text)))
        .collect();
    // Transit events: one line per run of same-uplink, same-verdict events.
    let mut pending: Option<(SystemTime, String, bool, Vec<String>)> = None;
    let flush = |p: &mut Option<(SystemTime, String, bool, Vec<String>)>,
                 lines: &mut Vec<(SystemTime, String)>| {
        if let Some((t, up, ok, list)) = p.take() {
            lines.push((
                t,
                format!(
                    "   {up}: transit {} {}",
                    list.join(" "),
                    if ok { "reachable" } else { "unreachable" }
                ),
            ));
        }
    };
    for e in demo.d.events() {
        if e.kind() == "transit" {
            let up = e.record["uplink"].as_str().unwrap_or("?").to_string();
            let ok = e.record["reachable"] == true;
            let name = e.record["target"].as_str().unwrap_or("?").to_string();
            match &mut pending {
                Some((_, u, o, list)) if *u == up && *o == ok => list.push(name),
                _ => {
                    flush(&mut pending, &mut lines);
                    pending = Some((e.time, up, ok, vec![name]));
                }
            }
            continue;
        }
        flush(&mut pending, &mut lines);
        if let Some(text) = describe(&e.record) {
            lines.push((e.time, format!("   {text}")));
        }
    }
    flush(&mut pending, &mut lines);
    lines.sort_by_key(|l| l.0);
    println!();
    println!("Timeline (seconds since uplinkd started; >> = what the demo did, the rest = uplinkd's events):");
    for (t, text) in lines {
        println!("  {:>9.3}  {}", secs_between(t0, t), text);
    }
}

fn print_results(results: &[DemoStep]) {
    if results.is_empty() {
        return;
    }
    println!();
    println!("Outage per step (longest run of lost datagrams of a 10,000/s stream; network gaps, sender stalls from CPU contention excluded), and the TCP connections opened before the first failure (longest delivery stall, or STOPPED):");
    println!(
        "  {:<52} {:>9} {:>9} {:>11} {:>11}  what uplinkd did",
        "step", "IPv4", "IPv6", "TCP v4", "TCP v6"
    );
    let tcp_cell = |r: &DemoStep, f: Family| match r.tcp.iter().find(|t| t.family == f) {
        Some(t) if t.delivering => human_ms(t.stall_ms),
        Some(_) => "STOPPED".into(),
        None => "-".into(),
    };
    let cell = |o: Option<&StepOutage>| match o {
        Some(o) if (o.raw_ms - o.outage_ms).abs() > 0.05 => {
            format!("{}*", human_ms(o.outage_ms))
        }
        Some(o) => human_ms(o.outage_ms),
        None => "-".into(),
    };
    fn of(r: &DemoStep, f: Family) -> Option<&StepOutage> {
        r.outages.iter().find(|o| o.family == f)
    }
    for r in results {
        println!(
            "  {:<52} {:>9} {:>9} {:>11} {:>11}  {}{}",
            r.title,
            cell(of(r, Family::V4)),
            cell(of(r, Family::V6)),
            tcp_cell(r, Family::V4),
            tcp_cell(r, Family::V6),
            r.text,
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" [{}]", r.note)
            }
        );
    }
    if results.iter().any(|r| {
        r.outages
            .iter()
            .any(|o| (o.raw_ms - o.outage_ms).abs() > 0.05)
    }) {
        println!("  * the stream's sender was also descheduled for longer than that (CPU contention on this machine, not the network); `uplink-lab bench` reports both");
    }
}
