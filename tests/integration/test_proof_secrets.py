"""Proof suite, secrets: a canary value in every secret variable never leaks.

Every secret name the collection knows gets its own canary value in the environment of
``ansible-playbook``; each service lists them all in ``secret_env``. The same canaries given the other
way, as values of the ``secrets`` option (no_log, as an AWX credential gives them, here from an extra-vars
file so that no process's argv or environment holds them), are searched for in the same places. While the playbook runs
(``-vvvv --diff``), a watcher reads the argv of every process on this machine and the
environment of every ssh process. Afterwards the output, the results, the registry, the
container's labels and command, the Slurm batch script and the environment of every process
left running (the tunnel) are searched. The one place a value may be is the channel that must
carry it: the container's (job's) environment.
"""

import base64
import json
import os
import subprocess
import threading
import time

import pytest

from ansible_collections.tao.inference.plugins.module_utils import catalog

from .conftest import IMAGE, ROOT, docker, service_task
from .test_slurm import ASK, SSH_CONFIG, sh, slurm, slurm_task, uname  # noqa: F401  pylint: disable=unused-import
from . import test_kubernetes as kube, test_lepton as lepton
from .test_kubernetes import k8s  # noqa: F401  pylint: disable=unused-import
from .test_lepton import lep  # noqa: F401  pylint: disable=unused-import

RUN = os.urandom(4).hex()
# Every secret name the collection knows, and one of the user's own whose name looks like nothing.
SECRET_NAMES = tuple(catalog.SECRET_ENV) + ("MYCORP_LOGIN",)
CANARIES = dict((name, "canary%s%s" % (name.lower().replace("_", ""), RUN)) for name in SECRET_NAMES)
SECRET_ENV = "secret_env: [%s]" % ", ".join(sorted(CANARIES))


class ProcessWatch(object):
    """Reads /proc every few milliseconds while a playbook runs; records every leak it sees."""

    def __init__(self):
        self.leaks = []
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _loop(self):
        values = [v.encode() for v in CANARIES.values()]
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as handle:
                        argv = handle.read()
                    self.seen += 1
                    if any(v in argv for v in values):
                        self.leaks.append(("argv", pid, argv[:200]))
                    if os.path.basename(argv.split(b"\0")[0]) == b"ssh":
                        with open("/proc/%s/environ" % pid, "rb") as handle:
                            if any(v in handle.read() for v in values):
                                self.leaks.append(("ssh environ", pid, argv[:200]))
                except OSError:
                    continue
            time.sleep(0.01)


def leaked(text):
    return [name for name, value in CANARIES.items() if value in text]


@pytest.mark.parametrize("name", ["MY_API_TOKEN", "DB_PASSWORD"])
def test_a_credential_in_plain_env_is_refused_with_the_way_to_pass_it(harness, name):
    run = harness.play(service_task(extra="env: {%s: not-a-canary}" % name))
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and "secret_env" in msg and name in msg
    assert harness.containers() == []


def test_the_ssh_tunnel_and_dial_stdio_children_get_no_secret():
    """The environment helper itself, for a process started the way the tunnel and dial-stdio are."""
    from ansible_collections.tao.inference.plugins.module_utils.trust import ssh_environ

    env = dict(os.environ, **CANARIES)
    proc = subprocess.run(["env"], capture_output=True, text=True, env=ssh_environ(environ=env), check=True)
    assert leaked(proc.stdout) == []


# -- the same promise for secrets given as values (the ``secrets`` option) -----------------------------
# Ansible masks a no_log option's values in what it prints and returns, so the output is searched only as a
# last line of defence: the proof is in what Ansible does not mask (argv, process environments, the registry,
# the container's command and labels, the batch script, the platform's objects).
SECRETS_OPTION = 'secrets: "{{ tao_test_secrets }}"'


def secrets_file(tmp_path, values=None):
    """An extra-vars file (mode 0600) holding the canaries: ``-e @file`` keeps them out of every argv."""
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"tao_test_secrets": values or CANARIES}))
    os.chmod(str(path), 0o600)
    return ["-e", "@%s" % path]


def passing(way, tmp_path):
    """How the canaries reach the run: (the option line, ansible-playbook's environment, its extra args)."""
    if way == "secret_env":
        return SECRET_ENV, CANARIES, []
    return SECRETS_OPTION, None, secrets_file(tmp_path)


