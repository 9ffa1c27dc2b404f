"""local-docker through every way of reaching an engine: the local socket, tcp:// and ssh://.

The module speaks the Engine API itself, so these check what the engine made of
each request (``docker inspect``) and that each transport really carried it.
"""

import json
import os
import socket
import subprocess
import threading

import pytest

from .conftest import IMAGE, ROOT, docker, service_task

SSH_CONFIG = os.path.join(ROOT, ".build", "ssh", "config")
ENGINE_SOCKET = "/var/run/docker.sock"


def test_the_container_is_what_the_spec_says(harness, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    run = harness.play(service_task(extra="""\
        shm_size: 64m
        volumes: ["%s:/models:ro"]
        env: {LOG_LEVEL: debug}
        """ % models))
    assert run.rc == 0, run.output
    result = run.task("Start")["result"]
    [doc] = json.loads(docker("inspect", result["job_id"]).stdout)
    host = doc["HostConfig"]
    assert host["ShmSize"] == 64 * 1024 * 1024
    assert host["Init"] is True
    assert host["Binds"] == ["%s:/models:ro" % models]
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(result["host_port"])}]}
    assert doc["Config"]["Cmd"][:2] == ["/bin/sh", "-c"] and "cosmos-rl-inference-microservice" in doc["Config"]["Cmd"][2]
    assert "LOG_LEVEL=debug" in doc["Config"]["Env"]
    assert doc["Config"]["Labels"]["tao.inference.job_id"] == result["job_id"]
    assert doc["Name"] == "/" + result["job_id"] and doc["Id"].startswith(result["container_id"])
    stop = harness.play("- name: Stop\n  tao.inference.tao_inference_service:\n    job_id: %s\n    state: absent\n"
                        % result["job_id"])
    assert stop.task("Stop")["status"] == "changed" and harness.containers() == []


class Forwarder(object):
    """127.0.0.1:<port> -> the engine's unix socket, counting the connections it carried."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _addr = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(ENGINE_SOCKET)
            for src, dst in ((client, engine), (engine, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


@pytest.fixture
def forwarder():
    if not os.path.exists(ENGINE_SOCKET):
        pytest.skip("the engine has no socket at %s" % ENGINE_SOCKET)
    fwd = Forwarder()
    yield fwd
    fwd.close()


LIFECYCLE = """\
- name: Preflight
  tao.inference.tao_inference_preflight:
    network_arch: cosmos-rl
    num_gpus: 0
    image: {image}
    docker_host: {host}
{ssh}
{start}
- name: Ask
  tao.inference.tao_inference_request:
    job_id: "{{{{ svc.job_id }}}}"
    prompt: Say something.
    media: ["{png}"]
    sampling: {{}}
- name: Info
  tao.inference.tao_inference_info:
    job_id: "{{{{ svc.job_id }}}}"
{ssh}
- name: Stop
  tao.inference.tao_inference_service:
    job_id: "{{{{ svc.job_id }}}}"
    state: absent
{ssh}
"""


def lifecycle(host, ssh=""):
    start = service_task(extra="docker_host: %s\n%s" % (host, ssh)).rstrip("\n")  # registers svc
    return LIFECYCLE.format(image=IMAGE, host=host, start=start, png=os.path.join(ROOT, "playbooks", "files", "demo.png"),
                            ssh="".join("    %s\n" % line for line in ssh.splitlines()).rstrip("\n"))


def check_lifecycle(harness, run, host_name):
    assert run.rc == 0, run.output
    assert run.task("Preflight")["result"]["engine"].startswith("Docker ")
    started = run.task("Start")["result"]
    assert started["host_url"] == "http://%s:%d" % (host_name, started["host_port"])
    assert started["readiness"]["state"] == "ready"
    assert "reference microservice" in run.task("Ask")["result"]["content"]
    [service] = run.task("Info")["result"]["services"]
    assert service["running"] is True
    assert run.task("Stop")["result"]["stopped"] == [started["job_id"]]
    assert harness.containers() == [] and harness.entries() == {}
    return started


def test_a_tcp_docker_host_carries_every_call(harness, forwarder):
    host = "tcp://127.0.0.1:%d" % forwarder.port
    run = harness.play(lifecycle(host))
    # a loopback engine is this machine's: its ports share the local scope with every other service here
    started = check_lifecycle(harness, run, "localhost")
    assert started["connection"]["docker_host"] == host and started["port_scope"] == "local"
    # preflight, start, info and stop each reached the engine through the forwarder
    assert forwarder.connections >= 4


def ssh_processes():
    out = subprocess.run(["pgrep", "-af", "docker system dial-stdio"], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture
def login():
    if not os.path.exists(SSH_CONFIG):
        pytest.skip("no test sshd: run scripts/ensure-sshd.sh")
    return SSH_CONFIG


def test_an_ssh_docker_host_dials_the_engine_and_leaves_no_ssh_behind(harness, login):
    before = ssh_processes()
    run = harness.play(lifecycle("ssh://tao-login", ssh="ssh_config: %s" % login))
    # the alias resolved through the ssh configuration to 127.0.0.1: this machine
    started = check_lifecycle(harness, run, "localhost")
    assert started["connection"]["ssh_config"] == login
    assert ssh_processes() == before


def test_an_ssh_docker_host_that_refuses_us_says_why(harness, login, tmp_path):
    before = ssh_processes()
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with open(login) as handle:  # the test login, but with a key the host does not know
        config = "".join(line for line in handle if "IdentityFile" not in line)
    (tmp_path / "config").write_text(config)
    run = harness.play(service_task(extra="docker_host: ssh://tao-login\n"
                                          "ssh_config: %s\nssh_key_path: %s\n" % (tmp_path / "config", stranger)))
    assert run.rc != 0
    msg = run.task("Start")["result"]["msg"]
    assert "cannot reach the Docker engine at ssh://tao-login" in msg and "Permission denied" in msg, msg
    assert "Check that `ssh tao-login docker info` works in batch mode" in msg
    assert harness.entries() == {} and ssh_processes() == before


def test_the_start_and_stop_playbooks_reach_an_ssh_docker_host(harness, login):
    before = ssh_processes()
    start = harness.playbook(os.path.join(ROOT, "playbooks", "start.yml"), {
        "tao_network_arch": "cosmos-rl", "tao_model_path": "hf_model://nvidia/Cosmos-Reason1-7B", "tao_image": IMAGE,
        "tao_num_gpus": 0, "tao_platform_options": {"docker_host": "ssh://tao-login", "ssh_config": login,
                                                    "bind_address": "0.0.0.0"}})
    assert start.rc == 0, start.output
    assert start.task("Report the platform")["result"]["msg"].startswith("Docker ")
    job_id = start.task("Start the service")["result"]["job_id"]
    assert "URL    : http://localhost:" in start.stdout and "ready after" in start.stdout
    [doc] = json.loads(docker("inspect", job_id).stdout)  # bind_address went through the role
    assert doc["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"] == "0.0.0.0"
    # The registry records the ssh configuration but never chooses it: the stop must name it too.
    refused = harness.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), {"tao_confirm": "yes"})
    assert refused.rc != 0 and "pass the same ssh_config" in refused.output and job_id in harness.entries()
    stop = harness.playbook(os.path.join(ROOT, "playbooks", "stop.yml"), {
        "tao_confirm": "yes", "tao_platform_options": {"ssh_config": login}})
    assert stop.rc == 0, stop.output
    assert "Stopped %s" % job_id in stop.stdout
    assert harness.entries() == {} and harness.containers() == [] and ssh_processes() == before
