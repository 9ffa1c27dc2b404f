# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image pulls that can be watched, and joined.

A pull of an image (tens of GB for TAO images) on one engine is tracked in a folder of this
user's, ``pulls/`` beside the default registry (``~/.local/state/tao-inference/pulls``), made
``0700``. Each (machine, engine, image) has two files named by a hash of the three:

- ``<key>.lock``: the process that pulls holds an exclusive ``flock`` on it for as long as it
  pulls. The kernel drops it when that process ends, however it ends (even SIGKILL), so a lock
  that can be taken means no pull is under way: no stale claim can outlive its process.
- ``<key>.json`` (``0600``): the pull's state, rewritten atomically about once a second: image,
  engine, pid, ``state`` (``pulling``, ``done``, ``failed``), ``error``, start and update times, and
  ``progress`` (bytes and layers done and in all). It never holds a credential: registry auth
  goes to the engine in a header and is never written.

A second pull of the same image on the same engine, while one is under way, joins it: it follows
the state file until the first process lets the lock go, and reports that pull's outcome.

The files of a pull that ended more than ``KEEP_DAYS`` ago are removed when a new pull begins (only
this user's regular files, and a lock only while holding it), so the folder does not grow with every
image ever pulled.

The machine is in the key because a home shared between machines (NFS) holds one ``pulls/`` for all
of them, and the same engine address (the local socket) names another engine on each: a pull on one
machine never stands in for another machine's.
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import stat
import time

from ansible_collections.tao.inference.plugins.module_utils.docker_engine import EngineError
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import default_path, this_machine, write_atomically

STATE_LIMIT = 64 << 10
KEEP_DAYS = 30
_KEY = re.compile(r"[0-9a-f]{32}")  # what Pull names its two files by
PULLING, DONE, FAILED = "pulling", "done", "failed"
INTERRUPTED = "interrupted"  # a state file saying "pulling" whose process is gone


def pulls_dir(environ=None):
    """``pulls/`` beside the default registry file."""
    return os.path.join(os.path.dirname(default_path(environ)), "pulls")


def _private_dir(path):
    """Make ``path`` (0700) when missing; refuse one that is not this user's private folder."""
    try:
        os.makedirs(path, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise TaoInferenceError("cannot make the pulls folder %s: %s" % (path, exc.strerror or exc))
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise TaoInferenceError(
            "the pulls folder %s is not a private folder of yours (it must be a folder you own with mode 0700, not "
            "a link); remove it or run `chmod 700 %s` if it is yours" % (path, path))
    return path


def _empty():
    return {"bytes_done": 0, "bytes_total": 0, "layers_done": 0, "layers_total": 0, "status": ""}


def _clean_progress(value):
    """A progress dict read back from a file: only known keys of the right types."""
    clean = _empty()
    if isinstance(value, dict):
        for key in ("bytes_done", "bytes_total", "layers_done", "layers_total"):
            number = value.get(key)
            if isinstance(number, int) and not isinstance(number, bool) and 0 <= number < 1 << 50:
                clean[key] = number
        if isinstance(value.get("status"), str):
            clean["status"] = value["status"][:200]
    return clean


class Pull(object):
    """The tracked pull of ``image`` on the engine at ``engine_host``."""

    def __init__(self, engine_host, image, directory=None):
        self.engine_host = engine_host
        self.image = image
        self.directory = directory or pulls_dir()
        key = hashlib.sha256(("%s\0%s\0%s" % (this_machine(), engine_host, image)).encode(
            "utf-8", "surrogateescape")).hexdigest()[:32]
        self.lock_path = os.path.join(self.directory, key + ".lock")
        self.state_path = os.path.join(self.directory, key + ".json")
        self._lock_fd = None
        self.started = None
        self.started_at = None

    # -- the lock ----------------------------------------------------------------------
    def claim(self):
        """True when this process now holds the pull (no other pull of it is under way)."""
        _private_dir(self.directory)
        for _attempt in range(3):
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise TaoInferenceError("cannot open the pull lock %s: %s" % (self.lock_path, exc.strerror or exc))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            if _still_named(fd, self.lock_path):
                self._lock_fd = fd
                return True
            os.close(fd)  # swept away between our open and our flock: open the new one
        raise TaoInferenceError("the pull lock %s kept being removed while it was taken; try again" % self.lock_path)

    def under_way(self):
        """True when another process holds the pull now."""
        if not os.path.exists(self.lock_path):
            return False
        if self.claim():
            self.release()
            return False
        return True

    def release(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # -- the state file ------------------------------------------------------------------
    def write(self, state, progress=None, error=None):
        now = time.time()
        document = {"image": self.image, "engine": self.engine_host, "pid": os.getpid(),
                    "host": socket.gethostname(), "state": state, "error": error,
                    "started_at": self.started_at, "updated_at": now,
                    "seconds": round(time.monotonic() - self.started, 3) if self.started else 0.0,
                    "progress": progress if progress is not None else _empty()}
        try:
            write_atomically(self.state_path, (json.dumps(document) + "\n").encode("utf-8"), mode=0o600)
        except OSError:
            pass  # watching is a courtesy: the pull itself goes on

    def read(self):
        """The state file as checked data (``state`` ``interrupted`` when it says pulling but nobody
        holds the lock), or None when there is none (or it is not this pull's)."""
        try:
            fd = os.open(self.state_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        # Looked at before fdopen, which refuses a folder with IsADirectoryError.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            return None
        with os.fdopen(fd, "rb") as handle:
            try:
                data = json.loads(handle.read(STATE_LIMIT).decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                return None
        if not isinstance(data, dict) or data.get("image") != self.image or data.get("engine") != self.engine_host:
            return None
        state = data.get("state") if data.get("state") in (PULLING, DONE, FAILED) else FAILED
        result = {"image": self.image, "state": state, "progress": _clean_progress(data.get("progress")),
                  "error": data["error"][:2000] if isinstance(data.get("error"), str) else None,
                  "seconds": data["seconds"] if isinstance(data.get("seconds"), (int, float)) else 0.0,
                  "updated_at": data["updated_at"] if isinstance(data.get("updated_at"), (int, float)) else 0.0,
                  "pid": data["pid"] if isinstance(data.get("pid"), int) else None}
        if state == PULLING and not self.under_way():
            result["state"] = INTERRUPTED
        return result

    # -- pulling ---------------------------------------------------------------------------
    def run(self, engine):
        """Pull with ``engine`` (this process holds the claim, and lets it go at the end); the outcome
        (see :func:`outcome`). The state file says ``done`` or ``failed`` before the claim goes."""
        sweep(self.directory, keep=(self.lock_path, self.state_path))
        self.started = time.monotonic()
        self.started_at = time.time()
        last = [None]

        def tell(progress):
            last[0] = progress.as_dict()
            self.write(PULLING, last[0])

        self.write(PULLING)
        try:
            engine.image_pull(self.image, on_progress=tell)
            seconds = time.monotonic() - self.started
            self.write(DONE, last[0])
        except EngineError as exc:
            self.write(FAILED, last[0], error=str(exc))
            raise
        except BaseException:
            self.write(FAILED, last[0], error="the pull was interrupted")
            raise
        finally:
            self.release()
        return outcome(True, seconds, last[0])

    def follow(self, timeout=None, interval=0.5, on_progress=None):
        """Wait until the pull under way ends (or ``timeout`` seconds pass); its last state (see :meth:`read`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            state = self.read()
            busy = self.under_way()
            if state is not None and on_progress is not None and state["updated_at"] != seen:
                seen = state["updated_at"]
                on_progress(state)
            if not busy:
                return self.read()
            if deadline is not None and time.monotonic() >= deadline:
                return state
            time.sleep(interval if deadline is None else max(0.01, min(interval, deadline - time.monotonic())))


def _still_named(fd, path):
    """True when ``path`` still names the file open at ``fd``."""
    try:
        named = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _own_file(path):
    """``os.lstat(path)`` when it is a regular file of this user's, else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() else None


def sweep(directory, keep=(), days=KEEP_DAYS, now=None):
    """Remove from ``directory`` the files of pulls that ended more than ``days`` ago: a key whose
    files were all last written before then, and whose lock no process holds (the lock is removed
    while held, so a claim that opened it sees it gone and opens anew). Anything that is not this
    user's regular ``<hex>.json``/``<hex>.lock`` is left alone. The names removed."""
    cutoff = (time.time() if now is None else now) - days * 86400
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    keys = sorted(set(name.rsplit(".", 1)[0] for name in names if name.endswith((".json", ".lock"))))
    for key in (key for key in keys if _KEY.fullmatch(key)):
        state_path, lock_path = (os.path.join(directory, key + suffix) for suffix in (".json", ".lock"))
        if state_path in keep or lock_path in keep:
            continue
        had_lock = os.path.lexists(lock_path)
        found = [_own_file(path) for path in (state_path, lock_path) if os.path.lexists(path)]
        if not found or any(st is None or st.st_mtime > cutoff for st in found):
            continue
        fd = None
        try:
            # Taken (made when missing) as a claim takes it, so nothing is removed while a pull holds it.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a pull of it is under way
            if not _still_named(fd, lock_path):
                continue
            st = _own_file(state_path)
            if os.path.lexists(state_path) and (st is None or st.st_mtime > cutoff):
                continue  # a pull ran and ended since the first look
            if st is not None:
                os.unlink(state_path)
                removed.append(os.path.basename(state_path))
            os.unlink(lock_path)  # while held: a claim that opened it sees it gone and opens anew
            if had_lock:
                removed.append(os.path.basename(lock_path))
        except OSError:
            continue
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def outcome(pulled, seconds=0.0, progress=None, joined=False):
    """What a module reports of a pull: ``{pulled, seconds, bytes, layers, joined}``."""
    progress = progress or _empty()
    return {"pulled": pulled, "seconds": round(seconds, 3), "bytes": progress.get("bytes_total") or
            progress.get("bytes_done") or 0, "layers": progress.get("layers_total") or 0, "joined": joined}


def pull_or_join(engine, image, directory=None):
    """Pull ``image`` with ``engine``, or, when another process pulls it there right now, wait for that
    pull to end (and take over when it was cut short); the outcome (see :func:`outcome`). Raises
    EngineError when the pull fails."""
    pull = Pull(engine.host, image, directory)
    began = time.monotonic()
    for _attempt in range(3):
        if pull.claim():
            return pull.run(engine)
        state = pull.follow() or {}
        if state.get("state") == DONE:
            return outcome(True, time.monotonic() - began, state.get("progress"), joined=True)
        if state.get("state") == FAILED:
            raise EngineError("the pull of %s that another run had started failed: %s"
                              % (image, state.get("error") or "no reason given"))
    raise EngineError("the pull of %s was started by other runs that were each cut short; try again" % image)
