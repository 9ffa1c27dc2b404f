"""A registry shared between machines (an NFS home): each machine starts, stops and reports only its own
entries; another machine's are listed as elsewhere and never stopped, replaced or dropped. New entries
record the machine and the inventory host."""

import json
import socket

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry
from ansible_collections.tao.inference.plugins.module_utils.service import ServiceManager

from .helpers import make_spec
from .test_service_trust import FakeDriver


def manager_on(machine, path, monkeypatch, driver, inventory_host=None):
    monkeypatch.setattr(socket, "gethostname", lambda: machine)  # this run is on that machine
    return ServiceManager(Registry(path), {}, {}, driver_factory=lambda *args: driver, inventory_host=inventory_host)


def test_each_machine_keeps_to_its_own_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(readiness, "probe", lambda url, timeout=2.0: readiness.Probe(readiness.READY, "ready"))
    monkeypatch.setattr(readiness, "wait_ready", lambda *a, **k: readiness.Probe(readiness.READY, "ready"))
    path = str(tmp_path / "registry.json")
    driver_a, driver_b = FakeDriver(), FakeDriver()
    on_a = manager_on("gpu-a", path, monkeypatch, driver_a, "a")
    started_a = on_a.present(make_spec(num_gpus=0, name="svc"))["service"]
    assert started_a["machine"] == "gpu-a" and started_a["inventory_host"] == "a"
    # Machine b starts the same name: its own service, machine a's is neither replaced nor stopped.
    on_b = manager_on("gpu-b", path, monkeypatch, driver_b, "b")
    started_b = on_b.present(make_spec(num_gpus=0, name="svc"))
    assert started_b["changed"] and started_b["service"]["job_id"] != started_a["job_id"]
    assert driver_a.stopped == [] and len(Registry(path).read().entries()) == 2
    # Machine b lists a's service without asking its platform, and its stop by name leaves a's alone.
    listed = dict((s["job_id"], s) for s in on_b.info()["services"])
    assert listed[started_a["job_id"]]["platform_status"]["state"] == "elsewhere"
    stopped = on_b.absent(name="svc")
    assert stopped["stopped"] == [started_b["service"]["job_id"]]
    assert stopped["elsewhere"] == [{"job_id": started_a["job_id"], "name": "svc", "machine": "gpu-a",
                                     "inventory_host": "a"}]
    assert list(Registry(path).read().entries()) == [started_a["job_id"]]
    # Even by its job_id, from another machine: listed as elsewhere, kept.
    assert on_b.absent(job_id=started_a["job_id"])["elsewhere"][0]["machine"] == "gpu-a"
    assert list(Registry(path).read().entries()) == [started_a["job_id"]]
    data = json.loads((tmp_path / "registry.json").read_text())
    assert data[started_a["job_id"]]["machine"] == "gpu-a"
    # Its own machine stops it.
    on_a = manager_on("gpu-a", path, monkeypatch, driver_a)
    assert on_a.absent(name="svc")["stopped"] == [started_a["job_id"]]
    assert Registry(path).read().entries() == {}
