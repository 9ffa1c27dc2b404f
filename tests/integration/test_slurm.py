"""platform: slurm on a real single-node Slurm, through a real sshd on 127.0.0.1:2222.

`make test` brings up munge + slurmctld + slurmd (scripts/ensure-slurm.sh) and the
sshd (scripts/ensure-sshd.sh); the login host is that sshd, and jobs run the
reference microservice with the `docker` container runtime.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import IMAGE, ROOT, docker

SSH_CONFIG = os.path.join(ROOT, ".build", "ssh", "config")
PNG = os.path.join(ROOT, "playbooks", "files", "demo.png")


def sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def slurm(harness):
    if not os.path.exists(SSH_CONFIG) or sh("sinfo", "-h").returncode != 0:
        pytest.fail("no test Slurm/sshd: run scripts/ensure-slurm.sh and scripts/ensure-sshd.sh (make test does)")
    yield harness
    # Nothing of this test may outlive it. Services it left running are cancelled the way an
    # admin would (scancel): their containers must go too (the batch script's trap).
    entries = list(harness.entries().values())
    for entry in entries:
        if entry.get("platform_job_id"):
            sh("scancel", str(entry["platform_job_id"]))
        if entry.get("tunnel_pid") and tunnel_running(entry):
            os.kill(int(entry["tunnel_pid"]), signal.SIGKILL)

    def left():
        return [e["job_id"] for e in entries if docker("ps", "-aq", "--filter", "name=" + e["job_id"]).stdout.strip()]

    if not wait_for(lambda: not left(), 20):
        names = left()
        docker("rm", "-f", *names, check=False)
        pytest.fail("containers outlived their cancelled Slurm jobs: %s (the batch script's trap "
                    "and --rm must remove them)" % names)


def slurm_task(title="Start", name=None, extra="", arch="cosmos-rl", model="hf_model://nvidia/Cosmos-Reason1-7B"):
    lines = [
        "- name: %s" % title,
        "  tao.inference.tao_inference_service:",
        "    platform: slurm",
        "    slurm_login_host: tao-login",
        "    ssh_config: %s" % SSH_CONFIG,
        "    slurm_container_runtime: docker",
        "    network_arch: %s" % arch,
        "    model_path: %s" % model,
        "    image: %s" % IMAGE,
        "    num_gpus: 0",
        "    wait_timeout: 120",
    ]
    if name:
        lines.append("    name: %s" % name)
    lines += ["    %s" % line for line in extra.splitlines()]
    lines.append("  register: svc")
    return "\n".join(lines) + "\n"


ASK = """\
- name: Ask
  tao.inference.tao_inference_request:
    job_id: "{{ svc.job_id }}"
    prompt: what is this?
    media: ["%s"]
    sampling: {}
  register: answer
