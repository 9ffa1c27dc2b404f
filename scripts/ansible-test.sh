#!/usr/bin/env bash
# Run ansible-test against this collection, offline-capable.
#
# Usage: scripts/ansible-test.sh <ansible-test args...>
#   e.g. scripts/ansible-test.sh sanity -v --venv --python 3.11
#        scripts/ansible-test.sh units -v --venv --python 3.11
#
# What it does:
#  1. Installs a small get-pip stand-in at ansible-test's cache path
#     (~/.ansible/test/cache/get_pip_<ver>.py). ansible-test bootstraps pip in every venv it makes
#     by downloading get-pip.py from a host this machine cannot reach; the stand-in uses the
#     interpreter's bundled ensurepip instead, then pip-installs the requested packages from the
#     package index configured in the machine's pip config files (/etc/pip.conf, /etc/xdg/pip).
#  2. Copies the collection (files git tracks + untracked files that are not ignored) to
#     <repo>/.build/ansible_collections/tao/inference/, a real directory as ansible-test needs.
#     Files removed from the repo are removed from the copy; tests/output/ in the copy is kept
#     between runs (it holds ansible-test's delegation venv, so warm runs are fast).
#  3. Runs the venv's ansible-test there with the given arguments; its exit code is ours.
#
# Environment:
#  REPO  collection root to test (default: the parent of this script's directory)
#  VENV  virtualenv holding ansible-core/ansible-test (default: $REPO/.venv)
#  BUILD_ROOT  where the copy goes (default: $REPO/.build); scripts/matrix.sh gives each
#        ansible-core version its own, so their tests/output/ never mix
set -euo pipefail

