//! Telling a target's echo replies from a reflector's.
//!
//! An echo reply repeats the request's identifier, sequence number and data
//! (RFC 792; RFC 4443 §4.2: "the data received in the ICMPv6 Echo Request
//! message MUST be returned entirely and unmodified"), so nothing in the
//! echo itself can prove who produced it: whoever sees the request can
//! answer it, token and all. The unguessable token only stops forgers that
//! do not see the request.
//!
//! What a box on the path that turns requests around does not produce is
//! the target's own IP header. Such a reflector exchanges the addresses,
//! changes the type and fixes the checksum, and leaves the TTL (IPv4) or hop
//! limit (IPv6) as the request reached it: the reply arrives with *our* sent
//! TTL minus the hops to the reflector and back. A real target writes its
//! own initial value whatever the request carried (Linux: `icmp_reply` in
//! net/ipv4/icmp.c builds a fresh header with the TTL `ip_select_ttl`
//! picks, the route's hop limit or the `ip_default_ttl` sysctl, 64; IPv6
//! likewise with `hop_limit`), so its replies arrive with the same TTL
//! however we sent the request; only the route changes it.
//!
//! So each path (an uplink and a target) alternates the TTL of its probes
//! between the two [`SEND_TTLS`], and each reply's arrival TTL is compared
//! with the last one seen on that path for the other sent TTL: a reply whose
//! arrival TTL moved by exactly as much as the sent TTL did is the request
//! coming back, and is rejected (its probe then times out unless the real
//! reply still comes). The two values are far apart, so neither a route
//! change nor per-packet load balancing over paths of unequal length (a hop
//! or two) looks like reflection, and nothing has to be learned first: there
//! is no "expected TTL" that a legitimate route change would contradict.
//!
//! Not caught, by design of the protocol: a reflector that builds a fresh
//! IP header with a TTL of its own (its arrival TTL is then as constant as a
//! real target's), or an attacker who learned the path's arrival TTL and
//! forges it. The first reply of a path, and the first reflected reply after
//! real ones, cannot be judged yet (there is nothing to compare with for the
//! other sent TTL, or it is the real target's) and is accepted.

use std::net::IpAddr;

/// The TTLs / hop limits probes are sent with, alternately per path: 64,
/// the Linux default (`ip_default_ttl`, and IPv6 `hop_limit`) the prober
/// used before, and 255, the largest (RFC 791 §3.1). Their distance is far
/// beyond any route change, so only a reply that follows our TTL moves by it.
pub(crate) const SEND_TTLS: [u8; 2] = [64, 255];

/// Paths remembered per socket slot at most: more than any configuration
/// has targets; the oldest is forgotten first (targets removed by a reload).
const MAX_PATHS: usize = 64;

/// The reflection check of the paths probed through one socket slot.
#[derive(Debug, Default)]
pub(crate) struct Paths {
    paths: Vec<Path>,
}

#[derive(Debug)]
struct Path {
    target: IpAddr,
    /// Index into [`SEND_TTLS`] of the next probe's TTL.
    next: usize,
    /// Arrival TTL of the last judged reply per sent TTL (index as in
    /// [`SEND_TTLS`]): what the next reply sent with the other TTL is
    /// compared with.
    seen: [Option<u8>; 2],
    /// The last judged reply was reflected: a change is logged once, not
    /// every reply.
    reflected: bool,
}

/// What [`Paths::judge`] concluded about one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing says it was reflected (or its TTL is unknown).
    Accept {
        /// The path's previous reply was reflected.
        recovered: bool,
    },
    /// Its arrival TTL followed our sent TTL: the request came back.
    Reflected {
        /// The previous reply on the path was not reflected.
        first: bool,
        /// The arrival TTL of the last reply to the other sent TTL.
        other: u8,
    },
}

impl Paths {
    /// The TTL to send the next probe to `target` with (alternating).
    /// Allocates only for a target not seen before.
    pub(crate) fn send_ttl(&mut self, target: IpAddr) -> u8 {
        let i = match self.paths.iter().position(|p| p.target == target) {
            Some(i) => i,
            None => {
                if self.paths.len() >= MAX_PATHS {
                    self.paths.remove(0);
                }
                self.paths.push(Path {
                    target,
                    next: 0,
                    seen: [None; 2],
                    reflected: false,
                });
                self.paths.len() - 1
            }
        };
        let p = &mut self.paths[i];
        let ttl = SEND_TTLS[p.next];
        p.next ^= 1;
        ttl
    }

