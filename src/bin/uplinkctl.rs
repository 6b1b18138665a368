//! uplinkctl: ask a running uplinkd what it sees and did.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use uplinkd::status::Status;

#[derive(Parser, Debug)]
#[command(name = "uplinkctl", version, about = "Query and control a running uplinkd")]
struct Args {
    /// The daemon's socket ([agent] socket in its config).
    #[arg(short, long, default_value = "/run/uplinkd/uplinkd.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Which uplink carries each family, and why.
    Status {
        /// Print the JSON status instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print every state change as one JSON object per line, as it happens.
    Events,
}

fn connect(path: &PathBuf) -> Result<UnixStream> {
    let s = UnixStream::connect(path)
        .with_context(|| format!("connect to uplinkd at {}", path.display()))?;
    Ok(s)
}

fn request(path: &PathBuf, req: &str) -> Result<String> {
    let mut s = connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(req.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        bail!("uplinkd closed the connection without answering");
    }
    Ok(line)
}

fn table(st: &Status) -> String {
    let mut out = String::new();
    let fam = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "active: ipv4 {}{}  ipv6 {}{}\n",
        fam(&st.active.ipv4),
        if st.fail_static.ipv4 { " (FAIL STATIC)" } else { "" },
        fam(&st.active.ipv6),
        if st.fail_static.ipv6 { " (FAIL STATIC)" } else { "" },
    ));
    out.push_str(&format!(
        "{:<12} {:<10} {:<10} {:<7} {:<14} {:<14} {}\n",
        "UPLINK", "IFACE", "STATE", "CARRIER", "GW4 RTT/LOSS", "GW6 RTT/LOSS", "TRANSITS UP / REASONS"
    ));
    for u in &st.uplinks {
        let gw = |g: &Option<uplinkd::status::TargetStatus>| match g {
            None => "-".to_string(),
            Some(g) => match (g.reachable, g.rtt_ms) {
                (Some(false), _) => "DEAD".to_string(),
                (_, Some(r)) => format!("{r:.2}ms/{:.0}%", g.loss * 100.0),
                _ => "?".to_string(),
            },
        };
        let up = u.transits.iter().filter(|t| t.reachable == Some(true)).count();
        let reasons: Vec<String> = u
            .reasons
            .iter()
            .map(|r| serde_json::to_value(r).ok().and_then(|v| v.get("kind").and_then(|k| k.as_str().map(String::from))).unwrap_or_default())
            .collect();
        let state = format!("{:?}", u.state).to_lowercase();
        out.push_str(&format!(
            "{:<12} {:<10} {:<10} {:<7} {:<14} {:<14} {}/{} {}\n",
            u.name,
            u.interface,
            if u.drained { "drained".into() } else { state },
            if u.carrier { "up" } else { "DOWN" },
            gw(&u.gateway.ipv4),
            gw(&u.gateway.ipv6),
            up,
            u.transits.len(),
            reasons.join(",")
        ));
    }
    out
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Status { json } => {
            let line = request(&args.socket, r#"{"request":"status"}"#)?;
            let v: serde_json::Value = serde_json::from_str(&line).context("parse status")?;
            if let Some(e) = v.get("error") {
                bail!("uplinkd: {e}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let st: Status = serde_json::from_value(v).context("decode status")?;
                print!("{}", table(&st));
            }
        }
        Command::Events => {
            let mut s = connect(&args.socket)?;
            s.write_all(b"{\"request\":\"events\"}\n")?;
            let mut out = std::io::stdout().lock();
            for line in BufReader::new(s).lines() {
                let line = line?;
                writeln!(out, "{line}")?;
                out.flush()?;
            }
        }
    }
    Ok(())
}
