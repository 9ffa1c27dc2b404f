"""The service layer at its trust boundaries, through a fake driver: what it stops, what it keeps
in the registry, how an interrupted start ends, what a registry entry may choose."""

import os
import signal

import pytest

from ansible_collections.tao.inference.plugins.module_utils import procs, readiness
from ansible_collections.tao.inference.plugins.module_utils.chat.routing import resolve_target
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import (
    LABEL_PREFIX, Driver, PlatformStatus,
)
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager, trusted_connection

from .helpers import make_spec

OTHER = "11111111-2222-4333-8444-555555555555"


class FakeDriver(Driver):
    """Runs nothing: remembers what it was asked, answers as told."""

    name = "local-docker"
    uses_host_port = True

    @classmethod
    def from_options(cls, connection, params):
        return cls()

    def __init__(self):
        self.objects = {}       # job_id -> labels of what "runs"
        self.stopped = []
        self.on_start = None    # called inside start(), e.g. to send a signal
        self.stop_error = None

    def preflight(self, spec, report=True):
        return {}

    def port_scope(self, spec):
        return "local"

    def start(self, launch):
        self.objects[launch.job_id] = dict(launch.labels)
        if self.on_start:
            self.on_start(launch)
        return {"host_url": "http://127.0.0.1:%d" % launch.host_port, "host_port": launch.host_port}

    def status(self, entry):
        if entry["job_id"] in self.objects:
            return PlatformStatus(PlatformStatus.RUNNING, "runs", labels=self.objects[entry["job_id"]])
        return PlatformStatus(PlatformStatus.MISSING, "gone")

    def stop(self, entry):
        if self.stop_error:
            raise TaoInferenceError(self.stop_error)
        self.stopped.append(entry["job_id"])
        return self.objects.pop(entry["job_id"], None) is not None

    def find(self, name=None):
        return [PlatformStatus(PlatformStatus.RUNNING, "runs", labels=labels)
                for labels in self.objects.values()
                if name is None or labels.get(LABEL_PREFIX + "name") == name]


@pytest.fixture
def world(tmp_path, monkeypatch):
    driver = FakeDriver()
    registry = Registry(str(tmp_path / "registry.json"))
    manager = ServiceManager(registry, {}, {}, driver_factory=lambda platform, connection, params: driver)
    # Readiness: "ready" at once unless a test says otherwise.
    monkeypatch.setattr(readiness, "probe", lambda url, timeout=2.0: readiness.Probe(readiness.READY, "ready"))
    monkeypatch.setattr(readiness, "wait_ready", lambda *a, **k: readiness.Probe(readiness.READY, "ready"))
    return manager, driver, registry


def test_absent_of_an_unknown_job_id_stops_only_what_carries_its_label(world):
    manager, driver, registry = world
    driver.objects["postgres"] = {}  # not ours: no labels
    driver.objects[OTHER] = {LABEL_PREFIX + "job_id": OTHER}
    result = manager.absent(job_id="aaaaaaaa-2222-4333-8444-555555555555", platform="local-docker")
    assert result["changed"] is False and driver.stopped == []
    result = manager.absent(job_id=OTHER, platform="local-docker")
    assert result["stopped"] == [OTHER] and "postgres" in driver.objects


def test_a_start_interrupted_by_sigterm_leaves_nothing(world):
    manager, driver, registry = world
    driver.on_start = lambda launch: os.kill(os.getpid(), signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TaoInferenceError) as err:
        manager.present(make_spec(num_gpus=0, name="svc"))
    assert "interrupted (SIGTERM)" in err.value.msg and err.value.details["interrupted"]
    assert driver.objects == {} and len(driver.stopped) == 1
    assert registry.read().entries() == {}
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored


def test_a_stop_that_cannot_be_confirmed_keeps_the_entry(world):
    manager, driver, registry = world
    started = manager.present(make_spec(num_gpus=0, name="svc"))
    job_id = started["service"]["job_id"]
    driver.stop_error = "scancel failed: Socket timed out"
    with pytest.raises(TaoInferenceError, match="Socket timed out"):
        manager.absent(name="svc")
    entry = registry.read().get(job_id)
    assert entry is not None and "Socket timed out" in entry["stop_error"]


def test_a_failed_start_whose_cleanup_fails_keeps_the_entry_and_names_it(world, monkeypatch):
    manager, driver, registry = world
    monkeypatch.setattr(readiness, "wait_ready", lambda *a, **k: readiness.Probe(
        readiness.FATAL, "model_load_failed", "boom"))
    monkeypatch.setattr(driver, "logs", lambda entry, lines=40, secrets=None: "")
    driver.stop_error = "engine went away"
    with pytest.raises(TaoInferenceError) as err:
        manager.present(make_spec(num_gpus=0, name="svc"))
    job_id = err.value.details["job_id"]
    assert "model_load_failed" in err.value.msg and "engine went away" in err.value.msg and job_id in err.value.msg
    assert registry.read().get(job_id)["stop_error"]


