//! The one client of the daemon's socket: `uplinkctl`, the lab and the
//! tests all talk to uplinkd through [`Client`]. Blocking (std's
//! `UnixStream`, no runtime needed), one connection per request, a timeout
//! on every read and write. It speaks the wire types of [`crate::proto`],
//! which the server encodes, so the two sides cannot drift apart.
//!
//! ```no_run
//! let client = uplinkd::client::Client::new("/run/uplinkd/uplinkd.sock");
//! let status = client.status()?;
//! println!("ipv4 on {:?}", status.active.ipv4);
//! for line in client.events(None)? {
//!     println!("{:?}", line?);
//! }
//! # Ok::<(), uplinkd::client::ClientError>(())
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::proto::{Ack, ErrorReply, MetricsText, Missed, Request, StreamLine};
use crate::status::{EventRecord, Status};

/// How long a request waits for its answer unless told otherwise: the
/// daemon answers from its loop, which is never busy for long, but a
/// metrics scrape waits up to 2 s for a status snapshot.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to the daemon; every message names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to uplinkd at {}: {cause}", socket.display())]
    Connect { socket: PathBuf, cause: io::Error },
    #[error("{what} uplinkd at {}: {cause}", socket.display())]
    Io {
        socket: PathBuf,
        /// "send the request to", "read the answer from", ...
        what: &'static str,
        cause: io::Error,
    },
    #[error("uplinkd at {} did not answer within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("uplinkd at {} closed the connection without answering", socket.display())]
    Closed { socket: PathBuf },
    /// The daemon's own answer to a request it did not carry out.
    #[error("uplinkd at {}: {message}", socket.display())]
    Daemon {
        socket: PathBuf,
        message: String,
        /// An operator control refused for lack of privilege (not root).
        refused: bool,
    },
    #[error("uplinkd at {} sent {expected} that cannot be read: {detail}", socket.display())]
    Decode {
        socket: PathBuf,
        /// What the answer should have been ("a status", "an event", ...).
        expected: &'static str,
        detail: String,
    },
}

