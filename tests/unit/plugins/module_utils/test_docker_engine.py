# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Engine API client against a stand-in engine on a unix socket.

The real engine is exercised by the integration tests; this stand-in covers
what the test machine cannot show: registry credentials on a pull, a pull that
fails half-way, an old engine, a kept-alive connection the engine drops.
"""

import base64
import http.server
import re
import json
import os
import socketserver
import stat
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.tao.inference.plugins.module_utils import docker_engine
from ansible_collections.tao.inference.plugins.module_utils.docker_engine import (
    DockerEngine, EngineError, NotFound, demux, registry_auth, registry_of, split_image,
)
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.local_docker import LocalDockerDriver
from ansible_collections.tao.inference.plugins.module_utils.spec import parse_size


class FakeEngine(object):
    """A unix-socket HTTP server answering the Engine API routes the client uses."""

    def __init__(self, path, api_version="1.43"):
        self.path = path
        self.api_version = api_version
        self.requests = []
        self.pull_events = [{"status": "Pulling from library/x"}, {"status": "Digest: sha256:ab"},
                            {"status": "Status: Downloaded newer image for x:latest"}]
        self.drop_after_response = False
        self.connections = 0
        self.start_error = (409, "conflict")
        self.delete_status = 404
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def address_string(self):
                return "fake"

            def _send(self, status, payload=None, headers=None):
                body = b"" if payload is None else (payload if isinstance(payload, bytes)
                                                    else json.dumps(payload).encode())
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if engine.drop_after_response:
                    self.close_connection = True

            def _handle(self):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                engine.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                        "headers": dict(self.headers), "body": body})
                if url.path == "/_ping":
                    return self._send(200, b"OK", {"API-Version": engine.api_version} if engine.api_version else {})
                parts = url.path.split("/")
                route = "/" + "/".join(parts[2:])  # without /vX.Y
                if route == "/info":
                    return self._send(200, {"ServerVersion": "99.0", "Runtimes": {"runc": {}}})
                if route.startswith("/images/") and route.endswith("/json"):
                    return self._send(404, {"message": "No such image: %s" % route[8:-5]})
                if route == "/images/create":
                    return self._stream(engine.pull_events)
                if route == "/containers/create":
                    return self._send(201, {"Id": "f" * 64, "Warnings": []})
                if route.startswith("/containers/") and route.endswith("/logs"):
                    frames = b"".join(bytes([kind, 0, 0, 0]) + len(text).to_bytes(4, "big") + text
                                      for kind, text in ((1, b"out one\n"), (2, b"err two\n"), (1, b"out three\n")))
                    return self._send(200, frames)
                if self.command == "DELETE":
                    return self._send(engine.delete_status, {"message": "cannot remove %s" % parts[3]})
                if route.startswith("/containers/") and route.endswith("/json"):
                    return self._send(404, {"message": "No such container: %s" % parts[3]})
                status, message = engine.start_error
                return self._send(status, {"message": "%s: %s" % (message, route)})

            def _stream(self, events):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in events:
                    data = json.dumps(event).encode() + b"\r\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.write(b"0\r\n\r\n")

            def setup(self):
                engine.connections += 1
                http.server.BaseHTTPRequestHandler.setup(self)

            do_GET = do_POST = do_DELETE = _handle

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(tmp_path):
    engine = FakeEngine(str(tmp_path / "docker.sock"))
    yield engine
    engine.close()


def client(fake, **kwargs):
    return DockerEngine("unix://" + fake.path, timeout=5, **kwargs)


def test_the_api_version_comes_from_ping_and_is_capped(fake):
    assert client(fake).ping() == "1.43"
    fake.api_version = "1.52"
    assert client(fake).ping() == "%d.%d" % docker_engine.MAX_API_VERSION
    engine = client(fake)
    engine.info()
    assert [r["path"] for r in fake.requests[-2:]] == ["/_ping", "/v%d.%d/info" % docker_engine.MAX_API_VERSION]


def test_an_engine_older_than_docker_19_03_is_refused_by_name(fake):
    fake.api_version = "1.39"
    with pytest.raises(EngineError, match=r"API 1\.39; tao.inference needs 1\.40 or newer"):
        client(fake).ping()
    fake.api_version = None  # engines before API 1.25 sent no API-Version header
    with pytest.raises(EngineError, match=r"API older than 1\.25; tao.inference needs 1\.40 or newer"):
        client(fake).ping()


def test_one_connection_serves_every_request(fake):
    engine = client(fake)
    engine.info()
    engine.info()
    with pytest.raises(NotFound):
        engine.image_inspect("x")
    assert len(fake.requests) == 4 and fake.connections == 1


def test_a_dropped_keep_alive_is_retried_on_a_new_connection(fake):
    engine = client(fake)
    engine.info()
    fake.drop_after_response = True  # the engine closes each connection after its answer, unannounced
    for attempt in range(3):
        assert engine.info()["ServerVersion"] == "99.0", attempt
    assert fake.connections >= 3  # the 2nd and 3rd found their connection gone and opened a new one


def test_errors_carry_the_engines_message_and_404_is_not_found(fake):
    engine = client(fake)
    with pytest.raises(NotFound, match="No such image: nvcr.io/nvidia/x:1"):
        engine.image_inspect("nvcr.io/nvidia/x:1")
    with pytest.raises(EngineError, match="conflict") as caught:
        engine.container_start("abc")
    assert caught.value.status == 409
    assert engine.container_remove("gone") is False
    assert engine.container_inspect("nothing") is None


def test_an_engine_that_is_not_there_says_where_it_looked(tmp_path):
    missing = str(tmp_path / "nope.sock")
    with pytest.raises(EngineError, match="cannot reach the Docker engine at unix://%s" % missing):
        DockerEngine("unix://" + missing, timeout=2).ping()
    driver = LocalDockerDriver(docker_host="unix://" + missing)
    with pytest.raises(TaoInferenceError, match=r"Start Docker \(or fix docker_host / DOCKER_HOST\)"):
        driver.engine


def test_logs_are_demultiplexed_in_order(fake):
    assert client(fake).container_logs("abc", tail=5) == "out one\nerr two\nout three\n"
    assert fake.requests[-1]["query"] == {"stdout": ["1"], "stderr": ["1"], "tail": ["5"]}
    assert demux(b"plain tty output\n") == b"plain tty output\n"


@pytest.mark.parametrize("ref, expected", [
    ("busybox", ("busybox", None, None)),
    ("busybox:1.36", ("busybox", "1.36", None)),
    ("localhost:5000/team/img", ("localhost:5000/team/img", None, None)),
    ("localhost:5000/team/img:v2", ("localhost:5000/team/img", "v2", None)),
    ("nvcr.io/nvidia/tao/tao-toolkit:6.0.0-pyt@sha256:abc", ("nvcr.io/nvidia/tao/tao-toolkit", "6.0.0-pyt", "sha256:abc")),
])
def test_image_references_split_like_docker(ref, expected):
    assert split_image(ref) == expected


@pytest.mark.parametrize("repository, registry", [
    ("busybox", None), ("library/busybox", None), ("nvidia/cuda", None), ("docker.io/library/busybox", None),
    ("index.docker.io/org/img", None), ("registry-1.docker.io/org/img", None),
    ("nvcr.io/nvidia/tao", "nvcr.io"), ("localhost/x", "localhost"), ("host:5000/x", "host:5000"),
])
def test_the_registry_of_a_repository(repository, registry):
    assert registry_of(repository) == registry


def decode(header):
    return json.loads(base64.urlsafe_b64decode(header.encode()))


def write_config(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return {"DOCKER_CONFIG": str(tmp_path)}


def test_a_pull_sends_the_stored_credentials_for_its_registry_and_defaults_to_latest(fake, tmp_path):
    token = "nvapi-" + "x" * 20
    environ = write_config(tmp_path, {"auths": {
        "nvcr.io": {"auth": base64.b64encode(("$oauthtoken:" + token).encode()).decode()},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hubpass").decode()}}})
    engine = client(fake, environ=environ)
    assert engine.image_pull("nvcr.io/nvidia/tao/tao-toolkit") == "Status: Downloaded newer image for x:latest"
    sent = fake.requests[-1]
    assert sent["query"] == {"fromImage": ["nvcr.io/nvidia/tao/tao-toolkit"], "tag": ["latest"]}
    assert decode(sent["headers"]["X-Registry-Auth"]) == {
        "username": "$oauthtoken", "password": token, "serveraddress": "nvcr.io"}
    engine.image_pull("busybox:1.36")
    assert fake.requests[-1]["query"] == {"fromImage": ["busybox"], "tag": ["1.36"]}
    assert decode(fake.requests[-1]["headers"]["X-Registry-Auth"])["username"] == "hubuser"
    engine.image_pull("quay.io/other/thing@sha256:abc")
    assert fake.requests[-1]["query"] == {"fromImage": ["quay.io/other/thing@sha256:abc"]}
    assert "X-Registry-Auth" not in fake.requests[-1]["headers"]


def test_a_credential_helper_is_asked_and_its_secret_stays_in_the_header(fake, tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\necho "{\\"Username\\": \\"robot\\", \\"Secret\\": \\"s3cr3t-$server\\"}"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(helper.parent) + os.pathsep + os.environ["PATH"])
    environ = write_config(tmp_path, {"credHelpers": {"registry.example.com": "fake"}})
    assert decode(registry_auth("registry.example.com", environ)) == {
        "username": "robot", "password": "s3cr3t-registry.example.com", "serveraddress": "registry.example.com"}
    assert registry_auth("other.example.com", environ) is None
    client(fake, environ=environ).image_pull("registry.example.com/team/img:1")
    assert decode(fake.requests[-1]["headers"]["X-Registry-Auth"])["password"] == "s3cr3t-registry.example.com"


def test_a_pull_that_fails_half_way_raises_the_engines_reason(fake):
    fake.pull_events = [{"status": "Pulling fs layer"},
                        {"errorDetail": {"message": "unauthorized: authentication required"},
                         "error": "unauthorized: authentication required"}]
    with pytest.raises(EngineError, match="unauthorized: authentication required"):
        client(fake).image_pull("nvcr.io/nvidia/tao/private:1")
    driver = LocalDockerDriver(docker_host="unix://" + fake.path)
    with pytest.raises(TaoInferenceError, match=r"cannot pull image nvcr.io/nvidia/tao/private:1: unauthorized.*"
                                                r"docker login nvcr.io"):
        driver.prepare(type("Spec", (), {"image": "nvcr.io/nvidia/tao/private:1"})())


@pytest.mark.parametrize("text, size", [("16g", 16 << 30), ("512m", 512 << 20), ("64MB", 64 << 20),
                                        ("1024", 1024), ("1.5g", 3 << 29), ("8k", 8192)])
def test_shm_size_reads_like_docker(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "16x", "-1g", "1 2"])
def test_a_bad_shm_size_is_refused(text):
    with pytest.raises(TaoInferenceError, match="is not a size such as 16g"):
        parse_size(text)


def test_tcp_hosts_use_tls_as_the_docker_environment_says(tmp_path):
    plain = docker_engine.connection_factory("tcp://gpu-host", 5, {})()
    assert type(plain).__name__ == "HTTPConnection" and plain.port == 2375
    tls_env = {"DOCKER_TLS": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    secure = docker_engine.connection_factory("tcp://gpu-host", 5, tls_env)()
    assert type(secure).__name__ == "HTTPSConnection" and secure.port == 2376
    with pytest.raises(EngineError, match="is not unix://, tcp:// or ssh://"):
        docker_engine.connection_factory("npipe:////./pipe/docker_engine", 5, {})


def test_ssh_hosts_run_dial_stdio_with_the_modules_ssh_options():
    driver = LocalDockerDriver(docker_host="ssh://deploy@gpu-host:2200", ssh_key_path="/keys/id", ssh_config="/etc/cfg")
    argv = driver._ssh_command()
    assert argv[:3] == ["ssh", "-F", "/etc/cfg"]
    assert argv[argv.index("-p") + 1] == "2200" and argv[argv.index("-i") + 1] == "/keys/id"
    assert "BatchMode=yes" in argv and argv[-5:] == ["deploy@gpu-host", "--", "docker", "system", "dial-stdio"]
    with pytest.raises(TaoInferenceError, match=r"docker_host ssh:///x names no host; use ssh://\[user@\]host"):
        LocalDockerDriver(docker_host="ssh:///x")._ssh_command()
    assert LocalDockerDriver(docker_host="unix:///run/docker.sock")._ssh_command() is None


def launch_for(num_gpus, secret=None):
    from ansible_collections.tao.inference.plugins.module_utils.platforms.base import Launch
    from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec

    spec = build_spec({"network_arch": "cosmos-rl", "model_path": "hf_model://a/b", "num_gpus": num_gpus,
                       "image": "img:1", "shm_size": "2g", "volumes": ["/data:/models:ro"]}, {})
    return Launch(spec, "job-1", "serve --port 8080", {"A": "1"}, secret or {}, 8123, {"tao.inference.job_id": "job-1"})


def no_engine(*args, **kwargs):
    raise AssertionError("the engine was asked")


def driver_with_info(info):
    driver = LocalDockerDriver(engine_factory=no_engine)
    driver._info_cache = info
    return driver


def test_gpus_become_device_requests_and_secrets_only_env():
    config = driver_with_info({"KernelVersion": "6.8.0"}).container_config(launch_for(2, {"HF_TOKEN": "canary"}))
    host = config["HostConfig"]
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 2, "DeviceIDs": None, "Capabilities": [["gpu"]],
                                       "Options": {}}]
    assert host["ShmSize"] == 2 << 30 and host["Init"] is True and host["Binds"] == ["/data:/models:ro"]
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8123"}]}
    assert config["Env"] == ["A=1", "HF_TOKEN=canary"]
    assert "canary" not in json.dumps(dict(config, Env=None))


def test_jetson_uses_the_nvidia_runtime_with_visible_devices():
    config = driver_with_info({"KernelVersion": "5.15.136-tegra"}).container_config(launch_for(2))
    assert config["HostConfig"]["Runtime"] == "nvidia" and "DeviceRequests" not in config["HostConfig"]
    assert "NVIDIA_VISIBLE_DEVICES=0,1" in config["Env"]


def test_cpu_only_asks_the_engine_nothing_about_gpus():
    config = driver_with_info(None).container_config(launch_for(0))
    assert "DeviceRequests" not in config["HostConfig"] and "Runtime" not in config["HostConfig"]


def test_docker_hub_named_in_full_gets_the_hub_credentials(tmp_path):
    environ = write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hubuser:hubpass").decode()}}})
    header = registry_auth(registry_of(split_image("docker.io/org/private:1")[0]), environ)
    assert decode(header) == {"username": "hubuser", "password": "hubpass", "serveraddress": docker_engine.DOCKER_HUB}


@pytest.mark.parametrize("config", [
    {"auths": {"nvcr.io": {"auth": "%%% not base64"}}},
    {"auths": {"nvcr.io": "a string"}},
    {"auths": ["nvcr.io"]},
    {"credHelpers": ["nvcr.io"], "credsStore": 7},
    ["not", "an", "object"],
])
def test_a_malformed_docker_config_means_no_credentials_not_a_crash(tmp_path, config):
    assert registry_auth("nvcr.io", write_config(tmp_path, config)) is None


def test_after_a_failed_pull_the_engine_still_answers(fake):
    fake.pull_events = [{"status": "Pulling fs layer"}, {"error": "manifest unknown"}, {"status": "never read"}]
    engine = client(fake)
    with pytest.raises(EngineError, match="manifest unknown"):
        engine.image_pull("busybox:nope")
    assert engine.info()["ServerVersion"] == "99.0"


def test_tls_verifies_the_engine_only_when_docker_tls_verify_says_so(tmp_path):
    import ssl

    certs = {"DOCKER_CERT_PATH": str(tmp_path)}
    verified = docker_engine.connection_factory("tcp://gpu-host:2376", 5, dict(certs, DOCKER_TLS_VERIFY="1"))()
    assert verified._context.verify_mode == ssl.CERT_REQUIRED and verified._context.check_hostname
    unverified = docker_engine.connection_factory("tcp://gpu-host:2376", 5, dict(certs, DOCKER_TLS="1"))()
    assert unverified._context.verify_mode == ssl.CERT_NONE


BRIDGE = """
import socket, sys, threading
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
def up():
    while True:
        data = sys.stdin.buffer.read1(65536)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)
