//! The generated documentation under packaging/ is current.
//!
//! - uplinkd(8) and uplinkctl(8): the prose of `packaging/man/<name>.8.in`
//!   with the title, name, synopsis, options and commands rendered from the
//!   clap definitions in `src/cli.rs` (clap_mangen);
//! - uplinkd.toml(5): generated from the commented example
//!   `config/uplinkd.toml`;
//! - the bash, zsh and fish completions of both binaries under
//!   `packaging/completions/` (clap_complete).
//!
//! Each test generates its files in memory and fails when the committed ones
//! differ; `UPLINKD_REGENERATE=1 cargo test --test docs` rewrites them. The
//! files are committed (not built by cargo-deb) so the package build needs
//! nothing but the repository, and a review shows what a change does to them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const UPLINKD: &str = env!("CARGO_BIN_EXE_uplinkd");
const UPLINKCTL: &str = env!("CARGO_BIN_EXE_uplinkctl");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const REGENERATE: &str = "UPLINKD_REGENERATE=1 cargo test --test docs";

fn repo(p: &str) -> PathBuf {
    Path::new(ROOT).join(p)
}

fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Compares the committed `path` with what was just generated from `source`;
/// with `UPLINKD_REGENERATE` set, writes it instead.
fn check_generated(path: &str, generated: &str, source: &str) {
    let file = repo(path);
    if std::env::var_os("UPLINKD_REGENERATE").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, generated).unwrap_or_else(|e| panic!("write {path}: {e}"));
        return;
    }
    let current = std::fs::read_to_string(&file).unwrap_or_default();
    if current == generated {
        return;
    }
    let first_difference = current
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(current.lines().count().min(generated.lines().count()));
    panic!(
        "{path} is stale ({source} changed; first difference at line {}):\n\
         committed: {:?}\ngenerated: {:?}\nregenerate it with `{REGENERATE}`",
        first_difference + 1,
        current
            .lines()
            .nth(first_difference)
            .unwrap_or("<end of file>"),
        generated
            .lines()
            .nth(first_difference)
            .unwrap_or("<end of file>"),
    );
}

/// The date of the newest entry of the Debian changelog, as YYYY-MM-DD: the
/// pages' date changes with a release, not with the day they are generated.
fn release_date() -> String {
    let changelog = read(repo("packaging/debian/changelog"));
    // " -- name <mail>  Sun, 29 Nov 2026 12:00:00 +0000"
    let trailer = changelog
        .lines()
        .find(|l| l.starts_with(" -- "))
        .expect("a changelog trailer line");
    let (_, date) = trailer
        .split_once(">  ")
        .expect("maintainer, two spaces, date");
    let fields: Vec<&str> = date.split_whitespace().collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == fields[2])
    .unwrap_or_else(|| panic!("month in {trailer:?}"))
        + 1;
    let day: u32 = fields[1].parse().expect("day");
    format!("{}-{month:02}-{day:02}", fields[3])
}

// ---------------------------------------------------------------------------
// uplinkd(8), uplinkctl(8)
// ---------------------------------------------------------------------------

/// One section of the page as clap_mangen renders it.
type Render = fn(&Man, &mut dyn std::io::Write) -> std::io::Result<()>;

fn render(man: &Man, section: Render) -> String {
    let mut out = Vec::new();
    section(man, &mut out).expect("render to memory");
    String::from_utf8(out).expect("roff is UTF-8")
}

/// Usage of one argument of a subcommand: `--json`, `--since SINCE`, `NAME`;
/// in brackets when optional and `in_usage`.
fn arg_usage(arg: &clap::Arg, in_usage: bool) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .map(|v| v.join(" "))
        .unwrap_or_else(|| arg.get_id().to_string());
    let mut out = Vec::new();
    if let Some(long) = arg.get_long() {
        out.push(bold(format!("--{long}")));
        if arg.get_num_args().is_some_and(|n| n.takes_values()) {
            out.push(roman(" "));
            out.push(italic(value));
        }
    } else {
        out.push(italic(value));
        if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
            out.push(roman("..."));
        }
    }
    if in_usage && !arg.is_required_set() {
        out.insert(0, roman("["));
        out.push(roman("]"));
    }
    out
}

