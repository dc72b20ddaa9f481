#!/usr/bin/env bash
# Install the Debian packages for a single-node SLURM cluster (controller + compute node + client
# tools + munge). Idempotent and non-interactive; needs root (or sudo) and the Debian apt registry.
#
#   scripts/slurm/install.sh          # ~14 s on a fresh Debian 12 machine (apt-get update included), ~0.1 s when present
#
# The packages' post-install service starts fail without systemd; that is expected and harmless:
# scripts/slurm/start.sh starts the daemons by hand.
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install.sh: needs root (or passwordless sudo) to apt-get install ${PKGS[*]}" >&2
        exit 1
    fi
fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install.sh: already installed: ${PKGS[*]}"
else
    echo "install.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d 101 = "do not start services" during the install (no systemd/init here anyway).
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    trap '[ "$created_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    # Refresh the index only when it is missing or older than a day.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
        $SUDO apt-get update -qq
    fi
    $SUDO apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
fi

# munge needs a key; the package normally creates one.
if [ ! -s /etc/munge/munge.key ]; then
    echo "install.sh: creating /etc/munge/munge.key"
    $SUDO mungekey --create --keyfile=/etc/munge/munge.key
    $SUDO chown munge:munge /etc/munge/munge.key
    $SUDO chmod 400 /etc/munge/munge.key
fi

for b in sbatch squeue scontrol sinfo slurmctld slurmd munged; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || { echo "install.sh: $b not found after install" >&2; exit 1; }
done
echo "install.sh: ok (slurm $(dpkg-query -W -f='${Version}' slurmctld), munge $(dpkg-query -W -f='${Version}' munge))"
