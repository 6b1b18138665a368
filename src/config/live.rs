//! The host check of `uplinkd --check --live`: a valid configuration
//! checked against the host it is about to run on. The file check says the
//! configuration makes sense; this one says it fits this machine: every
//! uplink's interface exists (a bond member is a member of its bond), every
//! gateway is on-link through its interface, and no default route that
//! uplinkd did not make outranks the managed one.
//!
//! The check is pure: [`Host`] is what the netlink adapter read
//! (`netlink::host::read`), so every rule is tested without a namespace.
//! Every problem is reported (never only the first), as a [`ConfigError`]
//! placed at the key to change (file and line, through [`Origins`]) with a
//! message naming the uplink and what to do.

use std::net::IpAddr;

use uplinkd_core::config::{Config, Family, UplinkConfig};

use super::{ConfigError, Origins};
// The routes uplinkd installs carry this protocol: they never compete
// with the managed one.
use crate::netlink::RTPROT_UPLINKD;

/// The routing table the managed default route lives in (RT_TABLE_MAIN).
pub const MAIN_TABLE: u32 = 254;

/// What the check needs to know of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    /// Routes of the main table, both families: the default routes that
    /// could outrank ours, and the device routes that make a gateway on-link.
    pub routes: Vec<Route>,
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// IFLA_INFO_KIND ("bond", "veth", ...); None for a physical NIC.
    pub kind: Option<String>,
    /// IFLA_MASTER: the bond (or bridge, VRF) this interface is a port of.
    pub controller: Option<u32>,
}

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ifindex: u32,
    /// IFA_ADDRESS: for a point-to-point address the peer, whose prefix is
    /// the on-link one.
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub family: Family,
    /// None for a default route.
    pub destination: Option<IpAddr>,
    pub prefix_len: u8,
    /// RTA_PRIORITY (0 when absent).
    pub metric: u32,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// rtm_protocol: who made it (2 kernel, 4 static, 16 dhcp, 85 uplinkd).
    pub protocol: u8,
    /// rtm_type is RTN_UNICAST (not blackhole, unreachable, prohibit...).
    pub unicast: bool,
}

impl Host {
    fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
    fn link_name(&self, ifindex: u32) -> String {
        self.links
            .iter()
            .find(|l| l.ifindex == ifindex)
            .map_or_else(|| format!("ifindex {ifindex}"), |l| l.name.clone())
    }
}

/// Every problem of `config` on `host`, uplink by uplink, then the routes;
/// empty when it fits.
pub fn check(config: &Config, origins: &Origins, host: &Host) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (i, uplink) in config.uplinks.iter().enumerate() {
        check_uplink(i, uplink, origins, host, &mut out);
    }
    competing_default_routes(config, origins, host, &mut out);
    service_addresses(config, origins, host, &mut out);
    out
}

