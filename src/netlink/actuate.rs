//! The actuator: idempotent route, rule and neighbour changes over its own
//! rtnetlink connection (separate from the monitor's). "Already so" is
//! success; every request has a timeout.
//!
//! Namespace: the socket is opened by [`Actuator::new`] in the network
//! namespace of the thread that polls it (the caller, when awaited directly).

use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::AsyncSocket;
use rtnetlink::Handle;

use super::request::{self, Dump};
use super::{address_family, route_info, NetlinkError, RouteInfo, REQUEST_TIMEOUT};
use crate::config::Family;

/// The `rtm_protocol` (and FRA_PROTOCOL) of every route and rule we install,
/// so we (and `ip route show proto 85`) can recognise ours.
///
/// Why 85 (0x55): include/uapi/linux/rtnetlink.h says values >= RTPROT_STATIC
/// are not interpreted by the kernel and lists the assigned ones (8-18, 42
/// babel, 99 openr, 186-189, 192 eigrp); FRRouting additionally uses 190-198
/// and /etc/iproute2/rt_protos lists the same set. 85 is in none of them.
/// The package names it for ip(8) in /etc/iproute2/rt_protos.d/uplinkd.conf
/// (packaging/iproute2/uplinkd.conf), so `ip route` prints `proto uplinkd`.
pub const RTPROT_UPLINKD: u8 = 0x55;
/// rtm_protocol of the routes the kernel adds itself (an address's subnet).
pub const RTPROT_KERNEL: u8 = 2;

/// The name of a route's rtm_protocol as `ip route` prints it
/// (include/uapi/linux/rtnetlink.h, /etc/iproute2/rt_protos): who installed it.
pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        9 => "ra",
        11 => "zebra",
        12 => "bird",
        16 => "dhcp",
        18 => "keepalived",
        RTPROT_UPLINKD => "uplinkd",
        186 => "bgp",
        188 => "ospf",
        _ => return protocol.to_string(),
    }
    .to_string()
}

const ENOENT: i32 = libc::ENOENT;
const ESRCH: i32 = libc::ESRCH;
const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;

/// Upper bound on "delete until nothing matches" loops (duplicates are rare;
/// this only guarantees termination).
const MAX_DELETES: usize = 64;

/// NUD_PERMANENT | NUD_NOARP (include/uapi/linux/neighbour.h): entries an
/// administrator or the kernel pinned; never ours to flush.
const NUD_KEEP: u16 = 0x80 | 0x40;

/// NUD_INCOMPLETE | NUD_FAILED (include/uapi/linux/neighbour.h): resolution
/// under way or given up; the kernel retries only every `retrans_time_ms`.
const NUD_UNRESOLVED: u16 = 0x01 | 0x20;

