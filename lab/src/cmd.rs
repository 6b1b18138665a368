//! Running external commands (`ip`, `nft`, `sysctl`) with a deadline.
//!
//! Every command the lab runs is bounded: a stuck `ip` must not hang a test
//! run forever. On timeout the child (ours, not yet reaped, so its pid cannot
//! have been reused) is killed by pid.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::LabError;

/// Upper bound for one ordinary command (`ip`, `nft`, `sysctl`).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Renders a command line for error messages.
pub(crate) fn render(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Runs `program args` with `stdin` (if any) and returns its output, whatever
/// the exit status. Fails only if it cannot be started or does not finish in
/// `timeout`.
pub(crate) fn output(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, LabError> {
    let cmdline = render(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Io {
            what: format!("start `{cmdline}`"),
            source,
        })?;
    let pid = child.id();
    let input = stdin.map(|s| s.to_string());
    let mut child_stdin = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    // One helper thread owns the child until it is reaped; it writes stdin,
    // drains both pipes (so a chatty child never blocks on a full pipe) and
    // waits.
    std::thread::spawn(move || {
        if let (Some(mut w), Some(text)) = (child_stdin.take(), input) {
            // A child that exits early closes the pipe: that error is the
            // child's to report through its exit status.
            let _ = w.write_all(text.as_bytes());
        }
        let err_reader = err.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = e.read_to_end(&mut buf);
                buf
            })
        });
        let mut stdout = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut stdout);
        }
        let stderr = err_reader
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let status = child.wait();
        let _ = tx.send(status.map(|status| Output {
            status,
            stdout,
            stderr,
        }));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(LabError::Io {
            what: format!("wait for `{cmdline}`"),
            source,
        }),
        Err(_) => {
            // Still ours and unreaped (the helper thread has not returned
            // from wait()), so this pid is the child's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(LabError::CommandTimeout {
                cmd: cmdline,
                timeout,
            })
        }
    }
}

/// Runs a command and returns its stdout; a non-zero exit is an error that
/// carries stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let out = output(program, args, stdin, COMMAND_TIMEOUT)?;
    check(program, args, stdin, out)
}

pub(crate) fn check(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    out: Output,
) -> Result<String, LabError> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Some(input) = stdin {
        stderr.push_str(&format!("\n--- input ---\n{}", input.trim_end()));
    }
    Err(LabError::Command {
        cmd: render(program, args),
        status: out.status.to_string(),
        stderr,
    })
}

/// Runs `ip -n <ns> -batch -` with the given lines (one `ip` command each,
/// without the leading `ip`, and without options such as `-6`: batch lines
/// take none, the family follows from the addresses). `ip` stops at the
/// first failing line and names it in stderr.
pub(crate) fn ip_batch(ns: &str, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut input = lines.join("\n");
    input.push('\n');
    run("ip", &["-n", ns, "-batch", "-"], Some(&input)).map(|_| ())
}

/// Runs each of `lines` with `ip -n ns`, one by one, ignoring failures:
/// for deletions of what may already be gone.
pub(crate) fn ip_each_ignoring_errors(ns: &str, lines: &[String]) {
    for l in lines {
        let _ = ip_batch(ns, std::slice::from_ref(l));
    }
}

/// Runs `nft -f -` inside `ns` with `ruleset`.
pub(crate) fn nft(ns: &str, ruleset: &str) -> Result<(), LabError> {
    run(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        Some(ruleset),
    )
    .map(|_| ())
}
