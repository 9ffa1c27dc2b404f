"""Image pulls that show their progress, through ansible-playbook against the real Docker engine.

No container registry can be reached here, so tests/registry/serve.py serves an image on
127.0.0.1 over the Registry HTTP API v2 (dockerd trusts loopback registries over plain HTTP),
sending each blob slowly, so the engine really pulls and its progress is seen as it goes.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from .conftest import IMAGE, ROOT, docker, service_task

SERVE = os.path.join(ROOT, "tests", "registry", "serve.py")


class RegistryServer(object):
    def __init__(self, tmp_path, *args):
        self.log = open(str(tmp_path / ("registry-%s.log" % uuid.uuid4().hex[:6])), "w+")
        self.proc = subprocess.Popen([sys.executable, SERVE] + list(args), stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), "the test registry did not start: %s" % line
        self.port = int(line.split()[1])
        self.repository = "127.0.0.1:%d/tao-pull-test" % self.port

    def image(self, tag=None):
        return "%s:%s" % (self.repository, tag or uuid.uuid4().hex[:8])

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()
        found = docker("images", "--format", "{{.Repository}}:{{.Tag}}", self.repository).stdout.split()
        if found:
            docker("rmi", "-f", *found, check=False)


@pytest.fixture(name="registry")
def registry_fixture(tmp_path):
    started = []

    def start(*args):
        server = RegistryServer(tmp_path, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pull_role(image, interval=1, options=None):
    return """\
- name: Pull
  ansible.builtin.include_role:
    name: tao.inference.local_docker
    tasks_from: pull
  vars:
    local_docker_image: %s
    local_docker_pull_interval: %s
    local_docker_platform_options: %s
