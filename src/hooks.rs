//! Hooks: operator commands run on state changes.
//!
//! The loop only hands each published change to a bounded queue
//! ([`Hooks::notify`] never blocks); a separate task starts the matching
//! commands, each in its own task with its own timeout, so a hanging or
//! failing hook never delays a failover or the next hook. A hook still
//! running at its timeout is killed with its whole process group (a shell's
//! children too) and reaped. The task ends once every [`Hooks`] handle is
//! dropped (a reload that changes the hooks replaces the handle) and its
//! last run has ended, so reloads leave no task behind.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use crate::config::HooksConfig;
use crate::metrics::Metrics;
use crate::status::EventRecord;

/// Changes waiting for the hooks task. The task only spawns processes, so
/// it keeps up with any realistic rate of changes; a burst beyond this is
/// dropped and logged rather than allowed to grow memory.
pub const QUEUE: usize = 256;
/// Most hooks running at once; a run beyond this is skipped and logged.
pub const MAX_RUNNING: usize = 32;
/// Bytes of a hook's stderr kept for the log.
const STDERR_KEEP: usize = 2048;
/// The shell that runs each command line.
const SHELL: &str = "/bin/sh";

/// Event kinds that count as health changes (`hooks.on_health_change`).
pub const HEALTH_KINDS: &[&str] = &[
    "uplink_health",
    "carrier",
    "gateway",
    "transit",
    "fail_static",
    "damped",
];

#[derive(Debug, Clone)]
struct Hook {
    /// `on_active_change[0]`: names the hook in logs and metrics.
    name: String,
    command: String,
    /// Event kinds it runs on.
    kinds: &'static [&'static str],
}

/// Handle the event fan-out uses; cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    tx: Option<mpsc::Sender<Arc<EventRecord>>>,
    metrics: Option<Arc<Metrics>>,
}

impl Hooks {
    /// No hooks: `notify` does nothing.
    pub fn none() -> Hooks {
        Hooks {
            tx: None,
            metrics: None,
        }
    }

    /// Start the hooks task on the current runtime (nothing when no hook
    /// is configured).
    pub fn start(cfg: &HooksConfig, metrics: Arc<Metrics>) -> Hooks {
        let mut hooks = Vec::new();
        for (i, c) in cfg.on_active_change.iter().enumerate() {
            hooks.push(Hook {
                name: format!("on_active_change[{i}]"),
                command: c.clone(),
                kinds: &["active_changed"],
            });
        }
        for (i, c) in cfg.on_health_change.iter().enumerate() {
            hooks.push(Hook {
                name: format!("on_health_change[{i}]"),
                command: c.clone(),
                kinds: HEALTH_KINDS,
            });
        }
        if hooks.is_empty() {
            return Hooks::none();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        info!(commands = %commands(&hooks), "hooks task started");
        tokio::spawn(dispatch(hooks, cfg.timeout, rx, metrics.clone()));
        Hooks {
            tx: Some(tx),
            metrics: Some(metrics),
        }
    }

    /// Queue a published change for the hooks; never blocks.
    pub fn notify(&self, r: &EventRecord) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(Arc::new(r.clone())) {
            warn!(seq = r.seq, error = %e, "hooks queue full: hooks skipped for this change");
            if let Some(m) = &self.metrics {
                m.hook_result("queue", "skipped");
            }
        }
    }
}

async fn dispatch(
    hooks: Vec<Hook>,
    timeout: Duration,
    mut rx: mpsc::Receiver<Arc<EventRecord>>,
    metrics: Arc<Metrics>,
) {
    let running = Arc::new(Semaphore::new(MAX_RUNNING));
    while let Some(rec) = rx.recv().await {
        let kind = rec.change.kind();
        for h in hooks.iter().filter(|h| h.kinds.contains(&kind)) {
            let Ok(permit) = running.clone().try_acquire_owned() else {
                warn!(hook = %h.name, seq = rec.seq, "{MAX_RUNNING} hooks still running: this run skipped");
                metrics.hook_result(&h.name, "skipped");
                continue;
            };
            let (h, rec, metrics) = (h.clone(), rec.clone(), metrics.clone());
            tokio::spawn(async move {
                metrics.hooks_running().inc();
                let result = run(&h, &rec, timeout).await;
                metrics.hooks_running().dec();
                metrics.hook_result(&h.name, result);
                drop(permit);
            });
        }
    }
    // Every handle is gone (a reload replaced these hooks, or the agent is
    // stopping): wait for the runs still going, each bounded by its timeout.
    let _ = running.acquire_many(MAX_RUNNING as u32).await;
    info!(commands = %commands(&hooks), "hooks task ended");
}

/// The hooks' names and commands, for the task's log lines.
fn commands(hooks: &[Hook]) -> String {
    hooks
        .iter()
        .map(|h| format!("{}: {}", h.name, h.command))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The change as environment variables: `UPLINKD_<FIELD>` for each field of
/// the record (strings as they are, null as "", numbers and booleans as
/// text, lists and objects as compact JSON).
pub fn env_of(rec: &EventRecord) -> Vec<(String, String)> {
    let v = serde_json::to_value(rec).unwrap_or_default();
    let mut out = Vec::new();
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            out.push((format!("UPLINKD_{}", k.to_ascii_uppercase()), text));
        }
    }
    out
}

