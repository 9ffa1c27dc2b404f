"""Registry: atomic, locked, 0600, seed-compatible, never silently replaced."""

import json
import multiprocessing
import os
import socket
import stat
import uuid

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.registry import Registry, port_is_free


def jid(name):
    """The job_id (a UUID) of the service called ``name`` in these tests."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def entry(name, started_at, port=None, scope="local", **extra):
    data = {"job_id": jid(name), "started_at": started_at, "platform": "local-docker",
            "network_arch": "cosmos-rl", "host_url": "http://localhost:%s" % (port or 8080)}
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
    assert data["latest"] == jid("a") and data[jid("a")]["host_port"] == 8080 and data["schema_version"] == 1
    # The seed's reader: non-"latest" dict entries.
    assert [j for j, e in data.items() if j != "latest" and isinstance(e, dict)] == [jid("a")]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tao-registry-")]


def test_latest_moves_to_newest_remaining(tmp_path):
    reg = Registry(str(tmp_path / "r.json"))
    with reg.transaction() as state:
        state.put(entry("old", "2026-01-01T00:00:00Z"))
        state.put(entry("new", "2026-01-03T00:00:00Z"))
        state.put(entry("mid", "2026-01-02T00:00:00Z"))
    with reg.transaction() as state:
        assert state.latest == jid("mid")
        state.remove(jid("mid"))
        assert state.latest == jid("new")
        state.remove(jid("new"))
        state.remove(jid("old"))
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


# -- trust boundaries ------------------------------------------------------------------
from ansible_collections.tao.inference.plugins.module_utils import registry as registry_mod  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def test_default_registry_is_per_user(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert registry_mod.default_path() == str(tmp_path / "state" / "tao-inference" / "registry.json")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "tao-inference" / "registry.json"
    assert registry_mod.default_path() == str(expected)
    with Registry().transaction() as state:
        state.put(entry("a", "1", 8080))
    assert expected.exists() and stat.S_IMODE(os.stat(expected.parent).st_mode) == 0o700


def test_a_symlinked_registry_or_lock_is_refused(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    (tmp_path / "r.json").symlink_to(target)
    with pytest.raises(TaoInferenceError, match="symbolic link"):
        Registry(str(tmp_path / "r.json")).read()
    (tmp_path / "s.json.lock").symlink_to(target)
    with pytest.raises(TaoInferenceError, match="s.json.lock is a symbolic link"):
        with Registry(str(tmp_path / "s.json")).transaction():
            pass
    assert target.read_text() == "{}"


@needs_root
@pytest.mark.parametrize("which", ["r.json", "r.json.lock"])
def test_a_registry_or_lock_of_another_user_is_refused(tmp_path, which):
    planted = tmp_path / which
    planted.write_text(json.dumps({jid("x"): entry("x", "1", 8080)}) if which == "r.json" else "")
    os.chown(str(planted), 65534, 65534)
    with pytest.raises(TaoInferenceError) as err:
        Registry(str(tmp_path / "r.json")).read()
    assert str(planted) in err.value.msg and "not to you" in err.value.msg


def test_a_group_writable_registry_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{}")
    os.chmod(str(path), 0o664)
    with pytest.raises(TaoInferenceError, match="group or others"):
        Registry(str(path)).read()


def test_a_folder_others_can_write_is_refused(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(str(folder), 0o777)
    with pytest.raises(TaoInferenceError, match="not sticky"):
        with Registry(str(folder / "r.json")).transaction() as state:
            state.put(entry("a", "1"))


def _hold_lock(path, ready, release):
    import fcntl

    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(30)


def test_a_held_lock_ends_in_a_clear_failure_after_lock_timeout(tmp_path):
    path = str(tmp_path / "r.json")
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(TaoInferenceError) as err:
            with Registry(path, lock_timeout=0.3).transaction():
                pass
        assert "stayed locked" in err.value.msg and "lock_timeout" in err.value.msg
    finally:
        release.set()
        holder.join(10)


@pytest.mark.parametrize("field, value", [
    ("host_url", "http://evil.example:80 x"),
    ("host_url", "file:///etc/passwd"),
    ("platform", "kubectl"),
    ("connection", {"docker_host": "ssh://-oProxyCommand=touch%20x@h"}),
    ("connection", {"login_host": "-oProxyCommand=id"}),
    ("connection", {"ssh_config": "relative/config"}),
    ("connection", {"program": "/bin/sh"}),
    ("slurm:slurm_node", "node\nevil"),
    ("slurm:tunnel_pid", "1; kill"),
    ("job_id", "postgres"),
    ("connection", {"port": 1e400}),
    ("connection", {"login_host": "::1%`touch${IFS}x`"}),
    ("slurm:login_host", 123),
    ("slurm:tunnel_start_time", "١٢"),
    ("slurm:connection", {"login_host": "-oProxyCommand=id"}),
    ("connection", {"login_host": "login"}),  # not a connection field of local-docker
    ("host_port", True),
])
def test_entries_that_fail_validation_are_never_used_nor_dropped(tmp_path, field, value):
    bad = entry("bad", "1", 8080)
    if field.startswith("slurm:"):  # a field the slurm driver declares
        field = field[len("slurm:"):]
        bad["platform"] = "slurm"
    bad[field] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps({jid("bad"): bad, "latest": jid("bad")}))
    os.chmod(str(path), 0o600)
    reg = Registry(str(path))
    state = reg.read()
    assert state.entries() == {} and state.latest is None
    assert jid("bad") in state.rejected()
    with pytest.raises(TaoInferenceError, match="cannot be trusted"):
        state.get(jid("bad"))
    with reg.transaction() as live:
        live.put(entry("good", "2", 8081))
    assert jid("bad") in json.loads(path.read_text())  # kept as it was


def test_a_failed_write_is_a_clean_error_and_keeps_the_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    reg = Registry(str(path))
    with reg.transaction() as state:
        state.put(entry("a", "1", 8080))
    before = path.read_text()

    def broken_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(TaoInferenceError, match="cannot write the registry .*No space left"):
        with reg.transaction() as state:
            state.put(entry("b", "2", 8081))
    assert path.read_text() == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".tao-")] == []


def test_a_deeply_nested_registry_is_a_clean_error(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("[" * 100000)
    os.chmod(str(path), 0o600)
    with pytest.raises(TaoInferenceError, match="not valid JSON"):
        Registry(str(path)).read()


def test_an_entry_the_collection_would_reject_is_never_written(tmp_path):
    bad = entry("a", "1", 8080)
    bad["host_url"] = "http://2001:db8::5:8000"  # an IPv6 host without brackets
    with pytest.raises(TaoInferenceError, match="refusing to record"):
        with Registry(str(tmp_path / "r.json")).transaction() as state:
            state.put(bad)
    assert not (tmp_path / "r.json").exists()


@needs_root
def test_a_folder_above_the_registry_that_another_user_owns_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "mine").mkdir(parents=True)
    os.chown(str(theirs), 65534, 65534)
    with pytest.raises(TaoInferenceError, match="theirs .*belongs to nobody"):
        with Registry(str(theirs / "mine" / "r.json")).transaction() as state:
            state.put(entry("a", "1", 8080))


def test_a_symlinked_folder_is_checked_where_it_really_is(tmp_path):
    real = tmp_path / "open"
    real.mkdir()
    os.chmod(str(real), 0o777)
    (tmp_path / "link").symlink_to(real)
    reg = Registry(str(tmp_path / "link" / "r.json"))
    assert reg.path == str(real / "r.json")
    with pytest.raises(TaoInferenceError, match="not sticky"):
        with reg.transaction() as state:
            state.put(entry("a", "1", 8080))
