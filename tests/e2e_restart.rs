//! End-to-end: what survives a restart of the agent (not of the host):
//! an operator's drain, and the growth of event sequence numbers.

mod common;

use std::time::Duration;

use common::*;
use uplink_lab::Uplink;
use uplinkd::config::Family;

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn a_drain_and_sequence_numbers_survive_a_restart() {
    let lab = lab();
    let mut a = settled(&lab, "");
    a.client().drain("primary").unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, S(5));
    }
    let before = a.subscribe().last_seq;
    assert!(before > 0);

    a.kill();
    a.spawn(&lab);
    let s = a.wait_for("decided after the restart", S(10), |s| s.decided);
    assert!(s.uplinks[0].drained, "drain lost: {s:#?}");
    assert_eq!(active(&s, Family::V4), Some("secondary"));
    // The route never goes back to the drained uplink.
    for _ in 0..20 {
        for f in Family::ALL {
            assert!(route_via(&lab, f, Uplink::Secondary), "{f} left secondary");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = a.subscribe().last_seq;
    assert!(after > before, "sequence went back: {before} then {after}");

    // Undrained, then restarted: not drained any more.
    a.client().undrain("primary").unwrap();
    a.kill();
    a.spawn(&lab);
    let s = a.wait_for("decided after the second restart", S(10), |s| s.decided);
    assert!(!s.uplinks[0].drained, "undrain lost: {s:#?}");
}
