//! The netlink adapters. They turn kernel state into events and actions into
//! kernel requests, and decide nothing.
//!
//! - [`monitor`]: the event source (multicast subscription, initial dump,
//!   re-dump after every overrun).
//! - [`carrier`]: the fast carrier poller (RTM_GETLINK on a blocking socket in
//!   its own thread), because the kernel's linkwatch may deliver link events
//!   up to 1 s late on a busy host while `IFLA_CARRIER` in a GETLINK answer is
//!   the live `netif_carrier_ok()`.
//! - [`actuate`]: idempotent route, rule and neighbour changes.
//! - [`sysctl`]: the per-uplink sysctls.
//! - [`owned`]: the routes and rules uplinkd made (protocol 85), found and
//!   removed without its configuration (`uplinkd --cleanup`).
//! - [`host`]: a read-only dump of links, addresses and main-table routes
//!   for `uplinkd --check --live`.
//! - [`bond`]: the bond poller (active member, settings, members) and the
//!   active-member actuator.
//!
//! Network namespaces belong to threads: every socket here is opened in the
//! network namespace of the thread that creates it (see each constructor).

use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{ErrorMessage, NLM_F_ACK_TLVS, NLM_F_CAPPED};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;

use crate::config::Family;

pub mod actuate;
pub mod bond;
pub mod carrier;
pub mod counters;
pub mod host;
pub mod monitor;
pub mod owned;
mod request;
pub mod sysctl;

pub use actuate::{Actuator, RTPROT_UPLINKD};
pub use bond::{read_bond, set_active, spawn_bond_actuator, spawn_bond_poller, BondSample};
pub use carrier::{
    spawn_carrier_poller, spawn_carrier_poller_hot, CarrierSample, ReplyWatch, TickHook,
};
pub use monitor::{spawn_monitor, spawn_monitor_with, MonitorHandle, MonitorOptions};
pub use sysctl::{set_sysctl, uplink_sysctls, Originals};

/// Default bound on every netlink request (and on the gap between two parts
/// of a dump answer). The kernel answers in microseconds; 2 s only fires when
/// something is badly wrong, and then we want to know rather than hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// An error at the netlink boundary. Every message names the object and the
/// operation first, then the cause, e.g.
/// `replace ipv4 default route via 198.18.1.1 dev eth0 metric 10 table 254: No such device`.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request (an NLMSG_ERROR with a non-zero code).
    #[error("{op}: {}", describe_errno(*errno, detail.as_deref()))]
    Kernel {
        op: String,
        /// Positive errno (e.g. 19 = ENODEV).
        errno: i32,
        /// The kernel's extended-ack text, when it sent one.
        detail: Option<String>,
    },
    /// A socket or file operation failed locally.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// No (complete) answer within the request timeout.
    #[error("{op}: no answer within {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    /// The netlink connection task is gone.
    #[error("{op}: netlink connection closed")]
    Closed { op: String },
    /// The caller asked for something we refuse to send (e.g. metric 0).
    #[error("{op}: {reason}")]
    Invalid { op: String, reason: String },
    /// The kernel answered something we did not expect.
    #[error("{op}: unexpected answer: {detail}")]
    Unexpected { op: String, detail: String },
}

impl NetlinkError {
    /// The kernel's errno, for `Kernel` errors and for `Io` errors that carry one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, NetlinkError::Timeout { .. })
    }

    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        NetlinkError::Io {
            op: op.into(),
            source,
        }
    }

    /// From an NLMSG_ERROR answer; `flags` are the flags of that answer's
    /// netlink header (they say whether extended-ack TLVs follow).
    pub(crate) fn kernel(op: impl Into<String>, err: &ErrorMessage, flags: u16) -> Self {
        NetlinkError::Kernel {
            op: op.into(),
            errno: err.raw_code().saturating_abs(),
            detail: ext_ack_message(err, flags),
        }
    }
}

