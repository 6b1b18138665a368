//! What uplinkd owns in the kernel's routing state, found without its
//! configuration: every route and rule it installs carries protocol 85
//! ([`RTPROT_UPLINKD`]), and nothing else does. Used by `uplinkd --cleanup`.
//!
//! Each delete names the object exactly as it was dumped *and* protocol 85,
//! so the kernel itself refuses to delete anything of another owner (IPv4
//! `fib_table_delete` and IPv6 `ip6_route_del` skip a route whose protocol
//! differs from a non-zero one in the request; `fib_nl_delrule` does the same
//! for a rule's FRA_PROTOCOL).
//!
//! Namespace: the socket is opened by [`Owned::open`] in the network
//! namespace of the calling thread.

use std::fmt;
use std::net::IpAddr;

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::AsyncSocket;
use rtnetlink::Handle;

use super::actuate::{protocol_name, RTPROT_UPLINKD};
use super::request::{self, Dump};
use super::{address_family, family_of, NetlinkError, REQUEST_TIMEOUT};
use crate::config::Family;

/// The kernel's main routing table (RT_TABLE_MAIN, include/uapi/linux/rtnetlink.h).
const RT_TABLE_MAIN: u32 = 254;

/// A route of ours, as dumped.
#[derive(Debug, Clone)]
pub struct OwnedRoute {
    pub family: Family,
    pub table: u32,
    pub destination: Option<IpAddr>,
    pub dst_len: u8,
    pub metric: u32,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    msg: RouteMessage,
}

impl fmt::Display for OwnedRoute {
    /// As `ip route` prints it: `ipv4 default via 198.18.1.1 dev eth0 table
    /// 1000 metric 10 proto uplinkd`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.family)?;
        match (self.destination, self.dst_len) {
            (_, 0) => write!(f, "default")?,
            (Some(d), l) => write!(f, "{d}/{l}")?,
            (None, l) => write!(f, "?/{l}")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(i) = self.oif {
            write!(f, " dev {}", ifname(i))?;
        }
        match self.table {
            RT_TABLE_MAIN => write!(f, " table main")?,
            t => write!(f, " table {t}")?,
        }
        write!(
            f,
            " metric {} proto {}",
            self.metric,
            protocol_name(RTPROT_UPLINKD)
        )
    }
}

/// A rule of ours, as dumped.
#[derive(Debug, Clone)]
pub struct OwnedRule {
    pub family: Family,
    pub priority: u32,
    pub fwmark: Option<u32>,
    pub table: u32,
    msg: RuleMessage,
}

impl fmt::Display for OwnedRule {
    /// As `ip rule` prints it: `ipv4 rule 1000: fwmark 0x3e8 lookup 1000
    /// proto uplinkd`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}:", self.family, self.priority)?;
        if let Some(m) = self.fwmark {
            write!(f, " fwmark {m:#x}")?;
        }
        write!(
            f,
            " lookup {} proto {}",
            self.table,
            protocol_name(RTPROT_UPLINKD)
        )
    }
}

