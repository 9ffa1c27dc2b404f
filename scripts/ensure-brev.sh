#!/usr/bin/env bash
# Install the test Brev platform: a stand-in `brev` CLI (tests/brev/brev_standin, stdlib Python) as
# DIR/bin/brev, its keys, and nothing else: each instance's sshd starts when the instance is RUNNING.
# Idempotent; prints DIR/bin, the folder to put first on PATH. DIR is TAO_BREV_DIR, default .build/brev.
# tests/brev/brev_standin/README.md is the CLI contract (commands, JSON, messages, knobs, SSH config).
#
# usage: scripts/ensure-brev.sh          install (or keep) it, print the bin folder
#        scripts/ensure-brev.sh --down   stop every instance sshd and ssh master it made; remove DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
dir=${TAO_BREV_DIR:-$root/.build/brev}
log() { printf 'ensure-brev: %s\n' "$*" >&2; }

# The pid in FILE when it is alive and its command line mentions WORD.
alive_pid() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
  printf '%s\n' "$pid"
}

down() {
  local pidfile pid sock child
  [ -d "$dir" ] || return 0
  # ControlPersist masters of the SSH config: under home/.ssh, or /tmp/brev-control-<hash> when that
  # path is too long for a socket (hosts.control_dir).
  control=/tmp/brev-control-$(printf '%s' "$dir" | sha1sum | cut -c1-12)
  for sock in "$dir"/home/.ssh/brev-control-* "$control"/brev-control-*; do
    [ -S "$sock" ] || continue
    ssh -o ControlPath="$sock" -O exit brev-standin >/dev/null 2>&1 || true
  done
  rm -rf "$control"
  for pidfile in "$dir"/hosts/*/sshd.pid; do
    [ -e "$pidfile" ] || continue
    if pid=$(alive_pid "$pidfile" "$(dirname "$pidfile")/sshd_config"); then
      for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill -TERM "$child" 2>/dev/null || true; done
      kill -TERM "$pid" 2>/dev/null || true
      for _try in $(seq 1 50); do
        alive_pid "$pidfile" "$(dirname "$pidfile")/sshd_config" >/dev/null || break
        sleep 0.1
      done
    fi
  done
  # Hosts of TAO_BREV_HOSTS=netns instances: their dockerd, namespace, veth and data.
  if [ -f "$dir/state.json" ] && [ -x "$dir/bin/brev" ]; then
    python=$(sed -n 's/^exec "\([^"]*\)" -I .*/\1/p' "$dir/bin/brev")
    TAO_BREV_DIR=$dir "${python:-python3}" -I -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from brev_standin.netns import main; main(sys.argv[1:])' \
      "$root/tests/brev" destroy-all || log "could not remove every instance network namespace"
  fi
  rm -rf "$dir"
}

if [ "${1:-}" = "--down" ]; then
  down
  log "removed $dir; no instance sshd of the stand-in is left"
  exit 0
elif [ $# -gt 0 ]; then
  log "usage: $0 [--down]"
  exit 2
fi

if [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "openssh-server is missing: install it (e.g. 'sudo apt-get install openssh-server')"
    exit 1
  fi
  log "installing openssh-server"
  "$root/scripts/apt-install.sh" openssh-server
fi
python=${TAO_BREV_PYTHON:-}
if [ -z "$python" ]; then
  for candidate in /usr/bin/python3 "$(command -v python3 || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import fcntl, json' >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if [ -z "$python" ]; then
  log "no python3 found for the stand-in (set TAO_BREV_PYTHON)"
  exit 1
fi

install -d -m 0755 "$dir" "$dir/bin"
install -d -m 0700 "$dir/keys" "$dir/hosts"
[ -f "$dir/keys/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C brev-standin -f "$dir/keys/host_ed25519"
[ -f "$dir/keys/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C brev-standin -f "$dir/keys/id_ed25519"
[ -f "$dir/keys/authorized_keys" ] || install -m 0600 "$dir/keys/id_ed25519.pub" "$dir/keys/authorized_keys"

wrapper=$(cat <<SH
#!/bin/sh
# The test Brev CLI (scripts/ensure-brev.sh; contract: tests/brev/brev_standin/README.md).
: "\${TAO_BREV_DIR:=$dir}"
export TAO_BREV_DIR
exec "$python" -I -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from brev_standin.cli import main; sys.exit(main(sys.argv[1:]))' \\
  "$root/tests/brev" "\$@"
SH
)
if [ ! -f "$dir/bin/brev" ] || [ "$(cat "$dir/bin/brev")" != "$wrapper" ]; then
  printf '%s\n' "$wrapper" >"$dir/bin/brev.tmp"
  chmod 0755 "$dir/bin/brev.tmp"
  mv -f "$dir/bin/brev.tmp" "$dir/bin/brev"
fi

install -d -m 0700 "$dir/home" "$dir/home/.ssh"
[ -f "$dir/home/.ssh/config" ] || install -m 0600 /dev/null "$dir/home/.ssh/config"

# An ssh that reads the stand-in home's ~/.ssh/config as the user's own config (OpenSSH takes the home from
# the password database, not $HOME): with DIR/ssh-bin first on PATH, `ssh <instance>` and
# `docker -H ssh://<instance>` resolve the aliases as they would for a Brev user.
install -d -m 0755 "$dir/ssh-bin"
sshwrap=$(cat <<SH
#!/bin/sh
exec /usr/bin/ssh -F "\${TAO_BREV_HOME:-$dir/home}/.ssh/config" "\$@"
SH
)
if [ ! -f "$dir/ssh-bin/ssh" ] || [ "$(cat "$dir/ssh-bin/ssh")" != "$sshwrap" ]; then
  printf '%s\n' "$sshwrap" >"$dir/ssh-bin/ssh.tmp"
  chmod 0755 "$dir/ssh-bin/ssh.tmp"
  mv -f "$dir/ssh-bin/ssh.tmp" "$dir/ssh-bin/ssh"
fi

if ! TAO_BREV_DIR=$dir "$dir/bin/brev" --version </dev/null >/dev/null; then
  log "$dir/bin/brev does not run"
  exit 1
fi
printf '%s\n' "$dir/bin"
