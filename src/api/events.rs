//! The fan-out of published changes: to the event stream's subscribers (a
//! bounded broadcast plus a short replay buffer), the metrics and the hooks.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::broadcast;
use tracing::warn;

use super::server::write_line;
use super::wire::encode;
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::proto::{Ack, Missed, MissedKind};
use crate::status::EventRecord;

/// Recent events kept for `events` with `since`.
const RECENT: usize = 256;

/// Where published changes go: the event stream (a bounded broadcast plus
/// a short replay buffer), the metrics and the hooks. Cheap to clone; the
/// clones are one fan-out (the loop publishes, the socket subscribes).
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<EventRecord>,
    recent: Arc<Mutex<VecDeque<EventRecord>>>,
    /// Shared by every clone: the hooks replaced by a reload are dropped
    /// everywhere at once, which closes their queue and ends their task.
    outputs: Arc<Mutex<Outputs>>,
}

/// Where a change goes besides the event stream.
struct Outputs {
    metrics: Option<Arc<Metrics>>,
    hooks: Hooks,
}

impl Events {
    /// `capacity`: how far a subscriber may fall behind before it is dropped.
    pub fn new(capacity: usize) -> Events {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Events {
            tx,
            recent: Default::default(),
            outputs: Arc::new(Mutex::new(Outputs {
                metrics: None,
                hooks: Hooks::none(),
            })),
        }
    }

    /// Also count every change in `metrics` and hand it to `hooks`, in
    /// this fan-out and every clone of it: the outputs they replace are
    /// dropped (old hooks finish the changes already queued, then their
    /// task ends).
    pub fn with_outputs(self, metrics: Arc<Metrics>, hooks: Hooks) -> Events {
        let old = {
            let mut o = self.outputs.lock().unwrap();
            o.metrics = Some(metrics);
            std::mem::replace(&mut o.hooks, hooks)
        };
        drop(old);
        self
    }

    /// Publish one change: never blocks (subscribers that cannot keep up
    /// lag and are dropped; hooks are queued).
    pub fn publish(&self, r: EventRecord) {
        {
            let o = self.outputs.lock().unwrap();
            if let Some(m) = &o.metrics {
                m.on_change(&r);
            }
            o.hooks.notify(&r);
        }
        let mut recent = self.recent.lock().unwrap();
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(r.clone());
        // Under the lock, so a subscriber's replay and live stream neither
        // overlap nor leave a gap.
        let _ = self.tx.send(r);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }

    /// Subscribe, and return the recent events after `since` (all that
    /// are still kept), the sequence number of the last published event,
    /// and whether events after `since` were already forgotten.
    fn subscribe_since(
        &self,
        since: Option<u64>,
    ) -> (
        broadcast::Receiver<EventRecord>,
        Vec<EventRecord>,
        u64,
        bool,
    ) {
        let recent = self.recent.lock().unwrap();
        let rx = self.tx.subscribe();
        let last = recent.back().map_or(0, |r| r.seq);
        let Some(since) = since else {
            return (rx, Vec::new(), last, false);
        };
        let replay: Vec<EventRecord> = recent.iter().filter(|r| r.seq > since).cloned().collect();
        let first_kept = recent.front().map_or(last + 1, |r| r.seq);
        let forgotten = since + 1 < first_kept && since < last;
        (rx, replay, last, forgotten)
    }
}

/// Stream events to a subscriber until it closes, falls behind or stops reading.
pub(super) async fn stream(
    mut rd: BufReader<OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    events: &Events,
    metrics: &Metrics,
    since: Option<u64>,
) -> io::Result<()> {
    let (mut rx, replay, last, forgotten) = events.subscribe_since(since);
    let ack = Ack {
        ok: true,
        request: "events".into(),
        uplink: None,
        drained: None,
        last_seq: Some(last),
    };
    write_line(&mut wr, &encode(&ack)).await?;
    let mut delivered = since.map_or(last, |s| s.min(last));
    if forgotten {
        let first = replay.first().map_or(last + 1, |r| r.seq);
        return missed(&mut wr, metrics, delivered + 1, first - 1).await;
    }
    for r in replay {
        delivered = r.seq;
        event(&mut wr, metrics, &r).await?;
    }
    // Whatever the subscriber sends from now on is discarded; its EOF ends
    // the subscription at once (not at the next event, which may be hours
    // away while the connection holds one of the MAX_SUBSCRIBERS places).
    let mut junk = [0u8; 512];
    loop {
        let next = tokio::select! {
            r = rx.recv() => r,
            n = rd.read(&mut junk) => match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        match next {
            Ok(r) => {
                delivered = r.seq;
                event(&mut wr, metrics, &r).await?;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return missed(&mut wr, metrics, delivered + 1, delivered + n).await;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn event(wr: &mut OwnedWriteHalf, metrics: &Metrics, r: &EventRecord) -> io::Result<()> {
    let mut s = serde_json::to_string(r).unwrap_or_default();
    s.push('\n');
    let res = write_line(wr, &s).await;
    if res.is_err() {
        metrics.subscriber_dropped("slow");
        warn!(seq = r.seq, "event subscriber does not read: dropped");
    }
    res
}

async fn missed(
    wr: &mut OwnedWriteHalf,
    metrics: &Metrics,
    first: u64,
    last: u64,
) -> io::Result<()> {
    metrics.subscriber_dropped("lagged");
    let n = last + 1 - first.min(last + 1);
    warn!(
        missed = n,
        first_seq = first,
        last_seq = last,
        "event subscriber fell behind: dropped"
    );
    let notice = Missed {
        kind: MissedKind::Missed,
        error: format!(
            "fell behind: missed {n} events (seq {first}..={last}); reconnect and read the status"
        ),
        missed: n,
        first_seq: first,
        last_seq: last,
    };
    let _ = write_line(wr, &encode(&notice)).await;
    Ok(())
}
