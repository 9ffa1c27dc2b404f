"""Pull progress from the engine's stream, and pulls tracked by a lock and a state file."""

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.tao.inference.plugins.module_utils import pulls
from ansible_collections.tao.inference.plugins.module_utils.docker_engine import EngineError, PullProgress
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

EVENTS = [
    {"status": "Pulling from team/img", "id": "1"},
    {"status": "Already exists", "id": "aaa"},
    {"status": "Pulling fs layer", "id": "bbb"},
    {"status": "Pulling fs layer", "id": "ccc"},
    {"status": "Downloading", "id": "bbb", "progressDetail": {"current": 100, "total": 1000}},
    {"status": "Downloading", "id": "ccc", "progressDetail": {"current": 50, "total": 500}},
    {"status": "Downloading", "id": "bbb", "progressDetail": {"current": 700, "total": 1000}},
    {"status": "Download complete", "id": "bbb"},
    {"status": "Extracting", "id": "bbb", "progressDetail": {"current": 5000, "total": 9000}},
    {"status": "Pull complete", "id": "bbb"},
    {"status": "Downloading", "id": "ccc", "progressDetail": {"current": True, "total": "x"}},
]


def test_progress_counts_bytes_and_layers_from_the_engines_events():
    progress = PullProgress()
    for event in EVENTS:
        progress.take(event)
    # The extraction's byte counts are not download bytes; a layer already there is done with no bytes.
    assert progress.as_dict() == {"bytes_done": 1050, "bytes_total": 1500, "layers_done": 2, "layers_total": 3,
                                  "status": "Downloading"}
    progress.take({"status": "Pull complete", "id": "ccc"})
    progress.take({"status": "Digest: sha256:abc"})
    assert progress.as_dict()["layers_done"] == 3 and progress.last == "Digest: sha256:abc"


class FakeEngine(object):
    host = "unix:///fake.sock"

    def __init__(self, events=None, gate=None, fail=None):
        self.events = EVENTS if events is None else events
        self.gate = gate
        self.fail = fail
        self.pulls = 0

    def image_pull(self, ref, on_progress=None, every=1.0):
        self.pulls += 1
        progress = PullProgress()
        for event in self.events[:5]:
            progress.take(event)
        on_progress(progress)
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise EngineError(self.fail)
        for event in self.events[5:]:
            progress.take(event)
        on_progress(progress)
        return progress.last


def test_a_pull_reports_its_outcome_and_leaves_a_private_state_without_credentials(tmp_path):
    folder = str(tmp_path / "pulls")
    outcome = pulls.pull_or_join(FakeEngine(), "reg.example/img:1", folder)
    assert outcome["pulled"] is True and outcome["joined"] is False
    assert (outcome["bytes"], outcome["layers"]) == (1500, 3)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    state = pulls.Pull(FakeEngine.host, "reg.example/img:1", folder).read()
    assert state["state"] == "done" and state["progress"]["layers_done"] == 2
    for name in os.listdir(folder):
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600
        assert b"auth" not in open(os.path.join(folder, name), "rb").read().lower()


def test_a_second_pull_joins_the_first_and_a_failure_reaches_both(tmp_path):
    folder = str(tmp_path / "pulls")
    gate = threading.Event()
    first, second = FakeEngine(gate=gate), FakeEngine()
    results = {}
    thread = threading.Thread(target=lambda: results.update(a=pulls.pull_or_join(first, "img:1", folder)))
    thread.start()
    time.sleep(0.3)
    watched = pulls.Pull(FakeEngine.host, "img:1", folder).read()
    assert watched["state"] == "pulling" and watched["progress"]["bytes_total"] == 1000  # ccc not yet sized
    threading.Timer(0.5, gate.set).start()
    results["b"] = pulls.pull_or_join(second, "img:1", folder)
    thread.join(10)
    assert second.pulls == 0 and first.pulls == 1  # the second never pulled
    assert results["a"]["joined"] is False and results["b"]["joined"] is True
    assert results["b"]["layers"] == 3

    gate = threading.Event()
    failing = FakeEngine(gate=gate, fail="manifest unknown")
    thread = threading.Thread(target=lambda: pytest.raises(EngineError, pulls.pull_or_join, failing, "img:2", folder))
    thread.start()
    time.sleep(0.3)
    threading.Timer(0.3, gate.set).start()
    with pytest.raises(EngineError, match="another run had started failed: manifest unknown"):
        pulls.pull_or_join(FakeEngine(), "img:2", folder)
    thread.join(10)


