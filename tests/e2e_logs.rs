//! End-to-end: the daemon's log lines read as sentences at the right level.

mod common;

use std::time::Duration;

use common::*;
use uplink_lab::Uplink;
use uplinkd::config::Family;

#[test]
fn a_failover_is_logged_as_a_sentence_with_its_record_beside_it() {
    let lab = lab();
    let a = settled(&lab, "");
    lab.carrier_down(Uplink::Primary).unwrap();
    for f in Family::ALL {
        wait_route(&lab, &a, f, Uplink::Secondary, Duration::from_secs(5));
    }
    let log = a.log_text();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
            .to_string()
    };
    let initial = line("ipv4: no uplink → primary (initial choice)");
    assert!(initial.contains(" INFO "), "{initial}");
    let failover = line("ipv4: primary → secondary (carrier lost on primary)");
    assert!(failover.contains(" WARN "), "{failover}");
    // The record once, beside the sentence: no separate seq= or kind=.
    assert!(failover.contains("event={"), "{failover}");
    assert!(!failover.contains(" seq="), "{failover}");
    assert!(!failover.contains(" kind="), "{failover}");
    assert!(!log.contains("state change"), "{log}");
}
