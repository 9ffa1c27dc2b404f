#!/usr/bin/env bash
# Build the reference microservice image (tao-inference-emulator:latest) offline.
#
# No registry is needed: the image is a `docker import` of a folder holding
# Debian's python3.11 with its standard library and the shared libraries it
# links, static busybox for /bin/sh and a few applets, bash (TAO images have it, and
# the Kubernetes Job runs the inner command with /bin/bash -c), and the emulator
# sources from tests/emulator/ on PYTHONPATH.
#
# Cached: a hash of the emulator sources, this script, the interpreter and
# busybox is stored as the image label tao.inference.emulator.hash; when the
# existing image carries the same hash nothing is built.  Prints one line.
#
# Environment (optional):
#   TAO_EMULATOR_IMAGE   image name (default tao-inference-emulator:latest)
#   TAO_EMULATOR_PYTHON  interpreter to copy (default /usr/bin/python3.11)
#   TAO_EMULATOR_BUSYBOX static busybox to copy (default /bin/busybox)
#   TAO_EMULATOR_REBUILD=1  build even when the hash matches
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd -P)"
EMULATOR_DIR="$REPO_ROOT/tests/emulator"
ROOTFS_LIB="$REPO_ROOT/scripts/lib/rootfs.sh"
# shellcheck source=lib/rootfs.sh
. "$ROOTFS_LIB"
IMAGE="${TAO_EMULATOR_IMAGE:-tao-inference-emulator:latest}"
PYTHON_BIN="${TAO_EMULATOR_PYTHON:-/usr/bin/python3.11}"
BUSYBOX_BIN="${TAO_EMULATOR_BUSYBOX:-/bin/busybox}"
BASH_BIN="$(readlink -f /bin/bash)"
HASH_LABEL="tao.inference.emulator.hash"
APP_DIR="/opt/tao-emulator"
# Standard library parts the server never needs.
STDLIB_EXCLUDES=(test idlelib tkinter turtledemo ensurepip lib2to3 pydoc_data distutils
                 "config-3.*" site-packages dist-packages)
APPLETS=(sh ash env sleep cat ls mkdir rm cp mv ln echo ps kill true false id pwd
         grep sed head tail wc tee touch chmod uname date hostname wget nc)

die() { printf 'build-emulator-image: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
[ -x "$PYTHON_BIN" ] || die "$PYTHON_BIN not found (apt-get install -y python3.11)"
[ -x "$BUSYBOX_BIN" ] || die "$BUSYBOX_BIN not found (apt-get install -y busybox-static)"
if ldd "$BUSYBOX_BIN" >/dev/null 2>&1; then
  die "$BUSYBOX_BIN is dynamically linked; install busybox-static"
fi
[ -d "$EMULATOR_DIR/tao_emulator" ] || die "emulator sources not found under $EMULATOR_DIR"

# Emulator files, relative to tests/emulator, in a stable order.
mapfile -t SOURCES < <(cd "$EMULATOR_DIR" && find . -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' \
  | LC_ALL=C sort)

source_hash() {
  {
    for rel in "${SOURCES[@]}"; do
      printf '%s\n' "$rel"
      sha256sum <"$EMULATOR_DIR/$rel"
    done
    printf 'script\n'; sha256sum <"$SCRIPT_PATH"
    printf 'rootfs lib\n'; sha256sum <"$ROOTFS_LIB"
    printf 'python %s\n' "$PYTHON_BIN"; sha256sum <"$PYTHON_BIN"
    printf 'busybox\n'; sha256sum <"$BUSYBOX_BIN"
    printf 'bash\n'; sha256sum <"$BASH_BIN"
  } | sha256sum | cut -c1-64
}

image_hash() {
  docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$IMAGE" 2>/dev/null || true
}

started=$(date +%s.%N)
HASH="$(source_hash)"

# One build at a time on this machine; the second waits, then finds the cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${TMPDIR:-/tmp}/tao-inference-emulator-build.lock"
  flock -w 300 9 || die "timed out waiting for another build"
fi

if [ "${TAO_EMULATOR_REBUILD:-0}" != 1 ] && [ "$(image_hash)" = "$HASH" ]; then
  printf '%s cached (hash %s)\n' "$IMAGE" "${HASH:0:12}"
  exit 0
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/tao-emulator-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT

rootfs_skeleton "$ROOTFS"
rootfs_python "$ROOTFS" "$PYTHON_BIN" "${STDLIB_EXCLUDES[@]}"
ln -s "/usr/bin/$(basename "$PYTHON_BIN")" "$ROOTFS/usr/local/bin/python3"
ln -s "/usr/bin/$(basename "$PYTHON_BIN")" "$ROOTFS/usr/local/bin/python"
cp "$BASH_BIN" "$ROOTFS/usr/bin/bash"
rootfs_libs "$ROOTFS" "$PYTHON_BIN" "$BASH_BIN"
rootfs_busybox "$ROOTFS" "$BUSYBOX_BIN" "${APPLETS[@]}"

# The emulator itself.
mkdir -p "$ROOTFS$APP_DIR"
for rel in "${SOURCES[@]}"; do
  mkdir -p "$ROOTFS$APP_DIR/$(dirname "$rel")"
  cp "$EMULATOR_DIR/$rel" "$ROOTFS$APP_DIR/$rel"
done
chmod 0755 "$ROOTFS$APP_DIR"/bin/*

old_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
if ! new_id="$(tar -C "$ROOTFS" --numeric-owner --owner=0 --group=0 -c . | docker import \
  -c "ENV PATH=$APP_DIR/bin:/usr/local/bin:/usr/bin:/bin" \
  -c "ENV PYTHONPATH=$APP_DIR" \
  -c "ENV PYTHONUNBUFFERED=1" \
  -c "ENV PYTHONDONTWRITEBYTECODE=1" \
  -c "ENV PYTHONUTF8=1" \
  -c "LABEL $HASH_LABEL=$HASH" \
  -c "LABEL org.opencontainers.image.title=tao-inference-emulator" \
  -c "EXPOSE 8080" \
  -c "WORKDIR /" \
  -m "tao-inference reference microservice" - "$IMAGE")"; then
  die "docker import failed (is the Docker engine running? see scripts/ensure-docker.sh)"
fi
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true  # still used by a container: keep it
fi

[ "$(image_hash)" = "$HASH" ] || die "imported $IMAGE but its hash label does not match"
elapsed=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
printf '%s built (hash %s, %ss)\n' "$IMAGE" "${HASH:0:12}" "$elapsed"
