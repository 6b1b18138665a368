//! "Another interface on the host changing state": a veth pair in two
//! namespaces of its own, one end toggled down/up every period.
//!
//! Both ends get the same ifindex, so the kernel's linkwatch treats them like
//! a physical NIC (non-urgent events, batched at most once per second,
//! globally): exactly the background that delays every other non-urgent link
//! event on the host (see DESIGN.md, "Carrier loss and the kernel's
//! linkwatch"). Note that this affects the whole host, including labs of
//! other tests running at the same time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{cmd, netns, LabError};

/// Name of the toggled device (both ends).
pub const NOISE_DEV: &str = "nz0";
/// Both ends' ifindex (the same, see the module docs).
const NOISE_IFINDEX: u32 = 2;

/// Toggles the noise link until dropped; dropping stops the thread and
/// deletes the two namespaces.
pub struct NoiseGuard {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    namespaces: [String; 2],
    toggles: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl NoiseGuard {
    /// Creates namespaces `a` and `b` (already added by the caller), the
    /// same-ifindex veth between them, and starts toggling `a`'s end.
    pub(crate) fn start(a: String, b: String, period: Duration) -> Result<NoiseGuard, LabError> {
        if period < Duration::from_millis(1) {
            return Err(LabError::Invalid(format!(
                "noise period {period:?} is below 1 ms"
            )));
        }
        cmd::ip_batch(
            &a,
            &[
                format!(
                    "link add {NOISE_DEV} index {NOISE_IFINDEX} type veth peer name {NOISE_DEV} index {NOISE_IFINDEX} netns {b}"
                ),
                format!("link set {NOISE_DEV} up"),
            ],
        )?;
        cmd::ip_batch(&b, &[format!("link set {NOISE_DEV} up")])?;
        let (tx, rx) = mpsc::channel::<()>();
        let toggles = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let a = a.clone();
            let toggles = toggles.clone();
            let errors = errors.clone();
            std::thread::Builder::new()
                .name("lab-noise".into())
                .spawn(move || {
                    let start = Instant::now();
                    let mut k: u32 = 1;
                    loop {
                        let due = start + period * k;
                        let wait = due.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(wait) {
                            Err(mpsc::RecvTimeoutError::Timeout) => {}
                            // Stop requested or the guard is gone.
                            _ => return,
                        }
                        let state = if k % 2 == 1 { "down" } else { "up" };
                        match cmd::ip_batch(&a, &[format!("link set {NOISE_DEV} {state}")]) {
                            Ok(()) => {
                                toggles.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // Namespace gone (lab dropped first) or worse:
                                // record and stop; never spin on errors.
                                if let Ok(mut v) = errors.lock() {
                                    v.push(e.to_string());
                                }
                                return;
                            }
                        }
                        k += 1;
                        // Skip periods we overslept so toggles stay on the
                        // grid instead of bursting.
                        let now = Instant::now();
                        while start + period * k < now {
                            k += 2; // keep the up/down parity
                        }
                    }
                })
                .map_err(|source| LabError::Io {
                    what: "spawn noise thread".into(),
                    source,
                })?
        };
        Ok(NoiseGuard {
            stop: Some(tx),
            thread: Some(thread),
            namespaces: [a, b],
            toggles,
            errors,
        })
    }

    /// How many times the link was toggled so far.
    pub fn toggles(&self) -> u64 {
        self.toggles.load(Ordering::Relaxed)
    }

    /// The two noise namespaces (the toggled end is in the first).
    pub fn namespaces(&self) -> &[String; 2] {
        &self.namespaces
    }

    /// Errors that stopped the toggling, if any.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for NoiseGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for ns in &self.namespaces {
            if let Err(e) = netns::delete(ns) {
                eprintln!("uplink-lab: cleanup: delete noise namespace {ns}: {e}");
            }
        }
    }
}
