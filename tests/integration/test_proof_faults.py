"""Proof suite, faults: each gives a clear message within seconds and, after the next run,
leaves no orphan (container, entry).

The module is interrupted the ways a user meets it: Ctrl-C on the terminal (SIGINT to the
whole process group), SIGTERM and SIGKILL to the module process, the container killed while
the model loads, the registry corrupt, and the Docker engine stopped in the middle of a start.
The Slurm suite covers a killed tunnel (test_slurm: dead tunnel detected and repaired).
"""

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import ROOT, docker, service_task
from .test_slurm import SSH_CONFIG, slurm, slurm_task, squeue_ids, uname  # noqa: F401  pylint: disable=unused-import

SLOW = "env: {TAO_EMULATOR_LOAD_SECONDS: '60'}\nwait_timeout: 120\n"


def module_pids():
    """Pids of running tao_inference_service module processes (AnsiballZ payloads)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if b"AnsiballZ_tao_inference_service" in handle.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue
    return found


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def start_slow(harness, name):
    """A start whose model loads for a minute; returns the playbook process once the container runs."""
    proc = harness.spawn(service_task(extra="name: %s\n%s" % (name, SLOW)))
    assert wait_for(lambda: harness.containers(all_=False) and module_pids()), "the start never got going"
    return proc


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_start_cleans_up_at_once(harness, how):
    proc = start_slow(harness, "interrupted-" + how)
    began = time.monotonic()
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: every process of the job
    else:
        for pid in module_pids():
            os.kill(pid, signal.SIGTERM)
    run = harness.finish(proc, timeout=60)
    assert wait_for(lambda: not harness.containers(), 10), "the container outlived the interrupted start"
    took = time.monotonic() - began
    assert harness.entries() == {}
    if how == "sigterm":
        msg = run.task("Start")["result"]["msg"]
        assert "interrupted (SIGTERM)" in msg and "nothing of it is left" in msg, msg
    assert took < 15
    print("fault %s: cleaned up in %.1f s, no container, no entry" % (how, took))


def test_a_start_killed_with_sigkill_while_loading_is_kept_by_the_next_run(harness):
    proc = start_slow(harness, "killed")
    assert wait_for(lambda: any(e.get("host_url") for e in harness.entries().values()))
    for pid in module_pids():
        os.kill(pid, signal.SIGKILL)
    harness.finish(proc, timeout=60)
    [entry] = harness.entries().values()
    assert entry["status"] == "started" and harness.containers(all_=False)
    # The service was fully started and still loads: the next run by name keeps it.
    again = harness.play(service_task(extra="name: killed\n" + SLOW + "wait: false\n"))
    result = again.task("Start")["result"]
    assert again.rc == 0 and result["changed"] is False and result["job_id"] == entry["job_id"]
    stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: killed\n    state: absent\n")
    assert stop.rc == 0 and harness.containers() == [] and harness.entries() == {}


def test_a_slurm_start_killed_with_sigkill_while_pending_is_found_and_stopped(slurm):  # noqa: F811
    name = uname("killed")
    proc = slurm.spawn(slurm_task(name=name, extra="partition: down\nwait_timeout: 120"))
    assert wait_for(lambda: any(e.get("platform_job_id") for e in slurm.entries().values()))
    for pid in module_pids():
        os.kill(pid, signal.SIGKILL)
    slurm.finish(proc, timeout=60)
    [entry] = slurm.entries().values()
    assert entry["status"] == "starting" and entry["platform_job_id"] in squeue_ids()
    began = time.monotonic()
    ask = slurm.play("- name: Ask\n  tao.inference.tao_inference_request:\n    name: %s\n"
                     "    prompt: hi\n    sampling: {}\n" % name)
    assert "never finished starting" in ask.task("Ask")["result"]["msg"]
    info = slurm.play("- name: Info\n  tao.inference.tao_inference_info:\n    ssh_config: %s\n" % SSH_CONFIG)
    [item] = info.task("Info")["result"]["services"]
    assert item["abandoned"] is True, item
    stop = slurm.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    platform: slurm\n"
                      "    slurm_login_host: tao-login\n    ssh_config: %s\n    state: absent\n" % (name, SSH_CONFIG))
    assert stop.rc == 0, stop.output[-2000:]
    assert stop.task("Stop")["result"]["stopped"] == [entry["job_id"]]
    assert entry["platform_job_id"] not in squeue_ids() and slurm.entries() == {}
    print("fault sigkill on slurm: the abandoned PENDING job was found and cancelled in %.1f s"
          % (time.monotonic() - began))


def test_the_container_killed_while_loading_fails_fast(harness):
    proc = start_slow(harness, "container-killed")
    began = time.monotonic()
    docker("kill", harness.containers(all_=False)[0])
    run = harness.finish(proc, timeout=60)
    took = time.monotonic() - began
    msg = run.task("Start")["result"]["msg"]
    assert "service_exited" in msg and "stopped and removed" in msg, msg
    assert took < 10 and harness.containers() == [] and harness.entries() == {}
    print("fault container killed: failed in %.1f s with the reason; nothing left" % took)


def test_a_corrupt_registry_is_named_and_left_alone(harness):
    with open(harness.registry, "w") as handle:
        handle.write('{"half": ')
    os.chmod(harness.registry, 0o600)
    run = harness.play(service_task(extra="name: corrupt"))
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and harness.registry in msg and "not valid JSON" in msg
    assert open(harness.registry).read() == '{"half": ' and harness.containers() == []


def test_a_planted_registry_of_another_user_is_refused(harness):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    planted = {"00000000-0000-4000-8000-000000000001": {
        "job_id": "00000000-0000-4000-8000-000000000001", "platform": "slurm", "network_arch": "cosmos-rl",
        "status": "started", "host_url": "http://127.0.0.1:9", "platform_job_id": "1",
        "connection": {"login_host": "tao-login", "ssh_config": "/tmp/evil"}}}
    with open(harness.registry, "w") as handle:
        json.dump(planted, handle)
    os.chown(harness.registry, 65534, 65534)
    run = harness.play("- name: Info\n  tao.inference.tao_inference_info:\n", args=["--check"])
    msg = run.task("Info")["result"]["msg"]
    assert run.rc != 0 and "belongs to nobody, not to you" in msg and harness.registry in msg


def _engine_pid():
    with open("/var/run/docker.pid") as handle:
        return int(handle.read().strip())


def test_the_engine_stopped_mid_start_fails_clearly_and_the_next_run_tidies(harness):
    if not os.path.exists("/var/run/docker.pid"):
        pytest.skip("the engine was not started by scripts/ensure-host.sh")
    proc = start_slow(harness, "engine-stopped")
    began = time.monotonic()
    engine = _engine_pid()
    os.kill(engine, signal.SIGTERM)
    try:
        run = harness.finish(proc, timeout=120)
        took = time.monotonic() - began
        msg = run.task("Start")["result"]["msg"]
        # Either the engine stopped answering, or it stopped the container first as it shut down.
        assert ("Docker" in msg and "cannot reach" in msg) or "refused" in msg or \
            ("service_exited" in msg and "stopped and removed" in msg), msg
    finally:
        wait_for(lambda: not os.path.exists("/proc/%d" % engine) or open("/proc/%d/stat" % engine).read()
                 .rsplit(")", 1)[1].split()[0] == "Z", 60)
        subprocess.run([os.path.join(ROOT, "scripts", "ensure-host.sh")], check=True, capture_output=True,
                       timeout=120)
    assert took < 30, msg
    stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: engine-stopped\n"
                        "    state: absent\n")
    assert stop.rc == 0, stop.output[-2000:]
    assert harness.entries() == {} and harness.containers() == []
    print("fault engine stopped: failed in %.1f s (%s); the next run left no entry, no container"
          % (took, msg.split(".")[0]))
