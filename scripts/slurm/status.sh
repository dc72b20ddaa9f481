#!/usr/bin/env bash
# Exit 0 (and print the node line) when the local cluster from start.sh is up, 1 otherwise.
set -uo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ok=1
for d in "munged:$S_PID_MUNGED" "slurmctld:$S_PID_CTLD" "slurmd:$S_PID_SLURMD"; do
    name="${d%%:*}"; f="${d#*:}"
    if pid="$(pid_alive "$f" "$name")"; then echo "$name: running (pid $pid)"; else echo "$name: not running"; ok=0; fi
done
if [ "$ok" = 1 ] && cluster_idle; then
    echo "node: $(sinfo -h -o '%P %T %c CPUs %m MB')"
    echo "SLURM_CONF=$S_CONF"
    exit 0
fi
[ "$ok" = 1 ] && echo "node: not ready ($(timeout 10 sinfo -h -o '%T %E' 2>&1 | head -1))"
exit 1
