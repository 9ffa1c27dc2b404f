# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""local-docker's connection: which engine it uses, with which TLS, and how it says what is wrong."""

import json
import os

import pytest

from ansible_collections.tao.inference.plugins.module_utils.docker_engine import DEFAULT_HOST, DockerEngine
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.local_docker import LocalDockerDriver

from .test_docker_engine import FakeEngine, clear_docker_env, make_context, start_tls_engine, write_certs


@pytest.fixture
def home(monkeypatch, tmp_path):
    return clear_docker_env(monkeypatch, tmp_path / "home")


@pytest.fixture
def unix_fake(tmp_path):
    engine = FakeEngine(str(tmp_path / "docker.sock"))
    yield engine
    engine.close()


@pytest.fixture
def tls_fake(tmp_path):
    engine = start_tls_engine(tmp_path / "server")
    yield engine
    engine.close()


def no_engine(*args, **kwargs):
    raise AssertionError("the engine was asked")


def test_the_old_signature_still_works_and_the_new_keywords_reach_the_engine(home, tls_fake, tmp_path):
    driver = LocalDockerDriver(None, 60, "missing", None, None, no_engine)
    assert driver.host == DEFAULT_HOST and driver.remote is False
    certs = write_certs(tmp_path / "client", "ca.pem", "cert.pem", "key.pem")
    driver = LocalDockerDriver(docker_host=tls_fake.address, timeout=5, tls=True, tls_verify=True, cert_path=certs)
    assert driver.engine.info()["ServerVersion"] == "99.0"
    assert driver.endpoint.tls.verify and driver.endpoint.tls.ca == os.path.join(certs, "ca.pem")


def test_tls_settings_fall_back_to_the_environment(home, tls_fake, tmp_path, monkeypatch):
    certs = write_certs(tmp_path / "client", "ca.pem", "cert.pem", "key.pem")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", certs)
    assert LocalDockerDriver(docker_host=tls_fake.address, timeout=5).engine.info()["ServerVersion"] == "99.0"
    plain = LocalDockerDriver(docker_host="tcp://gpu-host:2375", tls=False, tls_verify=False, engine_factory=no_engine)
    assert plain.endpoint.tls is None


def test_a_missing_ca_is_a_configuration_error_not_a_docker_that_is_down(home):
    missing = os.path.join(str(home), ".docker", "ca.pem")
    driver = LocalDockerDriver(docker_host="tcp://gpu-host:2376", tls_verify=True, engine_factory=no_engine)
    with pytest.raises(TaoInferenceError) as caught:
        driver.engine
    assert "CA certificate %s does not exist" % missing in str(caught.value)
    assert "Start Docker" not in str(caught.value)
    with pytest.raises(TaoInferenceError, match="CA certificate"):
        driver.remote


def test_half_a_client_pair_is_refused_through_the_driver(home, tmp_path):
    certs = write_certs(tmp_path / "certs", "ca.pem", "key.pem")
    with pytest.raises(TaoInferenceError, match=r"key.pem exists but .*cert.pem does not"):
        LocalDockerDriver(docker_host="tcp://gpu-host:2376", tls=True, cert_path=certs).engine


def test_the_docker_context_in_effect_is_the_engine(home, unix_fake, monkeypatch):
    config = home / ".docker"
    make_context(config, "local-fake", unix_fake.address)
    make_context(config, "gpu", "tcp://gpu-box.example.com:2375")
    (config / "config.json").write_text(json.dumps({"currentContext": "local-fake"}))
    driver = LocalDockerDriver(timeout=5)
    assert driver.host == unix_fake.address and driver.remote is False
    assert driver.engine.info()["ServerVersion"] == "99.0"
    monkeypatch.setenv("DOCKER_CONTEXT", "gpu")
    remote = LocalDockerDriver(engine_factory=no_engine)
    assert remote.remote is True and remote._host_name() == "gpu-box.example.com"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert LocalDockerDriver(engine_factory=no_engine).host == "tcp://127.0.0.1:2375"
    assert LocalDockerDriver(docker_host=unix_fake.address, engine_factory=no_engine).host == unix_fake.address


def test_a_context_over_tls_is_reached_with_its_own_files(home, tls_fake, monkeypatch):
    make_context(home / ".docker", "lab", tls_fake.address, tls_files=("ca.pem", "cert.pem", "key.pem"))
    monkeypatch.setenv("DOCKER_CONTEXT", "lab")
    driver = LocalDockerDriver(timeout=5)
    assert driver.engine.info()["ServerVersion"] == "99.0" and driver.endpoint.tls.verify


def test_a_context_that_does_not_exist_is_never_the_local_socket(home, monkeypatch):
    monkeypatch.setenv("DOCKER_CONTEXT", "nowhere")
    driver = LocalDockerDriver(engine_factory=no_engine)
    with pytest.raises(TaoInferenceError, match=r"docker context 'nowhere' \(DOCKER_CONTEXT\) does not exist.*"
                                                r"`docker context ls`.*docker_host"):
        driver.engine
    with pytest.raises(TaoInferenceError, match="'nowhere'"):
        driver.remote


def test_an_engine_of_a_context_that_does_not_answer_names_the_context(home, tmp_path, monkeypatch):
    make_context(home / ".docker", "stale", "unix://%s" % (tmp_path / "gone.sock"))
    monkeypatch.setenv("DOCKER_CONTEXT", "stale")
    with pytest.raises(TaoInferenceError, match=r"cannot reach the Docker engine at unix://.*gone.sock.*"
                                                r"The docker context 'stale' names this engine"):
        LocalDockerDriver(timeout=2).engine


@pytest.mark.parametrize("host", ["tcp://gpu-host:abc", "tcp://gpu-host:70000"])
def test_a_tcp_port_that_is_not_a_number_is_a_clean_error(home, host):
    driver = LocalDockerDriver(docker_host=host, engine_factory=DockerEngine)
    with pytest.raises(TaoInferenceError, match="docker_host %s is not a valid address" % host):
        driver.engine
    with pytest.raises(TaoInferenceError, match="is not a valid address"):
        driver.remote
