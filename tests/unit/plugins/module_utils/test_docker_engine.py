# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Engine API client against a stand-in engine on a unix socket (or TCP, with TLS).

The real engine is exercised by the integration tests; this stand-in covers
what the test machine cannot show: registry credentials on a pull, a pull that
fails half-way, an old engine, a kept-alive connection the engine drops, TLS
with client certificates, answers too large or not JSON.
"""

import base64
import hashlib
import http.server
import re
import json
import os
import socketserver
import ssl
import stat
import sys
import threading
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from ansible_collections.tao.inference.plugins.module_utils import docker_engine
from ansible_collections.tao.inference.plugins.module_utils.docker_engine import (
    DEFAULT_HOST, DockerEngine, EngineConfigError, EngineError, NotFound, demux, registry_auth, registry_of,
    resolve_endpoint, split_image,
)
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.local_docker import LocalDockerDriver
from ansible_collections.tao.inference.plugins.module_utils.spec import parse_size


def last_pull(fake):
    """The last ``POST /images/create`` the fake engine received."""
    return [sent for sent in fake.requests if sent["path"].endswith("/images/create")][-1]


class FakeEngine(object):
    """An HTTP server answering the Engine API routes the client uses: on the unix socket ``path``, or
    on 127.0.0.1 (``path`` None) with TLS when ``tls`` (a server SSLContext) is given.

    ``routes`` maps a route (``/info``) to the raw answer ``(status, body bytes, chunked)`` it gets instead.
    """

    def __init__(self, path, api_version="1.43", tls=None):
        self.path = path
        self.api_version = api_version
        self.routes = {}
        self.requests = []
        self.pull_events = [{"status": "Pulling from library/x"}, {"status": "Digest: sha256:ab"},
                            {"status": "Status: Downloaded newer image for x:latest"}]
        self.pull_cut = False  # end the pull's stream without its last chunk, as a dropped connection does
        self.images = set()  # what a pull that streamed to its end (no error) left on the engine
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
                if route in engine.routes:
                    return self._raw(*engine.routes[route])
                if route == "/info":
                    return self._send(200, {"ServerVersion": "99.0", "Runtimes": {"runc": {}}})
                if route.startswith("/images/") and route.endswith("/json"):
                    name = unquote(route[8:-5])
                    if name in engine.images or name + ":latest" in engine.images:
                        return self._send(200, {"Id": "sha256:" + "e" * 64, "RepoTags": [name]})
                    return self._send(404, {"message": "No such image: %s" % name})
                if route == "/images/create":
                    query = parse_qs(url.query)
                    ref = query["fromImage"][0] + (":" + query["tag"][0] if "tag" in query else "")
                    return self._stream(engine.pull_events, ref)
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

            def _stream(self, events, ref):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in events:
                    data = event if isinstance(event, bytes) else json.dumps(event).encode() + b"\r\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                if engine.pull_cut:
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")
                if not any(isinstance(event, dict) and event.get("error") for event in events):
                    engine.images.add(ref)

            def _raw(self, status, body, chunked=False):
                if not chunked:
                    return self._send(status, body)
                self.send_response(status)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(body), 4096):
                    piece = body[start:start + 4096]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

            def setup(self):
                engine.connections += 1
                http.server.BaseHTTPRequestHandler.setup(self)

            do_GET = do_POST = do_DELETE = _handle

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client that left mid-answer (the tests that cut an answer short assert on the client's side)

        class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True

            def get_request(self):
                sock, address = socketserver.TCPServer.get_request(self)
                if tls is not None:  # the handshake happens in the handler's thread, on its first read
                    sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, address

            def handle_error(self, request, client_address):
                pass  # a client refused by TLS (the test asserts on the client's side)

        if path is None:
            self.server = TCPServer(("127.0.0.1", 0), Handler)
            self.address = "tcp://127.0.0.1:%d" % self.server.server_address[1]
        else:
            self.server = Server(path, Handler)
            self.address = "unix://" + path
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
    sent = last_pull(fake)
    assert sent["query"] == {"fromImage": ["nvcr.io/nvidia/tao/tao-toolkit"], "tag": ["latest"]}
    assert decode(sent["headers"]["X-Registry-Auth"]) == {
        "username": "$oauthtoken", "password": token, "serveraddress": "nvcr.io"}
    engine.image_pull("busybox:1.36")
    assert last_pull(fake)["query"] == {"fromImage": ["busybox"], "tag": ["1.36"]}
    assert decode(last_pull(fake)["headers"]["X-Registry-Auth"])["username"] == "hubuser"
    engine.image_pull("quay.io/other/thing@sha256:abc")
    assert last_pull(fake)["query"] == {"fromImage": ["quay.io/other/thing@sha256:abc"]}
    assert "X-Registry-Auth" not in last_pull(fake)["headers"]


def test_a_pull_whose_stream_is_cut_between_chunks_is_not_taken_for_done(fake):
    # http.client's readline reads a stream that stops between two chunks as one that ended: only the
    # engine having the image makes the pull done.
    engine = client(fake)
    fake.pull_cut = True
    with pytest.raises(EngineError, match="ended but the Docker engine at .* does not have the image"):
        engine.image_pull("nvcr.io/nvidia/x:1")
    fake.pull_cut = False
    assert engine.image_pull("nvcr.io/nvidia/x:1") == "Status: Downloaded newer image for x:latest"
    assert fake.requests[-1]["path"].endswith("/images/nvcr.io/nvidia/x:1/json")


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
    assert decode(last_pull(fake)["headers"]["X-Registry-Auth"])["password"] == "s3cr3t-registry.example.com"


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
    assert "BatchMode=yes" in argv and argv[-5:] == ["--", "deploy@gpu-host", "docker", "system", "dial-stdio"]
    with pytest.raises(TaoInferenceError, match=r"docker_host ssh:///x is not of the form ssh://\[user@\]host"):
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
    write_certs(tmp_path, "ca.pem")
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


# A test CA, the stand-in engine's certificate (localhost, 127.0.0.1) and a client certificate it signed;
# valid 2000-2100, made for these tests only.
PEMS = {
    "ca.pem": (
        "-----BEGIN CERTIFICATE-----\n"
        "MIIBZjCCAQygAwIBAgICEAAwCgYIKoZIzj0EAwIwGTEXMBUGA1UEAwwOdGVzdCBk\n"
        "b2NrZXIgY2EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBkxFzAV\n"
        "BgNVBAMMDnRlc3QgZG9ja2VyIGNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
        "Oh2SiCQhjBHbUssaZ2zi4zyBesSha6eJwug7osc6guDfT8zqM6ee7zB0tiY/WDNB\n"
        "bD0L+OlQHeLGqmJ1eh2zUKNCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8E\n"
        "BAMCAQYwHQYDVR0OBBYEFC1+OCxLIXkUtn3VAJqooFIYUOhtMAoGCCqGSM49BAMC\n"
        "A0gAMEUCIQCSAOut9e49avXWWRKHo1iKWoWw4gWZiSH5c9iyPCgy6AIgNMUFGuL8\n"
        "szZRtwTq83LyhSwRwW/qvCFbquMPbG03K7E=\n"
        "-----END CERTIFICATE-----\n"
    ),
    "server.pem": (
        "-----BEGIN CERTIFICATE-----\n"
        "MIIBrzCCAVWgAwIBAgICEAEwCgYIKoZIzj0EAwIwGTEXMBUGA1UEAwwOdGVzdCBk\n"
        "b2NrZXIgY2EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBQxEjAQ\n"
        "BgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABBoVRzfu\n"
        "x7XSJCZmslHGXJxe5RrixjLZLWWtFOZr7zBARzCyVat67v3Jdx6/Nm7Xzz0QuGwl\n"
        "JoP0hQ0q9sOQMkyjgY8wgYwwCQYDVR0TBAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYD\n"
        "VR0lBAwwCgYIKwYBBQUHAwEwGgYDVR0RBBMwEYIJbG9jYWxob3N0hwR/AAABMB0G\n"
        "A1UdDgQWBBQ/AFVOfeSpO22lDR1dcCpvZgJdoTAfBgNVHSMEGDAWgBQtfjgsSyF5\n"
        "FLZ91QCaqKBSGFDobTAKBggqhkjOPQQDAgNIADBFAiBCv2CerTFW41ThGsLwg43+\n"
        "beNw/7GCbBuiLO7MbVEMNgIhAOKQJ4CHtfA0LN6M4iMX7r7/lwQsVhqwy2ipya9Q\n"
        "2BvP\n"
        "-----END CERTIFICATE-----\n"
    ),
    "server-key.pem": (
        "-----BEGIN PRIVATE KEY-----\n"
        "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEwRU9NKdqVKYkX9W\n"
        "Cwg50/Sssr81XN47TlFOo7SToT6hRANCAAQaFUc37se10iQmZrJRxlycXuUa4sYy\n"
        "2S1lrRTma+8wQEcwslWreu79yXcevzZu1889ELhsJSaD9IUNKvbDkDJM\n"
        "-----END PRIVATE KEY-----\n"
    ),
    "cert.pem": (
        "-----BEGIN CERTIFICATE-----\n"
        "MIIBjTCCATSgAwIBAgICEAIwCgYIKoZIzj0EAwIwGTEXMBUGA1UEAwwOdGVzdCBk\n"
        "b2NrZXIgY2EwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBExDzAN\n"
        "BgNVBAMMBmNsaWVudDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOsS9CqonZaY\n"
        "gO2Bl7I2cCcr7ZKVt/Ufe2SWCUbA7yu6DC8MAH4eDSGSH3GoYG2+zIqJHCGAxI0Q\n"
        "kEurc+3bgFyjcjBwMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQM\n"
        "MAoGCCsGAQUFBwMCMB0GA1UdDgQWBBRACz9j3s9miZKlw40Zsb+OCy7OgDAfBgNV\n"
        "HSMEGDAWgBQtfjgsSyF5FLZ91QCaqKBSGFDobTAKBggqhkjOPQQDAgNHADBEAiAv\n"
        "pz4wWCqt8LkS8AWd98Wc2mdOVAMLR2t8NVOvVQzmVwIgJ0/i5TEqHq3EOIoKQWju\n"
        "AIBedVUGydClJMDrfkvmHvs=\n"
        "-----END CERTIFICATE-----\n"
    ),
    "key.pem": (
        "-----BEGIN PRIVATE KEY-----\n"
        "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvTp57y//Jd+YtHva\n"
        "OfhgRvXfjbHplyKji6CKS9OuAzKhRANCAATrEvQqqJ2WmIDtgZeyNnAnK+2Slbf1\n"
        "H3tklglGwO8rugwvDAB+Hg0hkh9xqGBtvsyKiRwhgMSNEJBLq3Pt24Bc\n"
        "-----END PRIVATE KEY-----\n"
    ),
}


def write_certs(directory, *names):
    """Write the named PEM files (``ca.pem``, ``cert.pem``, ``key.pem``, ...) into ``directory``."""
    os.makedirs(str(directory), exist_ok=True)
    for name in names:
        with open(os.path.join(str(directory), name), "w") as handle:
            handle.write(PEMS[name])
    return str(directory)


def start_tls_engine(directory):
    """A stand-in engine on 127.0.0.1 speaking TLS, asking for a client certificate signed by the test CA."""
    server_dir = write_certs(directory, "ca.pem", "server.pem", "server-key.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(server_dir, "server.pem"), os.path.join(server_dir, "server-key.pem"))
    context.load_verify_locations(os.path.join(server_dir, "ca.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    return FakeEngine(None, tls=context)


def clear_docker_env(monkeypatch, home):
    """The process environment without any docker setting, its home the empty directory ``home``."""
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS", "DOCKER_TLS_VERIFY",
                 "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def tls_fake(tmp_path):
    engine = start_tls_engine(tmp_path / "server")
    yield engine
    engine.close()


@pytest.fixture
def no_docker_env(monkeypatch, tmp_path):
    return clear_docker_env(monkeypatch, tmp_path / "home")


# -- TLS is never weaker than asked ---------------------------------------------------------
def test_tls_verify_without_its_ca_file_fails_naming_the_file(tmp_path, no_docker_env):
    certs = write_certs(tmp_path / "certs", "cert.pem", "key.pem")
    missing = os.path.join(certs, "ca.pem")
    with pytest.raises(EngineConfigError, match="CA certificate %s does not exist" % re.escape(missing)):
        DockerEngine("tcp://gpu-host:2376", environ={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": certs})
    with pytest.raises(EngineConfigError, match="CA certificate %s does not exist" % re.escape(missing)):
        DockerEngine("tcp://gpu-host:2376", environ={}, tls_verify=True, cert_path=certs)
    default = os.path.join(str(no_docker_env), ".docker", "ca.pem")  # DOCKER_CERT_PATH unset: ~/.docker
    with pytest.raises(EngineConfigError, match=re.escape(default)):
        docker_engine.connection_factory("tcp://gpu-host:2376", 5, {"DOCKER_TLS_VERIFY": "1"})


@pytest.mark.parametrize("present, missing", [("cert.pem", "key.pem"), ("key.pem", "cert.pem")])
@pytest.mark.parametrize("asked", [{"DOCKER_TLS_VERIFY": "1"}, {"DOCKER_TLS": "1"}])
def test_half_a_client_certificate_pair_fails_naming_both_files(tmp_path, present, missing, asked):
    certs = write_certs(tmp_path, "ca.pem", present)
    with pytest.raises(EngineConfigError) as caught:
        DockerEngine("tcp://gpu-host:2376", environ=dict(asked, DOCKER_CERT_PATH=certs))
    assert os.path.join(certs, present) in str(caught.value) and os.path.join(certs, missing) in str(caught.value)


def test_verified_tls_uses_the_ca_and_presents_the_client_certificate(tmp_path, tls_fake):
    certs = write_certs(tmp_path / "client", "ca.pem", "cert.pem", "key.pem")
    by_env = DockerEngine(tls_fake.address, timeout=5, environ={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": certs})
    assert by_env.info()["ServerVersion"] == "99.0"  # the engine asks for the client certificate
    by_option = DockerEngine(tls_fake.address, timeout=5, environ={}, tls_verify=True, cert_path=certs)
    assert by_option.info()["ServerVersion"] == "99.0"
    context = by_option._conn.sock.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "test docker ca"),),)]


def test_verified_tls_refuses_an_engine_its_ca_did_not_sign(tmp_path, tls_fake):
    certs = str(tmp_path / "client")
    write_certs(certs, "cert.pem", "key.pem")
    with open(os.path.join(certs, "ca.pem"), "w") as handle:
        handle.write(PEMS["cert.pem"])  # a certificate, but not the CA of the engine's
    with pytest.raises(EngineError, match="CERTIFICATE_VERIFY_FAILED"):
        DockerEngine(tls_fake.address, timeout=5, environ={}, tls_verify=True, cert_path=certs).ping()


def test_tls_without_verification_still_loads_what_is_there(tmp_path, tls_fake):
    certs = write_certs(tmp_path / "client", "ca.pem", "cert.pem", "key.pem")
    engine = DockerEngine(tls_fake.address, timeout=5, environ={"DOCKER_TLS": "1", "DOCKER_CERT_PATH": certs})
    assert engine.info()["ServerVersion"] == "99.0"
    context = engine._conn.sock.context
    assert context.verify_mode == ssl.CERT_NONE and len(context.get_ca_certs()) == 1
    assert engine.endpoint.tls.cert == os.path.join(certs, "cert.pem")


def test_explicit_tls_settings_win_over_the_environment(tmp_path):
    certs = write_certs(tmp_path, "ca.pem")
    environ = {"DOCKER_TLS_VERIFY": "1", "DOCKER_TLS": "1", "DOCKER_CERT_PATH": "/nowhere"}
    plain = resolve_endpoint("tcp://gpu-host:2375", tls=False, tls_verify=False, environ=environ)
    assert plain.tls is None
    verified = resolve_endpoint("tcp://gpu-host", tls_verify=True, cert_path=certs, environ={})
    assert verified.tls.verify and verified.tls.ca == os.path.join(certs, "ca.pem")
    unverified = resolve_endpoint("tcp://gpu-host", tls=True, cert_path=certs, environ={"DOCKER_TLS_VERIFY": ""})
    assert not unverified.tls.verify
    assert resolve_endpoint("unix:///run/docker.sock", tls_verify=True, environ={}).tls is None  # no TLS on sockets
    connection = docker_engine.connection_factory("tcp://gpu-host", 5, {}, tls=True, cert_path=certs)()
    assert type(connection).__name__ == "HTTPSConnection" and connection.port == 2376


# -- the docker context in effect ---------------------------------------------------------------
def make_context(config_dir, name, host=None, skip=False, tls_files=(), meta=None):
    ident = hashlib.sha256(name.encode()).hexdigest()
    meta_dir = config_dir / "contexts" / "meta" / ident
    meta_dir.mkdir(parents=True)
    if meta is None:
        meta = {"Name": name, "Metadata": {},
                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip}} if host else {}}
    (meta_dir / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if tls_files:
        write_certs(config_dir / "contexts" / "tls" / ident / "docker", *tls_files)
    return str(config_dir / "contexts" / "tls" / ident / "docker")


def test_the_engine_is_chosen_as_the_docker_cli_chooses_it(tmp_path):
    make_context(tmp_path, "current", "unix:///run/current.sock")
    make_context(tmp_path, "from-env", "unix:///run/from-env.sock")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "current"}))
    environ = {"DOCKER_CONFIG": str(tmp_path)}
    assert resolve_endpoint(environ=environ).host == "unix:///run/current.sock"
    assert resolve_endpoint(environ=environ).context == "current"
    environ["DOCKER_CONTEXT"] = "from-env"
    assert resolve_endpoint(environ=environ).host == "unix:///run/from-env.sock"
    environ["DOCKER_HOST"] = "tcp://from-docker-host:2375"
    assert resolve_endpoint(environ=environ).host == "tcp://from-docker-host:2375"
    assert resolve_endpoint("unix:///run/option.sock", environ=environ).host == "unix:///run/option.sock"
    assert resolve_endpoint(environ={"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "default"}).host == DEFAULT_HOST
    assert resolve_endpoint(environ={"DOCKER_CONFIG": str(tmp_path / "none")}).host == DEFAULT_HOST
    engine = DockerEngine(environ={"DOCKER_CONFIG": str(tmp_path)})
    assert engine.host == "unix:///run/current.sock"


@pytest.mark.parametrize("meta, why", [
    (None, "does not exist"),
    ("{not json", "cannot be read"),
    ({"Name": "gone", "Endpoints": {"kubernetes": {}}}, "has no docker endpoint"),
    (["Endpoints"], "has no docker endpoint"),
])
def test_a_context_that_cannot_be_used_is_an_error_naming_it(tmp_path, meta, why):
    if meta is not None:
        make_context(tmp_path, "gone", meta=meta)
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "gone"}))
    with pytest.raises(EngineConfigError) as caught:
        resolve_endpoint(environ={"DOCKER_CONFIG": str(tmp_path)})
    message = str(caught.value)
    assert "docker context 'gone' (currentContext in %s)" % (tmp_path / "config.json") in message
    assert why in message and "`docker context ls`" in message and "docker_host" in message


def test_a_docker_config_that_cannot_be_read_is_not_taken_for_no_context(tmp_path):
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(EngineConfigError, match="cannot tell which docker context is in effect"):
        resolve_endpoint(environ={"DOCKER_CONFIG": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": 7}))
    with pytest.raises(EngineConfigError, match="its currentContext is not a name"):
        resolve_endpoint(environ={"DOCKER_CONFIG": str(tmp_path)})
    assert resolve_endpoint("unix:///run/x.sock", environ={"DOCKER_CONFIG": str(tmp_path)}).host == "unix:///run/x.sock"


def test_a_context_brings_its_own_tls_files(tmp_path):
    environ = {"DOCKER_CONFIG": str(tmp_path)}
    tls_dir = make_context(tmp_path, "secure", "tcp://gpu-host:2376", tls_files=("ca.pem", "cert.pem", "key.pem"))
    endpoint = resolve_endpoint(environ=dict(environ, DOCKER_CONTEXT="secure"))
    assert endpoint.tls.verify and endpoint.tls.ca == os.path.join(tls_dir, "ca.pem")
    assert endpoint.tls.cert == os.path.join(tls_dir, "cert.pem")
    assert endpoint.tls.key == os.path.join(tls_dir, "key.pem")
    make_context(tmp_path, "skips", "tcp://gpu-host:2376", skip=True)
    assert resolve_endpoint(environ=dict(environ, DOCKER_CONTEXT="skips")).tls.verify is False
    make_context(tmp_path, "plain", "tcp://gpu-host:2375")
    assert resolve_endpoint(environ=dict(environ, DOCKER_CONTEXT="plain")).tls is None
    make_context(tmp_path, "half", "tcp://gpu-host:2376", tls_files=("ca.pem", "cert.pem"))
    with pytest.raises(EngineConfigError, match="half there"):
        resolve_endpoint(environ=dict(environ, DOCKER_CONTEXT="half"))


def test_a_context_weaker_than_asked_is_refused(tmp_path):
    environ = {"DOCKER_CONFIG": str(tmp_path)}
    make_context(tmp_path, "skips", "tcp://gpu-host:2376", skip=True)
    make_context(tmp_path, "plain", "tcp://gpu-host:2375")
    with pytest.raises(EngineConfigError, match="without verifying the engine's certificate, but docker_tls_verify"):
        resolve_endpoint(tls_verify=True, environ=dict(environ, DOCKER_CONTEXT="skips"))
    with pytest.raises(EngineConfigError, match="'plain' .* without TLS, but docker_tls_verify / DOCKER_TLS_VERIFY"):
        resolve_endpoint(environ=dict(environ, DOCKER_CONTEXT="plain", DOCKER_TLS_VERIFY="1"))
    with pytest.raises(EngineConfigError, match="without TLS, but docker_tls / DOCKER_TLS asks for TLS"):
        resolve_endpoint(tls=True, environ=dict(environ, DOCKER_CONTEXT="plain"))
    with pytest.raises(EngineConfigError, match="docker_cert_path applies to the engine named by docker_host"):
        resolve_endpoint(cert_path=str(tmp_path), environ=dict(environ, DOCKER_CONTEXT="plain"))


def test_a_context_reaches_its_engine_over_verified_tls(tmp_path, tls_fake):
    make_context(tmp_path, "lab", tls_fake.address, tls_files=("ca.pem", "cert.pem", "key.pem"))
    engine = DockerEngine(timeout=5, environ={"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "lab"})
    assert engine.info()["ServerVersion"] == "99.0" and engine.endpoint.context == "lab"


# -- registry credentials never cross a network in clear ------------------------------------------
def nvcr_credentials(tmp_path):
    return write_config(tmp_path, {"auths": {"nvcr.io": {"auth": base64.b64encode(b"$oauthtoken:nvapi-x").decode()}}})


@pytest.mark.parametrize("host, tls", [("tcp://gpu-host.example.com:2375", None),
                                       ("https://gpu-host.example.com:2376", None),  # TLS, engine not verified
                                       ("tcp://gpu-host.example.com:2376", True)])
def test_credentials_are_not_sent_to_a_remote_engine_that_was_not_authenticated(tmp_path, host, tls):
    engine = DockerEngine(host, timeout=1, environ=nvcr_credentials(tmp_path), tls=tls)
    engine.api_version = "1.43"
    with pytest.raises(EngineConfigError,
                       match=r"the credentials for nvcr.io would go to an engine that was not "
                             r"authenticated: .*gpu-host.example.com.* verified TLS.*ssh://"):
        engine.image_pull("nvcr.io/nvidia/tao/tao-toolkit:6")
    assert engine._conn is None  # nothing was sent


def test_credentials_go_to_a_loopback_engine_or_over_tls(tmp_path):
    environ = nvcr_credentials(tmp_path)
    local = FakeEngine(None)
    try:
        DockerEngine(local.address, timeout=5, environ=environ).image_pull("nvcr.io/nvidia/x:1")
        assert decode(last_pull(local)["headers"]["X-Registry-Auth"])["password"] == "nvapi-x"
    finally:
        local.close()
    certs = write_certs(tmp_path / "certs", "ca.pem")
    remote = FakeEngine(str(tmp_path / "remote.sock"))
    try:
        engine = DockerEngine("tcp://gpu-host.example.com:2376", timeout=5, environ=environ, tls_verify=True,
                              cert_path=certs)
        engine._connect = lambda: docker_engine._UnixConnection(remote.path, 5)  # TLS itself is tested above
        engine.image_pull("nvcr.io/nvidia/x:1")
        assert decode(last_pull(remote)["headers"]["X-Registry-Auth"])["password"] == "nvapi-x"
    finally:
        remote.close()


# -- every answer is read with a limit ------------------------------------------------------------
@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_larger_than_the_limit_is_an_error_and_the_engine_still_answers(fake, monkeypatch, chunked):
    monkeypatch.setattr(docker_engine, "JSON_LIMIT", 4096)
    fake.routes["/info"] = (200, json.dumps({"ServerVersion": "x" * 100000}).encode(), chunked)
    engine = client(fake)
    with pytest.raises(EngineError, match=r"answered GET /info with more than 4096 bytes"):
        engine.info()
    assert engine._conn is None  # the rest of that answer is never read
    del fake.routes["/info"]
    assert engine.info()["ServerVersion"] == "99.0"


@pytest.mark.parametrize("body, what", [(b"<html>proxy error</html>", "something that is not JSON"),
                                        (b'["a", "list"]', "a JSON list"), (b"", "something that is not JSON")])
def test_an_answer_that_is_not_the_json_expected_is_an_engine_error(fake, body, what):
    fake.routes["/info"] = (200, body, False)
    with pytest.raises(EngineError, match="answered GET /info with %s" % what):
        client(fake).info()
    fake.routes["/containers/create"] = (201, b'{"Warnings": []}', False)
    with pytest.raises(EngineError, match="gave no Id"):
        client(fake).container_create("job-1", {})


def test_a_pull_progress_line_longer_than_the_limit_is_an_error(fake, monkeypatch):
    monkeypatch.setattr(docker_engine, "LINE_LIMIT", 1024)
    fake.pull_events = [{"status": "Pulling"}, b"[1, 2]\r\n", b"x" * 5000 + b"\r\n", {"status": "never read"}]
    engine = client(fake)
    with pytest.raises(EngineError, match="a line of pull progress longer than 1024 bytes"):
        engine.image_pull("busybox:1")
    assert engine.info()["ServerVersion"] == "99.0"


def test_logs_longer_than_the_limit_are_cut(fake, monkeypatch):
    monkeypatch.setattr(docker_engine, "LOG_LIMIT", 16)
    engine = client(fake)
    assert engine.container_logs("abc") == "out one\n\n[... the rest is cut: the logs are longer than 16 bytes]\n"
    assert engine.info()["ServerVersion"] == "99.0"


# -- secrets stay out of child processes ----------------------------------------------------------
def test_the_ssh_child_gets_no_secret(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "canary-hf")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws")
    seen = tmp_path / "env.json"
    probe = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    engine = DockerEngine("ssh://gpu-host", timeout=5, ssh_command=[sys.executable, "-c", probe, str(seen)])
    with pytest.raises(EngineError, match="cannot reach the Docker engine at ssh://gpu-host"):
        engine.ping()
    environ = json.loads(seen.read_text())
    assert "HF_TOKEN" not in environ and "AWS_SECRET_ACCESS_KEY" not in environ
    assert environ["PATH"] == os.environ["PATH"]


def test_the_credential_helper_keeps_its_cloud_keys_but_not_the_collections_secrets(tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-probe"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\n'
                      'echo "{\\"Username\\": \\"u\\", '
                      '\\"Secret\\": \\"hf=${HF_TOKEN:-gone} aws=${AWS_SECRET_ACCESS_KEY}\\"}"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(helper.parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("HF_TOKEN", "canary-hf")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-key")
    environ = write_config(tmp_path, {"credsStore": "probe"})
    assert decode(registry_auth("registry.example.com", environ))["password"] == "hf=gone aws=cloud-key"


# -- addresses that are not ---------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["tcp://gpu-host:abc", "tcp://gpu-host:99999", "tcp://[::1:2375"])
def test_a_tcp_address_that_is_not_one_is_a_clean_error(host):
    with pytest.raises(EngineConfigError, match=r"docker_host %s is not a valid address \(.*\); use tcp://host:port"
                       % re.escape(host)):
        docker_engine.connection_factory(host, 5, {})
    with pytest.raises(EngineConfigError, match="is not a valid address"):
        DockerEngine(host, environ={})


def test_a_signal_mid_request_leaves_a_connection_the_cleanup_can_use(tmp_path):
    from ansible_collections.tao.inference.plugins.module_utils.procs import Interrupted

    engine = DockerEngine("unix:///nonexistent.sock", timeout=1)
    engine.api_version = "1.43"

    class Cut(object):
        def request(self, *args, **kwargs):
            raise Interrupted(15)

        def close(self):
            pass

    engine._conn = Cut()
    with pytest.raises(Interrupted):
        engine.request("POST", "/containers/create")
    assert engine._conn is None  # the next request (the cleanup) opens a fresh connection
