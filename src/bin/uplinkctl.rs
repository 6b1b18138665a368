//! uplinkctl: ask a running uplinkd what it sees and did, and control it.
//! Thin: one request through [`uplinkd::client::Client`], the answer printed.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use uplinkd::cli::{UplinkctlArgs as Args, UplinkctlCommand as Command};
use uplinkd::client::Client;
use uplinkd::proto::StreamLine;
use uplinkd::status::{Reason, Status, TargetStatus, UplinkStatus};

/// Width of the whole table; the last column is cut to fit.
const WIDTH: usize = 100;

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

fn gateway_cell(g: &Option<TargetStatus>) -> String {
    match g {
        None => "-".into(),
        Some(g) => match (g.reachable, g.rtt_ms) {
            (Some(false), _) => "DEAD".into(),
            (_, Some(r)) => format!("{r:.2}ms {:.0}%", g.loss * 100.0),
            _ => "?".into(),
        },
    }
}

/// A reason in a few characters: `gateway4`, `quorum6(transit-a,transit-b)`,
/// `damped(60s)`; any other reason by its kind (taken from the wire form, so
/// a new reason needs no change here).
fn reason_code(r: &Reason) -> String {
    let v = serde_json::to_value(r).unwrap_or_default();
    let mut s = v["kind"].as_str().unwrap_or("?").to_string();
    match v["family"].as_str() {
        Some("ipv4") => s.push('4'),
        Some("ipv6") => s.push('6'),
        _ => {}
    }
    if let Some(list) = v["unreachable"].as_array() {
        let names: Vec<&str> = list.iter().filter_map(|n| n.as_str()).collect();
        s.push_str(&format!("({})", names.join(",")));
    }
    if let Some(ms) = v["remaining_ms"].as_u64() {
        s.push_str(&format!("({}s)", ms.div_ceil(1000)));
    }
    if let Some(b) = v["bond"].as_str() {
        s.push_str(&format!("({b})"));
    }
    s
}

fn state_cell(u: &UplinkStatus) -> String {
    let s = serde_json::to_value(u.state)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    if u.drained {
        "drained".into()
    } else {
        s
    }
}

/// The compact human table (at most [`WIDTH`] columns).
fn table(st: &Status) -> String {
    let mut out = String::new();
    let fam = |v: &Option<String>, fs: bool, decided: bool| {
        let name = v.clone().unwrap_or_else(|| "-".into());
        match (fs, decided) {
            (true, _) => format!("{name} (FAIL STATIC: no usable uplink)"),
            (false, false) => format!("{name} (undecided)"),
            _ => name,
        }
    };
    out.push_str(&cut(
        &format!(
            "active  ipv4: {}   ipv6: {}",
            fam(&st.active.ipv4, st.fail_static.ipv4, st.decided),
            fam(&st.active.ipv6, st.fail_static.ipv6, st.decided),
        ),
        WIDTH,
    ));
    out.push('\n');
    let head = format!(
        "{:<12} {:<10} {:<9} {:<7} {:<6} {:<11} {:<11} {:<8} ",
        "UPLINK", "IFACE", "STATE", "CARRIER", "ACTIVE", "GW4", "GW6", "TRANSITS"
    );
    out.push_str(&format!("{head}REASONS\n"));
    for u in &st.uplinks {
        let active: Vec<&str> = [
            (st.active.ipv4.as_deref() == Some(&u.name), "v4"),
            (st.active.ipv6.as_deref() == Some(&u.name), "v6"),
        ]
        .iter()
        .filter(|(a, _)| *a)
        .map(|(_, f)| *f)
        .collect();
        let up = u
            .transits
            .iter()
            .filter(|t| t.reachable == Some(true))
            .count();
        let reasons: Vec<String> = u.reasons.iter().map(reason_code).collect();
        let row = format!(
            "{:<12} {:<10} {:<9} {:<7} {:<6} {:<11} {:<11} {:<8} ",
            cut(&u.name, 12),
            cut(&u.interface, 10),
            state_cell(u),
            if u.carrier { "up" } else { "DOWN" },
            if active.is_empty() {
                "-".into()
            } else {
                active.join(",")
            },
            cut(&gateway_cell(&u.gateway.ipv4), 11),
            cut(&gateway_cell(&u.gateway.ipv6), 11),
            format!("{up}/{} up", u.transits.len()),
        );
        let room = WIDTH.saturating_sub(row.chars().count());
        let reasons = if reasons.is_empty() {
            "-".to_string()
        } else {
            reasons.join(" ")
        };
        out.push_str(&row);
        out.push_str(&cut(&reasons, room));
        out.push('\n');
    }
    for b in &st.bonds {
        let name = |m: &Option<String>| m.as_deref().unwrap_or("-").to_string();
        out.push_str(&cut(
            &format!(
                "bond {}: driver's active member {}, agent's choice {}",
                b.name,
                name(&b.active),
                name(&b.chosen)
            ),
            WIDTH,
        ));
        out.push('\n');
        for w in &b.warnings {
            out.push_str(&cut(&format!("  ! {w}"), WIDTH));
            out.push('\n');
        }
    }
    out
}

fn run(args: Args) -> Result<()> {
    let client = Client::new(args.socket);
    match args.command {
        Command::Status { json: true } => {
            let v = client.status_json()?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Status { json: false } => print!("{}", table(&client.status()?)),
        Command::Events { since } => {
            let mut out = std::io::stdout().lock();
            for line in client.events(since)? {
                let (text, missed) = match line? {
                    StreamLine::Event(r) => (serde_json::to_string(&r)?, false),
                    StreamLine::Missed(m) => (serde_json::to_value(&m)?.to_string(), true),
                };
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    return Ok(()); // stdout closed (e.g. `| head`)
                }
                if missed {
                    bail!("uplinkd dropped this subscriber: it fell behind");
                }
            }
            bail!("uplinkd closed the event stream");
        }
        Command::Metrics => print!("{}", client.metrics()?),
        Command::Drain { name } => {
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
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uplinkctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
