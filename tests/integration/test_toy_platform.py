"""The platform seam, proven: a platform written only for the tests (toy_platform/toy.py) is
registered the way a real one is, in a copy of the collection, and the same lifecycle tests
pass on it as on local-docker. Nothing outside the driver file and this test knows it.
"""

import json
import os
import shutil

import pytest

from .conftest import ROOT, docker, service_task

HERE = os.path.dirname(os.path.abspath(__file__))
REGISTRATION = '''

def _toy():
    from ansible_collections.tao.inference.plugins.module_utils.platforms.toy import ToyDriver
    return ToyDriver


DRIVERS["toy"] = _toy
'''


@pytest.fixture(scope="module")
def toy_collections(tmp_path_factory):
    """A collections path whose tao.inference is this checkout plus the toy platform: the driver file
    and its registration, nothing else changed."""
    base = tmp_path_factory.mktemp("toy-collections")
    target = base / "ansible_collections" / "tao" / "inference"
    target.mkdir(parents=True)
    for name in os.listdir(ROOT):
        if name in (".git", ".build", ".venv", "plugins", "tests"):
            continue
        os.symlink(os.path.join(ROOT, name), str(target / name))
    shutil.copytree(os.path.join(ROOT, "plugins"), str(target / "plugins"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    platforms = target / "plugins" / "module_utils" / "platforms"
    shutil.copy(os.path.join(HERE, "toy_platform", "toy.py"), str(platforms / "toy.py"))
    with open(str(platforms / "drivers.py"), "a") as handle:
        handle.write(REGISTRATION)
    return {"ANSIBLE_COLLECTIONS_PATH": str(base)}


def toy_task(title="Start", extra=""):
    return service_task(title=title, extra="platform: toy\n" + extra)


def test_start_ready_request_stop_on_the_toy_platform(harness, toy_collections):
    run = harness.play(toy_task(extra="name: toy-svc\ntoy_tag: seam") + """\
- name: Ask
  tao.inference.tao_inference_request:
    name: toy-svc
    prompt: What is in this image?
    media: ["%s"]
    sampling: {}
  register: answer
- name: Info
  tao.inference.tao_inference_info:
    name: toy-svc
  register: info
""" % os.path.join(ROOT, "playbooks", "files", "demo.png"), env=toy_collections)
    assert run.rc == 0, run.output[-3000:]
    started = run.task("Start")["result"]
    assert started["platform"] == "toy" and started["readiness"]["state"] == "ready"
    assert started["shape"]["platform_options"] == {"tag": "seam"}
    assert run.task("Ask")["result"]["content"]
    [item] = run.task("Info")["result"]["services"]
    assert item["running"] and item["ready"]
    [doc] = json.loads(docker("inspect", started["job_id"]).stdout)
    assert doc["Config"]["Labels"]["tao.inference.toy_tag"] == "seam"  # its own option reached its driver
    stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: toy-svc\n"
                        "    platform: toy\n    state: absent\n", env=toy_collections)
    assert stop.task("Stop")["result"]["stopped"] == [started["job_id"]]
    assert harness.entries() == {} and harness.containers() == []


def test_idempotency_and_stop_by_name_without_the_registry(harness, toy_collections):
    first = harness.play(toy_task(extra="name: toy-idem\nwait: false"), env=toy_collections)
    second = harness.play(toy_task(extra="name: toy-idem\nwait: false"), env=toy_collections)
    assert first.task("Start")["status"] == "changed" and second.task("Start")["status"] == "ok"
    job_id = first.task("Start")["result"]["job_id"]
    assert second.task("Start")["result"]["job_id"] == job_id
    os.remove(harness.registry)  # lost: absent by name finds the labelled container anyway
    stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: toy-idem\n"
                        "    platform: toy\n    state: absent\n", env=toy_collections)
    assert stop.task("Stop")["result"]["stopped"] == [job_id] and harness.containers() == []


def test_another_platforms_option_is_refused_by_name(harness, toy_collections):
    run = harness.play(service_task(extra="toy_tag: other"), env=toy_collections)
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and "toy_tag is an option of platform toy, not of local-docker" in msg
    run = harness.play(toy_task(extra="partition: gpu"), env=toy_collections)
    assert "partition is an option of platform slurm, not of toy" in run.task("Start")["result"]["msg"]
    assert harness.containers() == []


def test_the_checkout_itself_knows_no_toy():
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "plugins")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as handle:
                    assert "toy" not in handle.read().lower(), os.path.join(folder, name)
