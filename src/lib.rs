//! uplinkd: keeps a server's default route (and bond member) on a healthy uplink.
//!
//! Shape: the pure engine of `uplinkd-core` (re-exported as [`core`], with
//! its [`status`] types) between thin adapters ([`netlink`], [`probe`],
//! [`api`]), joined by one event loop in [`daemon`]. [`client`] is the one
//! client of the daemon's socket (`uplinkctl`, the lab and the tests).

pub use uplinkd_core as core;
pub use uplinkd_core::{proto, status};

pub mod api;
pub mod cleanup;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod hooks;
pub mod metrics;
pub mod netlink;
pub mod probe;
mod task;
