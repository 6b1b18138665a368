#!/usr/bin/env bash
# Runs every test of uplinkd on a fresh Debian machine, as root.
# Installs what the tests need first (Debian packages with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "run-all.sh: the end-to-end tests build network namespaces: run as root" >&2
    exit 1
fi

# Debian packages the tests use: ip (iproute2), nft (nftables).
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
# The package test (tests/package.rs): lintian, a clean root, the unit checks,
# and the unit beside systemd-networkd (tests/package/networkd.rs).
command -v lintian >/dev/null || need+=(lintian)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace >/dev/null || need+=(strace)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
# The monitoring test (tests/monitoring.rs): promtool, from the prometheus
# package, checks and unit-tests the Prometheus rules.
promtool_installed=0
command -v promtool >/dev/null || { need+=(prometheus); promtool_installed=1; }
if [ ${#need[@]} -gt 0 ]; then
    echo "run-all.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    # Only promtool is needed: stop the server the package may have started.
    if [ "$promtool_installed" = 1 ] && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service || true
    fi
fi

# Every test target: unit, scenario, netlink, prober, lab and end-to-end.
cargo test --locked --no-fail-fast --workspace --all-targets -- --test-threads="${TEST_THREADS:-2}"
