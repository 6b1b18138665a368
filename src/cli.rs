//! The command lines of `uplinkd` and `uplinkctl`.
//!
//! They live in the library, not in the binaries, so that the man pages and
//! shell completions under `packaging/` are generated from the very
//! definitions the binaries parse (`tests/docs.rs` regenerates them and fails
//! when the committed files differ).

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

/// Keeps this server's default route on a healthy uplink.
#[derive(Parser, Debug)]
#[command(name = "uplinkd", version, about)]
pub struct UplinkdArgs {
    /// Configuration file.
    #[arg(short, long, default_value = "/etc/uplinkd/uplinkd.toml")]
    pub config: PathBuf,
    /// Validate the configuration (the file and its drop-ins) and exit
    /// (0 = valid).
    #[arg(long)]
    pub check: bool,
    /// With --check: also check that the configuration fits this host: every
    /// uplink's interface (and bond) exists, every gateway is on-link through
    /// its interface, and no default route uplinkd did not make has a lower
    /// metric than agent.route_metric. Every problem is listed; exit status 3
    /// when there is one.
    #[arg(long, requires = "check")]
    pub live: bool,
    /// Remove everything uplinkd made on this host and exit: every route
    /// with protocol 85 (proto uplinkd) in the main table and in tables
    /// agent.table_base and up, every rule with protocol 85, both families,
    /// and the per-uplink sysctls put back to their values before uplinkd
    /// first changed them in this boot. Nothing of another owner is
    /// touched. Refused (exit 1) while uplinkd runs. Works without the
    /// configuration file (then with the default socket and table_base).
    /// Prints what it removed; a second run finds nothing.
    #[arg(long, conflicts_with = "check")]
    pub cleanup: bool,
}

#[derive(Parser, Debug)]
#[command(
    name = "uplinkctl",
    version,
    about = "Query and control a running uplinkd",
    subcommand_value_name = "COMMAND"
)]
pub struct UplinkctlArgs {
    /// The daemon's socket ([agent] socket in its config).
    #[arg(short, long, default_value = "/run/uplinkd/uplinkd.sock")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: UplinkctlCommand,
}

#[derive(Subcommand, Debug)]
pub enum UplinkctlCommand {
    /// Which uplink carries each family, and why.
    ///
    /// Per uplink: its state, carrier, gateway and transit probe results and
    /// the reasons of the decision, as a table, or with --json as the
    /// daemon's JSON status object.
    Status {
        /// Print the JSON status instead of a table.
        #[arg(long, conflicts_with = "verbose")]
        json: bool,
        /// One block per uplink with every field: reasons in full, each
        /// gateway and transit target with its RTT and loss.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Monitoring plugin (Nagios, Icinga): one line, exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN.
    ///
    /// OK when every family is on its preferred uplink and every uplink is
    /// healthy; WARNING after a failover (a family on a less preferred
    /// uplink) or while an uplink is degraded, unhealthy, drained or
    /// damped; CRITICAL in fail static, with no usable uplink for a family,
    /// when a failover lasts longer than --failover-critical-after, or when
    /// the daemon cannot be reached; UNKNOWN on a usage error. The RTT and
    /// loss thresholds apply to the uplink carrying each family (its gateway
    /// and the mean over its transit targets). Performance data after `|`:
    /// per uplink and family the gateway's and the transits' RTT and loss
    /// and the transits up, and per family the seconds since the last switch.
    Check {
        /// WARNING when an active uplink's gateway or transit RTT exceeds
        /// this many milliseconds.
        #[arg(long, value_name = "MS", value_parser = non_negative)]
        warn_rtt: Option<f64>,
        /// CRITICAL when an active uplink's gateway or transit RTT exceeds
        /// this many milliseconds.
        #[arg(long, value_name = "MS", value_parser = non_negative)]
        crit_rtt: Option<f64>,
        /// WARNING when an active uplink's gateway or transit loss exceeds
        /// this percentage.
        #[arg(long, value_name = "PERCENT", value_parser = percent)]
        warn_loss: Option<f64>,
        /// CRITICAL when an active uplink's gateway or transit loss exceeds
        /// this percentage.
        #[arg(long, value_name = "PERCENT", value_parser = percent)]
        crit_loss: Option<f64>,
        /// CRITICAL instead of WARNING once a family has been on a less
        /// preferred uplink this long (e.g. 30m, 2h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        failover_critical_after: Option<Duration>,
        /// CRITICAL when the daemon does not answer within this time.
        #[arg(short, long, value_name = "DURATION", default_value = "10s",
              value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print every state change as one JSON object per line, as it happens.
    ///
    /// Each object has seq, time and kind; a change of active uplink has kind
    /// active_changed with family, from, to and reason. A subscriber that
    /// falls too far behind is told so and disconnected.
    Events {
        /// First replay the recent events after this sequence number.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Print the Prometheus metrics (text exposition format).
    Metrics,
    /// Take an uplink out of use (maintenance) until undrained. Root only.
    ///
    /// Refused when it is the last usable uplink of a family (that family
    /// would fail static: its route stays on the drained uplink and nothing
    /// takes over), unless --force is given.
    Drain {
        /// Uplink name, as in the config.
        name: String,
        /// Drain even the last usable uplink of a family.
        #[arg(long)]
        force: bool,
    },
    /// Put a drained uplink back in use (it becomes preferred again only
    /// after the failback rule). Root only.
    Undrain {
        /// Uplink name, as in the config.
        name: String,
    },
    /// Probe every gateway and transit target now. Root only.
    Reprobe,
}

/// A finite number >= 0 (milliseconds).
fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a number >= 0")),
    }
}

/// A percentage, 0 to 100.
fn percent(s: &str) -> Result<f64, String> {
    match non_negative(s) {
        Ok(x) if x <= 100.0 => Ok(x),
        _ => Err(format!("{s:?} is not a percentage (0 to 100)")),
    }
}

/// The `uplinkd` command line, for generators (man page, completions).
pub fn uplinkd_command() -> clap::Command {
    UplinkdArgs::command()
}

/// The `uplinkctl` command line, for generators (man page, completions).
pub fn uplinkctl_command() -> clap::Command {
    UplinkctlArgs::command()
}