@pytest.mark.parametrize("way", ["secret_env", "secrets"])
def test_no_secret_leaks_on_local_docker_over_ssh(harness, tmp_path, way):
    option, env, extra = passing(way, tmp_path)
    name = "proof-%s-%s" % (way.replace("_", ""), RUN)
    start = """\
- name: %(title)s
  tao.inference.tao_inference_service:
    name: %(name)s
    network_arch: cosmos-rl
    model_path: hf_model://nvidia/Cosmos-Reason1-7B
    image: %(image)s
    num_gpus: 0
    docker_host: ssh://tao-login
    ssh_config: %(config)s
    %(secrets)s
  register: svc
"""
    values = {"name": name, "png": os.path.join(ROOT, "playbooks", "files", "demo.png"), "image": IMAGE,
              "config": SSH_CONFIG, "secrets": option}
    tasks = (start % dict(values, title="Start")) + """\
- name: Ask
  tao.inference.tao_inference_request:
    name: %(name)s
    prompt: hello
    media: ["%(png)s"]
    sampling: {}
- name: Info
  tao.inference.tao_inference_info:
    name: %(name)s
""" % values + (start % dict(values, title="The same start again is kept")) + """\
- name: A start that fails, with the secrets set
  tao.inference.tao_inference_service:
    network_arch: tao-dataservices
    model_path: /no/such/model
    image: %(image)s
    num_gpus: 0
    docker_host: ssh://tao-login
    ssh_config: %(config)s
    %(secrets)s
  ignore_errors: true
""" % values
    with ProcessWatch() as watch:
        run = harness.play(tasks, args=["-vvvv", "--diff"] + extra, env=env)
        assert run.rc == 0, run.output[-3000:]
        job_id = run.task("Start")["result"]["job_id"]
        [doc] = json.loads(docker("inspect", job_id).stdout)
        stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n"
                            "    docker_host: ssh://tao-login\n    ssh_config: %s\n    state: absent\n"
                            % (name, SSH_CONFIG), args=["-vvvv"] + extra, env=env)
    assert stop.rc == 0, stop.output[-3000:]
    failed = run.task("A start that fails, with the secrets set")
    assert failed["status"] == "failed" and "model_load_failed" in failed["result"]["msg"], failed
    assert run.task("The same start again is kept")["status"] == "ok"
    assert watch.seen > 100 and watch.leaks == []
    # With secrets, Ansible masks the no_log values in what it prints and returns: the output is searched
    # too, but the proof is in what Ansible does not mask (argv, environments, the registry, the container).
    assert leaked(run.output + stop.output) == [] and leaked(json.dumps(run.records + stop.records)) == []
    assert leaked(open(harness.registry).read()) == []
    assert leaked(json.dumps(doc["Config"]["Labels"]) + json.dumps(doc["Config"]["Cmd"]) + json.dumps(doc["Args"])) == []
    for secret, value in CANARIES.items():  # the one place they must be: the container's environment
        assert "%s=%s" % (secret, value) in doc["Config"]["Env"]
    if way == "secret_env":
        assert run.task("Start")["result"]["secret_env"] == sorted(CANARIES)
    assert harness.registry_data().get(job_id) is None and harness.containers() == []
    print("secrets (%s) on local-docker over ssh: %d canaries, %d process reads, 0 leaks in argv, ssh environments, "
          "-vvvv output, results, diffs, registry, labels (job %s)" % (way, len(CANARIES), watch.seen, job_id))


@pytest.mark.parametrize("way", ["secret_env", "secrets"])
def test_no_secret_leaks_on_slurm(slurm, tmp_path, way):  # noqa: F811
    option, env, extra = passing(way, tmp_path)
    name = uname("proof")
    with ProcessWatch() as watch:
        run = slurm.play(slurm_task(name=name, extra=option) + ASK, args=["-vvvv", "--diff"] + extra, env=env)
        assert run.rc == 0, run.output[-3000:]
        entry = slurm.entries()[next(iter(slurm.entries()))]
        script = sh("scontrol", "write", "batch_script", str(entry["platform_job_id"]), "-").stdout
        # The tunnel this run left running: its argv and its environment.
        with open("/proc/%d/environ" % int(entry["tunnel_pid"]), "rb") as handle:
            tunnel_env = handle.read().decode("utf-8", "replace")
        stop = slurm.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    platform: slurm\n"
                          "    slurm_login_host: tao-login\n    ssh_config: %s\n    state: absent\n"
                          % (name, SSH_CONFIG), args=["-vvvv"], env=env)
    assert stop.rc == 0, stop.output[-3000:]
    assert run.task("Ask")["status"] == "ok"
    assert "#SBATCH" in script and leaked(script) == [] and all(("-e %s" % n) in script for n in CANARIES)
    assert leaked(tunnel_env) == [] and "PATH=" in tunnel_env
    assert watch.leaks == []
    assert leaked(run.output + stop.output) == [] and leaked(json.dumps(run.records + stop.records)) == []
    assert leaked(open(slurm.registry).read()) == []
    print("secrets (%s) on slurm: %d canaries, %d process reads; batch script, tunnel environment, argv, -vvvv "
          "output and registry clean" % (way, len(CANARIES), watch.seen))


