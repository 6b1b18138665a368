//! The per-uplink sysctls.
//!
//! Namespace: `/proc/sys/net` is resolved against the network namespace of
//! the *calling thread* at open time (the kernel's sysctl root for `net` is
//! `current->nsproxy->net_ns`, and `current` is the thread). This differs
//! from `/proc/net`, which is a symlink to `/proc/self/net` and so shows the
//! namespace of the process's main thread (use `/proc/thread-self/net` for the
//! calling thread's). `tests/netlink.rs` checks both facts.
//!
//! Paths: these functions take real paths under `/proc/sys` with `/`
//! separators, so an interface name containing a dot stays as it is
//! (`net/ipv4/conf/eth0.100/rp_filter`). Only sysctl(8)'s dotted notation
//! needs the `.` -> `/` swap (`net.ipv4.conf.eth0/100.rp_filter`).

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use super::NetlinkError;

const PROC_SYS: &str = "/proc/sys";

/// Write `value` to `/proc/sys/<path_under_proc_sys>` (e.g.
/// `net/ipv4/conf/eth0/rp_filter`), in the calling thread's network namespace.
pub fn set_sysctl(path_under_proc_sys: &str, value: &str) -> Result<(), NetlinkError> {
    let op = format!("set sysctl {path_under_proc_sys} = {value}");
    let rel = Path::new(path_under_proc_sys);
    let valid = !path_under_proc_sys.is_empty()
        && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !valid {
        return Err(NetlinkError::Invalid {
            op,
            reason: "not a relative path under /proc/sys".into(),
        });
    }
    let full: PathBuf = Path::new(PROC_SYS).join(rel);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&full)
        .map_err(|e| NetlinkError::io(op.clone(), e))?;
    // One write(2) of the whole value: sysctl handlers parse per write.
    f.write_all(format!("{value}\n").as_bytes())
        .map_err(|e| NetlinkError::io(op, e))
}

/// Read `/proc/sys/<path_under_proc_sys>`, trimmed.
pub fn get_sysctl(path_under_proc_sys: &str) -> Result<String, NetlinkError> {
    let full = Path::new(PROC_SYS).join(path_under_proc_sys);
    std::fs::read_to_string(&full)
        .map(|s| s.trim().to_string())
        .map_err(|e| NetlinkError::io(format!("read sysctl {path_under_proc_sys}"), e))
}

/// The sysctls every managed uplink needs, as (path under /proc/sys, value):
/// - `net.ipv4.conf.<if>.rp_filter = 2` (loose, RFC 3704 "loose reverse path"):
///   replies to probes sent through the standby uplink arrive on the
///   non-preferred interface and strict mode drops them. The kernel uses
///   max(conf.all, conf.<if>), so 2 here wins over all=1.
/// - `net.ipv4.conf.<if>.ignore_routes_with_linkdown = 1` and the IPv6 one:
///   routes through an interface without carrier are skipped, so the kernel
///   falls back on its own before we act (Documentation/networking/ip-sysctl.rst).
pub fn uplink_sysctl_values(ifname: &str) -> [(String, &'static str); 3] {
    [
        (format!("net/ipv4/conf/{ifname}/rp_filter"), "2"),
        (
            format!("net/ipv4/conf/{ifname}/ignore_routes_with_linkdown"),
            "1",
        ),
        (
            format!("net/ipv6/conf/{ifname}/ignore_routes_with_linkdown"),
            "1",
        ),
    ]
}

/// Set [`uplink_sysctl_values`] of `ifname`.
///
/// The IPv6 one is skipped when IPv6 is absent from the kernel (no
/// `/proc/sys/net/ipv6`), and for an interface with IPv6 disabled.
pub fn uplink_sysctls(ifname: &str) -> Result<(), NetlinkError> {
    uplink_sysctls_recorded(ifname, None)
}

/// [`uplink_sysctls`], and before a value is first changed, its original
/// is added to the file `originals` (see [`Originals`]), so that
/// `uplinkd --cleanup` can put it back. A value that is already what
/// uplinkd wants is left alone and not recorded: it is not uplinkd's
/// change (or, after a restart, the original is in the file already).
pub fn uplink_sysctls_recorded(
    ifname: &str,
    originals: Option<&Originals>,
) -> Result<(), NetlinkError> {
    if ifname.is_empty()
        || ifname.len() >= libc::IFNAMSIZ
        || ifname.contains('/')
        || ifname == "."
        || ifname == ".."
    {
        return Err(NetlinkError::Invalid {
            op: format!("set uplink sysctls of {ifname:?}"),
            reason: "not a valid interface name".into(),
        });
    }
    for (i, (path, value)) in uplink_sysctl_values(ifname).iter().enumerate() {
        // Absent when the kernel has no IPv6 or IPv6 is disabled on this
        // interface: then there is nothing to set.
        if i == 2 && !Path::new(PROC_SYS).join(path).exists() {
            continue;
        }
        // Unreadable (no such interface): the write below says so.
        let current = get_sysctl(path).ok();
        if current.as_deref() == Some(*value) {
            continue;
        }
        if let (Some(o), Some(current)) = (originals, current) {
            if let Err(e) = o.record(path, &current, value) {
                // Failover matters more than a clean uninstall: set it anyway.
                tracing::warn!(
                    sysctl = %path, error = %e,
                    "cannot record the original value; uplinkd --cleanup will not restore it"
                );
            }
        }
        set_sysctl(path, value)?;
    }
    Ok(())
}

/// The file name, in the agent's state directory (beside its socket), of
/// [`Originals`].
pub const ORIGINALS_FILE: &str = "sysctl-originals";

/// The values uplinkd's sysctls had before uplinkd first changed them in
/// this boot: one line per sysctl, `<path under /proc/sys> <original>
/// <uplinkd's value>`.
///
/// Written once per sysctl and boot: an entry is never overwritten, so a
/// restarted agent (which finds uplinkd's own values in place, and so does
/// not record them anyway) never loses the original. "Per boot" because the
/// file lives in /run (a tmpfs), as the sysctls live in the kernel: both
/// are gone after a reboot. No boot id is written into it: a service with
/// its own /proc (ProtectProc=) and a shell in a systemd-nspawn container
/// read different boot ids (nspawn mounts its own over the kernel's), and
/// the cleanup would have ignored the agent's file.
#[derive(Debug, Clone)]
pub struct Originals {
    path: PathBuf,
}

/// One recorded sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// Path under /proc/sys.
    pub path: String,
    /// Its value before uplinkd changed it.
    pub original: String,
    /// The value uplinkd set.
    pub set: String,
}

