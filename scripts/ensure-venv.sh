#!/usr/bin/env bash
# Make (or refresh) the virtualenv with the collection's Python packages.
# usage: scripts/ensure-venv.sh PYTHON VENV
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
log() { printf 'ensure-venv: %s\n' "$*" >&2; }

if ! command -v "$python" >/dev/null 2>&1; then
  log "$python not found: install Python 3.11 or newer, or run 'make PYTHON=/path/to/python3.11 ...'"
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing python3-venv"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv "$venv"
    else
      log "'$python -m venv' failed: install the venv module (e.g. 'sudo apt-get install python3-venv')"
      exit 1
    fi
  fi
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
