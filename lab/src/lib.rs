//! The lab: the production shape of a dual-homed server, built in network
//! namespaces, with failure injection and traffic measurement. One topology
//! builder for the `uplink-lab` binary, the end-to-end tests and the
//! benchmark.
//!
//! ```text
//!                    +---- ra ----+ up0 ---- ra +------ inet ------+ t1 -- up0  t1 (198.19.0.1, 2001:db8:ff::1)
//!  srv  eth0 ---- down0  (router a)              |  sink 198.19.1.1 | t2 -- up0  t2 ...
//!       eth1 ---- down0  (router b)              |  2001:db8:fe::1  | t3 -- up0  t3 ...
//!                    +---- rb ----+ up0 ---- rb +------------------+ t4 -- up0  t4 (198.19.0.4, 2001:db8:ff::4)
//! ```
//!
//! | link          | IPv4              | IPv6              |
//! |---------------|-------------------|-------------------|
//! | srv eth0–ra   | 198.18.1.0/24 (.1 router, .2 server)  | 2001:db8:1::/64 (::1, ::2) |
//! | srv eth1–rb   | 198.18.2.0/24     | 2001:db8:2::/64   |
//! | ra–inet       | 198.18.11.0/24 (.1 inet, .2 router) | 2001:db8:11::/64 |
//! | rb–inet       | 198.18.12.0/24    | 2001:db8:12::/64  |
//! | ra–rb (x0)    | 198.18.13.0/24 (.1 ra, .2 rb) | 2001:db8:13::/64 (::1, ::2) |
//! | srv lo        | 198.18.0.1/32 (service address) | 2001:db8:0:1::1/128 |
//! | inet–t*i*     | 198.18.10*i*.0/24 (.1 inet, .2 transit) | 2001:db8:10*i*::/64 |
//!
//! Each transit is its own namespace, so each can be broken alone. The server
//! gets no default route (uplinkd installs it) unless [`LabSpec`] asks.
//!
//! The way back: the server's service address (on its loopback; the lab
//! config sets it as `agent.source4`/`source6`) is routed to the server by
//! both routers, each through its own link to the server (metric
//! [`SERVICE_METRIC_NEAR`]) and, when that is gone, through the other router
//! over the link between them (`x0`, metric [`SERVICE_METRIC_FAR`]); inet
//! prefers the primary's router while its link to it is up. Inet, and the
//! routers on their links to the server and to each other (not upstream: a
//! dead upstream stays a silent blackhole), run with
//! `ignore_routes_with_linkdown=1`, so a route through such a link without
//! carrier is ignored; a dead gateway withdraws its router's near
//! route (as BFD would). This is what static routes tracked by BFD, or a
//! BGP session from the host, give a production server.
//!
//! Safety: the lab never touches the root namespace. Every link is created
//! with `ip -n <ns>`, every sysctl is written inside a lab namespace, and
//! only 198.18.0.0/15 and 2001:db8::/32 are used. Namespace names are
//! `ul-<pid hex>-<n>-<role>` (unique per lab instance). Dropping a [`Lab`]
//! (also while unwinding from a panic) deletes all of its namespaces, keeps
//! going on errors and reports each on stderr; [`Lab::destroy`] returns them.
//!
//! Same-ifindex veths: both ends of each server uplink have the same ifindex
//! (eth0/down0 = 2, eth1/down0 = 3). The kernel's linkwatch treats a device
//! whose ifindex equals its `iflink` like a physical NIC (non-urgent link
//! events, batched at most once per second while other links change), which
//! is what the daemon must be tested against. Consequence for readers of
//! link state: the carrier (`LOWER_UP`, IFLA_CARRIER) changes at once, but
//! `operstate`/`RUNNING` (and `ip`'s `NO-CARRIER`, which is `UP` without
//! `RUNNING`) may lag by up to a second; [`LinkInfo::carrier`] reads the
//! former.

pub mod bench;
pub mod bond;
mod cmd;
pub mod demo;
pub mod echo;
pub mod load;
pub mod netns;
mod noise;
pub mod ping;
pub mod signals;
mod stream;
pub mod tcp;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use echo::{EchoReport, EchoSpec, EchoStream};
pub use load::Load;
pub use noise::{NoiseGuard, NOISE_DEV};
pub use ping::PingOpts;
pub use signals::Termination;
pub use stream::{Stall, StreamReport, StreamSpec, UdpStream};
pub use tcp::{TcpFlow, TcpSpec};
pub use uplinkd_core::config::Family;

/// Temp dirs of labs are `<tmp>/uplink-lab-<prefix without trailing '-'>`.
pub(crate) const TEMP_DIR_PREFIX: &str = "uplink-lab-";

/// The router's interface toward the server (in both `ra` and `rb`).
pub const ROUTER_DOWNLINK: &str = "down0";
/// The router's interface toward `inet` (also the transit's toward `inet`).
pub const ROUTER_UPLINK: &str = "up0";
/// Number of transit providers.
pub const TRANSITS: usize = 4;
/// Their names in the generated config, in order.
pub const TRANSIT_NAMES: [&str; TRANSITS] = ["transit-a", "transit-b", "transit-c", "transit-d"];
/// The routers' interface toward each other (in both `ra` and `rb`): how a
/// router hands the service address to the other when its own link to the
/// server is gone.
pub const ROUTER_CROSSLINK: &str = "x0";
/// The server's service address, on its loopback, routed to it by both
/// routers: the source of `agent.source4`/`source6` in the lab config.
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);
/// Metric of a router's route to the service address through its own link
/// to the server, and of inet's route to it through the primary's router.
pub const SERVICE_METRIC_NEAR: u32 = 10;
/// Metric of the routes through the other router: used only while the
/// near one is gone (withdrawn, or ignored with its link down).
pub const SERVICE_METRIC_FAR: u32 = 20;

/// The service address of `family`.
pub fn service(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(SERVICE_V4),
        Family::V6 => IpAddr::V6(SERVICE_V6),
    }
}

/// The traffic sink, on `inet`'s loopback.
pub const SINK_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1);
pub const SINK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfe, 0, 0, 0, 0, 1);

/// The sink address of `family`.
pub fn sink(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(SINK_V4),
        Family::V6 => IpAddr::V6(SINK_V6),
    }
}

/// The target of transit `i` (0-based: 0 = transit-a = namespace t1):
/// 198.19.0.(i+1) and 2001:db8:ff::(i+1).
pub fn transit_target(i: usize, family: Family) -> IpAddr {
    assert!(i < TRANSITS, "transit index {i} out of range 0..{TRANSITS}");
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 19, 0, i as u8 + 1)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, i as u16 + 1)),
    }
}

/// One of the server's two uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Uplink {
    /// eth0 via router `ra`.
    Primary,
    /// eth1 via router `rb`.
    Secondary,
}

impl Uplink {
    pub const ALL: [Uplink; 2] = [Uplink::Primary, Uplink::Secondary];