/// "No such device" (+ " (kernel: <extack>)"), without Rust's "(os error N)".
fn describe_errno(errno: i32, detail: Option<&str>) -> String {
    let desc = nix::errno::Errno::from_raw(errno).desc();
    match detail {
        Some(d) => format!("{desc} ({d})"),
        None => desc.to_string(),
    }
}

/// The NLMSGERR_ATTR_MSG string of an extended ack (include/uapi/linux/netlink.h:
/// with NETLINK_EXT_ACK the kernel appends TLVs after the echoed request, and
/// sets NLM_F_ACK_TLVS; with NETLINK_CAP_ACK, NLM_F_CAPPED says only the
/// request's 16-byte header was echoed).
fn ext_ack_message(err: &ErrorMessage, flags: u16) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let bytes = &err.header;
    if bytes.len() < 16 {
        return None;
    }
    let mut off = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(bytes[0..4].try_into().ok()?) as usize;
        (len + 3) & !3
    };
    while off + 4 <= bytes.len() {
        let nla_len = u16::from_ne_bytes([bytes[off], bytes[off + 1]]) as usize;
        let nla_type = u16::from_ne_bytes([bytes[off + 2], bytes[off + 3]]) & 0x3fff;
        if nla_len < 4 || off + nla_len > bytes.len() {
            return None;
        }
        if nla_type == NLMSGERR_ATTR_MSG {
            let v = &bytes[off + 4..off + nla_len];
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            return Some(String::from_utf8_lossy(&v[..end]).into_owned());
        }
        off += (nla_len + 3) & !3;
    }
    None
}

/// One interface, as a link dump or RTM_NEWLINK event describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// IFF_UP: the administrator's (or our) `ip link set up`.
    pub admin_up: bool,
    /// IFLA_CARRIER (netif_carrier_ok; the kernel reports 0 when the device
    /// is not running, and we also force false when not admin up).
    pub carrier: bool,
    /// IFLA_OPERSTATE == IF_OPER_UP (RFC 2863 operational state).
    pub oper_up: bool,
}

/// One route, as a route dump or RTM_NEWROUTE/RTM_DELROUTE event describes it.
/// Only the fields the agent reasons about; multipath routes have no single
/// gateway/oif and show `None` for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub family: Family,
    /// RTA_TABLE when present (tables > 255), else rtm_table.
    pub table: u32,
    pub dst_len: u8,
    /// RTA_PRIORITY (0 when absent).
    pub metric: u32,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// rtm_protocol; our own routes carry [`RTPROT_UPLINKD`].
    pub protocol: u8,
}

/// What the monitor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A link exists with this state (dump entry or RTM_NEWLINK).
    Link(LinkInfo),
    /// A link is gone (RTM_DELLINK, or moved to another namespace).
    LinkRemoved { ifindex: u32, name: String },
    /// A route (any table, any prefix; the consumer filters).
    Route { route: RouteInfo, removed: bool },
    /// A local address of an interface (dump entry, RTM_NEWADDR or
    /// RTM_DELADDR). `usable`: it exists and may be a route's preferred
    /// source (an IPv6 address still in duplicate address detection, or
    /// that failed it, may not: the kernel refuses it as RTA_PREFSRC).
    Address {
        ifindex: u32,
        address: IpAddr,
        usable: bool,
    },
    /// A routing policy rule was deleted (RTM_DELRULE): its table (FRA_TABLE,
    /// else the header's) and protocol (FRA_PROTOCOL, 0 when absent).
    RuleRemoved { table: u32, protocol: u8 },
    /// Events may have been lost (receive buffer overrun, or a message we
    /// could not decode). Everything known so far may be stale; a full
    /// re-dump follows and ends with `DumpDone`.
    Resync,
    /// A complete dump of links, addresses and routes (v4 and v6) was just
    /// delivered.
    DumpDone,
    /// The monitor stopped for good (its socket failed); no more events
    /// will come from it. The text says why.
    Failed { error: String },
}