/// The COMMANDS section: per subcommand a tagged paragraph with its usage,
/// its long description and its arguments. clap_mangen's own subcommand
/// section only names one page per subcommand (`uplinkctl-status(8)`), which
/// the package does not ship.
fn commands_section(cmd: &clap::Command) -> String {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| {
                !a.is_hide_set()
                    && !matches!(
                        a.get_action(),
                        clap::ArgAction::Help
                            | clap::ArgAction::HelpShort
                            | clap::ArgAction::HelpLong
                            | clap::ArgAction::Version
                    )
            })
            .collect();
        let mut head = vec![bold(sub.get_name())];
        for a in &args {
            head.push(roman(" "));
            head.extend(arg_usage(a, true));
        }
        roff.control("TP", []);
        roff.text(head);
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        for (i, paragraph) in about.split("\n\n").enumerate() {
            if i > 0 {
                roff.control("IP", []);
            }
            roff.text([roman(paragraph.replace('\n', " "))]);
        }
        for a in &args {
            let help = a.get_long_help().or_else(|| a.get_help());
            roff.control("RS", []);
            roff.control("TP", []);
            roff.text(arg_usage(a, false));
            roff.text([roman(help.map(|h| h.to_string()).unwrap_or_default())]);
            roff.control("RE", []);
        }
    }
    roff.to_roff()
}

/// A page of section 8: `packaging/man/<name>.8.in` with its `.\" @SECTION@`
/// lines replaced by those sections rendered from `cmd` (by clap_mangen, but
/// COMMANDS by [`commands_section`]).
fn man_page(cmd: clap::Command) -> String {
    let name = cmd.get_name().to_string();
    let template_path = format!("packaging/man/{name}.8.in");
    let template = read(repo(&template_path));
    let man = Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("8")
        .date(release_date())
        .source(format!("uplinkd {VERSION}"))
        .manual("System Administration");
    // Every rendering starts with the same preamble (a string for the
    // apostrophe): the page keeps the first only.
    let title = render(&man, Man::render_title);
    let preamble = &title[..title.find(".TH ").expect(".TH in the title")];
    let section = |f: Render| {
        let s = render(&man, f);
        let s = s
            .strip_prefix(preamble)
            .expect("each clap_mangen section starts with the preamble");
        // The synopsis line ends in a space.
        s.lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect::<String>()
    };
    let mut built = cmd.clone();
    built.build();
    let mut out = format!(
        ".\\\" {name}(8). Generated by tests/docs.rs from {template_path}\n\
         .\\\" and the clap definitions in src/cli.rs: do not edit; run\n\
         .\\\" `{REGENERATE}` instead.\n"
    );
    let mut used = BTreeSet::new();
    // The template's own opening comment (how it is used) is not copied.
    let body = template
        .lines()
        .skip_while(|l| l.starts_with(".\\\" ") && *l != ".\\\" @TITLE@");
    for line in body {
        let Some(placeholder) = line
            .strip_prefix(".\\\" @")
            .and_then(|l| l.strip_suffix('@'))
        else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        assert!(
            used.insert(placeholder.to_string()),
            "{template_path}: @{placeholder}@ twice"
        );
        out.push_str(&match placeholder {
            "TITLE" => title.clone(),
            "NAME" => section(Man::render_name_section),
            "SYNOPSIS" => section(Man::render_synopsis_section),
            "OPTIONS" => section(Man::render_options_section),
            "COMMANDS" => commands_section(&built),
            other => panic!("{template_path}: unknown section @{other}@"),
        });
    }
    for needed in ["TITLE", "NAME", "SYNOPSIS", "OPTIONS"] {
        assert!(used.contains(needed), "{template_path} has no @{needed}@");
    }
    if built.has_subcommands() {
        assert!(
            used.contains("COMMANDS"),
            "{template_path} has no @COMMANDS@"
        );
    }
    out
}

#[test]
fn man_pages_are_generated_from_the_clap_definitions() {
    for cmd in [
        uplinkd::cli::uplinkd_command(),
        uplinkd::cli::uplinkctl_command(),
    ] {
        let name = cmd.get_name().to_string();
        check_generated(
            &format!("packaging/man/{name}.8"),
            &man_page(cmd),
            &format!("packaging/man/{name}.8.in or src/cli.rs"),
        );
    }
}