    pub fn index(self) -> usize {
        match self {
            Uplink::Primary => 0,
            Uplink::Secondary => 1,
        }
    }
    /// Its name in the generated config.
    pub fn name(self) -> &'static str {
        match self {
            Uplink::Primary => "primary",
            Uplink::Secondary => "secondary",
        }
    }
    /// The server's interface.
    pub fn interface(self) -> &'static str {
        match self {
            Uplink::Primary => "eth0",
            Uplink::Secondary => "eth1",
        }
    }
    /// The ifindex of both ends of the uplink veth.
    pub fn ifindex(self) -> u32 {
        self.index() as u32 + 2
    }
    /// The router's address on the server link (the server's gateway).
    pub fn gateway(self, family: Family) -> IpAddr {
        let k = self.index() as u8 + 1;
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, k, 1)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, k as u16, 0, 0, 0, 0, 1)),
        }
    }
    /// The server's address on this uplink.
    pub fn server_addr(self, family: Family) -> IpAddr {
        let k = self.index() as u8 + 1;
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, k, 2)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, k as u16, 0, 0, 0, 0, 2)),
        }
    }
    /// The server-side subnet, e.g. "198.18.1.0/24".
    pub fn subnet(self, family: Family) -> String {
        let k = self.index() + 1;
        match family {
            Family::V4 => format!("198.18.{k}.0/24"),
            Family::V6 => format!("2001:db8:{k}::/64"),
        }
    }
    fn role(self) -> &'static str {
        match self {
            Uplink::Primary => "ra",
            Uplink::Secondary => "rb",
        }
    }
    /// The router's address on the link between the routers.
    pub fn crosslink_addr(self, family: Family) -> IpAddr {
        let k = self.index() as u8 + 1;
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 13, k)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x13, 0, 0, 0, 0, k as u16)),
        }
    }
    /// The other uplink.
    pub fn other(self) -> Uplink {
        match self {
            Uplink::Primary => Uplink::Secondary,
            Uplink::Secondary => Uplink::Primary,
        }
    }
    /// Router address on its upstream link (inet side is .1 / ::1).
    fn upstream(self, family: Family, host: u8) -> String {
        let k = self.index() + 11;
        match family {
            Family::V4 => format!("198.18.{k}.{host}"),
            Family::V6 => format!("2001:db8:{k}::{host}"),
        }
    }
}

/// A namespace of the lab, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Server,
    Router(Uplink),
    Inet,
    /// 0-based transit index.
    Transit(usize),
}

impl Node {
    fn all() -> Vec<Node> {
        let mut v = vec![
            Node::Server,
            Node::Router(Uplink::Primary),
            Node::Router(Uplink::Secondary),
            Node::Inet,
        ];
        v.extend((0..TRANSITS).map(Node::Transit));
        v
    }
    fn role(self) -> String {
        match self {
            Node::Server => "srv".into(),
            Node::Router(u) => u.role().into(),
            Node::Inet => "inet".into(),
            Node::Transit(i) => format!("t{}", i + 1),
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Give the server a default route (v4 and v6) via this uplink. None by
    /// default: uplinkd installs the default route.
    pub server_default_route: Option<Uplink>,
    /// Metric of that route (uplinkd's default `route_metric` is 10).
    pub server_default_metric: u32,
    /// `net.ipv4.conf.{all,default}.rp_filter` in the server namespace. A new
    /// namespace otherwise inherits the host's value, so the default pins it:
    /// 1 (strict, RFC 3704), the hardest case for a multi-homed agent, which
    /// must set loose mode on its uplinks (effective value = max(all, dev)).
    /// None = leave whatever was inherited.
    pub server_rp_filter: Option<u8>,
    /// Bound for links to come up and addresses to become usable.
    pub settle_timeout: Duration,
    /// Ping every target and the sink from both routers, and both gateways
    /// from the server, before returning.
    pub check_reachability: bool,
    /// The generated config sets `agent.source4`/`source6` to the service
    /// address (the address and its routes are there either way). Off only
    /// for a daemon that predates those keys.
    pub service_source: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            server_default_route: None,
            server_default_metric: 10,
            server_rp_filter: Some(1),
            settle_timeout: Duration::from_secs(10),
            check_reachability: true,
            service_source: true,
        }
    }
}

/// Everything that can go wrong in the lab. Messages name the object and
/// the cause.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}` did not finish within {timeout:?} (killed)")]
    CommandTimeout { cmd: String, timeout: Duration },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: cannot parse: {detail}")]
    Parse { what: String, detail: String },
    #[error("missing prerequisite: {0}")]
    Missing(String),
    #[error("namespace {0:?} does not belong to this lab")]
    ForeignNamespace(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("lab cleanup failed: {}", .0.join("; "))]
    Cleanup(Vec<String>),
    /// Talking to the daemon's socket failed.
    #[error(transparent)]
    Client(#[from] uplinkd::client::ClientError),
}

type Result<T, E = LabError> = std::result::Result<T, E>;

/// Checks that the tools the lab needs are present and that we may create
/// namespaces; the error says exactly what is missing and how to get it.
pub fn check_prerequisites() -> Result<()> {
    let mut missing = Vec::new();
    let probe = |prog: &str, args: &[&str]| {
        cmd::output(prog, args, None, Duration::from_secs(10))
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !probe("ip", &["-V"]) {
        missing.push("`ip` (iproute2): apt-get install iproute2");
    }
    if !probe("nft", &["--version"]) {
        missing.push("`nft` (nftables): apt-get install nftables");
    }
    if !probe("sysctl", &["-V"]) && !probe("sysctl", &["--version"]) {
        missing.push("`sysctl` (procps): apt-get install procps");
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Missing(missing.join("; ")))
    }
}

/// Link state as `ip -j link` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    pub name: String,
    pub ifindex: u32,
    /// The peer's ifindex for a veth (`iflink`).
    pub link_index: Option<u32>,
    pub operstate: String,
    pub flags: Vec<String>,
}

impl LinkInfo {
    /// Carrier (LOWER_UP): immediate, unlike operstate (see module docs).
    pub fn carrier(&self) -> bool {
        self.flags.iter().any(|f| f == "LOWER_UP")
    }
    pub fn admin_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// A route as `ip -j route` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    pub metric: u32,
    /// e.g. "linkdown", "onlink".
    pub flags: Vec<String>,
    pub protocol: Option<String>,
    pub nhid: Option<u32>,
    /// The preferred source (`src`), if the route has one.
    pub prefsrc: Option<IpAddr>,
}

/// A process started in a lab namespace: killed (SIGKILL) and reaped on
/// drop unless it already exited. Derefs to [`Child`].
pub struct LabChild {
    child: Child,
    what: String,
}

impl LabChild {
    /// Wraps a child the caller spawned itself (e.g. from [`Lab::command`]).
    pub fn new(child: Child, what: impl Into<String>) -> LabChild {
        LabChild {
            child,
            what: what.into(),
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Sends SIGTERM, waits up to `grace`, then SIGKILL; returns the status.
    pub fn terminate(mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Ok(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(LabError::Io {
                        what: format!("wait for {}", self.what),
                        source,
                    })
                }
            }
        }
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait().map_err(|source| LabError::Io {
            what: format!("wait for {}", self.what),
            source,
        })
    }
    /// Sends `sig` to the process (ours and not yet reaped, so the pid is
    /// still its own).
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
        }
    }
}

impl std::ops::Deref for LabChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}
impl std::ops::DerefMut for LabChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A built lab. Dropping it deletes every namespace it created.
pub struct Lab {
    prefix: String,
    spec: LabSpec,
    dir: PathBuf,
    /// Every namespace created (incl. noise ones), in creation order.
    created: Mutex<Vec<String>>,
    noise_counter: std::sync::atomic::AtomicU32,
    torn_down: bool,
}

/// nft ruleset that (re)creates `table netdev <name>` with one ingress chain
/// on `dev`. "add; delete; add" in one transaction is the idempotent
/// replace of nft 1.0.6 (`destroy` needs 1.0.8).
fn nft_replace_ingress(table: &str, dev: &str, policy: &str, rules: &[&str]) -> String {
    let mut s = format!(
        "table netdev {table}\ndelete table netdev {table}\ntable netdev {table} {{\n  chain ingress {{\n    type filter hook ingress device \"{dev}\" priority -100; policy {policy};\n"
    );
    for r in rules {
        s.push_str("    ");
        s.push_str(r);
        s.push('\n');
    }
    s.push_str("  }\n}\n");
    s
}

/// nft ruleset that deletes `table netdev <name>` whether or not it exists.
fn nft_remove(table: &str) -> String {
    format!("table netdev {table}\ndelete table netdev {table}\n")
}

