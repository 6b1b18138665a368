//! `uplinkd --cleanup`: remove everything uplinkd made on this host, and
//! nothing else, while no agent runs.
//!
//! - Routes with protocol 85 (`proto uplinkd`) in the main table and in
//!   tables `table_base` and up, both families: the active default route,
//!   the kernel fallback routes, the probe tables' routes. Protocol 85 marks
//!   them, so no configuration is needed; the kernel itself refuses to
//!   delete a route or rule of another protocol (see [`crate::netlink::owned`]).
//! - Rules with protocol 85, both families (`fwmark … lookup <table>`).
//! - The per-uplink sysctls uplinkd changed, put back to the values they
//!   had before uplinkd first changed them in this boot (recorded by the
//!   agent in `sysctl-originals` beside its socket); one changed again since
//!   by someone else is left as it is, and said so.
//!
//! Kept: the operator's drains and the event sequence numbers beside the
//! socket (the agent's own state, not the host's: a later start continues
//! with them; the package's purge removes the directory), the bond's active
//! member (the bond keeps working on it; uplinkd did not create the bond),
//! and everything of another owner, also in tables 1000 and up.
//!
//! Refused while an agent runs with the socket (its claim, see
//! [`crate::api::hold_if_idle`]): it would put everything back at once.
//! Idempotent: a second run finds nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::api::ClaimError;
use crate::config::Family;
use crate::netlink::owned::{Owned, OwnedRoute, OwnedRule};
use crate::netlink::sysctl::{self, Originals, ORIGINALS_FILE};
use crate::netlink::NetlinkError;

/// Why the cleanup did not run.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("{0}: stop it first (systemctl stop uplinkd); cleaning up under a running agent would only make it put everything back")]
    Running(ClaimError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
}

/// What the cleanup did with one sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysctlOutcome {
    /// Put back to its original.
    Restored { from: String, to: String },
    /// Already at its original.
    Unchanged { value: String },
    /// Changed since uplinkd set it, by someone else: left as it is.
    Left { value: String, set: String },
    /// No such sysctl any more (the interface is gone).
    Gone,
}

/// The sysctl path, as sysctl(8) names it: `net.ipv4.conf.eth0.rp_filter`
/// (a dot inside a component, as in `eth0.100`, becomes `/`).
pub fn sysctl_name(path: &str) -> String {
    path.split('/')
        .map(|c| c.replace('.', "/"))
        .collect::<Vec<_>>()
        .join(".")
}

/// What a cleanup found and did.
#[derive(Debug, Default)]
pub struct Report {
    pub rules: Vec<OwnedRule>,
    pub routes: Vec<OwnedRoute>,
    pub sysctls: Vec<(String, SysctlOutcome)>,
    /// What could not be removed or restored (each names the object and
    /// the cause); the cleanup went on with the rest.
    pub errors: Vec<String>,
}

impl Report {
    /// Whether it changed anything.
    pub fn changed(&self) -> bool {
        !self.rules.is_empty()
            || !self.routes.is_empty()
            || self
                .sysctls
                .iter()
                .any(|(_, o)| matches!(o, SysctlOutcome::Restored { .. }))
    }
}

impl fmt::Display for Report {
    /// One line per object, then a summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            writeln!(f, "removed {r}")?;
        }
        for r in &self.routes {
            writeln!(f, "removed {r}")?;
        }
        let mut restored = 0;
        for (path, o) in &self.sysctls {
            let name = sysctl_name(path);
            match o {
                SysctlOutcome::Restored { from, to } => {
                    restored += 1;
                    writeln!(f, "restored {name} = {to} (uplinkd had set {from})")?
                }
                SysctlOutcome::Unchanged { value } => {
                    writeln!(f, "kept {name} = {value} (already its value before uplinkd)")?
                }
                SysctlOutcome::Left { value, set } => writeln!(
                    f,
                    "kept {name} = {value}: changed since uplinkd set {set}, so not uplinkd's any more"
                )?,
                SysctlOutcome::Gone => writeln!(f, "skipped {name}: no such sysctl (interface gone)")?,
            }
        }
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        if self.changed() {
            write!(
                f,
                "removed {} route(s) and {} rule(s), restored {restored} sysctl(s)",
                self.routes.len(),
                self.rules.len()
            )
        } else if self.errors.is_empty() {
            write!(f, "nothing of uplinkd's to clean up")
        } else {
            write!(f, "nothing removed")
        }
    }
}

/// Where the agent with `socket` keeps its state (the socket's directory).
pub fn state_dir(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new("/run")).to_path_buf()
}

/// Clean up after the agent with `socket` (its routes in the main table
/// and tables `table_base` and up), in the calling thread's network
/// namespace. Refused while that agent runs.
pub fn cleanup(socket: &Path, table_base: u32) -> Result<Report, CleanupError> {
    // Held until the end: no agent starts with this socket meanwhile.
    let _idle = crate::api::hold_if_idle(socket).map_err(CleanupError::Running)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CleanupError::Runtime)?;
    let mut report = rt.block_on(remove_owned(table_base))?;
    restore_sysctls(
        &Originals::new(state_dir(socket).join(ORIGINALS_FILE)),
        &mut report,
    );
    Ok(report)
}

async fn remove_owned(table_base: u32) -> Result<Report, NetlinkError> {
    let owned = Owned::open().await?;
    let mut report = Report::default();
    for f in Family::ALL {
        // Rules first: nothing is steered into a table while it empties.
        for rule in owned.rules(f).await? {
            match owned.delete_rule(&rule).await {
                Ok(true) => report.rules.push(rule),
                Ok(false) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for route in owned.routes(f, table_base).await? {
            match owned.delete_route(&route).await {
                Ok(true) => report.routes.push(route),
                Ok(false) => {}
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    Ok(report)
}

/// Put back each recorded sysctl that still has uplinkd's value; the file
/// goes once every entry is dealt with (kept after a failed write, for
/// another try).
fn restore_sysctls(originals: &Originals, report: &mut Report) {
    let all = match originals.read() {
        Ok(all) => all,
        Err(e) => {
            report.errors.push(format!(
                "read the sysctls' original values from {}: {e}",
                originals.path().display()
            ));
            return;
        }
    };
    let mut failed = false;
    for o in all {
        let outcome = match sysctl::get_sysctl(&o.path) {
            Err(_) if !Path::new("/proc/sys").join(&o.path).exists() => SysctlOutcome::Gone,
            Err(e) => {
                failed = true;
                report.errors.push(e.to_string());
                continue;
            }
            Ok(v) if v == o.original => SysctlOutcome::Unchanged { value: v },
            Ok(v) if v != o.set => SysctlOutcome::Left {
                value: v,
                set: o.set,
            },
            Ok(v) => match sysctl::set_sysctl(&o.path, &o.original) {
                Ok(()) => SysctlOutcome::Restored {
                    from: v,
                    to: o.original,
                },
                Err(e) => {
                    failed = true;
                    report.errors.push(e.to_string());
                    continue;
                }
            },
        };
        report.sysctls.push((o.path, outcome));
    }
    if !failed {
        if let Err(e) = originals.remove() {
            report
                .errors
                .push(format!("remove {}: {e}", originals.path().display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_are_written_as_sysctl_writes_them() {
        assert_eq!(
            sysctl_name("net/ipv4/conf/eth0.100/rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
    }

    #[test]
    fn an_empty_report_says_there_was_nothing() {
        assert_eq!(
            Report::default().to_string(),
            "nothing of uplinkd's to clean up"
        );
    }
}
