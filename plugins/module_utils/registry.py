# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service registry: one JSON file, keyed by job_id, plus ``latest``.

It is per user by default (:func:`default_path`), and it is treated as
untrusted data when it is read back:

* the file and its lock are opened with ``O_NOFOLLOW`` and refused when
  another user owns them or group/others may write them (or their folder);
* every read-modify-write holds an exclusive ``flock`` on ``<path>.lock``,
  waited for at most ``lock_timeout`` seconds, and replaces the file
  atomically (temp file in the same folder, fsync, rename), mode 0600;
* every entry is validated (:func:`entry_problem`) before any code uses it:
  an entry that fails is never acted on, and never dropped either;
* a corrupt file is reported with its path and never overwritten.

The layout stays readable by the seed's tooling: top-level ``<job_id>: {...}``
entries, ``"latest": <job_id>``, and a ``schema_version`` number.
"""

import contextlib
import copy
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import tempfile
import threading
import time

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils import trust
from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms

LATEST = "latest"
SCHEMA_KEY = "schema_version"
# Controller forwards to services on other hosts (see fleet.py): a list of records, each with its job_id, kept
# apart from the entries (a list, so the seed's tooling, which takes every top-level object for an entry, skips it).
FORWARDS = "forwards"
STARTING = "starting"
STARTED = "started"
# Holds are milliseconds long (a read, or a port reservation and a write); 32 starts at once
# wait well under a second each. The default leaves room for a slow (NFS) home folder.
DEFAULT_LOCK_TIMEOUT = 30.0
MAX_REGISTRY_BYTES = 16 * 1024 * 1024


def default_path(environ=None):
    """``$XDG_STATE_HOME/tao-inference/registry.json``, else ``~/.local/state/tao-inference/registry.json``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or ""
    if not os.path.isabs(base):  # the XDG spec: a relative value is invalid and ignored
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "tao-inference", "registry.json")


# -- what an entry may hold ------------------------------------------------------
_STATUSES = (STARTING, STARTED)


