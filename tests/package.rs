//! The Debian package and the systemd unit (packaging/).
//!
//! - The man pages and shell completions it ships are generated and checked
//!   by tests/docs.rs (regenerate them with
//!   `UPLINKD_REGENERATE=1 cargo test --test docs`).
//! - The daemon works with the unit's credentials: a non-root user holding
//!   only the unit's ambient capabilities, in a lab namespace.
//! - `debian_package` builds the .deb with `cargo deb` (in its own target
//!   directory, `target/package-build`, so it never waits for the lock of the
//!   `cargo test` that runs it), lints it with lintian (no error, no warning),
//!   checks its contents (exactly the expected files), and installs,
//!   reinstalls, upgrades and purges it in a clean Debian root made by
//!   debootstrap (cached as a tarball under
//!   `target/package/`; each run unpacks a fresh copy): files and modes, the
//!   system user and group, the unit not enabled, `uplinkd --check` on the
//!   shipped config, `systemd-analyze verify` and `security` (exposure at
//!   most 2.0) on the installed unit, the conffile across a reinstall and an
//!   upgrade with a local edit, and a purge that leaves nothing behind.
//!
//! - `unit_runs_under_systemd` boots that clean root (package installed)
//!   with systemd-nspawn inside a lab's server namespace and runs the
//!   packaged unit under a real systemd: READY, watchdog pings, the sandbox
//!   as the kernel sees it, socket permissions, controls, a failover with a
//!   hook, reload (good and bad file), journal records, stop.
//! - `networkd::unit_lives_with_systemd_networkd` (tests/package/networkd.rs)
//!   boots it again with systemd-networkd managing the lab server's uplinks:
//!   networkd restarted, reloaded and an uplink reconfigured, with its
//!   default settings and with the README's; uplinkd's routes and rules
//!   stay or come back, and it does not fail over.
//!
//! The package test needs root (dpkg and chroot), cargo-deb (installed here
//! with `cargo install` when missing), lintian, debootstrap, systemd-analyze,
//! systemd-nspawn and strace (installed by tests/run-all.sh); it fails when
//! one is missing, it is never skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const UPLINKD: &str = env!("CARGO_BIN_EXE_uplinkd");
const UPLINKCTL: &str = env!("CARGO_BIN_EXE_uplinkctl");
const UNIT: &str = "packaging/uplinkd.service";

fn repo(p: &str) -> PathBuf {
    Path::new(ROOT).join(p)
}

fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    out
}

/// Runs `cmd`, panics with its output unless it exits 0; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// The unit
// ---------------------------------------------------------------------------

/// Values of `key=` in the unit (all occurrences, in order).
fn unit_values(key: &str) -> Vec<String> {
    read(repo(UNIT))
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root: run the tests as root (bash tests/run-all.sh)"
    );
}

