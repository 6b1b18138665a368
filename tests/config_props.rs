//! Property tests of the config parser: no input makes it panic, and every
//! config it accepts runs in the core (at any uptime) without a panic. Also
//! the corpus of interesting inputs in tests/corpus/config/.
//!
//! Each property runs `PROPTEST_CASES` cases (256 by default, a few seconds)
//! and says how many ran (`cargo test --test config_props -- --nocapture`).

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use uplinkd::config::{self, known_keys, Config};
use uplinkd_core::{Action, CarrierSource, Core, Event, Now, ProbeOutcome, RouteVia};

const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/uplinkd.toml");
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/config");

fn example_text() -> String {
    std::fs::read_to_string(EXAMPLE_PATH).expect("read config/uplinkd.toml")
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

/// Runs `test` on `cases()` inputs of `strategy`, fails on the first
/// failure (shrunk), and says how many ran.
fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let ran = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |v| {
        ran.set(ran.get() + 1);
        test(v)
    });
    println!("{name}: {} cases run", ran.get());
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Uptimes the core is run at, in order: from the start to two centuries
/// (`Now` is the time since the daemon started).
fn uptimes() -> impl Strategy<Value = Vec<Now>> {
    let step = prop_oneof![
        (0u64..50_000_000).prop_map(Duration::from_nanos),
        (0u64..10_000).prop_map(Duration::from_millis),
        (0u64..(400 * 86_400)).prop_map(Duration::from_secs),
        (0u64..(200 * 366 * 86_400)).prop_map(Duration::from_secs),
    ];
    proptest::collection::vec(step, 1..8).prop_map(|steps| {
        let mut now = Duration::ZERO;
        steps
            .into_iter()
            .map(|s| {
                now = (now + s).min(Duration::from_secs(200 * 366 * 86_400));
                now
            })
            .collect()
    })
}

/// Builds the core for `cfg` and feeds it carrier, routes and ticks at each
/// of `uptimes`, answering its probes (alternately with a reply and a
/// timeout), as the daemon would. Panics are what this looks for.
fn exercise(cfg: Config, uptimes: &[Now]) {
    let n = cfg.uplinks.len();
    let mut core = Core::new(cfg, Now::ZERO);
    let mut events: Vec<Event> = (0..n)
        .map(|uplink| Event::Carrier {
            uplink,
            up: true,
            present: true,
            source: CarrierSource::Poll,
        })
        .collect();
    for family in uplinkd_core::config::Family::ALL {
        events.push(Event::DefaultRoute {
            family,
            via: RouteVia::Absent,
        });
    }
    for (i, &now) in uptimes.iter().enumerate() {
        events.push(Event::Tick);
        let actions = core.handle_all(now, std::mem::take(&mut events));
        for a in actions {
            if let Action::Probe(p) = a {
                let outcome = if (p.id.0 + i as u64) % 3 == 0 {
                    ProbeOutcome::Timeout
                } else {
                    ProbeOutcome::Reply {
                        rtt: Duration::from_micros(300),
                    }
                };
                events.push(Event::ProbeDone { id: p.id, outcome });
            }
        }
        let _ = core.next_deadline();
        let _ = core.status(now);
    }
    if let Some(&last) = uptimes.last() {
        core.handle_all(last, events);
    }
}

/// A value for a key: mostly plausible, sometimes far out.
fn value() -> impl Strategy<Value = String> {
    let plausible = (1u64..1000, prop::sample::select(vec!["us", "ms", "s", "m"]));
    let number = prop_oneof![0u64..10, 0u64..10_000_000, any::<u64>()];
    let unit = prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "w", "y", ""]);
    prop_oneof![
        6 => plausible.prop_map(|(n, u)| format!("\"{n}{u}\"")),
        2 => (number, unit).prop_map(|(n, u)| format!("\"{n}{u}\"")),
        1 => Just(format!("\"{}s\"", u64::MAX)),
        3 => prop_oneof![1i64..10, -3i64..2000, any::<i64>(), Just(i64::from(u32::MAX))]
            .prop_map(|n| n.to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => prop::sample::select(vec![
            "\"/run/x.sock\"", "\"/\"", "\"root\"", "\"adm\"", "\"[::1]:9469\"",
            "\"127.0.0.1:0\"", "\"192.0.2.7\"", "\"::ffff:192.0.2.7\"", "\"fe80::1\"",
            "[\"/bin/true\"]", "[]", "\"\"", "\"bond0\"",
        ]).prop_map(str::to_string),
    ]
}

