#!/usr/bin/env bash
# Test the ansible-core releases meta/runtime.yml claims, each on a Python it supports.
#
# usage: scripts/matrix.sh [STEP...]        STEP: venv units sanity integration (default: all four)
#   MATRIX_VERSIONS="2.17 2.21" scripts/matrix.sh units    only those versions
#
# The main virtualenv (.venv, ansible-core 2.19 on python3) runs the whole suite in `make test`;
# this script covers the other releases:
#   units        tests/unit, on every version
#   sanity       ansible-test sanity (empty ignore files), on every version
#   integration  on the oldest and the newest version: the shipped playbooks through
#                ansible-playbook (tests/integration/test_playbooks.py) and the collection
#                built, installed from its tarball into an empty path and its demo run from
#                there (tests/integration/test_install.py)
# Each version has its own virtualenv (ansible-core==<version>.* plus requirements-test.txt) and
# its own ansible-test copy, kept in $TAO_MATRIX_CACHE (default ~/.cache/tao.inference-matrix/<version>)
# so that a fresh clone on the same machine reuses them; a virtualenv is remade when the
# requirements change. Logs go to .build/matrix/<version>/<step>.log; each leg prints its time.
# Sanity runs two versions at a time while the units of each version run one after another
# beside it (they bind ports, sanity does not); the integration legs run last, one at a time.

# The run_* functions are called through each() by name.
# shellcheck disable=SC2317
set -euo pipefail

log() { printf 'matrix: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

cd "$(dirname -- "$0")/.."
ROOT=$(pwd -P)
CACHE=${TAO_MATRIX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tao.inference-matrix}

# version:python. The oldest and the newest are the first and the last. 2.19 is the main .venv.
MATRIX="2.17:3.11 2.18:3.12 2.20:3.12 2.21:3.13"
OLDEST=2.17
NEWEST=2.21
JOBS=${MATRIX_JOBS:-2}

python_of() {
  local entry
  for entry in $MATRIX; do
    [ "${entry%%:*}" = "$1" ] && { printf '%s\n' "${entry#*:}"; return 0; }
  done
  die "ansible-core $1 is not in the matrix ($MATRIX)"
}

versions=()
if [ -n "${MATRIX_VERSIONS:-}" ]; then
  read -r -a versions <<<"$MATRIX_VERSIONS"
else
  for entry in $MATRIX; do versions+=("${entry%%:*}"); done
fi
for ver in "${versions[@]}"; do python_of "$ver" >/dev/null; done

# A runnable interpreter for Python X.Y: python X.Y on PATH (not a pyenv shim that cannot run it),
# else the newest pyenv build of it.
find_python() {
  local want=$1 candidate found=
  candidate=$(command -v "python$want" 2>/dev/null || true)
  if [ -n "$candidate" ] && "$candidate" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    found=$("$candidate" -c 'import sys; print(sys.executable)')
  fi
  if [ -z "$found" ]; then
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python"$want"; do
      [ -x "$candidate" ] && "$candidate" -c 'import ensurepip, venv' >/dev/null 2>&1 && found=$candidate
    done
  fi
  [ -n "$found" ] || die "no runnable python$want (with venv and ensurepip): install Python $want \
(e.g. 'pyenv install $want' or 'apt-get install python$want-venv'), or leave that version out with MATRIX_VERSIONS"
  printf '%s\n' "$found"
}

venv_of() { printf '%s\n' "$CACHE/$1/venv"; }

ensure_venv() {
  local ver=$1 py venv want
  py=$(find_python "$(python_of "$ver")")
  venv=$(venv_of "$ver")
  mkdir -p "$CACHE/$ver"
  want=$(cat requirements.txt requirements-test.txt | sha256sum | cut -c1-16)" ansible-core==$ver.* $py"
  (
    flock 9
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$want" ]; then
      exit 0
    fi
    rm -rf "$venv"
    log "ansible-core $ver: making $venv with $py"
    "$py" -m venv "$venv"
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "ansible-core==$ver.*" -r requirements-test.txt >"$CACHE/$ver/pip.log" 2>&1; then
      grep -v '^WARNING: Location' "$CACHE/$ver/pip.log" | tail -n 20 >&2
      die "ansible-core $ver: pip install failed (log: $CACHE/$ver/pip.log)"
    fi
    printf '%s\n' "$want" >"$venv/.stamp"
    log "ansible-core $ver: $("$venv/bin/python" -c 'import ansible.release as r; print(r.__version__)') \
on $("$venv/bin/python" -V)"
  ) 9>"$CACHE/$ver/venv.lock"
}

# Runs "$@" with its output in .build/matrix/<ver>/<step>.log; prints one line with the time.
leg() {
  local ver=$1 step=$2 start rc=0 logf
  shift 2
  logf=$ROOT/.build/matrix/$ver/$step.log
  mkdir -p "$(dirname -- "$logf")"
  start=$(date +%s)
  "$@" >"$logf" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    log "ansible-core $ver $step: ok in $(( $(date +%s) - start )) s ($(tail -n1 "$logf"))"
  else
    log "ansible-core $ver $step: FAILED (exit $rc) in $(( $(date +%s) - start )) s; the end of $logf:"
    grep -v '^WARNING: ' "$logf" | tail -n 40 >&2
  fi
  return "$rc"
}

run_venv() { ensure_venv "$1"; }

run_units() {
  local ver=$1
  leg "$ver" units "$(venv_of "$ver")/bin/pytest" -q tests/unit
}

run_sanity() {
  local ver=$1 py pydir
  py=$(find_python "$(python_of "$ver")")
  pydir=$(dirname -- "$py")
  # ansible-test finds pythonX.Y on PATH: the real one first, not a pyenv shim.
  leg "$ver" sanity env PATH="$pydir:$PATH" VENV="$(venv_of "$ver")" BUILD_ROOT="$CACHE/$ver/build" \
    scripts/ansible-test.sh sanity --venv --python "$(python_of "$ver")"
}

run_integration() {
  local ver=$1
  leg "$ver" integration "$(venv_of "$ver")/bin/pytest" -q \
    tests/integration/test_playbooks.py tests/integration/test_install.py
}

# Runs STEP for each version given, JOBS at a time; fails when any failed.
each() {
  local step=$1 jobs=$2 ver pids=() failed=0 pid
  shift 2
  for ver in "$@"; do
    "$step" "$ver" &
    pids+=("$!")
    if [ "${#pids[@]}" -ge "$jobs" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return "$failed"
}

want() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(venv units sanity integration)
for step in "${steps[@]}"; do
  case $step in venv|units|sanity|integration) ;; *) die "unknown step '$step' (venv, units, sanity, integration)" ;; esac
done

started=$(date +%s)
status=0
# Virtualenvs first (units, sanity and integration need them), all at once.
each run_venv 4 "${versions[@]}" || exit 1
if want units && want sanity; then
  each run_units 1 "${versions[@]}" &
  units_pid=$!
  each run_sanity "$JOBS" "${versions[@]}" || status=1
  wait "$units_pid" || status=1
elif want units; then
  each run_units 1 "${versions[@]}" || status=1
elif want sanity; then
  each run_sanity "$JOBS" "${versions[@]}" || status=1
fi
if want integration; then
  for ver in "${versions[@]}"; do
    case $ver in "$OLDEST"|"$NEWEST") run_integration "$ver" || status=1 ;; esac
  done
fi
log "ansible-core ${versions[*]}: $([ "$status" = 0 ] && echo ok || echo FAILED) in $(( $(date +%s) - started )) s"
exit "$status"
