//! uplinkctl: ask a running uplinkd what it sees and did, and control it.
//! Thin: requests through [`uplinkd::client::Client`], the answers printed
//! (`show`) or judged as a monitoring plugin (`check`).

// The binary's root is src/bin/uplinkctl.rs, so its modules are named by
// path: src/bin/ holds other binaries' roots.
#[path = "uplinkctl/check.rs"]
mod check;
#[path = "uplinkctl/show.rs"]
mod show;

use std::io::{ErrorKind, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use uplinkd::cli::{UplinkctlArgs as Args, UplinkctlCommand as Command};
use uplinkd::client::{Client, ClientError};
use uplinkd::config::Family;
use uplinkd::proto::StreamLine;
use uplinkd::status::Status;

use check::{Limits, Report};
use show::{per, serving, usable};

/// Width of the table on a terminal whose size cannot be read.
const FALLBACK_WIDTH: usize = 100;

/// The terminal's width when stdout is one (`COLUMNS` if set, else the
/// kernel's window size); None when piped, so nothing is cut.
fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return Some(c);
    }
    // SAFETY: TIOCGWINSZ only writes a `winsize` into `ws`, which lives
    // for the call; stdout is open (it is a terminal).
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    Some(if r == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        FALLBACK_WIDTH
    })
}