/// Family of a route message, if it is one we care about.
pub(crate) fn family_of(af: AddressFamily) -> Option<Family> {
    match af {
        AddressFamily::Inet => Some(Family::V4),
        AddressFamily::Inet6 => Some(Family::V6),
        _ => None,
    }
}

pub(crate) fn address_family(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

pub(crate) fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut name = String::new();
    let mut carrier_attr = None;
    let mut oper_up = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Carrier(c) => carrier_attr = Some(*c != 0),
            LinkAttribute::OperState(s) => oper_up = *s == State::Up,
            _ => {}
        }
    }
    let admin_up = msg.header.flags.contains(LinkFlags::Up);
    // IFLA_CARRIER exists since Linux 2.6.31; fall back to IFF_LOWER_UP.
    let carrier = carrier_attr.unwrap_or(msg.header.flags.contains(LinkFlags::LowerUp));
    LinkInfo {
        ifindex: msg.header.index,
        name,
        admin_up,
        carrier: admin_up && carrier,
        oper_up,
    }
}

/// The local address an address message is about, with whether it is
/// usable as a preferred source (see [`NetEvent::Address`]); `removed`
/// for RTM_DELADDR.
pub(crate) fn address_event(msg: &AddressMessage, removed: bool) -> Option<NetEvent> {
    family_of(msg.header.family)?;
    let mut local = None;
    let mut prefix = None;
    let mut flags = AddressFlags::empty();
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => prefix = Some(*a),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    // IFA_LOCAL is the local address (IFA_ADDRESS the peer's on a
    // point-to-point link); IPv6 sends only IFA_ADDRESS.
    let address = local.or(prefix)?;
    let not_yet = AddressFlags::Tentative | AddressFlags::Dadfailed;
    // The header's 8-bit flags too: IFA_FLAGS is absent on old kernels.
    let header_not_yet = msg
        .header
        .flags
        .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed);
    Some(NetEvent::Address {
        ifindex: msg.header.index,
        address,
        usable: !removed && !flags.intersects(not_yet) && !header_not_yet,
    })
}

pub(crate) fn route_info(msg: &RouteMessage) -> Option<RouteInfo> {
    let family = family_of(msg.header.address_family)?;
    let mut table = u32::from(msg.header.table);
    let mut metric = 0;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    Some(RouteInfo {
        family,
        table,
        dst_len: msg.header.destination_prefix_length,
        metric,
        gateway,
        oif,
        protocol: msg.header.protocol.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_message_names_object_and_cause() {
        let e = NetlinkError::Kernel {
            op: "replace ipv4 default route via 198.18.1.1 dev eth0 metric 10".into(),
            errno: 19,
            detail: None,
        };
        assert_eq!(
            e.to_string(),
            "replace ipv4 default route via 198.18.1.1 dev eth0 metric 10: No such device"
        );
        let e = NetlinkError::Kernel {
            op: "x".into(),
            errno: 101,
            detail: Some("Nexthop has invalid gateway".into()),
        };
        assert_eq!(
            e.to_string(),
            "x: Network is unreachable (Nexthop has invalid gateway)"
        );
    }

    #[test]
    fn ext_ack_is_parsed_from_capped_answer() {
        // Echoed 16-byte request header, then NLMSGERR_ATTR_MSG "bad gw\0".
        let mut h = vec![0u8; 16];
        h[0..4].copy_from_slice(&40u32.to_ne_bytes());
        let text = b"bad gw\0";
        h.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        h.extend_from_slice(&1u16.to_ne_bytes());
        h.extend_from_slice(text);
        h.push(0);
        let mut err = ErrorMessage::default();
        err.code = std::num::NonZeroI32::new(-22);
        err.header = h;
        assert_eq!(
            ext_ack_message(&err, NLM_F_ACK_TLVS | NLM_F_CAPPED).as_deref(),
            Some("bad gw")
        );
        assert_eq!(ext_ack_message(&err, 0), None);
    }
}
