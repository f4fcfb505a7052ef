#!/usr/bin/env bash
# A one-node SLURM on this machine, for tests/examples/test_examples_slurm.py (run by .ci/run).
#
#   bash .ci/slurm.sh start    install slurm-wlm + munge if missing (apt, root only), write the configs,
#                              start munged, slurmctld and slurmd, wait until the node is idle; exit 10
#                              (and start nothing) when this script's SLURM is already up
#   bash .ci/slurm.sh stop     stop the daemons this script started (by their pid files) and nothing else
#   bash .ci/slurm.sh env      print `export SLURM_CONF=...` for clients (sbatch, sinfo, scontrol)
#
# Everything lives under $WSIS_SLURM_ROOT (default /tmp/wsis-slurm): etc/ (slurm.conf, gres.conf), state,
# spool, logs and pid files. No systemd and no cgroups: proctrack/linuxproc, task/none. The node claims
# 8 CPUs, 8 GB and 8 GPUs whatever the machine has (config_overrides; the GPUs are /dev/null symlinks),
# so the example scripts' --gres=gpu:N lines are accepted and several tiny jobs run side by side.
# Start-up takes a few seconds (plus ~12 s for the apt install on a bare machine).
set -euo pipefail

ROOT=${WSIS_SLURM_ROOT:-/tmp/wsis-slurm}
CONF=$ROOT/etc/slurm.conf
NODE=$(hostname -s)

log() { printf 'slurm.sh: %s\n' "$*" >&2; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        log "slurm-wlm/munge are not installed and cannot be installed here (needs root and apt-get)"
        return 1
    fi
    log "installing slurm-wlm and munge"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$ROOT/apt.log" 2>&1; then
        # a bare image may have no package lists yet
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$ROOT/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$ROOT/apt.log" 2>&1 \
            || { log "apt-get install failed, see $ROOT/apt.log"; return 1; }
    fi
}

write_configs() {
    mkdir -p "$ROOT"/{etc,state,spool,log,run,dev}
    local i
    for i in 0 1 2 3 4 5 6 7; do
        ln -sfn /dev/null "$ROOT/dev/nvidia$i"
    done
    cat >"$CONF" <<EOF
ClusterName=wsis-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
# a job's processes get SIGKILL 5 s after its SIGTERM (default 30 s); finished jobs stay visible to scontrol
KillWait=5
MinJobAge=900
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=8 RealMemory=8000 Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$ROOT/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=$ROOT/dev/nvidia[0-7]
EOF
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start() {
    mkdir -p "$ROOT"
    if [[ -f $CONF ]] && SLURM_CONF=$CONF timeout 10 sinfo -h >/dev/null 2>&1; then
        log "already up (SLURM_CONF=$CONF): nothing started"
        return 10
    fi
    install
    write_configs
    if ! munge_ok; then
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        chown munge:munge /run/munge /var/log/munge /var/lib/munge
        [[ -f /etc/munge/munge.key ]] || { runuser -u munge -- mungekey --create 2>/dev/null || mungekey -c; }
        runuser -u munge -- munged
        touch "$ROOT/run/munged.ours"
        for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
        munge_ok || { log "munged did not start"; return 1; }
    fi
    slurmctld -c -f "$CONF"
    slurmd -f "$CONF"
    export SLURM_CONF=$CONF
    local state=""
    for _ in $(seq 300); do
        state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
        [[ $state == idle ]] && break
        sleep 0.1
    done
    if [[ $state != idle ]]; then
        log "the node did not come up (state '${state:-none}'); logs in $ROOT/log"
        tail -n 20 "$ROOT"/log/*.log >&2 || true
        return 1
    fi
    log "up: node $NODE idle; export SLURM_CONF=$CONF"
}

stop_pidfile() {  # stop_pidfile FILE NAME: TERM the process the file names, then wait for it to go
    local file=$1 name=$2 pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "$name ($pid) ignored SIGTERM: SIGKILL"; kill -9 "$pid" || true; }
    fi
    rm -f "$file"
}

stop() {
    stop_pidfile "$ROOT/run/slurmd.pid" slurmd
    stop_pidfile "$ROOT/run/slurmctld.pid" slurmctld
    if [[ -f $ROOT/run/munged.ours ]]; then
        stop_pidfile /run/munge/munged.pid munged
        rm -f "$ROOT/run/munged.ours"
    fi
    log "stopped"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
