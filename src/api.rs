//! The local Unix socket: one JSON request and one JSON response per line.
//! Requests are answered by the daemon's loop through a channel, so the
//! socket never blocks a decision and a slow client only slows itself.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

use crate::config::AgentConfig;
use crate::core::UplinkId;
use crate::status::{EventRecord, Status};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 4096;
/// Most clients served at once.
pub const MAX_CLIENTS: usize = 64;
/// A client must send its request (and read the answer) within this.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a connection asks the loop.
pub enum ApiRequest {
    Status(oneshot::Sender<Status>),
    Drain {
        uplink: UplinkId,
        drained: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Reprobe(oneshot::Sender<Result<(), String>>),
}

/// A request line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Events,
}

/// Published events: a bounded broadcast; a subscriber that falls behind
/// is told how many it missed and dropped.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<EventRecord>,
    recent: Arc<Mutex<std::collections::VecDeque<EventRecord>>>,
}

impl Events {
    pub fn new(capacity: usize) -> Events {
        let (tx, _) = broadcast::channel(capacity);
        Events {
            tx,
            recent: Default::default(),
        }
    }
    pub fn publish(&self, r: EventRecord) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() >= 256 {
            recent.pop_front();
        }
        recent.push_back(r.clone());
        let _ = self.tx.send(r);
    }
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }
}

/// Handle that removes the socket file when dropped.
pub struct Server {
    path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind the socket (replacing a stale one) and serve it on the current runtime.
pub async fn serve(
    agent: &AgentConfig,
    loop_tx: mpsc::Sender<ApiRequest>,
    events: Events,
) -> io::Result<Server> {
    let path = agent.socket.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = clients.clone().try_acquire_owned() else {
                warn!("status socket: too many clients, refusing one");
                continue;
            };
            let loop_tx = loop_tx.clone();
            let events = events.clone();
            tokio::spawn(async move {
                if let Err(e) = client(stream, loop_tx, events).await {
                    debug!(error = %e, "status client ended");
                }
                drop(permit);
            });
        }
    });
    Ok(Server { path, task })
}

async fn client(
    stream: UnixStream,
    loop_tx: mpsc::Sender<ApiRequest>,
    events: Events,
) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        let limited = (&mut rd).take(MAX_REQUEST as u64 + 1);
        let n = match tokio::time::timeout(CLIENT_TIMEOUT * 60, read_line(limited, &mut line)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if n > MAX_REQUEST && !line.ends_with('\n') {
            let s = format!("{}\n", serde_json::json!({"error": format!("request longer than {MAX_REQUEST} bytes")}));
            let _ = wr.write_all(s.as_bytes()).await;
            return Ok(());
        }
        let answer = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
            Ok(Request::Status) => {
                let (tx, rx) = oneshot::channel();
                if loop_tx.send(ApiRequest::Status(tx)).await.is_err() {
                    return Ok(());
                }
                match rx.await {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err(_) => return Ok(()),
                }
            }
            Ok(Request::Events) => {
                let mut sub = events.subscribe();
                loop {
                    match sub.recv().await {
                        Ok(r) => {
                            let mut s = serde_json::to_string(&r).unwrap_or_default();
                            s.push('\n');
                            tokio::time::timeout(CLIENT_TIMEOUT, wr.write_all(s.as_bytes()))
                                .await
                                .map_err(|_| io::Error::other("subscriber too slow"))??;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let s = format!("{}\n", serde_json::json!({"error": "missed events", "missed": n}));
                            let _ = wr.write_all(s.as_bytes()).await;
                            return Ok(());
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
        };
        let mut s = serde_json::to_string(&answer).unwrap_or_default();
        s.push('\n');
        tokio::time::timeout(CLIENT_TIMEOUT, wr.write_all(s.as_bytes()))
            .await
            .map_err(|_| io::Error::other("client too slow"))??;
    }
}

/// Read one line; bytes that are not UTF-8 are replaced, not fatal.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(mut r: R, line: &mut String) -> io::Result<usize> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf).await?;
    line.push_str(&String::from_utf8_lossy(&buf));
    Ok(n)
}
