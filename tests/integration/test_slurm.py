"""platform: slurm on a real single-node Slurm, through a real sshd on 127.0.0.1:2222.

`make test` brings up munge + slurmctld + slurmd (scripts/ensure-slurm.sh) and the
sshd (scripts/ensure-sshd.sh); the login host is that sshd, and jobs run the
reference microservice with the `docker` container runtime.
"""

import json
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import time
import urllib.request
import uuid

import pytest

from ansible_collections.tao.inference.plugins.module_utils import procs
from ansible_collections.tao.inference.plugins.module_utils.command import container_env, inner_command
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import Launch
from ansible_collections.tao.inference.plugins.module_utils.platforms.slurm import (
    SlurmDriver, batch_script, parse_node_file,
)
from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec

from .conftest import IMAGE, ROOT, docker

SSH_CONFIG = os.path.join(ROOT, ".build", "ssh", "config")
PNG = os.path.join(ROOT, "playbooks", "files", "demo.png")
CONNECTION = "    platform: slurm\n    slurm_login_host: tao-login\n    ssh_config: %s\n" % SSH_CONFIG


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

    stop = slurm.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    state: absent\n%s"
                      % (uname("s-one"), CONNECTION))
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
    info = slurm.play("- name: Info\n  tao.inference.tao_inference_info:\n    ssh_config: %s\n" % SSH_CONFIG)
    item = info.task("Info")["result"]["services"][0]
    assert item["platform_status"]["state"] == "exited", item["platform_status"]
    assert "CANCELLED" in item["platform_status"]["detail"]
    # info changes nothing (Ansible's rule for _info modules): the tunnel still runs, the entry stays.
    assert info.task("Info")["status"] == "ok" and "released" not in item
    assert tunnel_running(entry) and svc["job_id"] in slurm.entries()
    prune = "- name: Prune\n  tao.inference.tao_inference_prune:\n    name: %s\n    ssh_config: %s\n" % (
        uname("s-gone"), SSH_CONFIG)
    check = slurm.play(prune, args=["--check", "--diff"]).task("Prune")
    assert check["status"] == "changed" and check["result"]["pruned"] == [svc["job_id"]]
    assert check["result"]["diff"]["before"][svc["job_id"]]["tunnel_pid"] == entry["tunnel_pid"]
    assert tunnel_running(entry) and svc["job_id"] in slurm.entries()  # check mode touched nothing
    pruned = slurm.play(prune).task("Prune")
    assert pruned["status"] == "changed" and pruned["result"]["pruned"] == [svc["job_id"]]
    assert pruned["result"]["released"] == [svc["job_id"]] and not tunnel_running(entry) and slurm.entries() == {}
    again = slurm.play(prune).task("Prune")
    assert again["status"] == "ok" and again["result"]["pruned"] == [] and again["result"]["released"] == []


def test_dead_tunnel_is_detected_and_repaired_by_present(slurm):
    task = slurm_task(name=uname("s-repair"))
    first = slurm.play(task).task("Start")["result"]
    os.kill(int(first["tunnel_pid"]), signal.SIGKILL)
    assert wait_for(lambda: not tunnel_running(first), 5)
    info = slurm.play("- name: Info\n  tao.inference.tao_inference_info:\n    ssh_config: %s\n" % SSH_CONFIG).task("Info")["result"]
    status = info["services"][0]["platform_status"]
    assert status["state"] == "running" and status["tunnel_alive"] is False
    assert info["services"][0]["ready"] is False

    repaired = slurm.play(task + ASK)
    assert repaired.rc == 0, repaired.output
    result = repaired.task("Start")["result"]
    assert repaired.task("Start")["status"] == "changed" and result["repaired"] == ["tunnel_down"]
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
    options = {"slurm_login_host": "tao-login", "ssh_config": SSH_CONFIG, "slurm_container_runtime": "docker"}
    run = slurm.playbook(os.path.join(ROOT, "playbooks", "start.yml"), {
        "tao_platform": "slurm", "tao_platform_options": options, "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://a/b",
        "tao_image": IMAGE, "tao_num_gpus": 0, "tao_name": uname("s-play")})
    assert run.rc == 0, run.output
    assert "tao-login; image" in run.stdout  # the preflight's report
    # On Slurm the start runs in the background while the job is queued; its outcome is taken after.
    job_id = run.task("Take the start's outcome")["result"]["job_id"]
    assert "%s: ready after" % job_id in run.stdout
    assert re.search(r"%s: (submitting|pending|running|ready)" % uname("s-play"), run.stdout)  # the queue watch
    stop = slurm.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), {
        "tao_name": uname("s-play"), "tao_platform": "slurm", "tao_platform_options": options})
    assert stop.rc == 0, stop.output
    assert slurm.entries() == {} and not jobs_named(uname("s-play"))