/// The interface (and bond) of one uplink, and its gateways.
fn check_uplink(
    i: usize,
    u: &UplinkConfig,
    origins: &Origins,
    host: &Host,
    out: &mut Vec<ConfigError>,
) {
    let p = format!("uplink[{i}]");
    let name = &u.name;
    let interface = &u.interface;
    let link = host.link(interface);
    if link.is_none() {
        out.push(origins.error(
            &format!("{p}.interface"),
            format!(
                "uplink {name:?}: interface {interface:?} does not exist on this host; fix the name (`ip link` lists the interfaces) or create the interface in the network configuration first"
            ),
        ));
    }
    match (&u.bond, link) {
        (Some(bond), _) => match host.link(bond) {
            None => out.push(origins.error(
                &format!("{p}.bond"),
                format!(
                    "uplink {name:?}: bond {bond:?} does not exist on this host; fix the name or create the active-backup bond (with {interface:?} as a member) in the network configuration"
                ),
            )),
            Some(b) if b.kind.as_deref() != Some("bond") => out.push(origins.error(
                &format!("{p}.bond"),
                format!(
                    "uplink {name:?}: {bond:?} is not a bond (its kind is {}); name the bond {interface:?} is a member of",
                    b.kind.as_deref().unwrap_or("none: a physical device")
                ),
            )),
            Some(b) => {
                if let Some(l) = link.filter(|l| l.controller != Some(b.ifindex)) {
                    let now = match l.controller {
                        Some(c) => format!("it is a port of {}", host.link_name(c)),
                        None => "it is a port of nothing".to_string(),
                    };
                    out.push(origins.error(
                        &format!("{p}.interface"),
                        format!(
                            "uplink {name:?}: interface {interface:?} is not a member of bond {bond:?} ({now}); add it to the bond in the network configuration (e.g. `ip link set {interface} down; ip link set {interface} master {bond}`) or fix uplink.bond"
                        ),
                    ));
                }
            }
        },
        (None, Some(l)) => {
            // A bond's port has no routes of its own: the route via it fails.
            let bond = l
                .controller
                .and_then(|c| host.links.iter().find(|b| b.ifindex == c))
                .filter(|b| b.kind.as_deref() == Some("bond"));
            if let Some(b) = bond {
                out.push(origins.error(
                    &format!("{p}.interface"),
                    format!(
                        "uplink {name:?}: interface {interface:?} is a member of bond {:?}; set bond = {:?} for this uplink (a member's routes go via its bond)",
                        b.name, b.name
                    ),
                ));
            }
        }
        (None, None) => {}
    }
    // The gateways are reached through the route interface (the bond for a
    // member); when it is missing, that was reported above.
    let via = u.route_interface();
    let Some(via_link) = host.link(via) else {
        return;
    };
    for family in Family::ALL {
        let Some(gateway) = u.gateway(family) else {
            continue;
        };
        if on_link(host, via_link, gateway) {
            continue;
        }
        let key = match family {
            Family::V4 => "gateway4",
            Family::V6 => "gateway6",
        };
        let through = if u.bond.is_some() {
            format!("{via} (the bond of {interface})")
        } else {
            via.to_string()
        };
        let have: Vec<String> = host
            .addresses
            .iter()
            .filter(|a| a.ifindex == via_link.ifindex && Family::of(&a.address) == family)
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect();
        let have = if have.is_empty() {
            format!("{via} has no {family} address")
        } else {
            format!("{via} has {}", have.join(", "))
        };
        let host_len = match family {
            Family::V4 => 32,
            Family::V6 => 128,
        };
        out.push(origins.error(
            &format!("{p}.{key}"),
            format!(
                "uplink {name:?}: {key} {gateway} is not on-link through {through}: no {family} address of {via} has a prefix containing it ({have}) and no route through {via} covers it; fix the gateway, give {via} an address in the gateway's subnet, or add an on-link route (`ip route add {gateway}/{host_len} dev {via}`)"
            ),
        ));
    }
}

/// Whether the kernel can reach `gateway` directly through `link`: an IPv6
/// link-local gateway always is; otherwise an address of the link has a
/// prefix containing it, or a route without gateway through the link (the
/// kernel's prefix route, or an explicit one such as
/// `ip route add 192.0.2.1/32 dev eth0`) covers it.
fn on_link(host: &Host, link: &Link, gateway: IpAddr) -> bool {
    if let IpAddr::V6(g) = gateway {
        if g.is_unicast_link_local() {
            return true;
        }
    }
    let by_address = host
        .addresses
        .iter()
        .filter(|a| a.ifindex == link.ifindex)
        .any(|a| contains(a.address, a.prefix_len, gateway));
    let by_route = host.routes.iter().any(|r| {
        r.unicast
            && r.gateway.is_none()
            && r.oif == Some(link.ifindex)
            && r.family == Family::of(&gateway)
            && match r.destination {
                Some(d) => contains(d, r.prefix_len, gateway),
                None => r.prefix_len == 0,
            }
    });
    by_address || by_route
}

/// Whether `net/len` contains `addr` (same family).
fn contains(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    fn masked(bits: u128, len: u8, width: u8) -> u128 {
        let len = u32::from(len.min(width));
        if len == 0 {
            0
        } else {
            bits >> (u32::from(width) - len)
        }
    }
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            masked(u32::from(n).into(), len, 32) == masked(u32::from(a).into(), len, 32)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            masked(u128::from(n), len, 128) == masked(u128::from(a), len, 128)
        }
        _ => false,
    }
}

