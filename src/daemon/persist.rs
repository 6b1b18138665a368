//! What the agent keeps across a restart of itself, in the socket's
//! directory (`/run/uplinkd` by default): the operator's drains and the
//! event sequence numbers handed out.
//!
//! Under /run, not /var/lib: a drain is a runtime action of an operator,
//! and a reboot resets it together with every route and rule the agent
//! made; an agent restart (upgrade, crash, reload gone wrong) must not.
//! Each file is replaced whole (write, then rename), so a crash leaves the
//! old or the new one, never half of one.
//!
//! Beside them, `sysctl-originals` (see `netlink::sysctl::Originals`): the
//! uplink sysctls' values before the agent first changed them in this boot,
//! written by the actuation task, read by `uplinkd --cleanup`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tracing::warn;

/// Sequence numbers are reserved in blocks: the file is written once per
/// block, not once per event, and a restart continues after the block.
const SEQ_BLOCK: u64 = 1024;

/// The files of one agent.
pub(super) struct RunState {
    dir: PathBuf,
    /// The operator's drains, by uplink name.
    drained: BTreeSet<String>,
    /// Sequence numbers up to this one may be handed out before the file
    /// must be written again.
    seq_reserved: u64,
}

impl RunState {
    /// The state kept beside `socket`, and the last sequence number a
    /// previous run may have used (the next event's is one more).
    pub fn open(socket: &Path) -> (RunState, u64) {
        let dir = socket.parent().unwrap_or(Path::new("/run")).to_path_buf();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let drained = read("drained")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let last = read("seq").trim().parse().unwrap_or(0);
        let mut s = RunState {
            dir,
            drained,
            seq_reserved: last,
        };
        s.reserve(last);
        (s, last)
    }

    /// Uplink names drained by an operator before this run.
    pub fn drained(&self) -> impl Iterator<Item = &str> {
        self.drained.iter().map(String::as_str)
    }

    /// Record an operator's drain (or its end).
    pub fn set_drained(&mut self, uplink: &str, drained: bool) {
        let changed = match drained {
            true => self.drained.insert(uplink.to_string()),
            false => self.drained.remove(uplink),
        };
        if changed {
            let text: String = self.drained.iter().map(|n| format!("{n}\n")).collect();
            self.write("drained", &text);
        }
    }

    /// Called with each sequence number before it is used.
    pub fn reserve(&mut self, seq: u64) {
        if seq >= self.seq_reserved {
            self.seq_reserved = seq + SEQ_BLOCK;
            self.write("seq", &format!("{}\n", self.seq_reserved));
        }
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            warn!(path = %path.display(), error = %e, "could not save state for the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_and_sequence_numbers_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("uplinkd-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let (mut s, last) = RunState::open(&sock);
        assert_eq!(last, 0);
        s.set_drained("primary", true);
        s.set_drained("secondary", true);
        s.set_drained("secondary", false);
        for seq in 1..=2000 {
            s.reserve(seq);
        }
        let (s, last) = RunState::open(&sock);
        assert!(last >= 2000, "{last}");
        assert_eq!(s.drained().collect::<Vec<_>>(), ["primary"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
