# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Processes known by pid *and* start time, and signals that end a start cleanly.

A pid alone can be reused by another program; a pid with the start time the
kernel gave it (``/proc/<pid>/stat`` field 22) names one process for good.
"""

import contextlib
import os
import signal
import socket
import sys
import time

PR_SET_PDEATHSIG = 1


def stat_of(pid):
    """``(state, start_time)`` of ``pid`` from /proc, or ``(None, None)`` when it is gone."""
    try:
        with open("/proc/%d/stat" % int(pid)) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (IOError, OSError, IndexError, ValueError):
        return None, None
    return fields[0], fields[19]


def alive(pid, start_time):
    """True when ``pid`` still runs and is the process that started at ``start_time`` (not a zombie)."""
    if not pid:
        return False
    state, started = stat_of(pid)
    return state is not None and state not in ("Z", "X") and str(started) == str(start_time)


def terminate(pid, start_time, timeout=5):
    """SIGTERM the process ``pid`` that started at ``start_time`` (the caller checked it is the one it
    means), SIGKILL it after ``timeout`` seconds; True when it was running."""
    pid = int(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, started = stat_of(pid)
        if state is None or state in ("Z", "X") or str(started) != str(start_time):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    return True


def argv_of(pid):
    """The command line of ``pid`` as bytes words (from /proc), or ``[]`` when it is gone."""
    try:
        with open("/proc/%d/cmdline" % int(pid), "rb") as handle:
            words = handle.read().split(b"\0")
    except (IOError, OSError, ValueError):
        return []
    return words[:-1] if words and not words[-1] else words


def under_async_watcher(pid):
    """True when process ``pid`` is Ansible's ``async_wrapper`` (it runs ``async_wrapper.py <jid> <limit> ...``)."""
    return any(os.path.basename(arg).startswith(b"async_wrapper") for arg in argv_of(pid)[:3])


def end_with_parent(signum=signal.SIGTERM):
    """When this module runs under Ansible's ``async`` watcher, have the kernel send ``signum`` to it
    when the watcher's child that started it ends; True when it will. Elsewhere (a task without
    ``async``, Mitogen, not Linux) nothing changes.

    The watcher kills its child's process group at the time limit; a module its child started before
    the group was made is outside it and would go on (a pull would finish that nobody waits for). Its
    parent is always killed, so its end stops the module too. A parent that ends between the check
    and the request is seen (the parent changed) and the module stops at once; one that ended before
    the check cannot be told from any other parent."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if not under_async_watcher(parent):
        return False
    try:
        import ctypes  # here: a Python built without ctypes still runs every module
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (ImportError, OSError, AttributeError, TypeError, ValueError):
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True


def this_process():
    """Who is running this start: kept in a ``starting`` registry entry."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": stat_of(os.getpid())[1]}


def owner_alive(owner):
    """True when the process in ``owner`` (see :func:`this_process`) may still be at work: it runs
    here, or it ran on another machine, where this one cannot look."""
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    return alive(owner.get("pid"), owner.get("start_time"))


class Interrupted(BaseException):
    """A signal (TERM, INT, HUP) arrived while something was being started."""

    def __init__(self, signum):
        super(Interrupted, self).__init__(signum)
        self.signum = signum

    @property
    def name(self):
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return "signal %d" % self.signum


CATCHABLE = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Guard(object):
    """What :func:`interruptible` yields: ``hold()`` before cleaning up, so that a signal arriving
    then is noted (``held``) instead of cutting the cleanup short."""

    def __init__(self):
        self.fired = []
        self.holding = False

    def hold(self):
        self.holding = True

    @property
    def held(self):
        return self.fired[0] if self.fired else None


@contextlib.contextmanager
def interruptible():
    """Inside: TERM, INT and HUP raise :class:`Interrupted` once; later ones, and any once
    :meth:`Guard.hold` was called, are only noted, so the cleanup an ``except`` block runs (still
    inside) finishes. Handlers are restored on exit."""
    guard = Guard()

    def handler(signum, _frame):
        fired = bool(guard.fired)
        guard.fired.append(signum)
        if fired or guard.holding:
            return
        raise Interrupted(signum)

    previous = {}
    for signum in CATCHABLE:
        try:
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread: signals stay as they were
            pass
    try:
        yield guard
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
