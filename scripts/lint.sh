#!/usr/bin/env bash
# Run ansible-lint (production profile) over the collection, offline.
#
# Usage: scripts/lint.sh [extra ansible-lint args...]
#
# Offline: --offline (also `offline: true` in .ansible-lint) stops ansible-lint from installing
# requirements.yml collections/roles, from refreshing its JSON schemas and from checking PyPI
# for a newer ansible-lint; ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1 says the same for the schemas.
#
# Environment:
#  REPO  collection root to lint (default: the parent of this script's directory)
#  VENV  virtualenv holding ansible-lint (default: $REPO/.venv)
set -euo pipefail

log() { printf 'lint.sh: %s\n' "$*" >&2; }

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=${REPO:-$(dirname -- "$script_dir")}
REPO=$(cd -- "$REPO" && pwd -P)
VENV=${VENV:-$REPO/.venv}
VENV=$(cd -- "$VENV" 2>/dev/null && pwd -P) || { log "no venv at ${VENV}"; exit 2; }

if [ ! -x "$VENV/bin/ansible-lint" ]; then
  log "no ansible-lint at $VENV/bin/ansible-lint (create the venv: python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt, or set VENV)"
  exit 2
fi

# ansible-lint runs ansible-playbook/ansible-galaxy from PATH: use the venv's.
export PATH="$VENV/bin:$PATH"
export ANSIBLE_LINT_SKIP_SCHEMA_UPDATE=1

# Offline, ansible-lint does not install the collection it lints (that install is part of what
# --offline turns off), so playbooks and roles calling tao.inference.* would fail syntax-check
# with "couldn't resolve module/action" and "role not found". Do what its online mode does, by
# hand: a symlink <cache>/collections/ansible_collections/tao/inference -> the live repo.
# The cache is an ANSIBLE_HOME of our own (offline, ansible-lint uses ANSIBLE_HOME as its cache
# and puts its collections/ first), outside the repo so no symlink loop appears in the work
# tree, and so that a tao.inference installed in ~/.ansible/collections cannot shadow the repo.
user_collections=${ANSIBLE_COLLECTIONS_PATH:-${ANSIBLE_HOME:-$HOME/.ansible}/collections:/usr/share/ansible/collections}
user_roles=${ANSIBLE_ROLES_PATH:-${ANSIBLE_HOME:-$HOME/.ansible}/roles:/usr/share/ansible/roles:/etc/ansible/roles}
repo_key=$(printf '%s' "$REPO" | cksum | cut -d' ' -f1)
ANSIBLE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/tao.inference-lint/$repo_key
export ANSIBLE_HOME
link=$ANSIBLE_HOME/collections/ansible_collections/tao/inference
mkdir -p "$(dirname -- "$link")" "$ANSIBLE_HOME/roles"
if [ "$(readlink -- "$link" 2>/dev/null)" != "$REPO" ]; then
  ln -sfn -- "$REPO" "$link"
fi
export ANSIBLE_COLLECTIONS_PATH="$ANSIBLE_HOME/collections:$user_collections"
export ANSIBLE_ROLES_PATH="$ANSIBLE_HOME/roles:$user_roles"

# From the repo root so ansible-lint picks up $REPO/.ansible-lint and auto-detects the content.
cd "$REPO"
exec ansible-lint --profile production --offline "$@"
