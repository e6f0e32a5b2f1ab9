#!/usr/bin/env bash
# A one-node Slurm on this machine, for trying and testing examples/slurm/grid.sbatch.
#
#   sudo scripts/slurm-local.sh      # as root; Debian/Ubuntu (apt), no systemd needed
#
# Idempotent: installs slurm-wlm and munge if missing, creates a munge key if there is none,
# writes /etc/slurm/slurm.conf for this host (restarting the Slurm daemons when it changed),
# starts whichever of munged, slurmctld and slurmd is not running (directly, as daemons: it
# works in containers without systemd), and waits until `sinfo` shows the node idle.
# It is a test bed, not a production set-up: the daemons run as root, there is no accounting
# (no slurmdbd, so no sacct), and jobs are not confined (proctrack/linuxproc, task/none).
set -euo pipefail

say() { printf 'slurm-local: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"

conf=/etc/slurm/slurm.conf
node=$(hostname -s)
cpus=$(nproc)

# 1. Packages. A policy-rc.d that says "no" keeps the maintainer scripts from starting
#    daemons themselves (they would fail without systemd, or start with no configuration).
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
   ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt-get)"
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; }
    # Fresh package lists are used as they are; `apt-get update` only when the install fails.
    apt_install 2>/dev/null || { apt-get update -qq && apt_install; }
    [ -z "$made_policy" ] || rm -f "$policy"
else
    say "slurm-wlm and munge are installed ($(sinfo --version))"
fi

# 2. Munge: a key, and the directories munged wants owned by its user.
id munge >/dev/null 2>&1 || die "no 'munge' user: is the munge package installed?"
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge   # clients (sbatch, slurmd) must reach the socket

# 3. slurm.conf for one node. cons_tres with CR_CPU hands out single CPUs: a job array of
#    1-CPU tasks runs `nproc` tasks at once and queues the rest. Memory is not a consumable
#    resource here, so RealMemory only needs to be no more than the machine has.
mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 / 2 }' /proc/meminfo)
[ "$mem_mb" -le 4096 ] || mem_mb=4096
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
new_conf=$(cat <<EOF
# Written by scripts/slurm-local.sh: one node, this host.
ClusterName=local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# Track a job's processes by parentage; no cgroups (containers often have none to give).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Jobs may be requeued (sbatch --requeue; scontrol requeue), and a node that went down comes
# back as soon as its slurmd registers.
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue/scontrol for 5 minutes (there is no sacct).
MinJobAge=300
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or out of time.
KillWait=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$conf"
    changed=1
    say "wrote $conf (node $node, $cpus CPUs, RealMemory=$mem_mb)"
else
    say "$conf is up to date"
fi

# Whether the daemon whose pid file is $1 (/run/NAME.pid) is running: a live process (not a
# zombie) of that pid and that name (a dead daemon's pid file may name a pid reused since).
running() {
    local pid
    pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$1" .pid)" ] &&
        [ "$(sed -E 's/.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# Stops the daemon of pid file $1 (only ever one this script's pid file names).
stop() {
    running "$1" || return 0
    kill "$(cat "$1")"
    for _ in $(seq 50); do running "$1" || return 0; sleep 0.2; done
    die "$(basename "$1" .pid) did not stop"
}

# 4. Daemons. munged first (Slurm authenticates every message with it).
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged is running"
else
    say "starting munged"
    # --force: start even over the socket a munged that died left behind.
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

if [ -n "$changed" ] && { running /run/slurmctld.pid || running /run/slurmd.pid; }; then
    say "configuration changed: restarting slurmctld and slurmd"
    stop /run/slurmd.pid
    stop /run/slurmctld.pid
fi
if running /run/slurmctld.pid; then
    say "slurmctld is running (pid $(cat /run/slurmctld.pid))"
else
    say "starting slurmctld (log /var/log/slurm/slurmctld.log)"
    slurmctld   # forks into the background, keeping the state in StateSaveLocation
fi
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer; see /var/log/slurm/slurmctld.log"

if running /run/slurmd.pid; then
    say "slurmd is running (pid $(cat /run/slurmd.pid))"
else
    say "starting slurmd (log /var/log/slurm/slurmd.log)"
    slurmd
fi

# 5. Wait for the node. A node left drained or down by an earlier run is resumed.
state=
for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n1)
    case "$state" in
        idle|mixed|allocated) break ;;
        drain*|down*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
case "$state" in
    idle|mixed|allocated) say "node $node is $state:"; sinfo ;;
    *) die "node $node is '${state:-unknown}' after 60 s; see /var/log/slurm/slurmd.log" ;;
esac
