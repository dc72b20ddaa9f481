# shellcheck shell=bash
# Source this to talk to the local cluster from a shell:
#   source scripts/slurm/env.sh     # sets SLURM_CONF and puts the sacct stand-in first on PATH
# (honours LAB_SLURM_DIR like the other scripts)
_lab_slurm_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SLURM_CONF="${LAB_SLURM_DIR:-/tmp/lab-slurm}/etc/slurm.conf"
case ":$PATH:" in *":$_lab_slurm_here/bin:"*) ;; *) export PATH="$_lab_slurm_here/bin:$PATH" ;; esac
unset _lab_slurm_here
