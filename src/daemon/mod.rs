//! The one event loop: adapters turn I/O into core events and core actions
//! into I/O. `run(config, shutdown, options)` is used by `main` and by the
//! tests.
//!
//! A `Daemon` (`state.rs`) owns the state and has one method per source
//! of input (carrier samples, netlink events, probe replies and timers, bond
//! samples, actuation results, reloads, API requests); the loop below waits
//! for the first input and hands it to its method. Every input is handled
//! at the CLOCK_MONOTONIC instant it happened (`clock.rs`). Route changes run
//! in order in a task of their own (`actuation.rs`), which never waits for
//! time to pass: a failed change is checked again at a deadline the loop
//! keeps (`retry.rs`), so no change ever queues behind a retry.

use std::future::Future;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::config::Config;
use crate::netlink::NetlinkError;

mod actuation;
mod clock;
mod persist;
mod poller;
mod retry;
mod state;

use clock::Mono;
use state::Daemon;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("netlink: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("status socket {path}: {source}")]
    Api {
        path: String,
        source: std::io::Error,
    },
    /// A configured service address (`agent.source4`/`source6`) is not on
    /// the host.
    #[error("{0}")]
    Source(String),
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A new, already validated configuration, and where to answer: what
/// changed, or why it was refused.
pub type ReloadRequest = (Config, oneshot::Sender<Result<String, String>>);

/// A status-line callback (see `RunOptions::on_status`).
pub type StatusFn = Box<dyn FnMut(&str) + Send>;

/// Options the binary (or a test) may set beyond the config.
#[derive(Default)]
pub struct RunOptions {
    /// Called once, after the first full netlink dump, when the first
    /// decision for every family has been made and applied to the kernel.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Called with a one-line summary ("ipv4 via primary, ipv6 via
    /// secondary") at ready and whenever the active uplinks change.
    pub on_status: Option<StatusFn>,
    /// Called on every loop turn (at least every second): a watchdog ping.
    pub on_alive: Option<Box<dyn FnMut() + Send>>,
    /// New, already validated configurations (SIGHUP): applied as a
    /// difference; the answer says what changed or why it was refused.
    pub reload: Option<mpsc::UnboundedReceiver<ReloadRequest>>,
}

/// Run the agent until `shutdown` completes. Must be called on a tokio
/// runtime on a thread in the server's network namespace.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    opts: RunOptions,
) -> Result<(), DaemonError> {
    let (mut daemon, mut inputs) = Daemon::start(config, opts).await?;
    tokio::pin!(shutdown);
    loop {
        let plan = daemon.plan();
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(s) = inputs.carrier.recv() => daemon.on_carrier(s, &mut inputs.carrier),
            _ = inputs.timer.wait(plan.wake) => daemon.on_timer(Mono::now()),
            _ = inputs.watch.missing(), if plan.watching => daemon.on_timer(Mono::now()),
            _ = inputs.counters.woken() => daemon.on_counters(Mono::now()),
            _ = inputs.echo.woken() => daemon.on_echo(Mono::now()),
            Some(u) = inputs.unreach.recv() => daemon.on_unreachable(u),
            Some(b) = inputs.bond.recv() => daemon.on_bond(b, Mono::now()),
            Some(ev) = inputs.net.recv() => daemon.on_net(ev, Mono::now()),
            Some(d) = inputs.done.recv() => daemon.on_done(d, Mono::now()),
            Some(r) = next_reload(&mut inputs.reload) => daemon.on_reload(r, Mono::now()),
            Some(req) = inputs.api.recv() => daemon.on_api(req, Mono::now()),
        }
        daemon.end_turn();
    }
    let (ticks, echoes, mean) = daemon.echo_cost();
    info!(
        ticks,
        echoes,
        mean_tick = ?mean,
        "forwarding-plane echo streams: cost on the carrier poller's tick"
    );
    let (readings, mean) = daemon.counter_cost();
    info!(
        readings,
        mean_reading = ?mean,
        "interface counters: cost on the carrier poller's tick"
    );
    info!("uplinkd stopping; routes are left as they are");
    Ok(())
}

/// The next reload request, or never when there is no reload channel.
async fn next_reload(
    rx: &mut Option<mpsc::UnboundedReceiver<ReloadRequest>>,
) -> Option<ReloadRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// For callers without a runtime: build a current-thread runtime and run.
pub fn run_blocking(
    config: Config,
    shutdown: impl Future<Output = ()>,
    opts: RunOptions,
) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(config, shutdown, opts))
}
