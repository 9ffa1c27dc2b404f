# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is the registry on a path that vanishes with the container running the module?

An AWX / Automation Platform job (or ansible-runner with an execution environment) runs the play in a
container that is removed when the job ends. A registry written to that container's own root
filesystem, to a tmpfs, to ansible-runner's private data folder (``/runner``, the EE's home) or to a
Kubernetes ``emptyDir`` is gone with it, and with it the only record of the services, Slurm jobs and
forwards the job started: the next job can neither find nor stop them. This module only reads
(``/proc/self/mountinfo``, marker files, the environment) and says why; the caller warns.
"""

import os

# Filesystems a container engine gives a container as its root (its writable layer).
CONTAINER_ROOT_FS = ("overlay", "aufs", "fuse.fuse-overlayfs", "vfs")
# Filesystems that live in memory.
MEMORY_FS = ("tmpfs", "ramfs")
# /proc/self/cgroup paths of a process in a container.
CGROUP_MARKERS = ("docker", "kubepods", "containerd", "libpod", "lxc", "buildkit", "garden")
RUNNER_ENV = ("AWX_ISOLATED_DATA_DIR", "LAUNCHED_BY_RUNNER")


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _unescape(field):
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and all(c in "01234567" for c in field[i + 1:i + 4]):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text):
    """``[(mount_point, root, fstype, source)]`` in the order of ``/proc/self/mountinfo``."""
    mounts = []
    for line in (text or "").splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 3:
            continue
        mounts.append((_unescape(fields[4]), _unescape(fields[3]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def mount_of(path, mounts):
    """The mount holding ``path`` (absolute, symlinks resolved): the longest mount point above it,
    the last one mounted where several share a point."""
    best = None
    for mount in mounts:
        point = mount[0]
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best[0]):
                best = mount
    return best


def resolved(path):
    """``path`` with symlinks resolved as far as it exists (the registry's folder may not exist yet)."""
    path = os.path.abspath(path)
    head, tail = path, []
    while not os.path.exists(head):
        parent = os.path.dirname(head)
        if parent == head:
            break
        tail.insert(0, os.path.basename(head))
        head = parent
    return os.path.join(os.path.realpath(head), *tail) if tail else os.path.realpath(head)


def container_signs(environ=None, exists=os.path.exists, read=_read):
    """Why this process looks like it runs in a container (an empty list when it does not)."""
    environ = os.environ if environ is None else environ
    signs = []
    for marker in ("/.dockerenv", "/run/.containerenv"):
        if exists(marker):
            signs.append(marker)
    if environ.get("container"):
        signs.append("container=%s" % environ["container"])
    cgroup = read("/proc/self/cgroup") or ""
    if any(marker in cgroup for marker in CGROUP_MARKERS):
        signs.append("/proc/self/cgroup")
    if environ.get("KUBERNETES_SERVICE_HOST"):
        signs.append("a Kubernetes pod")
    signs.extend(name for name in RUNNER_ENV if environ.get(name))
    return signs


def ephemeral_reason(path, mountinfo=None, environ=None, exists=os.path.exists, read=_read):
    """A sentence saying why the file at ``path`` vanishes with this process's container, or None."""
    signs = container_signs(environ, exists, read)
    if not signs:
        return None
    if mountinfo is None:
        mountinfo = read("/proc/self/mountinfo")
    mount = mount_of(resolved(path), parse_mountinfo(mountinfo))
    if mount is None:
        return None
    point, root, fstype, _source = mount
    where = None
    if point == "/" and fstype in CONTAINER_ROOT_FS:
        where = "the container's own %s root filesystem" % fstype
    elif fstype in MEMORY_FS:
        where = "a %s at %s (memory)" % (fstype, point)
    elif "kubernetes.io~empty-dir" in root:
        where = "a Kubernetes emptyDir volume at %s, removed with its pod" % point
    elif point == "/runner" or point.startswith("/runner/"):
        where = "ansible-runner's private data folder %s, removed when the job ends" % point
    if where is None:
        return None
    return "it is on %s, and this runs in a container (%s)" % (where, ", ".join(signs))


def registry_warning(path, **kwargs):
    """The warning for a registry at ``path`` that will vanish with the job's container, or None."""
    reason = ephemeral_reason(path, **kwargs)
    if reason is None:
        return None
    return ("The service registry %s will vanish with this container: %s. The services, Slurm jobs and forwards "
            "started now are recorded only there, so a later job could neither find nor stop them. Set "
            "registry_path to a file on a persistent volume mounted into the execution environment, or run "
            "the tao.inference tasks on a managed host (not localhost in the container)." % (path, reason))
