#!/bin/bash
# A/B idle cost in one lab: bench/idle-ab.sh SECONDS ROUNDS BIN1 BIN2[+old] ...
# (as root; BIN+old: a binary from before agent.source4/6, run without those keys;
# BIN%key=value: with `key = value` added to [probe], e.g. BIN%echo_interval='"16ms"').
# Runs each binary in turn in one lab (steered like the bench), measures its
# carrier thread's and whole process's CPU time per second.
set -u
SECS=$1; ROUNDS=$2; shift 2
"${LAB:-target/release/uplink-lab}" up > /tmp/ab-lab.log 2>&1 &
LABPID=$!
sleep 5
NS=$(grep -o 'ul-[0-9a-f]*-[0-9]*-srv' /tmp/ab-lab.log | head -1)
PFX=${NS%-srv}
CFG=$(grep -o '/tmp/uplink-lab-[^ ]*/uplinkd.toml' /tmp/ab-lab.log | head -1)
for r in ra rb; do ip netns exec $PFX-$r sh -c 'echo 2 > /sys/class/net/down0/queues/rx-0/rps_cpus'; done
for round in $(seq $ROUNDS); do
  for b in "$@"; do
    bin=${b%%[+%]*}
    cfg=$CFG
    case "$b" in
      *+old) grep -v '^source[46] = ' $CFG > /tmp/ab-cfg.toml; cfg=/tmp/ab-cfg.toml ;;
      *%*) { cat $CFG; printf '\n[probe]\n%s\n' "$(echo "${b#*%}" | sed 's/=/ = /')"; } > /tmp/ab-cfg.toml; cfg=/tmp/ab-cfg.toml ;;
    esac
    ip netns exec $NS taskset -c 0 $bin --config $cfg > /tmp/ab-d.log 2>&1 &
    D=$!
    sleep 8
    C=$(grep -l '^carrier' /proc/$D/task/*/comm | head -1 | xargs dirname)
    c0=$(awk '{print $1}' $C/schedstat); w0=$(awk '{print $3}' $C/schedstat)
    p0=$(cat /proc/$D/task/*/schedstat | awk '{s+=$1} END {print s}')
    t0=$(date +%s.%N)
    sleep $SECS
    c1=$(awk '{print $1}' $C/schedstat); w1=$(awk '{print $3}' $C/schedstat)
    p1=$(cat /proc/$D/task/*/schedstat | awk '{s+=$1} END {print s}')
    t1=$(date +%s.%N)
    kill $D; wait $D 2>/dev/null
    python3 -c "
dt=$t1-$t0
print('%-40s carrier %.3f %% (%.1f us/wake, %d wakes/s)  process %.3f %%' % ('$b', ($c1-$c0)/dt/1e7, ($c1-$c0)/1e3/max(1,$w1-$w0), ($w1-$w0)/dt, ($p1-$p0)/dt/1e7))"
  done
done
kill $LABPID; wait $LABPID 2>/dev/null
