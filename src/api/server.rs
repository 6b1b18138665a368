//! The socket server: binds the socket, accepts connections (within the
//! budgets of [`super::places`]), reads their requests and answers each
//! from the loop.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::events::{self, Events};
use super::places::{Place, Places, ADMIT_WAIT, MAX_CLIENTS, MAX_SUBSCRIBERS};
use super::wire::{encode, parse_request};
use super::ApiRequest;
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::proto::{Ack, ErrorReply, MetricsText, Request, Response};

/// Longest request line accepted (bytes, without the newline).
pub const MAX_REQUEST: usize = 4096;
/// Kernel send buffer of each connection: bounds what a client that does
/// not read can hold (the kernel doubles it for its bookkeeping, socket(7)).
const CLIENT_SNDBUF: usize = 64 * 1024;
/// A connection with no complete request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client must take each response (or event) within this, or is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for the loop's answer.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);
/// An oversized line is skipped up to its newline, but no further than this.
const MAX_DISCARD: usize = 1 << 20;

/// Handle that stops serving and removes the socket file when dropped
/// (only while it is the file this server bound).
pub struct Server {
    path: std::path::PathBuf,
    /// The bound socket file's device and inode: another process may have
    /// replaced the file since, and its socket is not ours to remove.
    file_id: (u64, u64),
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
        if file_id(&self.path).is_some_and(|id| id == self.file_id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What every connection shares.
struct Shared {
    loop_tx: mpsc::Sender<ApiRequest>,
    events: Events,
    metrics: Arc<Metrics>,
    /// Uplink names, by id.
    uplinks: Arc<std::sync::RwLock<Vec<String>>>,
    /// The request and subscriber places.
    places: Arc<Places>,
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

fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Bind the socket (replacing a stale one: a socket file nobody accepts
/// on) with mode 0660 and the configured group, and serve it on the
/// current runtime. The process should hold the socket's
/// [`claim`](super::claim_socket) first.
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
    if super::claim::socket_answers(&path) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "a process accepts connections on it: another uplinkd?",
        ));
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
    let file_id = file_id(&path).ok_or_else(|| io::Error::other("bound, but gone at once"))?;
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
        places: Places::new(),
    });
    let uplinks = shared.uplinks.clone();
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
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(CLIENT_SNDBUF);
            if let Some(place) = shared.places.admit() {
                tokio::spawn(serve_client(stream, uid, place, shared.clone()));
                continue;
            }
            // Every request place is taken: a connection that sends its
            // request promptly gets one (see `places`), a silent one not.
            let Some(waiting) = shared.places.wait(uid == Some(0)) else {
                refuse(&stream, &shared.metrics);
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let spoke = tokio::time::timeout(ADMIT_WAIT, sent_something(&stream)).await;
                drop(waiting);
                match spoke
                    .unwrap_or(false)
                    .then(|| shared.places.admit_over_budget(uid == Some(0)))
                    .flatten()
                {
                    Some(place) => serve_client(stream, uid, place, shared).await,
                    None => refuse(&stream, &shared.metrics),
                }
            });
        }
    });
    Ok(Server {
        path,
        file_id,
        task,
        uplinks,
    })
}

/// Serve one connection in its place to its end.
async fn serve_client(stream: UnixStream, uid: Option<u32>, place: Place, shared: Arc<Shared>) {
    shared.metrics.api_clients().inc();
    if let Err(e) = client(stream, uid, place, &shared).await {
        debug!(error = %e, "status client ended");
    }
    shared.metrics.api_clients().dec();
}

/// Tell a connection there is no place for it (it is closed when dropped).
fn refuse(stream: &UnixStream, metrics: &Metrics) {
    metrics.api_refused("too_many_clients");
    warn!("status socket: all {MAX_CLIENTS} request places taken; refusing a connection");
    let msg = encode(&error(format!(
        "too many clients ({MAX_CLIENTS} connected); try again later"
    )));
    // Non-blocking: a fresh socket's buffer is empty.
    let _ = stream.try_write(msg.as_bytes());
}

/// Whether the peer sent something (not merely hung up), waiting for it.
async fn sent_something(stream: &UnixStream) -> bool {
    loop {
        if stream.readable().await.is_err() {
            return false;
        }
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut b = [0u8; 1];
            nix::sys::socket::recv(
                stream.as_raw_fd(),
                &mut b,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)
        });
        match peeked {
            Ok(n) => return n > 0,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
}

