"""platform: brev through ansible-playbook, against the stand-in brev CLI (scripts/ensure-brev.sh).

Each RUNNING stand-in instance has its own sshd on its own loopback address and Brev's SSH configuration
reaches it; its Docker engine is this machine's. The driver drives that engine over SSH with the same Engine
API client as local-docker. Each test uses its own instance names and removes what it made.
"""

import json
import os
import signal
import stat
import subprocess
import time
import uuid

import pytest

from ansible_collections.tao.inference.plugins.module_utils import procs

from .conftest import IMAGE, ROOT, docker

BREV = os.path.join(ROOT, ".build", "brev")
SSH_CONFIG = os.path.join(BREV, "ssh_config")
HOME = os.path.join(BREV, "home")  # the stand-in's home: where the brev CLI keeps its credentials (~/.brev)
CREDENTIALS = os.path.join(HOME, ".brev", "credentials.json")
CANARY = "canary-brev-" + uuid.uuid4().hex
FAST = {"TAO_BREV_START_SECONDS": "0.5", "TAO_BREV_STOP_SECONDS": "0.5", "TAO_BREV_DELETE_SECONDS": "0.5",
        "TAO_BREV_POLL_SECONDS": "0.2"}


def wait_for(predicate, seconds, step=0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Brev(object):
    def __init__(self, env):
        self.env = env

    def run(self, *words, check=True):
        proc = subprocess.run(["brev"] + list(words), capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
        if check and proc.returncode:
            raise AssertionError("brev %s: %s %s" % (" ".join(words), proc.stdout, proc.stderr))
        return proc

    def instances(self):
        return dict((w["name"], w) for w in json.loads(self.run("ls", "--json").stdout)["workspaces"] or [])

    def running(self, name):
        self.run("create", name, "--type", "g6.xlarge")
        assert wait_for(lambda: self.instances().get(name, {}).get("status") == "RUNNING", 30)
        self.run("refresh")


@pytest.fixture
def brev(harness):
    proc = subprocess.run([os.path.join(ROOT, "scripts", "ensure-brev.sh")], capture_output=True, text=True,
                          check=False, timeout=300)
    if proc.returncode:
        pytest.fail("no test Brev platform: scripts/ensure-brev.sh failed: %s" % proc.stderr[-2000:])
    env = dict(os.environ, PATH=proc.stdout.strip() + os.pathsep + os.environ["PATH"], **FAST)
    cli = Brev(env)
    cli.run("login", "--token", "tao-test-token")
    before = set(cli.instances())
    harness.cli = cli
    harness.brev_env = dict(FAST, PATH=env["PATH"])
    harness.connection = "    platform: brev\n    ssh_config: %s\n" % SSH_CONFIG
    yield harness
    for entry in harness.entries().values():
        if entry.get("tunnel_pid") and procs.alive(entry["tunnel_pid"], entry.get("tunnel_start_time")):
            os.kill(int(entry["tunnel_pid"]), signal.SIGKILL)
    for name in set(cli.instances()) - before:
        cli.run("delete", name, check=False)


def start_task(harness, extra="", title="Start"):
    return ("- name: {title}\n  tao.inference.tao_inference_service:\n    network_arch: cosmos-rl\n"
            "    model_path: hf_model://nvidia/Cosmos-Reason1-7B\n    image: {image}\n    num_gpus: 0\n"
            "    wait_timeout: 120\n{conn}{extra}  register: svc\n").format(
        title=title, image=IMAGE, conn=harness.connection,
        extra="".join("    %s\n" % line for line in extra.splitlines() if line))


def stop_task(harness, name):
    return "- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    state: absent\n%s" % (
        name, harness.connection)


PREFLIGHT = """\
- name: Preflight
  tao.inference.tao_inference_preflight:
    platform: brev
    network_arch: cosmos-rl
    num_gpus: 0
"""

ASK = """\
- name: Ask
  tao.inference.tao_inference_request:
    job_id: "{{ svc.job_id }}"
    prompt: What is in the picture?
    media: %s
    sampling: {}
  register: answer
""" % os.path.join(ROOT, "playbooks", "files", "demo.png")


def play(harness, tasks, **kwargs):
    env = dict(harness.brev_env, **kwargs.pop("env", {}))
    return harness.play(tasks, env=env, **kwargs)


def containers_of(job_id):
    return docker("ps", "-aq", "--filter", "label=tao.inference.job_id=%s" % job_id).stdout.split()


def test_a_created_instance_tunnel_request_idempotency_and_stop(brev):
    run = play(brev, start_task(brev, "name: brev-made") + ASK)
    assert run.rc == 0, run.output[-3000:]
    service = run.task("Start")["result"]
    instance = service["connection"]["instance"]
    assert service["brev_created"] is True and service["host_url"] == "http://localhost:%d" % service["host_port"]
    assert brev.cli.instances()[instance]["status"] == "RUNNING"
    assert procs.alive(service["tunnel_pid"], service["tunnel_start_time"])
    assert run.task("Ask")["result"]["content"]
    again = play(brev, start_task(brev, "name: brev-made"))
    assert again.task("Start")["status"] == "ok" and again.task("Start")["result"]["job_id"] == service["job_id"]
    stop = play(brev, stop_task(brev, "brev-made"))
    assert stop.task("Stop")["status"] == "changed", stop.output[-2000:]
    assert instance not in brev.cli.instances() or brev.cli.instances()[instance]["status"] == "DELETING"
    assert not containers_of(service["job_id"]) and brev.entries() == {}
    assert wait_for(lambda: not procs.alive(service["tunnel_pid"], service["tunnel_start_time"]), 5)
    assert play(brev, stop_task(brev, "brev-made")).task("Stop")["status"] == "ok"


def test_an_existing_instance_direct_on_its_own_address_is_left_running(brev):
    name = "tao-t-%s" % uuid.uuid4().hex[:6]
    brev.cli.running(name)
    run = play(brev, start_task(brev, "name: brev-direct\nbrev_instance: %s\nbrev_expose: direct" % name) + ASK)
    assert run.rc == 0, run.output[-3000:]
    service = run.task("Start")["result"]
    address = service["brev_address"]
    assert address.startswith("127.100.") and service["host_url"] == "http://%s:%d" % (address, service["host_port"])
    assert service["brev_created"] is False and "tunnel_pid" not in service
    assert run.task("Ask")["result"]["content"]
    stop = play(brev, stop_task(brev, "brev-direct"))
    assert stop.task("Stop")["status"] == "changed", stop.output[-2000:]
    assert brev.cli.instances()[name]["status"] == "RUNNING"  # not the collection's to delete
    assert not containers_of(service["job_id"]) and brev.entries() == {}


def test_a_stopped_instance_is_started_only_when_asked(brev):
    name = "tao-t-%s" % uuid.uuid4().hex[:6]
    brev.cli.running(name)
    brev.cli.run("stop", name)
    assert wait_for(lambda: brev.cli.instances()[name]["status"] == "STOPPED", 15)
    refused = play(brev, start_task(brev, "name: brev-stopped\nbrev_instance: %s" % name))
    msg = refused.task("Start")["result"]["msg"]
    assert refused.rc != 0 and "is STOPPED" in msg and "brev_start_stopped" in msg, msg
    started = play(brev, start_task(brev, "name: brev-stopped\nbrev_instance: %s\nbrev_start_stopped: true" % name))
    assert started.rc == 0, started.output[-3000:]
    assert brev.cli.instances()[name]["status"] == "RUNNING"
    play(brev, stop_task(brev, "brev-stopped"))
    assert brev.entries() == {}


def test_unknown_instance_and_logged_out_cli_fail_clearly_and_make_nothing(brev):
    unknown = play(brev, start_task(brev, "name: brev-unknown\nbrev_instance: tao-nowhere"))
    msg = unknown.task("Start")["result"]["msg"]
    assert unknown.rc != 0 and "Brev instance tao-nowhere does not exist" in msg, msg
    brev.cli.run("logout")
    try:
        out = play(brev, start_task(brev, "name: brev-out"), env={"HOME": HOME})
    finally:
        brev.cli.run("login", "--token", "tao-test-token")
    msg = out.task("Start")["result"]["msg"]
    assert out.rc != 0 and "not logged in" in msg and "brev login" in msg and "BREV_API_TOKEN" in msg, msg
    assert brev.entries() == {}


def credentials():
    """The brev CLI's credentials file in the stand-in's home: (text, mode), or None."""
    try:
        with open(CREDENTIALS, encoding="utf-8") as handle:
            return handle.read(), os.stat(CREDENTIALS).st_mode & 0o777
    except FileNotFoundError:
        return None


def argv_log():
    with open(os.path.join(BREV, "argv.log"), encoding="utf-8") as handle:
        return handle.read()


def test_a_logged_out_cli_is_logged_in_with_brev_api_token_which_no_command_line_shows(brev):
    """The token reaches the CLI only through its credentials file (written as `brev login --token` writes it,
    0600): never an argv (the stand-in records every one), the registry, results or -vvvv logs."""
    token = "canary-session-%s:device" % uuid.uuid4().hex
    brev.cli.run("logout")
    seen = len(argv_log())
    try:
        run = play(brev, start_task(brev, "name: brev-token") + ASK, env={"BREV_API_TOKEN": token, "HOME": HOME},
                   args=["-vvvv"])
        assert run.rc == 0, run.output[-3000:]
        service = run.task("Start")["result"]
        assert service["brev_logged_in_with_token"] is True and run.task("Ask")["result"]["content"]
        text, mode = credentials()
        assert mode == 0o600 and json.loads(text)["refresh_token"] == token  # the CLI's own login now
        assert token not in run.output and token not in json.dumps(brev.registry_data())
        assert token not in argv_log()[seen:] and '["ls", "--json"]' in argv_log()[seen:]
        with open(os.path.join(BREV, "state.json")) as handle:
            assert token not in handle.read()
        # A CLI that is logged in is left alone, whatever token comes.
        other = "canary-other-%s:device" % uuid.uuid4().hex
        check = play(brev, PREFLIGHT, env={"BREV_API_TOKEN": other, "HOME": HOME})
        assert check.rc == 0 and check.task("Preflight")["result"]["brev_logged_in_with_token"] is False, check.output
        assert credentials()[0] == text or json.loads(credentials()[0])["refresh_token"] == token
        stop = play(brev, stop_task(brev, "brev-token"), env={"HOME": HOME})
        assert stop.task("Stop")["status"] == "changed" and brev.entries() == {}
    finally:
        brev.cli.run("login", "--token", "tao-test-token")


def test_a_refused_token_is_named_not_shown_and_puts_nothing_anywhere(brev):
    token = "invalid-canary-%s" % uuid.uuid4().hex  # the stand-in's platform refuses it
    before = set(brev.cli.instances())
    brev.cli.run("logout")
    try:
        out = play(brev, start_task(brev, "name: brev-refused"), env={"BREV_API_TOKEN": token, "HOME": HOME},
                   args=["-vvvv"])
        msg = out.task("Start")["result"]["msg"]
        assert out.rc != 0 and "refused the token in BREV_API_TOKEN" in msg, msg
        assert token not in out.output and token not in argv_log()
        assert credentials() is None  # put back as it was: there was none
        assert not os.path.exists(os.path.join(HOME, ".brev", ".invalid-refresh-token"))
    finally:
        brev.cli.run("login", "--token", "tao-test-token")
    # No instance was created (one an earlier test deleted may finish going meanwhile).
    assert brev.entries() == {} and set(brev.cli.instances()) <= before


def test_the_preflight_role_logs_in_with_brev_api_token_given_as_an_option(brev):
    brev.cli.run("logout")
    try:
        role = play(brev, "- name: Preflight role\n  ansible.builtin.include_role:\n    name: tao.inference.brev\n"
                          "  vars:\n    brev_api_token: \"{{ lookup('ansible.builtin.env', 'TAO_TEST_BREV') }}\"\n"
                          "    brev_image: %s\n    brev_num_gpus: 0\n" % IMAGE,
                    env={"TAO_TEST_BREV": "canary-option-%s" % uuid.uuid4().hex, "HOME": HOME})
        assert role.rc == 0, role.output[-3000:]
        assert "brev is logged in" in role.stdout and "logged in with the token" in role.stdout
        assert "canary-option-" not in role.output and "canary-option-" not in argv_log()
        assert stat.S_IMODE(os.stat(os.path.join(HOME, ".brev")).st_mode) & 0o022 == 0
    finally:
        brev.cli.run("login", "--token", "tao-test-token")


def test_a_dead_tunnel_is_reported_and_reopened_and_secrets_stay_out(brev):
    tasks = start_task(brev, "name: brev-tunnel\nsecret_env: [HF_TOKEN]") + """\
- name: Status route
  ansible.builtin.uri:
    url: "{{ svc.host_url }}/api/v1/status"
  register: status
"""
    run = play(brev, tasks, env={"HF_TOKEN": CANARY}, args=["-vvvv"])
    assert run.rc == 0, run.output[-3000:]
    assert run.task("Status route")["result"]["json"]["hf_token_set"] is True
    assert CANARY not in run.output and CANARY not in json.dumps(brev.registry_data())
    service = run.task("Start")["result"]
    with open(os.path.join(BREV, "state.json")) as handle:
        assert CANARY not in handle.read()
    os.kill(service["tunnel_pid"], signal.SIGKILL)
    assert wait_for(lambda: not procs.alive(service["tunnel_pid"], service["tunnel_start_time"]), 5)
    info = play(brev, "- name: Info\n  tao.inference.tao_inference_info:\n    ssh_config: %s\n" % SSH_CONFIG)
    assert info.task("Info")["result"]["services"][0]["platform_status"]["broken"] == "tunnel_down"
    again = play(brev, start_task(brev, "name: brev-tunnel\nsecret_env: [HF_TOKEN]"), env={"HF_TOKEN": CANARY})
    result = again.task("Start")["result"]
    assert again.rc == 0 and result["repaired"] == ["tunnel_down"] and result["job_id"] == service["job_id"]
    play(brev, stop_task(brev, "brev-tunnel"))
    assert brev.entries() == {} and not containers_of(service["job_id"])


def test_the_preflight_role_reports_the_instance_and_refuses_gpus_it_lacks(brev):
    name = "tao-t-%s" % uuid.uuid4().hex[:6]
    brev.cli.running(name)
    role = play(brev, "- name: Preflight role\n  ansible.builtin.include_role:\n    name: tao.inference.brev\n"
                      "  vars:\n    brev_instance: %s\n    brev_ssh_config: %s\n    brev_image: %s\n"
                      "    brev_num_gpus: 0\n" % (name, SSH_CONFIG, IMAGE))
    assert role.rc == 0, role.output[-3000:]
    assert "Brev instance %s is RUNNING (g6.xlarge, GPU L4); Docker" % name in role.stdout
    gpus = play(brev, "- name: Preflight\n  tao.inference.tao_inference_preflight:\n    network_arch: cosmos-rl\n"
                      "    image: %s\n    num_gpus: 1\n    brev_instance: %s\n%s" % (IMAGE, name, brev.connection))
    assert "needs the NVIDIA container runtime" in gpus.task("Preflight")["result"]["msg"]
