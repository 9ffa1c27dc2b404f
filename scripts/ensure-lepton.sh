#!/usr/bin/env bash
# Start the test DGX Cloud Lepton workspace: the stand-in API of tests/lepton/lepton_standin on
# http://127.0.0.1:<port>/api/v2/workspaces/<id>, whose deployments run on the local Docker engine.
# Idempotent: a stand-in of ours that answers with the same settings and sources is reused.
# Makes its own virtualenv (DIR/venv: leptonai's models, see tests/lepton/requirements.txt), writes
# DIR/env (mode 0600) with LEPTON_WORKSPACE_URL=, LEPTON_WORKSPACE_ID= and LEPTON_WORKSPACE_TOKEN=
# lines, and prints its path. DIR is TAO_LEPTON_DIR, default .build/lepton; the server's log is
# DIR/server.log, its pid DIR/server.pid; DIR/viewer-token is a token that may only read.
#
# usage: scripts/ensure-lepton.sh          start (or reuse) it, print the env file's path
#        scripts/ensure-lepton.sh --down   stop it; remove every container it made, its tokens, its
#                                          storage and the env file (the virtualenv stays: a cache)
#
# Environment:
#   TAO_LEPTON_PORT          API port (default 7700, or the next free one up to 7799)
#   TAO_LEPTON_WORKSPACE     workspace id (default taotestws)
#   TAO_LEPTON_NODE_GROUP    the dedicated node group's name (default tao-test-ng)
#   TAO_LEPTON_NODES         nodes in it (default 1)
#   TAO_LEPTON_GPUS          GPUs per node (default 2; accounted, never attached)
#   TAO_LEPTON_QUOTA_GPUS    the workspace's accelerator quota (default 8)
#   TAO_LEPTON_BACKOFF_CAP   cap on restart and image-pull back-off, seconds (default 10)
#   TAO_LEPTON_BASE_PYTHON   interpreter the virtualenv is made from (default python3)
#   TAO_LEPTON_VENV          the virtualenv (default DIR/venv; a second stand-in may share the first's)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
dir=${TAO_LEPTON_DIR:-$root/.build/lepton}
label=tao.lepton-standin
venv=${TAO_LEPTON_VENV:-$dir/venv}
log() { printf 'ensure-lepton: %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
server_pid() { [ -s "$dir/server.pid" ] && cat "$dir/server.pid"; }
ours_alive() {
  local pid
  pid=$(server_pid) || return 1
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m lepton_standin --state-dir $dir "
}
remove_leftovers() {
  command -v docker >/dev/null 2>&1 || return 0
  local ids
  ids=$(docker ps -aq --filter "label=$label=$dir" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one id per word
    docker rm -f $ids >/dev/null 2>&1 || true
  fi
}
stop_server() {
  local pid
  if ours_alive; then
    pid=$(server_pid)
    kill -TERM "$pid" 2>/dev/null || true
    for _try in $(seq 1 200); do
      kill -0 "$pid" 2>/dev/null || break
      [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ] || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]; then
      log "the stand-in (pid $pid) did not stop within 40 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/server.pid"
  remove_leftovers
}

if [ "${1:-}" = "--down" ]; then
  stop_server
  rm -rf "$dir/storage"
  rm -f "$dir/env" "$dir/settings" "$dir/token" "$dir/viewer-token"
  log "stopped; no container of the stand-in is left"
  exit 0
elif [ $# -gt 0 ]; then
  log "usage: $0 [--down]"
  exit 2
fi

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers: run scripts/ensure-host.sh (the stand-in runs replicas on it)"
  exit 1
fi
install -d -m 0700 "$dir"

# The virtualenv with leptonai's models, remade when tests/lepton/requirements.txt changes.
requirements=$root/tests/lepton/requirements.txt
want_venv=$(sha256sum <"$requirements" | cut -c1-16)
if [ "$(cat "$venv/.stamp" 2>/dev/null || true)" != "$want_venv" ]; then
  base=${TAO_LEPTON_BASE_PYTHON:-python3}
  command -v "$base" >/dev/null 2>&1 || base=/usr/bin/python3
  rm -rf "$venv"
  if ! "$base" -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing python3-venv"
      "$root/scripts/apt-install.sh" python3-venv
      "$base" -m venv "$venv"
    else
      log "'$base -m venv' failed: install the venv module (e.g. 'sudo apt-get install python3-venv')"
      exit 1
    fi
  fi
  log "installing leptonai's models into $venv (pip's output: $dir/venv-install.log)"
  pins=$(grep -v '^\s*#' "$requirements" | grep -v '^\s*$')
  printf '%s\n' "$pins" | grep -v '^leptonai==' >"$venv/requirements-deps.txt"
  # leptonai without its dependencies (pip then warns that they are missing: expected), then what its models need.
  if ! { "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps \
           "$(printf '%s\n' "$pins" | grep '^leptonai==')" \
         && "$venv/bin/python" -m pip install --disable-pip-version-check -r "$venv/requirements-deps.txt"; } \
       >"$dir/venv-install.log" 2>&1 \
     || ! "$venv/bin/python" -c 'import leptonai.api.v2.types.deployment, pydantic' 2>>"$dir/venv-install.log"; then
    log "the stand-in's virtualenv cannot import leptonai's models; pip said:"
    tail -n 20 "$dir/venv-install.log" >&2
    exit 1
  fi
  printf '%s\n' "$want_venv" >"$venv/.stamp"
fi
python=$venv/bin/python

sources=$(find "$root/tests/lepton/lepton_standin" -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -c1-16)
workspace=${TAO_LEPTON_WORKSPACE:-taotestws}
node_group=${TAO_LEPTON_NODE_GROUP:-tao-test-ng}
nodes=${TAO_LEPTON_NODES:-1}
gpus=${TAO_LEPTON_GPUS:-2}
quota=${TAO_LEPTON_QUOTA_GPUS:-8}
backoff_cap=${TAO_LEPTON_BACKOFF_CAP:-10}
want() { printf 'workspace=%s node_group=%s nodes=%s gpus=%s quota=%s backoff_cap=%s sources=%s venv=%s\n' \
  "$workspace" "$node_group" "$nodes" "$gpus" "$quota" "$backoff_cap" "$sources" "$want_venv"; }
check() { PYTHONPATH="$root/tests/lepton" "$python" -m lepton_standin --state-dir "$dir" --port "$1" --workspace-id "$workspace" --check; }

port=
if ours_alive && [ -f "$dir/settings" ]; then
  running_port=$(sed -n 's/^port=//p' "$dir/settings")
  if [ "$(sed -n '2p' "$dir/settings")" = "$(want)" ] && { [ -z "${TAO_LEPTON_PORT:-}" ] || [ "$TAO_LEPTON_PORT" = "$running_port" ]; } \
    && check "$running_port"; then
    port=$running_port
  else
    log "the running stand-in has other settings or sources; restarting it"
  fi
fi

for name in token viewer-token; do
  if [ ! -s "$dir/$name" ]; then
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$dir/$name")
  fi
  chmod 0600 "$dir/$name"
done

if [ -z "$port" ]; then
  stop_server
  if [ -n "${TAO_LEPTON_PORT:-}" ]; then
    port=$TAO_LEPTON_PORT
    if listening "$port"; then log "TAO_LEPTON_PORT=$port is taken"; exit 1; fi
  else
    port=7700
    while listening "$port"; do
      port=$((port + 1))
      if [ "$port" -gt 7799 ]; then log "no free port in 7700-7799"; exit 1; fi
    done
  fi
  [ ! -f "$dir/server.log" ] || mv -f "$dir/server.log" "$dir/server.log.1"
  PYTHONPATH="$root/tests/lepton" setsid "$python" -m lepton_standin --state-dir "$dir" --port "$port" \
    --workspace-id "$workspace" --node-group "$node_group" --nodes "$nodes" --gpus "$gpus" --quota-gpus "$quota" \
    --backoff-cap "$backoff_cap" --pid-file "$dir/server.pid" </dev/null >"$dir/server.log" 2>&1 &
  printf '%s\n' "$!" >"$dir/server.pid"
  printf 'port=%s\n%s\n' "$port" "$(want)" >"$dir/settings"
  started=
  for _try in $(seq 1 150); do
    if ! ours_alive; then break; fi
    if check "$port"; then
      started=1
      break
    fi
    sleep 0.2
  done
  if [ -z "$started" ]; then
    log "the stand-in did not answer on http://127.0.0.1:$port; its log:"
    tail -n 30 "$dir/server.log" >&2 || true
    stop_server
    exit 1
  fi
  log "started on http://127.0.0.1:$port/api/v2/workspaces/$workspace (pid $(server_pid)); log: $dir/server.log"
fi

(
  umask 077
  printf 'LEPTON_WORKSPACE_URL=http://127.0.0.1:%s/api/v2/workspaces/%s\nLEPTON_WORKSPACE_ID=%s\nLEPTON_WORKSPACE_TOKEN=%s\n' \
    "$port" "$workspace" "$workspace" "$(cat "$dir/token")" >"$dir/env.new"
)
chmod 0600 "$dir/env.new"
mv -f "$dir/env.new" "$dir/env"
printf '%s\n' "$dir/env"