log() { printf 'ansible-test.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=${REPO:-$(dirname -- "$script_dir")}
REPO=$(cd -- "$REPO" && pwd -P) || die "REPO directory not found: ${REPO}"
VENV=${VENV:-$REPO/.venv}
VENV=$(cd -- "$VENV" 2>/dev/null && pwd -P) || die "no virtualenv at ${VENV}"

COLLECTION_NAMESPACE=tao
COLLECTION_NAME=inference
BUILD_ROOT=${BUILD_ROOT:-$REPO/.build}
DEST=$BUILD_ROOT/ansible_collections/$COLLECTION_NAMESPACE/$COLLECTION_NAME

ANSIBLE_TEST=$VENV/bin/ansible-test
VENV_PYTHON=$VENV/bin/python
[ -x "$ANSIBLE_TEST" ] || die "no ansible-test at $ANSIBLE_TEST (create the venv: python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt, or set VENV)"
[ -x "$VENV_PYTHON" ] || die "no python at $VENV_PYTHON"
command -v git >/dev/null 2>&1 || die "git is required"
git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$REPO is not a git work tree"
[ -f "$REPO/galaxy.yml" ] || die "$REPO/galaxy.yml not found: REPO must be the collection root"

# ---------------------------------------------------------------------------------------------
# 1. get-pip stand-in at ansible-test's cache path
# ---------------------------------------------------------------------------------------------
install_get_pip_shim() {
  local at_dir versions version cache_dir target tmp
  at_dir=$("$VENV_PYTHON" -c 'import os, ansible_test; print(os.path.dirname(ansible_test.__file__))') \
    || die "cannot import ansible_test from $VENV_PYTHON"
  # ansible-test 2.19: get_venv_packages() in _internal/python_requirements.py has
  # default_packages = dict(pip='24.2') (plus per-Python overrides, none at present);
  # _util/target/setup/requirements.py looks for ~/.ansible/test/cache/get_pip_<ver with _>.py.
  versions=$(sed -n -E "s/.*\\bpip['\"]?[[:space:]]*[=:][[:space:]]*['\"]([0-9][0-9a-z.]*)['\"].*/\\1/p" \
    "$at_dir/_internal/python_requirements.py" | sort -u)
  [ -n "$versions" ] || die "cannot find the pip version ansible-test bootstraps in $at_dir/_internal/python_requirements.py"
  grep -q "get_pip_%s.py" "$at_dir/_util/target/setup/requirements.py" \
    || die "ansible-test no longer uses ~/.ansible/test/cache/get_pip_<ver>.py; update $0"

  cache_dir=$HOME/.ansible/test/cache
  mkdir -p "$cache_dir"
  tmp=$(mktemp "$cache_dir/.get_pip_shim.XXXXXX")
  cat >"$tmp" <<'PYEOF'
"""Offline stand-in for get-pip.py, installed by the collection's scripts/ansible-test.sh.

ansible-test runs this (through its quiet_pip.py wrapper) in a fresh venv made without pip,
with pip options and pinned packages as arguments (e.g. --disable-pip-version-check pip==24.2
--no-setuptools --no-wheel). The real get-pip.py comes from a host this machine cannot reach.
"""
import ensurepip
import os
import re
import subprocess
import sys

GET_PIP_ONLY = ('--no-setuptools', '--no-wheel')

args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]

# pip from the interpreter's bundled wheels: no network needed.
ensurepip.bootstrap()

# ensurepip sets PIP_CONFIG_FILE=/dev/null, which would hide the machine's pip config
# (index URL, CA bundle, constraints) from the pip run below.
os.environ.pop('PIP_CONFIG_FILE', None)

rc = subprocess.call([sys.executable, '-m', 'pip', 'install'] + args)
if rc:
    sys.exit(rc)

# get-pip.py --no-setuptools installs no setuptools; Python 3.11's ensurepip does. Match get-pip.
requested = {re.split(r'[<>=!~;\[ ]', arg, maxsplit=1)[0].lower() for arg in args if not arg.startswith('-')}
if '--no-setuptools' in sys.argv[1:] and 'setuptools' not in requested:
    probe = subprocess.call([sys.executable, '-m', 'pip', 'show', '-q', 'setuptools'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe == 0:
        rc = subprocess.call([sys.executable, '-m', 'pip', 'uninstall', '-y', '-q',
                              '--disable-pip-version-check', 'setuptools'])
sys.exit(rc)
PYEOF
  for version in $versions; do
    target=$cache_dir/get_pip_${version//./_}.py
    if ! cmp -s "$tmp" "$target"; then
      cp "$tmp" "$target.new" && mv -f "$target.new" "$target"
      log "installed get-pip stand-in: $target"
    fi
  done
  rm -f "$tmp"
}

# ---------------------------------------------------------------------------------------------
# 2. collection copy at .build/ansible_collections/<ns>/<name>
# ---------------------------------------------------------------------------------------------
# Paths never copied (build dir, venvs, ansible-test output), even if .gitignore misses them.
is_excluded() {
  case $1 in
    .git|.git/*|.build|.build/*|.venv|.venv/*|tests/output|tests/output/*) return 0 ;;
    */__pycache__/*|__pycache__/*|*.pyc|*.pyo) return 0 ;;
  esac
  return 1
}

sync_collection() {
  local src_list dest_list stale path
  src_list=$(mktemp) dest_list=$(mktemp) stale=$(mktemp)

  # Files git tracks plus untracked-but-not-ignored ones, as they are in the work tree now
  # (tracked files deleted from the work tree are skipped; directories such as submodules too).
  git -C "$REPO" ls-files -z -c -o --exclude-standard \
    | while IFS= read -r -d '' path; do
        is_excluded "$path" && continue
        if [ -L "$REPO/$path" ] || [ -f "$REPO/$path" ]; then
          printf '%s\0' "$path"
        fi
      done | sort -z -u >"$src_list"

  mkdir -p "$DEST"

  # Remove what the previous copy had and the repo no longer has (tests/output/ is kept).
  (cd "$DEST" && find . \( -path ./tests/output -prune \) -o \( -type f -o -type l \) -print0) \
    | sed -z 's|^\./||' | sort -z -u >"$dest_list"
  comm -z -23 "$dest_list" "$src_list" >"$stale"
  if [ -s "$stale" ]; then
    (cd "$DEST" && xargs -0 rm -f -- <"$stale")
  fi
  find "$DEST" -mindepth 1 -depth -type d -empty \
    -not -path "$DEST/tests/output" -not -path "$DEST/tests/output/*" -delete

  # Copy (modes and times kept; symlinks copied as symlinks). The old copies are removed first:
  # every file is then created fresh, and GNU cp 9.1 (Debian 12) has a bug where
  # `cp --parents` fails with "cannot create regular file ...: File exists" on an existing
  # destination once it has had to create a parent directory in the same run.
  if [ -s "$src_list" ]; then
    (cd "$DEST" && xargs -0 rm -f -- <"$src_list")
    (cd "$REPO" && xargs -0 cp -P --preserve=mode,timestamps --parents -t "$DEST" -- <"$src_list")
  fi
  rm -f "$src_list" "$dest_list" "$stale"
}

install_get_pip_shim

mkdir -p "$BUILD_ROOT"
# One run per build dir at a time: the copy and tests/output/ are shared. The lock is held by
# ansible-test (exec below inherits fd 9) until it exits.
exec 9>"$BUILD_ROOT/.lock"
if ! flock -n 9; then
  log "another scripts/ansible-test.sh run holds $BUILD_ROOT/.lock; waiting for it"
  flock 9
fi

sync_collection

# ---------------------------------------------------------------------------------------------
# 3. run ansible-test from the copy
# ---------------------------------------------------------------------------------------------
cd "$DEST"
# Pin the content root to the copy. Otherwise ansible-test walks up from the cwd looking for a
# .git directory, finds the repo's own (.build/ is inside it, and git-ignored), asks git for the
# files under .build/... and gets none: every command then ends with "All targets skipped".
# With the root given, no .git there, it lists the copy's files itself (skipping tests/output/).
# ansible-test sets this same variable when it delegates to its own venv.
export ANSIBLE_TEST_CONTENT_ROOT=$DEST
exec "$ANSIBLE_TEST" "$@"
