#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#  - engine already reachable: nothing to do.
#  - root on Debian without an engine: install docker.io and start dockerd (no systemd needed).
#  - anything else: say what to install and fail.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  log "no Docker engine answers here. Install Docker (https://docs.docker.com/engine/install/),"
  log "start it, make sure 'docker info' works for this user, then run this again."
  exit 1
fi

if [ ! -x /usr/sbin/dockerd ]; then
  log "installing Debian's docker.io (no engine found)"
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Package scripts must not try to start daemons on a machine without systemd.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io busybox-static >/dev/null
  if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

if ! engine_up; then
  log "starting dockerd (log: /tmp/dockerd.log)"
  setsid /usr/sbin/dockerd >/tmp/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    engine_up && break
    sleep 0.5
  done
fi

if ! engine_up; then
  log "dockerd did not come up within 30 s; its log follows"
  tail -n 30 /tmp/dockerd.log >&2 || true
  exit 1
fi
