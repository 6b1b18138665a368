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
//! Needs the bonding module (the VM tier). Same safety rules as the main
//! lab: namespaces only, 198.18.0.0/15 only; dropping the lab deletes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{cmd, netns, LabError, StreamSpec, UdpStream, SINK_V4};

type Result<T> = std::result::Result<T, LabError>;

pub const MEMBERS: [&str; 2] = ["eth0", "eth1"];
pub const BOND: &str = "bond0";
pub const GATEWAY: &str = "198.18.1.1";
pub const SERVER: &str = "198.18.1.2";

pub struct BondLab {
    prefix: String,
    dir: PathBuf,
    namespaces: Vec<String>,
}

impl BondLab {
    /// Build it; `miimon` in ms (0 = no link monitoring).
    pub fn build(miimon: u32) -> Result<BondLab> {
        let prefix = netns::new_prefix();
        let dir =
            std::env::temp_dir().join(format!("uplink-bondlab-{}", prefix.trim_end_matches('-')));
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
        let mut lab = BondLab {
            prefix,
            dir,
            namespaces: Vec::new(),
        };
        for role in ["srv", "swa", "swb", "gw"] {
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
        // Wires.
        ip(
            &srv,
            &format!("link add eth0 type veth peer name p0 netns {swa}"),
        )?;
        ip(
            &srv,
            &format!("link add eth1 type veth peer name p0 netns {swb}"),
        )?;
        ip(
            &swa,
            &format!("link add isl type veth peer name isl netns {swb}"),
        )?;
        ip(
            &swb,
            &format!("link add pg type veth peer name ga netns {gw}"),
        )?;
        // Switches.
        for sw in [&swa, &swb] {
            ip(sw, "link add br0 type bridge")?;
            ip(sw, "link set br0 up")?;
        }
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
        ip(&gw, "link set ga up")?;
        // Server: the bond (ports must be down to be enslaved; "down" in the
        // same message as "master" is applied after enslaving since 6.1).
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
        ip(&srv, &format!("link set {BOND} up"))?;
        Ok(lab)
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
        Ok(self
            .ip("gw", &format!("neigh show {SERVER} dev ga"))?
            .trim()
            .to_string())
    }

    pub fn stream(&self, spec: &StreamSpec) -> Result<UdpStream> {
        UdpStream::start(&self.ns("srv"), &self.ns("gw"), spec)
    }

    /// A config with the two members as uplinks (eth0 preferred), plus `extra` TOML.
    pub fn write_config(&self, extra: &str) -> Result<PathBuf> {
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

[[uplink]]
name = "member-b"
interface = "eth1"
bond = "{BOND}"
gateway4 = "{GATEWAY}"

[[transit]]
name = "transit-a"
targets = ["198.19.0.1"]
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
