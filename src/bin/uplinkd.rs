//! uplinkd: thin binary; parse arguments, load config, set up logging and
//! the service manager protocol (sd_notify), call the library.
//!
//! Under systemd (`Type=notify`): READY=1 once the first netlink dump is read
//! and the first decision is applied; WATCHDOG=1 from the event loop when
//! `WATCHDOG_USEC` is set (every quarter of it, at least once a second);
//! STATUS= with the active uplinks; RELOADING=1 … READY=1 around a reload
//! (SIGHUP); STOPPING=1 on SIGTERM/SIGINT. Without `NOTIFY_SOCKET` these do
//! nothing.
//!
//! One instance per socket: before anything else it takes the socket's
//! claim (`<socket>.lock`, see `uplinkd::api::claim_socket`) and keeps it
//! for its life; while another instance holds it, it exits with status 1
//! naming that instance's pid, and touches neither routes nor socket.
//!
//! Logs go to the journal with structured fields when stderr is connected to
//! it (`JOURNAL_STREAM` names stderr and the journal socket exists), else
//! plain text on stderr. `UPLINKD_LOG` sets the filter (default `info`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use sd_notify::NotifyState;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use uplinkd::cli::UplinkdArgs as Args;
use uplinkd::config;

/// Where journald listens for structured log records.
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Where the logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogTarget {
    /// Structured records to journald (tracing-journald).
    Journald,
    /// Text lines on stderr.
    Stderr,
}

