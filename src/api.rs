//! The local Unix socket: one JSON request and one JSON response per line.
//!
//! Requests (`{"request": NAME, ...}`):
//! - `status`: the [`Status`] snapshot (the object itself, as `uplinkctl status --json` prints it);
//! - `events` (optional `"since": SEQ`): `{"ok":true,"request":"events","last_seq":N}`, then
//!   one [`EventRecord`] per line until the connection closes (with `since`, the
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

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::UplinkId;
use crate::hooks::Hooks;
use crate::metrics::{self, Metrics};
use crate::status::{EventRecord, Status};

/// Longest request line accepted (bytes, without the newline).
pub const MAX_REQUEST: usize = 4096;
/// Most clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 64;
/// Kernel send buffer of each connection: bounds what a client that does
/// not read can hold (the kernel doubles it for its bookkeeping, socket(7)).
const CLIENT_SNDBUF: usize = 64 * 1024;
/// How far (in events) a subscriber may fall behind before it is dropped.
pub const EVENT_BACKLOG: usize = 256;
/// Recent events kept for `events` with `since`.
const RECENT: usize = 256;
/// A connection with no complete request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client must take each response (or event) within this, or is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for the loop's answer.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);
/// An oversized line is skipped up to its newline, but no further than this.
const MAX_DISCARD: usize = 1 << 20;

/// The requests the socket understands, for error messages.
pub const REQUESTS: &[&str] = &["status", "events", "metrics", "drain", "undrain", "reprobe"];

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

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Events { since: Option<u64> },
    Metrics,
    Drain { uplink: String },
    Undrain { uplink: String },
    Reprobe,
}

impl Request {
    /// Operator controls change what the agent does: root only.
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            Request::Drain { .. } | Request::Undrain { .. } | Request::Reprobe
        )
    }
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

/// Parse one request line (without its newline); the error names the problem.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "request is not UTF-8 text (invalid byte at offset {}): send one JSON object per line, e.g. {{\"request\":\"status\"}}",
            e.valid_up_to()
        )
    })?;
    let text = text.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!(
            "request contains the control character U+{:04X} (binary data?): send one JSON object per line",
            c as u32
        ));
    }
    if text.is_empty() {
        return Err(format!(
            "empty request: send one JSON object per line, e.g. {{\"request\":\"status\"}} (requests: {})",
            REQUESTS.join(", ")
        ));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err(format!(
            "a request must be a JSON object like {{\"request\":\"status\"}}, not {}",
            json_type(&v)
        ));
    };
    let name = match obj.remove("request") {
        None => {
            return Err(format!(
                "missing \"request\" field; expected one of: {}",
                REQUESTS.join(", ")
            ))
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(format!(
                "\"request\" must be a string, not {}",
                json_type(&other)
            ))
        }
    };
    let take_uplink = |obj: &mut serde_json::Map<String, Value>| match obj.remove("uplink") {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "{name}: \"uplink\" must be a string (an uplink name), not {}",
            json_type(&other)
        )),
        None => Err(format!(
            "{name}: missing \"uplink\" (the name of the uplink)"
        )),
    };
    let req = match name.as_str() {
        "status" => Request::Status,
        "metrics" => Request::Metrics,
        "reprobe" => Request::Reprobe,
        "drain" => Request::Drain {
            uplink: take_uplink(&mut obj)?,
        },
        "undrain" => Request::Undrain {
            uplink: take_uplink(&mut obj)?,
        },
        "events" => Request::Events {
            since: match obj.remove("since") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    format!("events: \"since\" must be a sequence number (>= 0), not {v}")
                })?),
            },
        },
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(format!(
                "unknown request {shown:?}; expected one of: {}",
                REQUESTS.join(", ")
            ));
        }
    };
    if let Some(k) = obj.keys().next() {
        let shown: String = k.chars().take(64).collect();
        return Err(format!("{name}: unexpected field {shown:?}"));
    }
    Ok(req)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where published changes go: the event stream (a bounded broadcast plus
/// a short replay buffer), the metrics and the hooks. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<EventRecord>,
    recent: Arc<Mutex<VecDeque<EventRecord>>>,
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
            metrics: None,
            hooks: Hooks::none(),
        }
    }

    /// Also count every change in `metrics` and hand it to `hooks`.
    pub fn with_outputs(mut self, metrics: Arc<Metrics>, hooks: Hooks) -> Events {
        self.metrics = Some(metrics);
        self.hooks = hooks;
        self
    }

    /// Publish one change: never blocks (subscribers that cannot keep up
    /// lag and are dropped; hooks are queued).
    pub fn publish(&self, r: EventRecord) {
        if let Some(m) = &self.metrics {
            m.on_change(&r);
        }
        self.hooks.notify(&r);
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

/// Handle that stops serving and removes the socket file when dropped.
pub struct Server {
    path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
    uplinks: Arc<std::sync::RwLock<Vec<String>>>,
}

impl Server {
    /// The uplink names by id after a reconfiguration (controls name uplinks).
    pub fn set_uplinks(&self, names: Vec<String>) {
        *self.uplinks.write().unwrap() = names;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What every connection shares.
struct Shared {
    loop_tx: mpsc::Sender<ApiRequest>,
    events: Events,
    metrics: Arc<Metrics>,
    /// Uplink names, by id.
    uplinks: Arc<std::sync::RwLock<Vec<String>>>,
}

fn group_gid(name: &str) -> io::Result<nix::unistd::Gid> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("socket_group {name:?} does not exist"),
        )),
        Err(e) => Err(io::Error::other(format!(
            "socket_group {name:?}: cannot look it up: {e}"
        ))),
    }
}

