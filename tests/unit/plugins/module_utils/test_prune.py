"""info changes nothing; prune drops what is gone, releases what this machine holds, keeps the rest (with why)."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import PlatformStatus
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager

from .helpers import make_spec
from .test_service_trust import FakeDriver, world  # noqa: F401  pylint: disable=unused-import


class HoldingDriver(FakeDriver):
    """A FakeDriver whose services hold a local resource (a tunnel) until released, and whose exited
    services leave a platform object behind."""

    def __init__(self):
        super(HoldingDriver, self).__init__()
        self.held = set()
        self.exited = set()
        self.broken = set()

    def start(self, launch):
        self.held.add(launch.job_id)
        return super(HoldingDriver, self).start(launch)

    def status(self, entry):
        if entry["job_id"] in self.broken:
            raise TaoInferenceError("the engine does not answer")
        if entry["job_id"] in self.exited:
            return PlatformStatus(PlatformStatus.EXITED, "container exited (exit code 137)")
        return super(HoldingDriver, self).status(entry)

    def release(self, entry):
        if entry["job_id"] in self.held:
            self.held.discard(entry["job_id"])
            return True
        return False


@pytest.fixture
def holding(world):  # noqa: F811
    manager, _driver, registry = world
    driver = HoldingDriver()
    manager._factory = lambda platform, connection, params: driver
    manager._drivers = {}
    return manager, driver, registry


def _start(manager, name):
    return manager.present(make_spec(num_gpus=0, name=name))["service"]["job_id"]


def test_info_reports_a_gone_service_and_changes_nothing(holding):
    manager, driver, registry = holding
    job_id = _start(manager, "svc")
    driver.objects.pop(job_id)  # cancelled elsewhere
    before = open(registry.path).read()
    result = manager.info()
    assert result["changed"] is False and "pruned" not in result
    assert result["services"][0]["platform_status"]["state"] == "missing"
    assert job_id in driver.held and open(registry.path).read() == before


def test_prune_releases_and_drops_what_is_gone_once(holding):
    manager, driver, registry = holding
    gone, running = _start(manager, "gone"), _start(manager, "running")
    driver.objects.pop(gone)
    first = manager.prune()
    assert first["changed"] is True and first["pruned"] == [gone] and first["released"] == [gone]
    assert first["kept"] == [{"job_id": running, "name": "running", "reason": "it is running"}]
    assert list(registry.read().entries()) == [running] and gone not in driver.held and running in driver.held
    assert list(first["diff"]["before"]) == [gone] and first["diff"]["after"] == {}
    second = manager.prune()
    assert second["changed"] is False and second["pruned"] == [] and second["released"] == []


def test_prune_in_check_mode_predicts_and_touches_nothing(holding, tmp_path):
    manager, driver, registry = holding
    gone = _start(manager, "gone")
    driver.objects.pop(gone)
    before = open(registry.path).read()
    checking = ServiceManager(Registry(registry.path, check_mode=True), {}, {},
                              driver_factory=lambda platform, connection, params: driver)
    result = checking.prune(name="gone")
    assert result["changed"] is True and result["pruned"] == [gone] and result["released"] == []
    assert gone in driver.held and open(registry.path).read() == before


def test_an_exited_service_has_its_leftover_removed(holding):
    manager, driver, registry = holding
    job_id = _start(manager, "exited")
    driver.exited.add(job_id)
    result = manager.prune(job_id=job_id)
    assert result["removed"] == [job_id] and result["pruned"] == [job_id] and job_id in driver.stopped
    assert registry.read().entries() == {}


def test_a_leftover_that_cannot_be_removed_keeps_its_entry_and_fails_after_the_others(holding):
    manager, driver, registry = holding
    stuck, gone = _start(manager, "stuck"), _start(manager, "gone")
    driver.exited.add(stuck)
    driver.objects.pop(gone)
    driver.stop_error = "engine went away"
    with pytest.raises(TaoInferenceError) as err:
        manager.prune()
    assert stuck in err.value.msg and "engine went away" in err.value.msg
    assert err.value.details["pruned"] == [gone]
    assert list(registry.read().entries()) == [stuck] and "engine went away" in registry.read().get(stuck)["stop_error"]


def test_prune_keeps_another_machines_entries_a_start_under_way_and_an_unanswered_platform(holding):
    manager, driver, registry = holding
    other, broken = _start(manager, "other"), _start(manager, "broken")
    driver.objects.pop(other)
    driver.broken.add(broken)
    with registry.transaction() as state:
        state.update(other, machine="another-host.example")
    starting = manager._entry(make_spec(num_gpus=0, name="starting"), "22222222-3333-4444-8555-666666666666", "f")
    with registry.transaction() as state:
        state.put(starting)  # status starting, owned by this very (alive) process; nothing on the platform yet
    result = manager.prune()
    reasons = dict((item["job_id"], item["reason"]) for item in result["kept"])
    assert result["pruned"] == [] and result["changed"] is False
    assert "machine another-host.example" in reasons[other] and other in driver.held
    assert "cannot be asked" in reasons[broken] and "does not answer" in reasons[broken]
    assert "starting it now" in reasons[starting["job_id"]]
    assert len(registry.read().entries()) == 3


def test_an_abandoned_start_that_left_nothing_is_pruned(holding):
    manager, driver, registry = holding
    entry = manager._entry(make_spec(num_gpus=0, name="dead"), "33333333-3333-4444-8555-666666666666", "f")
    entry["owner"] = dict(entry["owner"], pid=2 ** 22 + 7)  # a run that is gone
    with registry.transaction() as state:
        state.put(entry)
    assert manager.prune()["pruned"] == [entry["job_id"]] and registry.read().entries() == {}
