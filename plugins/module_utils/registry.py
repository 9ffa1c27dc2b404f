# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service registry: one JSON file, keyed by job_id, plus ``latest``.

Every read-modify-write holds an exclusive ``flock`` on ``<path>.lock`` and
replaces the file atomically (temp file in the same folder, fsync, rename),
mode 0600. A corrupt file is reported with its path and never overwritten.
The layout stays readable by the seed's tooling: top-level ``<job_id>: {...}``
entries, ``"latest": <job_id>``, and a ``schema_version`` number.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import copy
import errno
import fcntl
import json
import os
import socket
import tempfile

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

LATEST = "latest"
SCHEMA_KEY = "schema_version"


class RegistryState(object):
    """In-memory registry contents; ``dirty`` once changed."""

    def __init__(self, data, path):
        self.data = data
        self.path = path
        self.dirty = False

    # -- reading -----------------------------------------------------------
    def entries(self):
        """``{job_id: entry}`` for every service (seed-compatible filter)."""
        return dict(
            (key, value) for key, value in self.data.items()
            if key not in (LATEST, SCHEMA_KEY) and isinstance(value, dict)
        )

    def get(self, job_id):
        entry = self.entries().get(job_id)
        return copy.deepcopy(entry) if entry is not None else None

    @property
    def latest(self):
        value = self.data.get(LATEST)
        return value if value in self.entries() else None

    def find_name(self, name):
        """Entries carrying ``name`` (newest first)."""
        found = [copy.deepcopy(e) for e in self.entries().values() if e.get("name") == name]
        return sorted(found, key=lambda e: e.get("started_at") or "", reverse=True)

    def used_ports(self, port_scope):
        return set(
            int(e["host_port"]) for e in self.entries().values()
            if e.get("host_port") and e.get("port_scope") == port_scope
        )

    # -- changing ----------------------------------------------------------
    def put(self, entry, make_latest=True):
        self.data[entry["job_id"]] = copy.deepcopy(entry)
        if make_latest:
            self.data[LATEST] = entry["job_id"]
        self.dirty = True

    def update(self, job_id, **fields):
        self.data[job_id].update(copy.deepcopy(fields))
        self.dirty = True

    def remove(self, job_id):
        """Drop an entry; ``latest`` moves to the newest remaining one, or goes."""
        if job_id not in self.entries():
            return False
        del self.data[job_id]
        if self.data.get(LATEST) not in self.entries():
            rest = sorted(self.entries().values(), key=lambda e: e.get("started_at") or "")
            if rest:
                self.data[LATEST] = rest[-1]["job_id"]
            else:
                self.data.pop(LATEST, None)
        self.dirty = True
        return True

    def allocate_port(self, port_scope, is_free=None, port_range=None, exclude=()):
        """Lowest port of ``port_range`` no entry of ``port_scope`` uses and
        ``is_free(port)`` accepts. Call inside :meth:`Registry.transaction`
        and reserve the port in the same transaction."""
        low, high = port_range or catalog.PORT_RANGE
        used = self.used_ports(port_scope) | set(exclude)
        for port in range(low, high + 1):
            if port in used:
                continue
            if is_free is None or is_free(port):
                return port
        raise TaoInferenceError(
            "no free host port in %d-%d (%d used by services in the registry %s, the rest by other "
            "programs); stop a service or pass host_port" % (low, high, len(used), self.path)
        )


def port_is_free(port, addresses=("0.0.0.0", "127.0.0.1")):
    """True when nothing on this machine listens on ``port`` at ``addresses``."""
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # Like every server (docker-proxy included): a port with only TIME_WAIT
        # connections left is free; one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if exc.errno == errno.EADDRNOTAVAIL:
                continue
            raise
        finally:
            sock.close()
    return True


class Registry(object):
    """File-backed registry. ``check_mode`` never writes anything."""

    def __init__(self, path=None, check_mode=False):
        self.path = os.path.abspath(os.path.expanduser(path or catalog.DEFAULT_REGISTRY_PATH))
        self.lock_path = self.path + ".lock"
        self.check_mode = check_mode

    def _load(self):
        try:
            with open(self.path, "r") as handle:
                text = handle.read()
        except IOError as exc:
            if exc.errno == errno.ENOENT:
                return {}
            raise TaoInferenceError("cannot read the registry %s: %s" % (self.path, exc.strerror))
        if not text.strip():
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TaoInferenceError(
                "the registry %s is not valid JSON (%s). It was left as it is: repair it, or move it "
                "away to start an empty registry (running services then need to be stopped by hand)"
                % (self.path, exc)
            )
        if not isinstance(data, dict):
            raise TaoInferenceError(
                "the registry %s holds a %s, not a JSON object; repair it or move it away"
                % (self.path, type(data).__name__)
            )
        version = data.get(SCHEMA_KEY, catalog.REGISTRY_SCHEMA_VERSION)
        if not isinstance(version, int) or version > catalog.REGISTRY_SCHEMA_VERSION:
            raise TaoInferenceError(
                "the registry %s has schema_version %r, newer than this collection understands (%d); "
                "upgrade the tao.inference collection" % (self.path, version, catalog.REGISTRY_SCHEMA_VERSION)
            )
        return data

    @contextlib.contextmanager
    def _locked(self, exclusive):
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            if self.check_mode or not exclusive:
                yield
                return
            os.makedirs(folder, 0o700)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if not exclusive and exc.errno in (errno.EACCES, errno.EROFS):
                yield  # read-only access: read without the lock
                return
            raise TaoInferenceError("cannot open the registry lock %s: %s" % (self.lock_path, exc.strerror))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def read(self):
        """A consistent snapshot (shared lock)."""
        with self._locked(exclusive=False):
            return RegistryState(self._load(), self.path)

    @contextlib.contextmanager
    def transaction(self):
        """Exclusive read-modify-write; writes on success when anything changed."""
        with self._locked(exclusive=not self.check_mode):
            state = RegistryState(self._load(), self.path)
            yield state
            if state.dirty and not self.check_mode:
                self._write(state.data)

    def _write(self, data):
        data = dict(data)
        data[SCHEMA_KEY] = catalog.REGISTRY_SCHEMA_VERSION
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        write_atomically(self.path, text.encode("utf-8"), mode=0o600, sync=True)


def write_atomically(path, chunks, mode=0o644, sync=False):
    """Write ``chunks`` (bytes, or an iterable of bytes) to ``path`` through a temp file
    in the same folder, renamed into place: a reader never sees half a file. ``sync``
    flushes it to disk before the rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tao-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                handle.write(chunk)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