def test_a_secret_given_both_ways_is_refused_naming_it_not_its_value(harness, tmp_path):
    run = harness.play(service_task(extra="secret_env: [HF_TOKEN]\n" + SECRETS_OPTION),
                       args=secrets_file(tmp_path, {"HF_TOKEN": CANARIES["HF_TOKEN"]}), env={"HF_TOKEN": "from-env"})
    msg = run.task("Start")["result"]["msg"]
    assert run.rc != 0 and "HF_TOKEN is given both in secret_env" in msg and "from-env" not in msg
    assert leaked(run.output) == [] and harness.containers() == [] and harness.entries() == {}
    empty = harness.play(service_task(extra=SECRETS_OPTION), args=secrets_file(tmp_path, {"HF_TOKEN": ""}))
    assert empty.rc != 0 and "secrets.HF_TOKEN is empty" in empty.task("Start")["result"]["msg"]


def test_the_inference_service_role_passes_secrets_as_values_and_still_says_why_a_start_failed(harness, tmp_path):
    role = """\
- name: %(title)s
  ansible.builtin.include_role:
    name: tao.inference.inference_service
  vars:
    inference_service_name: %(name)s
    inference_service_network_arch: %(arch)s
    inference_service_model_path: %(model)s
    inference_service_image: %(image)s
    inference_service_num_gpus: 0
    inference_service_secrets: "{{ tao_test_secrets }}"
    inference_service_platform_options: %(options)s
"""
    started = harness.play(role % {"title": "Role", "name": "proof-role-%s" % RUN, "arch": "cosmos-rl",
                                   "model": "hf_model://nvidia/Cosmos-Reason1-7B", "image": IMAGE, "options": "{}"},
                           args=["-vvv"] + secrets_file(tmp_path))
    assert started.rc == 0, started.output[-3000:]
    [job_id] = list(harness.entries())
    [doc] = json.loads(docker("inspect", job_id).stdout)
    assert "HF_TOKEN=%s" % CANARIES["HF_TOKEN"] in doc["Config"]["Env"]
    assert leaked(started.output) == [] and leaked(open(harness.registry).read()) == []
    assert "Inference service started." in started.output and "ready after" in started.output
    # A start the module refuses: the reason is shown although the start task's own output is hidden.
    refused = harness.play(role % {"title": "Role", "name": "proof-role-bad-%s" % RUN, "arch": "cosmos-rl",
                                   "model": "s3://bucket/model", "image": IMAGE, "options": "{}"},
                           args=secrets_file(tmp_path))
    assert refused.rc != 0 and "model_path scheme s3:// is not supported" in refused.output
    assert leaked(refused.output) == []
    harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    job_id: %s\n    state: absent\n" % job_id)
    assert harness.containers() == []


def test_secrets_given_as_values_reach_a_kubernetes_pod_only_through_its_secret(k8s, tmp_path):  # noqa: F811
    value = CANARIES["HF_TOKEN"]
    run = k8s.play(kube.start_task(k8s, extra="name: opt-secret\n" + SECRETS_OPTION), args=["-vvvv", "--diff"]
                   + secrets_file(tmp_path, {"HF_TOKEN": value}))
    assert run.rc == 0, run.output[-3000:]
    job, pod = k8s.cluster.items("jobs")[0], k8s.cluster.items("pods")[0]
    for where, text in (("output", run.output), ("results", json.dumps(run.records)),
                        ("registry", json.dumps(k8s.registry_data())), ("job", json.dumps(job)), ("pod", json.dumps(pod)),
                        ("events", json.dumps(k8s.cluster.items("events")))):
        assert value not in text, where
    secret = k8s.cluster.items("secrets")[0]
    assert base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == value
    stop = k8s.play(kube.stop_task(k8s, "opt-secret"))
    assert stop.rc == 0, stop.output[-3000:]
    kube.assert_gone(k8s)