/// The unit's credentials are enough: uplinkd as a non-root user holding
/// only the unit's ambient capabilities (bounding set the same, no new
/// privileges) programs the routes and the per-uplink sysctls in a lab.
#[test]
fn daemon_works_with_the_units_credentials() {
    require_root("the lab");
    let caps: Vec<String> = unit_values("AmbientCapabilities")
        .join(" ")
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .expect("capability name")
                .to_lowercase()
        })
        .collect();
    assert_eq!(
        caps,
        ["net_admin", "net_raw"],
        "the unit's capabilities changed"
    );
    assert_eq!(unit_values("User"), ["uplinkd"]);
    assert_eq!(
        unit_values("CapabilityBoundingSet"),
        unit_values("AmbientCapabilities")
    );
    let caps = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");

    // uid/gid 65534 (nobody) stands for the package's system user.
    let dir = tempfile::Builder::new()
        .prefix("uplinkd-unpriv-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let socket = dir.path().join("uplinkd.sock");
    let lab = uplink_lab::Lab::build(&uplink_lab::LabSpec::default()).expect("build lab");
    let text = lab
        .try_config_toml(&format!(
            "[agent]\nsocket = {:?}\n[hooks]\non_active_change = [{:?}]\n",
            socket.to_str().unwrap(),
            "cat >/dev/null; echo \"$UPLINKD_TO\" >/dev/null"
        ))
        .unwrap();
    let config = dir.path().join("uplinkd.toml");
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("uplinkd.log");
    let logf = std::fs::File::create(&log).unwrap();
    // Traced, to check every system call against the unit's filter.
    assert!(
        have("strace"),
        "this test needs strace (bash tests/run-all.sh installs it)"
    );
    let trace = dir.path().join("strace.log");
    let mut cmd = lab
        .command(
            &lab.server_ns(),
            &[
                "strace",
                "-f",
                "-qq",
                "-o",
                trace.to_str().unwrap(),
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &format!("--inh-caps=-all,{caps}"),
                &format!("--ambient-caps=-all,{caps}"),
                &format!("--bounding-set=-all,{caps}"),
                "--no-new-privs",
                UPLINKD,
                "--config",
                config.to_str().unwrap(),
            ],
        )
        .unwrap();
    cmd.env("UPLINKD_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    let child = uplink_lab::LabChild::new(cmd.spawn().expect("start uplinkd"), "uplinkd");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // The daemon is strace's child (setpriv execs it).
    let tracer = child.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let kids = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
            .unwrap_or_default();
        let exe = kids.split_whitespace().find(|k| {
            std::fs::read_link(format!("/proc/{k}/exe")).is_ok_and(|e| e == Path::new(UPLINKD))
        });
        if let Some(k) = exe {
            break k.parse::<u32>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "uplinkd did not start:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Killing strace detaches the daemon, which would then outlive the test:
    // end the daemon itself, also when an assertion below fails.
    let daemon = KillOnDrop(pid);

    // Both families on the primary, through the socket as root would see it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "uplinkd exited:\n{}",
            log_text()
        );
        let out = run(Command::new(UPLINKCTL).args([
            "--socket",
            socket.to_str().unwrap(),
            "status",
            "--json",
        ]));
        let last = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&last) {
            if v["active"]["ipv4"] == "primary" && v["active"]["ipv6"] == "primary" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no decision within 20 s; last status {last}\nlog:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Running as the unprivileged user...
    let status = read(format!("/proc/{pid}/status"));
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.uid(), 65534);
    assert_eq!(meta.mode() & 0o777, 0o660);
    // ...it replaced the default routes and wrote the uplink sysctls.
    let routes = lab
        .ip(&lab.server_ns(), &["-4", "route", "show", "default"])
        .unwrap();
    assert!(
        routes
            .lines()
            .any(|l| l.contains("dev eth0") && l.contains("metric 10")),
        "{routes}"
    );
    let routes6 = lab
        .ip(&lab.server_ns(), &["-6", "route", "show", "default"])
        .unwrap();
    assert!(
        routes6
            .lines()
            .any(|l| l.contains("dev eth0") && l.contains("metric 10")),
        "{routes6}"
    );
    for (ifname, key, want) in [
        ("eth0", "net/ipv4/conf/eth0/rp_filter", "2"),
        (
            "eth1",
            "net/ipv4/conf/eth1/ignore_routes_with_linkdown",
            "1",
        ),
        (
            "eth0",
            "net/ipv6/conf/eth0/ignore_routes_with_linkdown",
            "1",
        ),
        ("eth0", "net/ipv4/conf/eth0/accept_redirects", "0"),
        ("eth1", "net/ipv6/conf/eth1/accept_redirects", "0"),
    ] {
        let v = lab
            .exec(&lab.server_ns(), &["cat", &format!("/proc/sys/{key}")])
            .unwrap();
        assert_eq!(v.trim(), want, "{key} of {ifname}\nlog:\n{}", log_text());
    }
    // And it fails over as root would: carrier loss on the primary.
    lab.carrier_down(uplink_lab::Uplink::Primary).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routes = lab
            .ip(&lab.server_ns(), &["-4", "route", "show", "default"])
            .unwrap();
        if routes
            .lines()
            .any(|l| l.contains("dev eth1") && l.contains("metric 10"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failover to eth1: {routes}\nlog:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The socket API answers (read-only requests: the caller is root here).
    for req in [&["status"][..], &["metrics"]] {
        ok(Command::new(UPLINKCTL)
            .args(["--socket", socket.to_str().unwrap()])
            .args(req));
    }
    // The hook ran (on the failover).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_text().contains("hook done") {
        assert!(
            Instant::now() < deadline,
            "the hook did not run:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = log_text();
    for bad in [
        "Operation not permitted",
        "Permission denied",
        "EPERM",
        "EACCES",
    ] {
        assert!(!log.contains(bad), "{bad} in the log:\n{log}");
    }
    daemon.terminate(Duration::from_secs(5));
    child.terminate(Duration::from_secs(5)).unwrap();
    lab.destroy().unwrap();

    // Every system call the daemon and its hook made is allowed by the
    // unit's SystemCallFilter= (setpriv's own calls before the exec of
    // uplinkd are not the daemon's).
    let allowed = unit_syscall_filter();
    let text = read(&trace);
    let mut used = BTreeSet::new();
    let mut started = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(_pid), Some(call)) = (words.next(), words.next()) else {
            continue;
        };
        let name = if call == "<..." {
            words.next().unwrap_or("")
        } else {
            call.split('(').next().unwrap_or("")
        };
        if !started {
            // The exec *of* uplinkd, not setpriv's exec that names it in
            // its arguments (strace shows those in full up to 32 bytes).
            started = name == "execve" && line.contains(&format!("execve(\"{UPLINKD}\""));
            if !started {
                continue;
            }
        }
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            used.insert(name.to_string());
        }
    }
    assert!(started && used.len() > 20, "trace too short: {used:?}");
    let denied: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        denied.is_empty(),
        "system calls the unit's SystemCallFilter= denies: {denied:?} (used: {used:?})"
    );
    // And every socket family it opened is in RestrictAddressFamilies=.
    let families_allowed = unit_values("RestrictAddressFamilies").join(" ");
    let families: BTreeSet<&str> = text
        .split("socket(")
        .skip(1)
        .filter_map(|rest| rest.split([',', ')']).next())
        .filter(|f| f.starts_with("AF_"))
        .collect();
    assert!(families.contains("AF_NETLINK"), "{families:?}");
    for f in &families {
        assert!(
            families_allowed.split_whitespace().any(|a| a == *f),
            "the daemon opened an {f} socket, not in RestrictAddressFamilies={families_allowed}"
        );
    }
    eprintln!(
        "unit credentials: {} distinct system calls and families {families:?}, all allowed",
        used.len()
    );
}

