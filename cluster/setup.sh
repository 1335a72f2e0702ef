#!/usr/bin/env bash
# A two-node Slurm test cluster on this one machine (see docs/hpc.md, "The test cluster").
#
# munged, slurmctld and two slurmd (n1 on 127.0.1.1, n2 on 127.0.1.2), each slurmd in its own UTS
# namespace with its node's host name: RP, hydra and MPICH decide "same node or not" by host name,
# and the disk every node sees is the shared filesystem.  Only loopback addresses are used.
# Daemons' PIDs go to $RCYLON_SLURM_DIR/pids for cluster/teardown.sh.  Idempotent: a cluster
# already up is left as it is.  Needs root (it installs packages and writes /etc/slurm/slurm.conf).
#
# `setup.sh --install-only` installs the packages and stops there.
# Environment: RCYLON_SLURM_DIR (state, logs; default /tmp/rcylon-slurm),
#              RCYLON_SLURM_CPUS (CPUs each node claims; default 3), RCYLON_SLURM_NO_INSTALL=1.
set -euo pipefail

DIR=${RCYLON_SLURM_DIR:-/tmp/rcylon-slurm}
CPUS=${RCYLON_SLURM_CPUS:-3}
CONF=/etc/slurm/slurm.conf
MARK="# written by parsl_rcylon cluster/setup.sh"
NODES=(n1 n2)
ADDRS=(127.0.1.1 127.0.1.2)
PORTS=(17001 17002)
CTLD_PORT=16817

# Exit 2: this machine cannot run the cluster (tests skip, saying why); 1: it failed to start.
die() { echo "cluster/setup.sh: $*" >&2; exit 1; }
cannot() { echo "cluster/setup.sh: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cannot "needs root (installs slurm-wlm and munge, starts daemons, writes $CONF)"

if ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    [ "${RCYLON_SLURM_NO_INSTALL:-0}" = 1 ] && cannot "slurm-wlm and munge are not installed (RCYLON_SLURM_NO_INSTALL=1)"
    echo "cluster/setup.sh: installing slurm-wlm and munge (about 35 s)" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; } >"${TMPDIR:-/tmp}/rcylon-slurm-apt.log" 2>&1 \
        || cannot "apt-get install slurm-wlm munge failed: see ${TMPDIR:-/tmp}/rcylon-slurm-apt.log"
fi
# `make cluster-deps` (.ci/run): the packages only, before the tests start the cluster.
[ "${1:-}" = --install-only ] && exit 0
unshare --uts true 2>/dev/null || cannot "unshare --uts does not work here (no UTS namespaces): each node needs its own host name"

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -f "$DIR/pids" ] && awk -v n="$1" '$1 == n {print $2}' "$DIR/pids" || true; }

up=1
for d in slurmctld "${NODES[@]/#/slurmd-}"; do alive "$(pid_of "$d")" || up=0; done
# A cluster up with other node sizes is restarted with these.
grep -q "CPUs=$CPUS " $CONF 2>/dev/null || up=0
if [ $up = 1 ] && scontrol ping >/dev/null 2>&1; then
    echo "cluster/setup.sh: already up (pids in $DIR/pids)" >&2
    exit 0
fi
# Half a cluster (a daemon died, a reboot): start over from nothing.
[ -f "$DIR/pids" ] && bash "$(dirname "$0")/teardown.sh"

mkdir -p "$DIR"
: >"$DIR/pids"

# Host names -> loopback addresses, once each.
for i in "${!NODES[@]}"; do
    grep -qE "^${ADDRS[$i]}[[:space:]]+${NODES[$i]}\$" /etc/hosts || echo "${ADDRS[$i]} ${NODES[$i]}" >>/etc/hosts
done

if [ -f $CONF ] && ! grep -qF "$MARK" $CONF; then
    cannot "$CONF exists and was not written by this script: not overwriting a real cluster's configuration"
fi
mkdir -p /etc/slurm "$DIR/ctld"
cat >$CONF.new <<CONF
$MARK: a 2-node test cluster on loopback
ClusterName=rcylon
SlurmctldHost=ctl(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
# No cgroups, no accounting: what a machine without them allows.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=pmi2
SchedulerType=sched/backfill
SelectType=select/linear
ReturnToService=2
SlurmdParameters=config_overrides
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=2
NodeName=${NODES[0]} NodeAddr=${ADDRS[0]} NodeHostname=${NODES[0]} Port=${PORTS[0]} CPUs=$CPUS State=UNKNOWN
NodeName=${NODES[1]} NodeAddr=${ADDRS[1]} NodeHostname=${NODES[1]} Port=${PORTS[1]} CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=EXCLUSIVE
CONF
mv $CONF.new $CONF
# A fresh controller state each time: jobs of an earlier cluster are gone with its nodes.
rm -rf "$DIR"/ctld/* "$DIR"/spool-*

# munge: reuse a running one (a system service), else start ours.
if ! { munge -n | unmunge; } >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || mungekey -c -f >/dev/null 2>&1 || /usr/sbin/create-munge-key -f >/dev/null
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    setsid runuser -u munge -- /usr/sbin/munged --foreground </dev/null >"$DIR/munged.log" 2>&1 &
    echo "munged $!" >>"$DIR/pids"
    for _ in $(seq 50); do { munge -n | unmunge; } >/dev/null 2>&1 && break; sleep 0.1; done
    { munge -n | unmunge; } >/dev/null 2>&1 || die "munged did not start: see $DIR/munged.log"
fi

# Each daemon runs in a UTS namespace of its own; unshare (without --fork) and sh exec into the
# daemon, so the PID recorded is the daemon's.
setsid unshare --uts sh -c 'hostname ctl && exec slurmctld -D -i' </dev/null >"$DIR/slurmctld.out" 2>&1 &
echo "slurmctld $!" >>"$DIR/pids"
for i in "${!NODES[@]}"; do
    n=${NODES[$i]}
    setsid unshare --uts sh -c "hostname $n && exec slurmd -D -N $n" </dev/null >"$DIR/slurmd-$n.out" 2>&1 &
    echo "slurmd-$n $!" >>"$DIR/pids"
done

# Ready when both nodes are idle.
for _ in $(seq 100); do
    idle=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle"' | wc -l)
    [ "$idle" = ${#NODES[@]} ] && { echo "cluster/setup.sh: up (${NODES[*]} idle; pids in $DIR/pids)" >&2; exit 0; }
    sleep 0.1
done
sinfo -N >&2 || true
tail -n 20 "$DIR"/*.log >&2 || true
die "nodes did not become idle within 10 s (logs in $DIR)"