const NFT_GATEWAY_DEAD: &str = "ul_gateway_dead";
const NFT_RANDOM_LOSS: &str = "ul_random_loss";
const NFT_IPV6_BROKEN: &str = "ul_ipv6_broken";
const NFT_TRANSIT_DEAD: &str = "ul_transit_dead";
const NFT_FORWARDING_DEAD: &str = "ul_forwarding_dead";
const NFT_TCP_LOSS: &str = "ul_tcp_loss";
/// Counter names (rule comments) of the loss rules.
const TCP_LOSS_COUNTER: &str = "tcp loss";
const LOSS_PINGS: &str = "echo requests lost";
const LOSS_ECHOES: &str = "echoes lost";

fn family_flag(f: Family) -> &'static str {
    match f {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| LabError::Parse {
        what: what.to_string(),
        detail: format!("{e}: {text}"),
    })
}

fn json_str_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_link(v: &serde_json::Value) -> Option<LinkInfo> {
    Some(LinkInfo {
        name: v.get("ifname")?.as_str()?.to_string(),
        ifindex: v.get("ifindex")?.as_u64()? as u32,
        link_index: v
            .get("link_index")
            .and_then(|x| x.as_u64())
            .map(|x| x as u32),
        operstate: v
            .get("operstate")
            .and_then(|x| x.as_str())
            .unwrap_or("UNKNOWN")
            .to_string(),
        flags: v.get("flags").map(json_str_list).unwrap_or_default(),
    })
}

