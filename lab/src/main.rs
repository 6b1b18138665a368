//! uplink-lab: builds the uplinkd lab (a dual-homed server, two routers,
//! four transits and a sink, all in network namespaces) and tears it down
//! again, also on Ctrl-C, SIGTERM or SIGHUP.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use uplink_lab::{self as lab, Lab, LabSpec, Node, Termination, Uplink, TRANSITS};

#[derive(Parser)]
#[command(
    name = "uplink-lab",
    about = "The uplinkd lab: topology, demo and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum RouteVia {
    None,
    Primary,
    Secondary,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the lab, print how to enter it, and keep it until Ctrl-C.
    Up {
        /// Give the server a default route (normally uplinkd installs it).
        #[arg(long, value_enum, default_value = "none")]
        default_route: RouteVia,
        /// Skip the reachability check after building.
        #[arg(long)]
        no_check: bool,
    },
    /// Delete what crashed labs left behind.
    Down {
        /// Every lab namespace whose process no longer exists.
        #[arg(long, required = true)]
        all_stale: bool,
    },
    /// Build the lab, run uplinkd and play the failure scenarios (under two
    /// minutes): carrier loss, failback, dead gateway, dead upstream, fail
    /// static; prints a timeline and the outage of every step.
    Demo {
        /// The uplinkd binary (default: the one next to this executable,
        /// built first if missing or older).
        #[arg(long, value_name = "PATH")]
        uplinkd: Option<std::path::PathBuf>,
    },
    /// Measure failover outage (and CPU, RSS, false switches, start-up)
    /// against the kernel's own fallback and FRR; prints a table. A full run
    /// (20 trials) takes about 65 minutes (25 of them the soak rows);
    /// --trials, --soak and --only shorten
    /// it. Run it on a quiet machine: other work skews every figure.
    Bench {
        /// Trials per failure kind and address family.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Also write the results as JSON to PATH.
        #[arg(long, value_name = "PATH")]
        json: Option<std::path::PathBuf>,
        /// Also write the results table as Markdown to PATH.
        #[arg(long, value_name = "PATH")]
        markdown: Option<std::path::PathBuf>,
        /// Run only these sections (comma-separated): first-decision, idle,
        /// idle-breakdown, carrier-quiet, carrier-busy, gateway, forwarding, upstream,
        /// failback, drain, false-switches, round-trip, suspicion, kernel, frr,
        /// and the soak rows echo-loss, policing, probe-load, tcp-loss.
        #[arg(long, value_delimiter = ',', value_name = "SECTIONS")]
        only: Vec<String>,
        /// Install Debian's frr package with apt-get for the FRR comparator
        /// if missing (on a host running systemd this also enables its frr
        /// service, with the package's default config: zebra and staticd, no
        /// routes; the comparator runs its own daemons in the lab).
        #[arg(long)]
        install_frr: bool,
        /// The uplinkd binary (default: the one next to this executable).
        #[arg(long, value_name = "PATH")]
        uplinkd: Option<std::path::PathBuf>,
        /// Also measure another daemon in the same run, side by side:
        /// LABEL=BINARY, or LABEL=BINARY+OVERRIDES.toml to run it with extra
        /// config (or LABEL=+OVERRIDES.toml for the main binary with another
        /// config). Repeatable. Sections run variant after variant, each
        /// failure kind for every variant before the next kind. A binary
        /// from before agent.source4/source6 needs
        /// +bench/no-service-source.toml.
        #[arg(long, value_name = "LABEL=BINARY[+TOML]")]
        variant: Vec<String>,
        /// Length of the echo-loss and tcp-loss soaks in seconds (default
        /// 600); also caps policing (60 s per rate) and probe-load (20 s).
        /// Every variant soaks in a lab of its own, at the same time.
        #[arg(long, value_name = "SECONDS")]
        soak: Option<u64>,
    },
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the mask and the
    // signals wait for us instead of killing the process mid-build.
    let term = match Termination::block() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("uplink-lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Up {
            default_route,
            no_check,
        } => up(&term, default_route, no_check),
        Cmd::Down { all_stale } => down(all_stale),
        Cmd::Demo { uplinkd } => with_cancel(term, |c| {
            lab::demo::run_demo(&lab::demo::DemoOpts { uplinkd }, c)
                .map(|_| ())
                .context("demo")
        }),
        Cmd::Bench {
            trials,
            json,
            markdown,
            only,
            install_frr,
            uplinkd,
            variant,
            soak,
        } => with_cancel(term, |c| {
            let opts = lab::bench::BenchOpts {
                trials,
                json,
                markdown,
                install_frr,
                uplinkd,
                only,
                variants: variant,
                soak: soak.map(std::time::Duration::from_secs),
            };
            lab::bench::run_bench(&opts, c).map(|_| ()).context("bench")
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uplink-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f` while a thread turns Ctrl-C / SIGTERM / SIGHUP into a
/// cancellation that every wait of the demo and the bench checks, so they
/// stop within a fraction of a second and drop (tear down) their lab.
fn with_cancel(
    term: Termination,
    f: impl FnOnce(&lab::demo::Cancel) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cancel = lab::demo::Cancel::new();
    let c2 = cancel.clone();
    // Detached: it only waits for a signal; the process exits after `f`.
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = term.wait();
            eprintln!("\nuplink-lab: {sig}: stopping and tearing the lab down");
            c2.cancel();
        });
    f(&cancel)
}

fn up(term: &Termination, route: RouteVia, no_check: bool) -> anyhow::Result<()> {
    let spec = LabSpec {
        server_default_route: match route {
            RouteVia::None => None,
            RouteVia::Primary => Some(Uplink::Primary),
            RouteVia::Secondary => Some(Uplink::Secondary),
        },
        check_reachability: !no_check,
        ..LabSpec::default()
    };
    eprintln!("uplink-lab: building the lab...");
    let started = std::time::Instant::now();
    let lab = Lab::build(&spec).context("build the lab")?;
    if let Some(sig) = term.poll() {
        eprintln!("uplink-lab: {sig} during build, cleaning up");
        return lab.destroy().context("clean up");
    }
    println!("lab up in {:.0?}; namespaces:", started.elapsed());
    let mut rows = vec![
        (
            "server (eth0 primary, eth1 secondary)",
            lab.ns(Node::Server),
        ),
        ("router a (primary)", lab.ns(Node::Router(Uplink::Primary))),
        (
            "router b (secondary)",
            lab.ns(Node::Router(Uplink::Secondary)),
        ),
        ("inet (sink 198.19.1.1, 2001:db8:fe::1)", lab.ns(Node::Inet)),
    ];
    let transit_labels: Vec<String> = (0..TRANSITS)
        .map(|i| {
            format!(
                "{} ({}, {})",
                lab::TRANSIT_NAMES[i],
                lab::transit_target(i, lab::Family::V4),
                lab::transit_target(i, lab::Family::V6)
            )
        })
        .collect();
    for (i, label) in transit_labels.iter().enumerate() {
        rows.push((label.as_str(), lab.ns(Node::Transit(i))));
    }
    for (label, ns) in &rows {
        println!("  {ns:<22} {label}");
    }
    let srv = lab.server_ns();
    println!();
    println!("enter the server:   ip netns exec {srv} bash");
    println!("look at it:         ip -n {srv} addr; ip -n {srv} route");
    println!(
        "uplinkd config:     {}",
        lab.write_config("").context("write config")?.display()
    );
    println!(
        "run the daemon:     ip netns exec {srv} uplinkd --config {}",
        lab.dir().join("uplinkd.toml").display()
    );
    println!();
    println!("Ctrl-C tears the lab down.");
    let sig = term.wait();
    eprintln!("uplink-lab: {sig}, tearing down");
    lab.destroy().context("clean up")?;
    eprintln!("uplink-lab: done");
    Ok(())
}

fn down(all_stale: bool) -> anyhow::Result<()> {
    anyhow::ensure!(all_stale, "nothing to do: pass --all-stale");
    let r = lab::netns::cleanup_stale();
    for n in &r.deleted {
        println!("deleted namespace {n}");
    }
    for d in &r.dirs_removed {
        println!("removed {}", d.display());
    }
    for n in &r.alive {
        println!("kept {n} (its lab is still running)");
    }
    if r.deleted.is_empty() && r.dirs_removed.is_empty() {
        println!("nothing stale");
    }
    for e in &r.errors {
        eprintln!("uplink-lab: {e}");
    }
    anyhow::ensure!(r.errors.is_empty(), "{} cleanup error(s)", r.errors.len());
    Ok(())
}