def _is_int(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _field_checks():
    def text(value):
        trust.check_text(value, "text")
        return None if value is None or isinstance(value, str) else "is not a string"

    def optional(check):
        return lambda value: None if value is None else check(value)

    return {
        "name": optional(lambda v: None if isinstance(v, str) and trust.SERVICE_NAME.fullmatch(v) else "bad name"),
        "platform_job_id": optional(lambda v: trust.kind_problem("id", v)),
        "host_url": optional(lambda v: trust.kind_problem("url", v)),
        "host_port": optional(lambda v: trust.kind_problem("port", v)),
        "num_gpus": optional(lambda v: None if _is_int(v, 0, 1024) else "is not a GPU count"),
        "secret_env": optional(lambda v: None if isinstance(v, list) and all(
            isinstance(n, str) and trust.ENV_NAME.fullmatch(n) for n in v) else "is not a list of names"),
        "status": optional(lambda v: None if v in _STATUSES else "is not a known status"),
        "shape": optional(lambda v: None if isinstance(v, dict) else "is not an object"),
        "port_scope": text, "image": text, "model_path": text, "fingerprint": text, "started_at": text,
        "stop_error": text,
        "inventory_host": optional(lambda v: None if isinstance(v, str) and 0 < len(v) <= 255 and
                                   not trust.kind_problem("text", v) else "is not an inventory host name"),
        "machine": optional(lambda v: trust.kind_problem("host", v)),
    }


_FIELD_CHECKS = _field_checks()


def _platform_problem(entry):
    """The checks the entry's platform declares for its own fields and its connection."""
    try:
        cls = platforms.driver_class(entry.get("platform"))
    except TaoInferenceError as exc:
        return exc.msg
    for field, kind in cls.ENTRY_FIELDS.items():
        value = entry.get(field)
        problem = trust.kind_problem(kind, value) if value is not None else None
        if problem:
            return "%s %s" % (field, problem)
    connection = entry.get("connection") or {}
    if not isinstance(connection, dict):
        return "connection is not an object"
    for field, value in connection.items():
        if field not in cls.CONNECTION_KINDS:
            return "connection.%s is not a connection field of platform %s" % (field, cls.name)
        problem = trust.kind_problem(cls.CONNECTION_KINDS[field], value) if value is not None else None
        if problem:
            return "connection.%s %s" % (field, problem)
    return None


def entry_problem(key, entry):
    """Why the registry entry ``key`` cannot be trusted, or None when every field is valid."""
    if not isinstance(entry, dict):
        return "it is not an object"
    if not trust.is_uuid(key) or entry.get("job_id") != key:
        return "its key/job_id is not the UUID it was given"
    if entry.get("platform") not in platforms.names():
        return "platform %r is not known" % (entry.get("platform"),)
    if entry.get("network_arch") not in catalog.NETWORK_ARCHS:
        return "network_arch %r is not known" % (entry.get("network_arch"),)
    try:
        for field, check in _FIELD_CHECKS.items():
            problem = check(entry.get(field))
            if problem:
                return "%s %s" % (field, problem)
        problem = _platform_problem(entry)
        if problem:
            return problem
        owner = entry.get("owner")
        if owner is not None and not (isinstance(owner, dict) and _is_int(owner.get("pid"), 1, 2 ** 31)
                                      and trust.DIGITS.fullmatch(str(owner.get("start_time")))
                                      and isinstance(owner.get("host"), str)):
            return "owner is not a process"
    except TaoInferenceError as exc:
        return exc.msg
    except Exception as exc:  # pylint: disable=broad-except  # any odd value is a problem, never a crash
        return "a field holds a value of the wrong kind (%s)" % type(exc).__name__
    if entry.get("status", STARTED) == STARTED and not entry.get("host_url"):
        return "a started service has no host_url"
    return None


def this_machine():
    """The name of the machine this code runs on, as entries record it (``machine``)."""
    return socket.gethostname()


def is_this_machine(entry):
    """True when ``entry``'s service runs on this machine, so this run may stop, prune or replace it. A
    registry shared between machines (an NFS home) holds entries of every machine that uses it: those of
    another machine are only listed, never acted on. An entry without ``machine`` (written before it
    was recorded) counts as this machine's."""
    machine = (entry or {}).get("machine")
    return machine is None or machine == this_machine()


_FORWARD_KINDS = {"inventory_host": "text", "local_port": "port", "remote_host": "host", "remote_port": "port",
                  "pid": "pid", "start_time": "digits", "ssh_host": "host", "ssh_user": "user", "ssh_port": "port",
                  "machine": "host", "owner_pid": "pid", "owner_start_time": "digits"}
# A record without pid is a port held while its ssh starts (or one a killed run left: replaced when seen).
_FORWARD_REQUIRED = ("inventory_host", "local_port", "remote_host", "remote_port", "ssh_host")


def forward_problem(key, record):
    """Why the forward record ``key`` cannot be trusted (None when it can): it names a process to stop."""
    if not isinstance(record, dict):
        return "it is not an object"
    if not trust.is_uuid(key) or record.get("job_id", key) != key:
        return "its job_id is not a UUID"
    for field in record:
        if field != "job_id" and field not in _FORWARD_KINDS:
            return "%s is not a field of a forward" % field
    for field in _FORWARD_REQUIRED:
        if record.get(field) is None:
            return "%s is missing" % field
    for field, kind in _FORWARD_KINDS.items():
        if record.get(field) is not None and trust.kind_problem(kind, record[field]):
            return "%s %s" % (field, trust.kind_problem(kind, record[field]))
    return None


class RegistryState(object):
    """In-memory registry contents; ``dirty`` once changed.

    Readers see only entries that pass :func:`entry_problem`; the others stay in
    the file untouched and are listed by :meth:`rejected`."""

    def __init__(self, data, path):
        self.data = data
        self.path = path
        self.dirty = False

    # -- reading -----------------------------------------------------------
    def _raw(self):
        return dict((key, value) for key, value in self.data.items() if key not in (LATEST, SCHEMA_KEY, FORWARDS))

    def entries(self):
        """``{job_id: entry}`` for every valid service entry."""
        return dict((key, value) for key, value in self._raw().items() if entry_problem(key, value) is None)

    def rejected(self):
        """``{key: why}`` for every entry that failed validation (never used, never dropped)."""
        found = {}
        for key, value in self._raw().items():
            problem = entry_problem(key, value)
            if problem is not None:
                found[repr(key)[1:-1] if isinstance(key, str) else repr(key)] = problem
        return found

    def get(self, job_id):
        """A copy of the valid entry ``job_id``; None when there is none. An entry that is
        there but invalid raises: it must not be mistaken for a service that is gone."""
        if job_id in self._raw():
            problem = entry_problem(job_id, self.data[job_id])
            if problem is not None:
                raise TaoInferenceError(
                    "the registry %s has an entry %s that cannot be trusted (%s); nothing was done with it. "
                    "Inspect the file, stop what it started by hand if anything, and delete the entry"
                    % (self.path, job_id, problem))
            return copy.deepcopy(self.data[job_id])
        return None

    @property
    def latest(self):
        value = self.data.get(LATEST)
        return value if isinstance(value, str) and value in self.entries() else None

    def find_name(self, name):
        """Entries carrying ``name`` (newest first)."""
        found = [copy.deepcopy(e) for e in self.entries().values() if e.get("name") == name]
        return sorted(found, key=lambda e: e.get("started_at") or "", reverse=True)

    def used_ports(self, port_scope):
        # Invalid entries keep their ports too: a port is never handed out twice.
        used = set()
        for value in self._raw().values():
            if isinstance(value, dict) and value.get("port_scope") == port_scope and \
                    _is_int(value.get("host_port"), 1, 65535):
                used.add(value["host_port"])
        if port_scope == "local":  # controller forwards listen on this machine's loopback
            for value in self._forward_list():
                if isinstance(value, dict) and _is_int(value.get("local_port"), 1, 65535):
                    used.add(value["local_port"])
        return used

    # -- controller forwards (fleet.py) --------------------------------------
    def _forward_list(self):
        value = self.data.get(FORWARDS)
        return value if isinstance(value, list) else []

    def _valid_forward(self, record):
        return isinstance(record, dict) and forward_problem(record.get("job_id"), record) is None

    def _our_forward(self, record, job_id=None):
        """A valid record of a forward of this machine (of ``job_id`` when given): a registry shared between
        machines (an NFS home) holds each controller's own forwards, which only that machine can see or stop."""
        return self._valid_forward(record) and is_this_machine(record) and job_id in (None, record["job_id"])

    def forwards(self):
        """``{job_id: record}`` of every valid forward record of this machine (others stay in the file, untouched)."""
        return dict((record["job_id"], dict((k, v) for k, v in copy.deepcopy(record).items() if k != "job_id"))
                    for record in self._forward_list() if self._our_forward(record))

    def rejected_forwards(self):
        return [forward_problem(r.get("job_id") if isinstance(r, dict) else None, r)
                for r in self._forward_list() if not self._valid_forward(r)]

    def _set_forwards(self, records):
        if records:
            self.data[FORWARDS] = records
        else:
            self.data.pop(FORWARDS, None)
        self.dirty = True

    def put_forward(self, job_id, record):
        record = dict(copy.deepcopy(record), job_id=job_id, machine=this_machine())
        problem = forward_problem(job_id, record)
        if problem is not None:
            raise TaoInferenceError("refusing to record the forward of %s in the registry %s: %s"
                                    % (job_id, self.path, problem))
        self._set_forwards([r for r in self._forward_list() if not self._our_forward(r, job_id)] + [record])

    def remove_forward(self, job_id):
        if job_id not in self.forwards():
            return False
        self._set_forwards([r for r in self._forward_list() if not self._our_forward(r, job_id)])
        return True

    # -- changing ----------------------------------------------------------
    def _checked(self, job_id, entry):
        """What the collection writes must pass the same checks as what it reads back."""
        problem = entry_problem(job_id, entry)
        if problem is not None:
            raise TaoInferenceError("refusing to record service %s in the registry %s: %s"
                                    % (job_id, self.path, problem))
        return entry

    def put(self, entry, make_latest=True):
        self.data[entry["job_id"]] = self._checked(entry["job_id"], copy.deepcopy(entry))
        if make_latest:
            self.data[LATEST] = entry["job_id"]
        self.dirty = True

    def update(self, job_id, **fields):
        if job_id not in self.entries():
            raise TaoInferenceError("the registry %s lost service %s while it was being changed; "
                                    "see tao_inference_info" % (self.path, job_id))
        updated = copy.deepcopy(self.data[job_id])
        updated.update(copy.deepcopy(fields))
        self.data[job_id] = self._checked(job_id, updated)
        self.dirty = True

    def remove(self, job_id):
        """Drop a valid entry; ``latest`` moves to the newest remaining one, or goes."""
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


class _LockWait(Exception):
    """The alarm that ends a wait for the registry lock."""


def _owner_name(uid):
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return "uid %d" % uid


def check_private(st, path, what):
    """Refuse a file another user owns, that group/others may write, or that is no regular file."""
    if not stat.S_ISREG(st.st_mode):
        raise TaoInferenceError("the %s %s is not a regular file; refusing to use it. Move it away, or set "
                                "registry_path to a file of your own" % (what, path))
    if st.st_uid != os.geteuid():
        raise TaoInferenceError(
            "the %s %s belongs to %s, not to you; refusing to use it (another user could plant services or "
            "commands in it). Remove it, or set registry_path to a file of your own"
            % (what, path, _owner_name(st.st_uid)))
    if st.st_mode & 0o022:
        raise TaoInferenceError(
            "the %s %s can be written by group or others (mode %04o); refusing to use it. Run `chmod 600 %s` "
            "if it is yours and you trust its contents" % (what, path, stat.S_IMODE(st.st_mode), path))


def _check_folder(folder):
    """A folder another user controls could swap the registry under us: refuse the registry's folder
    and every folder above it unless each belongs to us or root and no one else may rename in it
    (not writable by group/others, or sticky as /tmp is)."""
    current = folder
    while True:
        st = os.stat(current)
        if st.st_uid not in (os.geteuid(), 0):
            raise TaoInferenceError(
                "the folder %s (holding the registry %s) belongs to %s; refusing to keep the registry there. "
                "Set registry_path to a folder of your own" % (current, folder, _owner_name(st.st_uid)))
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise TaoInferenceError(
                "the folder %s (holding the registry %s) can be written by group or others (mode %04o) and is not "
                "sticky; refusing to keep the registry there. Set registry_path to a private folder"
                % (current, folder, stat.S_IMODE(st.st_mode)))
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


class Registry(object):
    """File-backed registry. ``check_mode`` never writes anything."""

    def __init__(self, path=None, check_mode=False, lock_timeout=DEFAULT_LOCK_TIMEOUT):
        path = os.path.abspath(os.path.expanduser(path or default_path()))
        # The folder by its real path (each folder on it is then checked); the file itself is never followed.
        self.path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        self.lock_path = self.path + ".lock"
        self.check_mode = check_mode
        self.lock_timeout = lock_timeout

    def _open_private(self, path, flags, what, mode=0o600):
        """``os.open`` that never follows a symlink, then :func:`check_private`; None if missing."""
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            if exc.errno == errno.ELOOP:
                raise TaoInferenceError("the %s %s is a symbolic link; refusing to follow it. Remove the link, or "
                                        "set registry_path to the real file" % (what, path))
            raise
        try:
            check_private(os.fstat(fd), path, what)
        except TaoInferenceError:
            os.close(fd)
            raise
        return fd

    def _load(self):
        try:
            fd = self._open_private(self.path, os.O_RDONLY, "registry")
        except OSError as exc:
            raise TaoInferenceError("cannot read the registry %s: %s" % (self.path, exc.strerror))
        if fd is None:
            return {}
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_REGISTRY_BYTES + 1)
        if len(raw) > MAX_REGISTRY_BYTES:
            raise TaoInferenceError("the registry %s is larger than %d MiB; it was left as it is: repair it or "
                                    "move it away" % (self.path, MAX_REGISTRY_BYTES // (1024 * 1024)))
        text = raw.decode("utf-8", "replace")
        if not text.strip():
            return {}
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
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

    def _make_folder(self, folder):
        try:
            os.makedirs(folder, 0o700)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise TaoInferenceError("cannot create the registry folder %s: %s" % (folder, exc.strerror))

    @contextlib.contextmanager
    def _locked(self, exclusive):
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            if self.check_mode or not exclusive:
                yield
                return
            self._make_folder(folder)
        _check_folder(folder)
        try:
            fd = self._open_private(self.lock_path, os.O_RDWR | os.O_CREAT, "registry lock")
        except OSError as exc:
            if not exclusive and exc.errno in (errno.EACCES, errno.EROFS):
                yield  # read-only access: read without the lock
                return
            raise TaoInferenceError("cannot open the registry lock %s: %s" % (self.lock_path, exc.strerror))
        try:
            self._flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _flock(self, fd, mode):
        """Take the lock, waiting at most ``lock_timeout`` s. In the main thread the wait blocks in the
        kernel (woken the moment the holder lets go) and an alarm ends it; elsewhere it polls."""
        if self._try_flock(fd, mode):
            return
        if threading.current_thread() is threading.main_thread():
            self._flock_blocking(fd, mode)
        else:
            self._flock_polling(fd, mode)

    def _timed_out(self):
        return TaoInferenceError(
            "the registry %s stayed locked by another run for %ss (lock file %s); wait for it to finish "
            "and run again, raise lock_timeout, or find the process holding it (`fuser %s`)"
            % (self.path, self.lock_timeout, self.lock_path, self.lock_path))

    def _flock_blocking(self, fd, mode):
        def on_alarm(_signum, _frame):
            raise _LockWait()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, self.lock_timeout)
            try:
                fcntl.flock(fd, mode)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _LockWait:
            raise self._timed_out()
        finally:
            signal.signal(signal.SIGALRM, previous)

    def _flock_polling(self, fd, mode):
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.001
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out()
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.05)
            if self._try_flock(fd, mode):
                return

    def _try_flock(self, fd, mode):
        """Take the lock if it is free now; False when another run holds it."""
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise TaoInferenceError("cannot lock the registry %s: %s" % (self.lock_path, exc.strerror))
        return False

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
        try:
            write_atomically(self.path, text.encode("utf-8"), mode=0o600, sync=True)
        except OSError as exc:
            raise TaoInferenceError("cannot write the registry %s: %s; it was left as it was"
                                    % (self.path, exc.strerror or exc))


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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