""" % (image, interval, json.dumps(options or {}))


def named(run, suffix):
    return [r for r in run.records if r["task"].endswith(suffix)]


def pull_modules():
    """Pids of running tao_inference_pull module processes."""
    found = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if b"AnsiballZ_tao_inference_pull" in handle.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


SIZES = "1500000,1000000,500000"


def test_the_role_pulls_as_its_own_step_showing_steady_progress(harness, registry):
    server = registry("--layers", SIZES, "--rate", "200000")
    image = server.image()
    run = harness.play(pull_role(image))
    assert run.rc == 0, run.output
    shown = [r["result"]["msg"] for r in named(run, "Show the pull's progress") if r["status"] == "ok"]
    assert all(image in m for m in shown), shown
    shown = [m for m in shown if "asking the registry for the image" not in m]  # before the manifest came
    assert len(shown) >= 2, run.output  # several lines while it pulls, not one at the end
    done = [float(re.search(r"([\d.]+) s$", m).group(1)) for m in shown]
    layers = [re.search(r"(\d)/3 layers", m) for m in shown]
    assert all(layers) and all(" of 2.8" in m for m in shown), shown
    got = [re.search(r": ([\d.]+) (\w+) of", m).groups() for m in shown]
    assert got == sorted(got, key=lambda g: float(g[0]) * {"Bytes": 1, "KB": 1e3, "MB": 1e6}[g[1]]), got
    assert done == sorted(done)
    outcome = named(run, "Look whether the pull has ended")[-1]["result"]
    pull = outcome["pull"]
    assert pull["pulled"] is True and pull["layers"] == 3 and pull["joined"] is False
    assert 3000000 <= pull["bytes"] <= 3100000 and pull["seconds"] >= 2.5, pull
    report = named(run, "Report the pull")[-1]["result"]["msg"]
    assert "pulled 2.8" in report and "in 3 layers" in report
    assert docker("image", "inspect", image, check=False).returncode == 0
    # The progress lines came at a steady pace while it pulled: no line waited much over the interval.
    times = [r["finished"] for r in named(run, "Show the pull's progress") if r["status"] == "ok"]
    assert all(b - a < 8 for a, b in zip(times, times[1:])), times

    again = harness.play(pull_role(image))
    assert again.rc == 0, again.output
    pull = named(again, "Look whether the pull has ended")[-1]["result"]["pull"]
    assert pull["pulled"] is False and pull["seconds"] == 0
    assert "already on the engine, nothing pulled" in named(again, "Report the pull")[-1]["result"]["msg"]
    assert not [r for r in named(again, "Show the pull's progress") if r["status"] == "ok"]
    # The state file of the pull is the user's alone and holds no credential.
    pulls = os.path.expanduser("~/.local/state/tao-inference/pulls")
    assert os.stat(pulls).st_mode & 0o777 == 0o700
    for name in os.listdir(pulls):
        assert os.stat(os.path.join(pulls, name)).st_mode & 0o077 == 0


def test_a_second_pull_joins_the_first(harness, registry):
    server = registry("--layers", SIZES, "--rate", "150000")
    image = server.image()
    task = "- name: Pull\n  tao.inference.tao_inference_pull: {image: '%s'}\n  register: pulled\n" % image
    first = harness.spawn(task)
    deadline = time.monotonic() + 20
    while not pull_modules() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    second = harness.play(task)
    one = harness.finish(first)
    assert one.rc == 0 and second.rc == 0, one.output + second.output
    a, b = one.task("Pull")["result"]["pull"], second.task("Pull")["result"]["pull"]
    assert a["joined"] is False and b["joined"] is True and a["pulled"] and b["pulled"]
    assert a["layers"] == b["layers"] == 3 and a["bytes"] == b["bytes"]
    # The registry sent each blob once: the second run did not pull it again.
    with urllib.request.urlopen("http://127.0.0.1:%d/stats" % server.port) as answer:
        fetches = json.loads(answer.read())["fetches"]
    assert sorted(fetches.values()) == [1, 1, 1, 1]


def test_a_pull_cut_short_leaves_no_process_and_the_next_starts_afresh(harness, registry):
    server = registry("--layers", SIZES, "--rate", "150000")
    image = server.image()
    run = harness.play(pull_role(image, options={}).replace(
        "local_docker_pull_interval: 1", "local_docker_pull_interval: 1\n    local_docker_pull_timeout: 3"))
    assert run.rc != 0
    assert wait_gone(pull_modules, 10), "a pull process outlived the async limit"
    assert docker("image", "inspect", image, check=False).returncode != 0
    watch = harness.play("- name: Watch\n  tao.inference.tao_inference_pull: {image: '%s', watch: true, "
                         "watch_timeout: 0.5}\n" % image)
    assert watch.task("Watch")["result"]["state"] in ("interrupted", "failed"), watch.output
    again = harness.play("- name: Pull\n  tao.inference.tao_inference_pull: {image: '%s'}\n" % image, timeout=120)
    assert again.rc == 0, again.output
    pull = again.task("Pull")["result"]["pull"]
    assert pull["pulled"] and not pull["joined"] and pull["layers"] == 3


WATCHER = """\
import os, subprocess, sys, time
# Stands in for Ansible's async watcher (its file name and arguments are the real one's), with the
# race made certain: the module runs in a process group of its own, out of reach of the group kill.
child = subprocess.Popen([sys.executable, "-m", sys.argv[3], sys.argv[4]], start_new_session=True,
                         stdout=subprocess.DEVNULL)
