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

/// The sysctls every managed uplink needs:
/// - `net.ipv4.conf.<if>.rp_filter = 2` (loose, RFC 3704 "loose reverse path"):
///   replies to probes sent through the standby uplink arrive on the
///   non-preferred interface and strict mode drops them. The kernel uses
///   max(conf.all, conf.<if>), so 2 here wins over all=1.
/// - `net.ipv4.conf.<if>.ignore_routes_with_linkdown = 1` and the IPv6 one:
///   routes through an interface without carrier are skipped, so the kernel
///   falls back on its own before we act (Documentation/networking/ip-sysctl.rst).
///
/// The IPv6 one is skipped when IPv6 is absent from the kernel (no
/// `/proc/sys/net/ipv6`), and for an interface with IPv6 disabled.
pub fn uplink_sysctls(ifname: &str) -> Result<(), NetlinkError> {
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
    set_sysctl(&format!("net/ipv4/conf/{ifname}/rp_filter"), "2")?;
    set_sysctl(
        &format!("net/ipv4/conf/{ifname}/ignore_routes_with_linkdown"),
        "1",
    )?;
    let v6 = format!("net/ipv6/conf/{ifname}/ignore_routes_with_linkdown");
    // Absent when the kernel has no IPv6 or IPv6 is disabled on this
    // interface: then there is nothing to set.
    if Path::new(PROC_SYS).join(&v6).exists() {
        set_sysctl(&v6, "1")?;
    }
    Ok(())
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
}
