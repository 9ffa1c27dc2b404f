#!/usr/bin/env bash
# Bring up a real single-node Slurm (munge + slurmctld + slurmd) on this machine for the
# tests: root on Debian only. Idempotent: does nothing when the node is already up.
# The node is this host (NodeAddr 127.0.0.1), partition "debug" (default) and "down" (State=DOWN,
# for tests of jobs Slurm holds). Jobs share cores (OverSubscribe=FORCE) so a 2-core machine
# runs several services at once. Logs: /var/log/slurm/.
# Also installs tcsh: the unit tests run the Slurm submit prologue under csh/tcsh login shells too
# (tests/unit/plugins/module_utils/test_slurm.py), and skip a shell that is not installed.
set -euo pipefail
log() { printf 'ensure-slurm: %s\n' "$*" >&2; }
can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

node_up() { sinfo -h -N -p debug -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

conf_current() { grep -q 'OverSubscribe=FORCE:16' /etc/slurm/slurm.conf 2>/dev/null; }
if command -v sinfo >/dev/null 2>&1 && node_up && conf_current; then
  if ! command -v tcsh >/dev/null 2>&1; then
    if can_install; then
      log "installing tcsh"
      "$(dirname "$0")/apt-install.sh" tcsh
    else
      log "tcsh is not installed (and installing it needs root on Debian): the csh/tcsh prologue tests are skipped"
    fi
  fi
  exit 0
fi
if ! can_install; then
  log "a test Slurm can only be set up as root on Debian; point the Slurm tests at a cluster instead"
  exit 1
fi

packages=()
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  packages+=(slurm-wlm munge)
fi
if ! command -v tcsh >/dev/null 2>&1; then
  packages+=(tcsh)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  log "installing ${packages[*]}"
  "$(dirname "$0")/apt-install.sh" "${packages[@]}"
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 512 ))
max_mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
if [ -n "$max_mem" ] && [ "$mem" -gt "$max_mem" ]; then mem=$max_mem; fi

install -d /etc/slurm /var/log/slurm /var/spool/slurmd /var/spool/slurmctld
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
KillWait=10
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
PartitionName=down Nodes=ALL Default=NO MaxTime=INFINITE State=DOWN OverSubscribe=FORCE:16
CONF

if [ ! -s /etc/munge/munge.key ]; then
  install -d -o munge -g munge -m 0700 /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge /run/munge
if ! pgrep -x munged >/dev/null; then runuser -u munge -- /usr/sbin/munged; fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if alive /run/slurmctld.pid; then scontrol reconfigure; else /usr/sbin/slurmctld -c -i; fi
if ! alive /run/slurmd.pid; then /usr/sbin/slurmd; fi

for _try in $(seq 1 60); do
  node_up && exit 0
  sleep 0.5
done
log "the Slurm node did not come up within 30 s"
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