/// The system calls the unit's `SystemCallFilter=` lines allow: the first is
/// an allow list, `~` lines remove from it, others add; groups are expanded
/// with `systemd-analyze syscall-filter`; `@default` is always allowed.
fn unit_syscall_filter() -> BTreeSet<String> {
    let listing = ok(Command::new("systemd-analyze").arg("syscall-filter"));
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in listing.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.insert(line.trim().to_string(), Vec::new());
        } else if let Some(g) = &current {
            let item = line.trim();
            if !item.is_empty() && !item.starts_with('#') {
                groups.get_mut(g).unwrap().push(item.to_string());
            }
        }
    }
    fn expand(item: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(item) {
            Some(items) => items.iter().for_each(|i| expand(i, groups, out)),
            None => {
                assert!(!item.starts_with('@'), "unknown system call group {item}");
                out.insert(item.to_string());
            }
        }
    }
    let mut allowed = BTreeSet::new();
    expand("@default", &groups, &mut allowed);
    let lines = unit_values("SystemCallFilter");
    assert!(!lines.is_empty() && !lines[0].starts_with('~'), "{lines:?}");
    for line in &lines {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        let mut set = BTreeSet::new();
        for item in items.split_whitespace() {
            expand(item, &groups, &mut set);
        }
        if deny {
            allowed.retain(|c| !set.contains(c));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

#[test]
fn unit_has_the_settings_the_issue_requires() {
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        (
            "ExecStart",
            "/usr/sbin/uplinkd --config /etc/uplinkd/uplinkd.toml",
        ),
        ("RuntimeDirectory", "uplinkd"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_NETLINK AF_INET AF_INET6 AF_PACKET",
        ),
    ] {
        assert_eq!(unit_values(key), [want], "{key}=");
    }
    assert!(!unit_values("WatchdogSec").is_empty());
    assert!(unit_values("ExecReload")
        .iter()
        .any(|v| v == "/bin/kill -HUP $MAINPID"));
    assert!(!unit_values("SystemCallFilter").is_empty());
}

// ---------------------------------------------------------------------------
// The .deb
// ---------------------------------------------------------------------------

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The .deb, built once per test run (several tests use it).
fn deb() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(build_deb).clone()
}

/// Builds the .deb in target/package-build and returns its path.
fn build_deb() -> PathBuf {
    let has_cargo_deb = run(Command::new(cargo()).args(["deb", "--version"]))
        .status
        .success();
    if !has_cargo_deb {
        eprintln!("package test: installing cargo-deb (cargo install cargo-deb --locked)");
        ok(Command::new(cargo()).args(["install", "cargo-deb", "--locked"]));
    }
    let target = repo("target/package-build");
    let out_dir = target.join("debian");
    let _ = std::fs::remove_dir_all(&out_dir);
    let stdout = ok(Command::new(cargo())
        .current_dir(ROOT)
        .env("CARGO_TARGET_DIR", &target)
        .args(["deb", "--output"])
        .arg(&out_dir)
        .args(["--", "--locked"]));
    let deb = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    assert!(
        deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
        "cargo deb printed no .deb path: {stdout}"
    );
    deb
}

/// A clean Debian root: a fresh copy of a cached debootstrap.
struct CleanRoot {
    dir: tempfile::TempDir,
}

impl CleanRoot {
    fn new() -> CleanRoot {
        CleanRoot::with(&[])
    }

    /// A clean root with `extra` packages too (a cache of its own).
    fn with(extra: &[&str]) -> CleanRoot {
        let cache_dir = repo("target/package");
        std::fs::create_dir_all(&cache_dir).unwrap();
        // What the package depends on beyond minbase (dpkg -i resolves nothing),
        // and systemd, as on a server (systemd-analyze verify --root needs its units).
        let mut include = "adduser,init-system-helpers,procps,systemd".to_string();
        for p in extra {
            include.push(',');
            include.push_str(p);
        }
        let cache = cache_dir.join(format!(
            "debian-bookworm-minbase-{}.tar",
            include.replace(',', "-")
        ));
        // One debootstrap at a time (two tests may want the cache at once).
        static CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.exists() {
            let t = Instant::now();
            let tmp = tempfile::Builder::new()
                .prefix("debootstrap-")
                .tempdir_in(&cache_dir)
                .unwrap();
            let root = tmp.path().join("root");
            eprintln!(
                "package test: debootstrap bookworm (cached in {})",
                cache.display()
            );
            ok(Command::new("debootstrap").args([
                "--variant=minbase",
                &format!("--include={include}"),
                "bookworm",
                root.to_str().unwrap(),
                "http://deb.debian.org/debian",
            ]));
            let part = cache.with_extension("tar.part");
            ok(Command::new("tar")
                .arg("-C")
                .arg(&root)
                .args(["--numeric-owner", "-cf"])
                .arg(&part)
                .arg("."));
            std::fs::rename(&part, &cache).unwrap();
            eprintln!("package test: debootstrap took {:?}", t.elapsed());
        }
        let dir = tempfile::Builder::new()
            .prefix("root-")
            .tempdir_in(&cache_dir)
            .unwrap();
        ok(Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .args(["--numeric-owner", "-xpf"])
            .arg(&cache));
        CleanRoot { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    /// `chroot ROOT args...`, without a terminal (dpkg must not ask), in a
    /// network namespace of its own: the package's removal runs
    /// `uplinkd --cleanup`, which must never see the host's routes.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--net", "chroot"])
            .arg(self.dir.path())
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }

    fn dpkg(&self, args: &[&str]) -> String {
        let mut all = vec!["dpkg"];
        all.extend_from_slice(args);
        ok(&mut self.cmd(&all))
    }

    fn copy_in(&self, deb: &Path) -> String {
        let name = format!("/tmp/{}", deb.file_name().unwrap().to_str().unwrap());
        std::fs::copy(deb, self.path(&name)).unwrap();
        name
    }

    /// Every path in the root (relative), with its type and mode.
    fn listing(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let base = self.dir.path();
        let mut stack = vec![base.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let meta = std::fs::symlink_metadata(e.path()).unwrap();
                let rel = e.path().strip_prefix(base).unwrap().display().to_string();
                if meta.is_dir() && !meta.file_type().is_symlink() {
                    stack.push(e.path());
                }
                out.insert(format!("/{rel}"), format!("{:o}", meta.mode()));
            }
        }
        out
    }
}

