#!/usr/bin/env bash
# Start an sshd on 127.0.0.1 for the tests (the Slurm login host and its tunnels), with its
# own host key, client key and config under DIR (default .build/ssh). Idempotent. The port is
# TAO_TEST_SSH_PORT, else 2222 or the next free one (another checkout may hold 2222).
# Writes DIR/config: `ssh -F DIR/config tao-login` reaches root@127.0.0.1:<port> in batch mode.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
dir=${1:-$root/.build/ssh}
log() { printf 'ensure-sshd: %s\n' "$*" >&2; }

if [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "openssh-server is missing: install it (e.g. 'sudo apt-get install openssh-server')"
    exit 1
  fi
  log "installing openssh-server"
  "$root/scripts/apt-install.sh" openssh-server
fi

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ours_alive() { [ -s "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; }

if ours_alive && [ -f "$dir/sshd_config" ]; then
  port=$(awk '/^Port / {print $2}' "$dir/sshd_config")
elif [ -n "${TAO_TEST_SSH_PORT:-}" ]; then
  port=$TAO_TEST_SSH_PORT
else
  port=2222
  while listening "$port"; do
    port=$((port + 1))
    if [ "$port" -gt 2299 ]; then log "no free port in 2222-2299"; exit 1; fi
  done
fi

install -d -m 0700 "$dir"
[ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519"
[ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519"
cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
chmod 0600 "$dir/authorized_keys"
printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$dir/host_ed25519.pub")" >"$dir/known_hosts"

cat >"$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
CONF

cat >"$dir/config" <<CONF
Host tao-login
  HostName 127.0.0.1
  Port $port
  User root
  IdentityFile $dir/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
CONF

install -d -m 0755 /run/sshd
if ours_alive; then
  kill -HUP "$(cat "$dir/sshd.pid")"  # reread the config
else
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
fi
for _try in $(seq 1 50); do
  if ssh -F "$dir/config" tao-login true 2>/dev/null; then exit 0; fi
  sleep 0.2
done
log "sshd on 127.0.0.1:$port does not accept the test key; its log:"
tail -n 20 "$dir/sshd.log" >&2 || true
exit 1
