#!/usr/bin/env bash
# Test hosts that really are separate, on this machine, for the fleet tests (tests/hosts/fleet.py says what each
# host is): N network namespaces on veths (<net>.<i>.2; net 10.198, else the first free one of 10.197..10.190,
# kept in DIR/net), each with its own hostname, home, /tmp and /run (a mount namespace), its own dockerd with the
# reference image loaded, and its own sshd on port 22.
# Writes DIR/inventory.ini (group gpu) and prints its path. Idempotent: hosts already up are left as they are;
# namespaces left by a removed DIR (a checkout cloned again at the same path) are made again.
# DIR is TAO_FLEET_DIR, default .build/fleet; TAO_FLEET_NET, TAO_FLEET_NAME, TAO_FLEET_PYTHON (the modules'
# interpreter, default .venv/bin/python) and TAO_FLEET_IMAGES change the rest. Needs root.
#
# usage: scripts/ensure-fleet.sh N          hosts 1..N up (others already up stay), the inventory lists 1..N
#        scripts/ensure-fleet.sh --status   one line per host
#        scripts/ensure-fleet.sh --down     remove every host by pid: sshd, dockerd, namespaces, veths, mounts, DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
log() { printf 'ensure-fleet: %s\n' "$*" >&2; }

case "${1:-}" in
  --down) action=(down) ;;
  --status) action=(status) ;;
  '' | -*) log "usage: $0 N | --status | --down"; exit 2 ;;
  *) action=(up "$1") ;;
esac
if [ $# -gt 1 ]; then
  log "usage: $0 N | --status | --down"
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  log "the test hosts need root (network, mount and UTS namespaces, dockerd): run it as root"
  exit 1
fi
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3)

if [ "${action[0]}" = up ]; then
  missing=()
  for tool in ip nsenter unshare dockerd docker ssh-keygen; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ -x "${TAO_FLEET_SSHD:-/usr/sbin/sshd}" ] || missing+=(sshd)
  if [ ${#missing[@]} -gt 0 ]; then
    log "missing: ${missing[*]} (make host installs Docker; apt-get install openssh-server iproute2 util-linux)"
    exit 1
  fi
  docker info >/dev/null 2>&1 || "$root/scripts/ensure-host.sh" >&2
  if [ -z "${TAO_FLEET_IMAGES:-}" ] && ! docker image inspect tao-inference-emulator:latest >/dev/null 2>&1; then
    "$root/scripts/build-emulator-image.sh" >&2
  fi
fi

exec "$python" -I -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from hosts.fleet import main; sys.exit(main(sys.argv[1:]))' \
  "$root/tests" "${action[@]}"