/// The name of interface `ifindex` in the calling thread's namespace, or
/// `if<N>` when it has none (any more).
fn ifname(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname(3) requires; on
    // success it holds a NUL-terminated name.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: NUL-terminated within buf (see above).
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// An rtnetlink connection for finding and removing uplinkd's objects.
pub struct Owned {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Owned {
    /// Open the socket (in the calling thread's network namespace) on the
    /// current tokio runtime.
    pub async fn open() -> Result<Owned, NetlinkError> {
        let (mut conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::io("open rtnetlink socket for the cleanup", e))?;
        let sock = conn.socket_mut().socket_mut();
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        let conn = tokio::spawn(conn);
        Ok(Owned { handle, conn })
    }

    /// Every route of `family` with protocol 85 in the main table or in a
    /// table numbered `min_table` or higher.
    pub async fn routes(
        &self,
        family: Family,
        min_table: u32,
    ) -> Result<Vec<OwnedRoute>, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = address_family(family);
        let answers = Dump::start(
            &self.handle,
            RouteNetlinkMessage::GetRoute(msg),
            REQUEST_TIMEOUT,
            format!("dump {family} routes"),
        )?
        .collect()
        .await?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => owned_route(r),
                _ => None,
            })
            .filter(|r| r.family == family && is_ours_table(r.table, min_table))
            .collect())
    }

    /// Every rule of `family` with protocol 85.
    pub async fn rules(&self, family: Family) -> Result<Vec<OwnedRule>, NetlinkError> {
        let mut msg = RuleMessage::default();
        msg.header.family = address_family(family);
        let answers = Dump::start(
            &self.handle,
            RouteNetlinkMessage::GetRule(msg),
            REQUEST_TIMEOUT,
            format!("dump {family} rules"),
        )?
        .collect()
        .await?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => owned_rule(r),
                _ => None,
            })
            .filter(|r| r.family == family)
            .collect())
    }

    /// Delete `route` (and only it: protocol 85 is part of the request).
    /// Gone already = `Ok(false)`.
    pub async fn delete_route(&self, route: &OwnedRoute) -> Result<bool, NetlinkError> {
        let src = &route.msg;
        let mut msg = RouteMessage::default();
        msg.header = src.header.clone();
        msg.header.protocol = RouteProtocol::from(RTPROT_UPLINKD);
        // RT_SCOPE_NOWHERE: "any scope" for deletes (iproute2 does the same).
        msg.header.scope = RouteScope::NoWhere;
        msg.attributes = src
            .attributes
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    RouteAttribute::Destination(_)
                        | RouteAttribute::Gateway(_)
                        | RouteAttribute::Oif(_)
                        | RouteAttribute::Priority(_)
                        | RouteAttribute::Table(_)
                )
            })
            .cloned()
            .collect();
        gone_is_false(
            request::ack(
                &self.handle,
                RouteNetlinkMessage::DelRoute(msg),
                0,
                REQUEST_TIMEOUT,
                &format!("delete route {route}"),
            )
            .await,
        )
    }

    /// Delete `rule` (and only it: FRA_PROTOCOL 85 is part of the request).
    /// Gone already = `Ok(false)`.
    pub async fn delete_rule(&self, rule: &OwnedRule) -> Result<bool, NetlinkError> {
        gone_is_false(
            request::ack(
                &self.handle,
                RouteNetlinkMessage::DelRule(rule.msg.clone()),
                0,
                REQUEST_TIMEOUT,
                &format!("delete {rule}"),
            )
            .await,
        )
    }
}

fn gone_is_false(r: Result<(), NetlinkError>) -> Result<bool, NetlinkError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.errno(), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// uplinkd installs routes only in the main table (the active default route
/// and the kernel fallback routes) and in its probe tables (`table_base` and
/// up); a protocol-85 route anywhere else is not one of them.
fn is_ours_table(table: u32, min_table: u32) -> bool {
    table == RT_TABLE_MAIN || (table >= min_table && table != 255)
}

fn owned_route(msg: RouteMessage) -> Option<OwnedRoute> {
    if u8::from(msg.header.protocol) != RTPROT_UPLINKD {
        return None;
    }
    let family = family_of(msg.header.address_family)?;
    let mut table = u32::from(msg.header.table);
    let mut metric = 0;
    let mut gateway = None;
    let mut destination = None;
    let mut oif = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(g) => gateway = address(g),
            RouteAttribute::Destination(d) => destination = address(d),
            _ => {}
        }
    }
    Some(OwnedRoute {
        family,
        table,
        destination,
        dst_len: msg.header.destination_prefix_length,
        metric,
        gateway,
        oif,
        msg,
    })
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn owned_rule(msg: RuleMessage) -> Option<OwnedRule> {
    let family = family_of(msg.header.family)?;
    let mut ours = false;
    let mut table = u32::from(msg.header.table);
    let mut priority = 0;
    let mut fwmark = None;
    for a in &msg.attributes {
        match a {
            RuleAttribute::Protocol(p) => ours = u8::from(*p) == RTPROT_UPLINKD,
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::FwMark(m) => fwmark = Some(*m),
            _ => {}
        }
    }
    ours.then_some(OwnedRule {
        family,
        priority,
        fwmark,
        table,
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_main_table_and_the_probe_tables_are_ours() {
        assert!(is_ours_table(254, 1000));
        assert!(is_ours_table(1000, 1000));
        assert!(is_ours_table(1007, 1000));
        assert!(!is_ours_table(999, 1000));
        assert!(!is_ours_table(253, 1000));
        assert!(!is_ours_table(255, 100));
    }

    #[test]
    fn a_route_or_rule_of_another_protocol_is_not_ours() {
        let mut m = RouteMessage::default();
        m.header.address_family = address_family(Family::V4);
        m.header.protocol = RouteProtocol::Static;
        assert!(owned_route(m.clone()).is_none());
        m.header.protocol = RouteProtocol::from(RTPROT_UPLINKD);
        m.attributes.push(RouteAttribute::Table(1000));
        m.attributes.push(RouteAttribute::Priority(10));
        let r = owned_route(m).unwrap();
        assert_eq!(r.table, 1000);
        assert_eq!(r.metric, 10);

        let mut m = RuleMessage::default();
        m.header.family = address_family(Family::V6);
        assert!(owned_rule(m.clone()).is_none());
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Static));
        assert!(owned_rule(m.clone()).is_none());
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(RTPROT_UPLINKD)));
        assert!(owned_rule(m).is_some());
    }
}
