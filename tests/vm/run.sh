#!/usr/bin/env bash
# The VM test tier: boots a stock Debian kernel (which has the bonding
# module this host's kernel may lack) under qemu with the host's own files
# (virtme-ng), runs one command inside as root, and returns its exit status
# and output.
#
#   tests/vm/run.sh [--setup-only] [--] COMMAND [ARGS...]
#
# e.g. the bond end-to-end tests (what `cargo test --test e2e_bond` does on
# the host by itself):
#   bin=$(cargo test --test e2e_bond --no-run --message-format=json \
#         | jq -r 'select(.executable != null) | .executable')
#   tests/vm/run.sh "$bin" --test-threads=1 scenario_
#
# What it does, each step skipped when already done:
#   1. installs the tools (apt: qemu-system-x86, kmod, busybox-static, udev,
#      file, iproute2, nftables; pip: virtme-ng);
#   2. fetches the kernel: the package Debian's `linux-image-amd64` depends
#      on (apt-get download + dpkg-deb -x, then depmod), cached in
#      $UPLINKD_VM_CACHE (default: <repo>/target/vm). A cached kernel is
#      reused without asking apt (offline runs work);
#   3. boots it with `vng` (software emulation: no KVM), the host's root
#      file system read-only with a writable overlay on /tmp, /var, /etc...;
#      the kernel's modules are exported by vng from the cache;
#   4. runs COMMAND as root in the current directory with UPLINKD_IN_VM=1
#      (plus every UPLINKD_* and RUST_* variable of the caller) set.
#
# Environment:
#   UPLINKD_VM_CACHE    kernel cache; must not be under /tmp, /var or /run,
#                       which the guest mounts over (default <repo>/target/vm,
#                       or $HOME/.cache/uplinkd-vm for a repo under those)
#   UPLINKD_VM_KERNEL   a Debian kernel package to use instead of the one
#                       linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64)
#   UPLINKD_VM_TIMEOUT  seconds before the VM is killed (default 1800)
#   UPLINKD_VM_MEMORY   guest memory (default 2G)
#   UPLINKD_VM_CPUS     guest CPUs (default: the host's, at most 4)
#
# Exit status: COMMAND's, or 121-124 for a failure of the tier itself (Rust test binaries exit 101 when a test fails) (so a
# caller can tell "the tests failed" from "the VM could not run").
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The guest mounts its own /tmp, /var and /run over the host's: a repo there
# (a clone in /tmp) is handed to the guest explicitly (--rwdir below), and
# the kernel cache, whose modules vng exports before that, lives elsewhere.
guest_hidden() {
    case "$1" in
    /tmp/* | /var/* | /run/* | /tmp | /var | /run) return 0 ;;
    *) return 1 ;;
    esac
}
if guest_hidden "$REPO"; then
    CACHE=${UPLINKD_VM_CACHE:-${HOME:-/root}/.cache/uplinkd-vm}
else
    CACHE=${UPLINKD_VM_CACHE:-$REPO/target/vm}
fi
TIMEOUT=${UPLINKD_VM_TIMEOUT:-1800}
MEMORY=${UPLINKD_VM_MEMORY:-2G}
host_cpus=$(nproc)
CPUS=${UPLINKD_VM_CPUS:-$((host_cpus < 4 ? host_cpus : 4))}

log() { echo "vm: $*" >&2; }
die() {
    log "error: $*"
    exit 121
}

setup_only=0
while [ $# -gt 0 ]; do
    case "$1" in
    --setup-only) setup_only=1; shift ;;
    --) shift; break ;;
    *) break ;;
    esac
done
if [ "$setup_only" = 0 ] && [ $# -eq 0 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 122
fi
[ "$(id -u)" = 0 ] || die "must run as root (installs packages, runs the tests as root in the VM)"

if guest_hidden "$CACHE"; then
    die "UPLINKD_VM_CACHE=$CACHE: the guest mounts its own /tmp, /var and /run, so the kernel modules would be invisible there; use a directory elsewhere"
fi

# ---- 1. tools --------------------------------------------------------------
apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
have qemu-system-x86_64 || need_pkgs+=(qemu-system-x86)
have depmod || need_pkgs+=(kmod)
have busybox || need_pkgs+=(busybox-static)
# virtme-ng-init needs udev to name the virtio-serial ports that carry the
# command's output and exit status; without it both are lost.
{ have /lib/systemd/systemd-udevd || have /usr/lib/systemd/systemd-udevd || have udevd; } || need_pkgs+=(udev)
have file || need_pkgs+=(file)
have ip || need_pkgs+=(iproute2)
have nft || need_pkgs+=(nftables)
have python3 || need_pkgs+=(python3 python3-pip)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    apt_update
    log "installing ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2 ||
        die "apt-get install ${need_pkgs[*]} failed"
fi
if ! have vng; then
    log "pip install virtme-ng"
    python3 -m pip install -q virtme-ng >&2 ||
        python3 -m pip install -q --break-system-packages virtme-ng >&2 ||
        die "pip install virtme-ng failed"
    hash -r
    have vng || die "vng not on PATH after pip install virtme-ng"
fi

# ---- 2. kernel -------------------------------------------------------------
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

resolve_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1
}

pkg=${UPLINKD_VM_KERNEL:-}
if [ -z "$pkg" ]; then
    # Prefer what is cached: no network, no surprise upgrade mid-CI.
    pkg=$(ls -1 "$CACHE" 2>/dev/null | grep '^linux-image-.*-amd64$' | while read -r d; do
        [ -e "$CACHE/$d/.ready" ] && echo "$d"
    done | sort -V | tail -n1 || true)
fi
if [ -z "$pkg" ]; then
    pkg=$(resolve_pkg)
    if [ -z "$pkg" ]; then
        apt_update
        pkg=$(resolve_pkg)
    fi
    [ -n "$pkg" ] || die "cannot resolve the kernel package linux-image-amd64 depends on"
fi
kdir="$CACHE/$pkg"
if [ ! -e "$kdir/.ready" ]; then
    log "fetching $pkg into $CACHE"
    dl="$CACHE/download"
    rm -rf "$dl" "$kdir.tmp"
    mkdir -p "$dl"
    # apt drops to the _apt user for downloads when it can write the target.
    chmod 0777 "$dl"
    if ! (cd "$dl" && apt-get download -qq "$pkg" >&2); then
        apt_update
        (cd "$dl" && apt-get download -qq "$pkg" >&2) || die "apt-get download $pkg failed"
    fi
    deb=$(ls -1 "$dl"/*.deb | head -n1)
    mkdir -p "$kdir.tmp"
    dpkg-deb -x "$deb" "$kdir.tmp" || die "dpkg-deb -x $deb failed"
    kver=$(ls -1 "$kdir.tmp/lib/modules" | head -n1)
    [ -n "$kver" ] || die "$pkg has no /lib/modules"
    depmod -a -b "$kdir.tmp" "$kver" || die "depmod for $kver failed"
    rm -rf "$kdir"
    mv "$kdir.tmp" "$kdir"
    rm -rf "$dl"
    touch "$kdir/.ready"
fi
kimg=$(ls -1 "$kdir"/boot/vmlinuz-* | head -n1)
[ -r "$kimg" ] || die "no kernel image in $kdir/boot"
kver=${kimg##*/vmlinuz-}
[ -e "$kdir/lib/modules/$kver/kernel/drivers/net/bonding/bonding.ko" ] ||
    [ -e "$kdir/lib/modules/$kver/kernel/drivers/net/bonding/bonding.ko.xz" ] ||
    die "$pkg has no bonding module"