/// A default route of the main table with a lower metric than ours wins
/// over the managed route whatever uplinkd decides (a DHCP client's or
/// NetworkManager's, typically). Only the families some uplink has a
/// gateway of are managed.
fn competing_default_routes(
    config: &Config,
    origins: &Origins,
    host: &Host,
    out: &mut Vec<ConfigError>,
) {
    let metric = config.agent.route_metric;
    for family in Family::ALL {
        if !config.uplinks.iter().any(|u| u.gateway(family).is_some()) {
            continue;
        }
        for r in host.routes.iter().filter(|r| {
            r.family == family
                && r.prefix_len == 0
                && r.metric < metric
                && r.protocol != RTPROT_UPLINKD
        }) {
            let lower = if r.metric > 1 {
                format!(", or set agent.route_metric below {}", r.metric)
            } else {
                String::new()
            };
            out.push(origins.error(
                "agent.route_metric",
                format!(
                    "the {family} default route `{}` (not made by uplinkd) has a lower metric than the managed route's ({metric}), so traffic follows it whatever uplinkd decides; remove it or give it a metric above {metric} where it is made (DHCP client, network configuration){lower}",
                    describe(host, r)
                ),
            ));
        }
    }
}

/// A route as `ip route` would show it.
fn describe(host: &Host, r: &Route) -> String {
    let mut s = if r.unicast {
        "default".to_string()
    } else {
        "default (not unicast)".to_string()
    };
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev {}", host.link_name(oif)));
    }
    s.push_str(&format!(" proto {}", protocol_name(r.protocol)));
    s.push_str(&format!(" metric {}", r.metric));
    s
}

/// The names iproute2 gives (/etc/iproute2/rt_protos); the number otherwise.
fn protocol_name(p: u8) -> String {
    match p {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        9 => "ra".into(),
        11 => "zebra".into(),
        12 => "bird".into(),
        16 => "dhcp".into(),
        186 => "bgp".into(),
        other => other.to_string(),
    }
}

/// The service addresses `agent.source4` / `agent.source6` must be present
/// on the host (an address of some interface in `host.addresses`), each
/// problem placed at its key like the gateways'.
fn service_addresses(config: &Config, origins: &Origins, host: &Host, out: &mut Vec<ConfigError>) {
    for f in Family::ALL {
        let Some(a) = config.agent.source(f) else {
            continue;
        };
        if !host.addresses.iter().any(|x| x.address == a) {
            let key = match f {
                Family::V4 => "agent.source4",
                Family::V6 => "agent.source6",
            };
            out.push(origins.error(key, missing_source_text(f, a)));
        }
    }
}

/// Why a service address that is not on the host cannot be a source.
pub fn missing_source_text(family: Family, address: IpAddr) -> String {
    let (key, len) = match family {
        Family::V4 => ("source4", 32),
        Family::V6 => ("source6", 128),
    };
    format!(
        "service address {address} is not an address of this host; the kernel refuses a route source that is not local. Add it first (e.g. `ip address add {address}/{len} dev lo`, made permanent in the network configuration) or fix agent.{key}"
    )
}

