//! The bond lab: a server whose two members of one active-backup bond go
//! to two bridged "switches", the gateway behind the second one.
//!
//! ```text
//!  srv: bond0 (198.18.1.2/24) = eth0 + eth1
//!       eth0 ---- p0 [swa: br0] isl ---- isl [swb: br0] p0 ---- eth1
//!                                               [swb: br0] pg ---- ga [gw] 198.18.1.1/24, sink on lo
//! ```
//! eth0 (the preferred member) reaches the gateway through both switches,
//! so breaking the inter-switch link (`isl_down`) makes the gateway
//! unreachable through eth0 with its carrier up; eth1 reaches it directly.
//!
//! The [`Shape::Anycast`] variant gives each member its own switch and its
//! own gateway router (one anycast gateway: the same address and MAC on
//! both, as on a pair of top-of-rack switches), each with its own upstream
//! to a core that holds the transit target and the sink:
//! ```text
//!  eth0 ---- p0 [swa: br0] pr ---- lan [ra] wan ---- ua [core] 198.19.0.1 (transit), sink
//!  eth1 ---- p0 [swb: br0] pr ---- lan [rb] wan ---- ub [core]
//! ```
//! `upstream(false)` cuts ra from the core: the gateway still answers
//! through eth0, but nothing behind it is reachable.
//!
//! Needs the bonding module (the VM tier). Same safety rules as the main
//! lab: namespaces only, 198.18.0.0/15 only; dropping the lab deletes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{cmd, netns, LabError, StreamSpec, UdpStream, SINK_V4};

type Result<T> = std::result::Result<T, LabError>;

pub const MEMBERS: [&str; 2] = ["eth0", "eth1"];
pub const BOND: &str = "bond0";
pub const GATEWAY: &str = "198.18.1.1";
pub const SERVER: &str = "198.18.1.2";
/// The members' dedicated probe addresses (never configured on the server).
pub const PROBE_ADDRESSES: [&str; 2] = ["198.18.1.10", "198.18.1.11"];
/// The transit target behind the gateway(s).
pub const TRANSIT: &str = "198.19.0.1";
/// The anycast gateway's MAC (both routers of [`Shape::Anycast`]).
pub const ANYCAST_MAC: &str = "02:00:5e:00:01:01";

/// The lab's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Two bridged switches, one gateway behind the second (see the module docs).
    Switched,
    /// One switch and one gateway router per member, an anycast gateway.
    Anycast,
    /// Switched, plus a routed uplink: the server's eth2 to its own gateway
    /// router (198.18.2.1), which reaches the gateway's transit and sink
    /// over a link of its own. A mixed server: bond members and a routed
    /// uplink in one config.
    Mixed,
    /// No bond (needs no bonding module): the server's eth0 straight to the
    /// gateway, which holds the transit targets, v4 and v6. For testing the
    /// member prober's packets natively.
    Plain,
}

pub const GATEWAY6: &str = "2001:db8:1::1";
/// Shape::Mixed: the routed uplink's gateway and the server's address on it.
pub const ROUTED_GATEWAY: &str = "198.18.2.1";
pub const ROUTED_SERVER: &str = "198.18.2.2";
pub const SERVER6: &str = "2001:db8:1::2";
pub const PROBE_ADDRESS6: &str = "2001:db8:1::10";
/// The members' dedicated IPv6 probe addresses (the first is [`PROBE_ADDRESS6`]).
pub const PROBE_ADDRESSES6: [&str; 2] = [PROBE_ADDRESS6, "2001:db8:1::11"];
/// The nft table that counts forwarding-plane echoes on the gateway routers.
const NFT_ECHO_COUNT: &str = "ul_bond_echo_count";
/// The nft table that makes a gateway router stop forwarding.
const NFT_FORWARDING_DEAD: &str = "ul_bond_forwarding_dead";
pub const TRANSIT6: &str = "2001:db8:ff::1";

pub struct BondLab {
    shape: Shape,
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    /// The members' own (permanent) MACs, read before they were enslaved.
    perm_macs: [[u8; 6]; 2],
}

