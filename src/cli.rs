//! The command lines of `uplinkd` and `uplinkctl`.
//!
//! They live in the library, not in the binaries, so that the man pages and
//! shell completions under `packaging/` are generated from the very
//! definitions the binaries parse (`tests/docs.rs` regenerates them and fails
//! when the committed files differ).

use std::path::PathBuf;

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
        #[arg(long)]
        json: bool,
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
    Drain {
        /// Uplink name, as in the config.
        name: String,
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

/// The `uplinkd` command line, for generators (man page, completions).
pub fn uplinkd_command() -> clap::Command {
    UplinkdArgs::command()
}

/// The `uplinkctl` command line, for generators (man page, completions).
pub fn uplinkctl_command() -> clap::Command {
    UplinkctlArgs::command()
}