/// The service addresses of `config` that `host` lacks, each as
/// [`missing_source_text`] says it (the daemon refuses to start with any).
pub fn missing_sources(config: &Config, host: &Host) -> Vec<String> {
    Family::ALL
        .iter()
        .filter_map(|f| {
            let a = config.agent.source(*f)?;
            (!host.addresses.iter().any(|x| x.address == a)).then(|| missing_source_text(*f, a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, kind: Option<&str>, controller: Option<u32>) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind: kind.map(String::from),
            controller,
        }
    }

    /// bond0 (3) with eth2 (4) as its member, eth3 (5) a port of nothing;
    /// 198.18.3.2/24 on the bond.
    fn bonded_host() -> Host {
        Host {
            links: vec![
                link(3, "bond0", Some("bond"), None),
                link(4, "eth2", Some("veth"), Some(3)),
                link(5, "eth3", Some("veth"), None),
            ],
            addresses: vec![Address {
                ifindex: 3,
                address: "198.18.3.2".parse().unwrap(),
                prefix_len: 24,
            }],
            routes: Vec::new(),
        }
    }

    fn problems(uplinks: &str) -> Vec<String> {
        let text = format!("{uplinks}\n[[transit]]\nname = \"t\"\ntargets = [\"198.19.0.1\"]\n");
        let (config, origins) = super::super::parse_files(&[("u.toml", &text)]).unwrap();
        check(&config, &origins, &bonded_host())
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_bond_member_fits_through_its_bond() {
        let member = "[[uplink]]\nname = \"a\"\ninterface = \"eth2\"\nbond = \"bond0\"\ngateway4 = \"198.18.3.1\"\n";
        assert_eq!(problems(member), Vec::<String>::new());
    }

    #[test]
    fn a_member_must_be_a_port_of_its_bond() {
        let member = "[[uplink]]\nname = \"a\"\ninterface = \"eth3\"\nbond = \"bond0\"\ngateway4 = \"198.18.3.1\"\n";
        assert_eq!(
            problems(member),
            ["u.toml:3:13: uplink[0].interface: uplink \"a\": interface \"eth3\" is not a member of bond \"bond0\" (it is a port of nothing); add it to the bond in the network configuration (e.g. `ip link set eth3 down; ip link set eth3 master bond0`) or fix uplink.bond"]
        );
    }

    #[test]
    fn a_bond_port_is_not_a_routed_uplink() {
        let routed = "[[uplink]]\nname = \"r\"\ninterface = \"eth2\"\ngateway4 = \"198.18.3.1\"\n";
        assert_eq!(
            problems(routed),
            [
                "u.toml:3:13: uplink[0].interface: uplink \"r\": interface \"eth2\" is a member of bond \"bond0\"; set bond = \"bond0\" for this uplink (a member's routes go via its bond)",
                // Its gateway is on the bond's subnet, not on the port.
                "u.toml:4:12: uplink[0].gateway4: uplink \"r\": gateway4 198.18.3.1 is not on-link through eth2: no ipv4 address of eth2 has a prefix containing it (eth2 has no ipv4 address) and no route through eth2 covers it; fix the gateway, give eth2 an address in the gateway's subnet, or add an on-link route (`ip route add 198.18.3.1/32 dev eth2`)",
            ]
        );
    }

    #[test]
    fn a_service_address_must_be_on_the_host() {
        let text = "[agent]\nsource4 = \"198.18.3.2\"\nsource6 = \"2001:db8:0:1::1\"\n[[uplink]]\nname = \"a\"\ninterface = \"eth2\"\nbond = \"bond0\"\ngateway4 = \"198.18.3.1\"\n[[transit]]\nname = \"t\"\ntargets = [\"198.19.0.1\"]\n";
        let (config, origins) = super::super::parse_files(&[("u.toml", text)]).unwrap();
        let found: Vec<String> = check(&config, &origins, &bonded_host())
            .iter()
            .map(|e| e.to_string())
            .collect();
        // 198.18.3.2 is the bond's address; 2001:db8:0:1::1 is nowhere.
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("u.toml:3:11: agent.source6: service address 2001:db8:0:1::1 is not an address of this host"),
            "{found:?}"
        );
        assert_eq!(missing_sources(&config, &bonded_host()).len(), 1);
    }

    #[test]
    fn prefixes_contain_their_addresses_only() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(contains(a("198.18.1.0"), 24, a("198.18.1.1")));
        assert!(!contains(a("198.18.1.0"), 24, a("198.18.2.1")));
        assert!(contains(a("198.18.1.7"), 32, a("198.18.1.7")));
        assert!(!contains(a("198.18.1.7"), 32, a("198.18.1.8")));
        assert!(contains(a("0.0.0.0"), 0, a("203.0.113.1")));
        assert!(contains(a("2001:db8:1::2"), 64, a("2001:db8:1::1")));
        assert!(!contains(a("2001:db8:1::2"), 64, a("2001:db8:2::1")));
        assert!(!contains(a("198.18.1.0"), 24, a("2001:db8:1::1")));
    }
}