/// Bind the socket (replacing a stale one) with mode 0660 and the
/// configured group, and serve it on the current runtime.
pub async fn serve(
    cfg: &Config,
    loop_tx: mpsc::Sender<ApiRequest>,
    events: Events,
    metrics: Arc<Metrics>,
) -> io::Result<Server> {
    let path = cfg.agent.socket.clone();
    let gid = cfg
        .agent
        .socket_group
        .as_deref()
        .map(group_gid)
        .transpose()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Created owner-only; opened to the group once it has the right group.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    nix::sys::stat::umask(old);
    let listener = bound?;
    // Skipped when the socket already has the group (the packaged unit runs
    // with Group=uplinkd and a seccomp filter that denies chown).
    if let Some(gid) = gid.filter(|g| *g != nix::unistd::getegid()) {
        nix::unistd::chown(&path, None, Some(gid)).map_err(io::Error::from)?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    let shared = Arc::new(Shared {
        loop_tx,
        events,
        metrics,
        uplinks: Arc::new(std::sync::RwLock::new(
            cfg.uplinks.iter().map(|u| u.name.clone()).collect(),
        )),
    });
    let uplinks = shared.uplinks.clone();
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "status socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = clients.clone().try_acquire_owned() else {
                shared.metrics.api_refused("too_many_clients");
                warn!("status socket: {MAX_CLIENTS} clients already connected; refusing one");
                let msg = format!(
                    "{}\n",
                    json!({"error": format!("too many clients ({MAX_CLIENTS} connected); try again later")})
                );
                // Non-blocking: a fresh socket's buffer is empty.
                let _ = stream.try_write(msg.as_bytes());
                continue;
            };
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(CLIENT_SNDBUF);
            let shared = shared.clone();
            tokio::spawn(async move {
                shared.metrics.api_clients().inc();
                if let Err(e) = client(stream, &shared).await {
                    debug!(error = %e, "status client ended");
                }
                shared.metrics.api_clients().dec();
                drop(permit);
            });
        }
    });
    Ok(Server {
        path,
        task,
        uplinks,
    })
}

async fn send(wr: &mut OwnedWriteHalf, v: &Value) -> io::Result<()> {
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    write_line(wr, &s).await
}

async fn write_line(wr: &mut OwnedWriteHalf, s: &str) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(s.as_bytes()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))?
}

/// One line read from a client.
enum Line {
    Eof,
    Request(Vec<u8>),
    TooLong,
}

/// Read one line of at most MAX_REQUEST bytes; a longer one is skipped to
/// its newline (up to MAX_DISCARD bytes) and reported as `TooLong`.
async fn read_request<R: AsyncRead + Unpin>(rd: &mut BufReader<R>) -> io::Result<Line> {
    let mut buf = Vec::new();
    let n = (&mut *rd)
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Request(buf));
    }
    if n <= MAX_REQUEST {
        // EOF without a newline: take what was sent as the last request.
        return Ok(Line::Request(buf));
    }
    let mut skipped = n;
    loop {
        buf.clear();
        let n = (&mut *rd)
            .take(64 * 1024)
            .read_until(b'\n', &mut buf)
            .await?;
        skipped += n;
        if n == 0 || buf.last() == Some(&b'\n') {
            return Ok(Line::TooLong);
        }
        if skipped > MAX_DISCARD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request line without end",
            ));
        }
    }
}

