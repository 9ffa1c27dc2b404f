#!/usr/bin/env bash
# usage: scripts/apt-install.sh PACKAGE...
# Install Debian packages as root without starting any daemon: on machines
# without systemd, package scripts must not try to start services (a temporary
# policy-rc.d says no); the scripts that need a daemon start it themselves.
set -euo pipefail
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  printf 'apt-install: installing %s needs root on Debian; install it by hand\n' "$*" >&2
  exit 1
fi
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