fn mode_of(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// Rebuilds `deb` as version `version` with `append` added to the example
/// config (an upgrade that changes the conffile).
fn repack_with_changed_conffile(deb: &Path, version: &str, append: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let tree = dir.join("tree");
    ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let conf = tree.join("etc/uplinkd/uplinkd.toml");
    let mut text = read(&conf);
    text.push_str(append);
    std::fs::write(&conf, text).unwrap();
    let control = tree.join("DEBIAN/control");
    let c = read(&control)
        .lines()
        .map(|l| {
            if l.starts_with("Version: ") {
                format!("Version: {version}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&control, c + "\n").unwrap();
    // md5sums list only non-conffiles; nothing else to update.
    let out = dir.join(format!("uplinkd_{version}.deb"));
    ok(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "-b"])
        .arg(&tree)
        .arg(&out));
    out
}

/// Every file of the .deb but the unit (whose directory depends on the
/// cargo-deb version): a file that appears or goes away is a decision.
const PACKAGED_FILES: [&str; 18] = [
    "/usr/sbin/uplinkd",
    "/usr/bin/uplinkctl",
    "/etc/uplinkd/uplinkd.toml",
    "/etc/iproute2/rt_protos.d/uplinkd.conf",
    "/usr/share/man/man8/uplinkd.8.gz",
    "/usr/share/man/man8/uplinkctl.8.gz",
    "/usr/share/man/man5/uplinkd.toml.5.gz",
    "/usr/share/bash-completion/completions/uplinkd",
    "/usr/share/bash-completion/completions/uplinkctl",
    "/usr/share/zsh/vendor-completions/_uplinkd",
    "/usr/share/zsh/vendor-completions/_uplinkctl",
    "/usr/share/fish/vendor_completions.d/uplinkd.fish",
    "/usr/share/fish/vendor_completions.d/uplinkctl.fish",
    "/usr/share/doc/uplinkd/copyright",
    "/usr/share/doc/uplinkd/changelog.Debian.gz",
    "/usr/share/lintian/overrides/uplinkd",
    "/usr/share/uplinkd/uplinkd-rules.yml",
    "/usr/share/uplinkd/uplinkd.json",
];

#[test]
fn debian_package() {
    let started = Instant::now();
    require_root("the package test (dpkg in a chroot)");
    let missing: Vec<&str> = [
        "lintian",
        "debootstrap",
        "dpkg-deb",
        "systemd-analyze",
        "chroot",
    ]
    .into_iter()
    .filter(|t| !have(t))
    .collect();
    assert!(
        missing.is_empty(),
        "the package test needs {missing:?}: bash tests/run-all.sh installs them \
         (apt-get install lintian debootstrap systemd)"
    );

    // Build.
    let t = Instant::now();
    let deb = deb();
    let size = std::fs::metadata(&deb).unwrap().len();
    eprintln!(
        "package test: built {} ({} KiB) in {:?}",
        deb.display(),
        size / 1024,
        t.elapsed()
    );

    // Lint: no error, no warning (overrides need a written reason: there are none).
    let lint = run(Command::new("lintian")
        .args(["--display-info", "--pedantic", "--tag-display-limit", "0"])
        .arg(&deb));
    let lint_text =
        String::from_utf8_lossy(&lint.stdout).into_owned() + &String::from_utf8_lossy(&lint.stderr);
    let bad: Vec<&str> = lint_text
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(bad.is_empty(), "lintian errors or warnings:\n{lint_text}");
    assert!(
        lint.status.success(),
        "lintian failed ({}):\n{lint_text}",
        lint.status
    );
    eprintln!(
        "package test: lintian: {}",
        if lint_text.trim().is_empty() {
            "clean".into()
        } else {
            lint_text.replace('\n', "; ")
        }
    );

    // Metadata and contents.
    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for want in [
        "Package: uplinkd",
        "Section: net",
        "Priority: optional",
        "libc6",
        "adduser",
        "procps",
    ] {
        assert!(info.contains(want), "control lacks {want:?}:\n{info}");
    }
    let name = ok(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Package"));
    assert_eq!(name.trim(), "uplinkd");
    let tmp = tempfile::Builder::new()
        .prefix("uplinkd-deb-")
        .tempdir()
        .unwrap();
    let ctrl = tmp.path().join("control");
    ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    assert_eq!(
        read(ctrl.join("conffiles")).trim(),
        "/etc/uplinkd/uplinkd.toml\n/etc/iproute2/rt_protos.d/uplinkd.conf"
    );
    let contents = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(
        !contents.contains("uplink-lab"),
        "the lab tool is packaged:\n{contents}"
    );
    // Exactly these files (directories aside); the unit's directory depends
    // on the cargo-deb version.
    let files: BTreeSet<String> = contents
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .filter(|p| !p.ends_with("/uplinkd.service"))
        .collect();
    let expected: BTreeSet<String> = PACKAGED_FILES.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        files, expected,
        "the package's files changed (left: the .deb, right: expected):\n{contents}"
    );

    // Install into a clean root.
    let root = CleanRoot::new();
    let before = root.listing();
    let accounts = |root: &CleanRoot| {
        ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"].map(|f| read(root.path(f)))
    };
    let accounts_before = accounts(&root);
    let in_root = root.copy_in(&deb);
    root.dpkg(&["-i", &in_root]);

    let unit = [
        "/lib/systemd/system/uplinkd.service",
        "/usr/lib/systemd/system/uplinkd.service",
    ]
    .into_iter()
    .find(|p| root.path(p).exists())
    .unwrap_or_else(|| panic!("no uplinkd.service installed:\n{contents}"));
    for (path, mode) in [
        ("/usr/sbin/uplinkd", 0o755),
        ("/usr/bin/uplinkctl", 0o755),
        ("/etc/uplinkd/uplinkd.toml", 0o644),
        ("/etc/iproute2/rt_protos.d/uplinkd.conf", 0o644),
        ("/usr/share/man/man8/uplinkd.8.gz", 0o644),
        ("/usr/share/man/man8/uplinkctl.8.gz", 0o644),
        ("/usr/share/man/man5/uplinkd.toml.5.gz", 0o644),
        ("/usr/share/bash-completion/completions/uplinkd", 0o644),
        ("/usr/share/bash-completion/completions/uplinkctl", 0o644),
        ("/usr/share/zsh/vendor-completions/_uplinkd", 0o644),
        ("/usr/share/zsh/vendor-completions/_uplinkctl", 0o644),
        ("/usr/share/fish/vendor_completions.d/uplinkd.fish", 0o644),
        ("/usr/share/fish/vendor_completions.d/uplinkctl.fish", 0o644),
        ("/usr/share/doc/uplinkd/copyright", 0o644),
        ("/usr/share/doc/uplinkd/changelog.Debian.gz", 0o644),
        ("/usr/share/uplinkd/uplinkd-rules.yml", 0o644),
        ("/usr/share/uplinkd/uplinkd.json", 0o644),
        (unit, 0o644),
    ] {
        assert_eq!(
            mode_of(&root.path(path)),
            (mode, 0, 0),
            "{path}: mode, uid, gid"
        );
    }
    assert_eq!(
        read(root.path("/etc/uplinkd/uplinkd.toml")),
        read(repo("config/uplinkd.toml"))
    );
    // ip(8) names protocol 85: the line iproute2 reads from rt_protos.d.
    let protos = read(root.path("/etc/iproute2/rt_protos.d/uplinkd.conf"));
    assert!(
        protos
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["85", "uplinkd"]),
        "{protos}"
    );
    assert_eq!(read(root.path(unit)), read(repo(UNIT)));
    for (installed, committed) in [
        (
            "/usr/share/bash-completion/completions/uplinkctl",
            "bash/uplinkctl",
        ),
        (
            "/usr/share/zsh/vendor-completions/_uplinkctl",
            "zsh/_uplinkctl",
        ),
        (
            "/usr/share/fish/vendor_completions.d/uplinkctl.fish",
            "fish/uplinkctl.fish",
        ),
    ] {
        let committed = format!("packaging/completions/{committed}");
        assert_eq!(
            read(root.path(installed)),
            read(repo(&committed)),
            "{installed}"
        );
    }
    for (installed, committed) in [
        (
            "/usr/share/uplinkd/uplinkd-rules.yml",
            "packaging/prometheus/uplinkd-rules.yml",
        ),
        (
            "/usr/share/uplinkd/uplinkd.json",
            "packaging/grafana/uplinkd.json",
        ),
    ] {
        assert_eq!(
            read(root.path(installed)),
            read(repo(committed)),
            "{installed}"
        );
    }
    let files = root.dpkg(&["-L", "uplinkd"]);
    assert!(!files.contains("uplink-lab"), "{files}");

    // The system user and group; the unit installed but not enabled.
    let user = ok(&mut root.cmd(&["getent", "passwd", "uplinkd"]));
    let fields: Vec<&str> = user.trim().split(':').collect();
    assert!(
        fields[2].parse::<u32>().unwrap() < 1000,
        "not a system user: {user}"
    );
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let group = ok(&mut root.cmd(&["getent", "group", "uplinkd"]));
    assert_eq!(fields[3], group.split(':').nth(2).unwrap(), "primary group");
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/uplinkd.service");
    assert!(
        std::fs::symlink_metadata(&wants).is_err(),
        "the unit must not be enabled on install"
    );

    // The shipped config is valid, also as the service user reads it.
    ok(&mut root.cmd(&[
        "/usr/sbin/uplinkd",
        "--check",
        "--config",
        "/etc/uplinkd/uplinkd.toml",
    ]));
    ok(&mut root.cmd(&[
        "setpriv",
        "--reuid=uplinkd",
        "--regid=uplinkd",
        "--init-groups",
        "/usr/sbin/uplinkd",
        "--check",
    ]));

    // The installed unit verifies (its binaries and man pages in the root).
    let rootdir = root.dir.path().to_str().unwrap().to_string();
    let verify = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no", &format!("--root={rootdir}")])
        .arg(root.path(unit)));
    let verify_text = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && verify_text.trim().is_empty(),
        "systemd-analyze verify ({}):\n{verify_text}",
        verify.status
    );
    for doc in unit_values("Documentation").join(" ").split_whitespace() {
        let page = doc.strip_prefix("man:").expect("man: documentation");
        let (name, sect) = page.trim_end_matches(')').split_once('(').unwrap();
        let p = root.path(&format!("/usr/share/man/man{sect}/{name}.{sect}.gz"));
        assert!(p.exists(), "Documentation={doc} is not installed");
    }
    let sec = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", &format!("--root={rootdir}")])
        .arg(root.path(unit)));
    let sec_text =
        String::from_utf8_lossy(&sec.stdout).into_owned() + &String::from_utf8_lossy(&sec.stderr);
    let level: f64 = sec_text
        .lines()
        .find_map(|l| {
            let rest = l.split("Overall exposure level for").nth(1)?;
            rest.split(':')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{sec_text}"));
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{sec_text}");
    eprintln!("package test: systemd-analyze security exposure {level}");

    // Conffile: a local edit survives a reinstall...
    let conf = root.path("/etc/uplinkd/uplinkd.toml");
    let edited = read(&conf).replace("failback_after = \"30s\"", "failback_after = \"45s\"");
    assert!(edited.contains("\"45s\""));
    std::fs::write(&conf, &edited).unwrap();
    root.dpkg(&["-i", &in_root]);
    assert_eq!(read(&conf), edited, "reinstall lost the local edit");
    // ...and an upgrade that changes the conffile (dpkg keeps the local one,
    // non-interactively with --force-confold, and leaves the new one aside).
    let upgrade =
        repack_with_changed_conffile(&deb, "0.1.0-2", "\n# changed upstream\n", tmp.path());
    let in_root2 = root.copy_in(&upgrade);
    root.dpkg(&["-i", "--force-confold", &in_root2]);
    assert_eq!(read(&conf), edited, "upgrade lost the local edit");
    let dist = root.path("/etc/uplinkd/uplinkd.toml.dpkg-dist");
    assert!(
        read(&dist).ends_with("# changed upstream\n"),
        "no .dpkg-dist"
    );
    // An unedited conffile follows the upgrade silently.
    // (The operator takes the new version: the file is then as packaged.)
    std::fs::rename(&dist, &conf).unwrap();
    let upgrade3 = repack_with_changed_conffile(
        &upgrade,
        "0.1.0-3",
        "# changed again\n",
        &tmp.path().join("3"),
    );
    let in_root3 = root.copy_in(&upgrade3);
    root.dpkg(&["-i", &in_root3]);
    assert!(
        read(&conf).ends_with("# changed again\n"),
        "unedited conffile not upgraded"
    );
    assert!(!dist.exists());

    // Purge leaves nothing behind: no file, directory, user or group.
    std::fs::create_dir_all(root.path("/run/uplinkd")).unwrap();
    std::fs::write(conf.with_extension("toml.dpkg-old"), "x").unwrap();
    // Enabled by the operator (systemctl works offline on the root's files).
    ok(&mut root.cmd(&["systemctl", "enable", "uplinkd"]));
    assert!(std::fs::symlink_metadata(&wants).is_ok());
    let purge = root.cmd(&["dpkg", "--purge", "uplinkd"]).output().unwrap();
    assert!(purge.status.success(), "purge failed: {purge:?}");
    let noise = String::from_utf8_lossy(&purge.stderr);
    assert!(
        noise.lines().all(|l| l.starts_with("Removed ")),
        "purge complained: {noise}"
    );
    for f in [&in_root, &in_root2, &in_root3] {
        std::fs::remove_file(root.path(f)).unwrap();
    }
    let after = root.listing();
    // dpkg's own logs and backups change on every run, whatever the package.
    let bookkeeping = |p: &str| {
        p.starts_with("/var/lib/dpkg/")
            || p.starts_with("/var/log/")
            || p.starts_with("/var/cache/debconf/")
            || p.ends_with('-') // /etc/passwd- and co, written by adduser/deluser
            || p == "/run/adduser" // adduser's lock file (on tmpfs on a real system)
    };
    let left: Vec<&String> = after
        .keys()
        .filter(|p| !before.contains_key(*p) && !bookkeeping(p))
        .collect();
    assert!(left.is_empty(), "purge left behind: {left:#?}");
    let info_left: Vec<&String> = after
        .keys()
        .filter(|p| p.starts_with("/var/lib/dpkg/info/uplinkd"))
        .collect();
    assert!(info_left.is_empty(), "{info_left:?}");
    assert_eq!(
        accounts(&root),
        accounts_before,
        "purge left the user or group"
    );
    let changed: Vec<&String> = before
        .iter()
        .filter(|(p, m)| after.get(*p).is_some_and(|a| a != *m) && !bookkeeping(p))
        .map(|(p, _)| p)
        .collect();
    assert!(changed.is_empty(), "purge changed modes of {changed:?}");

    eprintln!(
        "package test: {} KiB .deb; whole test {:?}",
        size / 1024,
        started.elapsed()
    );
}

/// A clean root booted with systemd-nspawn in a lab namespace.
struct Container {
    nspawn: std::process::Child,
    init: u32,
}

impl Container {
    fn boot(root: &CleanRoot, netns: &str, log: &Path) -> Container {
        let logf = std::fs::File::create(log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(root.dir.path())
            .arg(format!("--network-namespace-path=/run/netns/{netns}"))
            // nspawn's own bounding set lacks CAP_NET_ADMIN unless asked.
            .args(["--capability=CAP_NET_ADMIN", "--register=no", "--keep-unit"])
            // /proc/sys/net writable, as root finds it on a server (nspawn
            // mounts all of /proc/sys read-only, also with a network
            // namespace of its own): the package's removal puts the
            // sysctls back. It is the lab's namespace, not the host's.
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
            .args(["--quiet", "--boot"])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start systemd-nspawn");
        let pid = nspawn.id();
        let mut c = Container { nspawn, init: 0 };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(k) = kids.split_whitespace().next() {
                if read(format!("/proc/{k}/comm")).trim() == "systemd" {
                    c.init = k.parse().unwrap();
                    break;
                }
            }
            assert!(
                c.nspawn.try_wait().unwrap().is_none(),
                "systemd-nspawn exited:\n{}",
                read(log)
            );
            assert!(
                Instant::now() < deadline,
                "no systemd in the container:\n{}",
                read(log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Booted: is-system-running says running (or degraded: some unit
        // that has nothing to do in a container failed).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let state = String::from_utf8_lossy(&c.run(&["systemctl", "is-system-running"]).stdout)
                .trim()
                .to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot (state {state:?}):\n{}",
                read(log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .args(["--target", &self.init.to_string(), "--all"])
            .args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in the container failed ({}):\n{}{}\njournal:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, prop: &str) -> String {
        self.ok(&[
            "systemctl",
            "show",
            "--property",
            prop,
            "--value",
            "uplinkd",
        ])
        .trim()
        .to_string()
    }

    fn journal(&self) -> String {
        let out = self.run(&[
            "journalctl",
            "--unit",
            "uplinkd",
            "--no-pager",
            "--output",
            "cat",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_active(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.show("ActiveState") != "active" {
            assert!(
                Instant::now() < deadline,
                "uplinkd not active {what} ({} / {}):\n{}",
                self.show("ActiveState"),
                self.show("SubState"),
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes nspawn power the container off.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Killing the init of a PID namespace ends every process in it.
        if self.init != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.init as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

fn lab_default_via(lab: &uplink_lab::Lab, family: &str, dev: &str) -> bool {
    lab.ip(&lab.server_ns(), &[family, "route", "show", "default"])
        .unwrap()
        .lines()
        .any(|l| l.contains(&format!("dev {dev} ")) && l.contains("metric 10"))
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    why: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            why()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The packaged unit under a real systemd: the clean root with the package
/// installed, booted by systemd-nspawn inside the lab's server namespace.
/// READY (the unit becomes active), the watchdog pings, the sandbox (user,
/// capabilities, no new privileges, seccomp), the socket's owner and modes,
/// who may read and who may control, a failover with a hook, reload with a
/// good and a bad file, structured journal records, and stop.
#[test]
fn unit_runs_under_systemd() {
    require_root("systemd-nspawn and the lab");
    assert!(
        have("systemd-nspawn"),
        "this test needs systemd-nspawn: bash tests/run-all.sh installs it \
         (apt-get install systemd-container)"
    );
    let deb = deb();
    let root = CleanRoot::new();
    let in_root = root.copy_in(&deb);
    root.dpkg(&["-i", &in_root]);

    let lab = uplink_lab::Lab::build(&uplink_lab::LabSpec::default()).expect("build lab");
    // A hook that logs (as the README says hooks may) and writes its input.
    let hook = "logger -t uplinkd-hook \"$UPLINKD_KIND to $UPLINKD_TO\"; \
                cat > /run/uplinkd/hook-$UPLINKD_SEQ.json";
    let config = |extra: &str| {
        lab.try_config_toml(&format!(
            "[agent]\nsocket = \"/run/uplinkd/uplinkd.sock\"\n\
             [hooks]\non_active_change = [{hook:?}]\n{extra}"
        ))
        .unwrap()
    };
    let conf = root.path("/etc/uplinkd/uplinkd.toml");
    std::fs::write(&conf, config("")).unwrap();

    let rp_before = eth1_rp_filter(&lab);
    let log = root.path("/nspawn.log");
    let c = Container::boot(&root, &lab.server_ns(), &log);
    c.ok(&["systemctl", "start", "--no-block", "uplinkd"]);
    // READY=1: the unit is active only once the daemon says so.
    c.wait_active("after start (READY=1)");
    let main = c.show("MainPID");
    assert_eq!(c.show("SubState"), "running");
    assert!(lab_default_via(&lab, "-4", "eth0") && lab_default_via(&lab, "-6", "eth0"));
    let rp = lab
        .exec(
            &lab.server_ns(),
            &["cat", "/proc/sys/net/ipv4/conf/eth1/rp_filter"],
        )
        .unwrap();
    assert_eq!(
        rp.trim(),
        "2",
        "uplink sysctls not written under the sandbox"
    );

    // The sandbox as the kernel sees it.
    let status = c.ok(&["cat", &format!("/proc/{main}/status")]);
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let uid = c.ok(&["id", "-u", "uplinkd"]).trim().to_string();
    assert_ne!(uid, "0");
    assert!(field("Uid").iter().all(|u| *u == uid), "{:?}", field("Uid"));
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), ["0000000000003000"], "{set}");
    }
    assert_eq!(field("NoNewPrivs"), ["1"]);
    assert_eq!(field("Seccomp"), ["2"]);

    // The socket: uplinkd:uplinkd, 0660 in a 0750 directory.
    assert_eq!(
        c.ok(&[
            "stat",
            "-c",
            "%a %U %G",
            "/run/uplinkd",
            "/run/uplinkd/uplinkd.sock"
        ]),
        "750 uplinkd uplinkd\n660 uplinkd uplinkd\n"
    );
    // The group may read; others may not; controls need root.
    let as_user = |group: &str, args: &[&str]| {
        let mut all = vec!["setpriv", "--reuid=nobody", "--clear-groups"];
        let g = format!("--regid={group}");
        all.push(&g);
        all.push("uplinkctl");
        all.extend_from_slice(args);
        c.run(&all)
    };
    let out = as_user("uplinkd", &["status", "--json"]);
    assert!(
        out.status.success(),
        "group uplinkd cannot read status: {out:?}"
    );
    let out = as_user("nogroup", &["status"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "anyone may read status: {out:?}"
    );
    let out = as_user("uplinkd", &["drain", "primary"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("root"),
        "a non-root member could drain: {out:?}"
    );
    c.ok(&["uplinkctl", "drain", "primary"]);
    wait_until(
        "drain to move IPv4",
        Duration::from_secs(10),
        || lab_default_via(&lab, "-4", "eth1"),
        || c.journal(),
    );
    c.ok(&["uplinkctl", "undrain", "primary"]);

    // The watchdog is pinged from the loop.
    let t0 = c.show("WatchdogTimestampMonotonic");
    wait_until(
        "a watchdog ping",
        Duration::from_secs(10),
        || c.show("WatchdogTimestampMonotonic") != t0,
        || c.journal(),
    );

    // A failover runs the hook, as user uplinkd, writing in /run/uplinkd.
    lab.carrier_down(uplink_lab::Uplink::Primary).unwrap();
    wait_until(
        "the failover",
        Duration::from_secs(10),
        || lab_default_via(&lab, "-6", "eth1"),
        || c.journal(),
    );
    wait_until(
        "the hook",
        Duration::from_secs(10),
        || c.ok(&["ls", "/run/uplinkd"]).contains("hook-"),
        || c.journal(),
    );
    wait_until(
        "the hook's log line",
        Duration::from_secs(10),
        || {
            c.ok(&["journalctl", "--identifier", "uplinkd-hook", "--no-pager"])
                .contains("active_changed to secondary")
        },
        || c.journal(),
    );
    let owners = c.ok(&["sh", "-c", "stat -c %U /run/uplinkd/hook-*"]);
    assert!(owners.lines().all(|o| o == "uplinkd"), "{owners}");
    lab.carrier_up(uplink_lab::Uplink::Primary).unwrap();

    // Reload: a good file is applied by the same process...
    std::fs::write(&conf, config("[policy]\nfailback_after = \"45s\"\n")).unwrap();
    c.ok(&["systemctl", "reload", "uplinkd"]);
    // ...a bad one fails the reload and changes nothing.
    std::fs::write(&conf, config("[policy]\nfailback_after = \"soon\"\n")).unwrap();
    let out = c.run(&["systemctl", "reload", "uplinkd"]);
    assert!(!out.status.success(), "a bad config was reloaded");
    std::thread::sleep(Duration::from_secs(1));
    c.wait_active("after the reloads");
    assert_eq!(
        c.show("MainPID"),
        main,
        "the daemon was restarted:\n{}",
        c.journal()
    );
    assert_eq!(c.show("NRestarts"), "0");
    let journal = c.journal();
    assert!(
        journal.contains("SIGHUP"),
        "no reload in the journal:\n{journal}"
    );

    // Structured records in the journal, and no permission failure.
    let json = c.ok(&[
        "journalctl",
        "--unit",
        "uplinkd",
        "--no-pager",
        "--output",
        "json",
    ]);
    assert!(
        json.lines()
            .any(|l| l.contains("\"TARGET\":\"uplinkd::daemon")),
        "no structured (tracing-journald) records:\n{json}"
    );
    for bad in ["Operation not permitted", "Permission denied"] {
        assert!(!journal.contains(bad), "{bad} in the journal:\n{journal}");
    }

    // ip(8) names the routes "proto uplinkd" with the packaged
    // rt_protos.d file (the host's ip, which the container lacks, given the
    // root's file in a mount namespace of its own).
    let shown = ok(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/iproute2/rt_protos.d && ip -n \"$2\" route show default")
        .arg("sh")
        .arg(root.path("/etc/iproute2/rt_protos.d"))
        .arg(lab.server_ns()));
    assert!(
        shown.contains("proto uplinkd"),
        "ip route does not name uplinkd's routes:\n{shown}"
    );

    // Stop: the routes and the runtime directory stay (drains, sequence
    // numbers, the sysctls' values before uplinkd, for the cleanup).
    std::fs::write(&conf, config("")).unwrap();
    c.ok(&["systemctl", "stop", "uplinkd"]);
    assert_eq!(c.show("ActiveState"), "inactive");
    let run = c.ok(&["ls", "/run/uplinkd"]);
    assert!(run.lines().any(|l| l == "sysctl-originals"), "{run}");
    assert!(!owned(&lab).is_empty(), "the routes went with the stop");

    // Removing the package (with the service running again: its removal
    // stops it) removes every route and rule of uplinkd's and puts the
    // sysctls back.
    c.ok(&["systemctl", "start", "uplinkd"]);
    c.wait_active("after the second start");
    let out = c.ok(&["dpkg", "-r", "uplinkd"]);
    assert!(
        out.contains("removed ipv4 default via") && out.contains("restored "),
        "the removal did not clean up:\n{out}\njournal:\n{}",
        c.journal()
    );
    assert_eq!(owned(&lab), "", "left after dpkg -r:\n{out}");
    assert_eq!(
        eth1_rp_filter(&lab),
        rp_before,
        "rp_filter not restored:\n{out}"
    );
    drop(c);
    lab.destroy().unwrap();
}

/// `net.ipv4.conf.eth1.rp_filter` of the lab's server.
fn eth1_rp_filter(lab: &uplink_lab::Lab) -> String {
    lab.exec(
        &lab.server_ns(),
        &["cat", "/proc/sys/net/ipv4/conf/eth1/rp_filter"],
    )
    .unwrap()
    .trim()
    .to_string()
}

/// Every route (any table) and rule with protocol 85 in the lab's server.
fn owned(lab: &uplink_lab::Lab) -> String {
    let ns = lab.server_ns();
    let mut out = String::new();
    for fam in ["-4", "-6"] {
        out += &lab
            .ip(&ns, &[fam, "route", "show", "table", "all", "proto", "85"])
            .unwrap();
        let rules = lab.ip(&ns, &[fam, "rule", "show"]).unwrap();
        for l in rules.lines().filter(|l| l.contains("proto 85")) {
            out += l;
            out += "\n";
        }
    }
    out
}

/// uplinkd beside a real systemd-networkd.
#[path = "package/networkd.rs"]
mod networkd;

/// A process this test started (indirectly, under strace): SIGKILLed on drop
/// unless it already exited.
struct KillOnDrop(u32);

impl KillOnDrop {
    fn alive(&self) -> bool {
        // A zombie still has /proc/PID: only a state other than Z counts.
        std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .map(|st| {
                st.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// SIGTERM, then SIGKILL after `grace`; asserts it is gone.
    fn terminate(self, grace: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !self.alive(),
            "uplinkd {} ignored SIGTERM for {grace:?}",
            self.0
        );
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.alive() {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
