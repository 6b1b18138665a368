//! The monitoring assets shipped with the agent: the Prometheus rules
//! (`packaging/prometheus/`) and the Grafana dashboard (`packaging/grafana/`).
//!
//! - `promtool check rules` and `promtool test rules` pass (promtool comes
//!   with Debian's `prometheus` package, which tests/run-all.sh installs; a
//!   missing promtool fails the test, it never skips it);
//! - the dashboard is valid JSON with its data source as a variable, and
//!   every expression in it is valid PromQL (checked by promtool too);
//! - every metric the rules and the dashboard name is one the real daemon
//!   exports: the daemon runs in the lab, its scrape is parsed, and each name
//!   must have samples there (a misspelt name, or a metric renamed in
//!   src/metrics.rs, fails here instead of leaving an alert that never fires).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use uplink_lab::Uplink;
use uplinkd::config::Family;

const RULES: &str = "packaging/prometheus/uplinkd-rules.yml";
const RULE_TESTS: &[&str] = &[
    "packaging/prometheus/uplinkd-rules.test.yml",
    "packaging/prometheus/uplinkd-rules.hours.test.yml",
];
const DASHBOARD: &str = "packaging/grafana/uplinkd.json";

/// Names a query may use that the agent does not export: Prometheus makes
/// `up` itself for every target.
const FROM_PROMETHEUS: &[&str] = &["up"];

/// The warning of the bond added to the daemon's status: a managed bond's
/// series exist only with a bond, which the host's lab cannot build (no
/// bonding driver; tests/e2e_bond.rs runs bonds in a VM), so the daemon's
/// metrics code encodes them from the daemon's own status with a bond added.
const BOND_WARNING: &str = "settings that weaken the agent";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool").args(args).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run promtool ({e}): install Debian's prometheus package \
             (tests/run-all.sh does: apt-get install prometheus)"
        ),
    }
}

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let path = repo(RULES);
    let check = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert_ok("promtool check rules", &check);
    // The reader below sees every rule promtool sees.
    let found = format!("SUCCESS: {} rules found", rules().1.len());
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains(&found),
        "expected {found:?}, promtool says:\n{out}"
    );
    let tests: Vec<String> = RULE_TESTS
        .iter()
        .map(|t| repo(t).to_str().unwrap().to_string())
        .collect();
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    assert_ok("promtool test rules", &promtool(&args));
}

// ---------------------------------------------------------------------------
// What the rules and the dashboard query.
// ---------------------------------------------------------------------------

/// The rules file: (recorded names, every expression). A reader for the
/// shape of this one file (`record:` and `expr:` keys, an expression inline
/// or as a `|` block); the rule count is checked against promtool's.
fn rules() -> (BTreeSet<String>, Vec<String>) {
    let text = std::fs::read_to_string(repo(RULES)).unwrap();
    let mut recorded = BTreeSet::new();
    let mut exprs = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start().trim_start_matches("- ");
        if let Some(name) = l.strip_prefix("record:") {
            recorded.insert(name.trim().to_string());
        } else if let Some(v) = l.strip_prefix("expr:") {
            let v = v.trim();
            if v.starts_with('|') || v.starts_with('>') {
                let key = indent(lines[i]);
                let mut block = String::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > key)
                {
                    i += 1;
                    block.push_str(lines[i].trim());
                    block.push('\n');
                }
                exprs.push(block);
            } else {
                exprs.push(v.trim_matches(|c| c == '"' || c == '\'').to_string());
            }
        }
        i += 1;
    }
    (recorded, exprs)
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo(DASHBOARD)).unwrap();
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every PromQL expression of the dashboard: panel targets, variable
/// queries and annotation queries.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(d, &mut out);
    out
}

/// A Grafana expression as plain PromQL: its variables replaced by values.
fn grafana_to_promql(e: &str) -> String {
    // label_values(metric{...}, label) is Grafana's, not PromQL: keep the selector.
    let e = match e.strip_prefix("label_values(") {
        Some(rest) => rest.rsplit_once(',').map(|(sel, _)| sel).unwrap_or(rest),
        None => e,
    };
    e.replace("$__rate_interval", "1m")
        .replace("$family", "ipv4")
        .replace("$job", "uplinkd")
        .replace("$instance", "server")
}

