//! Ctrl-C / SIGTERM / SIGHUP handling for lab binaries, so a lab is always
//! torn down.
//!
//! [`Termination::block`] blocks the signals in the calling thread; call it
//! first thing in `main`, before any thread exists, so every thread inherits
//! the mask and no thread is killed by the default action. The signals then
//! stay pending until [`Termination::wait`] / [`Termination::poll`] takes
//! them, and the caller drops its `Lab` normally. (Children started with
//! `std::process::Command` get an empty mask again: std resets it before
//! `exec`.)

use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use crate::LabError;

pub struct Termination {
    set: SigSet,
}

impl Termination {
    /// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in
    /// every thread it starts afterwards).
    pub fn block() -> Result<Termination, LabError> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(
            |e| LabError::Io {
                what: "block SIGINT/SIGTERM/SIGHUP".into(),
                source: e.into(),
            },
        )?;
        Ok(Termination { set })
    }

    /// Waits for one of the signals.
    pub fn wait(&self) -> Signal {
        loop {
            if let Ok(sig) = self.set.wait() {
                return sig;
            }
        }
    }

    /// Waits at most `timeout` for one of the signals.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Signal> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: valid set and timespec; no siginfo requested.
        let rc = unsafe { libc::sigtimedwait(self.set.as_ref(), std::ptr::null_mut(), &ts) };
        if rc > 0 {
            Signal::try_from(rc).ok()
        } else {
            None
        }
    }

    /// A pending signal, if any, without waiting.
    pub fn poll(&self) -> Option<Signal> {
        self.wait_timeout(Duration::ZERO)
    }
}