def test_a_start_in_progress_is_not_started_twice_and_an_abandoned_one_is_replaced(world):
    manager, driver, registry = world
    spec = make_spec(num_gpus=0, name="svc")
    entry = manager._entry(spec, OTHER, spec.fingerprint())
    with registry.transaction() as state:
        state.put(entry)  # status starting, owned by this very (alive) process
    with pytest.raises(TaoInferenceError, match="being started by another run"):
        manager.present(spec)
    with pytest.raises(TaoInferenceError, match="still starting"):
        resolve_target(registry.read(), name="svc")
    # The run that was starting it died (SIGKILL): its pid no longer runs.
    with registry.transaction() as state:
        state.update(OTHER, owner={"host": procs.this_process()["host"], "pid": 2 ** 30, "start_time": "1"})
    with pytest.raises(TaoInferenceError, match="never finished starting"):
        resolve_target(registry.read(), name="svc")
    info = manager.info(name="svc")["services"][0]
    assert info["abandoned"] is True and "interrupted" in info["platform_status"]["detail"]
    driver.objects[OTHER] = {LABEL_PREFIX + "job_id": OTHER, LABEL_PREFIX + "name": "svc"}
    result = manager.present(spec)
    assert result["changed"] and OTHER in driver.stopped
    assert list(registry.read().entries()) == [result["service"]["job_id"]]


def test_a_registry_entry_cannot_choose_an_ssh_config():
    from ansible_collections.tao.inference.plugins.module_utils.platforms.drivers import driver_class

    cls = driver_class("local-docker")
    entry = {"job_id": OTHER, "connection": {"docker_host": "ssh://gpu-host", "ssh_config": "/tmp/evil_config"}}
    with pytest.raises(TaoInferenceError, match="pass the same ssh_config"):
        trusted_connection(entry, cls, {"docker_host": None})
    connection = trusted_connection(entry, cls, {"ssh_config": "/tmp/evil_config"})
    assert connection["ssh_config"] == "/tmp/evil_config" and connection["docker_host"] == "ssh://gpu-host"
    # What the entry records of where the service runs wins over this run's options.
    assert trusted_connection(entry, cls, {"docker_host": "unix:///other.sock", "ssh_config": "/tmp/evil_config"}
                              )["docker_host"] == "ssh://gpu-host"


def test_a_kept_service_masks_secrets_the_server_echoes(world, monkeypatch):
    manager, driver, registry = world
    manager.environ = {"HF_TOKEN": "hf_canary_value_123"}
    spec = make_spec({"HF_TOKEN": "hf_canary_value_123"}, num_gpus=0, name="svc")
    manager.present(spec)
    monkeypatch.setattr(readiness, "probe", lambda url, timeout=2.0: readiness.Probe(
        readiness.WAITING, "model_loading", "loading with token hf_canary_value_123"))
    result = manager.present(spec, wait=False)
    assert result["changed"] is False
    assert "hf_canary_value_123" not in str(result) and "********" in result["readiness"]["message"]


def test_a_port_taken_between_check_and_bind_is_retried_on_the_next_free_one(world):
    from ansible_collections.tao.inference.plugins.module_utils.platforms.base import PortTaken

    manager, driver, registry = world
    taken = []
    real_start = driver.start

    def start(launch):
        if not taken:
            taken.append(launch.host_port)  # another program bound it after our check
            raise PortTaken(launch.host_port)
        return real_start(launch)

    driver.start = start
    result = manager.present(make_spec(num_gpus=0, name="svc"))
    entry = registry.read().get(result["service"]["job_id"])
    assert entry["host_port"] != taken[0] and entry["status"] == "started"
    assert result["service"]["host_url"].endswith(":%d" % entry["host_port"])


def test_a_container_of_another_registry_with_the_same_name_is_left_alone(world):
    manager, driver, registry = world
    driver.objects[OTHER] = {LABEL_PREFIX + "job_id": OTHER, LABEL_PREFIX + "name": "svc",
                             LABEL_PREFIX + "registry": "/home/bob/.local/state/tao-inference/registry.json"}
    result = manager.present(make_spec(num_gpus=0, name="svc"))
    assert result["changed"] and OTHER in driver.objects and OTHER not in driver.stopped
    assert manager.absent(name="svc")["stopped"] == [result["service"]["job_id"]] and OTHER in driver.objects


def test_two_starts_with_one_name_do_not_both_start(world, monkeypatch):
    manager, driver, registry = world
    spec = make_spec(num_gpus=0, name="svc")
    real_preflight = driver.preflight

    def racing_preflight(spec_, report=True):
        # Another run reserves the same name between our look and our reservation.
        other = manager._entry(spec, OTHER, spec.fingerprint())
        with registry.transaction() as state:
            state.put(other)
        return real_preflight(spec_, report)

    driver.preflight = racing_preflight
    with pytest.raises(TaoInferenceError, match="another run started service svc"):
        manager.present(spec)
    assert list(registry.read().entries()) == [OTHER] and driver.objects == {}


def test_an_interrupted_tunnel_start_leaves_no_ssh(tmp_path, monkeypatch):
    from ansible_collections.tao.inference.plugins.module_utils import ssh

    fake = tmp_path / "ssh"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tmp_path, os.environ["PATH"]))
    started = []
    real_popen = ssh.subprocess.Popen

    def popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    def interrupted(pid, port):
        raise procs.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(ssh.subprocess, "Popen", popen)
    monkeypatch.setattr(ssh, "_listens", interrupted)
    with pytest.raises(procs.Interrupted):
        ssh.open_tunnel(ssh.SSHTarget("login"), 18080, "node", 8080)
    assert started and started[0].poll() is not None