/// The metric names a PromQL expression reads (series selectors), with
/// functions, keywords, label names and label values left out.
fn referenced_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        // Aggregations, which may put `by (...)` before their parenthesis.
        "sum",
        "avg",
        "count",
        "min",
        "max",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    // Drop comments, string literals, label matchers and range/subquery
    // durations.
    let mut s = String::new();
    let (mut in_str, mut depth_brace, mut depth_bracket) = (None, 0, 0);
    let mut comment = false;
    for c in expr.chars() {
        if comment {
            comment = c != '\n';
            continue;
        }
        if let Some(q) = in_str {
            if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '#' => comment = true,
            '"' | '\'' | '`' => in_str = Some(c),
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => s.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            s.push(' ');
        }
    }
    // Drop the label lists of by/without/on/ignoring/group_left/group_right.
    let words = identifiers(&s);
    let mut skip_until = 0;
    let mut names = BTreeSet::new();
    for (pos, w) in &words {
        if *pos < skip_until {
            continue;
        }
        let after = s[pos + w.len()..].trim_start();
        if KEYWORDS.contains(&w.to_ascii_lowercase().as_str()) {
            if matches!(
                *w,
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) && after.starts_with('(')
            {
                let open = s.len() - after.len();
                skip_until = open + after.find(')').expect("closing parenthesis");
            }
            continue;
        }
        if after.starts_with('(') {
            continue; // a function or an aggregation
        }
        names.insert(w.to_string());
    }
    names
}

