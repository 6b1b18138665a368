//! The socket's wire types: one JSON request line, then one JSON answer
//! line (or, for `events`, an answer and then one event per line). The
//! daemon's server encodes and the client (`uplinkctl`, the lab, the tests)
//! decodes these same types, so the two sides cannot drift apart. Serde
//! only: the socket itself belongs to the daemon package.
//!
//! The JSON is the API: keep it stable, fields are only ever added.

use serde::{Deserialize, Serialize};

use crate::status::{EventRecord, Status};

/// One request: `{"request": NAME, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// The [`Status`] snapshot.
    Status,
    /// Subscribe to the event stream: an [`Ack`] carrying `last_seq`, then
    /// one [`StreamLine`] per line until the connection closes.
    Events {
        /// Replay the recent events after this sequence number first; none
        /// are replayed without it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// The Prometheus text exposition, as a [`MetricsText`].
    Metrics,
    /// Take the named uplink out of use until undrained (root only).
    Drain { uplink: String },
    /// Put the named uplink back in use (root only).
    Undrain { uplink: String },
    /// Probe every gateway and transit target now (root only).
    Reprobe,
}

impl Request {
    /// The request names the socket understands, for error messages.
    pub const NAMES: &'static [&'static str] =
        &["status", "events", "metrics", "drain", "undrain", "reprobe"];

    /// Operator controls change what the agent does: root only.
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            Request::Drain { .. } | Request::Undrain { .. } | Request::Reprobe
        )
    }

    /// Its `request` field.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Events { .. } => "events",
            Request::Metrics => "metrics",
            Request::Drain { .. } => "drain",
            Request::Undrain { .. } => "undrain",
            Request::Reprobe => "reprobe",
        }
    }
}

/// Every answer line the server sends to a request. Untagged: each shape
/// is told apart by its fields (`error`, `ok`, `metrics`, or a status).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    Error(ErrorReply),
    Ack(Ack),
    Metrics(MetricsText),
    Status(Box<Status>),
}

/// A request that failed: `{"error": "..."}`; the connection carries on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, naming the request and the cause.
    pub error: String,
    /// Set when an operator control was refused for lack of privilege, so
    /// a client can tell "not allowed" from "went wrong".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

/// A control that was done, or a subscription that started:
/// `{"ok": true, "request": NAME, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Always true: marks the line as an acknowledgement.
    pub ok: bool,
    /// The request acknowledged.
    pub request: String,
    /// `drain` / `undrain`: the uplink named in the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// `drain` / `undrain`: whether the uplink is drained now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
    /// `events`: the sequence number of the last event published before the
    /// subscription (0 if none), so a subscriber knows where it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

/// The answer to `metrics`: `{"metrics": "<Prometheus text exposition>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsText {
    pub metrics: String,
}

/// One line of the event stream, after its [`Ack`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StreamLine {
    Event(EventRecord),
    /// The last line: the subscriber fell behind and is disconnected.
    Missed(Missed),
}

/// Sent to a subscriber that fell behind, just before it is disconnected:
/// which events it missed, so it knows to read the status again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    /// Always [`MissedKind::Missed`]: where an event has its change's kind,
    /// so a reader that only looks at `kind` sees the notice too.
    pub kind: MissedKind,
    /// The notice in words, like every other error.
    pub error: String,
    /// How many events were missed.
    pub missed: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The `kind` of a [`Missed`] notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedKind {
    Missed,
}
