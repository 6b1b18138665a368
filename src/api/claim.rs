//! One agent per socket: the claim an instance takes before it touches
//! any route, and keeps for its life.
//!
//! Two instances with the same configuration would both manage the routes,
//! and the second would silently take the socket over (and remove it when
//! it exits). So an instance first takes an exclusive `flock(2)` on the
//! lock file beside the socket (`<socket>.lock`, holding its pid), which
//! the kernel releases however the process ends; and if a socket file is
//! there, it must be stale: a connect to it is refused. Only then may the
//! socket file be replaced (see [`super::serve`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why this instance may not run with this socket.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("another uplinkd (pid {pid}) is running with socket {}", socket.display())]
    Running { pid: u32, socket: PathBuf },
    #[error("another uplinkd is running with socket {} (it holds {})", socket.display(), lock.display())]
    RunningPidUnknown { socket: PathBuf, lock: PathBuf },
    #[error(
        "socket {} is in use: a process accepts connections on it (and holds no {}); stop it, or set another [agent] socket",
        socket.display(),
        lock.display()
    )]
    InUse { socket: PathBuf, lock: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// "create the directory of", "open the lock file", ...
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Held for the life of the instance: the lock on `<socket>.lock`. The
/// file itself stays when it is dropped (removing a lock file others may
/// have opened would let two instances lock two different files).
#[derive(Debug)]
pub struct Claim {
    _lock: Flock<File>,
}

/// The lock file beside `socket`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Claim `socket` for this process: lock `<socket>.lock` (writing this
/// pid into it), and make sure no one accepts connections on the socket.
pub fn claim_socket(socket: &Path) -> Result<Claim, ClaimError> {
    let lock = lock_path(socket);
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| ClaimError::Io { what, path, source }
    };
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("create the directory", dir))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io_err("open the lock file", &lock))?;
    let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(match text.trim().parse() {
                Ok(pid) => ClaimError::Running {
                    pid,
                    socket: socket.into(),
                },
                Err(_) => ClaimError::RunningPidUnknown {
                    socket: socket.into(),
                    lock,
                },
            });
        }
        Err((_, e)) => return Err(io_err("lock", &lock)(e.into())),
    };
    held.set_len(0)
        .and_then(|()| writeln!(held, "{}", std::process::id()))
        .map_err(io_err("write this pid into", &lock))?;
    if socket_answers(socket) {
        return Err(ClaimError::InUse {
            socket: socket.into(),
            lock,
        });
    }
    Ok(Claim { _lock: held })
}

/// For a command that must not run beside an agent (`uplinkd --cleanup`):
/// an error naming the agent when one holds `socket`'s claim, or accepts
/// connections on it. Creates nothing: without a lock file no agent ever
/// ran with this socket. While the returned lock is held (when there is a
/// lock file), no agent can start with this socket: it would be refused.
pub fn hold_if_idle(socket: &Path) -> Result<Option<Flock<File>>, ClaimError> {
    let lock = lock_path(socket);
    let held = match File::open(&lock) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ClaimError::Io {
                what: "open the lock file",
                path: lock,
                source,
            })
        }
        Ok(file) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Some(l),
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(match text.trim().parse() {
                    Ok(pid) => ClaimError::Running {
                        pid,
                        socket: socket.into(),
                    },
                    Err(_) => ClaimError::RunningPidUnknown {
                        socket: socket.into(),
                        lock,
                    },
                });
            }
            Err((_, e)) => {
                return Err(ClaimError::Io {
                    what: "lock",
                    path: lock,
                    source: e.into(),
                })
            }
        },
    };
    if socket_answers(socket) {
        return Err(ClaimError::InUse {
            socket: socket.into(),
            lock,
        });
    }
    Ok(held)
}

/// Whether something accepts connections on the socket file (a stale
/// socket, or none, refuses them).
pub(super) fn socket_answers(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_holder_and_a_stale_socket_is_no_obstacle() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/uplinkd.sock");
        let first = claim_socket(&socket).expect("first claim");
        let pid = std::process::id();
        // flock locks belong to the open file: a second open conflicts, in
        // this process too.
        let e = claim_socket(&socket).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "another uplinkd (pid {pid}) is running with socket {}",
                socket.display()
            )
        );
        drop(first);
        // A socket file nobody listens on is stale.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let second = claim_socket(&socket).expect("stale socket");
        drop(second);
        // One that accepts is in use, lock or not.
        let _l = {
            std::fs::remove_file(&socket).unwrap();
            std::os::unix::net::UnixListener::bind(&socket).unwrap()
        };
        let e = claim_socket(&socket).unwrap_err();
        assert!(matches!(e, ClaimError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("accepts connections"), "{e}");
    }

    #[test]
    fn hold_if_idle_refuses_beside_a_running_agent_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/uplinkd.sock");
        assert!(hold_if_idle(&socket).unwrap().is_none());
        assert!(!dir.path().join("run").exists(), "created something");
        let claim = claim_socket(&socket).unwrap();
        let e = hold_if_idle(&socket).unwrap_err();
        assert!(matches!(e, ClaimError::Running { .. }), "{e}");
        drop(claim);
        let held = hold_if_idle(&socket).unwrap();
        assert!(held.is_some());
        // While held, an agent cannot start with this socket.
        assert!(claim_socket(&socket).is_err());
    }
}