# -- trust: private files, own jobs only, submits that were cut off ------------------------------------
def login_home():
    return pwd.getpwnam("root").pw_dir  # tao-login is root@127.0.0.1 (scripts/ensure-sshd.sh)


def test_the_job_folder_and_logs_are_private(slurm):
    folder = os.path.join(login_home(), ".tao-inference")
    if os.path.isdir(folder):
        os.chmod(folder, 0o755)  # a folder an older release made readable is made private
    run = slurm.play(slurm_task(name=uname("s-private"), extra="wait: false"))
    assert run.rc == 0, run.output
    job_id = run.task("Start")["result"]["job_id"]
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(folder, "%s.log" % job_id)).st_mode) == 0o600


def test_slurm_bind_address_is_where_the_docker_runtime_publishes(slurm):
    # The login host is the node here, so loopback reaches it; on a cluster it is a node address.
    run = slurm.play(slurm_task(name=uname("s-bind"), extra="slurm_bind_address: 127.0.0.1") + ASK)
    assert run.rc == 0, run.output
    svc = run.task("Start")["result"]
    ports = json.loads(docker("inspect", "--format", "{{json .HostConfig.PortBindings}}", svc["job_id"]).stdout)
    assert [b["HostIp"] for b in ports["8080/tcp"]] == ["127.0.0.1"]
    assert svc["slurm_node_addr"] == "127.0.0.1"
    assert "reference microservice" in run.task("Ask")["result"]["content"]

    bad = slurm.play(slurm_task(title="Bad", extra="slurm_bind_address: node-1"))
    assert bad.rc != 0 and "slurm_bind_address 'node-1' is not an IP address" in bad.task("Bad")["result"]["msg"]


def test_absent_by_job_id_finds_a_job_the_registry_lost(slurm, named):
    run = slurm.play(slurm_task(name=named("s-lostid"), extra="wait: false"))
    svc = run.task("Start")["result"]
    tunnel = slurm.entries()[svc["job_id"]]
    os.unlink(slurm.registry)
    stop = slurm.play("- name: Stop\n  tao.inference.tao_inference_service:\n    job_id: %s\n    state: absent\n%s"
                      % (svc["job_id"], CONNECTION))
    assert stop.task("Stop")["status"] == "changed", stop.output
    assert stop.task("Stop")["result"]["stopped"] == [svc["job_id"]]
    assert wait_for(lambda: svc["platform_job_id"] not in squeue_ids())
    assert wait_for(lambda: not tunnel_running(tunnel), 5)


