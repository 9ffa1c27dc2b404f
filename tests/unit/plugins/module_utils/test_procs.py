"""A module run with ``async`` ends with the watcher's process that started it; nothing else is tied to its parent."""

import contextlib
import os
import signal
import subprocess
import sys
import time

from ansible_collections.tao.inference.plugins.module_utils import procs

# The folder above ansible_collections/, where this copy of the collection is imported from.
COLLECTIONS = os.path.abspath(procs.__file__).rsplit(os.sep + "ansible_collections" + os.sep, 1)[0]

# What a module does first (common.new_module), then it says what the kernel will send it when its parent ends.
MODULE = """\
import ctypes, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.tao.inference.plugins.module_utils import procs
tied = procs.end_with_parent()
number = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(number), 0, 0, 0)  # PR_GET_PDEATHSIG
print(tied, number.value, flush=True)
time.sleep(60)
"""

# A parent that starts the module as Ansible's async watcher's child does, under a name given by the test.
PARENT = """\
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True,
                         stdout=open(sys.argv[3], "w"))
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid):
    state, _started = procs.stat_of(pid)
    return state is not None and state not in ("Z", "X")


@contextlib.contextmanager
def _run_under(tmp_path, parent_name, *parent_args):
    """Start the module under a parent named ``parent_name``; yields (parent, module pid, what the module said)
    and kills whatever is left of both at the end."""
    parent_file = tmp_path / parent_name
    parent_file.write_text(PARENT)
    out = tmp_path / "module.out"
    parent = subprocess.Popen([sys.executable, str(parent_file), MODULE, COLLECTIONS, str(out)] + list(parent_args),
                              stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 20
        while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield parent, child, out.read_text().split()
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)
        parent.stdout.close()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_module_under_the_async_watcher_ends_when_the_watcher_child_ends(tmp_path):
    with _run_under(tmp_path, "async_wrapper.py", "j1", "3") as (parent, child, said):
        assert said == ["True", str(int(signal.SIGTERM))]
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the module outlived the watcher's child that started it"


def test_a_module_started_by_anything_else_keeps_its_own_life(tmp_path):
    with _run_under(tmp_path, "runner.py", "async_wrapper.py") as (parent, child, said):  # the name as a later word
        assert said == ["False", "0"]
        parent.kill()
        parent.wait(10)
        time.sleep(0.5)
        assert _alive(child)
