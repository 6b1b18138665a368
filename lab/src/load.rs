//! Counting and policing what the server sends to the lab's routers and
//! transit targets (issue 13's control-plane budget and policing rows):
//! nft rules with a counter and a comment naming the class, read back as
//! JSON (`nft -j`).

use std::collections::BTreeMap;

use crate::{
    cmd, nft_remove, nft_replace_ingress, Family, Lab, LabError, Uplink, ROUTER_DOWNLINK,
    ROUTER_UPLINK, TRANSITS,
};

type Result<T, E = LabError> = std::result::Result<T, E>;

/// netdev table counting what arrives from the server at a router.
const NFT_ROUTER_LOAD: &str = "ul_router_load";
/// inet table counting the ICMP redirects a router sends.
const NFT_ROUTER_REDIRECTS: &str = "ul_router_redirects";
/// netdev table counting the echo requests arriving at a transit.
const NFT_TRANSIT_LOAD: &str = "ul_transit_load";
/// inet table policing what arrives at a router for itself.
const NFT_POLICE: &str = "ul_police";
/// arp table policing the ARP a router receives.
const NFT_POLICE_ARP: &str = "ul_police_arp";

/// The forwarding-plane echo's UDP port (BFD echo, RFC 5881 §4).
const ECHO_PORT: u16 = 3785;

/// Packets per named counter (a rule's comment) in the output of
/// `nft -j list table ...`; rules sharing a comment add up, rules without a
/// comment or a counter are ignored.
pub fn parse_nft_counters(json: &str) -> Result<BTreeMap<String, u64>> {
    let bad = |detail: String| LabError::Parse {
        what: "nft -j list table".into(),
        detail,
    };
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("{e}: {json}")))?;
    let items = v["nftables"]
        .as_array()
        .ok_or_else(|| bad(format!("no \"nftables\" array: {json}")))?;
    let mut out = BTreeMap::new();
    for item in items {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let Some(name) = rule["comment"].as_str() else {
            continue;
        };
        let packets = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e.get("counter")?.get("packets")?.as_u64());
        if let Some(p) = packets {
            *out.entry(name.to_string()).or_insert(0) += p;
        }
    }
    Ok(out)
}

/// `rule` with a counter named `name` (before any verdict in `verdict`).
fn counted(rule: &str, name: &str, verdict: &str) -> String {
    if verdict.is_empty() {
        format!("{rule} counter comment \"{name}\"")
    } else {
        format!("{rule} counter {verdict} comment \"{name}\"")
    }
}

/// What the server sent to one router or transit during a count, by class.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Load {
    /// "ra", "rb", "transit-a", ...
    pub node: String,
    pub packets: BTreeMap<String, u64>,
}

impl Load {
    /// Packets of `class`; an error if the class was not counted (a rule
    /// that did not load or was renamed: never a silent 0).
    pub fn get(&self, class: &str) -> Result<u64> {
        self.packets.get(class).copied().ok_or_else(|| {
            LabError::Invalid(format!(
                "{}: no counter {class:?} (counted: {:?})",
                self.node,
                self.packets.keys().collect::<Vec<_>>()
            ))
        })
    }
}

/// Classes counted at a router's downlink (what the server sends it).
pub mod class {
    /// Every IPv4 packet addressed to the router's own address.
    pub const V4_TO_ROUTER: &str = "ipv4 to the router";
    /// Of those, ICMP echo requests.
    pub const V4_PINGS: &str = "ipv4 echo requests to the router";
    /// Every ARP packet from the server (requests and replies).
    pub const ARP: &str = "arp";
    /// Every IPv6 packet addressed to the router's own (global or link-local)
    /// addresses.
    pub const V6_TO_ROUTER: &str = "ipv6 to the router";
    /// Of those, ICMPv6 echo requests.
    pub const V6_PINGS: &str = "ipv6 echo requests to the router";
    /// Multicast neighbour/router solicitations (the router's CPU answers them).
    pub const V6_ND_MULTICAST: &str = "ipv6 multicast nd";
    /// Forwarding-plane echoes the router forwards back (UDP 3785).
    pub const V4_ECHOES: &str = "ipv4 echoes forwarded";
    pub const V6_ECHOES: &str = "ipv6 echoes forwarded";
    /// ICMP redirects the router sent (its CPU's answer to a hairpin).
    pub const V4_REDIRECTS: &str = "ipv4 redirects sent";
    pub const V6_REDIRECTS: &str = "ipv6 redirects sent";
    /// Echo requests arriving at a transit target.
    pub const V4_TRANSIT: &str = "ipv4 echo requests";
    pub const V6_TRANSIT: &str = "ipv6 echo requests";
}

impl Lab {
    /// `nft -j list table <family> <table>` in `ns`, as named counters.
    pub fn nft_counters(
        &self,
        ns: &str,
        family: &str,
        table: &str,
    ) -> Result<BTreeMap<String, u64>> {
        let out = self.exec(ns, &["nft", "-j", "list", "table", family, table])?;
        parse_nft_counters(&out)
    }

