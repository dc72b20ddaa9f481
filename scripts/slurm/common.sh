# shellcheck shell=bash disable=SC2034
# Shared settings for scripts/slurm/*.sh (sourced, not run).
#
# Environment knobs (all optional):
#   LAB_SLURM_DIR            state dir: config, pid files, spool, logs   (default /tmp/lab-slurm)
#   LAB_SLURM_CTLD_PORT      slurmctld port                              (default 6817)
#   LAB_SLURM_NODE_PORT      slurmd port                                 (default 6818)
#   LAB_SLURM_START_TIMEOUT  seconds start.sh waits for an idle node     (default 60)
#   LAB_SLURM_STOP_GRACE     seconds stop.sh waits after SIGTERM          (default 20)
#   LAB_SLURM_FAKE_GPUS      gres/gpu count backed by /dev/null            (default 1; 0 = none)
#   LAB_SLURM_CPUS           CPUs the node advertises                     (default: nproc)
#   LAB_SLURM_MEM_MB         RealMemory (MB) the node advertises           (default: RAM - 2 GiB)
#   LAB_SLURM_CRED_EXPIRE    credential lifetime (s); a requeued job waits this long (default 10)

SLURM_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LAB_SLURM_DIR="${LAB_SLURM_DIR:-/tmp/lab-slurm}"
LAB_SLURM_CTLD_PORT="${LAB_SLURM_CTLD_PORT:-6817}"
LAB_SLURM_NODE_PORT="${LAB_SLURM_NODE_PORT:-6818}"
LAB_SLURM_START_TIMEOUT="${LAB_SLURM_START_TIMEOUT:-60}"
LAB_SLURM_STOP_GRACE="${LAB_SLURM_STOP_GRACE:-20}"
LAB_SLURM_FAKE_GPUS="${LAB_SLURM_FAKE_GPUS:-1}"
LAB_SLURM_CPUS="${LAB_SLURM_CPUS:-}"
LAB_SLURM_MEM_MB="${LAB_SLURM_MEM_MB:-0}"
LAB_SLURM_CRED_EXPIRE="${LAB_SLURM_CRED_EXPIRE:-10}"

S_CONF="$LAB_SLURM_DIR/etc/slurm.conf"
S_RUN="$LAB_SLURM_DIR/run"
S_LOG="$LAB_SLURM_DIR/log"
S_MUNGE="$LAB_SLURM_DIR/munge"
S_MUNGE_SOCKET="$S_MUNGE/munge.socket"
S_PID_MUNGED="$S_MUNGE/munged.pid"
S_PID_CTLD="$S_RUN/slurmctld.pid"
S_PID_SLURMD="$S_RUN/slurmd.pid"

export SLURM_CONF="$S_CONF"
# The sacct stand-in (bin/sacct) goes first on PATH; see README.md.
case ":$PATH:" in *":$SLURM_SCRIPTS_DIR/bin:"*) ;; *) export PATH="$SLURM_SCRIPTS_DIR/bin:$PATH:/usr/sbin:/sbin" ;; esac

log() { echo "[lab-slurm] $*" >&2; }

# proc_alive PID NAME -> 0 when PID is a live (non-zombie) process named NAME.
proc_alive() {
    local pid="$1" name="$2" comm state
    [ -n "$pid" ] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    # /proc/PID/comm is cut at 15 chars; a PID reused by another program must not match.
    [ "$comm" = "${name:0:15}" ] || return 1
    # a zombie (exited, not yet reaped) is not alive
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)"
    [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# pid_alive PIDFILE NAME -> prints the pid and returns 0 when the pid in PIDFILE is a live NAME process.
pid_alive() {
    local f="$1" name="$2" pid
    [ -s "$f" ] || return 1
    pid="$(tr -dc '0-9' 2>/dev/null <"$f")" || return 1   # the daemon may remove it meanwhile
    proc_alive "$pid" "$name" || return 1
    echo "$pid"
}

cluster_idle() {
    local st
    # exact match: "idle*" (not responding), "down*", "drained" ... do not count
    st="$(timeout 10 sinfo -h -o %T 2>/dev/null | head -1)" || return 1
    [ "$st" = "idle" ] || [ "$st" = "mixed" ] || [ "$st" = "allocated" ]
}

print_logs_hint() {
    log "logs: $S_LOG/slurmctld.log  $S_LOG/slurmd.log  $S_MUNGE/munged.log"
}
