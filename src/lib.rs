//! uplinkd: keeps a server's default route (and bond member) on a healthy uplink.
//!
//! Shape: a pure [`core`] between thin adapters ([`netlink`], [`probe`],
//! [`api`]), joined by one event loop in [`daemon`].

pub mod config;
pub mod core;
pub mod status;
pub mod api;
pub mod daemon;
pub mod lab;
pub mod netlink;
pub mod probe;