    fn router_load_rules(uplink: Uplink) -> (String, String) {
        use class::*;
        let gw4 = uplink.gateway(Family::V4);
        let gw6 = uplink.gateway(Family::V6);
        let own6 = format!("{{ {gw6}, fe80::/10 }}");
        let rules = [
            counted(&format!("meta protocol ip ip daddr {gw4}"), V4_TO_ROUTER, ""),
            counted(
                &format!("meta protocol ip ip daddr {gw4} meta l4proto icmp icmp type echo-request"),
                V4_PINGS,
                "",
            ),
            counted("meta protocol arp", ARP, ""),
            counted(&format!("meta protocol ip6 ip6 daddr {own6}"), V6_TO_ROUTER, ""),
            counted(
                &format!("meta protocol ip6 ip6 daddr {own6} meta l4proto ipv6-icmp icmpv6 type echo-request"),
                V6_PINGS,
                "",
            ),
            counted(
                "meta protocol ip6 ip6 daddr ff02::/16 meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-neighbor-solicit }",
                V6_ND_MULTICAST,
                "",
            ),
            counted(
                &format!("meta protocol ip meta l4proto udp udp dport {ECHO_PORT}"),
                V4_ECHOES,
                "",
            ),
            counted(
                &format!("meta protocol ip6 meta l4proto udp udp dport {ECHO_PORT}"),
                V6_ECHOES,
                "",
            ),
        ];
        let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
        let ingress = nft_replace_ingress(NFT_ROUTER_LOAD, ROUTER_DOWNLINK, "accept", &rules);
        let t = NFT_ROUTER_REDIRECTS;
        let redirects = format!(
            "table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    {}\n    {}\n  }}\n}}\n",
            counted("meta l4proto icmp icmp type redirect", V4_REDIRECTS, ""),
            counted("meta l4proto ipv6-icmp icmpv6 type nd-redirect", V6_REDIRECTS, ""),
        );
        (ingress, redirects)
    }

    /// Starts counting, by class (see [`class`]), what the server sends to
    /// both routers (at their downlinks: addressed to the router itself,
    /// ARP, ND, forwarding-plane echoes), the ICMP redirects the routers
    /// send, and the echo requests arriving at every transit target. Read
    /// (and removed) with [`Lab::read_load_count`]; started again, the
    /// counters start from 0.
    pub fn start_load_count(&self) -> Result<()> {
        for u in Uplink::ALL {
            let (ingress, redirects) = Self::router_load_rules(u);
            cmd::nft(&self.router_ns(u), &format!("{ingress}{redirects}"))?;
        }
        for i in 0..TRANSITS {
            let rules = [
                counted(
                    "meta protocol ip meta l4proto icmp icmp type echo-request",
                    class::V4_TRANSIT,
                    "",
                ),
                counted(
                    "meta protocol ip6 meta l4proto ipv6-icmp icmpv6 type echo-request",
                    class::V6_TRANSIT,
                    "",
                ),
            ];
            let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
            cmd::nft(
                &self.transit_ns(i),
                &nft_replace_ingress(NFT_TRANSIT_LOAD, ROUTER_UPLINK, "accept", &rules),
            )?;
        }
        Ok(())
    }