/// The text of a roff page with the escapes that hide option names undone.
fn man_text(path: &str) -> String {
    read(repo(path))
        .replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
}

/// Long options (`--name`) and subcommands listed by a clap `--help`.
fn help_items(bin: &str, args: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {bin} --help: {e}"));
    assert!(out.status.success(), "{bin} {args:?} --help: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut options = BTreeSet::new();
    let mut commands = BTreeSet::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_commands = line == "Commands:";
            continue;
        }
        if in_commands {
            if let Some(word) = line.split_whitespace().next() {
                commands.insert(word.to_string());
            }
            continue;
        }
        for word in line.split(|c: char| c.is_whitespace() || c == ',' || c == '=') {
            if let Some(name) = word.strip_prefix("--") {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !name.is_empty() {
                    options.insert(format!("--{name}"));
                }
            }
        }
    }
    (options, commands)
}

/// The binaries parse what the pages document: every option and subcommand
/// of their `--help` is on the page.
#[test]
fn man_pages_document_every_option_and_command() {
    let page = man_text("packaging/man/uplinkd.8");
    let (options, commands) = help_items(UPLINKD, &[]);
    assert!(options.contains("--config") && options.contains("--check"));
    assert!(
        commands.is_empty(),
        "uplinkd has no subcommands: {commands:?}"
    );
    for o in &options {
        assert!(page.contains(o.as_str()), "uplinkd.8 does not document {o}");
    }

    let page = man_text("packaging/man/uplinkctl.8");
    let (options, commands) = help_items(UPLINKCTL, &[]);
    assert!(options.contains("--socket"), "{options:?}");
    assert!(commands.len() >= 6, "uplinkctl commands: {commands:?}");
    let mut all = options;
    for c in &commands {
        // Each command is a tagged paragraph: `.TP` then a line naming it.
        let documented = page
            .split(".TP\n")
            .skip(1)
            .any(|para| para.lines().next().unwrap_or("").starts_with(c.as_str()));
        assert!(
            documented,
            "uplinkctl.8 has no paragraph for the command {c}"
        );
        if c != "help" {
            all.extend(help_items(UPLINKCTL, &[c]).0);
        }
    }
    for o in &all {
        assert!(
            page.contains(o.as_str()),
            "uplinkctl.8 does not document {o}"
        );
    }
}

// ---------------------------------------------------------------------------
// Shell completions
// ---------------------------------------------------------------------------

/// Where each shell's completion for `bin` is committed; the package installs
/// it under the same file name in the shell's vendor directory.
fn completion_path(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Bash => format!("packaging/completions/bash/{bin}"),
        Shell::Zsh => format!("packaging/completions/zsh/_{bin}"),
        Shell::Fish => format!("packaging/completions/fish/{bin}.fish"),
        other => panic!("no completion shipped for {other}"),
    }
}

fn completion(shell: Shell, mut cmd: clap::Command) -> String {
    let bin = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, &bin, &mut out);
    let script = String::from_utf8(out).expect("UTF-8 script");
    let note = format!(
        "# Generated by tests/docs.rs from the clap definitions in src/cli.rs\n\
         # (clap_complete): do not edit; run\n# `{REGENERATE}` instead.\n"
    );
    // zsh reads `#compdef` on the first line only.
    match script.split_once('\n') {
        Some((first, rest)) if first.starts_with("#compdef") => format!("{first}\n{note}{rest}"),
        _ => format!("{note}{script}"),
    }
}

#[test]
fn completions_are_generated_from_the_clap_definitions() {
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        for cmd in [
            uplinkd::cli::uplinkd_command(),
            uplinkd::cli::uplinkctl_command(),
        ] {
            let path = completion_path(shell, cmd.get_name());
            check_generated(&path, &completion(shell, cmd), "src/cli.rs");
        }
    }
    // The bash scripts at least parse.
    for bin in ["uplinkd", "uplinkctl"] {
        let path = repo(&completion_path(Shell::Bash, bin));
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(out.status.success(), "bash -n {}: {out:?}", path.display());
    }
}

// ---------------------------------------------------------------------------
// uplinkd.toml(5)
// ---------------------------------------------------------------------------