/// Identifiers (metric, function, keyword, label names) with their offsets.
fn identifiers(s: &str) -> Vec<(usize, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            // An identifier glued to a digit before it is part of a number
            // or duration (1e3, 5m): not a name.
            if start == 0 || !b[start - 1].is_ascii_digit() && b[start - 1] != b'.' {
                out.push((start, &s[start..i]));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names that have samples in a scrape.
fn sampled(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
        .collect()
}

/// Every name the rules and the dashboard read that the scrape does not
/// offer, with where it is used. Recording rules' names must be recorded by
/// the rules file; every other name must have samples.
fn missing_names(
    exprs: &[(String, String)],
    recorded: &BTreeSet<String>,
    sampled: &BTreeSet<String>,
) -> Vec<String> {
    let mut missing = Vec::new();
    for (origin, expr) in exprs {
        for n in referenced_names(expr) {
            let ok = if n.contains(':') {
                recorded.contains(&n)
            } else {
                FROM_PROMETHEUS.contains(&n.as_str())
                    // A histogram's name alone stands for its _bucket/_sum/_count.
                    || sampled.contains(&n)
                    || sampled.contains(&format!("{n}_bucket"))
            };
            if !ok {
                missing.push(format!("{n} (in {origin}: {})", expr.trim()));
            }
        }
    }
    missing
}

/// Every expression of the rules and the dashboard, with where it is from.
fn all_exprs() -> (BTreeSet<String>, Vec<(String, String)>) {
    let (recorded, rule_exprs) = rules();
    let mut exprs: Vec<(String, String)> = rule_exprs
        .into_iter()
        .map(|e| (RULES.to_string(), e))
        .collect();
    exprs.extend(
        dashboard_exprs(&dashboard())
            .into_iter()
            .map(|e| (DASHBOARD.to_string(), grafana_to_promql(&e))),
    );
    (recorded, exprs)
}

#[test]
fn the_name_checker_finds_metrics_and_flags_a_misspelt_one() {
    let scrape = "# TYPE uplinkd_switches counter\nuplinkd_switches_total{family=\"ipv4\",reason=\"initial\"} 1\n\
                  # TYPE uplinkd_probe_rtt_seconds histogram\nuplinkd_probe_rtt_seconds_bucket{le=\"0.1\"} 1\n\
                  # TYPE uplinkd_active gauge\nuplinkd_active{uplink=\"a\",family=\"ipv4\"} 1\n";
    let e = sampled(scrape);
    let recorded: BTreeSet<String> = ["family:x:sum".to_string()].into();
    let expr = |s: &str| vec![("test".to_string(), s.to_string())];
    let good = r#"sum by (family, reason) (rate(uplinkd_switches_total{reason!~"initial|x"}[5m] offset 1h))
        / on (family) group_left () family:x:sum
        and histogram_quantile(0.99, rate(uplinkd_probe_rtt_seconds_bucket[1m])) > 1e3
        # a comment naming no_such_metric
        unless max_over_time(uplinkd_active[1m]) == bool 1 or up == 0"#;
    assert_eq!(
        referenced_names(good),
        [
            "family:x:sum",
            "up",
            "uplinkd_active",
            "uplinkd_probe_rtt_seconds_bucket",
            "uplinkd_switches_total"
        ]
        .map(String::from)
        .into()
    );
    assert!(missing_names(&expr(good), &recorded, &e).is_empty());
    for bad in [
        "rate(uplinkd_switchs_total[5m])",
        "uplinkd_active * on (uplink) family:x:summ",
        "uplinkd_probe_rtt_bucket",
    ] {
        assert_eq!(
            missing_names(&expr(bad), &recorded, &e).len(),
            1,
            "{bad} passed the check"
        );
    }
}

#[test]
fn dashboard_is_valid_grafana_json_with_valid_promql() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 39,
        "schemaVersion of a current Grafana"
    );
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("no ${n} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    var("job");
    var("instance");
    // Every panel and query reads the data source variable, never a fixed uid.
    let mut uids = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(ds) = m.get("datasource") {
                    if ds["type"] == "prometheus" || ds.is_string() {
                        out.push(ds["uid"].as_str().unwrap_or("").to_string());
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&d["panels"], &mut uids);
    assert!(!uids.is_empty());
    assert!(
        uids.iter().all(|u| u == "${datasource}"),
        "data sources: {uids:?}"
    );
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["type"] != "row" {
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{p}");
        }
    }

    // promtool parses every expression (as recording rules of a scratch file).
    let exprs = dashboard_exprs(&d);
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = serde_json::to_string(&grafana_to_promql(e)).unwrap();
        file.push_str(&format!(
            "      - record: dashboard:expr:{i}\n        expr: {e}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-exprs.yml");
    std::fs::write(&path, file).unwrap();
    assert_ok(
        "promtool check rules (the dashboard's expressions)",
        &promtool(&["check", "rules", path.to_str().unwrap()]),
    );
}

// ---------------------------------------------------------------------------
// Against the running daemon.
// ---------------------------------------------------------------------------

fn metrics_text(a: &Agent) -> String {
    let o = a.ctl(&["metrics"]);
    assert_ok("uplinkctl metrics", &o);
    String::from_utf8(o.stdout).unwrap()
}

/// The label value of the `uplinkd_uplink_info` sample of (uplink, family).
fn info_sample(scrape: &str, uplink: &str, family: &str) -> Option<String> {
    scrape
        .lines()
        .filter(|l| l.starts_with("uplinkd_uplink_info{"))
        .find(|l| {
            l.contains(&format!("uplink=\"{uplink}\""))
                && l.contains(&format!("family=\"{family}\""))
        })
        .map(String::from)
}

#[test]
fn every_metric_the_rules_and_dashboard_read_is_exported_by_the_daemon() {
    let lab = lab();
    // A hook that fails, so the hook counters have samples.
    let a = settled(&lab, "[hooks]\non_active_change = ['false']");
    // A failover: switches by another reason than "initial", hooks run.
    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, Duration::from_secs(5));
    }
    // A request the socket refuses, so the refusal counter has a sample.
    let refused = {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&a.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"not json\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    assert!(refused.contains("error"), "{refused}");

    // The same status with a bond, through the daemon's metrics code.
    let cfg = uplinkd::config::load(a.config_path()).expect("the lab config loads");
    let with_bond = |mut status: uplinkd::status::Status| {
        status.bonds.push(uplinkd::status::BondStatus {
            name: "bond0".into(),
            present: true,
            warnings: vec![BOND_WARNING.into()],
            ..Default::default()
        });
        let m = uplinkd::metrics::Metrics::new(&cfg);
        m.update_from_status(&status);
        m.encode()
    };

    let (recorded, exprs) = all_exprs();
    let deadline = Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        let scrape = metrics_text(&a);
        let bond = with_bond(a.status().unwrap());
        let names: BTreeSet<String> = sampled(&scrape).union(&sampled(&bond)).cloned().collect();
        let missing = missing_names(&exprs, &recorded, &names);
        if missing.is_empty() {
            break scrape;
        }
        // Hook results arrive when the hooks end: give them a moment.
        assert!(
            Instant::now() < deadline,
            "the rules or the dashboard read metrics the daemon does not export:\n  {}\n\nscrape:\n{scrape}\n\nwith a bond:\n{bond}",
            missing.join("\n  ")
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // The info metric the fleet rules join on names each uplink's router.
    for (uplink, pref) in [(Uplink::Primary, "0"), (Uplink::Secondary, "1")] {
        for f in Family::ALL {
            let l = info_sample(&scrape, uplink.name(), f.name())
                .unwrap_or_else(|| panic!("no uplinkd_uplink_info for {uplink:?} {f}:\n{scrape}"));
            for want in [
                format!("gateway=\"{}\"", uplink.gateway(f)),
                format!("interface=\"{}\"", uplink.interface()),
                format!("preference=\"{pref}\""),
            ] {
                assert!(l.contains(&want), "{l} lacks {want}");
            }
            assert!(l.ends_with(" 1"), "{l}");
        }
    }
}
