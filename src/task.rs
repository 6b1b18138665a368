//! Tasks that live exactly as long as their owner.

/// A spawned task aborted when this is dropped: a task serving a loop ends
/// with the loop (on shutdown, or when `run` returns an error), never
/// outlives it.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