impl ClientError {
    /// The answer did not come within the timeout (the daemon may be busy,
    /// or an event stream was quiet): worth trying again.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A client of one daemon's socket. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// Bounds every connect-to-answer exchange (not the wait between
    /// events on a subscription), so a stuck daemon never hangs the caller.
    timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Wait at most `timeout` for each answer (instead of [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The status snapshot.
    pub fn status(&self) -> Result<Status> {
        self.call(&Request::Status, "a status")
    }

    /// The status exactly as the daemon sent it, for printing it as JSON
    /// (fields this client does not know yet included).
    pub fn status_json(&self) -> Result<Value> {
        self.exchange(&Request::Status).map(|(_, v)| v)
    }

    /// The Prometheus text exposition.
    pub fn metrics(&self) -> Result<String> {
        let m: MetricsText = self.call(&Request::Metrics, "metrics")?;
        Ok(m.metrics)
    }

    /// Take the uplink out of use until undrained (root only).
    pub fn drain(&self, uplink: &str) -> Result<()> {
        let req = Request::Drain {
            uplink: uplink.into(),
        };
        self.call::<Ack>(&req, "an acknowledgement").map(drop)
    }

    /// Put the uplink back in use (root only).
    pub fn undrain(&self, uplink: &str) -> Result<()> {
        let req = Request::Undrain {
            uplink: uplink.into(),
        };
        self.call::<Ack>(&req, "an acknowledgement").map(drop)
    }

    /// Probe every gateway and transit target now (root only).
    pub fn reprobe(&self) -> Result<()> {
        self.call::<Ack>(&Request::Reprobe, "an acknowledgement")
            .map(drop)
    }

    /// Subscribe to the event stream, first replaying the recent events
    /// after `since` if given. Returns once the daemon acknowledged; the
    /// subscription then waits for events without a timeout (they may be
    /// hours apart) unless [`Subscription::set_timeout`] says otherwise.
    pub fn events(&self, since: Option<u64>) -> Result<Subscription> {
        let (reader, v) = self.exchange(&Request::Events { since })?;
        let ack: Ack = self.decode(v, "an acknowledgement")?;
        let last_seq = ack.last_seq.ok_or_else(|| ClientError::Decode {
            socket: self.socket.clone(),
            expected: "an acknowledgement",
            detail: "no last_seq".into(),
        })?;
        let sub = Subscription {
            reader,
            line: Vec::new(),
            socket: self.socket.clone(),
            last_seq,
        };
        sub.set_timeout(None)?;
        Ok(sub)
    }

    /// One request, its answer decoded as `T` (a daemon's error answer is
    /// [`ClientError::Daemon`]).
    fn call<T: DeserializeOwned>(&self, req: &Request, expected: &'static str) -> Result<T> {
        let (_, v) = self.exchange(req)?;
        self.decode(v, expected)
    }

    fn decode<T: DeserializeOwned>(&self, v: Value, expected: &'static str) -> Result<T> {
        serde_json::from_value(v).map_err(|e| ClientError::Decode {
            socket: self.socket.clone(),
            expected,
            detail: e.to_string(),
        })
    }

    /// Connect, send `req`, read one answer line; an error answer becomes
    /// [`ClientError::Daemon`]. Returns the connection too (a subscription
    /// goes on reading it).
    fn exchange(&self, req: &Request) -> Result<(BufReader<UnixStream>, Value)> {
        let socket = || self.socket.clone();
        let io = |what, cause: io::Error| match cause.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                socket: socket(),
                timeout: self.timeout,
            },
            _ => ClientError::Io {
                socket: socket(),
                what,
                cause,
            },
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|cause| ClientError::Connect {
            socket: socket(),
            cause,
        })?;
        s.set_read_timeout(Some(self.timeout))
            .and_then(|()| s.set_write_timeout(Some(self.timeout)))
            .map_err(|e| io("set timeouts on", e))?;
        let mut line = serde_json::to_string(req).expect("a request always serializes");
        line.push('\n');
        s.write_all(line.as_bytes())
            .map_err(|e| io("send the request to", e))?;
        let mut reader = BufReader::new(s);
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .map_err(|e| io("read the answer from", e))?;
        if answer.is_empty() {
            return Err(ClientError::Closed { socket: socket() });
        }
        let v: Value = serde_json::from_str(&answer).map_err(|e| ClientError::Decode {
            socket: socket(),
            expected: "an answer",
            detail: format!("{e}: {}", answer.trim_end()),
        })?;
        if v.get("error").is_some() {
            let e: ErrorReply = self.decode(v, "an error")?;
            return Err(ClientError::Daemon {
                socket: socket(),
                message: e.error,
                refused: e.refused,
            });
        }
        Ok((reader, v))
    }
}

/// An event subscription: an iterator over the stream's lines, which ends
/// when the daemon closes the connection (after a [`Missed`] notice if
/// this subscriber fell behind). With a timeout set, a quiet stream yields
/// [`ClientError::Timeout`] and can be read on afterwards.
pub struct Subscription {
    reader: BufReader<UnixStream>,
    /// The line read so far: a timeout may cut a read off mid-line (even
    /// mid-character, hence bytes), and the rest comes with the next read.
    line: Vec<u8>,
    socket: PathBuf,
    last_seq: u64,
}

impl Subscription {
    /// The sequence number of the last event published before the
    /// subscription (0 if none): events after it follow.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Wait at most `timeout` for each line (None: for ever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|cause| ClientError::Io {
                socket: self.socket.clone(),
                what: "set a timeout on",
                cause,
            })
    }

    pub fn get_ref(&self) -> &UnixStream {
        self.reader.get_ref()
    }

    /// The connection itself (e.g. to shut it down).
    pub fn get_mut(&mut self) -> &mut UnixStream {
        self.reader.get_mut()
    }

    /// The next line of the stream; None once the daemon closed it.
    pub fn next_line(&mut self) -> Result<Option<StreamLine>> {
        match self.reader.read_until(b'\n', &mut self.line) {
            Ok(0) => return Ok(None),
            Ok(_) if !self.line.ends_with(b"\n") => return Ok(None),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let timeout = self.reader.get_ref().read_timeout().ok().flatten();
                return Err(ClientError::Timeout {
                    socket: self.socket.clone(),
                    timeout: timeout.unwrap_or_default(),
                });
            }
            Err(cause) => {
                return Err(ClientError::Io {
                    socket: self.socket.clone(),
                    what: "read events from",
                    cause,
                })
            }
        }
        let line = std::mem::take(&mut self.line);
        decode_stream_line(&line).map_err(|detail| ClientError::Decode {
            socket: self.socket.clone(),
            expected: "an event",
            detail,
        })
    }
}