/// A valid minimal config with some keys of the flat sections set to
/// generated values.
fn config_text() -> impl Strategy<Value = String> {
    let flat: Vec<String> = known_keys()
        .into_iter()
        .filter(|k| !k.starts_with("uplink.") && !k.starts_with("transit."))
        .collect();
    let setting = (prop::sample::select(flat), value());
    proptest::collection::vec(setting, 0..6).prop_map(|settings| {
        let mut sections: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (key, value) in settings {
            let (section, name) = key.rsplit_once('.').unwrap();
            let lines = sections.entry(section.to_string()).or_default();
            if !lines.iter().any(|l| l.starts_with(&format!("{name} = "))) {
                lines.push(format!("{name} = {value}"));
            }
        }
        let mut text = String::new();
        for (section, lines) in sections {
            text.push_str(&format!("[{section}]\n{}\n", lines.join("\n")));
        }
        text.push_str(MINIMAL);
        text
    })
}

/// Two uplinks and a transit, every default (also checked by `corpus`).
const MINIMAL: &str = include_str!("corpus/config/ok-minimal.toml");

/// Cuts, duplicates or replaces a piece of `text` (on char boundaries).
fn mutate(text: &str, at: usize, len: usize, how: u8, insert: &str) -> String {
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let a = floor(at % (text.len() + 1));
    let b = floor(a + len);
    let mut out = text.to_string();
    match how % 4 {
        0 => out.replace_range(a..b, ""),
        1 => out.insert_str(a, &text[a..b]),
        2 => out.replace_range(a..b, insert),
        _ => out.insert_str(a, insert),
    }
    out
}

#[test]
fn arbitrary_text_never_panics() {
    run("arbitrary text", any::<String>(), |text| {
        let _ = config::parse(&text, "arbitrary.toml");
        Ok(())
    });
    // Line noise made of the format's own pieces reaches past the syntax check.
    let pieces = prop::sample::select(vec![
        "[agent]",
        "[policy]",
        "[policy.damping]",
        "[probe]",
        "[hooks]",
        "[metrics]",
        "[[uplink]]",
        "[[transit]]",
        "[uplink]",
        "name = \"a\"",
        "interface = \"eth0\"",
        "gateway4 = \"192.0.2.1\"",
        "targets = [\"203.0.113.1\"]",
        "quorum = 3",
        "transit_interval = \"1s\"",
        "x = 1",
        "uplink = 1",
        "damping = 2",
        "\"",
    ]);
    let lines =
        proptest::collection::vec(prop_oneof![pieces.prop_map(str::to_string), value()], 0..30);
    run("format pieces", lines, |lines| {
        let _ = config::parse(&lines.join("\n"), "pieces.toml");
        Ok(())
    });
}

#[test]
fn mutated_example_never_panics() {
    let example = example_text();
    let strategy =
        proptest::collection::vec((any::<usize>(), 0usize..200, any::<u8>(), value()), 1..4);
    run("mutated example", strategy, |mutations| {
        let mut text = example.clone();
        for (at, len, how, insert) in mutations {
            text = mutate(&text, at, len, how, &insert);
        }
        if let Ok(cfg) = config::parse(&text, "mutated.toml") {
            exercise(
                cfg,
                &[
                    Duration::from_secs(1),
                    Duration::from_secs(86_400 * 365 * 100),
                ],
            );
        }
        Ok(())
    });
}

#[test]
fn accepted_configs_run_in_the_core() {
    let accepted = std::cell::Cell::new(0u32);
    run(
        "generated configs",
        (config_text(), uptimes()),
        |(text, uptimes)| {
            if let Ok(cfg) = config::parse(&text, "generated.toml") {
                accepted.set(accepted.get() + 1);
                exercise(cfg, &uptimes);
            }
            Ok(())
        },
    );
    println!(
        "generated configs: {} accepted by the parser",
        accepted.get()
    );
    assert!(accepted.get() > 0, "no generated config was accepted");
}

/// tests/corpus/config/: `ok-*.toml` must be accepted and run in the core;
/// `err-*.toml` must be refused with the error its first line names:
/// `# expect: <key>: <part of the message>`.
#[test]
fn corpus() {
    let mut files: Vec<_> = std::fs::read_dir(CORPUS)
        .expect("tests/corpus/config")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let result = config::load(Path::new(path));
        if name.starts_with("ok-") {
            let cfg = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            exercise(
                cfg,
                &[
                    Duration::from_millis(5),
                    Duration::from_secs(3_600),
                    Duration::from_secs(200 * 366 * 86_400),
                ],
            );
        } else {
            assert!(name.starts_with("err-"), "{name}: name it ok-* or err-*");
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{name}: first line must be `# expect: key: message`"));
            let (key, message) = expect.split_once(": ").expect("key: message");
            let errs = match result {
                Ok(c) => panic!("{name}: accepted, expected {expect}\n{c:#?}"),
                Err(e) => e,
            };
            assert!(
                errs.iter()
                    .any(|e| e.key == key && e.message.contains(message)),
                "{name}: expected {expect}, got:\n{errs}"
            );
        }
    }
    println!("corpus: {} files", files.len());
}
