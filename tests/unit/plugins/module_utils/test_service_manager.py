"""ServiceManager through a fake driver: keep, recreate (and why), rollback, check mode, one deadline."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager

from .helpers import make_spec
from .test_service_trust import FakeDriver, world  # noqa: F401  pylint: disable=unused-import


def test_the_same_spec_by_name_is_kept(world):  # noqa: F811
    manager, driver, registry = world
    first = manager.present(make_spec(num_gpus=0, name="svc"))
    second = manager.present(make_spec(num_gpus=0, name="svc"))
    assert first["changed"] and not second["changed"]
    assert second["service"]["job_id"] == first["service"]["job_id"] and len(driver.objects) == 1


def test_a_changed_spec_recreates_and_says_what_changed(world):  # noqa: F811
    manager, driver, registry = world
    first = manager.present(make_spec(num_gpus=0, name="svc", env={"LOG_LEVEL": "info"}))
    second = manager.present(make_spec(num_gpus=0, name="svc", env={"LOG_LEVEL": "debug"}, shm_size="1g"))
    assert second["changed"] and second["recreated_because"] == ["env", "shm_size"]
    assert first["service"]["job_id"] in driver.stopped
    assert list(registry.read().entries()) == [second["service"]["job_id"]]
    assert second["diff"]["before"]["shape"]["env"] == {"LOG_LEVEL": "info"}
    assert second["diff"]["after"]["shape"]["env"] == {"LOG_LEVEL": "debug"}


def test_check_mode_predicts_and_touches_nothing(tmp_path):
    driver = FakeDriver()
    registry = Registry(str(tmp_path / "registry.json"), check_mode=True)
    manager = ServiceManager(registry, {}, {}, driver_factory=lambda *args: driver)
    result = manager.present(make_spec(num_gpus=0, name="svc"))
    assert result["changed"] and driver.objects == {} and not (tmp_path / "registry.json").exists()


def test_a_service_that_never_gets_ready_is_rolled_back(world, monkeypatch):  # noqa: F811
    manager, driver, registry = world
    monkeypatch.setattr(readiness, "wait_ready", lambda *a, **k: readiness.Probe(readiness.WAITING, "model_loading"))
    monkeypatch.setattr(driver, "logs", lambda entry, lines=40, secrets=None: "loading shard 3 of 9")
    with pytest.raises(TaoInferenceError) as err:
        manager.present(make_spec(num_gpus=0, name="svc"), wait_timeout=5)
    assert "not ready after" in err.value.msg and "loading shard 3 of 9" in err.value.msg
    assert "stopped and removed from the registry" in err.value.msg
    assert driver.objects == {} and registry.read().entries() == {}


def test_one_deadline_covers_the_platform_and_readiness(world, monkeypatch):  # noqa: F811
    manager, driver, registry = world
    clock = [0.0]
    real_deadline = readiness.Deadline
    monkeypatch.setattr(readiness, "Deadline", lambda seconds: real_deadline(seconds, clock=lambda: clock[0]))
    seen = {}

    def slow_start(launch):
        seen["platform_budget"] = launch.timeout
        clock[0] += 40.0  # the platform took 40 s to run it (e.g. a queue)
        return FakeDriver.start(driver, launch)

    def wait_ready(url, timeout, *args, **kwargs):
        seen["readiness_budget"] = timeout
        return readiness.Probe(readiness.READY, "ready")

    driver.start = slow_start
    monkeypatch.setattr(readiness, "wait_ready", wait_ready)
    manager.present(make_spec(num_gpus=0, name="svc"), wait_timeout=100)
    assert seen == {"platform_budget": 100.0, "readiness_budget": 60.0}


def test_a_stop_that_breaks_on_an_odd_answer_keeps_the_entry(world, monkeypatch):  # noqa: F811
    """A platform answer the driver cannot read while a failed start is cleaned up (a KeyError, not an
    error of ours) must not lose the service's entry: it stays, with stop_error."""
    manager, driver, registry = world

    def broken_stop(entry):
        raise KeyError("metadata")

    monkeypatch.setattr(readiness, "wait_ready", lambda *a, **k: readiness.Probe(readiness.FATAL, "model_load_failed"))
    monkeypatch.setattr(driver, "stop", broken_stop)
    with pytest.raises(TaoInferenceError) as err:
        manager.present(make_spec(num_gpus=0, name="svc"), wait_timeout=5)
    assert "could not be read (KeyError)" in err.value.msg
    (entry,) = registry.read().entries().values()
    assert "could not be read" in entry["stop_error"]


def test_an_object_claiming_another_registered_service_is_no_orphan(world):  # noqa: F811
    manager, driver, registry = world
    other = manager.present(make_spec(num_gpus=0, name="other"))["service"]["job_id"]
    copied = dict(driver.objects[other], **{"tao.inference.name": "svc"})  # its labels, another name
    driver.objects["copy"] = copied
    assert manager._orphans(driver, "svc", []) == []