log "kernel $kver ($pkg), cached in $kdir"

if [ "$setup_only" = 1 ]; then
    exit 0
fi

# ---- 3 + 4. boot and run ---------------------------------------------------
q() { printf '%q ' "$@"; }
script="export UPLINKD_IN_VM=1; "
while IFS='=' read -r name _; do
    case "$name" in
    UPLINKD_VM_*) ;;
    UPLINKD_* | RUST_*) script+="export $name=$(q "${!name}"); " ;;
    esac
done < <(env)
script+="cd $(q "$PWD") && $(q "$@")"

log "booting $kver (qemu, no KVM, ${CPUS} CPUs, $MEMORY) to run: $*"
t0=$(date +%s)
set +e
# --disable-kvm: nested KVM is absent or unusable on the CI machines.
# --disable-microvm: the q35 machine's virtio-serial carries stdout/stderr
# and the exit status back.
# qemu opens /proc/self/fd/{1,2} anew (truncating a regular file and writing
# from offset 0), so the output always goes through pipes to the caller.
share=()
if guest_hidden "$REPO"; then
    share=(--rwdir "$REPO")
fi
rcfile=$(mktemp)
{ {
    timeout -k 15 "$TIMEOUT" vng --run "$kimg" --disable-kvm --disable-microvm \
        --user root --cpus "$CPUS" --memory "$MEMORY" "${share[@]}" \
        --exec "$script" </dev/null
    echo $? >"$rcfile"
} 2>&1 1>&3 3>&- | cat >&2; } 3>&1 | cat
rc=$(cat "$rcfile")
rm -f "$rcfile"
set -e
log "VM exited with status $rc after $(($(date +%s) - t0)) s"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    log "error: the VM did not finish within ${TIMEOUT}s"
    exit 123
fi
if [ "$rc" = 255 ]; then
    log "error: vng failed (status 255: the VM did not boot or lost the command's status)"
    exit 124
fi
exit "$rc"