/// Bounded wait used only to name an interface in an error message.
const NAME_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Actuator {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Actuator {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Actuator {
    /// Open the actuator's own rtnetlink socket and spawn its connection task
    /// on the current tokio runtime (current_thread is fine; the runtime
    /// needs its timer enabled).
    pub async fn new() -> Result<Self, NetlinkError> {
        Self::with_timeout(REQUEST_TIMEOUT).await
    }

    /// Like [`Actuator::new`] with a different per-request timeout.
    pub async fn with_timeout(timeout: Duration) -> Result<Self, NetlinkError> {
        let op = "open rtnetlink socket for the actuator";
        let (mut conn, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|e| NetlinkError::io(op, e))?;
        let sock = conn.socket_mut().socket_mut();
        // Extended acks give the kernel's reason ("Nexthop has invalid
        // gateway"); capped acks keep error answers small. Both are optional.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        let conn = tokio::spawn(conn);
        Ok(Actuator {
            handle,
            conn,
            timeout,
        })
    }

    /// The ifindex of interface `name`, `None` if there is no such interface.
    pub async fn ifindex(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let op = format!("look up interface {name}");
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(NetlinkError::Invalid {
                op,
                reason: "not a valid interface name".into(),
            });
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match request::get_one(
            &self.handle,
            RouteNetlinkMessage::GetLink(msg),
            self.timeout,
            &op,
        )
        .await
        {
            Ok(RouteNetlinkMessage::NewLink(l)) => Ok(Some(l.header.index)),
            Ok(other) => Err(NetlinkError::Unexpected {
                op,
                detail: format!("{other:?}"),
            }),
            Err(e) if e.errno() == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Name of an ifindex, for error messages only ("dev eth0", or
    /// "ifindex 7" when it cannot be resolved quickly).
    async fn dev_name(&self, ifindex: u32) -> String {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let answer = request::get_one(
            &self.handle,
            RouteNetlinkMessage::GetLink(msg),
            NAME_LOOKUP_TIMEOUT,
            "name",
        )
        .await;
        if let Ok(RouteNetlinkMessage::NewLink(l)) = answer {
            for a in l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    return format!("dev {n}");
                }
            }
        }
        format!("ifindex {ifindex}")
    }

    /// Atomically point the default route of `family` at `metric` in `table`
    /// via `gateway` on `ifindex` (RTM_NEWROUTE with NLM_F_CREATE|NLM_F_REPLACE:
    /// the kernel swaps the route in place, there is never a moment without
    /// one). Replacing with the same route again is a no-op success.
    pub async fn replace_default_route(
        &self,
        family: Family,
        gateway: IpAddr,
        ifindex: u32,
        metric: u32,
        table: u32,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        self.replace_default_route_from(family, gateway, ifindex, metric, table, protocol, None)
            .await
    }

    /// [`Self::replace_default_route`] with a preferred source
    /// (RTA_PREFSRC, `ip route ... src`): the address new connections
    /// leaving by this route take. The kernel refuses a source that is not
    /// a local address of the host (EINVAL).
    #[allow(clippy::too_many_arguments)]
    pub async fn replace_default_route_from(
        &self,
        family: Family,
        gateway: IpAddr,
        ifindex: u32,
        metric: u32,
        table: u32,
        protocol: u8,
        source: Option<IpAddr>,
    ) -> Result<(), NetlinkError> {
        let src = source.map_or(String::new(), |s| format!(" src {s}"));
        let describe = |dev: &str| {
            format!(
                "replace {family} default route via {gateway} {dev}{src} metric {metric} table {table}"
            )
        };
        if let Some(s) = source {
            if crate::config::Family::of(&s) != family {
                return Err(NetlinkError::Invalid {
                    op: describe(&format!("ifindex {ifindex}")),
                    reason: format!("source is not an {family} address"),
                });
            }
        }
        check_route_args(family, metric, table, || {
            describe(&format!("ifindex {ifindex}"))
        })?;
        if crate::config::Family::of(&gateway) != family {
            return Err(NetlinkError::Invalid {
                op: describe(&format!("ifindex {ifindex}")),
                reason: format!("gateway is not an {family} address"),
            });
        }
        let mut msg = default_route_message(family, metric, table);
        msg.header.protocol = RouteProtocol::from(protocol);
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        msg.attributes.push(RouteAttribute::Oif(ifindex));
        if let Some(s) = source {
            msg.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(s)));
        }
        let result = request::ack(
            &self.handle,
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            self.timeout,
            "replace route",
        )
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(rename(e, describe(&self.dev_name(ifindex).await))),
        }
    }

    /// Delete every default route of `family` at `metric` in `table`,
    /// whatever its gateway. None there = success.
    pub async fn delete_default_route(
        &self,
        family: Family,
        metric: u32,
        table: u32,
    ) -> Result<(), NetlinkError> {
        let op = format!("delete {family} default route metric {metric} table {table}");
        check_route_args(family, metric, table, || op.clone())?;
        for _ in 0..MAX_DELETES {
            let mut msg = default_route_message(family, metric, table);
            // RT_SCOPE_NOWHERE: "any scope" for deletes (iproute2 does the same).
            msg.header.scope = RouteScope::NoWhere;
            let r = request::ack(
                &self.handle,
                RouteNetlinkMessage::DelRoute(msg),
                0,
                self.timeout,
                &op,
            )
            .await;
            match r {
                Ok(()) => continue,
                Err(e) if matches!(e.errno(), Some(ESRCH) | Some(ENOENT)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(NetlinkError::Unexpected {
            op,
            detail: format!("still present after {MAX_DELETES} deletes"),
        })
    }

    /// Delete exactly this default route of another owner: its protocol,
    /// gateway and interface, and its metric unless 0 (an IPv4 metric 0
    /// route exists; the kernel treats 0 in a delete as "any", which the
    /// protocol, gateway and interface still narrow). Gone already = success.
    pub async fn delete_foreign_default_route(
        &self,
        r: &super::RouteInfo,
    ) -> Result<(), NetlinkError> {
        let gw = r.gateway.map_or("-".into(), |g| g.to_string());
        let op = format!(
            "delete {} default route via {gw} ifindex {} metric {} proto {} table {}",
            r.family,
            r.oif.unwrap_or(0),
            r.metric,
            protocol_name(r.protocol),
            r.table
        );
        check_table(r.table, &op)?;
        let mut msg = RouteMessage::default();
        msg.header.address_family = address_family(r.family);
        msg.header.table = table_header(r.table);
        msg.header.protocol = RouteProtocol::from(r.protocol);
        msg.header.scope = RouteScope::NoWhere;
        msg.attributes.push(RouteAttribute::Table(r.table));
        if r.metric != 0 {
            msg.attributes.push(RouteAttribute::Priority(r.metric));
        }
        if let Some(g) = r.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        if let Some(oif) = r.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        let res = request::ack(
            &self.handle,
            RouteNetlinkMessage::DelRoute(msg),
            0,
            self.timeout,
            &op,
        )
        .await;
        match res {
            Err(e) if matches!(e.errno(), Some(ESRCH) | Some(ENOENT)) => Ok(()),
            other => other,
        }
    }

    /// The default routes of `family` in `table` (any metric, any protocol).
    pub async fn default_routes(
        &self,
        family: Family,
        table: u32,
    ) -> Result<Vec<RouteInfo>, NetlinkError> {
        let op = format!("dump {family} routes");
        let mut msg = RouteMessage::default();
        msg.header.address_family = address_family(family);
        let answers = Dump::start(
            &self.handle,
            RouteNetlinkMessage::GetRoute(msg),
            self.timeout,
            op,
        )?
        .collect()
        .await?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) if r.header.kind == RouteType::Unicast => {
                    route_info(r)
                }
                _ => None,
            })
            .filter(|r| r.family == family && r.dst_len == 0 && r.table == table)
            .collect())
    }

    /// Make sure the rule `fwmark <fwmark> lookup <table> priority <priority>`
    /// exists (once). Present already = success.
    pub async fn ensure_rule(
        &self,
        family: Family,
        fwmark: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), NetlinkError> {
        let op = format!("add {family} rule fwmark {fwmark:#x} lookup {table} priority {priority}");
        check_table(table, &op)?;
        if self
            .find_rules(family, fwmark, table, priority, &op)
            .await?
            > 0
        {
            return Ok(());
        }
        let mut msg = rule_message(family, fwmark, table, priority);
        msg.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(RTPROT_UPLINKD)));
        // NLM_F_EXCL makes the kernel refuse an identical rule (EEXIST)
        // instead of adding a duplicate, closing the race with the dump above.
        match request::ack(
            &self.handle,
            RouteNetlinkMessage::NewRule(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            self.timeout,
            &op,
        )
        .await
        {
            Err(e) if e.errno() == Some(EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Delete the rule(s) `fwmark <fwmark> lookup <table> priority <priority>`.
    /// Absent = success.
    pub async fn delete_rule(
        &self,
        family: Family,
        fwmark: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), NetlinkError> {
        let op =
            format!("delete {family} rule fwmark {fwmark:#x} lookup {table} priority {priority}");
        check_table(table, &op)?;
        for _ in 0..MAX_DELETES {
            let msg = rule_message(family, fwmark, table, priority);
            match request::ack(
                &self.handle,
                RouteNetlinkMessage::DelRule(msg),
                0,
                self.timeout,
                &op,
            )
            .await
            {
                Ok(()) => continue,
                Err(e) if matches!(e.errno(), Some(ENOENT) | Some(ESRCH)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(NetlinkError::Unexpected {
            op,
            detail: format!("still present after {MAX_DELETES} deletes"),
        })
    }

    /// How many rules exactly like ours (fwmark with full mask -> table at
    /// priority, no other selector) exist.
    async fn find_rules(
        &self,
        family: Family,
        fwmark: u32,
        table: u32,
        priority: u32,
        op: &str,
    ) -> Result<usize, NetlinkError> {
        let mut msg = RuleMessage::default();
        msg.header.family = address_family(family);
        let rules = Dump::start(
            &self.handle,
            RouteNetlinkMessage::GetRule(msg),
            self.timeout,
            format!("{op}: dump rules"),
        )?
        .collect()
        .await?;
        Ok(rules
            .iter()
            .filter(|m| match m {
                RouteNetlinkMessage::NewRule(r) => rule_matches(r, fwmark, table, priority),
                _ => false,
            })
            .count())
    }

    /// Delete the non-permanent neighbour entries of `family` on `ifindex`.
    /// Returns how many were deleted. This frees datagrams queued on an
    /// unresolved (dead) gateway, which releases the senders' socket buffers
    /// at once instead of after the ~3 s resolution failure.
    pub async fn flush_neighbours(
        &self,
        ifindex: u32,
        family: Family,
    ) -> Result<usize, NetlinkError> {
        let op = format!("flush {family} neighbours of ifindex {ifindex}");
        let mut deleted = 0;
        for n in self.neighbours(ifindex, family, &op).await? {
            if u16::from(n.header.state) & NUD_KEEP != 0 {
                continue;
            }
            if self.delete_neighbour(&n, &op).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Have the kernel resolve `addr` on `ifindex` afresh if its entry is
    /// unresolved (INCOMPLETE or FAILED): the entry is deleted, so the next
    /// packet to it creates a new one and solicits at once
    /// (`__neigh_event_send`, net/core/neighbour.c), instead of waiting for
    /// the kernel's next retry, up to `retrans_time_ms` (1 s) away, or
    /// queueing behind a FAILED entry. An entry in any other state (or
    /// none) is left alone. Returns whether one was deleted.
    pub async fn refresh_neighbour(
        &self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<bool, NetlinkError> {
        let family = Family::of(&addr);
        let op = format!("refresh {family} neighbour {addr} of ifindex {ifindex}");
        for n in self.neighbours(ifindex, family, &op).await? {
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            if dst == Some(addr) && u16::from(n.header.state) & NUD_UNRESOLVED != 0 {
                return self.delete_neighbour(&n, &op).await;
            }
        }
        Ok(false)
    }

    /// The neighbour entries of `family` on `ifindex`.
    async fn neighbours(
        &self,
        ifindex: u32,
        family: Family,
        op: &str,
    ) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = address_family(family);
        // Older kernels ignore this filter in non-strict mode; we filter below too.
        msg.attributes.push(NeighbourAttribute::IfIndex(ifindex));
        let entries = Dump::start(
            &self.handle,
            RouteNetlinkMessage::GetNeighbour(msg),
            self.timeout,
            op.to_string(),
        )?
        .collect()
        .await?;
        Ok(entries
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.ifindex == ifindex && n.header.family == address_family(family) =>
                {
                    Some(n)
                }
                _ => None,
            })
            .collect())
    }

    /// Delete entry `n`; false if it was gone meanwhile (expired, or the
    /// interface went away).
    async fn delete_neighbour(&self, n: &NeighbourMessage, op: &str) -> Result<bool, NetlinkError> {
        let Some(dst) = n
            .attributes
            .iter()
            .find(|a| matches!(a, NeighbourAttribute::Destination(_)))
            .cloned()
        else {
            return Ok(false);
        };
        let mut del = NeighbourMessage::default();
        del.header.family = n.header.family;
        del.header.ifindex = n.header.ifindex;
        del.attributes.push(dst);
        match request::ack(
            &self.handle,
            RouteNetlinkMessage::DelNeighbour(del),
            0,
            self.timeout,
            op,
        )
        .await
        {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(ENOENT) | Some(ESRCH) | Some(ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Metric 0 is refused: IPv6 turns it into 1024 on add, and both families
/// treat it as "any metric" on delete, so it would delete foreign routes.
fn check_route_args(
    _family: Family,
    metric: u32,
    table: u32,
    op: impl Fn() -> String,
) -> Result<(), NetlinkError> {
    if metric == 0 {
        return Err(NetlinkError::Invalid {
            op: op(),
            reason: "metric 0 is ambiguous (IPv6 makes it 1024; delete treats it as any)".into(),
        });
    }
    check_table(table, &op())
}

/// Table 0 (RT_TABLE_UNSPEC) means "any/default" to the kernel, never a table.
fn check_table(table: u32, op: &str) -> Result<(), NetlinkError> {
    if table == 0 {
        return Err(NetlinkError::Invalid {
            op: op.to_string(),
            reason: "table 0 is not a table".into(),
        });
    }
    Ok(())
}

/// Replace the operation text of an error, keeping its cause.
fn rename(e: NetlinkError, op: String) -> NetlinkError {
    match e {
        NetlinkError::Kernel { errno, detail, .. } => NetlinkError::Kernel { op, errno, detail },
        NetlinkError::Io { source, .. } => NetlinkError::Io { op, source },
        NetlinkError::Timeout { timeout, .. } => NetlinkError::Timeout { op, timeout },
        NetlinkError::Closed { .. } => NetlinkError::Closed { op },
        NetlinkError::Invalid { reason, .. } => NetlinkError::Invalid { op, reason },
        NetlinkError::Unexpected { detail, .. } => NetlinkError::Unexpected { op, detail },
    }
}

/// rtm_table is 8 bits: tables > 255 go in RTA_TABLE with rtm_table =
/// RT_TABLE_UNSPEC (as iproute2 does); we always send RTA_TABLE.
fn table_header(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(0)
}

fn default_route_message(family: Family, metric: u32, table: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(family);
    msg.header.destination_prefix_length = 0;
    msg.header.table = table_header(table);
    msg.attributes.push(RouteAttribute::Table(table));
    msg.attributes.push(RouteAttribute::Priority(metric));
    msg
}

fn rule_message(family: Family, fwmark: u32, table: u32, priority: u32) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = address_family(family);
    msg.header.table = table_header(table);
    msg.header.action = RuleAction::ToTable;
    msg.attributes.push(RuleAttribute::Table(table));
    msg.attributes.push(RuleAttribute::Priority(priority));
    msg.attributes.push(RuleAttribute::FwMark(fwmark));
    msg.attributes.push(RuleAttribute::FwMask(u32::MAX));
    msg
}

/// A dumped rule equal to ours: same action/table/priority/mark with a full
/// mask, and no other selector.
fn rule_matches(r: &RuleMessage, fwmark: u32, table: u32, priority: u32) -> bool {
    if r.header.action != RuleAction::ToTable
        || r.header.dst_len != 0
        || r.header.src_len != 0
        || r.header.tos != 0
        || !r.header.flags.is_empty()
    {
        return false;
    }
    let mut r_table = u32::from(r.header.table);
    let mut r_prio = 0;
    let mut r_mark = None;
    let mut r_mask = None;
    for a in &r.attributes {
        match a {
            RuleAttribute::Table(t) => r_table = *t,
            RuleAttribute::Priority(p) => r_prio = *p,
            RuleAttribute::FwMark(m) => r_mark = Some(*m),
            RuleAttribute::FwMask(m) => r_mask = Some(*m),
            RuleAttribute::Protocol(_) => {}
            // -1 (u32::MAX) means "not set"; newer kernels omit them anyway.
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX) => {}
            // Any other selector makes it a different rule (if we are wrong,
            // the NLM_F_EXCL add answers EEXIST, which is success too).
            _ => return false,
        }
    }
    r_table == table
        && r_prio == priority
        && r_mark == Some(fwmark)
        && r_mask.unwrap_or(u32::MAX) == u32::MAX
}