threading.Thread(target=up, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


def test_an_ssh_transport_carries_requests_and_ends_its_process(fake):
    import sys

    engine = DockerEngine("ssh://gpu-host", timeout=5, ssh_command=[sys.executable, "-c", BRIDGE, fake.path])
    assert engine.info()["ServerVersion"] == "99.0" and engine.container_logs("abc", 3).startswith("out one")
    proc = engine._conn._proc
    assert proc.poll() is None and fake.connections == 1  # one process, one kept-alive connection
    engine.close()
    assert proc.returncode is not None


def test_an_ssh_transport_that_cannot_log_in_reports_what_ssh_said(fake):
    import sys

    said = "root@gpu-host: Permission denied (publickey)."
    engine = DockerEngine("ssh://gpu-host", timeout=5, ssh_command=[
        sys.executable, "-c", "import sys; sys.stderr.write(%r); sys.exit(255)" % said])
    with pytest.raises(EngineError, match=r"cannot reach the Docker engine at ssh://gpu-host: .*\(ssh: %s\)"
                       % re.escape(said)):
        engine.ping()
    assert engine._conn is None


def test_a_start_that_fails_and_cannot_clean_up_still_fails_clearly_with_secrets_masked(fake):
    from ansible_collections.tao.inference.plugins.module_utils.platforms.base import Launch
    from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec

    fake.start_error = (500, "driver failed programming external connectivity, env HF_TOKEN=canary-123")
    fake.delete_status = 500
    spec = build_spec({"network_arch": "cosmos-rl", "model_path": "hf_model://a/b", "num_gpus": 0, "image": "i:1"}, {})
    launch = Launch(spec, "job-1", "serve", {}, {"HF_TOKEN": "canary-123"}, 8123, {})
    driver = LocalDockerDriver(docker_host="unix://" + fake.path)
    with pytest.raises(TaoInferenceError, match="Docker could not start the container") as caught:
        driver.start(launch)
    assert "canary-123" not in str(caught.value) and caught.value.__suppress_context__
    assert [r["method"] for r in fake.requests[-3:]] == ["POST", "POST", "DELETE"]  # create, start, remove


def test_an_engine_too_old_is_named_and_its_connection_closed(fake):
    fake.api_version = "1.38"
    made = []

    def factory(*args, **kwargs):
        made.append(DockerEngine(*args, **kwargs))
        return made[-1]

    driver = LocalDockerDriver(docker_host="unix://" + fake.path, engine_factory=factory)
    with pytest.raises(TaoInferenceError, match=r"speaks API 1\.38; .* upgrade Docker there$"):
        driver.engine
    assert made[0]._conn is None


@pytest.mark.parametrize("host, remote, name", [
    ("unix:///var/run/docker.sock", False, "localhost"),
    ("tcp://127.0.0.1:2375", False, "localhost"),
    ("tcp://localhost:2375", False, "localhost"),
    ("tcp://[::1]:2375", False, "localhost"),
    ("tcp://10.1.2.3:2376", True, "10.1.2.3"),
    ("tcp://gpu-host.example.com:2376", True, "gpu-host.example.com"),
])
def test_a_loopback_engine_is_this_machine(host, remote, name):
    driver = LocalDockerDriver(docker_host=host, engine_factory=no_engine)
    assert driver.remote is remote and driver._host_name() == name