/// Why draining `name` needs --force: it is the last usable uplink of a
/// family, which would then fail static (the route stays where it is and
/// nothing takes over). None when draining it is safe, or when the daemon
/// should judge (unknown uplink, already drained).
fn drain_refusal(st: &Status, name: &str) -> Option<String> {
    let u = st.uplinks.iter().find(|u| u.name == name)?;
    if u.drained {
        return None;
    }
    let lost: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| usable(u, *f) && !serving(st, *f).any(|o| o.name != name && usable(o, *f)))
        .collect();
    if lost.is_empty() {
        return None;
    }
    let names: Vec<&str> = lost.iter().map(|f| f.name()).collect();
    let others: Vec<String> = lost
        .iter()
        .flat_map(|f| serving(st, *f).filter(|o| o.name != name))
        .map(|o| {
            let reasons: Vec<String> = o.reasons.iter().map(show::reason_code).collect();
            let reasons = if reasons.is_empty() {
                "no verdict yet".to_string()
            } else {
                reasons.join(" ")
            };
            format!("{}: {reasons}", o.name)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let route = lost
        .iter()
        .map(|f| {
            let on = per(&st.active, *f).as_deref().unwrap_or("-");
            format!("{f} on {on}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let others = if others.is_empty() {
        String::new()
    } else {
        format!(" ({})", others.join(", "))
    };
    Some(format!(
        "{name} is the last usable uplink for {}{others}: drained, {} would fail static: \
         the default route stays where it is ({route}) and nothing takes over if it fails. \
         Pass --force to drain it anyway",
        names.join(" and "),
        if lost.len() == 1 {
            "that family"
        } else {
            "those families"
        },
    ))
}

/// The group that may use the socket: the socket's, or, when its
/// directory cannot even be entered, the directory's.
fn socket_group(socket: &Path) -> Option<String> {
    let meta = match std::fs::metadata(socket) {
        Ok(m) => m,
        Err(_) => std::fs::metadata(socket.parent()?).ok()?,
    };
    let gid = meta.gid();
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
}

/// What the operator can do about an error, when it is one of the usual.
fn hint(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<ClientError>()? {
        ClientError::Connect { socket, cause } => match cause.kind() {
            ErrorKind::PermissionDenied => {
                let g = socket_group(socket).unwrap_or_else(|| "uplinkd".into());
                Some(format!(
                    "join group {g} (sudo adduser $USER {g}, then log in again) or use sudo"
                ))
            }
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                Some("is uplinkd running? (systemctl status uplinkd)".into())
            }
            _ => None,
        },
        ClientError::Daemon { refused: true, .. } => Some("use sudo".into()),
        _ => None,
    }
}

fn check(client: &Client, limits: &Limits) -> ExitCode {
    let report = match client.status() {
        Err(e) => Report::unanswered(&e),
        Ok(st) => {
            // The time since the last switch is only in the metrics; without
            // them the rest of the check stands.
            let since = client
                .metrics()
                .map(|m| check::since_last_switch(&m))
                .unwrap_or_default();
            check::evaluate(&st, &since, limits)
        }
    };
    println!("{}", report.line());
    ExitCode::from(report.level.code())
}

fn run(args: Args) -> Result<ExitCode> {
    let client = Client::new(args.socket);
    match args.command {
        Command::Status { json: true, .. } => {
            let v = client.status_json()?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Status { verbose: true, .. } => print!("{}", show::verbose(&client.status()?)),
        Command::Status { .. } => print!("{}", show::table(&client.status()?, terminal_width())),
        Command::Check {
            warn_rtt,
            crit_rtt,
            warn_loss,
            crit_loss,
            failover_critical_after,
            timeout,
        } => {
            let limits = Limits {
                warn_rtt,
                crit_rtt,
                warn_loss,
                crit_loss,
                failover_critical_after,
            };
            return Ok(check(&client.with_timeout(timeout), &limits));
        }
        Command::Events { since } => {
            let mut out = std::io::stdout().lock();
            for line in client.events(since)? {
                let (text, missed) = match line? {
                    StreamLine::Event(r) => (serde_json::to_string(&r)?, false),
                    StreamLine::Missed(m) => (serde_json::to_value(&m)?.to_string(), true),
                };
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    return Ok(ExitCode::SUCCESS); // stdout closed (e.g. `| head`)
                }
                if missed {
                    bail!("uplinkd dropped this subscriber: it fell behind");
                }
            }
            bail!("uplinkd closed the event stream");
        }
        Command::Metrics => print!("{}", client.metrics()?),
        Command::Drain { name, force } => {
            if !force {
                if let Some(why) = drain_refusal(&client.status()?, &name) {
                    bail!("not draining {why}");
                }
            }
            client.drain(&name)?;
            println!("{name}: drained (out of use until undrained)");
        }
        Command::Undrain { name } => {
            client.undrain(&name)?;
            println!("{name}: undrained (preferred again after the failback rule)");
        }
        Command::Reprobe => {
            client.reprobe()?;
            println!("re-probing every gateway and transit target");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The subcommand named on the command line (the first word that is not
/// an option or the socket option's value), to judge a line clap refused.
fn subcommand(args: &[String]) -> Option<&str> {
    let mut words = args.iter().skip(1);
    while let Some(w) = words.next() {
        match w.as_str() {
            "-s" | "--socket" => {
                words.next();
            }
            w if w.starts_with('-') => {}
            w => return Some(w),
        }
    }
    None
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        // A monitoring plugin's usage error is UNKNOWN (3), not clap's 2,
        // which a monitoring system would read as CRITICAL.
        Err(e) if e.use_stderr() && subcommand(&argv) == Some("check") => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("usage error");
            let report = Report::usage(first.trim_start_matches("error: "));
            println!("{}", report.line());
            let _ = e.print();
            return ExitCode::from(report.level.code());
        }
        Err(e) => e.exit(),
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("uplinkctl: {e:#}");
            if let Some(h) = hint(&e) {
                eprintln!("uplinkctl: {h}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use show::fixture::*;
    use uplinkd::status::Reason;

    #[test]
    fn draining_the_last_usable_uplink_needs_force() {
        let mut st = all_healthy();
        assert_eq!(drain_refusal(&st, "primary"), None);
        assert_eq!(drain_refusal(&st, "secondary"), None);
        fail(&mut st, 1, vec![Reason::Carrier]);
        let why = drain_refusal(&st, "primary").expect("refused");
        assert_eq!(
            why,
            "primary is the last usable uplink for ipv4 and ipv6 (secondary: carrier): drained, \
             those families would fail static: the default route stays where it is (ipv4 on \
             primary, ipv6 on primary) and nothing takes over if it fails. Pass --force to drain it anyway"
        );
        // The unusable one may go; an unknown or drained one is the daemon's to judge.
        assert_eq!(drain_refusal(&st, "secondary"), None);
        assert_eq!(drain_refusal(&st, "nonesuch"), None);
        st.uplinks[0].drained = true;
        assert_eq!(drain_refusal(&st, "primary"), None);
    }

    #[test]
    fn the_subcommand_is_found_past_the_socket_option() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            subcommand(&v(&["uplinkctl", "check", "--x"])),
            Some("check")
        );
        assert_eq!(
            subcommand(&v(&["uplinkctl", "-s", "/tmp/check", "check"])),
            Some("check")
        );
        assert_eq!(
            subcommand(&v(&["uplinkctl", "--socket", "check", "status"])),
            Some("status")
        );
        assert_eq!(subcommand(&v(&["uplinkctl", "--bogus"])), None);
    }
}