open(sys.argv[5], "w").write(str(child.pid))
time.sleep(600)
"""


def test_a_pull_whose_async_parent_is_killed_stops_though_it_left_the_killed_group(harness, registry, tmp_path):
    """Ansible's async watcher kills its child's process group at the time limit; a module its child
    started before the group was made is outside it. Killing that parent must still stop the pull, and
    the image must not arrive later with nobody waiting for it."""
    server = registry("--layers", SIZES, "--rate", "150000")
    image = server.image()
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"image": image, "registry_path": str(tmp_path / "reg")}}))
    module = "ansible_collections.tao.inference.plugins.modules.tao_inference_pull"
    marker = tmp_path / "module.pid"
    watcher = tmp_path / "async_wrapper.py"
    watcher.write_text(WATCHER)
    parent = subprocess.Popen([sys.executable, str(watcher), "j1", "3", module, str(args), str(marker)],
                              env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".build", "collections")))
    child = None
    try:
        deadline = time.monotonic() + 20
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(marker.read_text())
        puller = pulls_of(image)
        deadline = time.monotonic() + 20
        while not puller() and time.monotonic() < deadline:  # the engine has begun the pull
            time.sleep(0.1)
        assert puller(), "the engine never began the pull (no connection to the test registry)"
        parent.kill()
        parent.wait(10)
        assert wait_gone(lambda: running(child), 10), "the pull module outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if child and running(child):
            os.kill(child, signal.SIGKILL)
    time.sleep(12)  # longer than the whole pull takes: a pull left running would have ended by now
    assert docker("image", "inspect", image, check=False).returncode != 0


def running(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def pulls_of(image):
    """A function telling whether the engine is fetching blobs of ``image`` from the test registry."""
    port = image.split(":")[1].split("/")[0]

    def listing():
        found = subprocess.run(["ss", "-Htn", "state", "established", "dst", "127.0.0.1:%s" % port],
                               capture_output=True, text=True, check=False).stdout
        return found.strip()
    return listing


def wait_gone(listing, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not listing():
            return True
        time.sleep(0.2)
    return not listing()


@pytest.fixture(name="saved_emulator")
def saved_emulator_fixture(tmp_path):
    path = str(tmp_path / "emulator.tar")
    docker("save", "-o", path, IMAGE)
    return path


def test_the_start_role_pulls_then_starts_and_the_module_reports_its_pull(harness, registry, saved_emulator):
    server = registry("--saved", saved_emulator, "--rate", "12000000")
    image = server.image()
    start = harness.play("""\
- name: Start through the role
  ansible.builtin.include_role:
    name: tao.inference.inference_service
  vars:
    inference_service_network_arch: cosmos-rl
    inference_service_model_path: hf_model://nvidia/Cosmos-Reason1-7B
    inference_service_image: %s
    inference_service_num_gpus: 0
    inference_service_name: pulled-by-role
    inference_service_pull_interval: 1
    inference_service_watch_interval: 2
""" % image)
    assert start.rc == 0, start.output
    shown = [r for r in named(start, "Show the pull's progress") if r["status"] == "ok"]
    assert shown and "layers" in shown[0]["result"]["msg"], start.output
    started = named(start, "Start the service")[-1]["result"]
    assert started["pull"]["pulled"] is False  # the role had pulled it: the start found it there
    ready = [r["result"]["msg"] for r in named(start, "Show the readiness state")]
    assert ready and ": ready after" in ready[-1], ready

    # The module alone, with an image it has to pull: its result says what the pull took.
    stopped = harness.play("- name: Stop\n  tao.inference.tao_inference_service: {state: absent, name: pulled-by-role}\n")
    assert stopped.task("Stop")["status"] == "changed", stopped.output
    # Another registry: layers of digests the engine has never seen, sent whole.
    image = registry("--saved", saved_emulator, "--rate", "12000000").image()
    module = harness.play(service_task(title="Start alone", extra="name: pulled-by-module\nimage: %s" % image)
                          .replace("    image: %s\n" % IMAGE, "", 1)
                          + "- name: Stop\n  tao.inference.tao_inference_service: {state: absent, "
                            "name: pulled-by-module}\n")
    assert module.rc == 0, module.output
    pull = module.task("Start alone")["result"]["pull"]
    assert pull["pulled"] is True and pull["layers"] >= 1 and pull["bytes"] > 10000000 and pull["seconds"] > 0.5
    assert harness.containers() == []