def test_secrets_given_as_values_reach_a_lepton_deployment_only_through_lepton_secrets(lep, tmp_path):  # noqa: F811
    name = "lep-opt-%s" % RUN
    value = CANARIES["HF_TOKEN"]
    run = lep.play(lepton.start_task(name, extra=SECRETS_OPTION), args=["-vvvv", "--diff"]
                   + secrets_file(tmp_path, {"HF_TOKEN": value}), env=lep.lepton_env)
    assert run.rc == 0, run.output[-3000:]
    job_id = run.task("Start")["result"]["job_id"]
    lep.job_ids.add(job_id)
    [cid] = lepton.containers(name)
    assert "HF_TOKEN=" + value in json.loads(docker("inspect", cid).stdout)[0]["Config"]["Env"]
    deployment = lep.workspace.get("/deployments/" + name)
    ref = {"name": "HF_TOKEN", "value_from": {"secret_name_ref": "tao-%s-HF_TOKEN" % job_id.replace("-", "")}}
    assert ref in deployment["spec"]["envs"]
    for where, text in (("output", run.output), ("results", json.dumps(run.records)),
                        ("registry", json.dumps(lep.registry_data())), ("deployment", json.dumps(deployment)),
                        ("journal", json.dumps(lep.workspace.journal()))):
        assert value not in text, where
    stop = lep.play(lepton.stop_task(name), env=lep.lepton_env)
    assert stop.rc == 0, stop.output[-3000:]
    lepton.assert_nothing_left(lep)


def test_the_start_playbook_takes_secret_values_as_tao_secrets(harness, tmp_path):
    """As an AWX credential hands them over: extra vars (here a file), never a command line or an environment."""
    path = tmp_path / "credential.json"
    path.write_text(json.dumps({"tao_secrets": {"HF_TOKEN": CANARIES["HF_TOKEN"]}}))
    os.chmod(str(path), 0o600)
    start = harness.playbook(os.path.join(ROOT, "playbooks", "start.yml"), {
        "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://nvidia/Cosmos-Reason1-7B", "tao_image": IMAGE,
        "tao_num_gpus": 0}, args=["-e", "@%s" % path, "-vvv"])
    assert start.rc == 0, start.output[-3000:]
    assert start.task("Start the service")["result"].get("censored")  # the task's output is hidden
    [job_id] = list(harness.entries())
    [doc] = json.loads(docker("inspect", job_id).stdout)
    assert "HF_TOKEN=%s" % CANARIES["HF_TOKEN"] in doc["Config"]["Env"]
    assert "ready after" in start.output and leaked(start.output) == [] and leaked(open(harness.registry).read()) == []
    assert harness.registry_data()[job_id]["secret_env"] == ["HF_TOKEN"]
    stop = harness.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), {"tao_job_id": job_id})
    assert stop.rc == 0, stop.output[-3000:]
    assert harness.containers() == []


def test_hostile_secret_values_arrive_unchanged_and_run_nothing(slurm, tmp_path):  # noqa: F811
    """Values with quotes, $(...), backticks, a leading '-', option-looking text and a newline reach the container
    as they are, on local-docker (the Engine API body) and on Slurm (base64 over ssh's stdin, exported to the job),
    and nothing in them runs."""
    canary = str(tmp_path / "pwned")
    values = {"HF_TOKEN": "-oProxyCommand=touch %s" % canary,
              "MYCORP_LOGIN": "a'b\"c $(touch %s) `touch %s` ;touch %s\nsecond line \\ %%s" % (canary, canary, canary)}
    args = secrets_file(tmp_path, values)
    local = slurm.play(service_task(extra="name: hostile-%s\n%s" % (RUN, SECRETS_OPTION)), args=args)
    on_slurm = slurm.play(slurm_task(name=uname("hostile"), extra=SECRETS_OPTION), args=args)
    assert local.rc == 0, local.output[-3000:]
    assert on_slurm.rc == 0, on_slurm.output[-3000:]
    for job_id in slurm.entries():
        [doc] = json.loads(docker("inspect", job_id).stdout)
        for name, value in values.items():
            assert "%s=%s" % (name, value) in doc["Config"]["Env"], (job_id, name)
    assert not os.path.exists(canary)
    stop = slurm.play("- name: Stop\n  tao.inference.tao_inference_service:\n    name: %s\n    platform: slurm\n"
                      "    slurm_login_host: tao-login\n    ssh_config: %s\n    state: absent\n"
                      "- name: Stop local\n  tao.inference.tao_inference_service:\n    name: hostile-%s\n"
                      "    state: absent\n" % (uname("hostile"), SSH_CONFIG, RUN))
    assert stop.rc == 0, stop.output[-3000:]
    assert slurm.entries() == {} and not os.path.exists(canary)
