#!/usr/bin/env bash
# Start the test Kubernetes cluster: the stand-in API server of tests/kubernetes/k8s_standin on
# https://127.0.0.1:<port>, one node (tao-node-0) whose pods run on the local Docker engine.
# Idempotent: a stand-in of ours that answers with the same settings and sources is reused.
# Writes DIR/kubeconfig (mode 0600; cluster, user and context "tao-test"; the CA it generated; a
# bearer token) and prints its path. DIR is TAO_K8S_DIR, default .build/kubernetes; the server's
# log is DIR/server.log, its pid DIR/server.pid.
#
# usage: scripts/ensure-kubernetes.sh          start (or reuse) it, print the kubeconfig path
#        scripts/ensure-kubernetes.sh --down   stop it; remove every container and volume it made
#
# Environment:
#   TAO_K8S_PORT         API port (default 6443, or the next free one up to 6499)
#   TAO_K8S_GPUS         nvidia.com/gpu the node advertises (default 1; accounted, never attached)
#   TAO_K8S_LB_DELAY     seconds before a LoadBalancer Service gets its 127.0.0.x address (default 1)
#   TAO_K8S_PROBE_CAP    cap on probe periods and initial delays, seconds (default 1)
#   TAO_K8S_BACKOFF_CAP  cap on restart and image-pull back-off, seconds (default 10)
#   TAO_K8S_PYTHON       interpreter with the dev requirements (default .venv/bin/python)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
dir=${TAO_K8S_DIR:-$root/.build/kubernetes}
label=tao.k8s-standin
log() { printf 'ensure-kubernetes: %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
server_pid() { [ -s "$dir/server.pid" ] && cat "$dir/server.pid"; }
ours_alive() {
  local pid
  pid=$(server_pid) || return 1
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m k8s_standin --state-dir $dir "
}
remove_leftovers() {
  command -v docker >/dev/null 2>&1 || return 0
  local ids
  ids=$(docker ps -aq --filter "label=$label=$dir" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one id per word
    docker rm -f $ids >/dev/null 2>&1 || true
  fi
  ids=$(docker volume ls -q --filter "label=$label=$dir" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    docker volume rm -f $ids >/dev/null 2>&1 || true
  fi
}
stop_server() {
  local pid
  if ours_alive; then
    pid=$(server_pid)
    kill -TERM "$pid" 2>/dev/null || true
    for _try in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "the stand-in (pid $pid) did not stop within 30 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/server.pid"
  remove_leftovers
}

if [ "${1:-}" = "--down" ]; then
  stop_server
  rm -f "$dir/kubeconfig" "$dir/settings"
  log "stopped; no container or volume of the stand-in is left"
  exit 0
elif [ $# -gt 0 ]; then
  log "usage: $0 [--down]"
  exit 2
fi

python=${TAO_K8S_PYTHON:-$root/.venv/bin/python}
if ! "$python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  log "$python lacks the dev requirements (kubernetes-validate): run 'make venv' or set TAO_K8S_PYTHON"
  exit 1
fi
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers: run scripts/ensure-host.sh (the stand-in runs pods on it)"
  exit 1
fi
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "openssl is missing: install it (e.g. 'sudo apt-get install openssl')"
    exit 1
  fi
  log "installing openssl"
  "$root/scripts/apt-install.sh" openssl
fi

install -d -m 0700 "$dir"
sources=$(find "$root/tests/kubernetes/k8s_standin" -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -c1-16)
gpus=${TAO_K8S_GPUS:-1}
lb_delay=${TAO_K8S_LB_DELAY:-1}
probe_cap=${TAO_K8S_PROBE_CAP:-1}
backoff_cap=${TAO_K8S_BACKOFF_CAP:-10}
want() { printf 'gpus=%s lb_delay=%s probe_cap=%s backoff_cap=%s sources=%s\n' \
  "$gpus" "$lb_delay" "$probe_cap" "$backoff_cap" "$sources"; }

port=
if ours_alive && [ -f "$dir/settings" ]; then
  running_port=$(sed -n 's/^port=//p' "$dir/settings")
  if [ "$(sed -n '2p' "$dir/settings")" = "$(want)" ] && { [ -z "${TAO_K8S_PORT:-}" ] || [ "$TAO_K8S_PORT" = "$running_port" ]; } \
    && PYTHONPATH="$root/tests/kubernetes" "$python" -m k8s_standin --state-dir "$dir" --port "$running_port" --check; then
    port=$running_port
  else
    log "the running stand-in has other settings or sources; restarting it"
  fi
fi

# Certificates: a CA, and a server certificate for 127.0.0.1 and localhost signed by it.
if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=tao-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  rm -f "$dir/server.crt"
fi
if [ ! -s "$dir/server.crt" ] || [ ! -s "$dir/server.key" ]; then
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=tao-test-apiserver" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >"$dir/server.ext"
  openssl x509 -req -sha256 -days 3650 -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" -extfile "$dir/server.ext" \
    -out "$dir/server.crt" 2>/dev/null
  rm -f "$dir/server.csr" "$dir/server.ext"
fi
chmod 0600 "$dir/ca.key" "$dir/server.key"
if [ ! -s "$dir/token" ]; then
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$dir/token")
fi

if [ -z "$port" ]; then
  stop_server
  if [ -n "${TAO_K8S_PORT:-}" ]; then
    port=$TAO_K8S_PORT
    if listening "$port"; then log "TAO_K8S_PORT=$port is taken"; exit 1; fi
  else
    port=6443
    while listening "$port"; do
      port=$((port + 1))
      if [ "$port" -gt 6499 ]; then log "no free port in 6443-6499"; exit 1; fi
    done
  fi
  [ ! -f "$dir/server.log" ] || mv -f "$dir/server.log" "$dir/server.log.1"
  PYTHONPATH="$root/tests/kubernetes${PYTHONPATH:+:$PYTHONPATH}" setsid "$python" -m k8s_standin --state-dir "$dir" \
    --port "$port" --gpus "$gpus" --lb-delay "$lb_delay" --probe-cap "$probe_cap" --backoff-cap "$backoff_cap" \
    --pid-file "$dir/server.pid" </dev/null >"$dir/server.log" 2>&1 &
  printf '%s\n' "$!" >"$dir/server.pid"
  printf 'port=%s\n%s\n' "$port" "$(want)" >"$dir/settings"
  started=
  for _try in $(seq 1 150); do
    if ! ours_alive; then break; fi
    if PYTHONPATH="$root/tests/kubernetes" "$python" -m k8s_standin --state-dir "$dir" --port "$port" --check; then
      started=1
      break
    fi
    sleep 0.2
  done
  if [ -z "$started" ]; then
    log "the stand-in did not answer on https://127.0.0.1:$port; its log:"
    tail -n 30 "$dir/server.log" >&2 || true
    stop_server
    exit 1
  fi
  log "started on https://127.0.0.1:$port (pid $(server_pid), $gpus GPU(s)); log: $dir/server.log"
fi

ca_data=$(base64 -w0 <"$dir/ca.crt")
token=$(cat "$dir/token")
(
  umask 077
  cat >"$dir/kubeconfig.new" <<CONF
apiVersion: v1
kind: Config
clusters:
- name: tao-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $ca_data
users:
- name: tao-test
  user:
    token: $token
contexts:
- name: tao-test
  context:
    cluster: tao-test
    user: tao-test
    namespace: default
current-context: tao-test
preferences: {}
CONF
)
chmod 0600 "$dir/kubeconfig.new"
mv -f "$dir/kubeconfig.new" "$dir/kubeconfig"
printf '%s\n' "$dir/kubeconfig"