""" % PNG


RUN = os.urandom(3).hex()  # names unique to this run: other runs may share the cluster


def uname(base):
    return "%s-%s" % (base, RUN)


def squeue_ids():
    return sh("squeue", "-h", "-o", "%i").stdout.split()


def jobs_named(name):
    """Active Slurm job ids whose comment carries ``name`` (see slurm.py COMMENT_PREFIX)."""
    lines = sh("squeue", "-h", "-o", "%i|%k").stdout.splitlines()
    return [line.split("|")[0] for line in lines if line.endswith(",name=%s" % name)]


def tunnel_running(entry):
    pid = int(entry["tunnel_pid"])
    try:
        with open("/proc/%d/stat" % pid) as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return False
    return state not in ("Z", "X") and b"-L" in cmdline


def wait_for(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_start_request_stop_leaves_nothing(slurm):
    run = slurm.play(slurm_task(name=uname("s-one")) + ASK)
    assert run.rc == 0, run.output
    svc = run.task("Start")["result"]
    assert svc["platform"] == "slurm" and svc["platform_job_id"] in squeue_ids()
    assert svc["host_url"] == "http://localhost:%d" % svc["host_port"]
    assert svc["slurm_node"] and svc["readiness"]["state"] == "ready"
    entry = slurm.entries()[svc["job_id"]]
    assert entry["tunnel_pid"] == svc["tunnel_pid"] and tunnel_running(entry)
    assert "reference microservice" in run.task("Ask")["result"]["content"]

    stop = slurm.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    state: absent\n"
                      % uname("s-one"))
    assert stop.task("Stop")["status"] == "changed", stop.output
    assert svc["platform_job_id"] not in squeue_ids()
    assert wait_for(lambda: docker("ps", "-aq", "--filter", "name=" + svc["job_id"]).stdout.strip() == "")
    assert wait_for(lambda: not tunnel_running(entry), 5)
    assert slurm.entries() == {}


def test_idempotency_with_name(slurm):
    task = slurm_task(name=uname("s-idem"))
    assert slurm.play(task, args=["--check"]).task("Start")["status"] == "changed"
    assert slurm.entries() == {} and not jobs_named(uname("s-idem"))
    first = slurm.play(task)
    assert first.task("Start")["status"] == "changed", first.output
    again = slurm.play(task)
    assert again.task("Start")["status"] == "ok", again.output
    assert again.task("Start")["result"]["job_id"] == first.task("Start")["result"]["job_id"]
    assert slurm.play(task, args=["--check"]).task("Start")["status"] == "ok"
    assert jobs_named(uname("s-idem")) == [first.task("Start")["result"]["platform_job_id"]]


def test_two_services_get_two_tunnels_on_two_ports(slurm):
    run = slurm.play(slurm_task(title="First") + slurm_task(title="Second", arch="tao-dataservices",
                                                            model="hf_model://org/m"))
    assert run.rc == 0, run.output
    one, two = run.task("First")["result"], run.task("Second")["result"]
    assert one["host_port"] != two["host_port"] and one["tunnel_pid"] != two["tunnel_pid"]
    for svc in (one, two):
        asked = slurm.play("""\
- name: Ask
  tao.inference.tao_inference_request:
    job_id: %s
    prompt: hi
    media: ["%s"]
    sampling: {}