/// Run one hook to its end or its timeout; returns the result label.
async fn run(h: &Hook, rec: &EventRecord, timeout: Duration) -> &'static str {
    let mut cmd = tokio::process::Command::new(SHELL);
    cmd.arg("-c")
        .arg(&h.command)
        .envs(env_of(rec))
        .env("UPLINKD_HOOK", &h.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the shell's children too.
        .process_group(0)
        .kill_on_drop(true);
    let t0 = Instant::now();
    // fork/exec runs on a blocking-pool thread: the daemon's runtime has a
    // single thread, which the loop needs.
    let spawned = tokio::task::spawn_blocking(move || cmd.spawn()).await;
    let mut child = match spawned {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            warn!(hook = %h.name, command = %h.command, seq = rec.seq, error = %e, "hook could not be started");
            return "error";
        }
        Err(e) => {
            warn!(hook = %h.name, seq = rec.seq, error = %e, "hook could not be started");
            return "error";
        }
    };
    let pid = child.id();
    let mut json = serde_json::to_string(rec).unwrap_or_default();
    json.push('\n');
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    let work = async {
        if let Some(mut stdin) = stdin {
            // A hook that does not read its stdin (or exits first) is fine.
            let _ = stdin.write_all(json.as_bytes()).await;
        }
        let mut kept = Vec::new();
        if let Some(mut e) = stderr {
            let _ = (&mut e)
                .take(STDERR_KEEP as u64)
                .read_to_end(&mut kept)
                .await;
            // Drain (and drop) the rest so the hook never blocks on its stderr.
            let _ = tokio::io::copy(&mut e, &mut tokio::io::sink()).await;
        }
        let status = child.wait().await;
        (status, kept)
    };
    let outcome = tokio::time::timeout(timeout, work).await;
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    match outcome {
        Ok((Ok(st), err)) if st.success() => {
            info!(hook = %h.name, seq = rec.seq, elapsed_ms, "hook done");
            let _ = err;
            "ok"
        }
        Ok((Ok(st), err)) => {
            warn!(
                hook = %h.name, command = %h.command, seq = rec.seq, elapsed_ms, status = %st,
                stderr = %String::from_utf8_lossy(&err).trim(),
                "hook failed"
            );
            "failed"
        }
        Ok((Err(e), _)) => {
            warn!(hook = %h.name, seq = rec.seq, error = %e, "hook: wait failed");
            "error"
        }
        Err(_) => {
            // The work future (and with it the child handle) was dropped:
            // kill the whole group, then reap what is left.
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.start_kill();
            let reaped = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            warn!(
                hook = %h.name, command = %h.command, seq = rec.seq, pid,
                timeout_ms = timeout.as_millis() as u64, reaped = reaped.is_ok(),
                "hook still running at its timeout: killed"
            );
            "timeout"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Change, Reason, UplinkState};

    /// One change of every kind.
    fn every_change() -> Vec<Change> {
        let s = String::new;
        let ip = "198.18.1.1".parse().unwrap();
        vec![
            Change::ActiveChanged {
                family: s(),
                from: None,
                to: None,
                reason: s(),
            },
            Change::UplinkHealth {
                uplink: s(),
                family: s(),
                state: UplinkState::Healthy,
                reasons: vec![Reason::Carrier],
                evidence: s(),
            },
            Change::Carrier {
                uplink: s(),
                up: true,
                source: s(),
            },
            Change::Gateway {
                uplink: s(),
                family: s(),
                address: ip,
                reachable: true,
                evidence: s(),
            },
            Change::Transit {
                uplink: s(),
                transit: s(),
                target: ip,
                reachable: true,
                evidence: s(),
            },
            Change::FailStatic {
                family: s(),
                active: true,
                evidence: s(),
            },
            Change::Damped {
                uplink: s(),
                hold_ms: 1,
                flaps: 1,
            },
            Change::Drained {
                uplink: s(),
                drained: true,
            },
            Change::RouteRestored {
                family: s(),
                uplink: s(),
                found: s(),
            },
            Change::Adopted {
                family: s(),
                uplink: None,
            },
            Change::Bond {
                bond: s(),
                from: None,
                to: None,
                by: s(),
                cause: s(),
                warnings: Vec::new(),
            },
        ]
    }

    /// Hooks and metrics select and count by `Change::kind`: it must be the
    /// `kind` on the wire, and every health kind a hook runs on must exist.
    #[test]
    fn change_kinds_are_the_wire_kinds() {
        let kinds: Vec<&str> = every_change().iter().map(Change::kind).collect();
        for c in every_change() {
            let wire = serde_json::to_value(&c).unwrap();
            assert_eq!(wire["kind"], c.kind(), "{c:?}");
        }
        for k in HEALTH_KINDS {
            assert!(kinds.contains(k), "{k} is no change kind");
        }
    }
}