impl BondLab {
    /// Build it; `miimon` in ms (0 = no link monitoring).
    pub fn build(miimon: u32) -> Result<BondLab> {
        Self::build_shape(miimon, Shape::Switched)
    }

    pub fn build_shape(miimon: u32, shape: Shape) -> Result<BondLab> {
        let prefix = netns::new_prefix();
        let dir =
            std::env::temp_dir().join(format!("uplink-bondlab-{}", prefix.trim_end_matches('-')));
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let mut lab = BondLab {
            shape,
            prefix,
            dir,
            namespaces: Vec::new(),
            perm_macs: [[0; 6]; 2],
        };
        let roles: &[&str] = match shape {
            Shape::Switched => &["srv", "swa", "swb", "gw"],
            Shape::Mixed => &["srv", "swa", "swb", "gw", "gr"],
            Shape::Anycast => &["srv", "swa", "swb", "ra", "rb", "core"],
            Shape::Plain => &["srv", "gw"],
        };
        for role in roles {
            let ns = lab.ns(role);
            netns::add(&ns)?;
            lab.namespaces.push(ns);
        }
        let (srv, swa, swb, gw) = (lab.ns("srv"), lab.ns("swa"), lab.ns("swb"), lab.ns("gw"));
        for ns in &lab.namespaces {
            cmd::run("ip", &["-n", ns, "link", "set", "lo", "up"], None)?;
        }
        let ip = |ns: &str, args: &str| -> Result<String> {
            let mut a = vec!["-n", ns];
            a.extend(args.split_whitespace());
            cmd::run("ip", &a, None)
        };
        if shape == Shape::Plain {
            ip(
                &srv,
                &format!("link add eth0 type veth peer name ga netns {gw}"),
            )?;
            ip(&srv, "link set eth0 up")?;
            ip(&gw, &format!("addr add {GATEWAY}/24 dev ga"))?;
            ip(&gw, &format!("addr add {GATEWAY6}/64 dev ga nodad"))?;
            ip(&gw, &format!("addr add {TRANSIT}/32 dev lo"))?;
            ip(&gw, &format!("addr add {TRANSIT6}/128 dev lo"))?;
            ip(&gw, "link set ga up")?;
            lab.sysctl("gw", "net.ipv4.ip_forward=1")?;
            lab.sysctl("gw", "net.ipv6.conf.all.forwarding=1")?;
            // IPv6 on the fresh link (the link-local addresses' DAD) before
            // any neighbour discovery is tried.
            for ns in [&srv, &gw] {
                let dev = if ns == &srv { "eth0" } else { "ga" };
                lab.wait(
                    &format!("IPv6 ready on {dev}"),
                    Duration::from_secs(10),
                    || {
                        ip(ns, &format!("-6 addr show dev {dev} tentative"))
                            .is_ok_and(|o| o.trim().is_empty())
                    },
                );
            }
            return Ok(lab);
        }
        // Wires.
        ip(
            &srv,
            &format!("link add eth0 type veth peer name p0 netns {swa}"),
        )?;
        ip(
            &srv,
            &format!("link add eth1 type veth peer name p0 netns {swb}"),
        )?;
        for sw in [&swa, &swb] {
            ip(sw, "link add br0 type bridge")?;
            ip(sw, "link set br0 up")?;
        }
        if shape == Shape::Mixed {
            let gr = lab.ns("gr");
            ip(
                &srv,
                &format!("link add eth2 type veth peer name lan netns {gr}"),
            )?;
            ip(&srv, &format!("addr add {ROUTED_SERVER}/24 dev eth2"))?;
            ip(&srv, "link set eth2 up")?;
            ip(&gr, &format!("addr add {ROUTED_GATEWAY}/24 dev lan"))?;
            ip(&gr, "link set lan up")?;
            ip(
                &gr,
                &format!("link add wan type veth peer name gr0 netns {gw}"),
            )?;
            ip(&gr, "addr add 198.18.3.1/30 dev wan")?;
            ip(&gr, "link set wan up")?;
            ip(&gr, "route add default via 198.18.3.2")?;
            ip(&gw, "addr add 198.18.3.2/30 dev gr0")?;
            ip(&gw, "link set gr0 up")?;
            ip(&gw, "route add 198.18.2.0/24 via 198.18.3.1")?;
            cmd::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &gr,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ],
                None,
            )?;
        }
        match shape {
            Shape::Plain => unreachable!("returned above"),
            Shape::Switched | Shape::Mixed => {
                ip(
                    &swa,
                    &format!("link add isl type veth peer name isl netns {swb}"),
                )?;
                ip(
                    &swb,
                    &format!("link add pg type veth peer name ga netns {gw}"),
                )?;
                for (sw, p) in [
                    (&swa, "p0"),
                    (&swa, "isl"),
                    (&swb, "p0"),
                    (&swb, "isl"),
                    (&swb, "pg"),
                ] {
                    ip(sw, &format!("link set {p} master br0"))?;
                    ip(sw, &format!("link set {p} up"))?;
                }
                // Gateway with the sink on its loopback.
                ip(&gw, &format!("addr add {GATEWAY}/24 dev ga"))?;
                ip(&gw, &format!("addr add {SINK_V4}/32 dev lo"))?;
                ip(&gw, &format!("addr add {TRANSIT}/32 dev lo"))?;
                ip(&gw, &format!("addr add {GATEWAY6}/64 dev ga nodad"))?;
                ip(&gw, "link set ga up")?;
                // A gateway forwards (the members' forwarding-plane echoes
                // come back through it).
                lab.sysctl("gw", "net.ipv4.ip_forward=1")?;
                lab.sysctl("gw", "net.ipv6.conf.all.forwarding=1")?;
            }
            Shape::Anycast => {
                let core = lab.ns("core");
                ip(&core, &format!("addr add {SINK_V4}/32 dev lo"))?;
                ip(&core, &format!("addr add {TRANSIT}/32 dev lo"))?;
                for (k, (sw, r)) in [(&swa, lab.ns("ra")), (&swb, lab.ns("rb"))]
                    .into_iter()
                    .enumerate()
                {
                    let up = if k == 0 { "ua" } else { "ub" };
                    ip(
                        sw,
                        &format!("link add pr type veth peer name lan netns {r}"),
                    )?;
                    ip(sw, "link set p0 master br0")?;
                    ip(sw, "link set pr master br0")?;
                    ip(sw, "link set p0 up")?;
                    ip(sw, "link set pr up")?;
                    ip(&r, &format!("link set lan address {ANYCAST_MAC}"))?;
                    ip(&r, &format!("addr add {GATEWAY}/24 dev lan"))?;
                    ip(&r, &format!("addr add {GATEWAY6}/64 dev lan nodad"))?;
                    ip(&r, "link set lan up")?;
                    ip(
                        &r,
                        &format!("link add wan type veth peer name {up} netns {core}"),
                    )?;
                    let (rn, cn) = (
                        format!("198.18.9.{}", 1 + 4 * k),
                        format!("198.18.9.{}", 2 + 4 * k),
                    );
                    ip(&r, &format!("addr add {rn}/30 dev wan"))?;
                    ip(&r, "link set wan up")?;
                    ip(&r, &format!("route add default via {cn}"))?;
                    ip(&core, &format!("addr add {cn}/30 dev {up}"))?;
                    ip(&core, &format!("link set {up} up"))?;
                    // The member's probe address comes back through its own router.
                    ip(
                        &core,
                        &format!("route add {}/32 via {rn}", PROBE_ADDRESSES[k]),
                    )?;
                    if k == 0 {
                        ip(&core, &format!("route add 198.18.1.0/24 via {rn}"))?;
                    }
                    cmd::run(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            &r,
                            "sysctl",
                            "-qw",
                            "net.ipv4.ip_forward=1",
                        ],
                        None,
                    )?;
                    lab.sysctl(
                        if k == 0 { "ra" } else { "rb" },
                        "net.ipv6.conf.all.forwarding=1",
                    )?;
                }
            }
        }
        // Server: the bond (ports must be down to be enslaved; "down" in the
        // same message as "master" is applied after enslaving since 6.1).
        for (k, m) in MEMBERS.iter().enumerate() {
            lab.perm_macs[k] = lab.mac_of("srv", m)?;
        }
        ip(
            &srv,
            &format!("link add {BOND} type bond mode active-backup miimon {miimon}"),
        )?;
        for m in MEMBERS {
            ip(&srv, &format!("link set {m} down"))?;
            ip(&srv, &format!("link set {m} master {BOND}"))?;
            ip(&srv, &format!("link set {m} up"))?;
        }
        ip(&srv, &format!("addr add {SERVER}/24 dev {BOND}"))?;
        ip(&srv, &format!("addr add {SERVER6}/64 dev {BOND} nodad"))?;
        ip(&srv, &format!("link set {BOND} up"))?;
        // The gateway routers' link-local addresses out of DAD: until then
        // a Linux router sends no neighbour solicitation at all (it has no
        // source for one), so it cannot resolve a member's IPv6 probe
        // address and the members' IPv6 echoes are lost (auto then settles
        // on ND, seen here in the VM). The plain shape waits the same way.
        let routers: &[(&str, &str)] = match shape {
            Shape::Anycast => &[("ra", "lan"), ("rb", "lan")],
            _ => &[("gw", "ga")],
        };
        for (role, dev) in routers {
            lab.wait(
                &format!("IPv6 ready on {role}'s {dev}"),
                Duration::from_secs(10),
                || {
                    lab.ip(role, &format!("-6 addr show dev {dev} tentative"))
                        .is_ok_and(|o| o.trim().is_empty())
                },
            );
        }
        Ok(lab)
    }

    fn sysctl(&self, role: &str, setting: &str) -> Result<()> {
        cmd::run(
            "ip",
            &["netns", "exec", &self.ns(role), "sysctl", "-qw", setting],
            None,
        )
        .map(|_| ())
    }

    /// The gateway router behind member `member`: "gw" (one for both) or,
    /// in [`Shape::Anycast`], "ra" / "rb".
    pub fn router_of(&self, member: usize) -> &'static str {
        match (self.shape, member) {
            (Shape::Anycast, 0) => "ra",
            (Shape::Anycast, _) => "rb",
            _ => "gw",
        }
    }

    /// Start counting, on router `role`, the forwarding-plane echoes (UDP
    /// to port 3785) it forwards from each member's probe address, IPv4
    /// and IPv6 (see [`BondLab::echo_counts`]). Replaces earlier counts.
    pub fn count_echoes(&self, role: &str) -> Result<()> {
        let t = NFT_ECHO_COUNT;
        let mut rules = String::new();
        for a in PROBE_ADDRESSES {
            rules += &format!("    ip saddr {a} ip daddr {a} udp dport 3785 counter\n");
        }
        for a in PROBE_ADDRESSES6 {
            rules += &format!("    ip6 saddr {a} ip6 daddr {a} udp dport 3785 counter\n");
        }
        cmd::nft(
            &self.ns(role),
            &format!(
                "table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n{rules}  }}\n}}\n"
            ),
        )
    }

    /// The echoes router `role` forwarded since [`BondLab::count_echoes`],
    /// per member: [[member 0 v4, v6], [member 1 v4, v6]].
    pub fn echo_counts(&self, role: &str) -> Result<[[u64; 2]; 2]> {
        let out = cmd::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(role),
                "nft",
                "list",
                "table",
                "inet",
                NFT_ECHO_COUNT,
            ],
            None,
        )?;
        let count = |a: &str| {
            out.lines()
                .find(|l| l.contains(&format!("saddr {a} ")))
                .and_then(|l| l.split("packets ").nth(1))
                .and_then(|x| x.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok([0, 1].map(|m| [count(PROBE_ADDRESSES[m]), count(PROBE_ADDRESSES6[m])]))
    }

    /// Router `role` stops forwarding (`dead`) while it still answers ARP,
    /// neighbour solicitations and pings itself, or forwards again.
    pub fn forwarding_dead(&self, role: &str, dead: bool) -> Result<()> {
        let t = NFT_FORWARDING_DEAD;
        let mut set = format!("table inet {t}\ndelete table inet {t}\n");
        if dead {
            set += &format!(
                "table inet {t} {{\n  chain forward {{\n    type filter hook forward priority 0; policy drop;\n  }}\n}}\n"
            );
        }
        cmd::nft(&self.ns(role), &set)
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }
    pub fn server_ns(&self) -> String {
        self.ns("srv")
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ip(&self, role: &str, args: &str) -> Result<String> {
        let ns = self.ns(role);
        let mut a = vec!["-n", ns.as_str()];
        a.extend(args.split_whitespace());
        cmd::run("ip", &a, None)
    }

    /// Carrier loss on a member: its switch port goes down.
    pub fn carrier(&self, member: usize, up: bool) -> Result<()> {
        let sw = if member == 0 { "swa" } else { "swb" };
        self.ip(
            sw,
            &format!("link set p0 {}", if up { "up" } else { "down" }),
        )
        .map(|_| ())
    }

    /// The inter-switch link: down = the gateway is unreachable through eth0.
    pub fn isl(&self, up: bool) -> Result<()> {
        self.ip(
            "swa",
            &format!("link set isl {}", if up { "up" } else { "down" }),
        )
        .map(|_| ())
    }

    /// Anycast shape: the upstream of member `member`'s gateway router.
    pub fn upstream(&self, member: usize, up: bool) -> Result<()> {
        assert_eq!(
            self.shape,
            Shape::Anycast,
            "upstream() needs Shape::Anycast"
        );
        let r = if member == 0 { "ra" } else { "rb" };
        self.ip(
            r,
            &format!("link set wan {}", if up { "up" } else { "down" }),
        )?;
        if up {
            // Taking the link down deleted the router's default route.
            self.ip(
                r,
                &format!("route replace default via 198.18.9.{}", 2 + 4 * member),
            )?;
        }
        Ok(())
    }

    /// Take a member out of the bond / put it back.
    pub fn enslave(&self, member: usize, yes: bool) -> Result<()> {
        let m = MEMBERS[member];
        if yes {
            self.ip("srv", &format!("link set {m} down"))?;
            self.ip("srv", &format!("link set {m} master {BOND}"))?;
            self.ip("srv", &format!("link set {m} up"))?;
        } else {
            self.ip("srv", &format!("link set {m} nomaster"))?;
            self.ip("srv", &format!("link set {m} up"))?;
        }
        Ok(())
    }

    /// The driver's active member, from sysfs in the server namespace.
    pub fn active_member(&self) -> Result<String> {
        let out = cmd::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns("srv"),
                "cat",
                "/sys/class/net/bond0/bonding/active_slave",
            ],
            None,
        )?;
        Ok(out.trim().to_string())
    }

    pub fn bond_mac(&self) -> Result<String> {
        let out = self.ip("srv", &format!("-br link show {BOND}"))?;
        Ok(out.split_whitespace().nth(2).unwrap_or("").to_lowercase())
    }

    /// Ports of switch `sw` ("swa"/"swb") on which `mac` is learned.
    pub fn fdb_ports(&self, sw: &str, mac: &str) -> Result<Vec<String>> {
        let ns = self.ns(sw);
        let out = cmd::run("bridge", &["-n", &ns, "fdb", "show", "br", "br0"], None)?;
        Ok(out
            .lines()
            .filter(|l| l.to_lowercase().starts_with(mac))
            .filter_map(|l| l.split_whitespace().nth(2).map(String::from))
            .collect())
    }

    /// The gateway's neighbour entry for the server (lladdr, state).
    pub fn gateway_neigh(&self) -> Result<String> {
        self.gateway_neigh_of(SERVER)
    }

    /// The gateway's neighbour entry for `addr` (Switched and Plain shapes).
    pub fn gateway_neigh_of(&self, addr: &str) -> Result<String> {
        Ok(self
            .ip("gw", &format!("neigh show {addr} dev ga"))?
            .trim()
            .to_string())
    }

    /// Member `member`'s permanent MAC (its own, before the bond lent it
    /// the bond's; eth0 lends its own to the bond).
    pub fn perm_mac(&self, member: usize) -> [u8; 6] {
        self.perm_macs[member]
    }

    /// MAC of `dev` in namespace `role`.
    pub fn mac_of(&self, role: &str, dev: &str) -> Result<[u8; 6]> {
        let out = self.ip(role, &format!("-br link show {dev}"))?;
        let s = out.split_whitespace().nth(2).unwrap_or("");
        let v: Vec<u8> = s
            .split(':')
            .filter_map(|x| u8::from_str_radix(x, 16).ok())
            .collect();
        v.try_into().map_err(|_| LabError::Io {
            what: format!("MAC of {dev}: {out:?}"),
            source: std::io::Error::other("unparsable"),
        })
    }

    pub fn stream(&self, spec: &StreamSpec) -> Result<UdpStream> {
        let sink = match self.shape {
            Shape::Switched | Shape::Plain | Shape::Mixed => "gw",
            Shape::Anycast => "core",
        };
        UdpStream::start(&self.ns("srv"), &self.ns(sink), spec)
    }

    /// A config with the two members as uplinks (eth0 preferred), plus `extra` TOML.
    pub fn write_config(&self, extra: &str) -> Result<PathBuf> {
        self.write_config_with(extra, false)
    }

    /// Same, with each member's dedicated probe address
    /// ([`PROBE_ADDRESSES`]) when `probe_addresses`: the transit is then
    /// probed through each member.
    pub fn write_config_with(&self, extra: &str, probe_addresses: bool) -> Result<PathBuf> {
        self.write_config_probes(extra, probe_addresses, false)
    }

    /// Same, with the IPv4 and (`probe6`) IPv6 probe addresses of each
    /// member ([`PROBE_ADDRESSES`], [`PROBE_ADDRESSES6`]): with both, each
    /// member echoes through its gateway in both families.
    pub fn write_config_probes(&self, extra: &str, probe4: bool, probe6: bool) -> Result<PathBuf> {
        let pa = |k: usize| {
            let mut s = String::new();
            if probe4 {
                s += &format!("probe_address4 = \"{}\"\n", PROBE_ADDRESSES[k]);
            }
            if probe6 {
                s += &format!("probe_address6 = \"{}\"\n", PROBE_ADDRESSES6[k]);
            }
            s
        };
        let (pa0, pa1) = (pa(0), pa(1));
        let routed = if self.shape == Shape::Mixed {
            format!(
                "[[uplink]]\nname = \"routed\"\ninterface = \"eth2\"\ngateway4 = \"{ROUTED_GATEWAY}\"\n"
            )
        } else {
            String::new()
        };
        let sock = self.dir().join("uplinkd.sock");
        let text = format!(
            r#"[agent]
socket = "{}"
{extra}
[[uplink]]
name = "member-a"
interface = "eth0"
bond = "{BOND}"
gateway4 = "{GATEWAY}"
gateway6 = "{GATEWAY6}"
{pa0}
[[uplink]]
name = "member-b"
interface = "eth1"
bond = "{BOND}"
gateway4 = "{GATEWAY}"
gateway6 = "{GATEWAY6}"
{pa1}
{routed}
[[transit]]
name = "transit-a"
targets = ["{TRANSIT}"]
"#,
            sock.display()
        );
        let p = self.dir().join("uplinkd.toml");
        std::fs::write(&p, text).map_err(|source| LabError::Io {
            what: "write config".into(),
            source,
        })?;
        Ok(p)
    }

    pub fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < timeout {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bond lab: timed out after {timeout:?} waiting for {what}");
        false
    }
}

impl Drop for BondLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for ns in self.namespaces.drain(..) {
            if let Err(e) = netns::delete(&ns) {
                eprintln!("bond lab: delete {ns}: {e}");
            }
        }
    }
}
