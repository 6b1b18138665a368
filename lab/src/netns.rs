//! Named network namespaces (`/run/netns/<name>`, as `ip netns` makes them)
//! and threads that run inside one.
//!
//! A network namespace belongs to a *thread*, not to the process: `setns(2)`
//! with `CLONE_NEWNET` moves only the calling thread. So the lab never moves
//! the caller's thread; it starts a dedicated thread, enters the namespace
//! there, and lets that thread end when its work is done, so no thread that
//! sits in a lab namespace is ever reused for anything else. Sockets keep the
//! namespace they were created in, whichever thread uses them later.
//!
//! Names: every lab namespace is `ul-<pid hex>-<counter>-<role>`, unique per
//! process and lab instance (parallel tests and labs never collide), and a
//! crashed lab's leftovers can be recognised: their pid no longer exists.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};

use crate::cmd;
use crate::LabError;

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";
/// Every lab namespace name starts with this.
pub const NAME_PREFIX: &str = "ul-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `ip netns add` sets up the shared `/run/netns` mount on first use; two
/// concurrent first uses race. Serialise add/delete within this process.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A fresh, process-unique prefix: `ul-<pid hex>-<counter>-`.
pub(crate) fn new_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{:x}-{n}-", std::process::id())
}

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

pub(crate) fn add(name: &str) -> Result<(), LabError> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    cmd::run("ip", &["netns", "add", name], None).map(|_| ())
}

/// Deletes a namespace; one that is already gone is success.
pub(crate) fn delete(name: &str) -> Result<(), LabError> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !exists(name) {
        return Ok(());
    }
    cmd::run("ip", &["netns", "delete", name], None).map(|_| ())
}

/// Moves the *calling thread* into namespace `name`. Only for threads the lab
/// started for that purpose.
pub(crate) fn enter(name: &str) -> Result<(), LabError> {
    let f = File::open(path(name)).map_err(|source| LabError::Io {
        what: format!("open network namespace {name}"),
        source,
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Io {
        what: format!("setns into network namespace {name}"),
        source: std::io::Error::from(e),
    })
}

/// Runs `f` on a new thread that has entered namespace `name`, and returns
/// its result. A panic in `f` is propagated to the caller.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    std::thread::scope(|s| {
        let h = s.spawn(|| -> Result<T, LabError> {
            enter(name)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The pid encoded in a lab namespace name, if it is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, role) = rest.split_once('-')?;
    if role.is_empty() || counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

/// Whether the lab process `pid` that created namespace `name` still runs:
/// the pid exists, is not a zombie, and started before the namespace was
/// created (otherwise the pid was reused by another process).
fn lab_alive(pid: u32, name: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Fields after the command name (which may contain spaces and ')').
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return true;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return false;
    }
    // starttime is field 22 of /proc/pid/stat, i.e. index 19 after the state.
    let started = fields
        .get(19)
        .and_then(|t| t.parse::<u64>().ok())
        .zip(boot_time())
        .map(|(ticks, btime)| {
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            btime + ticks / hz
        });
    let created = std::fs::metadata(path(name))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    match (started, created) {
        // 2 s of slack for rounding of both clocks.
        (Some(s), Some(c)) => s <= c + 2,
        _ => true, // cannot tell: keep it
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "Z" || st == "X"))
        })
        .unwrap_or(false)
}

fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// What [`cleanup_stale`] did.
#[derive(Debug, Default)]
pub struct StaleCleanup {
    /// Namespaces deleted.
    pub deleted: Vec<String>,
    /// Lab namespaces left alone because their lab process still runs.
    pub alive: Vec<String>,
    /// Temporary directories of dead labs removed.
    pub dirs_removed: Vec<PathBuf>,
    /// Every failure, one line each (cleanup keeps going).
    pub errors: Vec<String>,
}

/// Deletes the namespaces (and temp dirs) of labs whose process no longer
/// exists. Never touches a name without our prefix, nor one whose pid lives.
pub fn cleanup_stale() -> StaleCleanup {
    let mut report = StaleCleanup::default();
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e.filter_map(|e| e.ok()).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report.errors.push(format!("read {NETNS_DIR}: {e}"));
            Vec::new()
        }
    };
    let mut names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if lab_alive(pid, &name) {
            report.alive.push(name);
            continue;
        }
        match delete(&name) {
            Ok(()) => report.deleted.push(name),
            Err(e) => report.errors.push(format!("delete namespace {name}: {e}")),
        }
    }
    if let Ok(dirs) = std::fs::read_dir(std::env::temp_dir()) {
        for d in dirs.filter_map(|e| e.ok()) {
            let Ok(fname) = d.file_name().into_string() else {
                continue;
            };
            let Some(ns_prefix) = fname.strip_prefix(super::TEMP_DIR_PREFIX) else {
                continue;
            };
            // The dir is named after the prefix without its trailing '-':
            // append a role so owner_pid parses it.
            let Some(pid) = owner_pid(&format!("{ns_prefix}-x")) else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
                continue;
            }
            match std::fs::remove_dir_all(d.path()) {
                Ok(()) => report.dirs_removed.push(d.path()),
                Err(e) => report
                    .errors
                    .push(format!("remove {}: {e}", d.path().display())),
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("ul-1a2b-0-srv"), Some(0x1a2b));
        assert_eq!(owner_pid("ul-1a2b-17-nz3a"), Some(0x1a2b));
        assert_eq!(owner_pid("ul-1a2b-x-srv"), None);
        assert_eq!(owner_pid("ul-zz-0-srv"), None);
        assert_eq!(owner_pid("ul-1a2b-0-"), None);
        assert_eq!(owner_pid("blue"), None);
        assert_eq!(owner_pid("ultest-1-2-3"), None);
    }

    #[test]
    fn prefixes_are_unique() {
        let a = new_prefix();
        let b = new_prefix();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&format!("{a}srv")), Some(std::process::id()));
    }
}