    /// The counts since [`Lab::start_load_count`]: the routers (primary's
    /// first), then the transits in order. The counting rules are removed
    /// (also when reading fails).
    pub fn read_load_count(&self) -> Result<Vec<Load>> {
        let mut out = Vec::new();
        let mut first_err = None;
        for u in Uplink::ALL {
            let ns = self.router_ns(u);
            let r = self
                .nft_counters(&ns, "netdev", NFT_ROUTER_LOAD)
                .and_then(|mut a| {
                    a.extend(self.nft_counters(&ns, "inet", NFT_ROUTER_REDIRECTS)?);
                    Ok(a)
                });
            let t = NFT_ROUTER_REDIRECTS;
            let rm = cmd::nft(
                &ns,
                &format!(
                    "{}table inet {t}\ndelete table inet {t}\n",
                    nft_remove(NFT_ROUTER_LOAD)
                ),
            );
            match (r, rm) {
                (Ok(packets), Ok(())) => out.push(Load {
                    node: u.role().to_string(),
                    packets,
                }),
                (Err(e), _) | (_, Err(e)) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for i in 0..TRANSITS {
            let ns = self.transit_ns(i);
            let r = self.nft_counters(&ns, "netdev", NFT_TRANSIT_LOAD);
            let rm = cmd::nft(&ns, &nft_remove(NFT_TRANSIT_LOAD));
            match (r, rm) {
                (Ok(packets), Ok(())) => out.push(Load {
                    node: crate::TRANSIT_NAMES[i].to_string(),
                    packets,
                }),
                (Err(e), _) | (_, Err(e)) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// `uplink`'s router polices what the server sends to the router
    /// itself, class by class as control-plane policing does: ICMP echo
    /// requests, ICMPv6 echo requests, neighbour discovery, ARP, and
    /// everything else addressed to it, each down to `per_second` (nft
    /// `limit rate over N/second`, its default burst of 5 packets), while
    /// it forwards everything. Counters "seen <class>" and "policed
    /// <class>" ([`Lab::police_counters`]). Calling it again replaces the
    /// rate.
    pub fn police_self(&self, uplink: Uplink, per_second: u32) -> Result<()> {
        if per_second == 0 {
            return Err(LabError::Invalid(
                "police_self: 0/s is a dead router, not policing".into(),
            ));
        }
        let iif = format!("iifname \"{ROUTER_DOWNLINK}\"");
        let limit = format!("limit rate over {per_second}/second");
        let classes = [
            ("icmp echo", "meta l4proto icmp icmp type echo-request"),
            (
                "icmpv6 echo",
                "meta l4proto ipv6-icmp icmpv6 type echo-request",
            ),
            (
                "nd",
                "meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }",
            ),
        ];
        let mut rules = Vec::new();
        for (name, m) in classes {
            rules.push(counted(&format!("{iif} {m}"), &format!("seen {name}"), ""));
            rules.push(counted(
                &format!("{iif} {m} {limit}"),
                &format!("policed {name}"),
                "drop",
            ));
            rules.push(format!("{iif} {m} accept"));
        }
        rules.push(counted(&iif, "seen other", ""));
        rules.push(counted(&format!("{iif} {limit}"), "policed other", "drop"));
        let t = NFT_POLICE;
        let a = NFT_POLICE_ARP;
        let text = format!(
            "table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    {}\n  }}\n}}\n\
             table arp {a}\ndelete table arp {a}\ntable arp {a} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    {}\n    {}\n  }}\n}}\n",
            rules.join("\n    "),
            counted(&iif, "seen arp", ""),
            counted(&format!("{iif} {limit}"), "policed arp", "drop"),
        );
        cmd::nft(&self.router_ns(uplink), &text)
    }

    /// The policer's counters ("seen <class>", "policed <class>").
    pub fn police_counters(&self, uplink: Uplink) -> Result<BTreeMap<String, u64>> {
        let ns = self.router_ns(uplink);
        let mut c = self.nft_counters(&ns, "inet", NFT_POLICE)?;
        c.extend(self.nft_counters(&ns, "arp", NFT_POLICE_ARP)?);
        Ok(c)
    }

    /// Undoes [`Lab::police_self`].
    pub fn clear_police(&self, uplink: Uplink) -> Result<()> {
        let (t, a) = (NFT_POLICE, NFT_POLICE_ARP);
        cmd::nft(
            &self.router_ns(uplink),
            &format!(
                "table inet {t}\ndelete table inet {t}\ntable arp {a}\ndelete table arp {a}\n"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_comment_and_summed() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "netdev", "name": "t", "handle": 1}},
            {"rule": {"family": "netdev", "table": "t", "chain": "ingress", "handle": 2, "comment": "arp",
              "expr": [{"match": {"op": "==", "left": {"meta": {"key": "protocol"}}, "right": "arp"}}, {"counter": {"packets": 7, "bytes": 294}}]}},
            {"rule": {"family": "netdev", "table": "t", "chain": "ingress", "handle": 3, "comment": "arp",
              "expr": [{"counter": {"packets": 3, "bytes": 1}}, {"drop": null}]}},
            {"rule": {"family": "netdev", "table": "t", "chain": "ingress", "handle": 4, "comment": "zero",
              "expr": [{"counter": {"packets": 0, "bytes": 0}}]}},
            {"rule": {"family": "netdev", "table": "t", "chain": "ingress", "handle": 5,
              "expr": [{"counter": {"packets": 9, "bytes": 0}}]}},
            {"rule": {"family": "netdev", "table": "t", "chain": "ingress", "handle": 6, "comment": "no counter",
              "expr": [{"accept": null}]}}]}"#;
        let c = parse_nft_counters(json).unwrap();
        assert_eq!(c.get("arp"), Some(&10));
        assert_eq!(c.get("zero"), Some(&0));
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(parse_nft_counters("{}").is_err());
        assert!(parse_nft_counters("Error: No such file").is_err());
        let load = Load {
            node: "ra".into(),
            packets: c,
        };
        assert_eq!(load.get("arp").unwrap(), 10);
        let e = load.get("nd").unwrap_err().to_string();
        assert!(e.contains("ra") && e.contains("nd"), "{e}");
    }

    #[test]
    fn counted_rules_name_their_counter() {
        assert_eq!(
            counted("meta protocol arp", "arp", ""),
            "meta protocol arp counter comment \"arp\""
        );
        assert_eq!(
            counted(
                "iifname \"down0\" limit rate over 5/second",
                "policed arp",
                "drop"
            ),
            "iifname \"down0\" limit rate over 5/second counter drop comment \"policed arp\""
        );
        let (ingress, redirects) = Lab::router_load_rules(Uplink::Primary);
        assert!(
            ingress.contains("ip daddr 198.18.1.1 counter comment"),
            "{ingress}"
        );
        assert!(ingress.contains("udp dport 3785 counter"), "{ingress}");
        assert!(redirects.contains("hook output"), "{redirects}");
    }
}
