//! Re-checks of failed route changes: timed work of the loop.
//!
//! A failed route change (or a failed read of the kernel's route) is not
//! retried by waiting inside the actuation queue, which runs work in order:
//! every later change, of either family, would wait behind that sleep. The
//! loop keeps the re-check's deadline here instead, wakes for it like for
//! any other timer, and then reads the kernel's route again (the core puts
//! its route back if it is still not there). A newer change or read of the
//! same family supersedes a pending re-check, and so does it for a failure
//! reported by a change that is no longer the latest.

use std::time::Duration;

use crate::config::Family;
use crate::core::Now;

/// After a failed route change, check again this long after, so a
/// persistent error does not spin.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which change is the latest per family, and when to re-check a failed one.
#[derive(Debug, Default)]
pub(super) struct Retries {
    /// Per family (`Family::index`): the ticket of the latest route change
    /// or read queued; a failure reported with an older ticket is stale.
    latest: [u64; 2],
    /// Per family: when to read the kernel's route again after a failure;
    /// `None` when the latest change or read has not failed.
    due: [Option<Now>; 2],
}

impl Retries {
    /// A route change or read of `family` is queued: it supersedes any
    /// pending re-check. Its ticket is to be given back with its failure.
    pub fn queued(&mut self, family: Family) -> u64 {
        let i = family.index();
        self.latest[i] += 1;
        self.due[i] = None;
        self.latest[i]
    }

    /// The change or read with `ticket` failed at `now`: re-check
    /// [`RETRY_AFTER`] later, unless something newer was queued since.
    pub fn failed(&mut self, family: Family, ticket: u64, now: Now) {
        let i = family.index();
        if ticket == self.latest[i] {
            self.due[i] = Some(now + RETRY_AFTER);
        }
    }

    /// The earliest pending re-check.
    pub fn next(&self) -> Option<Now> {
        self.due.iter().flatten().min().copied()
    }

    /// The families whose re-check is due at `now` (each then no longer
    /// pending).
    pub fn take_due(&mut self, now: Now) -> impl Iterator<Item = Family> + use<> {
        let mut v = [None; 2];
        for f in Family::ALL {
            let d = &mut self.due[f.index()];
            if d.is_some_and(|d| d <= now) {
                *d = None;
                v[f.index()] = Some(f);
            }
        }
        v.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_failed_change_is_checked_again_later_unless_superseded() {
        let mut r = Retries::default();
        let v4 = r.queued(Family::V4);
        let v6 = r.queued(Family::V6);
        r.failed(Family::V4, v4, S(10));
        assert_eq!(r.next(), Some(S(10) + RETRY_AFTER));
        assert_eq!(r.take_due(S(10)).count(), 0, "not due yet");
        assert_eq!(
            r.take_due(S(11)).collect::<Vec<_>>(),
            vec![Family::V4],
            "due"
        );
        assert_eq!(r.next(), None, "taken once");

        // The other family's change neither waits for nor cancels it.
        let v4 = r.queued(Family::V4);
        r.failed(Family::V4, v4, S(20));
        let _ = v6;
        let v6 = r.queued(Family::V6);
        assert_eq!(r.next(), Some(S(21)));
        r.failed(Family::V6, v6, S(20) + MS(500));
        assert_eq!(r.next(), Some(S(21)));

        // A newer change of the same family supersedes the pending re-check.
        let _newer = r.queued(Family::V4);
        assert_eq!(r.next(), Some(S(21) + MS(500)), "only IPv6 left");
        assert_eq!(r.take_due(S(22)).collect::<Vec<_>>(), vec![Family::V6]);

        // A failure of a change already superseded is stale.
        let old = r.queued(Family::V4);
        let _newer = r.queued(Family::V4);
        r.failed(Family::V4, old, S(30));
        assert_eq!(r.next(), None);
    }
}
