#!/usr/bin/env bash
# Build the image that runs NVIDIA's real TAO HuggingFace inference server on the CPU
# (tao-inference-real:7.3.0-cpu), with nothing but PyPI: no container registry, no model hub.
#
# The image is a `docker import` of a folder holding Debian's python3.11 (its standard
# library and the shared libraries ldd lists), static busybox as /bin/sh, a venv at
# /opt/venv with the pinned server packages installed from PyPI at build time, and a tiny
# random-weight model built here by tests/real_server/make_tiny_model.py:
#   /models/tiny-chat  a Llama model the server loads (hidden 64, 2 layers, 4 heads)
#   /models/empty      an empty folder: loading it fails, for the failure tests
# `python` on PATH is the venv's, /tmp is writable and HF_HUB_OFFLINE=1, so the
# collection's tao-dataservices command runs unchanged:
#   /bin/sh -c "umask 0 && python -m nvidia_tao_core.microservices.handlers.\
#   huggingface_inference_microservice_server --port 8080 --job '<JSON>' --docker_env_vars '<JSON>'"
#
# Nothing of NVIDIA's is in the repository: nvidia-tao-core is downloaded from PyPI when
# the image is built (its wheel says "NVIDIA Proprietary"; never vendor it).
#
# Cached: a hash of this script, tests/real_server/ (model script and constraints), the
# interpreter and busybox is stored as the image label tao.inference.real.hash; when the
# image carries the same hash nothing is built. pip's cache (download and wheel cache)
# is kept between builds. Prints one line; pip's output goes to a log shown on failure.
#
# Environment (optional):
#   TAO_REAL_IMAGE       image name (default tao-inference-real:7.3.0-cpu)
#   TAO_REAL_REBUILD=1   build even when the hash matches
#   TAO_REAL_PIP_CACHE   pip cache folder (default: pip's own, ~/.cache/pip)
#   TAO_REAL_UNPINNED=1  resolve without tests/real_server/constraints.txt (to refresh it)
#   TAO_REAL_PYTHON      interpreter to copy and build the venv with (default /usr/bin/python3.11)
#   TAO_REAL_BUSYBOX     static busybox (default /bin/busybox)
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd -P)"
ROOTFS_LIB="$REPO_ROOT/scripts/lib/rootfs.sh"
# shellcheck source=lib/rootfs.sh
. "$ROOTFS_LIB"
SUPPORT_DIR="$REPO_ROOT/tests/real_server"
MODEL_SCRIPT="$SUPPORT_DIR/make_tiny_model.py"
CONSTRAINTS="$SUPPORT_DIR/constraints.txt"
IMAGE="${TAO_REAL_IMAGE:-tao-inference-real:7.3.0-cpu}"
PYTHON_BIN="${TAO_REAL_PYTHON:-/usr/bin/python3.11}"
BUSYBOX_BIN="${TAO_REAL_BUSYBOX:-/bin/busybox}"
HASH_LABEL="tao.inference.real.hash"
VENV="/opt/venv"
MODEL_DIR="/models/tiny-chat"
EMPTY_MODEL_DIR="/models/empty"

# The server's packages, installed in this order (CONTRACT section 8). torch first: the
# CPU wheel on this machine's disk (pip's find-links) must win over PyPI's CUDA build.
STEP_TORCH=(torch==2.13.0)
STEP_TAO=(nvidia-tao-core==7.3.0)  # --no-deps: its full dependency set is huge and unused
STEP_SERVER=(Flask==3.1.1 Werkzeug==3.1.3 requests==2.32.3 ruamel.yaml==0.18.12 kubernetes==32.0.1
             orjson numpy filelock pillow transformers accelerate)
