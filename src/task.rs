//! Small helpers for the daemon's tokio tasks.

/// Aborts the task when dropped, so a background task (a netlink connection,
/// a poller, an actuator) never outlives the owner that spawned it: when the
/// daemon's loop returns, or the task that holds it ends, its helpers stop too.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
