# shellcheck shell=bash
# Building blocks for images made offline with `docker import` of a folder (no registry):
# Debian's python3.11 with its standard library and shared libraries, static busybox as
# /bin/sh. Sourced by scripts/build-emulator-image.sh and scripts/build-real-server-image.sh.
# The caller defines die() and runs with `set -euo pipefail`.

# rootfs_skeleton ROOTFS [EXTRA_DIR...]: the folders, and the host's merged-/usr symlinks
# (/lib -> usr/lib...) so library paths match.
rootfs_skeleton() {
  local root=$1 dir target
  shift
  mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/local/bin" "$root/etc" "$root/tmp" \
    "$root/root" "$root/proc" "$root/sys" "$root/dev"
  for dir in "$@"; do mkdir -p "$root$dir"; done
  chmod 1777 "$root/tmp"
  for dir in bin sbin lib lib64; do
    if [ -L "/$dir" ]; then
      target="$(readlink "/$dir")"
      target="${target#/}"  # keep it relative: it must resolve inside the rootfs
      mkdir -p "$root/$target"
      ln -s "$target" "$root/$dir"
    else
      mkdir -p "$root/$dir"
    fi
  done
}

# rootfs_python ROOTFS PYTHON_BIN [STDLIB_EXCLUDE...]: the interpreter (as python3 too) and
# its standard library without the excluded parts. Sets STDLIB and DYNLOAD.
rootfs_python() {
  local root=$1 python=$2 name pattern
  shift 2
  name="$(basename "$python")"
  STDLIB="$("$python" -S -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
  DYNLOAD="$("$python" -S -c 'import sysconfig; print(sysconfig.get_config_var("DESTSHARED"))')"
  cp "$python" "$root/usr/bin/$name"
  ln -s "$name" "$root/usr/bin/python3"
  local excludes=()
  for pattern in "$@"; do excludes+=(--exclude="./$pattern"); done
  mkdir -p "$root$STDLIB"
  tar -C "$STDLIB" -c "${excludes[@]}" . | tar -C "$root$STDLIB" -x
}

# rootfs_libs ROOTFS PYTHON_BIN [MORE_SO...]: the host's shared libraries that the interpreter,
# its extension modules and MORE_SO need (plus the loader); files already in ROOTFS are skipped.
rootfs_libs() {
  local root=$1 python=$2 lib
  shift 2
  local libs=()
  mapfile -t libs < <(ldd "$python" "$DYNLOAD"/*.so "$@" 2>/dev/null \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' \
    | grep -v "^$root/" | LC_ALL=C sort -u)
  [ "${#libs[@]}" -gt 0 ] || die "ldd found no libraries for $python"
  for lib in "${libs[@]}"; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# rootfs_busybox ROOTFS BUSYBOX_BIN APPLET...: static busybox as /bin/sh and the applets,
# plus minimal passwd and group files.
rootfs_busybox() {
  local root=$1 busybox=$2 applet
  shift 2
  cp "$busybox" "$root/usr/bin/busybox"
  for applet in "$@"; do
    [ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/usr/bin/$applet"
  done
  if [ ! -e "$root/bin/sh" ]; then ln -s /usr/bin/busybox "$root/bin/sh"; fi
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}