fn parse_route(v: &serde_json::Value) -> RouteInfo {
    RouteInfo {
        gateway: v
            .get("gateway")
            .and_then(|x| x.as_str())
            .and_then(|s| s.parse().ok()),
        dev: v.get("dev").and_then(|x| x.as_str()).map(String::from),
        metric: v.get("metric").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
        flags: v.get("flags").map(json_str_list).unwrap_or_default(),
        protocol: v.get("protocol").and_then(|x| x.as_str()).map(String::from),
        nhid: v.get("nhid").and_then(|x| x.as_u64()).map(|x| x as u32),
        prefsrc: v
            .get("prefsrc")
            .and_then(|x| x.as_str())
            .and_then(|s| s.parse().ok()),
    }
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else
/// (values, arrays, arrays of tables) is replaced.
pub(crate) fn merge_toml(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_toml(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Lab {
    /// Builds the lab, waits until it is usable and (by default) checks
    /// reachability. On any error, what was built is torn down again.
    pub fn build(spec: &LabSpec) -> Result<Lab> {
        check_prerequisites()?;
        let prefix = netns::new_prefix();
        let dir =
            std::env::temp_dir().join(format!("{TEMP_DIR_PREFIX}{}", prefix.trim_end_matches('-')));
        let lab = Lab {
            prefix,
            spec: spec.clone(),
            dir,
            created: Mutex::new(Vec::new()),
            noise_counter: std::sync::atomic::AtomicU32::new(0),
            torn_down: false,
        };
        // From here on an error drops `lab`, which removes what exists.
        std::fs::create_dir_all(&lab.dir).map_err(|source| LabError::Io {
            what: format!("create lab directory {}", lab.dir.display()),
            source,
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o700));
        }
        lab.setup()?;
        Ok(lab)
    }

    fn add_ns(&self, name: &str) -> Result<()> {
        netns::add(name)?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
        Ok(())
    }

    fn setup(&self) -> Result<()> {
        for node in Node::all() {
            self.add_ns(&self.ns(node))?;
        }
        // sysctls first: devices created later take `default`.
        for node in Node::all() {
            let mut kv: Vec<String> = vec![
                // No DAD anywhere (incl. link-local): addresses are usable at
                // once, also after a carrier flap.
                "net.ipv6.conf.all.accept_dad=0".into(),
                "net.ipv6.conf.default.accept_dad=0".into(),
            ];
            match node {
                Node::Server => {
                    if let Some(rp) = self.spec.server_rp_filter {
                        kv.push(format!("net.ipv4.conf.all.rp_filter={rp}"));
                        kv.push(format!("net.ipv4.conf.default.rp_filter={rp}"));
                    }
                }
                _ => {
                    kv.extend(
                        [
                            "net.ipv4.conf.all.rp_filter=0",
                            "net.ipv4.conf.default.rp_filter=0",
                            // carrier_down sets the router's end admin-down:
                            // its IPv6 addresses must survive that.
                            "net.ipv6.conf.all.keep_addr_on_down=1",
                            "net.ipv6.conf.default.keep_addr_on_down=1",
                        ]
                        .map(String::from),
                    );
                    if matches!(node, Node::Router(_) | Node::Inet) {
                        kv.push("net.ipv4.ip_forward=1".into());
                        kv.push("net.ipv6.conf.all.forwarding=1".into());
                        // A route through a link without carrier is
                        // ignored: the service address then goes the
                        // other way (the far route), as a routing
                        // protocol would withdraw it. On a router only
                        // for the links created from here on, and its
                        // uplink is set back to 0 once it exists: a dead
                        // upstream stays a silent blackhole (the router
                        // keeps its default route), not a withdrawal
                        // answered with unreachables.
                        let confs: &[&str] = match node {
                            Node::Inet => &["all", "default"],
                            _ => &["default"],
                        };
                        for v in ["ipv4", "ipv6"] {
                            for c in confs {
                                kv.push(format!("net.{v}.conf.{c}.ignore_routes_with_linkdown=1"));
                            }
                        }
                    }
                }
            }
            self.sysctls(&self.ns(node), &kv)?;
        }

        // Links. Server uplinks: same ifindex on both ends (see module docs).
        let srv = self.ns(Node::Server);
        let inet = self.ns(Node::Inet);
        cmd::ip_batch(
            &srv,
            &Uplink::ALL
                .iter()
                .map(|u| {
                    format!(
                        "link add {} index {i} type veth peer name {ROUTER_DOWNLINK} index {i} netns {}",
                        u.interface(),
                        self.ns(Node::Router(*u)),
                        i = u.ifindex(),
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        cmd::ip_batch(
            &self.ns(Node::Router(Uplink::Primary)),
            &[format!(
                "link add {ROUTER_CROSSLINK} type veth peer name {ROUTER_CROSSLINK} netns {}",
                self.ns(Node::Router(Uplink::Secondary))
            )],
        )?;
        let mut inet_links: Vec<String> = Uplink::ALL
            .iter()
            .map(|u| {
                format!(
                    "link add {} type veth peer name {ROUTER_UPLINK} netns {}",
                    u.role(),
                    self.ns(Node::Router(*u))
                )
            })
            .collect();
        inet_links.extend((0..TRANSITS).map(|i| {
            format!(
                "link add t{} type veth peer name {ROUTER_UPLINK} netns {}",
                i + 1,
                self.ns(Node::Transit(i))
            )
        }));
        cmd::ip_batch(&inet, &inet_links)?;
        for u in Uplink::ALL {
            self.sysctls(
                &self.ns(Node::Router(u)),
                &["ipv4", "ipv6"]
                    .map(|v| format!("net.{v}.conf.{ROUTER_UPLINK}.ignore_routes_with_linkdown=0")),
            )?;
        }

        for node in Node::all() {
            cmd::ip_batch(&self.ns(node), &self.address_lines(node))?;
        }
        for node in Node::all() {
            cmd::ip_batch(&self.ns(node), &self.route_lines(node))?;
        }

        self.verify_same_ifindex()?;
        self.wait_settled()?;
        if self.spec.check_reachability {
            self.check_reachability()?;
        }
        Ok(())
    }

    fn address_lines(&self, node: Node) -> Vec<String> {
        let mut l = vec!["link set lo up".to_string()];
        let mut addr = |dev: &str, v4: String, v6: String| {
            l.push(format!("link set {dev} up"));
            l.push(format!("addr add {v4} dev {dev}"));
            l.push(format!("addr add {v6} dev {dev} nodad"));
        };
        match node {
            Node::Server => {
                for u in Uplink::ALL {
                    addr(
                        u.interface(),
                        format!("{}/24", u.server_addr(Family::V4)),
                        format!("{}/64", u.server_addr(Family::V6)),
                    );
                }
                l.push(format!("addr add {SERVICE_V4}/32 dev lo"));
                l.push(format!("addr add {SERVICE_V6}/128 dev lo nodad"));
            }
            Node::Router(u) => {
                addr(
                    ROUTER_DOWNLINK,
                    format!("{}/24", u.gateway(Family::V4)),
                    format!("{}/64", u.gateway(Family::V6)),
                );
                addr(
                    ROUTER_CROSSLINK,
                    format!("{}/24", u.crosslink_addr(Family::V4)),
                    format!("{}/64", u.crosslink_addr(Family::V6)),
                );
                addr(
                    ROUTER_UPLINK,
                    format!("{}/24", u.upstream(Family::V4, 2)),
                    format!("{}/64", u.upstream(Family::V6, 2)),
                );
            }
            Node::Inet => {
                for u in Uplink::ALL {
                    addr(
                        u.role(),
                        format!("{}/24", u.upstream(Family::V4, 1)),
                        format!("{}/64", u.upstream(Family::V6, 1)),
                    );
                }
                for i in 0..TRANSITS {
                    let k = 101 + i;
                    addr(
                        &format!("t{}", i + 1),
                        format!("198.18.{k}.1/24"),
                        format!("2001:db8:{k}::1/64"),
                    );
                }
                l.push(format!("addr add {SINK_V4}/32 dev lo"));
                l.push(format!("addr add {SINK_V6}/128 dev lo nodad"));
            }
            Node::Transit(i) => {
                let k = 101 + i;
                addr(
                    ROUTER_UPLINK,
                    format!("198.18.{k}.2/24"),
                    format!("2001:db8:{k}::2/64"),
                );
                l.push(format!(
                    "addr add {}/32 dev lo",
                    transit_target(i, Family::V4)
                ));
                l.push(format!(
                    "addr add {}/128 dev lo nodad",
                    transit_target(i, Family::V6)
                ));
            }
        }
        l
    }

    /// The static routes of a namespace, as idempotent `route replace`
    /// lines: applied at build and re-applied by every undo that may have
    /// flushed them (an admin-down device loses its routes).
    fn route_lines(&self, node: Node) -> Vec<String> {
        let mut l = Vec::new();
        match node {
            Node::Server => {
                if let Some(u) = self.spec.server_default_route {
                    for f in Family::ALL {
                        l.push(format!(
                            "route replace default via {} dev {} metric {}",
                            u.gateway(f),
                            u.interface(),
                            self.spec.server_default_metric
                        ));
                    }
                }
            }
            Node::Router(u) => {
                for f in Family::ALL {
                    l.push(format!(
                        "route replace default via {} dev {ROUTER_UPLINK}",
                        u.upstream(f, 1)
                    ));
                    l.extend(self.service_near_lines(u, f, "replace"));
                    l.push(format!(
                        "route replace {} via {} dev {ROUTER_CROSSLINK} metric {SERVICE_METRIC_FAR}",
                        service(f),
                        u.other().crosslink_addr(f)
                    ));
                }
            }
            Node::Inet => {
                // The service address: through the primary's router while
                // its link to inet is up, else through the secondary's.
                for (u, metric) in [
                    (Uplink::Primary, SERVICE_METRIC_NEAR),
                    (Uplink::Secondary, SERVICE_METRIC_FAR),
                ] {
                    for f in Family::ALL {
                        l.push(format!(
                            "route replace {} via {} dev {} metric {metric}",
                            service(f),
                            u.upstream(f, 2),
                            u.role()
                        ));
                    }
                }
                for u in Uplink::ALL {
                    for f in Family::ALL {
                        l.push(format!(
                            "route replace {} via {} dev {}",
                            u.subnet(f),
                            u.upstream(f, 2),
                            u.role()
                        ));
                    }
                }
                for i in 0..TRANSITS {
                    let k = 101 + i;
                    l.push(format!(
                        "route replace {}/32 via 198.18.{k}.2 dev t{}",
                        transit_target(i, Family::V4),
                        i + 1
                    ));
                    l.push(format!(
                        "route replace {}/128 via 2001:db8:{k}::2 dev t{}",
                        transit_target(i, Family::V6),
                        i + 1
                    ));
                }
            }
            Node::Transit(i) => {
                let k = 101 + i;
                l.push(format!(
                    "route replace default via 198.18.{k}.1 dev {ROUTER_UPLINK}"
                ));
                l.push(format!(
                    "route replace default via 2001:db8:{k}::1 dev {ROUTER_UPLINK}"
                ));
            }
        }
        l
    }

    /// A router's route to the service address through its own link to the
    /// server (`verb`: "replace" or "del").
    fn service_near_lines(&self, u: Uplink, f: Family, verb: &str) -> Vec<String> {
        vec![format!(
            "route {verb} {} via {} dev {ROUTER_DOWNLINK} metric {SERVICE_METRIC_NEAR}",
            service(f),
            u.server_addr(f)
        )]
    }

    fn verify_same_ifindex(&self) -> Result<()> {
        for u in Uplink::ALL {
            let s = self.link(&self.ns(Node::Server), u.interface())?;
            let r = self.link(&self.ns(Node::Router(u)), ROUTER_DOWNLINK)?;
            if s.ifindex != r.ifindex || s.link_index != Some(s.ifindex) {
                return Err(LabError::Invalid(format!(
                    "{} uplink veth: expected the same ifindex {} on both ends, got srv {} (iflink {:?}) and router {}",
                    u.name(),
                    u.ifindex(),
                    s.ifindex,
                    s.link_index,
                    r.ifindex
                )));
            }
        }
        Ok(())
    }

    /// Waits until every veth end is operationally up and no IPv6 address
    /// is tentative. Bounded by `settle_timeout`: same-ifindex veths get
    /// their operstate from linkwatch, up to ~1 s late on a busy host.
    fn wait_settled(&self) -> Result<()> {
        let deadline = Instant::now() + self.spec.settle_timeout;
        let mut pending: Vec<Node> = Node::all();
        loop {
            let mut still = Vec::new();
            let mut last_reason = String::new();
            for node in &pending {
                let ns = self.ns(*node);
                match self.node_settled(&ns) {
                    Ok(None) => {}
                    Ok(Some(reason)) => {
                        last_reason = format!("{ns}: {reason}");
                        still.push(*node);
                    }
                    Err(e) => return Err(e),
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("links up and addresses usable ({last_reason})"),
                    timeout: self.spec.settle_timeout,
                });
            }
            pending = still;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// None when settled, else what is not.
    fn node_settled(&self, ns: &str) -> Result<Option<String>> {
        for l in self.links(ns)? {
            if l.name == "lo" {
                continue;
            }
            if !l.carrier() || l.operstate != "UP" {
                return Ok(Some(format!("{} is {} {:?}", l.name, l.operstate, l.flags)));
            }
        }
        let out = cmd::run("ip", &["-n", ns, "-j", "-6", "addr", "show"], None)?;
        let v = parse_json("ip -6 addr", &out)?;
        for link in v.as_array().into_iter().flatten() {
            for a in link
                .get("addr_info")
                .and_then(|x| x.as_array())
                .into_iter()
                .flatten()
            {
                for flag in ["tentative", "dadfailed"] {
                    if a.get(flag).and_then(|x| x.as_bool()) == Some(true) {
                        return Ok(Some(format!(
                            "address {} is {flag}",
                            a.get("local").and_then(|x| x.as_str()).unwrap_or("?")
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    fn check_reachability(&self) -> Result<()> {
        let timeout = Duration::from_secs(5);
        let mut jobs: Vec<(String, Vec<(IpAddr, PingOpts)>)> = Vec::new();
        for u in Uplink::ALL {
            let mut targets = Vec::new();
            for f in Family::ALL {
                for i in 0..TRANSITS {
                    targets.push((transit_target(i, f), PingOpts::timeout(timeout)));
                }
                targets.push((sink(f), PingOpts::timeout(timeout)));
            }
            jobs.push((self.ns(Node::Router(u)), targets));
        }
        let mut srv = Vec::new();
        for u in Uplink::ALL {
            for f in Family::ALL {
                srv.push((u.gateway(f), PingOpts::via(u.interface(), timeout)));
            }
        }
        jobs.push((self.ns(Node::Server), srv));
        let failures: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(ns, targets)| {
                    s.spawn(move || -> Vec<String> {
                        let r = netns::in_netns(ns, || {
                            let mut bad = Vec::new();
                            for (dst, opts) in targets {
                                match ping::ping_here(*dst, opts) {
                                    Ok(Some(_)) => {}
                                    Ok(None) => bad.push(format!(
                                        "{dst} from {ns}{} (no reply in {:?})",
                                        opts.device
                                            .as_ref()
                                            .map(|d| format!(" via {d}"))
                                            .unwrap_or_default(),
                                        opts.timeout
                                    )),
                                    Err(e) => bad.push(format!("{dst} from {ns}: {e}")),
                                }
                            }
                            bad
                        });
                        r.unwrap_or_else(|e| vec![e.to_string()])
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec!["ping thread panicked".into()])
                })
                .collect()
        });
        if failures.is_empty() {
            Ok(())
        } else {
            Err(LabError::Unreachable(failures.join("; ")))
        }
    }

    // ----------------------------------------------------------------------
    // Names and introspection
    // ----------------------------------------------------------------------

    /// The prefix shared by this lab's namespaces, e.g. "ul-1a2b-0-".
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The namespace of `node`.
    pub fn ns(&self, node: Node) -> String {
        format!("{}{}", self.prefix, node.role())
    }
    pub fn server_ns(&self) -> String {
        self.ns(Node::Server)
    }
    pub fn router_ns(&self, uplink: Uplink) -> String {
        self.ns(Node::Router(uplink))
    }
    pub fn inet_ns(&self) -> String {
        self.ns(Node::Inet)
    }
    /// Transit `i` (0-based; 0 = transit-a).
    pub fn transit_ns(&self, i: usize) -> String {
        assert!(i < TRANSITS, "transit index {i} out of range 0..{TRANSITS}");
        self.ns(Node::Transit(i))
    }
    /// Every namespace of the lab that currently exists (incl. noise ones).
    pub fn namespaces(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|n| netns::exists(n))
            .cloned()
            .collect()
    }
    /// The lab's private temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The spec it was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    fn owns(&self, ns: &str) -> Result<()> {
        let ok = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n == ns);
        if ok {
            Ok(())
        } else {
            Err(LabError::ForeignNamespace(ns.to_string()))
        }
    }

    /// Every link of a lab namespace.
    pub fn links(&self, ns: &str) -> Result<Vec<LinkInfo>> {
        self.owns(ns)?;
        let out = cmd::run("ip", &["-n", ns, "-j", "link", "show"], None)?;
        let v = parse_json("ip link", &out)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(parse_link)
            .collect())
    }

    /// One link of a lab namespace.
    ///
    /// Read from a link *dump*, never with a per-device RTM_GETLINK (`ip
    /// link show dev X`): the kernel's `rtnl_getlink()` synchronises the
    /// device's pending linkwatch work (`linkwatch_sync_dev`), so merely
    /// asking would apply a delayed carrier change early, including the
    /// kernel's own linkdown fallback, and change what the lab measures.
    pub fn link(&self, ns: &str, dev: &str) -> Result<LinkInfo> {
        self.links(ns)?
            .into_iter()
            .find(|l| l.name == dev)
            .ok_or_else(|| LabError::Invalid(format!("no link {dev} in namespace {ns}")))
    }

    /// The server end of `uplink`.
    pub fn server_link(&self, uplink: Uplink) -> Result<LinkInfo> {
        self.link(&self.server_ns(), uplink.interface())
    }

    /// Waits (bounded) until the server end of `uplink` has (or lacks) carrier.
    pub fn wait_carrier(&self, uplink: Uplink, carrier: bool, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.server_link(uplink)?.carrier() == carrier {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!(
                        "carrier {} on srv {}",
                        if carrier { "up" } else { "down" },
                        uplink.interface()
                    ),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server's default routes of `family` in the main table, lowest
    /// metric first.
    pub fn default_routes(&self, family: Family) -> Result<Vec<RouteInfo>> {
        let srv = self.server_ns();
        let out = cmd::run(
            "ip",
            &[
                "-n",
                &srv,
                "-j",
                family_flag(family),
                "route",
                "show",
                "default",
                "table",
                "main",
            ],
            None,
        )?;
        let v = parse_json("ip route", if out.trim().is_empty() { "[]" } else { &out })?;
        let mut routes: Vec<RouteInfo> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r.get("type")
                    .and_then(|t| t.as_str())
                    .is_none_or(|t| t == "unicast")
            })
            .map(parse_route)
            .collect();
        routes.sort_by_key(|r| r.metric);
        Ok(routes)
    }

    /// The server's preferred default route of `family` (lowest metric):
    /// (gateway, device), or None if there is none.
    pub fn default_route(&self, family: Family) -> Result<Option<(IpAddr, String)>> {
        Ok(self
            .default_routes(family)?
            .into_iter()
            .find_map(|r| Some((r.gateway?, r.dev?))))
    }

    /// Installs (replaces) the server's default route of both families via
    /// `uplink` at `metric`. For tests and comparators; the lab itself never
    /// does this after build.
    pub fn set_server_default(&self, uplink: Uplink, metric: u32) -> Result<()> {
        cmd::ip_batch(
            &self.server_ns(),
            &Family::ALL
                .iter()
                .map(|f| {
                    format!(
                        "route replace default via {} dev {} metric {metric}",
                        uplink.gateway(*f),
                        uplink.interface()
                    )
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Deletes the server's default route of `family` at `metric`, if any.
    pub fn delete_server_default(&self, family: Family, metric: u32) -> Result<()> {
        let srv = self.server_ns();
        let m = metric.to_string();
        let args = [
            "-n",
            &srv,
            family_flag(family),
            "route",
            "del",
            "default",
            "metric",
            &m,
        ];
        let out = cmd::output("ip", &args, None, cmd::COMMAND_TIMEOUT)?;
        if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("No such process")
        {
            Ok(())
        } else {
            cmd::check("ip", &args, None, out).map(|_| ())
        }
    }

    // ----------------------------------------------------------------------
    // Running things inside the lab
    // ----------------------------------------------------------------------

    /// Runs `args` (program first) inside lab namespace `ns` and returns its
    /// stdout; a non-zero exit is an error carrying stderr. Bounded (30 s).
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = self.exec_output(ns, args)?;
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        cmd::check("ip", &full, None, out)
    }

    /// Like [`Lab::exec`], but returns the output whatever the exit status.
    pub fn exec_output(&self, ns: &str, args: &[&str]) -> Result<Output> {
        self.owns(ns)?;
        if args.is_empty() {
            return Err(LabError::Invalid("exec: empty command".into()));
        }
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        cmd::output("ip", &full, None, cmd::COMMAND_TIMEOUT)
    }

    /// `ip -n <ns> <args>`, stdout; a non-zero exit is an error.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        self.owns(ns)?;
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        cmd::run("ip", &full, None)
    }

    /// Writes sysctls (`key=value`) inside lab namespace `ns`.
    pub fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<()> {
        self.owns(ns)?;
        let kv: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        self.sysctls(ns, &kv)
    }

    fn sysctls(&self, ns: &str, kv: &[String]) -> Result<()> {
        if kv.is_empty() {
            return Ok(());
        }
        // `ip netns exec` (not setns in this process) so that /proc/sys/net
        // is unambiguously the lab namespace's.
        let mut args: Vec<&str> = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
        args.extend(kv.iter().map(|s| s.as_str()));
        cmd::run("ip", &args, None).map(|_| ())
    }

    /// A `Command` that runs `args` (program first) inside lab namespace
    /// `ns` (`ip netns exec` execs the program in place, so the child's pid
    /// is the program's). Customise it, then [`LabChild::new`] the child.
    pub fn command(&self, ns: &str, args: &[&str]) -> Result<Command> {
        self.owns(ns)?;
        if args.is_empty() {
            return Err(LabError::Invalid("command: empty command".into()));
        }
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        Ok(c)
    }

    /// Starts `args` inside `ns` (stdin null, stdout/stderr inherited). The
    /// process is killed when the returned [`LabChild`] is dropped.
    pub fn spawn(&self, ns: &str, args: &[&str]) -> Result<LabChild> {
        let mut c = self.command(ns, args)?;
        c.stdin(Stdio::null());
        let what = format!("`{}` in {ns}", args.join(" "));
        let child = c.spawn().map_err(|source| LabError::Io {
            what: format!("start {what}"),
            source,
        })?;
        Ok(LabChild::new(child, what))
    }

    /// Runs `f` on a thread inside lab namespace `ns` (see [`netns`]).
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.owns(ns)?;
        netns::in_netns(ns, f)
    }

    /// Pings `dst` from `ns` (see [`ping::ping_here`]): Some(rtt) or None.
    pub fn ping(&self, ns: &str, dst: IpAddr, opts: &PingOpts) -> Result<Option<Duration>> {
        self.in_ns(ns, || ping::ping_here(dst, opts))?
            .map_err(|source| LabError::Io {
                what: format!("ping {dst} from {ns}"),
                source,
            })
    }

    /// Sends `count` echo requests `spacing` apart from `ns`; returns how
    /// many were answered (see [`ping::burst_here`]).
    pub fn ping_burst(
        &self,
        ns: &str,
        dst: IpAddr,
        opts: &PingOpts,
        count: u16,
        spacing: Duration,
    ) -> Result<usize> {
        self.in_ns(ns, || ping::burst_here(dst, opts, count, spacing))?
            .map_err(|source| LabError::Io {
                what: format!("ping burst {dst} from {ns}"),
                source,
            })
    }

    /// Starts a paced UDP stream from the server to the sink.
    pub fn udp_stream(&self, spec: &StreamSpec) -> Result<UdpStream> {
        UdpStream::start(&self.server_ns(), &self.inet_ns(), spec)
    }

    // ----------------------------------------------------------------------
    // Failure injection: each idempotent, each with its undo.
    // ----------------------------------------------------------------------

    /// The server end of `uplink` loses carrier (the router's end is set
    /// admin-down).
    pub fn carrier_down(&self, uplink: Uplink) -> Result<()> {
        cmd::ip_batch(
            &self.router_ns(uplink),
            &[format!("link set {ROUTER_DOWNLINK} down")],
        )
    }

    /// Undoes [`Lab::carrier_down`].
    ///
    /// The router announces the service address through the link again only
    /// once the link transmits, as a BFD session would come up: until the
    /// kernel's linkwatch has run for the device (up to ~1 s on a busy
    /// host) a veth whose carrier is already on still drops what it is
    /// given (its qdisc is not active yet). Bounded by 3 s; after that the
    /// route is added anyway.
    pub fn carrier_up(&self, uplink: Uplink) -> Result<()> {
        let node = Node::Router(uplink);
        let near: Vec<String> = Family::ALL
            .iter()
            .flat_map(|f| self.service_near_lines(uplink, *f, "replace"))
            .collect();
        let mut l = vec![format!("link set {ROUTER_DOWNLINK} up")];
        l.extend(
            self.route_lines(node)
                .into_iter()
                .filter(|r| !near.contains(r)),
        );
        cmd::ip_batch(&self.ns(node), &l)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let link = self.link(&self.ns(node), ROUTER_DOWNLINK)?;
            if link.carrier() && link.operstate == "UP" {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        cmd::ip_batch(&self.ns(node), &near)
    }

    /// The router stops answering and forwarding everything from the server
    /// (ARP/ND included) while the carrier stays up: nft netdev ingress drop
    /// on its downlink.
    ///
    /// The router also withdraws its route to the server's service address
    /// through that link (the other router's takes over), as BFD tracking
    /// the router's path to the server would: a router that receives
    /// nothing from the server cannot keep its neighbour entry for it.
    pub fn gateway_dead(&self, uplink: Uplink) -> Result<()> {
        cmd::nft(
            &self.router_ns(uplink),
            &nft_replace_ingress(NFT_GATEWAY_DEAD, ROUTER_DOWNLINK, "drop", &[]),
        )?;
        let l: Vec<String> = Family::ALL
            .iter()
            .flat_map(|f| self.service_near_lines(uplink, *f, "del"))
            .collect();
        // A route already gone (withdrawn before) is no error.
        cmd::ip_each_ignoring_errors(&self.router_ns(uplink), &l);
        Ok(())
    }

    /// The router stops forwarding while its CPU still answers what is
    /// addressed to itself (pings, ARP/ND): an nft forward chain that drops
    /// everything in the router's namespace.
    pub fn forwarding_dead(&self, uplink: Uplink) -> Result<()> {
        cmd::nft(
            &self.router_ns(uplink),
            &format!(
                "table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n  chain forward {{\n    type filter hook forward priority 0; policy drop;\n  }}\n}}\n",
                t = NFT_FORWARDING_DEAD
            ),
        )
    }

    /// Undoes [`Lab::forwarding_dead`].
    pub fn forwarding_alive(&self, uplink: Uplink) -> Result<()> {
        cmd::nft(
            &self.router_ns(uplink),
            &format!(
                "table inet {t}\ndelete table inet {t}\n",
                t = NFT_FORWARDING_DEAD
            ),
        )
    }

    /// Undoes [`Lab::gateway_dead`] (and announces the service route again).
    pub fn gateway_alive(&self, uplink: Uplink) -> Result<()> {
        cmd::nft(&self.router_ns(uplink), &nft_remove(NFT_GATEWAY_DEAD))?;
        cmd::ip_batch(
            &self.router_ns(uplink),
            &self.route_lines(Node::Router(uplink)),
        )
    }

    /// The router's link to `inet` goes down (inet's end is set admin-down,
    /// so the router keeps its default route and silently blackholes): the
    /// gateway still answers, no transit is reachable through this uplink.
    pub fn upstream_dead(&self, uplink: Uplink) -> Result<()> {
        cmd::ip_batch(
            &self.inet_ns(),
            &[format!("link set {} down", uplink.role())],
        )
    }

    /// Undoes [`Lab::upstream_dead`] (and restores inet's routes, which the
    /// admin-down flushed).
    pub fn upstream_alive(&self, uplink: Uplink) -> Result<()> {
        let mut l = vec![format!("link set {} up", uplink.role())];
        l.extend(self.route_lines(Node::Inet));
        cmd::ip_batch(&self.inet_ns(), &l)
    }

    /// The router loses its route upstream and says so: its default routes
    /// become `unreachable`, so every packet from the server towards the
    /// internet is answered with an ICMP (v6) destination unreachable from
    /// the router; the gateway itself (and the hairpin) still answers.
    pub fn upstream_withdrawn(&self, uplink: Uplink) -> Result<()> {
        cmd::ip_batch(
            &self.router_ns(uplink),
            &[
                "route replace unreachable 0.0.0.0/0".to_string(),
                "route replace unreachable ::/0".to_string(),
            ],
        )
    }

    /// Undoes [`Lab::upstream_withdrawn`].
    pub fn upstream_restored(&self, uplink: Uplink) -> Result<()> {
        cmd::ip_batch(
            &self.router_ns(uplink),
            &self.route_lines(Node::Router(uplink)),
        )
    }

    /// Drops one in `one_in` of the TCP segments (both ways, v4 and v6)
    /// crossing `uplink`'s router at random (`numgen random mod one_in ==
    /// 0`): the ordinary loss of a busy server on a healthy path; probes and
    /// everything else pass. Calling it again replaces the rate.
    pub fn tcp_loss(&self, uplink: Uplink, one_in: u32) -> Result<()> {
        if one_in < 2 {
            return Err(LabError::Invalid(format!(
                "tcp_loss: one in {one_in} is not random loss"
            )));
        }
        let rule = format!(
            "meta l4proto tcp numgen random mod {one_in} == 0 counter drop comment \"{TCP_LOSS_COUNTER}\""
        );
        let ns = self.router_ns(uplink);
        let mut text = String::new();
        for dev in [ROUTER_DOWNLINK, ROUTER_UPLINK] {
            let t = format!("{NFT_TCP_LOSS}_{dev}");
            text.push_str(&nft_replace_ingress(&t, dev, "accept", &[&rule]));
        }
        cmd::nft(&ns, &text)
    }

    /// TCP segments [`Lab::tcp_loss`] dropped at `uplink`'s router so far
    /// (both ways); an error if the loss is not in place.
    pub fn tcp_loss_dropped(&self, uplink: Uplink) -> Result<u64> {
        let ns = self.router_ns(uplink);
        let mut n = 0;
        for dev in [ROUTER_DOWNLINK, ROUTER_UPLINK] {
            let t = format!("{NFT_TCP_LOSS}_{dev}");
            let c = self.nft_counters(&ns, "netdev", &t)?;
            n += c.get(TCP_LOSS_COUNTER).copied().ok_or_else(|| {
                LabError::Invalid(format!("{t}: no counter {TCP_LOSS_COUNTER:?}: {c:?}"))
            })?;
        }
        Ok(n)
    }

    /// Undoes [`Lab::tcp_loss`].
    pub fn clear_tcp_loss(&self, uplink: Uplink) -> Result<()> {
        let mut text = String::new();
        for dev in [ROUTER_DOWNLINK, ROUTER_UPLINK] {
            text.push_str(&nft_remove(&format!("{NFT_TCP_LOSS}_{dev}")));
        }
        cmd::nft(&self.router_ns(uplink), &text)
    }

    /// A paced TCP flow from the server to the sink (4 segments every 2 ms,
    /// ~23 Mbit/s) until the guard is dropped: the server's own traffic,
    /// whose progress passive suspicion watches.
    pub fn tcp_flow(&self, family: Family) -> Result<TcpFlow> {
        TcpFlow::start(
            self,
            &TcpSpec {
                family,
                chunk: 4 * 1448,
                interval: Duration::from_millis(2),
                // Bounded even if the guard is leaked.
                max_duration: Duration::from_secs(3600),
                ..TcpSpec::default()
            },
        )
    }

    /// ICMP/ICMPv6 echo requests arriving at transit `i`'s namespace (from
    /// every uplink, both families) during `d`: what one server costs a
    /// transit target.
    pub fn count_transit_probes(&self, i: usize, d: Duration) -> Result<u64> {
        let ns = self.transit_ns(i);
        let table = "ul_probe_count";
        cmd::nft(
            &ns,
            &nft_replace_ingress(
                table,
                ROUTER_UPLINK,
                "accept",
                &[
                    "icmp type echo-request counter",
                    "icmpv6 type echo-request counter",
                ],
            ),
        )?;
        std::thread::sleep(d);
        let out = self.exec(&ns, &["nft", "list", "table", "netdev", table]);
        cmd::nft(&ns, &nft_remove(table))?;
        Ok(out?
            .split("packets ")
            .skip(1)
            .filter_map(|x| x.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// Transit `i` (0-based) becomes unreachable through every uplink: it
    /// silently drops everything arriving from `inet`.
    pub fn transit_dead(&self, i: usize) -> Result<()> {
        cmd::nft(
            &self.transit_ns(i),
            &nft_replace_ingress(NFT_TRANSIT_DEAD, ROUTER_UPLINK, "drop", &[]),
        )
    }

    /// Undoes [`Lab::transit_dead`].
    pub fn transit_alive(&self, i: usize) -> Result<()> {
        cmd::nft(&self.transit_ns(i), &nft_remove(NFT_TRANSIT_DEAD))
    }

    /// Drops `percent` % (0..=100, resolution 0.01) of the ICMP/ICMPv6 echo
    /// requests arriving from the server on `uplink`'s router, whether
    /// addressed to the router or forwarded, and of its forwarding-plane
    /// echoes (UDP to port 3785); never ARP/ND or other traffic.
    /// Calling it again replaces the percentage.
    pub fn random_loss(&self, uplink: Uplink, percent: f64) -> Result<()> {
        if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
            return Err(LabError::Invalid(format!(
                "random_loss: {percent} % outside 0..=100"
            )));
        }
        let basis_points = (percent * 100.0).round() as u32;
        // numgen yields 0..=9999; nft rejects "< 10000" as out of range.
        let chance = if basis_points >= 10_000 {
            String::new()
        } else {
            format!("numgen random mod 10000 < {basis_points} ")
        };
        let v4 = format!("meta protocol ip meta l4proto icmp icmp type echo-request {chance}counter drop comment \"{LOSS_PINGS}\"");
        let v6 = format!("meta protocol ip6 meta l4proto 58 icmpv6 type echo-request {chance}counter drop comment \"{LOSS_PINGS}\"");
        // The forwarding-plane echoes (UDP to the BFD echo port 3785).
        let echo = format!(
            "meta l4proto udp udp dport 3785 {chance}counter drop comment \"{LOSS_ECHOES}\""
        );
        cmd::nft(
            &self.router_ns(uplink),
            &nft_replace_ingress(
                NFT_RANDOM_LOSS,
                ROUTER_DOWNLINK,
                "accept",
                &[&v4, &v6, &echo],
            ),
        )
    }

    /// What [`Lab::random_loss`] dropped at `uplink`'s router so far: (echo
    /// requests, forwarding-plane echoes); an error if the loss is not in
    /// place.
    pub fn loss_dropped(&self, uplink: Uplink) -> Result<(u64, u64)> {
        let c = self.nft_counters(&self.router_ns(uplink), "netdev", NFT_RANDOM_LOSS)?;
        let get = |k: &str| {
            c.get(k).copied().ok_or_else(|| {
                LabError::Invalid(format!("{NFT_RANDOM_LOSS}: no counter {k:?}: {c:?}"))
            })
        };
        Ok((get(LOSS_PINGS)?, get(LOSS_ECHOES)?))
    }

    /// Undoes [`Lab::random_loss`].
    pub fn clear_loss(&self, uplink: Uplink) -> Result<()> {
        cmd::nft(&self.router_ns(uplink), &nft_remove(NFT_RANDOM_LOSS))
    }

    /// `uplink`'s router drops all IPv6 from the server except neighbour
    /// discovery (RFC 4861 types 133-137): the v6 gateway and the v6
    /// transits are dead through it, v4 is fine.
    pub fn ipv6_broken(&self, uplink: Uplink) -> Result<()> {
        cmd::nft(
            &self.router_ns(uplink),
            &nft_replace_ingress(
                NFT_IPV6_BROKEN,
                ROUTER_DOWNLINK,
                "accept",
                &[
                    "meta protocol ip6 meta l4proto 58 icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept",
                    "meta protocol ip6 drop",
                ],
            ),
        )
    }

    /// Undoes [`Lab::ipv6_broken`].
    pub fn ipv6_fixed(&self, uplink: Uplink) -> Result<()> {
        cmd::nft(&self.router_ns(uplink), &nft_remove(NFT_IPV6_BROKEN))
    }

    /// Starts "another interface on the host changing state": a veth pair
    /// (same ifindex on both ends) in two namespaces of its own, one end
    /// toggled down/up every `period` until the guard is dropped.
    pub fn noise(&self, period: Duration) -> Result<NoiseGuard> {
        let k = self
            .noise_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a = format!("{}nz{k}a", self.prefix);
        let b = format!("{}nz{k}b", self.prefix);
        self.add_ns(&a)?;
        self.add_ns(&b)?;
        NoiseGuard::start(a, b, period)
    }

    // ----------------------------------------------------------------------
    // Config for uplinkd
    // ----------------------------------------------------------------------

    /// Path of the daemon's socket in the generated config.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("uplinkd.sock")
    }

    /// An uplinkd config for this lab: `[agent] socket` in the lab's
    /// directory, uplinks primary (eth0) and secondary (eth1) with both
    /// gateways, transits transit-a..d with their v4 and v6 targets.
    ///
    /// `overrides` is TOML deep-merged over that: tables merge key by key,
    /// other values (and arrays, incl. `[[uplink]]`) replace. E.g.
    /// `"[policy]\nfailback_after = \"5s\"\n[probe]\ngateway_interval = \"10ms\""`
    /// or `"agent.route_metric = 20"`.
    ///
    /// Panics if `overrides` is not valid TOML (a bug in the caller); see
    /// [`Lab::try_config_toml`].
    pub fn config_toml(&self, overrides: &str) -> String {
        match self.try_config_toml(overrides) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Lab::config_toml`], with invalid overrides as an error.
    pub fn try_config_toml(&self, overrides: &str) -> Result<String> {
        use toml::{Table, Value};
        let mut base = Table::new();
        let mut agent = Table::new();
        agent.insert(
            "socket".into(),
            Value::String(self.socket_path().display().to_string()),
        );
        if self.spec.service_source {
            agent.insert("source4".into(), Value::String(SERVICE_V4.to_string()));
            agent.insert("source6".into(), Value::String(SERVICE_V6.to_string()));
        }
        base.insert("agent".into(), Value::Table(agent));
        let uplinks = Uplink::ALL
            .iter()
            .map(|u| {
                let mut t = Table::new();
                t.insert("name".into(), Value::String(u.name().into()));
                t.insert("interface".into(), Value::String(u.interface().into()));
                t.insert(
                    "gateway4".into(),
                    Value::String(u.gateway(Family::V4).to_string()),
                );
                t.insert(
                    "gateway6".into(),
                    Value::String(u.gateway(Family::V6).to_string()),
                );
                Value::Table(t)
            })
            .collect();
        base.insert("uplink".into(), Value::Array(uplinks));
        let transits = (0..TRANSITS)
            .map(|i| {
                let mut t = Table::new();
                t.insert("name".into(), Value::String(TRANSIT_NAMES[i].into()));
                t.insert(
                    "targets".into(),
                    Value::Array(
                        Family::ALL
                            .iter()
                            .map(|f| Value::String(transit_target(i, *f).to_string()))
                            .collect(),
                    ),
                );
                Value::Table(t)
            })
            .collect();
        base.insert("transit".into(), Value::Array(transits));
        let mut over: Table = overrides.parse().map_err(|e| LabError::Parse {
            what: "config overrides".into(),
            detail: format!("{e}"),
        })?;
        apply_lab_keys(&mut base, &mut over)?;
        merge_toml(&mut base, over);
        toml::to_string(&base).map_err(|e| LabError::Parse {
            what: "generated config".into(),
            detail: e.to_string(),
        })
    }

    /// Writes [`Lab::config_toml`] to `<lab dir>/uplinkd.toml` and returns
    /// the path.
    pub fn write_config(&self, overrides: &str) -> Result<PathBuf> {
        let text = self.try_config_toml(overrides)?;
        let path = self.dir.join("uplinkd.toml");
        std::fs::write(&path, text).map_err(|source| LabError::Io {
            what: format!("write {}", path.display()),
            source,
        })?;
        Ok(path)
    }

    // ----------------------------------------------------------------------
    // Teardown
    // ----------------------------------------------------------------------

    /// Deletes every namespace and the lab directory, returning every
    /// failure (it keeps going after one).
    pub fn destroy(mut self) -> Result<()> {
        let errors = self.teardown();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Cleanup(errors))
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        let names: Vec<String> = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ns in names.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                errors.push(format!("delete namespace {ns}: {e}"));
            }
        }
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                errors.push(format!("remove {}: {e}", self.dir.display()));
            }
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("uplink-lab: cleanup: {e}");
            tracing::warn!(error = %e, "lab cleanup");
        }
    }
}

/// Takes the lab's own table `[lab]` out of `over` and applies it to `base`
/// (it is never written to the daemon's config). Its one key:
/// `service_source = false` leaves out agent.source4/6, so that a binary
/// from before the service address (which refuses those keys) runs in the
/// same lab, e.g. as a bench variant (bench/no-service-source.toml).
fn apply_lab_keys(base: &mut toml::Table, over: &mut toml::Table) -> Result<()> {
    use toml::Value;
    let Some(lab) = over.remove("lab") else {
        return Ok(());
    };
    let bad = |detail: String| LabError::Parse {
        what: "config overrides".into(),
        detail,
    };
    let Value::Table(lab) = lab else {
        return Err(bad("lab: expected a table [lab]".into()));
    };
    for (key, value) in lab {
        match (key.as_str(), value) {
            ("service_source", Value::Boolean(keep)) => {
                if !keep {
                    if let Some(Value::Table(agent)) = base.get_mut("agent") {
                        agent.remove("source4");
                        agent.remove("source6");
                    }
                }
            }
            (k, v) => {
                return Err(bad(format!(
                    "[lab] {k} = {v}: the only lab key is service_source (a boolean)"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_overrides() {
        let mut base: toml::Table = "[agent]\nsocket = \"a\"\n[[uplink]]\nname = \"x\"\n"
            .parse()
            .unwrap();
        let over: toml::Table = "agent.route_metric = 20\n[policy]\nfailback_after = \"5s\"\n"
            .parse()
            .unwrap();
        merge_toml(&mut base, over);
        assert_eq!(base["agent"]["socket"].as_str(), Some("a"));
        assert_eq!(base["agent"]["route_metric"].as_integer(), Some(20));
        assert_eq!(base["policy"]["failback_after"].as_str(), Some("5s"));
        assert_eq!(base["uplink"].as_array().map(|a| a.len()), Some(1));
    }

    #[test]
    fn lab_keys_are_the_labs_own() {
        let base = || -> toml::Table {
            "[agent]\nsocket = \"a\"\nsource4 = \"198.18.0.1\"\nsource6 = \"2001:db8:0:1::1\"\n"
                .parse()
                .unwrap()
        };
        let mut b = base();
        let mut over: toml::Table = "[lab]\nservice_source = false\n".parse().unwrap();
        apply_lab_keys(&mut b, &mut over).unwrap();
        assert!(over.is_empty(), "[lab] is never passed to the daemon");
        assert_eq!(b["agent"].as_table().unwrap().len(), 1, "{b:?}");
        let mut b = base();
        let mut over: toml::Table = "[lab]\nservice_source = true\n".parse().unwrap();
        apply_lab_keys(&mut b, &mut over).unwrap();
        assert_eq!(b, base());
        let mut over: toml::Table = "[lab]\nsource = false\n".parse().unwrap();
        assert!(apply_lab_keys(&mut base(), &mut over).is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Uplink::Secondary.gateway(Family::V6).to_string(),
            "2001:db8:2::1"
        );
        assert_eq!(transit_target(3, Family::V4).to_string(), "198.19.0.4");
        assert_eq!(transit_target(0, Family::V6).to_string(), "2001:db8:ff::1");
        assert_eq!(sink(Family::V6).to_string(), "2001:db8:fe::1");
        assert_eq!(Uplink::Primary.upstream(Family::V6, 2), "2001:db8:11::2");
    }

    #[test]
    fn nft_rulesets() {
        let r = nft_replace_ingress("t", "down0", "drop", &[]);
        assert!(r.starts_with("table netdev t\ndelete table netdev t\ntable netdev t {"));
        assert!(r.contains("device \"down0\""));
        assert_eq!(nft_remove("t"), "table netdev t\ndelete table netdev t\n");
    }
}
