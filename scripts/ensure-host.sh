#!/usr/bin/env bash
# Make sure this machine can run the demo and the tests:
#  - a Docker engine that answers (as root on Debian without one: install docker.io and
#    start dockerd; no systemd needed);
#  - static busybox and Debian's python3.11, from which the reference microservice
#    image is built offline (scripts/build-emulator-image.sh).
#  - with --tests: shellcheck too, so ansible-test sanity checks the shell scripts.
# Whatever is missing and cannot be installed here is named, with what to do.
set -euo pipefail
for_tests=0
if [ "${1:-}" = --tests ]; then for_tests=1; fi

log() { printf 'ensure-host: %s\n' "$*" >&2; }
engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
is_root_debian() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

install=()
if ! engine_up && [ ! -x /usr/sbin/dockerd ]; then install+=(docker.io); fi
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then install+=(busybox-static); fi
if [ ! -x /usr/bin/python3.11 ]; then install+=(python3.11); fi
if [ "$for_tests" = 1 ] && ! command -v shellcheck >/dev/null 2>&1; then install+=(shellcheck); fi

if [ ${#install[@]} -gt 0 ]; then
  if ! is_root_debian; then
    for pkg in "${install[@]}"; do
      if [ "$pkg" = docker.io ]; then
        log "no Docker engine answers here: install Docker (https://docs.docker.com/engine/install/),"
        log "start it, and make sure 'docker info' works for this user."
      else
        log "missing $pkg: install it (e.g. 'sudo apt-get install $pkg')."
      fi
    done
    log "Then run this again."
    exit 1
  fi
  log "installing ${install[*]}"
  "$(dirname "$0")/apt-install.sh" "${install[@]}"
fi

if engine_up; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "the Docker engine does not answer: start it (e.g. 'sudo systemctl start docker'), make sure"
  log "'docker info' works for this user, then run this again."
  exit 1
fi
log "starting dockerd (log: /tmp/dockerd.log)"
setsid /usr/sbin/dockerd >/tmp/dockerd.log 2>&1 </dev/null &
for _ in $(seq 1 60); do
  engine_up && exit 0
  sleep 0.5
done
log "dockerd did not come up within 30 s; the end of its log:"
tail -n 30 /tmp/dockerd.log >&2 || true
exit 1