def sbatch(*args, **kw):
    """Submit a job straight to Slurm (not through the collection); return its id."""
    proc = subprocess.run(["sbatch", "--parsable"] + list(args), capture_output=True, text=True, check=False,
                          timeout=60, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


@pytest.fixture
def jobs():
    """Ids of jobs a test submits itself; all cancelled, and their shim containers removed, at the end."""
    ids = []
    yield ids
    if ids:
        sh("scancel", *ids)
        names = ["tao-shim-%s" % i for i in ids]
        wait_for(lambda: not set(ids) & set(squeue_ids()), 20)
        docker("rm", "-f", *names, check=False)


def driver():
    return SlurmDriver("tao-login", ssh_config=SSH_CONFIG)


@pytest.fixture
def named(jobs):
    """A run-unique service name; whatever Slurm job still carries it at the end is cancelled."""
    made = []

    def name(base):
        made.append(uname(base))
        return made[-1]
    yield name
    for item in made:
        jobs += jobs_named(item)


def test_find_and_stop_touch_only_this_users_jobs_of_this_service(slurm, jobs):
    name = uname("s-owner")
    ours, theirs, other = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    sleep = ["--output=/dev/null", "--chdir=/tmp", "--wrap=sleep 300"]
    mine = sbatch("--comment=tao.inference:job_id=%s,name=%s" % (ours, name), *sleep)
    foreign = sbatch("--uid=nobody", "--comment=tao.inference:job_id=%s,name=%s" % (theirs, name), *sleep)
    bogus = sbatch("--comment=tao.inference:job_id=../../etc,name=%s" % name, *sleep)
    jobs += [mine, foreign, bogus]
    drv = driver()
    assert [(f.ident, f.labels["platform_job_id"]) for f in drv.find(name)] == [(ours, mine)]
    # A registry entry that points at another user's job, or at another service's job: left alone,
    # reported as not the service's, and stop refuses (the entry's own job may run elsewhere).
    for job_id, slurm_id in ((theirs, foreign), (other, mine), (ours, bogus)):
        status = drv.status({"job_id": job_id, "platform_job_id": slurm_id})
        assert status.state == "missing" and "is not this service's" in status.detail, status.detail
        with pytest.raises(TaoInferenceError, match="is not that service's job") as caught:
            drv.stop({"job_id": job_id, "platform_job_id": slurm_id})
        assert "Nothing was cancelled" in caught.value.msg
    assert {mine, foreign, bogus} <= set(squeue_ids())
    assert drv.status({"job_id": ours, "platform_job_id": mine}).state == "running"
    assert drv.stop({"job_id": ours, "platform_job_id": mine}) is True
    assert mine not in squeue_ids() and {foreign, bogus} <= set(squeue_ids())


@pytest.mark.parametrize("state, put", [
    ("STOPPED", ["scancel", "--signal=STOP"]),
    ("SPECIAL_EXIT", ["scontrol", "requeuehold", "State=SpecialExit"]),
])
def test_a_job_in_a_state_that_is_not_final_is_still_stopped(slurm, jobs, state, put):
    """Slurm's own spelling of states that are neither PENDING nor RUNNING, yet not ended."""
    job_id = str(uuid.uuid4())
    slurm_id = sbatch("--comment=tao.inference:job_id=%s,name=%s" % (job_id, uname("s-state")),
                      "--output=/dev/null", "--chdir=/tmp", "--wrap=sleep 300")
    jobs.append(slurm_id)
    assert wait_for(lambda: sh("squeue", "-h", "-j", slurm_id, "-o", "%T").stdout.strip() == "RUNNING")
    assert sh(*(put + [slurm_id])).returncode == 0
    assert wait_for(lambda: sh("squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T").stdout.strip() == state)
    drv = driver()
    status = drv.status({"job_id": job_id, "platform_job_id": slurm_id})
    assert status.state == "pending" and state in status.detail
    assert drv.stop({"job_id": job_id, "platform_job_id": slurm_id}) is True
    assert sh("squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T").stdout.strip() == "CANCELLED"


def launch_for(name, timeout=60, **params):
    base = dict(network_arch="cosmos-rl", model_path="hf_model://a/b", platform="slurm", slurm_login_host="tao-login",
                slurm_container_runtime="docker", image=IMAGE, num_gpus=0, name=name)
    base.update(params)
    spec = build_spec(base, {})
    job_id = str(uuid.uuid4())
    plain, secret = container_env(spec, job_id, {})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Launch(spec, job_id, inner_command(spec, job_id), plain, secret, port, {}, timeout=timeout)


def submit_then(drv, after):
    """Make the submit call reach the real sbatch, then behave as ``after`` says."""
    real = drv.target.run

    def run(words, **kw):
        if not str(words[0]).startswith("sh -c "):
            return real(words, **kw)
        rc, out, err = real(words, **kw)
        return after(rc, out, err)
    drv.target.run = run


def test_a_submit_cut_off_after_sbatch_took_the_job_leaves_no_job(slurm, named):
    drv = driver()

    def timed_out(rc, out, err):
        raise TaoInferenceError("ssh tao-login timed out after 60s running: sh -c ...")
    submit_then(drv, timed_out)
    launch = launch_for(named("s-cut"))
    with pytest.raises(TaoInferenceError) as caught:
        drv.start(launch)
    assert "which was cancelled: nothing is left running" in caught.value.msg, caught.value.msg
    assert not jobs_named(uname("s-cut"))
    assert wait_for(lambda: docker("ps", "-aq", "--filter", "name=" + launch.job_id).stdout.strip() == "", 20)


def test_a_signal_during_the_submit_leaves_no_job(slurm, named):
    """The service layer's handler raises Interrupted while the ssh call that ran sbatch is under
    way: the job Slurm took is found by its comment and cancelled, and the signal raised again."""
    drv = driver()
    signal_ = procs.Interrupted(signal.SIGTERM)

    def interrupted(rc, out, err):
        raise signal_
    submit_then(drv, interrupted)
    launch = launch_for(named("s-signal"))
    recorded = []
    launch.on_submitted = recorded.append
    with pytest.raises(procs.Interrupted) as caught:
        drv.start(launch)
    assert caught.value is signal_
    assert recorded and not jobs_named(uname("s-signal"))
    assert sh("squeue", "-h", "-t", "all", "-j", recorded[0]["platform_job_id"], "-o", "%T").stdout.strip() == \
        "CANCELLED"
    assert wait_for(lambda: docker("ps", "-aq", "--filter", "name=" + launch.job_id).stdout.strip() == "", 20)


def test_a_job_on_another_cluster_is_not_taken_for_the_job_of_that_id_here(slurm, named):
    """sbatch --parsable says <id>;<cluster> when the job went to another cluster: that id on the
    default cluster is another job, never recorded, waited for or cancelled. (The test cluster has
    one cluster: the real job is here, and the answer says cluster b.)"""
    drv = driver()
    submit_then(drv, lambda rc, out, err: (rc, out.strip() + ";b\n", err))
    launch = launch_for(named("s-cluster"))
    recorded = []
    launch.on_submitted = recorded.append
    with pytest.raises(TaoInferenceError) as caught:
        drv.start(launch)
    msg = caught.value.msg
    assert "submitted the job to cluster b" in msg and "scancel --clusters=b" in msg, msg
    assert recorded == []
    (slurm_id,) = jobs_named(uname("s-cluster"))  # here it is the job: left alone all the same
    assert "(job %s)" % slurm_id in msg


def test_sbatch_options_may_not_choose_another_cluster():
    for option in ("--clusters=b", "--cluster=b", "--clu=b", "-M"):
        with pytest.raises(TaoInferenceError, match="is not allowed|must look like"):
            build_spec(dict(network_arch="cosmos-rl", model_path="hf_model://a/b", platform="slurm",
                            slurm_login_host="tao-login", sbatch_options=[option]), {})


def test_the_node_file_is_private_and_the_only_place_of_the_port(slurm, named):
    drv = driver()
    launch = launch_for(named("s-node"))
    fields = drv.start(launch)
    try:
        node_file = os.path.join(login_home(), ".tao-inference", "%s.node" % launch.job_id)
        assert stat.S_IMODE(os.stat(node_file).st_mode) == 0o600
        with open(node_file) as handle:
            assert handle.read() == "TAO_NODE_PORT=%d\n" % fields["node_port"]
        with open(os.path.join(login_home(), ".tao-inference", "%s.log" % launch.job_id)) as handle:
            assert "TAO_NODE_" not in handle.read()
    finally:
        assert drv.stop(dict(fields, job_id=launch.job_id)) is True


def test_sbatch_output_that_is_no_job_id_is_refused_and_the_job_cancelled(slurm, named):
    drv = driver()
    submit_then(drv, lambda rc, out, err: (rc, out + "Have a nice day!\n", err))
    with pytest.raises(TaoInferenceError) as caught:
        drv.start(launch_for(named("s-motd")))
    msg = caught.value.msg
    assert "printed no job id" in msg and "Have a nice day!" in msg and "which was cancelled" in msg
    assert not jobs_named(uname("s-motd"))

    # A banner *before* the id is no trouble.
    drv = driver()
    submit_then(drv, lambda rc, out, err: (rc, "Welcome to the test cluster\n" + out, err))
    launch = launch_for(named("s-banner"))
    fields = drv.start(launch)
    assert jobs_named(uname("s-banner")) == [fields["platform_job_id"]]
    assert drv.stop(dict(fields, job_id=launch.job_id)) is True  # the job, and the tunnel it opened
    assert not jobs_named(uname("s-banner"))
    assert wait_for(lambda: not tunnel_running(fields), 5)


# -- containers on the node's own network (pyxis, apptainer) -------------------------------------------
# The test node has neither pyxis nor apptainer: this `apptainer` runs the image with Docker on the
# host's network, as apptainer does, turning APPTAINERENV_<NAME> into <NAME>. The batch scripts are
# the collection's own, submitted with the real sbatch to the real node.
APPTAINER_SHIM = r"""#!/bin/bash
printf '%s\n' "$@" > "$SHIM_OUT/apptainer.$SLURM_JOB_ID.argv"
while [ $# -gt 0 ]; do case "$1" in docker://*) image=${1#docker://}; shift; break;; *) shift;; esac; done
envs=()
for var in $(compgen -e); do
  case "$var" in APPTAINERENV_*) n=${var#APPTAINERENV_}; export "$n=${!var}"; envs+=(-e "$n");; esac
done
exec docker run --rm --init --network host --name "tao-shim-$SLURM_JOB_ID" "${envs[@]}" "$image" "$@"
"""


def host_network_job(tmp_path, jobs, arch, model="hf_model://org/m", env=None):
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "apptainer").write_text(APPTAINER_SHIM)
    (shim / "apptainer").chmod(0o755)
    env = dict({"TAO_EMULATOR_HOST": "127.0.0.1"}, **(env or {}))
    spec = build_spec(dict(network_arch=arch, model_path=model, platform="slurm", slurm_login_host="tao-login",
                           slurm_container_runtime="apptainer", image=IMAGE, num_gpus=0, env=env), {})
    job_id = str(uuid.uuid4())
    plain, secret = container_env(spec, job_id, {})
    script = batch_script(spec, spec.platform_options, job_id, inner_command(spec, job_id), plain, secret)
    environ = dict(os.environ, PATH="%s:%s" % (shim, os.environ["PATH"]), SHIM_OUT=str(tmp_path))
    slurm_id = sbatch(input=script, env=environ, cwd=str(tmp_path))
    jobs.append(slurm_id)
    return job_id, slurm_id


