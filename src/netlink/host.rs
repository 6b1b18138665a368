//! A read-only view of the host for `uplinkd --check --live`: links,
//! addresses and the main table's routes, dumped once over a connection of
//! its own, in the network namespace of the calling thread. It changes
//! nothing; the check itself is `config::live::check`.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::request::Dump;
use super::{family_of, route_info, NetlinkError, REQUEST_TIMEOUT};
use crate::config::live::{Address, Host, Link, Route, MAIN_TABLE};

/// Links, addresses and main-table routes of this thread's namespace.
pub async fn read() -> Result<Host, NetlinkError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetlinkError::io("open netlink socket", e))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let mut link_req = LinkMessage::default();
        link_req
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let links = dump(
            &handle,
            RouteNetlinkMessage::GetLink(link_req),
            "dump links",
        )
        .await?;
        let addresses = dump(
            &handle,
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "dump addresses",
        )
        .await?;
        let mut routes = Vec::new();
        for (family, op) in [
            (AddressFamily::Inet, "dump ipv4 routes"),
            (AddressFamily::Inet6, "dump ipv6 routes"),
        ] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            routes.extend(dump(&handle, RouteNetlinkMessage::GetRoute(req), op).await?);
        }
        Ok(Host {
            links: links.iter().filter_map(link).collect(),
            addresses: addresses.iter().filter_map(address).collect(),
            routes: routes
                .iter()
                .filter_map(route)
                .filter(|(table, _)| *table == MAIN_TABLE)
                .map(|(_, r)| r)
                .collect(),
        })
    }
    .await;
    conn.abort();
    result
}

async fn dump(
    handle: &rtnetlink::Handle,
    req: RouteNetlinkMessage,
    op: &str,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    Dump::start(handle, req, REQUEST_TIMEOUT, op)?
        .collect()
        .await
}

fn link(msg: &RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(m) = msg else {
        return None;
    };
    let mut link = Link {
        ifindex: m.header.index,
        name: String::new(),
        kind: None,
        controller: None,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Some(link)
}

fn address(msg: &RouteNetlinkMessage) -> Option<Address> {
    let RouteNetlinkMessage::NewAddress(m) = msg else {
        return None;
    };
    family_of(m.header.family)?;
    // IFA_ADDRESS is the prefix's address (the peer's on a point-to-point
    // link); IFA_LOCAL when only that is given.
    let mut local = None;
    let mut prefix = None;
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Address(a) => prefix = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    Some(Address {
        ifindex: m.header.index,
        address: prefix.or(local)?,
        prefix_len: m.header.prefix_len,
    })
}

/// A route and its table.
fn route(msg: &RouteNetlinkMessage) -> Option<(u32, Route)> {
    let RouteNetlinkMessage::NewRoute(m) = msg else {
        return None;
    };
    let info = route_info(m)?;
    let destination = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_address(d),
        _ => None,
    });
    Some((
        info.table,
        Route {
            family: info.family,
            destination,
            prefix_len: info.dst_len,
            metric: info.metric,
            gateway: info.gateway,
            oif: info.oif,
            protocol: info.protocol,
            unicast: m.header.kind == RouteType::Unicast,
        },
    ))
}

fn route_address(a: &netlink_packet_route::route::RouteAddress) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
