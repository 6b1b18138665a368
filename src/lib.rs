//! uplinkd: keeps a server's default route (and bond member) on a healthy uplink.
//!
//! Shape: a pure [`core`] between thin adapters ([`netlink`], [`probe`],
//! [`api`]), joined by one event loop in [`daemon`].

pub mod api;
pub mod bond;
pub mod config;
pub mod core;
pub mod daemon;
pub mod hooks;
pub mod lab;
pub mod metrics;
pub mod netlink;
pub mod probe;
pub mod status;