async fn client(stream: UnixStream, sh: &Shared) -> io::Result<()> {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(MAX_REQUEST + 1, rd);
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut rd)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                let msg = format!("request longer than {MAX_REQUEST} bytes and {MAX_DISCARD} bytes without a newline: closing");
                let _ = send(&mut wr, &json!({ "error": msg })).await;
                return Ok(());
            }
            Ok(r) => r?,
        };
        let req = match line {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                sh.metrics.api_refused("too_long");
                let msg = format!("request longer than {MAX_REQUEST} bytes: ignored");
                send(&mut wr, &json!({ "error": msg })).await?;
                continue;
            }
            Line::Request(bytes) => match parse_request(&bytes) {
                Ok(r) => r,
                Err(msg) => {
                    sh.metrics.api_refused("bad_request");
                    send(&mut wr, &json!({ "error": msg })).await?;
                    continue;
                }
            },
        };
        if req.is_control() && uid != Some(0) {
            sh.metrics.api_refused("not_root");
            let who = uid.map_or("could not be identified".to_string(), |u| {
                format!("is uid {u}")
            });
            let msg = format!(
                "{} refused: operator controls require root (uid 0); the peer {who} (SO_PEERCRED). status, events and metrics are open to the socket's group",
                req.name()
            );
            warn!(request = req.name(), uid, "status socket: control refused");
            send(&mut wr, &json!({ "error": msg, "refused": true })).await?;
            continue;
        }
        let answer = match req {
            Request::Events { since } => return subscribe(rd, wr, sh, since).await,
            Request::Status => {
                let (tx, rx) = oneshot::channel();
                match ask(sh, ApiRequest::Status(tx), rx).await {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err(e) => json!({ "error": e }),
                }
            }
            Request::Metrics => {
                json!({ "metrics": metrics::scrape(&sh.loop_tx, &sh.metrics).await })
            }
            Request::Drain { ref uplink } | Request::Undrain { ref uplink } => {
                let drained = matches!(req, Request::Drain { .. });
                let names = sh.uplinks.read().unwrap().clone();
                match names.iter().position(|u| u == uplink) {
                    None => {
                        let shown: String = uplink.chars().take(64).collect();
                        json!({ "error": format!(
                            "{}: no uplink named {shown:?} (uplinks: {})",
                            req.name(), names.join(", ")
                        ) })
                    }
                    Some(id) => {
                        let (tx, rx) = oneshot::channel();
                        let r = ApiRequest::Drain {
                            uplink: id,
                            name: uplink.clone(),
                            drained,
                            reply: tx,
                        };
                        match ask(sh, r, rx).await {
                            Ok(Ok(())) => {
                                info!(uplink = %uplink, drained, uid, "operator {}", req.name());
                                json!({ "ok": true, "request": req.name(), "uplink": uplink, "drained": drained })
                            }
                            Ok(Err(e)) | Err(e) => {
                                json!({ "error": format!("{}: {e}", req.name()) })
                            }
                        }
                    }
                }
            }
            Request::Reprobe => {
                let (tx, rx) = oneshot::channel();
                match ask(sh, ApiRequest::Reprobe(tx), rx).await {
                    Ok(Ok(())) => {
                        info!(uid, "operator reprobe");
                        json!({ "ok": true, "request": "reprobe" })
                    }
                    Ok(Err(e)) | Err(e) => json!({ "error": format!("reprobe: {e}") }),
                }
            }
        };
        send(&mut wr, &answer).await?;
    }
}

/// Send a request to the loop and wait (bounded) for its answer.
async fn ask<T>(sh: &Shared, req: ApiRequest, rx: oneshot::Receiver<T>) -> Result<T, String> {
    let sent = tokio::time::timeout(LOOP_TIMEOUT, sh.loop_tx.send(req)).await;
    if !matches!(sent, Ok(Ok(()))) {
        return Err("the agent is busy or stopping; try again".into());
    }
    match tokio::time::timeout(LOOP_TIMEOUT, rx).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err("the agent did not answer in time".into()),
    }
}

/// Stream events to a subscriber until it closes, falls behind or stops reading.
async fn subscribe(
    mut rd: BufReader<OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    sh: &Shared,
    since: Option<u64>,
) -> io::Result<()> {
    let (mut rx, replay, last, forgotten) = sh.events.subscribe_since(since);
    send(
        &mut wr,
        &json!({ "ok": true, "request": "events", "last_seq": last }),
    )
    .await?;
    let mut delivered = since.map_or(last, |s| s.min(last));
    if forgotten {
        let first = replay.first().map_or(last + 1, |r| r.seq);
        return missed(&mut wr, sh, delivered + 1, first - 1).await;
    }
    for r in replay {
        delivered = r.seq;
        event(&mut wr, sh, &r).await?;
    }
    // Whatever the subscriber sends from now on is discarded; its EOF ends
    // the subscription at once (not at the next event, which may be hours
    // away while the connection holds one of the MAX_CLIENTS places).
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
                event(&mut wr, sh, &r).await?;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return missed(&mut wr, sh, delivered + 1, delivered + n).await;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn event(wr: &mut OwnedWriteHalf, sh: &Shared, r: &EventRecord) -> io::Result<()> {
    let mut s = serde_json::to_string(r).unwrap_or_default();
    s.push('\n');
    let res = write_line(wr, &s).await;
    if res.is_err() {
        sh.metrics.subscriber_dropped("slow");
        warn!(seq = r.seq, "event subscriber does not read: dropped");
    }
    res
}

async fn missed(wr: &mut OwnedWriteHalf, sh: &Shared, first: u64, last: u64) -> io::Result<()> {
    sh.metrics.subscriber_dropped("lagged");
    let n = last + 1 - first.min(last + 1);
    warn!(
        missed = n,
        first_seq = first,
        last_seq = last,
        "event subscriber fell behind: dropped"
    );
    let msg = json!({
        "kind": "missed",
        "error": format!("fell behind: missed {n} events (seq {first}..={last}); reconnect and read the status"),
        "missed": n,
        "first_seq": first,
        "last_seq": last,
    });
    let _ = send(wr, &msg).await;
    Ok(())
}
