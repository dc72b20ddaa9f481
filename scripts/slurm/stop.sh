#!/usr/bin/env bash
# Stop the daemons that start.sh started, by the PIDs in their pid files: SIGTERM, then SIGKILL
# after LAB_SLURM_STOP_GRACE seconds (default 20). Harmless when nothing runs.
#
#   scripts/slurm/stop.sh            # stop; keep the state dir (logs, job state)
#   scripts/slurm/stop.sh --clean    # stop, then delete the state dir ($LAB_SLURM_DIR)
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

clean=0
for a in "$@"; do
    case "$a" in
        --clean) clean=1 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) log "unknown argument: $a"; exit 2 ;;
    esac
done

# Jobs first, so that their slurmstepd processes end too (they outlive slurmd otherwise).
if pid_alive "$S_PID_CTLD" slurmctld >/dev/null && [ -s "$S_CONF" ]; then
    jobs="$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        log "cancelling queued/running jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel --full $jobs >/dev/null 2>&1 || true
        for _ in $(seq 20); do
            [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

# stop_daemon PIDFILE NAME : SIGTERM, wait, SIGKILL. Runs in the background for slurmd/slurmctld.
stop_daemon() {
    local f="$1" name="$2" pid i
    pid="$(pid_alive "$f" "$name")" || { rm -f "$f"; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # follow the process itself: daemons remove their pid file before they have finished exiting
    for (( i = 0; i < LAB_SLURM_STOP_GRACE * 10; i++ )); do
        proc_alive "$pid" "$name" || { rm -f "$f"; log "$name stopped"; return 0; }
        sleep 0.1
    done
    log "$name (pid $pid) still alive after ${LAB_SLURM_STOP_GRACE}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do proc_alive "$pid" "$name" || break; sleep 0.1; done
    rm -f "$f"
}

stop_daemon "$S_PID_SLURMD" slurmd &
stop_daemon "$S_PID_CTLD" slurmctld &
wait
stop_daemon "$S_PID_MUNGED" munged

if [ "$clean" = 1 ]; then
    case "$LAB_SLURM_DIR" in
        ""|/|/tmp|/root|/home|/var|/etc) log "refusing to delete '$LAB_SLURM_DIR'"; exit 1 ;;
    esac
    if [ ! -e "$LAB_SLURM_DIR" ]; then
        :
    elif [ -e "$LAB_SLURM_DIR/etc/slurm.conf" ]; then
        rm -rf -- "$LAB_SLURM_DIR"
        log "removed $LAB_SLURM_DIR"
    else
        log "not removing $LAB_SLURM_DIR: no etc/slurm.conf in it, not ours?"
    fi
fi
log "stopped"