/// A failed request's answer.
fn error(msg: String) -> Response {
    Response::Error(ErrorReply {
        error: msg,
        refused: false,
    })
}

/// A done control's answer.
fn ack(request: &str, uplink: Option<&str>, drained: Option<bool>) -> Response {
    Response::Ack(Ack {
        ok: true,
        request: request.into(),
        uplink: uplink.map(String::from),
        drained,
        last_seq: None,
    })
}

async fn send(wr: &mut OwnedWriteHalf, r: &Response) -> io::Result<()> {
    write_line(wr, &encode(r)).await
}

/// Write one line, or fail when the client does not take it in time.
pub(super) async fn write_line(wr: &mut OwnedWriteHalf, s: &str) -> io::Result<()> {
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

async fn client(
    stream: UnixStream,
    uid: Option<u32>,
    mut place: Place,
    sh: &Shared,
) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(MAX_REQUEST + 1, rd);
    loop {
        place.idle();
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut rd)) => Some(r),
            () = place.evicted() => None,
        };
        // Taken away while idle, also if a request arrived just then.
        let Some(read) = read.filter(|_| place.busy()) else {
            sh.metrics.api_refused("idle_evicted");
            debug!(
                uid,
                "status socket: closing the longest idle connection to make room"
            );
            let msg = format!(
                "closed: all {MAX_CLIENTS} request places are taken and this connection was the longest idle; reconnect to send a request"
            );
            let _ = send(&mut wr, &error(msg)).await;
            return Ok(());
        };
        let line = match read {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                let msg = format!("request longer than {MAX_REQUEST} bytes and {MAX_DISCARD} bytes without a newline: closing");
                let _ = send(&mut wr, &error(msg)).await;
                return Ok(());
            }
            Ok(r) => r?,
        };
        let req = match line {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                sh.metrics.api_refused("too_long");
                let msg = format!("request longer than {MAX_REQUEST} bytes: ignored");
                send(&mut wr, &error(msg)).await?;
                continue;
            }
            Line::Request(bytes) => match parse_request(&bytes) {
                Ok(r) => r,
                Err(msg) => {
                    sh.metrics.api_refused("bad_request");
                    send(&mut wr, &error(msg)).await?;
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
            let refused = Response::Error(ErrorReply {
                error: msg,
                refused: true,
            });
            send(&mut wr, &refused).await?;
            continue;
        }
        let answer = match req {
            Request::Events { since } if place.subscribe() => {
                return events::stream(rd, wr, &sh.events, &sh.metrics, since).await
            }
            Request::Events { .. } => {
                sh.metrics.api_refused("too_many_subscribers");
                warn!(
                    uid,
                    "status socket: {MAX_SUBSCRIBERS} event subscribers already; refusing one"
                );
                error(format!(
                    "too many event subscribers ({MAX_SUBSCRIBERS}); try again later"
                ))
            }
            Request::Status => {
                let (tx, rx) = oneshot::channel();
                match ask(sh, ApiRequest::Status(tx), rx).await {
                    Ok(s) => Response::Status(Box::new(s)),
                    Err(e) => error(e),
                }
            }
            Request::Metrics => Response::Metrics(MetricsText {
                metrics: metrics::scrape(&sh.loop_tx, &sh.metrics).await,
            }),
            Request::Drain { ref uplink } | Request::Undrain { ref uplink } => {
                let drained = matches!(req, Request::Drain { .. });
                let names = sh.uplinks.read().unwrap().clone();
                match names.iter().position(|u| u == uplink) {
                    None => {
                        let shown: String = uplink.chars().take(64).collect();
                        error(format!(
                            "{}: no uplink named {shown:?} (uplinks: {})",
                            req.name(),
                            names.join(", ")
                        ))
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
                                ack(req.name(), Some(uplink), Some(drained))
                            }
                            Ok(Err(e)) | Err(e) => error(format!("{}: {e}", req.name())),
                        }
                    }
                }
            }
            Request::Reprobe => {
                let (tx, rx) = oneshot::channel();
                match ask(sh, ApiRequest::Reprobe(tx), rx).await {
                    Ok(Ok(())) => {
                        info!(uid, "operator reprobe");
                        ack("reprobe", None, None)
                    }
                    Ok(Err(e)) | Err(e) => error(format!("reprobe: {e}")),
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