def test_a_pull_whose_process_died_reads_interrupted_and_the_next_one_pulls(tmp_path):
    folder = str(tmp_path / "pulls")
    pull = pulls.Pull(FakeEngine.host, "img:1", folder)
    assert pull.claim()
    pull.started, pull.started_at = time.monotonic(), time.time()
    pull.write(pulls.PULLING)
    # Another process holds the lock: it is under way.
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            "print('held', flush=True); time.sleep(30)")
    pull.release()
    holder = subprocess.Popen([sys.executable, "-c", code, pull.lock_path], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert pull.read()["state"] == "pulling" and pull.under_way()
    holder.kill()  # as SIGKILL ends a pull: the kernel drops the lock
    holder.wait()
    assert pull.read()["state"] == "interrupted" and not pull.under_way()
    engine = FakeEngine()
    assert pulls.pull_or_join(engine, "img:1", folder)["joined"] is False and engine.pulls == 1


def test_the_state_file_is_read_as_untrusted_data(tmp_path):
    folder = str(tmp_path / "pulls")
    pull = pulls.Pull(FakeEngine.host, "img:1", folder)
    pulls.pull_or_join(FakeEngine(), "img:1", folder)
    with open(pull.state_path, "w") as handle:
        json.dump({"image": "img:1", "engine": FakeEngine.host, "state": "rm -rf", "progress": {
            "bytes_done": -5, "layers_total": True, "status": 7}, "error": ["x"]}, handle)
    state = pull.read()
    assert state["state"] == "failed" and state["progress"]["bytes_done"] == 0
    assert state["progress"]["layers_total"] == 0 and state["progress"]["status"] == "" and state["error"] is None
    with open(pull.state_path, "w") as handle:
        json.dump({"image": "other:1", "engine": FakeEngine.host, "state": "done"}, handle)
    assert pull.read() is None  # not this pull's


def test_a_pulls_folder_that_is_not_private_is_refused(tmp_path):
    folder = tmp_path / "pulls"
    folder.mkdir(mode=0o755)
    os.chmod(str(folder), 0o755)
    with pytest.raises(TaoInferenceError, match="not a private folder of yours"):
        pulls.pull_or_join(FakeEngine(), "img:1", str(folder))
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "linked"
    link.symlink_to(target)
    with pytest.raises(TaoInferenceError, match="not a private folder of yours"):
        pulls.pull_or_join(FakeEngine(), "img:1", str(link))


def test_machines_sharing_a_home_each_pull_on_their_own_engine(tmp_path, monkeypatch):
    # An NFS home: one pulls folder for every machine, and the same engine address (the local socket) on each;
    # a fleet's start pulls on every host at once. gpu2's engine must get the image: it never joins gpu1's pull.
    import socket

    folder = str(tmp_path / "pulls")
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu1")
    first = pulls.Pull(FakeEngine.host, "img:1", folder)
    assert first.claim()
    try:
        monkeypatch.setattr(socket, "gethostname", lambda: "gpu2")
        engine, results = FakeEngine(), {}
        thread = threading.Thread(target=lambda: results.update(b=pulls.pull_or_join(engine, "img:1", folder)))
        thread.daemon = True
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "gpu2 waited for gpu1's pull instead of pulling on its own engine"
        assert engine.pulls == 1 and results["b"]["joined"] is False
        assert pulls.Pull(FakeEngine.host, "img:1", folder).read()["state"] == "done"
    finally:
        first.release()


def _age(path, days):
    then = time.time() - days * 86400
    os.utime(path, (then, then), follow_symlinks=False)


def test_a_new_pull_removes_the_files_of_pulls_that_ended_long_ago_and_nothing_else(tmp_path):
    folder = str(tmp_path / "pulls")
    for image in ("old:1", "recent:1", "held:1", "lock-only:1"):
        pulls.pull_or_join(FakeEngine(), image, folder)
    old, recent, held, lock_only = (pulls.Pull(FakeEngine.host, image, folder)
                                    for image in ("old:1", "recent:1", "held:1", "lock-only:1"))
    os.unlink(lock_only.state_path)  # a watch of an image never pulled leaves a lock alone
    for pull in (old, held, lock_only):
        for path in (pull.state_path, pull.lock_path):
            if os.path.exists(path):
                _age(path, 31)
    _age(recent.state_path, 29)
    _age(recent.lock_path, 40)  # one recent file keeps the pair
    # Files the sweep must leave alone however old: not named as ours, a link, another kind of file.
    strangers = [os.path.join(folder, name) for name in ("notes.json", "ABC.json", "feed.lock.bak")]
    for path in strangers:
        with open(path, "w") as handle:
            handle.write("{}")
        _age(path, 99)
    # A link named like a state file, to an old file of ours the sweep has no reason to remove.
    kept = os.path.join(folder, "kept.txt")
    with open(kept, "w") as handle:
        handle.write("{}")
    _age(kept, 99)
    named_like_ours = "ab" * 16  # a key as Pull makes them
    link = os.path.join(folder, named_like_ours + ".json")
    os.symlink(kept, link)
    _age(link, 99)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, held.lock_path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        engine = FakeEngine()
        assert pulls.pull_or_join(engine, "new:1", folder)["pulled"] and engine.pulls == 1
        left = set(os.listdir(folder))
    finally:
        holder.kill()
        holder.wait()
    assert not {os.path.basename(p) for p in (old.state_path, old.lock_path, lock_only.lock_path)} & left
    assert {os.path.basename(p) for p in (recent.state_path, recent.lock_path, held.state_path, held.lock_path)} <= left
    assert {os.path.basename(p) for p in strangers} | {named_like_ours + ".json", "kept.txt"} <= left
    assert named_like_ours + ".lock" not in left  # a key whose files are not all ours is not even locked
    assert recent.read()["state"] == "done"


def test_a_claim_whose_lock_was_swept_before_it_took_it_takes_the_new_one(tmp_path, monkeypatch):
    folder = str(tmp_path / "pulls")
    pull = pulls.Pull(FakeEngine.host, "img:1", folder)
    real = pulls.fcntl.flock
    swept = []

    def flock(fd, how):
        if not swept:  # a sweep removes the lock between this claim's open and its flock
            swept.append(None)
            swept[0] = pulls.sweep(folder, days=0, now=time.time() + 1)
        return real(fd, how)

    monkeypatch.setattr(pulls.fcntl, "flock", flock)
    assert pull.claim()
    assert swept == [[os.path.basename(pull.lock_path)]]
    held = os.fstat(pull._lock_fd)
    assert (held.st_dev, held.st_ino) == (os.stat(pull.lock_path).st_dev, os.stat(pull.lock_path).st_ino)
    pull.release()
