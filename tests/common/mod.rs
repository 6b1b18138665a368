//! Shared harness for the end-to-end tests: the real `uplinkd` binary in the
//! lab's server namespace, its status read over its socket.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use uplink_lab::{Lab, LabChild, LabSpec, Uplink};
use uplinkd::client::{Client, ClientError, Subscription};
use uplinkd::config::Family;
use uplinkd::status::Status;

pub const BIN: &str = env!("CARGO_BIN_EXE_uplinkd");

pub fn lab() -> Lab {
    Lab::build(&LabSpec::default()).expect("build lab")
}

pub struct Agent {
    pub child: Option<LabChild>,
    pub socket: PathBuf,
    pub log: PathBuf,
    ns: String,
    config: PathBuf,
    /// Extra environment for the daemon (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
}

impl Agent {
    /// Start the daemon with the lab config plus `overrides` (TOML).
    pub fn start(lab: &Lab, overrides: &str) -> Agent {
        Self::start_with_env(lab, overrides, &[])
    }

    /// [`Agent::start`] with extra environment variables for the daemon.
    pub fn start_with_env(lab: &Lab, overrides: &str, env: &[(&str, &str)]) -> Agent {
        let config = lab.write_config(overrides).expect("write config");
        let text = std::fs::read_to_string(&config).unwrap();
        let cfg = uplinkd::config::parse(&text, "lab").expect("lab config is valid");
        let mut a = Agent {
            child: None,
            socket: cfg.agent.socket.clone(),
            log: lab.dir().join("uplinkd.log"),
            ns: lab.server_ns(),
            config,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        a.spawn(lab);
        a
    }

    pub fn spawn(&mut self, lab: &Lab) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = lab
            .command(&self.ns, &[BIN, "--config", self.config.to_str().unwrap()])
            .unwrap();
        cmd.env("UPLINKD_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("start uplinkd");
        self.child = Some(LabChild::new(child, "uplinkd"));
        // Wait for the socket to answer.
        self.wait_for("status socket", Duration::from_secs(10), |_| true);
    }

    /// The configuration file the daemon was started with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// A client of the daemon's socket.
    pub fn client(&self) -> Client {
        Client::new(&self.socket).with_timeout(Duration::from_secs(5))
    }

    pub fn status(&self) -> Result<Status, String> {
        self.client().status().map_err(|e| e.to_string())
    }

    /// Poll the status until `pred` holds; panic with the last status after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        let mut last = Err("no answer yet".to_string());
        while Instant::now() < deadline {
            if let Some(c) = &self.child {
                // Fail fast when the daemon died (a zombie counts: /proc/PID
                // stays until it is reaped, so ask waitpid, without reaping).
                if let Some(how) = exited(c.pid()) {
                    panic!(
                        "uplinkd exited ({how}) while waiting for {what}:\n{}",
                        self.log_text()
                    );
                }
            }
            last = self.status();
            if let Ok(s) = &last {
                if pred(s) {
                    return s.clone();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}; last status: {last:#?}\nlog:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every event record the daemon logged, parsed from its log.
    pub fn logged_events(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| l.split("event=").nth(1))
            .filter_map(|j| serde_json::from_str(j.trim()).ok())
            .collect()
    }

    /// The active_changed events for `family`, as (from, to, reason).
    pub fn switches(&self, family: Family) -> Vec<(Option<String>, Option<String>, String)> {
        self.logged_events()
            .into_iter()
            .filter(|e| e["kind"] == "active_changed" && e["family"] == family.name())
            .map(|e| {
                (
                    e["from"].as_str().map(String::from),
                    e["to"].as_str().map(String::from),
                    e["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- uplinkd log ----\n{}", self.log_text());
        }
        if let Some(c) = self.child.take() {
            // SIGTERM must end the daemon cleanly (status 0) in every test:
            // a crash or a failed shutdown is a failure of the test, not
            // something to hide. `terminate` reaps it.
            let st = c.terminate(Duration::from_secs(10));
            if !std::thread::panicking() {
                match st {
                    Ok(st) if st.success() => {}
                    other => panic!(
                        "uplinkd did not exit cleanly on SIGTERM: {other:?}\nlog:\n{}",
                        self.log_text()
                    ),
                }
            }
        }
    }
}

/// How `pid` (our child) ended, if it has; it stays unreaped (WNOWAIT) for
/// its owner's `wait`.
pub fn exited(pid: u32) -> Option<String> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), flags) {
        Ok(WaitStatus::StillAlive) => None,
        Ok(WaitStatus::Exited(_, code)) => Some(format!("exit status {code}")),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(format!("killed by {sig}")),
        Ok(other) => Some(format!("{other:?}")),
        // ECHILD: already reaped, so gone.
        Err(e) => Some(format!("waitid: {e}")),
    }
}

pub fn active(s: &Status, f: Family) -> Option<&str> {
    match f {
        Family::V4 => s.active.ipv4.as_deref(),
        Family::V6 => s.active.ipv6.as_deref(),
    }
}

/// The kernel's default route in the server namespace goes via `uplink`'s gateway.
pub fn route_via(lab: &Lab, f: Family, uplink: Uplink) -> bool {
    lab.default_route(f)
        .ok()
        .flatten()
        .is_some_and(|(gw, dev)| gw == uplink.gateway(f) && dev == uplink.interface())
}

pub fn wait_route(lab: &Lab, agent: &Agent, f: Family, uplink: Uplink, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if route_via(lab, f, uplink) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{f} default route not via {} after {timeout:?}: {:?}\nlog:\n{}",
        uplink.name(),
        lab.default_routes(f),
        agent.log_text()
    );
}

/// Settled on the primary for both families.
pub fn settled(lab: &Lab, overrides: &str) -> Agent {
    let a = Agent::start(lab, overrides);
    a.wait_for("first decision on primary", Duration::from_secs(10), |s| {
        s.decided
            && s.active.ipv4.as_deref() == Some("primary")
            && s.active.ipv6.as_deref() == Some("primary")
    });
    for f in Family::ALL {
        wait_route(lab, &a, f, Uplink::Primary, Duration::from_secs(5));
    }
    a
}

// ---------------------------------------------------------------------------
// The socket API and uplinkctl (tests/e2e_api.rs).
// ---------------------------------------------------------------------------

pub const CTL: &str = env!("CARGO_BIN_EXE_uplinkctl");

impl Agent {
    /// Run `uplinkctl --socket <socket> args...` (as root, in the test's namespace:
    /// a Unix socket path works across network namespaces).
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(CTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run uplinkctl")
    }

    /// Subscribe to the event stream; returns once the daemon acknowledged
    /// the subscription.
    pub fn subscribe(&self) -> EventStream {
        let reader = self.client().events(None).expect("events ack");
        EventStream {
            last_seq: reader.last_seq(),
            reader,
        }
    }
}

/// One event subscription, read line by line.
pub struct EventStream {
    pub reader: Subscription,
    /// `last_seq` of the subscription's acknowledgement.
    pub last_seq: u64,
}

impl EventStream {
    /// The next line as JSON, or None at EOF / after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        self.reader
            .set_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        match self.reader.next_line() {
            Ok(Some(line)) => Some(serde_json::to_value(line).unwrap()),
            Err(e @ ClientError::Decode { .. }) => panic!("{e}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// Read events until `pred` matches one; every event read is returned
    /// (the match last). Panics after `timeout`.
    pub fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(ev) => {
                    let hit = pred(&ev);
                    seen.push(ev);
                    if hit {
                        return seen;
                    }
                }
                None => break,
            }
        }
        panic!("no event {what} within {timeout:?}; saw {seen:#?}");
    }
}