    /// Judge a reply from `target` to a probe sent with TTL `sent` that
    /// arrived with TTL `arrival` (`None`: the kernel did not say). Call only
    /// for replies that passed every other check (so forgers that do not
    /// see our requests cannot steer it).
    pub(crate) fn judge(&mut self, target: IpAddr, sent: u8, arrival: Option<u8>) -> Verdict {
        let (Some(arrival), Some(i), Some(p)) = (
            arrival,
            SEND_TTLS.iter().position(|&t| t == sent),
            self.paths.iter_mut().find(|p| p.target == target),
        ) else {
            return Verdict::Accept { recovered: false };
        };
        p.seen[i] = Some(arrival);
        let moved = |other: u8| {
            i16::from(arrival) - i16::from(other) == i16::from(sent) - i16::from(SEND_TTLS[i ^ 1])
        };
        let was = p.reflected;
        match p.seen[i ^ 1] {
            Some(other) if moved(other) => {
                p.reflected = true;
                Verdict::Reflected { first: !was, other }
            }
            _ => {
                p.reflected = false;
                Verdict::Accept { recovered: was }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 1));

    fn accepted(v: Verdict) -> bool {
        matches!(v, Verdict::Accept { .. })
    }

    /// A real target 5 hops away with initial TTL 64: the arrival TTL is 59
    /// whatever we send, every reply is accepted.
    #[test]
    fn a_real_target_is_always_accepted() {
        let mut paths = Paths::default();
        for _ in 0..10 {
            let s = paths.send_ttl(T);
            assert!(accepted(paths.judge(T, s, Some(59))));
        }
    }

    /// The sent TTLs alternate per path, not per slot.
    #[test]
    fn ttls_alternate_per_target() {
        let mut paths = Paths::default();
        let u: IpAddr = "2001:db8:ff::1".parse().unwrap();
        assert_eq!(paths.send_ttl(T), SEND_TTLS[0]);
        assert_eq!(paths.send_ttl(u), SEND_TTLS[0]);
        assert_eq!(paths.send_ttl(T), SEND_TTLS[1]);
        assert_eq!(paths.send_ttl(u), SEND_TTLS[1]);
        assert_eq!(paths.send_ttl(T), SEND_TTLS[0]);
    }

    /// A copy-and-swap reflector k hops away returns our TTL minus 2k: from
    /// the second reply on, every one is rejected, wherever it sits.
    #[test]
    fn a_reflector_is_rejected_from_the_second_reply() {
        for k in 0..20u8 {
            let mut paths = Paths::default();
            let s = paths.send_ttl(T);
            assert!(accepted(paths.judge(T, s, Some(s - 2 * k))), "unjudgeable");
            for n in 0..10 {
                let s = paths.send_ttl(T);
                let v = paths.judge(T, s, Some(s - 2 * k));
                assert!(
                    matches!(v, Verdict::Reflected { first, .. } if first == (n == 0)),
                    "k {k}, reply {n}: {v:?}"
                );
            }
        }
    }

    /// Real replies, then a reflector (the path died behind it), then real
    /// replies again (it recovered): one reflected reply passes (compared
    /// with a real one), the rest are rejected, and the recovery is immediate.
    #[test]
    fn a_reflector_appearing_and_going() {
        let mut paths = Paths::default();
        for _ in 0..4 {
            let s = paths.send_ttl(T);
            assert!(accepted(paths.judge(T, s, Some(63))));
        }
        let s = paths.send_ttl(T);
        assert!(
            accepted(paths.judge(T, s, Some(s))),
            "judged against a real reply"
        );
        for _ in 0..6 {
            let s = paths.send_ttl(T);
            assert!(!accepted(paths.judge(T, s, Some(s))));
        }
        let s = paths.send_ttl(T);
        assert_eq!(
            paths.judge(T, s, Some(63)),
            Verdict::Accept { recovered: true }
        );
        let s = paths.send_ttl(T);
        assert_eq!(
            paths.judge(T, s, Some(63)),
            Verdict::Accept { recovered: false }
        );
    }

    /// A route change (by a hop or two, either way, or flapping between two
    /// lengths) never looks like reflection.
    #[test]
    fn route_changes_are_accepted() {
        let mut paths = Paths::default();
        for arrival in [59, 59, 58, 60, 60, 57, 59, 58, 59, 58, 120, 121] {
            let s = paths.send_ttl(T);
            assert!(accepted(paths.judge(T, s, Some(arrival))), "{arrival}");
        }
    }

    /// No TTL from the kernel, an unknown path or sent TTL: nothing to judge.
    #[test]
    fn unknown_is_accepted() {
        let mut paths = Paths::default();
        assert!(accepted(paths.judge(T, 64, Some(64))), "unknown path");
        let s = paths.send_ttl(T);
        assert!(accepted(paths.judge(T, s, Some(s))));
        let s = paths.send_ttl(T);
        assert!(accepted(paths.judge(T, s, None)), "no TTL");
        assert!(accepted(paths.judge(T, 7, Some(7))), "not a sent TTL");
    }

    #[test]
    fn the_oldest_path_is_forgotten() {
        let mut paths = Paths::default();
        for i in 0..=MAX_PATHS {
            paths.send_ttl(IpAddr::from([198, 19, 1, i as u8]));
        }
        assert_eq!(paths.paths.len(), MAX_PATHS);
        assert_ne!(paths.paths[0].target, IpAddr::from([198, 19, 1, 0]));
    }
}