/// The journal when systemd connected stderr to it: `JOURNAL_STREAM`
/// ("device:inode") names the file stderr is (so a process that merely
/// inherited the variable and writes to a terminal logs text) and the
/// journal's socket exists. Text on stderr otherwise.
fn log_target(
    journal_stream: Option<&str>,
    stderr_dev_ino: Option<(u64, u64)>,
    journald_socket: &Path,
) -> LogTarget {
    let parsed = journal_stream.and_then(|s| {
        let (dev, ino) = s.trim().split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    match parsed {
        Some(js) if Some(js) == stderr_dev_ino && journald_socket.exists() => LogTarget::Journald,
        _ => LogTarget::Stderr,
    }
}

fn stderr_dev_ino() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    let st = nix::sys::stat::fstat(std::io::stderr().as_fd()).ok()?;
    Some((st.st_dev, st.st_ino))
}

fn init_logging() {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("UPLINKD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let js = std::env::var("JOURNAL_STREAM").ok();
    let target = log_target(js.as_deref(), stderr_dev_ino(), Path::new(JOURNALD_SOCKET));
    if target == LogTarget::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("uplinkd".into());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("uplinkd: journald unavailable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Send a notification to the service manager (no-op without NOTIFY_SOCKET).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// How often WATCHDOG=1 is sent: a quarter of the watchdog timeout, so a
/// delayed loop turn or two never trips it, and at least once a second.
fn watchdog_every(watchdog: Duration) -> Duration {
    (watchdog / 4).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// SIGHUP: re-read and validate the file; a bad one is logged with every
/// error and the running configuration stays; a good one goes to the loop,
/// which applies it as a difference (or refuses it, saying why).
async fn reload_on_hup(path: PathBuf, tx: mpsc::UnboundedSender<uplinkd::daemon::ReloadRequest>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "no SIGHUP handler: reload unavailable");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(m) = NotifyState::monotonic_usec_now() {
            states.push(m);
        }
        notify(&states);
        info!(config = %path.display(), "SIGHUP: reloading the configuration");
        let outcome = match config::load(&path) {
            Err(errors) => {
                for e in errors.iter() {
                    error!(
                        file = %e.origin,
                        line = e.line.unwrap_or(0),
                        key = %e.key,
                        "reload: invalid configuration: {e}"
                    );
                }
                Err(format!(
                    "{} error(s) in {}; the running configuration stays in force",
                    errors.len(),
                    path.display()
                ))
            }
            Ok(new) => {
                let (reply_tx, reply_rx) = oneshot::channel();
                if tx.send((new, reply_tx)).is_err() {
                    return;
                }
                match reply_rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        match &outcome {
            Ok(summary) => info!(changes = %summary, "reload applied"),
            Err(e) => error!(reason = %e, "reload refused"),
        }
        match &outcome {
            // The daemon re-sends the active uplinks' status line itself.
            Ok(_) => notify(&[NotifyState::Ready]),
            Err(e) => notify(&[
                NotifyState::Ready,
                NotifyState::Status(&format!("reload refused: {e}")),
            ]),
        }
    }
}

/// Exit status of `--check --live` when the file is valid but does not fit
/// this host (2 stays "the file is invalid").
const EXIT_HOST_PROBLEMS: u8 = 3;

/// `--check --live`: the (valid) configuration against this host's links,
/// addresses and routes; every problem on stderr, placed at its key. The
/// file is read again here, with the origins of its values, so that the
/// start path in `main` stays as it is.
fn check_live(path: &Path) -> ExitCode {
    let (config, origins) = match config::load_with_origins(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let host = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(uplinkd::netlink::host::read())
                .map_err(|e| e.to_string())
        });
    let host = match host {
        Ok(host) => host,
        Err(e) => {
            eprintln!("uplinkd: cannot read this host's links, addresses and routes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = config::live::check(&config, &origins, &host);
    if problems.is_empty() {
        println!(
            "{}: configuration is valid and fits this host",
            path.display()
        );
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    eprintln!(
        "{}: the configuration is valid, but {} problem(s) on this host (above) would keep uplinkd from working as configured",
        path.display(),
        problems.len()
    );
    ExitCode::from(EXIT_HOST_PROBLEMS)
}

/// `--cleanup`: the socket and table_base from the configuration when it
/// can be read, the defaults otherwise (a package's purge may run it after
/// the file is gone); see `uplinkd::cleanup`.
fn cleanup(path: &Path) -> ExitCode {
    let agent = if path.exists() {
        match config::load(path) {
            Ok(c) => c.agent,
            Err(e) => {
                let agent = config::AgentConfig::default();
                eprintln!("{e}");
                eprintln!(
                    "uplinkd: --cleanup goes on with the default socket {} and table_base {}",
                    agent.socket.display(),
                    agent.table_base
                );
                agent
            }
        }
    } else {
        config::AgentConfig::default()
    };
    match uplinkd::cleanup::cleanup(&agent.socket, agent.table_base) {
        Ok(report) => {
            println!("{report}");
            match report.errors.is_empty() {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            }
        }
        Err(e @ uplinkd::cleanup::CleanupError::Running(_)) => {
            eprintln!("uplinkd: --cleanup refused: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("uplinkd: --cleanup failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.cleanup {
        return cleanup(&args.config);
    }
    let config = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        if args.live {
            return check_live(&args.config);
        }
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging();
    // Before anything touches a route: one instance per socket, for life.
    let _claim = match uplinkd::api::claim_socket(&config.agent.socket) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "uplinkd not started");
            eprintln!("uplinkd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("uplinkd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // WATCHDOG=1 from the loop, only when the service manager asked for it.
    let on_alive: Option<Box<dyn FnMut() + Send>> = sd_notify::watchdog_enabled().map(|w| {
        let every = watchdog_every(w);
        let mut last_ping: Option<Instant> = None;
        Box::new(move || {
            let now = Instant::now();
            if last_ping.is_none_or(|t| now.duration_since(t) >= every) {
                last_ping = Some(now);
                notify(&[NotifyState::Watchdog]);
            }
        }) as Box<dyn FnMut() + Send>
    });
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let opts = uplinkd::daemon::RunOptions {
        on_ready: Some(Box::new(|| notify(&[NotifyState::Ready]))),
        on_alive,
        on_status: Some(Box::new(|s: &str| notify(&[NotifyState::Status(s)]))),
        reload: Some(reload_rx),
    };
    let path = args.config.clone();
    let result = rt.block_on(async {
        let _reload = tokio::spawn(reload_on_hup(path, reload_tx));
        // The signals are awaited by a task of their own: the loop polls
        // its shutdown future on every wake-up, and a oneshot is cheaper to
        // poll than two signal streams.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let _signals = tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            notify(&[NotifyState::Stopping]);
            let _ = stop_tx.send(());
        });
        let shutdown = async {
            let _ = stop_rx.await;
        };
        uplinkd::daemon::run(config, shutdown, opts).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "uplinkd failed");
            eprintln!("uplinkd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_only_when_stderr_is_the_journal_stream_and_the_socket_exists() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
        let missing = dir.path().join("missing");
        let me = Some((64769, 1234));
        assert_eq!(
            log_target(Some("64769:1234"), me, &sock),
            LogTarget::Journald
        );
        // Set, but stderr is something else (inherited into a terminal).
        assert_eq!(log_target(Some("64769:99"), me, &sock), LogTarget::Stderr);
        // Not set.
        assert_eq!(log_target(None, me, &sock), LogTarget::Stderr);
        // Set and matching, but no journald listening there.
        assert_eq!(
            log_target(Some("64769:1234"), me, &missing),
            LogTarget::Stderr
        );
        // Garbage.
        assert_eq!(log_target(Some("nonsense"), me, &sock), LogTarget::Stderr);
        assert_eq!(log_target(Some("1:2"), None, &sock), LogTarget::Stderr);
    }

    #[test]
    fn journal_stream_of_this_process_is_recognised() {
        // What systemd does: JOURNAL_STREAM = stderr's device and inode.
        let (dev, ino) = stderr_dev_ino().expect("stderr is open");
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
        assert_eq!(
            log_target(Some(&format!("{dev}:{ino}")), stderr_dev_ino(), &sock),
            LogTarget::Journald
        );
    }

    #[test]
    fn watchdog_pings_four_times_per_timeout_and_at_least_every_second() {
        assert_eq!(
            watchdog_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        // At least once a second, also with a long timeout.
        assert_eq!(
            watchdog_every(Duration::from_secs(20)),
            Duration::from_secs(1)
        );
    }
}