# Parts of torch the server never uses (C++ headers, C++ tests; torch/bin keeps only
# torch_shm_manager, which `import torch` needs): ~190 MB.
TORCH_PRUNE=(include test)
STDLIB_EXCLUDES=(test idlelib tkinter turtledemo lib2to3 pydoc_data "config-3.*" site-packages dist-packages)
APPLETS=(sh ash env sleep cat ls mkdir rm cp mv ln echo ps kill true false id pwd
         grep sed head tail wc tee touch chmod uname date hostname)

die() { printf 'build-real-server-image: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
[ -x "$PYTHON_BIN" ] || die "$PYTHON_BIN not found (apt-get install -y python3.11 python3.11-venv)"
[ -x "$BUSYBOX_BIN" ] || die "$BUSYBOX_BIN not found (apt-get install -y busybox-static)"
if ldd "$BUSYBOX_BIN" >/dev/null 2>&1; then
  die "$BUSYBOX_BIN is dynamically linked; install busybox-static"
fi
if ! "$PYTHON_BIN" -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian keeps ensurepip in python3.11-venv; install it where we may, else say so.
  if [ "$PYTHON_BIN" = /usr/bin/python3.11 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    "$REPO_ROOT/scripts/apt-install.sh" python3.11-venv
  fi
  "$PYTHON_BIN" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON_BIN cannot make a venv: install python3.11-venv (apt-get install -y python3.11-venv)"
fi
if [ ! -f "$MODEL_SCRIPT" ] || [ ! -f "$CONSTRAINTS" ]; then die "tests/real_server/ is incomplete"; fi

source_hash() {
  {
    printf 'script\n'; sha256sum <"$SCRIPT_PATH"
    printf 'rootfs lib\n'; sha256sum <"$ROOTFS_LIB"
    printf 'model\n'; sha256sum <"$MODEL_SCRIPT"
    printf 'constraints %s\n' "${TAO_REAL_UNPINNED:-0}"; sha256sum <"$CONSTRAINTS"
    printf 'python %s\n' "$PYTHON_BIN"; sha256sum <"$PYTHON_BIN"
    printf 'busybox\n'; sha256sum <"$BUSYBOX_BIN"
  } | sha256sum | cut -c1-64
}

image_hash() {
  docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$IMAGE" 2>/dev/null || true
}

elapsed() { awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}'; }

started=$(date +%s.%N)
HASH="$(source_hash)"

# One build of an image name at a time on this machine; the second waits, then finds the cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/tao-inference-real-build.$(printf '%s' "$IMAGE" | sha256sum | cut -c1-12).lock"
  flock -w 900 9 || die "timed out waiting for another build of $IMAGE"
fi

if [ "${TAO_REAL_REBUILD:-0}" != 1 ] && [ "$(image_hash)" = "$HASH" ]; then
  printf '%s cached (hash %s)\n' "$IMAGE" "${HASH:0:12}"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tao-real-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"
LOG="$WORK/build.log"
mkdir -p "$ROOTFS"

step() {  # step DESCRIPTION CMD...: run CMD with its output in the log; show the log on failure
  local what="$1"; shift
  printf '== %s: %s\n' "$what" "$*" >>"$LOG"
  if ! "$@" >>"$LOG" 2>&1; then
    tail -n 60 "$LOG" >&2
    case "$what" in
      pip*) die "$what failed (log above). Is PyPI reachable through pip's configuration (pip config list)?" ;;
      *) die "$what failed (log above)" ;;
    esac
  fi
}

rootfs_skeleton "$ROOTFS" /opt "$EMPTY_MODEL_DIR"
# Interpreter and standard library (ensurepip and venv stay: the venv is made with them).
rootfs_python "$ROOTFS" "$PYTHON_BIN" "${STDLIB_EXCLUDES[@]}"