/// Escapes one line of text for roff in no-fill mode.
fn roff_line(line: &str) -> String {
    let s = line.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// `name = value` (a commented-out key), or a `[table]` line.
fn is_key_line(l: &str) -> bool {
    if l.starts_with('[') {
        return true;
    }
    let Some((k, _)) = l.split_once(" = ") else {
        return false;
    };
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// One line of the example: a comment (without `#` and one space) or TOML.
#[derive(Clone, Copy)]
enum Line<'a> {
    Comment(&'a str),
    Toml(&'a str),
}

/// Lines of `block` as a no-fill roff block.
fn no_fill(block: &[&str], out: &mut String) {
    out.push_str(".nf\n");
    for l in block {
        out.push_str(&roff_line(l));
        out.push('\n');
    }
    out.push_str(".fi\n");
}

/// A comment block as a paragraph of its own, as written.
fn prose(block: &mut Vec<&str>, out: &mut String) {
    while block.last() == Some(&"") {
        block.pop();
    }
    if !block.is_empty() {
        out.push_str(".PP\n");
        no_fill(block, out);
    }
    block.clear();
}

/// A key: tagged paragraph `key = value`, its comment block as the body.
fn key_entry(key: &str, value: &str, block: &mut Vec<&str>, out: &mut String) {
    while block.last() == Some(&"") {
        block.pop();
    }
    out.push_str(&format!(
        ".TP\n\\fB{}\\fR = {}\n",
        roff_line(key.trim()),
        roff_line(value.trim())
    ));
    if !block.is_empty() {
        no_fill(block, out);
    }
    block.clear();
}

/// uplinkd.toml(5), generated from the commented example. Its opening
/// comment is the description. Then each table is a subsection: the
/// comment that introduces it, then, for a table, its keys as tagged
/// paragraphs (`key = value` with the comment above it; a commented-out
/// `key = value` ending a comment documents a key the example leaves
/// unset), and for an array of tables (`[[uplink]]`) every entry as a
/// no-fill example, each under its own `[[...]]` line. A paragraph (lines
/// between blank lines) that is only a comment belongs to the table before
/// it: a commented-out example stays with its table.
fn generate_toml_man_page() -> String {
    let example = read(repo("config/uplinkd.toml"));
    let version = VERSION;
    let mut out = String::new();
    out.push_str(
        ".\\\" uplinkd.toml(5). Generated from config/uplinkd.toml by tests/docs.rs:\n\
         .\\\" do not edit; run `UPLINKD_REGENERATE=1 cargo test --test docs` instead.\n",
    );
    let date = release_date();
    out.push_str(&format!(
        ".TH UPLINKD.TOML 5 {date} \"uplinkd {version}\" \"File Formats\"\n"
    ));
    out.push_str(".SH NAME\nuplinkd.toml \\- configuration of uplinkd\n");
    out.push_str(
        ".SH SYNOPSIS\n.I /etc/uplinkd/uplinkd.toml\n.br\n.I /etc/uplinkd/uplinkd.d/*.toml\n",
    );
    out.push_str(".SH DESCRIPTION\n");
    out.push_str(
        "The configuration of\n.BR uplinkd (8),\nin TOML: a main file and its drop-ins.\n\
         Check them with\n.BR \"uplinkd \\-\\-check \\-\\-config\" \" file\" ,\n\
         and that they fit the host with\n.BR \"uplinkd \\-\\-check \\-\\-live\" ;\n\
         apply a change with\n.B systemctl reload uplinkd\n(SIGHUP).\n\
         What follows is the commented example installed as\n\
         .IR /etc/uplinkd/uplinkd.toml ,\ntable by table.\n",
    );

    let paragraphs: Vec<Vec<Line>> = example
        .split("\n\n")
        .map(|p| {
            p.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| match l.strip_prefix('#') {
                    Some(c) => Line::Comment(c.strip_prefix(' ').unwrap_or(c)),
                    None => Line::Toml(l),
                })
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .collect();

    // The table being documented: its header, and whether it is an array
    // of tables.
    let mut table: Option<(String, bool)> = None;
    for paragraph in &paragraphs {
        let mut block: Vec<&str> = Vec::new();
        // The entry of an array of tables being shown, as written.
        let mut entry: Vec<&str> = Vec::new();
        for line in paragraph {
            match *line {
                Line::Comment(c) => block.push(c),
                Line::Toml(t) if t.starts_with('[') => {
                    let array = t.starts_with("[[");
                    if table.as_ref().map(|(h, _)| h.as_str()) != Some(t) {
                        if table.is_none() {
                            out.push_str(".SH SETTINGS\n");
                        }
                        out.push_str(&format!(".SS \"{t}\"\n"));
                        table = Some((t.to_string(), array));
                    }
                    // The comment above a header introduces the table.
                    prose(&mut block, &mut out);
                    if array {
                        entry.push(t);
                    }
                }
                Line::Toml(t) => {
                    if table.as_ref().is_some_and(|(_, array)| *array) {
                        entry.push(t);
                    } else if let Some((key, value)) = t.split_once('=') {
                        key_entry(key, value, &mut block, &mut out);
                    }
                }
            }
        }
        if !entry.is_empty() {
            out.push_str(".PP\n");
            no_fill(&entry, &mut out);
        }
        // What is left is a comment after the paragraph's last key: a
        // commented-out key after its description, or prose.
        let n = block.len();
        if table.is_some() && n >= 2 && is_key_line(block[n - 1]) && !is_key_line(block[n - 2]) {
            let (key, value) = block.pop().unwrap().split_once('=').unwrap();
            let value = format!("{}   (commented out: not set)", value.trim());
            key_entry(key, &value, &mut block, &mut out);
        } else {
            prose(&mut block, &mut out);
        }
    }
    out.push_str(".SH FILES\n.TP\n.I /etc/uplinkd/uplinkd.toml\n");
    out.push_str("The configuration (a conffile: upgrades keep local changes).\n");
    out.push_str(".TP\n.I /etc/uplinkd/uplinkd.d/*.toml\n");
    out.push_str(
        "Drop-ins, read in lexical order of their names after the main file;\n\
         see the drop-in rules in the description above.\n",
    );
    out.push_str(".SH SEE ALSO\n.BR uplinkd (8),\n.BR uplinkctl (8)\n");
    out
}

#[test]
fn uplinkd_toml_man_page_is_generated_from_the_example() {
    let generated = generate_toml_man_page();
    check_generated(
        "packaging/man/uplinkd.toml.5",
        &generated,
        "config/uplinkd.toml",
    );
    // Every key the parser accepts is in the page, in its own table.
    let text = generated.replace("\\-", "-");
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix(".SS ") {
            current = t
                .trim_matches(|c| c == '"' || c == '[' || c == ']')
                .to_string();
        } else if !current.is_empty() {
            let body = sections.entry(current.clone()).or_default();
            body.push_str(line);
            body.push('\n');
        }
    }
    // Every entry of an array of tables, live or commented out, is shown
    // under its own header, in its own section.
    let example = read(repo("config/uplinkd.toml"));
    for name in ["uplink", "transit"] {
        let header = format!("[[{name}]]");
        let written = example
            .lines()
            .filter(|l| l.trim_start_matches(['#', ' ']) == header)
            .count();
        let body = &sections[name];
        let shown = body.lines().filter(|l| *l == header).count();
        assert_eq!(
            shown, written,
            "uplinkd.toml.5 shows {shown} of the {written} {header} entries of the example under {header}:\n{body}"
        );
    }
    assert!(
        sections["uplink"].contains("bond = \"bond0\""),
        "the bond example belongs to [[uplink]]"
    );
    assert!(
        !sections["transit"].contains("bond"),
        "the bond example is not a transit:\n{}",
        sections["transit"]
    );
    for key in uplinkd::config::known_keys() {
        let (table, leaf) = key.rsplit_once('.').expect("dotted key");
        let body = sections
            .get(table)
            .unwrap_or_else(|| panic!("uplinkd.toml.5 has no section [{table}] (for {key})"));
        let documented = body.lines().any(|l| {
            let l = l.trim_start_matches("\\fB").replace("\\fR", "");
            let l = l.trim_start();
            l.starts_with(&format!("{leaf} ")) || l == leaf || l.starts_with(&format!("{leaf}="))
        });
        assert!(documented, "uplinkd.toml.5 does not document {key}");
    }
}

/// A rate as the docs write it: one decimal at most, thousands with a comma.
fn rate_text(x: f64) -> String {
    let r = (x * 10.0).round() / 10.0;
    let s = if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    };
    match s.split_once('.') {
        None if s.len() > 3 => format!("{},{}", &s[..s.len() - 3], &s[s.len() - 3..]),
        _ => s,
    }
}

#[test]
fn documented_probe_rates_are_the_ones_the_defaults_send() {
    // The example's shape (2 uplinks, 4 transits, one target of each family
    // each) is what the docs describe; its probe settings are the defaults.
    let example = uplinkd::config::parse(&read(repo("config/uplinkd.toml")), "example")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(example.probe, uplinkd::config::ProbeConfig::default());
    assert_eq!(example.uplinks.len(), 2);
    let per = example.probe.steady_rates();
    let server = example.steady_rates();
    let targets: usize = example.transits.iter().map(|t| t.targets.len()).sum();
    assert_eq!(targets, 8, "the docs speak of 8 transit targets");
    let per_target = per.transit_active + per.transit_standby;
    let fleet = per_target * 10_000.0;
    let (ga, gs, g, t) = (
        rate_text(per.gateway_active),
        rate_text(per.gateway_standby),
        rate_text(server.gateway),
        rate_text(server.transit),
    );
    let (ta, ts, pt, fl) = (
        rate_text(per.transit_active),
        rate_text(per.transit_standby),
        rate_text(per_target),
        rate_text(fleet),
    );
    let flat = |p: &str| {
        read(repo(p))
            .split_whitespace()
            .filter(|w| *w != "#")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let readme = flat("README.md");
    for want in [
        format!("one server sends {g} gateway echoes/s"),
        format!("{ga}/s per family to the active uplink's gateway, {gs}/s to the standby's"),
        format!("{t} transit echoes/s in all ({pt} per target per second: {ta}/s through the active uplink, {ts}/s through the standby)"),
        format!("each transit target sees {fl} echoes/s from a fleet of 10,000 servers"),
    ] {
        assert!(readme.contains(&want), "README.md does not say: {want}");
    }
    let config = flat("config/uplinkd.toml");
    for want in [
        format!("per family, {ga}/s to the active uplink's gateway"),
        format!("and {gs}/s to the standby's"),
        format!("{g} echo/s in all, to our own routers"),
        format!("each of the 8 targets {ta}/s through the active uplink and {ts}/s through the standby: {t} echo/s in all"),
        format!("each transit target sees {pt} echo/s per server, and {fl}/s from a fleet of 10,000 servers"),
    ] {
        assert!(config.contains(&want), "config/uplinkd.toml does not say: {want}");
    }
}

/// README and uplinkd(8) say what uplinkd changes on the host, each sysctl
/// it sets (as the code names them) and the file it records their old
/// values in, and how `uplinkd --cleanup` removes it all.
#[test]
fn what_uplinkd_changes_on_the_host_and_its_cleanup_are_documented() {
    let readme = read(repo("README.md"));
    let section = readme
        .split("### What uplinkd changes on your host")
        .nth(1)
        .expect("README section What uplinkd changes on your host")
        .split("\n#")
        .next()
        .unwrap();
    let page = man_text("packaging/man/uplinkd.8");
    let man = page
        .split("WHAT UPLINKD CHANGES ON YOUR HOST")
        .nth(1)
        .expect("uplinkd(8) section WHAT UPLINKD CHANGES ON YOUR HOST");
    let man = man.split("\nMONITORING").next().unwrap();
    // The rendered page hyphenates and breaks lines: compare words.
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (section, man) = (words(section), words(man));
    for (path, value) in uplinkd::netlink::sysctl::uplink_sysctl_values("IF") {
        let key = path.rsplit('/').next().unwrap();
        for (what, text) in [("README", &section), ("uplinkd(8)", &man)] {
            assert!(text.contains(key), "{what} does not name the sysctl {key}");
        }
        assert!(
            section.contains(&format!("→ {value}")),
            "README does not say uplinkd sets {key} to {value}"
        );
    }
    let originals = uplinkd::netlink::sysctl::ORIGINALS_FILE;
    for (what, text) in [("README", &section), ("uplinkd(8)", &man)] {
        for want in [
            "uplinkd --cleanup",
            originals,
            "proto",
            "rt_protos.d/uplinkd.conf",
            "table_base",
        ] {
            assert!(text.contains(want), "{what} does not say {want:?}");
        }
    }
    assert!(
        !section.contains("no cleanup command"),
        "README still says there is no cleanup command"
    );
}
