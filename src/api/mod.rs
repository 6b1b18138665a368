//! The local Unix socket: one JSON request and one JSON response per line.
//!
//! Requests ([`Request`](crate::proto::Request), `{"request": NAME, ...}`):
//! - `status`: the [`Status`] snapshot (the object itself, as `uplinkctl status --json` prints it);
//! - `events` (optional `"since": SEQ`): `{"ok":true,"request":"events","last_seq":N}`, then
//!   one [`EventRecord`](crate::status::EventRecord) per line until the connection closes (with `since`, the
//!   recent events after SEQ are replayed first). A subscriber that falls more than
//!   [`EVENT_BACKLOG`] events behind gets `{"kind":"missed",...}` naming the
//!   sequence numbers it missed and is disconnected;
//! - `metrics`: `{"metrics": "<Prometheus text exposition>"}`;
//! - `drain` / `undrain` with `"uplink": NAME`, and `reprobe`: operator
//!   controls, only for uid 0 (checked with SO_PEERCRED): `{"ok":true,...}`.
//!
//! Anything else gets `{"error": "..."}` naming the problem, and the
//! connection carries on. Requests reach the daemon's loop through a bounded
//! channel and are answered from it, so the socket never blocks a decision;
//! every client has bounded buffers and timeouts, and a slow client only
//! slows itself.
//!
//! Budgets (the `places` module): [`MAX_CLIENTS`] request places (a
//! connection holds one from its accept until it subscribes or closes; it
//! is closed after 60 s without a request) and, apart from them,
//! [`MAX_SUBSCRIBERS`] subscriber places (beyond, `events` is answered with
//! `too many event subscribers` and the connection carries on). With every
//! request place taken, a new connection that sends its request within
//! [`ADMIT_WAIT`] takes the place of the connection idle the longest, which
//! is told `... was the longest idle` and closed; with none idle, root gets
//! one of [`ROOT_RESERVE`] extra places, and anyone else (and any
//! connection silent that long) is told `too many clients` and closed. At
//! most [`MAX_WAITING`] connections of other users than root wait at once.
//! So a `status` from root is never refused, and subscribers that never
//! read or idle connections never keep a request out.
//!
//! The wire types are [`crate::proto`]'s, shared with [`crate::client`].
//! The room: `wire` reads a request line and encodes an answer line,
//! `server` accepts connections and answers them, `events` fans published
//! changes out to the subscribers, the metrics and the hooks.

mod claim;
mod events;
mod places;
mod server;
mod wire;

use tokio::sync::{mpsc, oneshot};

use crate::core::UplinkId;
use crate::metrics::StatusSource;
use crate::status::Status;

pub use claim::{claim_socket, hold_if_idle, lock_path, Claim, ClaimError};
pub use events::Events;
pub use places::{ADMIT_WAIT, MAX_CLIENTS, MAX_SUBSCRIBERS, MAX_WAITING, ROOT_RESERVE};
pub use server::{serve, Server, MAX_REQUEST};
pub use wire::parse_request;

/// How far (in events) a subscriber may fall behind before it is dropped.
pub const EVENT_BACKLOG: usize = 256;

/// What a connection asks the loop.
pub enum ApiRequest {
    Status(oneshot::Sender<Status>),
    Drain {
        uplink: UplinkId,
        /// Its name: a reload may have moved the uplink to another id
        /// since `uplink` was looked up.
        name: String,
        drained: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Reprobe(oneshot::Sender<Result<(), String>>),
}

/// A metrics scrape takes its status snapshot from the loop like a
/// `status` request, but never waits for room in the loop's queue: a busy
/// loop means the gauges stay as they were.
impl StatusSource for mpsc::Sender<ApiRequest> {
    async fn snapshot(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.try_send(ApiRequest::Status(tx)).ok()?;
        rx.await.ok()
    }
}
