#!/usr/bin/env bash
# Stop the test cluster cluster/setup.sh started: its jobs first, then its daemons, by the PIDs it
# recorded (never by name: a machine's own Slurm or munge is not ours to stop).
set -uo pipefail

DIR=${RCYLON_SLURM_DIR:-/tmp/rcylon-slurm}
[ -f "$DIR/pids" ] || { echo "cluster/teardown.sh: no cluster recorded in $DIR" >&2; exit 0; }

# Jobs end with their steps' processes while slurmd is still there to end them.
if scontrol ping >/dev/null 2>&1; then
    scancel --full --quiet --user=root 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
fi

pids=$(awk '{print $2}' "$DIR/pids")
# slurmd first, munged last: the others talk through it while they stop.
order=$(awk '$1 ~ /^slurmd-/ {print $2} $1 == "slurmctld" {c = $2} $1 == "munged" {m = $2} END {print c; print m}' "$DIR/pids")
for pid in $order; do [ -n "$pid" ] && kill "$pid" 2>/dev/null; done
for _ in $(seq 50); do
    left=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
    [ -z "$left" ] && break
    sleep 0.1
done
for pid in $left; do kill -9 "$pid" 2>/dev/null; done
rm -f "$DIR/pids"
echo "cluster/teardown.sh: stopped (${pids//$'\n'/ })" >&2