impl Originals {
    pub fn new(path: impl Into<PathBuf>) -> Originals {
        Originals { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded originals (none when the file is absent).
    pub fn read(&self) -> std::io::Result<Vec<Original>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(parse_originals(&text))
    }

    /// Add `path`'s original unless it is recorded already.
    pub fn record(&self, path: &str, original: &str, set: &str) -> std::io::Result<()> {
        let mut all = self.read()?;
        if all.iter().any(|o| o.path == path) {
            return Ok(());
        }
        all.push(Original {
            path: path.into(),
            original: original.into(),
            set: set.into(),
        });
        let mut text = String::from(
            "# sysctls before uplinkd changed them; uplinkd --cleanup restores them\n",
        );
        for o in &all {
            text += &format!("{} {} {}\n", o.path, o.original, o.set);
        }
        // Replaced whole (write, then rename): a crash leaves the old or the
        // new file, never half of one.
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Remove the file (absent = done).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn parse_originals(text: &str) -> Vec<Original> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (path, original, set) = (w.next()?, w.next()?, w.next()?);
            Some(Original {
                path: path.into(),
                original: original.into(),
                set: set.into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_escaping_proc_sys() {
        for p in ["", "/etc/passwd", "../etc/passwd", "net/../../etc", "./net"] {
            assert!(
                matches!(set_sysctl(p, "1"), Err(NetlinkError::Invalid { .. })),
                "{p}"
            );
        }
        assert!(uplink_sysctls("a/b").is_err());
        assert!(uplink_sysctls("..").is_err());
    }

    #[test]
    fn originals_are_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let o = Originals::new(dir.path().join(ORIGINALS_FILE));
        assert!(o.read().unwrap().is_empty());
        o.record("net/ipv4/conf/eth0/rp_filter", "1", "2").unwrap();
        // A restart sees uplinkd's own value: never overwrites the original.
        o.record("net/ipv4/conf/eth0/rp_filter", "2", "2").unwrap();
        o.record("net/ipv4/conf/eth1/rp_filter", "0", "2").unwrap();
        let all = o.read().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].original, "1");
        assert_eq!(all[1].path, "net/ipv4/conf/eth1/rp_filter");
        let text = std::fs::read_to_string(o.path()).unwrap();
        assert_eq!(parse_originals(&text).len(), 2);
        o.remove().unwrap();
        o.remove().unwrap();
        assert!(o.read().unwrap().is_empty());
    }
}