""" % (svc["job_id"], PNG))
        assert asked.rc == 0, asked.output
        assert asked.task("Ask")["result"]["host_url"] == svc["host_url"]


def test_pending_past_the_timeout_is_cancelled_with_the_reason(slurm):
    started = time.monotonic()
    run = slurm.play(slurm_task(name=uname("s-pending"), extra="partition: down\nwait_timeout: 4"))
    assert run.rc != 0
    msg = run.task("Start")["result"]["msg"]
    assert "did not start within 4" in msg and "Slurm holds it: PartitionDown" in msg
    assert "it was cancelled" in msg
    assert time.monotonic() - started < 60
    assert not jobs_named(uname("s-pending")) and slurm.entries() == {}


def test_job_cancelled_elsewhere_is_reported_and_its_tunnel_stopped(slurm):
    run = slurm.play(slurm_task(name=uname("s-gone")))
    svc = run.task("Start")["result"]
    entry = slurm.entries()[svc["job_id"]]
    sh("scancel", svc["platform_job_id"])
    assert wait_for(lambda: svc["platform_job_id"] not in squeue_ids())
    info = slurm.play("- name: Info\n  tao.inference.tao_inference_info:\n")
    item = info.task("Info")["result"]["services"][0]
    assert item["platform_status"]["state"] == "exited"
    assert "CANCELLED" in item["platform_status"]["detail"]
    assert item["released"] is True and not tunnel_running(entry)
    assert info.task("Info")["status"] == "changed"  # it stopped a process on this host
    pruned = slurm.play("- name: Prune\n  tao.inference.tao_inference_info:\n    prune: true\n")
    assert pruned.task("Prune")["result"]["pruned"] == [svc["job_id"]] and slurm.entries() == {}


def test_dead_tunnel_is_detected_and_repaired_by_present(slurm):
    task = slurm_task(name=uname("s-repair"))
    first = slurm.play(task).task("Start")["result"]
    os.kill(int(first["tunnel_pid"]), signal.SIGKILL)
    assert wait_for(lambda: not tunnel_running(first), 5)
    info = slurm.play("- name: Info\n  tao.inference.tao_inference_info:\n").task("Info")["result"]
    status = info["services"][0]["platform_status"]
    assert status["state"] == "running" and status["tunnel_alive"] is False
    assert info["services"][0]["ready"] is False

    repaired = slurm.play(task + ASK)
    assert repaired.rc == 0, repaired.output
    result = repaired.task("Start")["result"]
    assert repaired.task("Start")["status"] == "changed" and result["repaired"] == ["tunnel"]
    assert result["job_id"] == first["job_id"] and result["tunnel_pid"] != first["tunnel_pid"]
    assert tunnel_running(slurm.entries()[first["job_id"]])
    assert repaired.task("Ask")["result"]["status"] == 200


def test_secrets_reach_the_job_environment_only(slurm):
    canary = "hf_SLURM_CANARY_6f1e0d2c9b8a"
    run = slurm.play(slurm_task(name=uname("s-secret"), extra="secret_env: [HF_TOKEN]"), args=["-vvv"],
                     env={"HF_TOKEN": canary})
    assert run.rc == 0, run.output
    svc = run.task("Start")["result"]
    script = sh("scontrol", "write", "batch_script", svc["platform_job_id"], "-").stdout
    assert "docker run" in script and "-e HF_TOKEN" in script and canary not in script
    assert canary not in run.output and canary not in json.dumps(run.records)
    assert canary not in open(slurm.registry).read()
    env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", svc["job_id"]).stdout)
    assert "HF_TOKEN=%s" % canary in env
    cmd = docker("inspect", "--format", "{{json .Config.Cmd}}", svc["job_id"]).stdout
    assert canary not in cmd


def test_load_failure_fails_fast_with_the_log_and_cancels_the_job(slurm):
    env = 'env: {TAO_EMULATOR_LOAD_SECONDS: "0.3", TAO_EMULATOR_LOAD_FAIL: "shard 2 is corrupt"}'
    run = slurm.play(slurm_task(name=uname("s-fail"), extra=env))
    assert run.rc != 0
    msg = run.task("Start")["result"]["msg"]
    assert "model_load_failed" in msg and "shard 2 is corrupt" in msg
    assert not jobs_named(uname("s-fail")) and slurm.entries() == {}


def test_absent_by_name_finds_a_job_the_registry_lost(slurm):
    run = slurm.play(slurm_task(name=uname("s-lost"), extra="wait: false"))
    svc = run.task("Start")["result"]
    tunnel = slurm.entries()[svc["job_id"]]
    os.unlink(slurm.registry)  # the registry is lost; the job runs on
    stop = slurm.play("""\
- name: Stop
  tao.inference.tao_inference_service:
    name: %s
    state: absent
    platform: slurm
    slurm_login_host: tao-login
    ssh_config: %s
""" % (uname("s-lost"), SSH_CONFIG))
    assert stop.task("Stop")["status"] == "changed", stop.output
    assert stop.task("Stop")["result"]["stopped"] == [svc["job_id"]]
    assert svc["platform_job_id"] not in squeue_ids()
    # Its tunnel was recorded only in the lost registry: found by where it forwards to, and stopped.
    assert wait_for(lambda: not tunnel_running(tunnel), 5)


def test_start_playbook_on_slurm_runs_the_preflight_role(slurm):
    run = slurm.playbook(os.path.join(ROOT, "playbooks", "start.yml"), {
        "platform": "slurm", "slurm_login_host": "tao-login", "ssh_config": SSH_CONFIG,
        "slurm_container_runtime": "docker", "network_arch": "cosmos-rl", "model_path": "hf_model://a/b",
        "image": IMAGE, "num_gpus": 0, "name": uname("s-play")})
    assert run.rc == 0, run.output
    assert "Slurm via tao-login: partitions" in run.stdout
    job_id = run.task("Start the service")["result"]["job_id"]
    assert "%s: ready after" % job_id in run.stdout
    stop = slurm.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), {"name": uname("s-play")})
    assert stop.rc == 0, stop.output
    assert slurm.entries() == {} and not jobs_named(uname("s-play"))