impl Iterator for Subscription {
    type Item = Result<StreamLine>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_line().transpose()
    }
}

/// An event, or the notice that this subscriber missed some.
fn decode_stream_line(line: &[u8]) -> Result<Option<StreamLine>, String> {
    let shown = || {
        let text = String::from_utf8_lossy(line);
        text.trim_end().chars().take(200).collect::<String>()
    };
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("{e}: {}", shown()))?;
    let item = if v["kind"] == "missed" {
        serde_json::from_value::<Missed>(v).map(StreamLine::Missed)
    } else {
        serde_json::from_value::<EventRecord>(v).map(StreamLine::Event)
    };
    item.map(Some).map_err(|e| format!("{e}: {}", shown()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MissedKind;
    use crate::status::Change;

    #[test]
    fn stream_lines_are_events_or_the_missed_notice() {
        let ev = r#"{"seq":7,"time":"2026-11-25T00:00:00Z","kind":"drained","uplink":"primary","drained":true}"#;
        let Ok(Some(StreamLine::Event(r))) = decode_stream_line(ev.as_bytes()) else {
            panic!("not an event");
        };
        assert_eq!(r.seq, 7);
        assert_eq!(
            r.change,
            Change::Drained {
                uplink: "primary".into(),
                drained: true
            }
        );
        // Printed again, it is the line the daemon sent.
        assert_eq!(serde_json::to_string(&StreamLine::Event(r)).unwrap(), ev);

        let missed =
            r#"{"error":"fell behind","first_seq":5,"kind":"missed","last_seq":7,"missed":3}"#;
        assert_eq!(
            decode_stream_line(missed.as_bytes()),
            Ok(Some(StreamLine::Missed(Missed {
                kind: MissedKind::Missed,
                error: "fell behind".into(),
                missed: 3,
                first_seq: 5,
                last_seq: 7,
            })))
        );
        let e = decode_stream_line(br#"{"kind":"bogus"}"#).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn errors_name_the_socket_and_the_cause() {
        let c = Client::new("/nonexistent/uplinkd.sock").with_timeout(Duration::from_secs(1));
        let e = c.status().unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/uplinkd.sock") && msg.contains("No such file"),
            "{msg}"
        );
    }

    /// A daemon stand-in: reads one request line and sends `answer`.
    fn serve_once(answer: &'static str) -> (tempfile::TempDir, Client) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut req = String::new();
            r.read_line(&mut req).unwrap();
            r.get_mut().write_all(answer.as_bytes()).unwrap();
        });
        (dir, Client::new(path).with_timeout(Duration::from_secs(5)))
    }

    #[test]
    fn answers_decode_into_their_types() {
        let (_d, c) = serve_once("{\"metrics\":\"# EOF\\n\"}\n");
        assert_eq!(c.metrics().unwrap(), "# EOF\n");
        let (_d, c) = serve_once(
            "{\"drained\":true,\"ok\":true,\"request\":\"drain\",\"uplink\":\"primary\"}\n",
        );
        c.drain("primary").unwrap();
        let (_d, c) = serve_once(
            "{\"error\":\"drain refused: operator controls require root\",\"refused\":true}\n",
        );
        let e = c.drain("primary").unwrap_err();
        assert!(
            matches!(e, ClientError::Daemon { refused: true, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("require root"), "{e}");
        let (_d, c) = serve_once("{\"last_seq\":42,\"ok\":true,\"request\":\"events\"}\n");
        assert_eq!(c.events(Some(0)).unwrap().last_seq(), 42);
        let (_d, c) = serve_once("");
        assert!(matches!(c.reprobe(), Err(ClientError::Closed { .. })));
        let (_d, c) = serve_once("{\"active\":1}\n");
        let e = c.status().unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Decode {
                    expected: "a status",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