# The venv, made with that interpreter where the image will have it. Its python is a
# symlink to /usr/bin/python3.11, which the image holds too.
step "make the venv" "$PYTHON_BIN" -m venv "$ROOTFS$VENV"
PIP=("$ROOTFS$VENV/bin/python" -m pip install --no-input --progress-bar off --disable-pip-version-check)
if [ -n "${TAO_REAL_PIP_CACHE:-}" ]; then PIP+=(--cache-dir "$TAO_REAL_PIP_CACHE"); fi
if [ "${TAO_REAL_UNPINNED:-0}" != 1 ]; then PIP+=(-c "$CONSTRAINTS"); fi
step "pip install ${STEP_TORCH[*]}" "${PIP[@]}" "${STEP_TORCH[@]}"
step "pip install --no-deps ${STEP_TAO[*]}" "${PIP[@]}" --no-deps "${STEP_TAO[@]}"
step "pip install the server's dependencies" "${PIP[@]}" "${STEP_SERVER[@]}"
step "check torch is a CPU build" "$ROOTFS$VENV/bin/python" -c \
  'import sys, torch; print(torch.__version__); sys.exit(1 if torch.version.cuda else 0)'
SITE="$("$ROOTFS$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for part in "${TORCH_PRUNE[@]}"; do rm -rf "${SITE:?}/torch/$part"; done
find "$SITE/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
# The server module imports (Flask, transformers, torch...), after the pruning.
step "import the server module" env HF_HUB_OFFLINE=1 "$ROOTFS$VENV/bin/python" -c \
  'import nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server'

# The tiny model, built offline with the image's own packages.
step "build the tiny model" env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$WORK/hf-home" \
  "$ROOTFS$VENV/bin/python" "$MODEL_SCRIPT" "$ROOTFS$MODEL_DIR"
chmod -R a+rX "$ROOTFS/models"
model_line="$(grep '^tiny model in' "$LOG" | tail -n 1 | sed "s|$ROOTFS||")"


# Shared libraries of the interpreter, its extension modules and every library in the
# venv, when they come from the host (the wheels bundle the rest), plus the loader.
mapfile -t SOFILES < <(find "$ROOTFS$VENV" -type f \( -name '*.so' -o -name '*.so.*' \))
rootfs_libs "$ROOTFS" "$PYTHON_BIN" "${SOFILES[@]}"
rootfs_busybox "$ROOTFS" "$BUSYBOX_BIN" "${APPLETS[@]}"

old_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
if ! new_id="$(tar -C "$ROOTFS" --numeric-owner --owner=0 --group=0 -c . | docker import \
  -c "ENV PATH=$VENV/bin:/usr/local/bin:/usr/bin:/bin" \
  -c "ENV VIRTUAL_ENV=$VENV" \
  -c "ENV HOME=/root" \
  -c "ENV HF_HUB_OFFLINE=1" \
  -c "ENV TRANSFORMERS_OFFLINE=1" \
  -c "ENV HF_HUB_DISABLE_TELEMETRY=1" \
  -c "ENV PYTHONUNBUFFERED=1" \
  -c "ENV PYTHONDONTWRITEBYTECODE=1" \
  -c "ENV PYTHONUTF8=1" \
  -c "LABEL $HASH_LABEL=$HASH" \
  -c "LABEL tao.inference.real.model=$MODEL_DIR" \
  -c "LABEL tao.inference.real.packages=nvidia-tao-core==7.3.0,torch==2.13.0" \
  -c "LABEL org.opencontainers.image.title=tao-inference-real" \
  -c "EXPOSE 8080" \
  -c "WORKDIR /" \
  -m "NVIDIA TAO HuggingFace inference server (nvidia-tao-core 7.3.0 from PyPI) on the CPU" - "$IMAGE")"; then
  die "docker import failed (is the Docker engine running? see scripts/ensure-host.sh)"
fi
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true  # still used by a container: keep it
fi

[ "$(image_hash)" = "$HASH" ] || die "imported $IMAGE but its hash label does not match"
size="$(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
printf '%s built (hash %s, %ss, %s; %s)\n' "$IMAGE" "${HASH:0:12}" "$(elapsed)" "$size" "${model_line:-no model line}"