def node_port(tmp_path, job_id, slurm_id, timeout=60):
    """The port the job's node file reports, or None once the job ended without one."""
    log, node_file = tmp_path / ("%s.log" % job_id), tmp_path / ("%s.node" % job_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node_file.exists():
            assert stat.S_IMODE(node_file.stat().st_mode) == 0o600
            return parse_node_file(node_file.read_text())["port"]
        if slurm_id not in squeue_ids() and log.exists():
            return None
        time.sleep(0.2)
    raise AssertionError("no port after %ss: %s" % (timeout, log.read_text() if log.exists() else "no log"))


def ready(port, timeout=60):
    def probe():
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/health/readiness" % port, timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False
    return wait_for(probe, timeout)


def test_two_services_on_one_node_network_get_two_ports(slurm, jobs, tmp_path):
    one = host_network_job(tmp_path, jobs, "tao-dataservices")
    first = node_port(tmp_path, *one)
    two = host_network_job(tmp_path, jobs, "tao-dataservices")
    second = node_port(tmp_path, *two)
    assert first and second and first != second
    assert ready(first) and ready(second)
    # Their locks are in a folder of this user's own, which no other user can make first.
    base = "/run/lock" if os.path.isdir("/run/lock") and os.access("/run/lock", os.W_OK) else "/tmp"
    folder = os.path.join(base, "tao-inference-%d" % os.getuid())
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700 and os.lstat(folder).st_uid == os.getuid()
    assert {"port-%d.lock" % first, "port-%d.lock" % second} <= set(os.listdir(folder))


def test_apptainer_env_reaches_the_container_whole_and_never_as_an_argument(slurm, jobs, tmp_path):
    value = "x,LD_PRELOAD=/tmp/e.so"
    job_id, slurm_id = host_network_job(tmp_path, jobs, "tao-dataservices", env={"A": value})
    assert node_port(tmp_path, job_id, slurm_id)
    assert wait_for(lambda: docker("ps", "-q", "--filter", "name=tao-shim-" + slurm_id).stdout.strip() != "", 30)
    env = json.loads(docker("inspect", "--format", "{{json .Config.Env}}", "tao-shim-" + slurm_id).stdout)
    assert "A=%s" % value in env and not [e for e in env if e.startswith("LD_PRELOAD=")]
    argv = (tmp_path / ("apptainer.%s.argv" % slurm_id)).read_text()
    assert "LD_PRELOAD" not in argv and "TAO_EMULATOR_HOST" not in argv


def test_a_second_fixed_port_service_on_the_node_fails_at_once_and_says_why(slurm, jobs, tmp_path):
    """cosmos-rl always listens on 8080: the second one on a node must not collide with the first."""
    why = "cosmos-rl takes no port option and always listens on 8080"
    one = host_network_job(tmp_path, jobs, "cosmos-rl")
    first = node_port(tmp_path, *one)
    if first is None:  # 8080 was already taken on this machine by another program: said as clearly
        assert why in (tmp_path / ("%s.log" % one[0])).read_text()
    else:
        assert first == 8080 and ready(first)
    started = time.monotonic()
    two = host_network_job(tmp_path, jobs, "cosmos-rl")
    assert node_port(tmp_path, *two) is None and time.monotonic() - started < 30
    log = (tmp_path / ("%s.log" % two[0])).read_text()
    assert why in log and "port 8080 on %s is taken" % socket.gethostname().split(".")[0] in log
    assert not docker("ps", "-aq", "--filter", "name=tao-shim-" + two[1]).stdout.strip()


def test_a_start_waiting_in_the_queue_shows_pending_with_slurms_reason_until_it_runs(slurm):
    """A partition of its own holds one CPU of the node, and a blocking job takes it: the service's job
    pends and the start role shows it with Slurm's reason, until the blocker ends and the service comes
    up. (The test partitions share cores, so a full node would not make a job wait.)"""
    partition = "queue%s" % RUN
    made = sh("scontrol", "create", "PartitionName=%s" % partition, "Nodes=ALL", "MaxCPUsPerNode=1",
              "OverSubscribe=NO", "State=UP", "MaxTime=INFINITE")
    assert made.returncode == 0, made.stderr
    blocker_id = proc = None
    name = uname("s-queued")
    try:
        blocker = sh("sbatch", "--parsable", "-p", partition, "-c", "1", "-J", uname("blocker"), "-o", "/dev/null",
                     "--wrap", "sleep 300")
        assert blocker.returncode == 0, blocker.stderr
        blocker_id = blocker.stdout.strip().split(";")[0]
        assert wait_for(lambda: sh("squeue", "-h", "-j", blocker_id, "-o", "%T").stdout.strip() == "RUNNING", 20)
        options = {"slurm_login_host": "tao-login", "ssh_config": SSH_CONFIG, "slurm_container_runtime": "docker",
                   "partition": partition}
        proc = slurm.spawn("""\
- name: Start through the role
  ansible.builtin.include_role:
    name: tao.inference.inference_service
  vars:
    inference_service_platform: slurm
    inference_service_platform_options: %s
    inference_service_network_arch: cosmos-rl
    inference_service_model_path: hf_model://a/b
    inference_service_image: %s
    inference_service_num_gpus: 0
    inference_service_name: %s
    inference_service_watch_interval: 20
""" % (json.dumps(options), IMAGE, name))

        def queued():
            for line in sh("squeue", "-h", "-o", "%i|%T|%r|%k").stdout.splitlines():
                if line.endswith(",name=%s" % name):
                    return line.split("|")[1:3]
            return None

        # Slurm says Resources, or that the node is held for another partition's waiting job.
        assert wait_for(lambda: (queued() or [""])[0] == "PENDING", 60), queued()
        time.sleep(3)  # long enough for the role to have shown it
        reason = queued()[1]
        assert reason and reason != "None"
        assert sh("scancel", blocker_id).returncode == 0
        run = slurm.finish(proc, timeout=180)
        proc = None
        assert run.rc == 0, run.output
        shown = [r["result"]["msg"] for r in run.records if r["task"].endswith("Show the job in the queue")]
        pending = [line for line in shown if ": pending (%s)" % reason in line]
        assert pending and "PENDING (%s)" % reason in pending[0], shown
        assert "pending" not in shown[-1], shown  # then it ran
        print("queue watch: %s" % shown)
        # The reason reached the role through the info module, as the platform's reason.
        watched = [r["result"] for r in run.records if r["task"].endswith("Wait for a change of the job in the queue")]
        assert reason in [s["platform_status"].get("reason") for w in watched for s in w.get("services", [])]
        # Each change was shown as it happened, not at the next interval (20 s).
        times = [r["finished"] for r in run.records if r["task"].endswith("Show the job in the queue")]
        assert max(b - a for a, b in zip(times, times[1:])) < 15, (times, shown)
        ready = [r["result"]["msg"] for r in run.records if r["task"].endswith("Show the readiness state")]
        assert ready and ": ready after" in ready[-1], run.output
        stop = slurm.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    state: absent\n%s"
                          % (name, CONNECTION))
        assert stop.task("Stop")["status"] == "changed", stop.output
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            slurm.finish(proc, timeout=60)
        if blocker_id:
            sh("scancel", blocker_id)
        sh("scontrol", "delete", "PartitionName=%s" % partition)
