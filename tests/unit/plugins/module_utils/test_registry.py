"""Registry: atomic, locked, 0600, seed-compatible, never silently replaced."""

import json
import multiprocessing
import os
import socket
import stat

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry, port_is_free


def entry(job_id, started_at, port=None, scope="local", **extra):
    data = {"job_id": job_id, "started_at": started_at, "platform": "local-docker",
            "network_arch": "cosmos-rl", "host_url": "http://localhost:%s" % port}
    if port:
        data.update(host_port=port, port_scope=scope)
    data.update(extra)
    return data


def test_write_is_0600_with_schema_and_seed_layout(tmp_path):
    path = tmp_path / "reg.json"
    reg = Registry(str(path))
    with reg.transaction() as state:
        state.put(entry("a", "2026-01-01T00:00:00Z", 8080))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["latest"] == "a" and data["a"]["host_port"] == 8080 and data["schema_version"] == 1
    # The seed's reader: non-"latest" dict entries.
    assert [j for j, e in data.items() if j != "latest" and isinstance(e, dict)] == ["a"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tao-registry-")]


def test_latest_moves_to_newest_remaining(tmp_path):
    reg = Registry(str(tmp_path / "r.json"))
    with reg.transaction() as state:
        state.put(entry("old", "2026-01-01T00:00:00Z"))
        state.put(entry("new", "2026-01-03T00:00:00Z"))
        state.put(entry("mid", "2026-01-02T00:00:00Z"))
    with reg.transaction() as state:
        assert state.latest == "mid"
        state.remove("mid")
        assert state.latest == "new"
        state.remove("new")
        state.remove("old")
    data = json.loads((tmp_path / "r.json").read_text())
    assert "latest" not in data and Registry(str(tmp_path / "r.json")).read().entries() == {}


def test_check_mode_never_writes(tmp_path):
    path = tmp_path / "r.json"
    with Registry(str(path), check_mode=True).transaction() as state:
        state.put(entry("a", "x"))
    assert not path.exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"schema_version": 99}'])
def test_corrupt_file_is_reported_with_its_path_and_kept(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(TaoInferenceError) as err:
        with Registry(str(path)).transaction() as state:
            state.put(entry("a", "x"))
    assert str(path) in err.value.msg
    assert path.read_text() == content


def test_port_allocation_skips_registry_and_bound_ports(tmp_path):
    reg = Registry(str(tmp_path / "r.json"))
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = busy.getsockname()[1]
    try:
        assert not port_is_free(taken)
        with reg.transaction() as state:
            state.put(entry("a", "1", taken + 1))
            state.put(entry("b", "2", taken + 2, scope="brev:other"))  # another scope: ignored
            port = state.allocate_port("local", is_free=port_is_free, port_range=(taken, taken + 5))
        assert port == taken + 2
    finally:
        busy.close()


def test_port_range_exhausted_says_what_to_do(tmp_path):
    reg = Registry(str(tmp_path / "r.json"))
    with reg.transaction() as state:
        state.put(entry("a", "1", 9000))
        with pytest.raises(TaoInferenceError, match="stop a service or pass host_port"):
            state.allocate_port("local", port_range=(9000, 9000))


def _allocate(path, index, queue):
    reg = Registry(path)
    with reg.transaction() as state:
        port = state.allocate_port("local", port_range=(20000, 20100))
        state.put(entry("job-%d" % index, "t%d" % index, port))
    queue.put(port)


def test_concurrent_allocations_get_distinct_ports(tmp_path):
    path = str(tmp_path / "r.json")
    queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_allocate, args=(path, i, queue)) for i in range(12)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    ports = sorted(queue.get(timeout=5) for _proc in procs)
    assert ports == list(range(20000, 20012))
    assert len(Registry(path).read().entries()) == 12
