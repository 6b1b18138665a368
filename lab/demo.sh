#!/bin/sh
# The uplinkd demo in one command, from a fresh clone:
#
#   lab/demo.sh
#
# Builds uplinkd and uplink-lab (release) as you, then runs `uplink-lab demo`
# as root (through sudo unless you are root already). The demo builds a lab
# in network namespaces only (nothing outside them is touched), installs
# what it needs with apt-get on Debian/Ubuntu (iproute2, nftables) or says
# what is missing, plays the failures, prints the timeline and removes the
# lab again, also on Ctrl-C. Arguments are passed to `uplink-lab demo`.
set -eu
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "lab/demo.sh: cargo not found: install Rust (https://rustup.rs), then run this again" >&2
    exit 1
fi
cargo build --release -p uplinkd -p uplink-lab --bins
if [ "$(id -u)" -eq 0 ]; then
    exec target/release/uplink-lab demo "$@"
fi
exec sudo target/release/uplink-lab demo "$@"
